"""Training-step levers on this CPU, side by side in one process (issue 13).

Images/s of our objective + Adam on the default MNIST network (width 32, latent 16,
sigma^2 = 1) for each lever, median of ``--rounds`` interleaved rounds of ``--steps``
steps, and the ratio to plain fp32:

* ``fp32`` -- the trainer's step as it is;
* ``bf16`` -- ``torch.autocast("cpu", bfloat16)`` (gains only where the CPU has AMX or
  fast bf16; measured, never assumed);
* ``fused_adam`` / ``foreach_adam`` -- Adam's fused and multi-tensor kernels;
* ``channels_last`` -- NHWC memory format for the conv layers;
* ``compile`` -- ``torch.compile`` of the encoder and decoder (inductor); compile time is
  paid in a warm-up that is reported apart and not counted in images/s;
* ``batch256`` -- batch 256 with the learning rate doubled (images/s only; what it does to
  the converged ELBO is a separate question).

    OMP_NUM_THREADS=2 python bench/train_levers.py > bench/results/train_levers.json
    OMP_NUM_THREADS=2 python bench/train_levers.py --width 64 --levers fp32,bf16   (cost of a wider net)
    OMP_NUM_THREADS=2 python bench/train_levers.py --net res --levers fp32,bf16,channels_last   (a family)
    OMP_NUM_THREADS=2 python bench/train_levers.py --families small:64,paper:32,res:32 --levers fp32,bf16
        (families side by side: every family x lever interleaved in one process; ``ratio_vs_first`` is each
        case's images/s over the first case: the first family's first lever)
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
from balanced_vae.methods import build_model, build_objective
from balanced_vae.provenance import provenance

LEVERS = ("fp32", "bf16", "fused_adam", "foreach_adam", "channels_last", "compile", "batch256")


def parse_families(text: str) -> list[tuple[str, int | None]]:
    """``"small:64,paper:32,res"`` -> ``[("small", 64), ("paper", 32), ("res", None)]`` (None: the family's width)."""
    out = []
    for item in text.split(","):
        net, _, width = item.strip().partition(":")
        if not net or (width and not width.isdigit()):
            raise SystemExit(f"--families: {item!r} is not NET or NET:WIDTH (for example small:64,paper:32)")
        out.append((net, int(width) if width else None))
    return out


def make(lever: str, cfg: TrainConfig):
    """A fresh model and optimiser for ``lever`` (same seed for every lever)."""
    torch.manual_seed(0)
    model = build_model(cfg, (1, 28, 28))
    if lever == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    lr = cfg.lr * (2 if lever == "batch256" else 1)
    kwargs = (
        {"fused": True}
        if lever == "fused_adam"
        else {"foreach": True}
        if lever == "foreach_adam"
        else {"foreach": False}
    )
    if lever == "compile":
        model.encoder = torch.compile(model.encoder)
        model.decoder = torch.compile(model.decoder)
    return model, torch.optim.Adam(model.parameters(), lr=lr, **kwargs)


def steps_per_s(lever: str, model, opt, objective, x: torch.Tensor, steps: int) -> float:
    """Images/s of ``steps`` training steps of ``lever``."""
    batch = 256 if lever == "batch256" else 128
    t0 = time.perf_counter()
    for b in range(steps):
        xb = x[(b * batch) % (len(x) - batch) :][:batch]  # (B, 1, 28, 28)
        if lever == "channels_last":
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=lever == "bf16"):
            loss = objective(model, xb)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--levers", default=",".join(LEVERS))
    p.add_argument("--width", type=int, default=None, help="network width (base channels; default: the family's)")
    p.add_argument("--net", default="small", help="network family timed: small, paper or res (default small)")
    p.add_argument(
        "--families",
        default=None,
        help="NET:WIDTH,... timed side by side in one process (overrides --net/--width), e.g. small:64,paper:32",
    )
    a = p.parse_args(argv)
    levers = a.levers.split(",")
    families = parse_families(a.families) if a.families else [(a.net, a.width)]
    data = load_dataset("mnist", data_dir=os.environ.get("BALANCED_VAE_DATA", "../shared/data"))
    x = data.x_train[: 256 * a.steps + 256]
    cfgs = {}
    for net, width in families:
        cfg = TrainConfig(dataset="mnist", method="fixed", sigma2=1.0, latent_dim=16, width=width, net=net)
        cfg = cfg.resolved((1, 28, 28))
        cfgs[f"{cfg.net}:{cfg.width}"] = cfg
    single = len(cfgs) == 1
    cases = {(lever if single else f"{fam}/{lever}"): (cfg, lever) for fam, cfg in cfgs.items() for lever in levers}
    built, warmup = {}, {}
    for key, (cfg, lever) in cases.items():  # build once; the warm-up pays compilation and first-touch costs
        model, opt = make(lever, cfg)
        objective = build_objective(cfg)
        t0 = time.perf_counter()
        steps_per_s(lever, model, opt, objective, x, 3)
        warmup[key] = round(time.perf_counter() - t0, 2)
        built[key] = (model, opt, objective)
    rates: dict[str, list[float]] = {key: [] for key in cases}
    for _ in range(a.rounds):  # interleaved, so drifts of a shared machine hit every case alike
        for key, (_, lever) in cases.items():
            model, opt, objective = built[key]
            rates[key].append(steps_per_s(lever, model, opt, objective, x, a.steps))
    med = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    fam_fp32 = {key: (key.rpartition("/")[0] + "/fp32").lstrip("/") for key in cases}
    first = next(iter(cases))
    cfg = next(iter(cfgs.values()))
    print(
        json.dumps(
            {
                "bench": "train_levers",
                "images_per_s": med,
                "ratio_vs_fp32": {k: round(v / med[fam_fp32[k]], 3) for k, v in med.items()}
                if "fp32" in levers
                else None,
                **({} if single else {"ratio_vs_first": {k: round(v / med[first], 3) for k, v in med.items()}}),
                "warmup_seconds": warmup,
                "net": cfg.net if single else None,
                "width": cfg.width if single else None,
                "families": list(cfgs),
                "rounds": a.rounds,
                "steps": a.steps,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "provenance": provenance(),
                "machine": platform.machine(),
                "cpu_flags": sorted(
                    {
                        f
                        for f in open("/proc/cpuinfo").read().split()
                        if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2"))
                    }
                )
                if os.path.exists("/proc/cpuinfo")
                else [],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
