"""The plain loop of issue 27 beside Algorithm 1's trainer: does our recipe leave FID on the table?

Issue 27 reported that a minimal loop with the default MNIST network reached FID 11.7 and 12.1 after
15 minutes on two threads, where the library then scored 13.6 after 30 CPU-minutes. This script is
that loop, written again from the issue's description, on the library's own model (``build_model``
of ``--net``/``--width``): all training images (no validation split, no stopping rule, one stage),
Adam at 1e-3, batch 128, and sigma^2 of every step a running mean of the batch's squared residual
(an exponential average with ``--sigma2-decay``, started at the first batch's; Eq. 10 over batches
instead of the epoch's final networks). It trains whole epochs until ``--budget`` CPU-minutes
(``time.process_time``, all threads) are spent, writes a run folder that every command reads
(``config.json`` of a one-stage run, ``checkpoint.pt`` with sigma*^2 by Eq. 10 on the final
networks) and scores it as ``bench/time_to_fid.py`` does: a K = 32 GMM on the training codes,
``--n-fid`` samples against as many test images, TF-Inception features.

Resumable: ``WORK/plain.pt`` (weights, Adam's moments, the shuffle's state, sigma^2 and the clock)
is written atomically after every epoch, so a killed run goes on from its last epoch.

    OMP_NUM_THREADS=2 python bench/plain_loop.py --budget 30 --train-threads 2 --work /tmp/plain \\
        --out bench/results/plain_loop.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from balanced_vae.atomic import write_json_atomic, write_text_atomic
from balanced_vae.checkpoint import load_checkpoint, save_checkpoint
from balanced_vae.config import TrainConfig
from balanced_vae.data import load_dataset
from balanced_vae.data.splits import data_fingerprint
from balanced_vae.evaluate import evaluate_run
from balanced_vae.likelihoods import closed_form_sigma2
from balanced_vae.methods import build_model
from balanced_vae.objectives import kl_standard_normal
from balanced_vae.provenance import provenance

STATE = "plain.pt"


def plain_loss(model, xb: torch.Tensor, s2: torch.Tensor | None, decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's loss on the batch xb (B, C, H, W) and the running sigma^2 (a 0-d tensor) it used.

    z ~ q(z|x) (Eq. 6), sigma^2 <- decay sigma^2 + (1 - decay) mean((x - g(z))^2) (detached; the first
    batch's own when ``s2`` is None), loss = mean_b [ ||x_b - g(z_b)||^2 / (2 sigma^2) + KL(q(z|x_b) || N(0, I)) ]:
    the negative ELBO of Eq. 9 less its term D/2 log(2 pi sigma^2), which has no gradient while sigma^2 is
    held for the step."""
    mu, logvar = model.encode(xb)
    mean = model.decode_mean(model.reparameterise(mu, logvar))
    r2 = (xb - mean).pow(2).flatten(1)  # (B, D)
    batch = r2.detach().mean()
    s2 = batch if s2 is None else decay * s2 + (1 - decay) * batch
    return (r2.sum(1) / (2 * s2) + kl_standard_normal(mu, logvar)).mean(), s2


def plain_epoch(model, opt, x: torch.Tensor, s2: torch.Tensor | None, *, batch_size: int, decay: float, gen):
    """One epoch of :func:`plain_loss` steps over a shuffle of x (N, C, H, W); returns sigma^2 and the mean loss."""
    model.train()
    total, n = 0.0, 0
    for idx in torch.randperm(len(x), generator=gen).split(batch_size):
        loss, s2 = plain_loss(model, x[idx], s2, decay)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, n = total + float(loss.detach()) * len(idx), n + len(idx)
    return s2, total / n


def train_plain(
    config: TrainConfig, data, work: Path, budget_min: float, decay: float, max_epochs: int | None = None
) -> dict:
    """Whole epochs of :func:`plain_epoch` until ``budget_min`` CPU-minutes are spent (or ``max_epochs``
    have run); resumes from ``work/plain.pt``; writes the run folder ``work/run`` and returns the clock."""
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    x = data.x_train  # (N, C, H, W) in [0, 1]
    model = build_model(config, tuple(data.shape))
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    clock = {"cpu_seconds": 0.0, "wall_seconds": 0.0, "epochs": 0, "losses": []}
    s2 = None
    if (work / STATE).exists():
        ck = load_checkpoint(work / STATE)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimiser"])
        gen.set_state(ck["shuffle"])
        torch.set_rng_state(ck["torch_rng"])
        s2, clock = ck["sigma2"], ck["clock"]
        print(f"resumed {work / STATE}: epoch {clock['epochs']}, {clock['cpu_seconds'] / 60:.1f} CPU-min", flush=True)
    while clock["cpu_seconds"] < 60 * budget_min and (max_epochs is None or clock["epochs"] < max_epochs):
        c0, w0 = time.process_time(), time.perf_counter()
        s2, loss = plain_epoch(model, opt, x, s2, batch_size=config.batch_size, decay=decay, gen=gen)
        clock["cpu_seconds"] += time.process_time() - c0
        clock["wall_seconds"] += time.perf_counter() - w0
        clock["epochs"] += 1
        clock["losses"].append(round(loss, 3))
        state = {"model": model.state_dict(), "optimiser": opt.state_dict(), "shuffle": gen.get_state()}
        save_checkpoint(work / STATE, {**state, "torch_rng": torch.get_rng_state(), "sigma2": s2, "clock": clock})
        print(
            f"epoch {clock['epochs']}: loss {loss:.1f}, sigma2 {float(s2):.5f}, "
            f"cpu {clock['cpu_seconds'] / 60:.1f} min",
            flush=True,
        )
    run = work / "run"
    run.mkdir(exist_ok=True)
    write_text_atomic(run / "config.json", config.to_json() + "\n")
    sigma2 = closed_form_sigma2(model, x, seed=config.seed + 2)  # Eq. 10 on the final networks
    model.likelihood.log_sigma2.fill_(torch.tensor(sigma2).log())
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = {"stage": 1, "epoch": clock["epochs"], "sigma2_star": sigma2, "done": True}
    save_checkpoint(
        run / "checkpoint.pt",
        {"model": weights, **meta, "shape": list(data.shape), "data": data_fingerprint(data, config)},
    )
    return {**clock, "sigma2_star": sigma2, "run": str(run)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=30.0, help="CPU-minutes of training (default 30)")
    p.add_argument("--work", type=Path, required=True, help="folder for the loop's state and its run folder")
    p.add_argument("--out", type=Path, default=None, help="also write the record here")
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    p.add_argument("--data-dir", default=os.environ.get("BALANCED_VAE_DATA"))
    p.add_argument("--net", default="small", help="network family (default small)")
    p.add_argument("--width", type=int, default=None, help="network width (default: the family's)")
    p.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs (default: the budget)")
    p.add_argument("--sigma2-decay", type=float, default=0.99, help="the running mean's decay per step (0.99)")
    p.add_argument("--n-fid", type=int, default=10_000, help="generated and test images for FID (default 10000)")
    p.add_argument("--train-threads", type=int, default=1, help="torch threads while training (default 1)")
    a = p.parse_args(argv)
    if not 0 <= a.sigma2_decay < 1:
        p.error(f"--sigma2-decay {a.sigma2_decay}: must be in [0, 1)")
    data = load_dataset(a.dataset, data_dir=a.data_dir)
    config = TrainConfig(
        dataset=a.dataset, data_dir=a.data_dir, net=a.net, width=a.width, stages=1, optimiser="adam", n_val=0
    ).resolved(tuple(data.shape), len(data.x_train), world=1)
    prov = provenance()
    score_threads = torch.get_num_threads()
    torch.set_num_threads(a.train_threads)
    clock = train_plain(config, data, a.work, a.budget, a.sigma2_decay, a.max_epochs)
    torch.set_num_threads(score_threads)
    t0 = time.perf_counter()
    res = evaluate_run(
        clock["run"], metrics="fid", sampler="gmm", n_fid=a.n_fid, data=data, progress=False, out=a.work / "fid.json"
    )
    fid = res["metrics"]["fid"]
    print(f"budget {a.budget:g} CPU-min, {clock['epochs']} epochs: FID {fid['values']['fid']:.2f}", file=sys.stderr)
    record = {
        "bench": "plain_loop",
        "config": json.loads(config.to_json()),
        "loop": {"sigma2_decay": a.sigma2_decay, "budget_cpu_minutes": a.budget, "max_epochs": a.max_epochs},
        "clock": {k: v for k, v in clock.items() if k != "run"},
        "fid": fid["values"]["fid"],
        "fid_wall_seconds": round(time.perf_counter() - t0, 1),
        "fid_protocol": fid["protocol"],
        "threads": {"train": a.train_threads, "score": score_threads},
        "torch": torch.__version__,
        "provenance": prov,
    }
    if a.out is not None:
        write_json_atomic(a.out, record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
