"""What a run on a table writes: samples as CSV in the original units and the report's figures.

A run trained on a real-valued table (``csv:PATH``, a 2-D ``npz:PATH``; :mod:`balanced_vae.data.table`)
holds rows as (D, 1, 1) examples of standardised features with an identity decoder mean.
Image grids mean nothing for it, so :func:`balanced_vae.latent_samples.write_samples` and
:func:`balanced_vae.report.build_report` call this module instead: samples go to CSV files with
the table's column names, in the original units (``x = s x' + m``, sigma times s), and the
report plots rows and their per-feature sigma (Eq. 11) as curves over the features.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
import torch

from .atomic import write_text_atomic
from .data import DataError
from .data.table import Standardiser, load_table
from .plots import plt, save_fig

log = logging.getLogger(__name__)


def is_table_run(run) -> bool:
    """Whether ``run`` models a real-valued table: identity decoder mean on (D, 1, 1) examples."""
    return getattr(run.model, "output", "sigmoid") == "identity" and tuple(run.shape[1:]) == (1, 1)


def scaling(run) -> tuple[Standardiser, list[str]]:
    """The run's standardisation and column names, recomputed from the table its config names
    (identity scaling and ``x0, x1, ...`` for data given from Python)."""
    try:
        _, scaler, columns = load_table(run.config.dataset, run.config.seed)
    except DataError:
        d = run.shape[0]
        log.info(
            "%s: %s is not a table the CLI can load; samples are written in standardised units",
            run.path,
            run.config.dataset,
        )
        return Standardiser(np.zeros(d), np.ones(d)), [f"x{j}" for j in range(d)]
    return scaler, columns


def table_units(run) -> dict:
    """The protocol lines of a table run's ELBO and IWAE: they are nats per row of the standardised
    table; ``log_det_scaling`` (sum_d log s_d) converts them to the table's own units."""
    scaler, _ = scaling(run)
    return {
        "units": "nats per row of the standardised table",
        "log_det_scaling": scaler.log_det(),
        "original_units": "log p(x) = value - log_det_scaling (change of variables x' = (x - m) / s)",
    }


def _csv(rows: np.ndarray, columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows([[f"{v:.9g}" for v in r] for r in rows])
    return buf.getvalue()


def write_table_samples(run, out: Path, kind: str, means: torch.Tensor, sigma: torch.Tensor, seed: int) -> list[Path]:
    """``KIND_means.csv`` (decoder means g(z)), ``KIND_sigma.csv`` (decoder sigma per feature) and
    ``KIND_rows.csv`` (draws g(z) + sigma eps, eps from a generator seeded ``seed``), each
    (n rows, D columns) in the table's original units. ``means``, ``sigma``: (n, D, 1, 1)."""
    scaler, columns = scaling(run)
    m, s = means.flatten(1).double(), sigma.flatten(1).double()  # (n, D)
    eps = torch.randn(m.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    files = []
    for name, rows in (
        ("means", scaler.invert(m.numpy())),
        ("sigma", s.numpy() * scaler.scale),
        ("rows", scaler.invert((m + s * eps).numpy())),
    ):
        path = out / f"{kind}_{name}.csv"
        write_text_atomic(path, _csv(rows, columns))
        files.append(path)
    return files


def plot_reconstructions(
    x: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor, path: Path, columns: list[str]
) -> Path:
    """Rows x, their reconstructions g(mu(x)) and a +-2 sigma band, one panel per row, over the
    features (standardised units). x, mean, sigma: (n, D, 1, 1)."""
    x, mean, sigma = (t.flatten(1).cpu().numpy() for t in (x, mean, sigma))  # (n, D)
    n, d = x.shape
    fig, axes = plt.subplots(n, 1, figsize=(max(6.0, 0.25 * d), 1.6 * n), sharex=True, squeeze=False)
    f = np.arange(d)
    for i, ax in enumerate(axes[:, 0]):
        ax.fill_between(
            f, mean[i] - 2 * sigma[i], mean[i] + 2 * sigma[i], color="tab:blue", alpha=0.2, label="g(mu(x)) +- 2 sigma"
        )
        ax.plot(f, mean[i], color="tab:blue", lw=1)
        ax.plot(f, x[i], "k.", ms=4, label="x")
        ax.set_ylabel(f"row {i}", fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xticks(f)
    axes[-1, 0].set_xticklabels(columns, rotation=90, fontsize=6)
    fig.tight_layout()
    return save_fig(fig, path)


def plot_sample_moments(x: torch.Tensor, draws: dict[str, torch.Tensor], path: Path, columns: list[str]) -> Path:
    """Per-feature mean +- one standard deviation of the test rows ``x`` and of each set of model
    draws (standardised units): does the sampler cover the data? Tensors (n, D, 1, 1)."""
    d = x.shape[1]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * d), 3.0))
    f = np.arange(d)
    sets = {"test rows": x, **draws}
    for j, (name, t) in enumerate(sets.items()):
        v = t.flatten(1).double().cpu().numpy()
        ax.errorbar(f + (j - (len(sets) - 1) / 2) * 0.2, v.mean(0), yerr=v.std(0), fmt="o", ms=3, capsize=2, label=name)
    ax.set_xticks(f)
    ax.set_xticklabels(columns, rotation=90, fontsize=6)
    ax.set_ylabel("standardised value")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_fig(fig, path)
