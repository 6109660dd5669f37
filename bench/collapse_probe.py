"""Why wide or deep networks collapsed at lr 1e-3, measured step by step (issue 27).

Trains issue 27's probe network (``--width 64 --blocks 2`` on the first 6,000 MNIST training
images, batch 128, stage 1 only, seed 0) for ``--steps`` steps under each variant, with the
library's model, objective and optimisers, and records every ``--every`` steps:

* ``kl`` and ``mse`` of the training batch;
* ``std_mu``: the spread of the posterior means over 500 images (0: the code carries nothing);
* ``std_out``: the spread of the decoded means g(mu) over those images;
* ``logit_mean`` / ``logit_std``: the decoder's raw output before the sigmoid (very negative with
  ``std_out`` 0: the sigmoid is saturated on the all-black image).

Variants: ``adam`` (lr 1e-3, the optimiser before 0.2), ``radam`` (the default now), ``vae``
(sigma^2 = 0.5 instead of the closed form, Adam), ``klwarmup`` (KL weight rising from 0 over the
probe, Adam), ``lrwarmup43`` / ``lrwarmup100`` / ``lrwarmup430`` (the learning rate rising over
that many steps, Adam).

    OMP_NUM_THREADS=1 python bench/collapse_probe.py > bench/results/collapse_probe.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import torch

from balanced_vae.config import TrainConfig
from balanced_vae.data import load_dataset
from balanced_vae.methods import build_model, build_objective
from balanced_vae.objectives import KLWarmup
from balanced_vae.provenance import provenance
from balanced_vae.train import make_optimiser

BASE = TrainConfig(dataset="mnist", width=64, blocks=2, optimiser="adam")
VARIANTS = {
    "adam": ({}, 0, 0),
    "radam": ({"optimiser": "radam"}, 0, 0),
    "vae": ({"method": "vae"}, 0, 0),
    "klwarmup": ({}, 1, 0),
    "lrwarmup43": ({}, 0, 43),
    "lrwarmup100": ({}, 0, 100),
    "lrwarmup430": ({}, 0, 430),
}


def probe(name: str, x: torch.Tensor, steps: int, every: int) -> list[dict]:
    changes, kl_ramp, lr_steps = VARIANTS[name]
    cfg = dataclasses.replace(BASE, **changes).resolved((1, 28, 28), 60_000)
    torch.manual_seed(cfg.seed)
    model, objective = build_model(cfg, (1, 28, 28)), build_objective(cfg)
    warm = KLWarmup(objective) if kl_ramp else None
    opt = make_optimiser(model, cfg)
    g = torch.Generator().manual_seed(0)
    rows = []
    for s in range(steps):
        if warm is not None:
            warm.weight = min(1.0, (s + 1) / steps)
        if lr_steps:
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (s + 1) / lr_steps)
        xb = x[torch.randint(0, len(x), (cfg.batch_size,), generator=g)]  # (B, 1, 28, 28)
        t = (warm or objective)(model, xb)
        opt.zero_grad(set_to_none=True)
        t["loss"].backward()
        opt.step()
        if s % every == 0 or s == steps - 1:
            model.eval()
            with torch.no_grad():
                mu, _ = model.encode(x[:500])  # (500, L)
                logits = model.decoder(mu)  # (500, 1, 28, 28)
            model.train()
            rows.append(
                {
                    "step": s + 1,
                    "kl": float(t["kl"]),
                    "mse": float(t["mse"]),
                    "std_mu": float(mu.std(0).mean()),
                    "std_out": float(torch.sigmoid(logits).std(0).mean()),
                    "logit_mean": float(logits.mean()),
                    "logit_std": float(logits.std(0).mean()),
                }
            )
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=90, help="steps per variant (default 90: the probe's two epochs)")
    p.add_argument("--every", type=int, default=15)
    p.add_argument("--variants", default=",".join(VARIANTS))
    a = p.parse_args(argv)
    x = load_dataset("mnist", data_dir=os.environ.get("BALANCED_VAE_DATA")).x_train[:6000]
    out = {
        "bench": "collapse_probe",
        "config": json.loads(BASE.to_json()),
        "steps": a.steps,
        "mnist_e_x2": float(x.pow(2).mean()),
        "mnist_pixel_variance": float(x.var(0).mean()),
        "threads": torch.get_num_threads(),
        "provenance": provenance(),
        "variants": {},
    }
    for name in a.variants.split(","):
        t0 = time.perf_counter()
        out["variants"][name] = {
            "rows": probe(name, x, a.steps, a.every),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
