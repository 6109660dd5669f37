"""The GMM of the latent space against the prior and the exact aggregate posterior (Section 3.5, Tables 1, 4).

* :func:`kl_gap` -- KL(q_GMM || p) and KL(q_agg || p) by Monte Carlo with Table 1's protocol.
* :func:`gmm_ablation` / :func:`gmm_ablation_for_run` -- fit the GMM for several K on the same
  codes and report held-out log-likelihood and fitting time (Table 4).

Decoded samples (Figures 2 and 4) are :mod:`balanced_vae.latent_samples`, the 2-D density
plots :mod:`balanced_vae.latent_density`; both are importable from here as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .atomic import write_json_atomic
from .latent_density import latent_density_grid, latent_plot_for_run, plot_latent_densities
from .latent_samples import GRID_MAX, decode_samples, write_samples
from .model import encode_dataset
from .plots import save_side_by_side, save_value_grid
from .runs import Run, as_run, fit_gmm_for_run
from .samplers import AggregatePosteriorSampler, GaussianMixtureSampler, PriorSampler, kl_monte_carlo

log = logging.getLogger(__name__)

__all__ = [
    "GRID_MAX",
    "decode_samples",
    "gmm_ablation",
    "gmm_ablation_for_run",
    "kl_gap",
    "latent_density_grid",
    "latent_plot_for_run",
    "plot_latent_densities",
    "save_side_by_side",
    "save_value_grid",
    "write_samples",
]


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
