"""What Algorithm 1 adds to an epoch, timed side by side: the Eq. 10 pass and the optimiser's step (issue 27).

A profile of a width-64 run (py-spy on ``bench/time_to_fid.py --width 64 --precision bf16``) spent a
third of its time in the Eq. 10 pass (:func:`balanced_vae.likelihoods.closed_form_sigma2`, fp32, 1,000
images a batch) and a quarter in ``RAdam.step`` (one tensor at a time, PyTorch's CPU default), against
about two fifths in the training steps' forward and backward passes. This bench times, in one process
and in interleaved rounds, on real MNIST images and the library's own network:

* the pass, in ms per image, at batches of 1,000 and :data:`~balanced_vae.likelihoods.PASS_BATCH`,
  in fp32 and under bf16 autocast, with the sigma*^2 each gives;
* one optimiser step over every parameter (random gradients), in ms: RAdam and Adam, one tensor at a
  time (``foreach=False``) and multi-tensor (``foreach=True``).

    OMP_NUM_THREADS=2 python bench/epoch_parts.py --width 64 > bench/results/epoch_parts_w64.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from balanced_vae.config import TrainConfig
from balanced_vae.data import load_dataset
from balanced_vae.likelihoods import PASS_BATCH, closed_form_sigma2
from balanced_vae.methods import build_model
from balanced_vae.provenance import provenance


def time_pass(model, x: torch.Tensor, batch: int, bf16: bool) -> tuple[float, float]:
    """(ms per image, sigma*^2) of one Eq. 10 pass over ``x`` (N, 1, 28, 28)."""
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        sigma2 = closed_form_sigma2(model, x, seed=0, batch_size=batch)
    return 1e3 * (time.perf_counter() - t0) / len(x), sigma2


def time_steps(model, kind: str, foreach: bool, steps: int) -> float:
    """ms per step of a fresh ``kind`` optimiser (after 3 steps of warm-up) on the gradients in place."""
    opt = {"radam": torch.optim.RAdam, "adam": torch.optim.Adam}[kind](model.parameters(), lr=1e-6, foreach=foreach)
    for _ in range(3):
        opt.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return 1e3 * (time.perf_counter() - t0) / steps


def _pass_name(batch: int, bf16: bool) -> str:
    return f"batch{batch}_{'bf16' if bf16 else 'fp32'}"


def _median(v: list[float]) -> float:
    return sorted(v)[len(v) // 2]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", default="small", help="network family (default small)")
    p.add_argument("--width", type=int, default=None, help="network width (default: the family's)")
    p.add_argument("--images", type=int, default=4000, help="training images per pass (default 4000)")
    p.add_argument("--steps", type=int, default=20, help="optimiser steps per timing (default 20)")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    data = load_dataset("mnist", data_dir=os.environ.get("BALANCED_VAE_DATA", "../shared/data"))
    x = data.x_train[: a.images]
    cfg = TrainConfig(dataset="mnist", latent_dim=16, width=a.width, net=a.net).resolved((1, 28, 28))
    torch.manual_seed(0)
    model = build_model(cfg, (1, 28, 28))
    passes = [(b, bf16) for bf16 in (False, True) for b in (1000, PASS_BATCH)]
    steps = [(k, f) for k in ("radam", "adam") for f in (False, True)]
    pass_ms: dict = {c: [] for c in passes}
    sigma2: dict = {}
    step_ms: dict = {c: [] for c in steps}
    for prm in model.parameters():
        prm.grad = 1e-3 * torch.randn_like(prm)
    for _ in range(a.rounds):  # interleaved, so drifts of a shared machine hit every variant alike
        for c in passes:
            ms, sigma2[c] = time_pass(model, x, *c)
            pass_ms[c].append(ms)
        for c in steps:
            step_ms[c].append(time_steps(model, *c, a.steps))
    p_med = {_pass_name(*c): _median(v) for c, v in pass_ms.items()}
    s_med = {f"{k}_{'foreach' if f else 'single'}": _median(v) for (k, f), v in step_ms.items()}
    base_pass, base_step = p_med["batch1000_fp32"], s_med["radam_single"]
    print(
        json.dumps(
            {
                "bench": "epoch_parts",
                "eq10_pass_ms_per_image": p_med,
                "eq10_pass_speedup_vs_batch1000_fp32": {k: round(base_pass / v, 3) for k, v in p_med.items()},
                "eq10_sigma2": {_pass_name(*c): s for c, s in sigma2.items()},
                "optimiser_step_ms": s_med,
                "optimiser_speedup_vs_radam_single": {k: round(base_step / v, 3) for k, v in s_med.items()},
                "parameters": sum(q.numel() for q in model.parameters()),
                "net": cfg.net,
                "width": cfg.width,
                "images": len(x),
                "rounds": a.rounds,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "provenance": provenance(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
