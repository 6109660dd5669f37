"""Peak resident memory of training on a CelebA-sized set held as uint8 vs as float32.

Each measurement is a fresh subprocess that builds a synthetic set of N x 3 x 64 x 64
random images (the memory of a data set does not depend on its pixels), held either as
uint8 (converted to float per batch by balanced_vae.sources.TensorSource) or as float32
in [0, 1], then trains both stages of Algorithm 1 on it through ``train(config, out,
data=x)`` (the built-in 64x64 networks, width 16, a short run: ``--fit`` images fitted per
epoch, one epoch per stage; the whole set stays held for the run) and reports
``resource.getrusage(RUSAGE_SELF).ru_maxrss``. Side by side at ``--n-compare`` images
(both layouts), and for uint8 alone at ``--n`` (CelebA: 200,000). Prints one JSON object.

    python bench/source_memory.py [--n 200000] [--n-compare 50000] [--fit 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, tempfile, time
import torch
from balanced_vae.config import TrainConfig
from balanced_vae.train import train

n, dtype, fit = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
kb = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
base = kb()
g = torch.Generator().manual_seed(0)
if dtype == "uint8":
    x = torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=g)
else:
    x = torch.empty(n, 3, 64, 64)
    for i in range(0, n, 10000):
        x[i:i + 10000] = torch.randint(0, 256, (len(x[i:i + 10000]), 3, 64, 64), dtype=torch.uint8, generator=g) / 255
held = kb()
config = TrainConfig(dataset="synthetic", width=16, epochs=1, min_epochs=1, stages=2, n_train=fit,
                     n_val=fit // 5, n_test=fit // 5, batch_size=128)
t0 = time.perf_counter()
with tempfile.TemporaryDirectory() as out:
    train(config, out + "/run", data=x, progress=False)
print(json.dumps({"n": n, "held_as": dtype, "data_gib": x.numel() * x.element_size() / 2**30,
                  "peak_rss_gib_after_imports": base / 2**20, "peak_rss_gib_data_built": held / 2**20,
                  "peak_rss_gib": kb() / 2**20, "train_seconds": round(time.perf_counter() - t0, 1)}))
"""


def measure(n: int, dtype: str, fit: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), dtype, str(fit)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000, help="images of the uint8-only run (CelebA: 200,000)")
    p.add_argument("--n-compare", type=int, default=50_000, help="images of the side-by-side runs")
    p.add_argument("--fit", type=int, default=1000, help="images fitted per epoch (the rest stays held)")
    args = p.parse_args()
    u8, f32 = measure(args.n_compare, "uint8", args.fit), measure(args.n_compare, "float32", args.fit)
    full = measure(args.n, "uint8", args.fit)
    print(
        json.dumps(
            {
                "side_by_side": {
                    "uint8": u8,
                    "float32": f32,
                    "peak_rss_ratio_float32_over_uint8": round(f32["peak_rss_gib"] / u8["peak_rss_gib"], 2),
                },
                "celeba_sized_uint8": full,
                "celeba_sized_float32_data_gib": args.n * 3 * 64 * 64 * 4 / 2**30,
                "within_4_gib": full["peak_rss_gib"] < 4.0,
                "note": "float32 at the full size is not run here (it needs ~10 GiB on a shared machine); "
                "its data alone is celeba_sized_float32_data_gib",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
