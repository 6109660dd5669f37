"""Are a run's samples copies of its training images? Nearest-neighbour distances in pixel space (issue 27).

A network trained on and on can lower its FID by reproducing training images: its GMM samples
(fitted on the training codes) then decode to near-copies of them. This bench measures it for the images
FID scores. For each of three sets of ``n`` images it finds the Euclidean distance (pixels in [0, 1])
to the nearest of the run's training images (scikit-learn's exact ``NearestNeighbors``):

    test       the first n test images: real images the model never saw (how close an unseen digit is)
    test_rec   their reconstructions g(E[z|x]): the model's outputs on images it never saw
    samples    g(z) of n codes of FID's sampler (GMM, K = 32, on the training codes' posterior means,
               generator seed 0): the very images FID scores

Copies would put ``samples`` far below ``test_rec`` (and ``test``). Each set reports the median and
the 1st and 5th percentiles of its distances, and ``share_below_test_p1``: the share of its images
nearer to a training image than 99 % of the unseen test images are.

    OMP_NUM_THREADS=2 python bench/memorisation.py RUN [RUN ...] --n 10000 > record.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from balanced_vae.model import encode_dataset
from balanced_vae.protocol import PAPER
from balanced_vae.provenance import provenance
from balanced_vae.run_metrics import generated_means
from balanced_vae.runs import load_run, make_sampler


def _flat(x: torch.Tensor) -> np.ndarray:
    return x.reshape(len(x), -1).numpy().astype(np.float32)


def nearest_train_distance(index: NearestNeighbors, x: torch.Tensor, chunk: int = 1000) -> np.ndarray:
    """Distance of each image x (n, C, H, W) to its nearest training image in ``index``: (n,)."""
    return np.concatenate([index.kneighbors(_flat(x[i : i + chunk]), 1)[0][:, 0] for i in range(0, len(x), chunk)])


def summary(d: np.ndarray, test_p1: float) -> dict:
    """Median, 1st and 5th percentiles of distances d (n,) and the share below the test images' 1st percentile."""
    return {
        "median": float(np.median(d)),
        "p1": float(np.percentile(d, 1)),
        "p5": float(np.percentile(d, 5)),
        "share_below_test_p1": float((d < test_p1).mean()),
    }


def measure(path: str, n: int, data_dir: str | None) -> dict:
    """The three sets' nearest-training-image distances for the run at ``path``."""
    run = load_run(path)
    data = run.dataset(None, data_dir=data_dir)
    index = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(_flat(data.x_train))
    x_test = data.x_test[:n]
    with torch.no_grad():
        mu, _ = encode_dataset(run.model, x_test)
        rec = torch.cat([run.model.decode_mean(mu[i : i + 1000]) for i in range(0, n, 1000)])
    sampler = make_sampler("gmm", run, components=PAPER.components, data=data)
    sets = {
        "test": x_test,
        "test_rec": rec,
        "samples": generated_means(run, sampler, n, seed=PAPER.seed),
    }
    dist = {name: nearest_train_distance(index, x) for name, x in sets.items()}
    p1 = float(np.percentile(dist["test"], 1))
    return {
        "run": path,
        "epoch": json.loads((run.path / "metrics.jsonl").read_text().splitlines()[-1])["epoch"],
        "n": n,
        "n_train": len(data.x_train),
        **{name: summary(d, p1) for name, d in dist.items()},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (each with checkpoint.pt and metrics.jsonl)")
    p.add_argument("--n", type=int, default=10_000, help="images per set (default 10000, FID's)")
    p.add_argument("--data-dir", default=os.environ.get("BALANCED_VAE_DATA"))
    a = p.parse_args(argv)
    rows = []
    for path in a.runs:
        rows.append(measure(path, a.n, a.data_dir))
        print(f"{path}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    record = {
        "bench": "memorisation",
        "distance": "Euclidean, pixels in [0, 1], to the nearest training image",
        "rows": rows,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "provenance": provenance(),
    }
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
