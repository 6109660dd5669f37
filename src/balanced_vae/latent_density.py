"""The latent space of a 2-D run as densities: prior, exact aggregate posterior (Eq. 12) and its GMM (Eq. 13).

:func:`latent_density_grid` evaluates the log-densities of 2-D samplers on one grid;
:func:`plot_latent_densities` draws them side by side on one colour scale (the density panels
of Table 1); :func:`latent_plot_for_run` does both for a trained run with 2-D latents.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from .model import encode_dataset
from .plots import save_fig
from .runs import Run, as_run, fit_gmm_for_run
from .samplers import AggregatePosteriorSampler, PriorSampler

__all__ = ["latent_density_grid", "latent_plot_for_run", "plot_latent_densities"]


def latent_density_grid(
    samplers: Mapping[str, Any], lim: float = 4.0, resolution: int = 200
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """log-densities of 2-D samplers on a square grid: returns the axis (R,) and name -> (R, R).

    The grid is ``linspace(-lim, lim, resolution)`` on both axes; entry [i, j] is the density
    at (z_1 = axis[j], z_2 = axis[i]) (row = z_2, as ``imshow(origin="lower")`` shows it).
    """
    axis = np.linspace(-lim, lim, resolution)
    z1, z2 = np.meshgrid(axis, axis)  # (R, R)
    z = torch.as_tensor(np.stack([z1.ravel(), z2.ravel()], 1), dtype=torch.float32)  # (R*R, 2)
    out = {}
    for name, s in samplers.items():
        if s.latent_dim != 2:
            raise ValueError(
                f"latent density plot of {name!r}: latent_dim is {s.latent_dim}, the plot needs 2; "
                "fix: train with --latent-dim 2"
            )
        out[name] = s.log_prob(z).double().numpy().reshape(resolution, resolution)
    return axis, out


def plot_latent_densities(
    samplers: Mapping[str, Any],
    path: str | Path,
    *,
    lim: float = 4.0,
    resolution: int = 200,
    span: float = 15.0,
    title: str | None = None,
) -> Path:
    """Side-by-side log-density heat maps of 2-D samplers on one grid and one colour scale.

    The colour scale runs from ``max - span`` to the largest log-density over all panels
    (nats); lower values are drawn in the colour map's lowest colour.
    """
    axis, dens = latent_density_grid(samplers, lim, resolution)
    vmax = max(float(d.max()) for d in dens.values())
    vmin = max(min(float(d.min()) for d in dens.values()), vmax - span)
    fig, axes = plt.subplots(1, len(dens), figsize=(4.2 * len(dens) + 1.0, 4.2), squeeze=False, constrained_layout=True)
    for ax, (name, d) in zip(axes[0], dens.items()):
        im = ax.imshow(
            np.clip(d, vmin, vmax), origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis", vmin=vmin, vmax=vmax
        )
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("z1")
        ax.set_ylabel("z2")
    fig.colorbar(im, ax=axes[0].tolist(), label="log density (nats)", shrink=0.9)
    if title:
        fig.suptitle(title)
    return save_fig(fig, path)


def latent_plot_for_run(
    run: Run | str | Path,
    out: str | Path | None = None,
    *,
    components: int | None = None,
    resolution: int = 200,
    lim: float | None = None,
    span: float = 15.0,
    data=None,
    data_dir: str | None = None,
    fit_on: str = "mean",
) -> Path:
    """The 2-D latent density figure of a run: prior, exact aggregate posterior, GMM (one PNG).

    Writes ``out`` (default ``RUN/latent_density.png``). The grid spans ``[-lim, lim]^2``,
    by default the larger of 4 and 1.1 x the 99.9th percentile of |mu| over the training codes.
    """
    run = as_run(run)
    if run.model.latent_dim != 2:
        raise ValueError(
            f"{run.path}: latent_dim is {run.model.latent_dim}; the latent density plot needs a "
            "run with 2-D latents (train with --latent-dim 2)"
        )
    k = components if components is not None else run.default_components
    mu, logvar = encode_dataset(run.model, run.images("train", data=data, data_dir=data_dir))
    agg = AggregatePosteriorSampler(mu, logvar)
    gmm = fit_gmm_for_run(run, k, data=data, fit_on=fit_on, data_dir=data_dir)
    if lim is None:
        lim = max(4.0, 1.1 * float(torch.quantile(mu.abs().flatten(), 0.999)))
    out = Path(out).expanduser() if out is not None else run.path / "latent_density.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    return plot_latent_densities(
        {
            "prior N(0, I)": PriorSampler(2),
            f"aggregate posterior (Eq. 12, N={agg.n_components})": agg,
            f"GMM (Eq. 13, K={k}, fit on {fit_on})": gmm,
        },
        out,
        lim=lim,
        resolution=resolution,
        span=span,
        title=f"{run.config.dataset}: log-densities of the latent space",
    )
