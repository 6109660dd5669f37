"""Run-level tools over the latent space (paper Section 3.5, Table 1, Table 4, Figures 2 and 4).

* :func:`write_samples` -- decode samples of the prior, the GMM (Eq. 13) or the exact
  aggregate posterior (Eq. 12): a grid of the means, a grid of the per-pixel sigma when the
  run has a variance head (Figure 4), the raw arrays, and optionally prior and GMM side by
  side (Figure 2).
* :func:`kl_gap` -- KL(q_GMM || p) and KL(q_agg || p) by Monte Carlo with Table 1's protocol.
* :func:`plot_latent_densities` / :func:`latent_plot_for_run` -- for 2-D latents, log-density
  heat maps of prior, aggregate posterior and GMM on one grid and one colour scale.
* :func:`gmm_ablation` / :func:`gmm_ablation_for_run` -- fit the GMM for several K on the same
  codes and report held-out log-likelihood and fitting time (Table 4).

Everything written is a PNG, a ``.npy`` array or JSON, each written atomically.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from .atomic import atomic_write, write_json_atomic
from .likelihoods import PixelVariance
from .model import encode_dataset
from .plots import grid, save_fig, save_grid
from .runs import Run, as_run, fit_gmm_for_run, make_sampler
from .samplers import SAMPLER_KINDS, AggregatePosteriorSampler, GaussianMixtureSampler, PriorSampler, kl_monte_carlo
from .table_run import is_table_run, write_table_samples

log = logging.getLogger(__name__)

GRID_MAX = 256  # PNG grids show at most this many samples; the .npy arrays keep all n


def _save_npy(path: Path, arr: np.ndarray) -> Path:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)

    atomic_write(path, write)
    return path


# ---------------------------------------------------------------------- generation


@torch.no_grad()
def decode_samples(model, z: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode codes z (n, L): means g(z) (n, C, H, W) in (0, 1) and per-pixel sigma (n, C, H, W)."""
    means, sigmas = [], []
    for i in range(0, len(z), batch_size):
        m, s = model.generate(z[i : i + batch_size])
        means.append(m)
        sigmas.append(s)
    return torch.cat(means), torch.cat(sigmas)


def _tile(values: np.ndarray, nrow: int | None, pad: int = 1) -> np.ndarray:
    """Tile maps (N, H, W) into one (rows*(H+pad)+pad, cols*(W+pad)+pad) array, NaN between tiles."""
    n, h, w = values.shape
    ncol = nrow or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncol)
    out = np.full((nrows * (h + pad) + pad, ncol * (w + pad) + pad), np.nan)
    for i in range(n):
        r, c = divmod(i, ncol)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = values[i]
    return out


def save_value_grid(
    values: torch.Tensor,
    path: str | Path,
    *,
    nrow: int | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    label: str = "sigma",
) -> Path:
    """A grid of value maps (N, C, H, W) (channels averaged) on one colour scale with a colour bar (Figure 4)."""
    arr = _tile(values.detach().float().mean(1).cpu().numpy(), nrow)  # NaN = white gaps
    fig, ax = plt.subplots(figsize=(6, 6 * arr.shape[0] / arr.shape[1] + 0.4))
    cm = plt.get_cmap(cmap).with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(arr), cmap=cm, vmin=float(np.nanmin(arr)), vmax=float(np.nanmax(arr)))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=label)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return save_fig(fig, path)


def save_side_by_side(
    panels: Sequence[tuple[str, torch.Tensor]], path: str | Path, *, nrow: int | None = None, title: str | None = None
) -> Path:
    """Image grids (N, C, H, W) in [0, 1] side by side, one titled panel each (Figure 2)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5.4), squeeze=False)
    for ax, (name, x) in zip(axes[0], panels):
        arr = grid(x, nrow=nrow)
        ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=255)
        ax.set_title(name)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return save_fig(fig, path)


def _sampler_name(kind: str, sampler) -> str:
    if kind == "gmm":
        return f"GMM K={sampler.n_components} (Eq. 13)"
    if kind == "aggregate":
        return f"aggregate posterior N={sampler.n_components} (Eq. 12)"
    return "prior N(0, I)"


def write_samples(
    run: Run | str | Path,
    out_dir: str | Path,
    *,
    sampler: str = "gmm",
    components: int | None = None,
    n: int = 64,
    seed: int = 0,
    compare: bool = False,
    data=None,
    data_dir: str | None = None,
    fit_on: str = "mean",
    nrow: int | None = None,
    scale: int = 3,
) -> dict:
    """Generate ``n`` images of a run from ``sampler`` and write them into ``out_dir``.

    Files (``KIND`` is the sampler): ``KIND_means.png`` (grid of g(z) of the first
    ``min(n, GRID_MAX)`` samples: 10,000 samples would make an 8703x8703 picture), ``KIND_z.npy`` (n, L),
    ``KIND_means.npy`` (n, C, H, W), and for a run with a per-pixel variance head (stage 2)
    ``KIND_sigma.png`` and ``KIND_sigma.npy`` (Figure 4); a one-stage run's sigma is global
    and only reported. ``compare=True`` adds ``compare_prior_gmm.png``: prior and GMM samples
    of the same run side by side (Figure 2). ``KIND_samples.json`` records the protocol.
    The codes are drawn with a generator seeded ``seed``. Returns that summary.
    """
    if sampler not in SAMPLER_KINDS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLER_KINDS}")

    run = as_run(run)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    k = components if components is not None else run.default_components
    s = make_sampler(sampler, run, components=k, data=data, fit_on=fit_on, data_dir=data_dir)
    z = s.sample(n, generator=torch.Generator().manual_seed(seed))  # (n, L)
    means, sigma = decode_samples(run.model, z)  # (n, C, H, W)
    per_pixel = isinstance(run.model.likelihood, PixelVariance)
    n_grid = min(n, GRID_MAX)
    nrow = nrow or math.ceil(math.sqrt(n_grid))
    table = is_table_run(run)
    files = [_save_npy(out / f"{sampler}_z.npy", z.numpy()), _save_npy(out / f"{sampler}_means.npy", means.numpy())]
    if table:  # a table: CSV files in its original units instead of image grids
        files += write_table_samples(run, out, sampler, means, sigma, seed)
        compare, n_grid = False, 0
    else:
        files.insert(0, save_grid(means[:n_grid], out / f"{sampler}_means.png", nrow=nrow, scale=scale))
    summary = {
        "run": str(run.path),
        "stage": run.stage,
        "sampler": sampler,
        "name": _sampler_name(sampler, s),
        "n": n,
        "n_grid": n_grid,
        "seed": seed,
        "image_shape": list(means.shape[1:]),
        "table": table,
        "per_pixel_sigma": per_pixel,
        ("sigma2_floor" if per_pixel else "sigma2_global"): run.model.likelihood.sigma2,
    }
    if sampler == "gmm":
        summary.update(components=k, fit_on=fit_on)
    if per_pixel and table:
        files.append(_save_npy(out / f"{sampler}_sigma.npy", sigma.numpy()))
        summary["sigma_mean"] = float(sigma.mean())
    elif per_pixel:
        files += [
            save_value_grid(
                sigma[:n_grid],
                out / f"{sampler}_sigma.png",
                nrow=nrow,
                label="decoder sigma",
                title=f"per-pixel sigma of {sampler} samples",
            ),
            _save_npy(out / f"{sampler}_sigma.npy", sigma.numpy()),
        ]
        summary["sigma_mean"] = float(sigma.mean())
    elif not table:
        log.info(
            "%s: one global sigma = %.4g (no per-pixel head); no sigma grid written",
            run.path,
            math.sqrt(run.model.likelihood.sigma2),
        )
    if compare:
        g = torch.Generator().manual_seed(seed)
        prior = PriorSampler(run.model.latent_dim)
        gmm = (
            s
            if sampler == "gmm"
            else make_sampler("gmm", run, components=k, data=data, fit_on=fit_on, data_dir=data_dir)
        )
        x_prior, _ = decode_samples(run.model, prior.sample(n_grid, generator=g))
        x_gmm, _ = decode_samples(run.model, gmm.sample(n_grid, generator=torch.Generator().manual_seed(seed)))
        files.append(
            save_side_by_side(
                [("prior N(0, I)", x_prior), (_sampler_name("gmm", gmm), x_gmm)],
                out / "compare_prior_gmm.png",
                nrow=nrow,
            )
        )
        summary["compare_components"] = k
    summary["files"] = [p.name for p in files]
    write_json_atomic(out / f"{sampler}_samples.json", summary)
    return summary


# ---------------------------------------------------------------------- KL gap (Table 1)


def kl_gap(
    run: Run | str | Path,
    *,
    components: int | None = None,
    n: int = 10_000,
    runs: int = 10,
    seed: int = 0,
    aggregate: bool = True,
    data=None,
    data_dir: str | None = None,
    fit_on: str = "mean",
    progress: bool = False,
) -> dict:
    """KL(q_GMM || p) and KL(q_agg || p) of a run by Monte Carlo (Table 1).

    ``log q`` is the GMM's density for the first and the exact mixture of Eq. 12 over the run's
    N training posteriors for the second; p = N(0, I). Each is :func:`kl_monte_carlo` with ``n``
    samples per run and ``runs`` runs (generators seeded ``seed``, ``seed + 1``, ...), reported
    as mean and standard deviation over runs. The result holds the protocol beside the numbers.
    ``fit_on="mean"`` (default) measures the GMM that :func:`write_samples` draws from;
    ``fit_on="sample"`` fits the better density approximation of Eq. 12 (see
    :class:`~balanced_vae.samplers.GaussianMixtureSampler`), which gives a smaller KL when the
    encoder leaves latent dimensions unused.
    """
    run = as_run(run)
    k = components if components is not None else run.default_components
    prior = PriorSampler(run.model.latent_dim)
    gmm = fit_gmm_for_run(run, k, data=data, fit_on=fit_on, data_dir=data_dir)
    t0 = time.perf_counter()
    result = {
        "protocol": {
            "run": str(run.path),
            "stage": run.stage,
            "dataset": run.config.dataset,
            "n_train_codes": gmm.n_fit_,
            "latent_dim": run.model.latent_dim,
            "p": "N(0, I)",
            "K": k,
            "fit_on": fit_on,
            "covariance_type": gmm.covariance_type,
            "gmm_random_state": gmm.random_state,
            "n": n,
            "runs": runs,
            "seed": seed,
            "estimator": "mean over n samples z ~ q of log q(z) - log p(z); mean and std "
            "(ddof=1) over runs with generators seeded seed + r",
        },
        "kl_gmm": kl_monte_carlo(gmm, prior, n=n, runs=runs, seed=seed, progress=progress, desc="KL(q_GMM || p)"),
    }
    result["kl_gmm"]["seconds"] = round(time.perf_counter() - t0, 3)
    if aggregate:
        t0 = time.perf_counter()
        mu, logvar = encode_dataset(run.model, run.images("train", data=data, data_dir=data_dir))
        agg = AggregatePosteriorSampler(mu, logvar)
        result["protocol"]["N_aggregate"] = agg.n_components
        result["kl_aggregate"] = kl_monte_carlo(
            agg, prior, n=n, runs=runs, seed=seed, progress=progress, desc="KL(q_agg || p)"
        )
        result["kl_aggregate"]["seconds"] = round(time.perf_counter() - t0, 3)
    return result


# ---------------------------------------------------------------------- 2-D latent densities


def latent_density_grid(
    samplers: Mapping[str, object], lim: float = 4.0, resolution: int = 200
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
    samplers: Mapping[str, object],
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


# ---------------------------------------------------------------------- K ablation (Table 4)


def gmm_ablation(
    train_codes: torch.Tensor,
    heldout_codes: torch.Tensor,
    components: Sequence[int],
    *,
    covariance_type: str = "full",
    random_state: int = 0,
    max_iter: int = 200,
) -> list[dict]:
    """Fit the GMM for each K in ``components`` on the same codes (N, L); one row per K.

    Each row: ``K``, ``train_ll`` and ``heldout_ll`` (mean log-likelihood per code, nats),
    ``fit_seconds`` (EM wall time), ``n_iter``, ``converged``.
    """
    rows = []
    for k in components:
        s = GaussianMixtureSampler(
            int(k), covariance_type=covariance_type, random_state=random_state, max_iter=max_iter
        ).fit(train_codes)
        rows.append(
            {
                "K": int(k),
                "train_ll": s.score(train_codes),
                "heldout_ll": s.score(heldout_codes),
                "fit_seconds": round(s.fit_seconds_, 4),
                "n_iter": s.n_iter_,
                "converged": s.converged_,
            }
        )
        log.info("K=%d: held-out log-likelihood %.3f, %.2fs", k, rows[-1]["heldout_ll"], s.fit_seconds_)
    return rows


def gmm_ablation_for_run(
    run: Run | str | Path,
    components: Sequence[int] = (8, 16, 32, 64, 128),
    *,
    fit_on: str = "mean",
    random_state: int = 0,
    data=None,
    data_dir: str | None = None,
    out: str | Path | None = None,
) -> dict:
    """Table 4 for a run: GMMs for each K fitted on its training codes, scored on its test codes.

    The codes are the posterior means (``fit_on="mean"``) or one z ~ q(z|x) per image
    (``fit_on="sample"``, drawn with generators seeded ``random_state`` (train) and
    ``random_state + 1`` (test)). Writes the result as JSON to ``out`` when given.
    """
    run = as_run(run)
    codes = {}
    for i, split in enumerate(("train", "test")):
        mu, logvar = encode_dataset(run.model, run.images(split, data=data, data_dir=data_dir))
        if fit_on == "sample":
            g = torch.Generator().manual_seed(random_state + i)
            mu = run.model.reparameterise(mu, logvar, generator=g)
        elif fit_on != "mean":
            raise ValueError(f"fit_on={fit_on!r}; choose 'mean' or 'sample'")
        codes[split] = mu
    result = {
        "protocol": {
            "run": str(run.path),
            "stage": run.stage,
            "dataset": run.config.dataset,
            "fit_on": fit_on,
            "n_train_codes": len(codes["train"]),
            "n_heldout_codes": len(codes["test"]),
            "heldout": "the run's test split",
            "covariance_type": "full",
            "random_state": random_state,
            "ll": "mean log q_GMM(code) per code, nats",
        },
        "rows": gmm_ablation(codes["train"], codes["test"], components, random_state=random_state),
    }
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, result)
    return result
