"""Samples of a run's latent space, decoded (paper Section 3.5, Figures 2 and 4).

:func:`write_samples` decodes samples of the prior, the GMM (Eq. 13) or the exact aggregate
posterior (Eq. 12): a grid of the means, a grid of the per-pixel sigma when the run has a
variance head (Figure 4), the raw arrays, and optionally prior and GMM side by side (Figure 2).
Everything written is a PNG, a ``.npy`` array or JSON, each written atomically.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write, write_json_atomic
from .likelihoods import PixelVariance
from .plots import save_grid, save_side_by_side, save_value_grid
from .runs import Run, as_run, make_sampler
from .samplers import SAMPLER_KINDS, PriorSampler
from .table_run import is_table_run, write_table_samples

log = logging.getLogger(__name__)

__all__ = ["GRID_MAX", "decode_samples", "write_samples"]

GRID_MAX = 256  # PNG grids show at most this many samples; the .npy arrays keep all n


def _save_npy(path: Path, arr: np.ndarray) -> Path:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)

    atomic_write(path, write)
    return path


@torch.no_grad()
def decode_samples(model, z: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode codes z (n, L): means g(z) (n, C, H, W) in (0, 1) and per-pixel sigma (n, C, H, W)."""
    means, sigmas = [], []
    for i in range(0, len(z), batch_size):
        m, s = model.generate(z[i : i + batch_size])
        means.append(m)
        sigmas.append(s)
    return torch.cat(means), torch.cat(sigmas)


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
    if per_pixel:
        files += _write_sigma(out, sampler, sigma[:n_grid] if not table else None, sigma, nrow=nrow)
        summary["sigma_mean"] = float(sigma.mean())
    elif not table:
        log.info(
            "%s: one global sigma = %.4g (no per-pixel head); no sigma grid written",
            run.path,
            run.model.likelihood.sigma2**0.5,
        )
    if compare:
        gmm = (
            s
            if sampler == "gmm"
            else make_sampler("gmm", run, components=k, data=data, fit_on=fit_on, data_dir=data_dir)
        )
        files.append(_write_comparison(run.model, gmm, out / "compare_prior_gmm.png", n=n_grid, nrow=nrow, seed=seed))
        summary["compare_components"] = k
    summary["files"] = [p.name for p in files]
    write_json_atomic(out / f"{sampler}_samples.json", summary)
    return summary


def _write_sigma(out: Path, sampler: str, shown: torch.Tensor | None, sigma: torch.Tensor, *, nrow: int) -> list[Path]:
    """Figure 4: the per-pixel sigma of the samples, ``sigma`` (n, C, H, W), as an array and, unless ``shown``
    is None (a table), the grid of ``shown`` (its first samples)."""
    files = []
    if shown is not None:
        title = f"per-pixel sigma of {sampler} samples"
        files.append(
            save_value_grid(shown, out / f"{sampler}_sigma.png", nrow=nrow, label="decoder sigma", title=title)
        )
    return files + [_save_npy(out / f"{sampler}_sigma.npy", sigma.numpy())]


def _write_comparison(model, gmm, path: Path, *, n: int, nrow: int, seed: int) -> Path:
    """Figure 2: ``n`` prior and ``n`` GMM samples of the same decoder side by side, each drawn with a generator
    seeded ``seed``."""
    x_prior, _ = decode_samples(
        model, PriorSampler(model.latent_dim).sample(n, generator=torch.Generator().manual_seed(seed))
    )
    x_gmm, _ = decode_samples(model, gmm.sample(n, generator=torch.Generator().manual_seed(seed)))
    return save_side_by_side([("prior N(0, I)", x_prior), (_sampler_name("gmm", gmm), x_gmm)], path, nrow=nrow)
