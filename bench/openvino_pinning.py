"""Two one-thread OpenVINO Inception workers at once, as `reproduce --jobs 2` runs them on 2 cores.

For each setting of OpenVINO's ``ENABLE_CPU_PINNING`` (OpenVINO's own default, ``YES``, and
``NO`` as ``balanced_vae.fid_openvino.OPENVINO_CONFIG`` sets it) two spawned processes each compile the network
with one thread and featurise N random 28x28 images at the same time. Prints JSON: images per
second of each worker, their sum, each worker's CPU affinity after the work, one process with
all threads alone (the plain, single-process case), and the ratio of the summed throughput of
``NO`` to the default.

    OMP_NUM_THREADS=1 python bench/openvino_pinning.py --n 200 > bench/results/openvino_pinning.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time


def _worker(args: tuple[dict | None, int, str | None, int]) -> dict:
    config, n, cache, threads = args
    import torch

    from balanced_vae import fid_openvino
    from balanced_vae.fid import OpenVINOInception, openvino_ir, preprocess

    if config is None:  # OpenVINO's default: leave the key out
        fid_openvino.OPENVINO_CONFIG = {
            k: v for k, v in fid_openvino.OPENVINO_CONFIG.items() if k != "ENABLE_CPU_PINNING"
        }
    torch.set_num_threads(threads)
    net = OpenVINOInception(openvino_ir(cache_dir=cache), threads=threads, config=config)
    x = preprocess(torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    net(x[:4])  # warm-up
    t0 = time.perf_counter()
    net(x)
    seconds = time.perf_counter() - t0
    return {"images_per_s": n / seconds, "affinity": sorted(os.sched_getaffinity(0))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="images per worker")
    p.add_argument("--cache", default=None, help="FID cache folder holding (or to hold) the OpenVINO IR")
    args = p.parse_args()
    import openvino as ov

    out = {"cpus": sorted(os.sched_getaffinity(0)), "openvino": ov.get_version(), "n": args.n, "settings": {}}
    for name, config in (
        ("default", None),
        ("YES", {"ENABLE_CPU_PINNING": "YES"}),
        ("NO", {"ENABLE_CPU_PINNING": "NO"}),
    ):
        with mp.get_context("spawn").Pool(2) as pool:
            workers = pool.map(_worker, [(config, args.n, args.cache, 1)] * 2)
        with mp.get_context("spawn").Pool(1) as pool:  # the plain case: one process, all cores
            alone = pool.map(_worker, [(config, args.n, args.cache, len(out["cpus"]))])[0]
        out["settings"][name] = {
            "workers": workers,
            "images_per_s": sum(w["images_per_s"] for w in workers),
            "one_process_all_threads_images_per_s": alone["images_per_s"],
        }
    out["ratio_no_pinning_to_default"] = (
        out["settings"]["NO"]["images_per_s"] / out["settings"]["default"]["images_per_s"]
    )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
