"""The demo: both stages of Algorithm 1 on the embedded ``digits`` set, with a small report.

Writes into the report folder: the run (config, checkpoints, metrics), reconstructions
beside their per-pixel sigma maps, samples from the prior, prior and GMM (Eq. 13) samples
side by side, learning curves and the sigma^2 trajectory, ``summary.json``, and the
self-contained HTML report of the run (``report.html``, :mod:`balanced_vae.report`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from .atomic import write_json_atomic
from .checkpoint import CHECKPOINT, METRICS, STAGE1
from .config import TrainConfig
from .data import load_dataset
from .latent_samples import decode_samples
from .plots import plot_curves, read_metrics, save_grid, save_rows, save_side_by_side
from .report import build_report
from .runs import load_run, make_sampler
from .train import evaluate_elbo, train

log = logging.getLogger(__name__)

DEMO_CONFIG = TrainConfig(
    dataset="digits", method="learned", stages=2, epochs=60, min_epochs=10, batch_size=64, tol=2e-3, window=5
)


def run_demo(out: str | Path, *, config: TrainConfig = DEMO_CONFIG, progress: bool = True) -> dict:
    """Train ``config`` (both stages) into ``out/run`` and write the report; returns the summary."""
    out = Path(out).expanduser()
    t0 = time.perf_counter()
    data = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    run_dir = out / "run"
    train(config, run_dir, data=data, progress=progress, resume=(run_dir / CHECKPOINT).exists())
    run = load_run(run_dir)
    stage1 = load_run(run_dir, which=STAGE1)
    x = data.x_test[:16]
    mean1, sigma1 = stage1.model.reconstruct(x)
    mean2, sigma2 = run.model.reconstruct(x)
    save_rows(
        [("data", x), ("stage 1 mean", mean1), ("stage 2 mean", mean2), ("stage 2 sigma", sigma2)],
        out / "reconstructions.png",
        cmaps=[None, None, None, "viridis"],
        title="test images, reconstructions and per-pixel sigma",
    )
    z = torch.randn(64, run.model.latent_dim, generator=torch.Generator().manual_seed(config.seed))
    samples, _ = run.model.generate(z)
    save_grid(samples, out / "prior_samples.png", nrow=8, scale=4)
    gmm = make_sampler("gmm", run, components=None, data=data)
    gmm_samples, _ = decode_samples(run.model, gmm.sample(64, generator=torch.Generator().manual_seed(config.seed)))
    save_side_by_side(
        [("prior N(0, I)", samples), (f"GMM K={gmm.n_components} (Eq. 13)", gmm_samples)],
        out / "prior_vs_gmm.png",
        nrow=8,
    )
    metrics = read_metrics(run_dir / METRICS)
    plot_curves(metrics, out / "curves.png")
    s1 = [m for m in metrics if m["stage"] == 1]
    s2 = [m for m in metrics if m["stage"] == 2]
    summary = {
        "dataset": config.dataset,
        "n_train": len(data.x_train),
        "n_test": len(data.x_test),
        "stage1_epochs": len(s1),
        "stage2_epochs": len(s2),
        "sigma2_star": run.checkpoint["sigma2_star"],
        "stage1_test_elbo": evaluate_elbo(stage1.model, data.x_test, seed=config.seed + 1)["elbo"],
        "stage2_test_elbo": evaluate_elbo(run.model, data.x_test, seed=config.seed + 1)["elbo"],
        "stage2_mean_sigma2": float(sigma2.pow(2).mean()),
        "seconds": round(time.perf_counter() - t0, 1),
        "files": ["report.html", "reconstructions.png", "prior_samples.png", "prior_vs_gmm.png", "curves.png", "run/"],
    }
    build_report(run_dir, out / "report.html", seed=config.seed, data=data)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    write_json_atomic(out / "summary.json", summary)
    return summary
