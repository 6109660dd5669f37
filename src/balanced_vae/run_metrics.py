"""The paper's metrics of a trained run, each a record: its numbers and its protocol (Section 5).

Each function takes the run (its model, stage and checkpoint), the test images and the
protocol's counts, and returns ``{"values": ..., "protocol": ...}``; :mod:`balanced_vae.evaluate`
registers them by name, gives them their protocol and writes them. The numbers themselves are
the pure functions of :mod:`balanced_vae.metrics` (ELBO, IWAE, Frechet distance, calibration),
:mod:`balanced_vae.precision_recall` and :func:`balanced_vae.samplers.kl_monte_carlo`; the
Inception features come from :mod:`balanced_vae.fid`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch

from . import fid as fid_module  # the network's calls, looked up when used (tests put a stand-in there)
from .fid_stats import real_statistics
from .metrics import (
    calibration,
    dequantised_log_likelihood,
    elbo,
    frechet_distance_to_features,
    iwae_log_likelihood,
)
from .precision_recall import improved_precision_recall
from .samplers import kl_monte_carlo

log = logging.getLogger(__name__)

__all__ = ["calibration_record", "elbo_record", "fid_record", "iwae_record", "kl_record", "pr_record"]


def summary(v: torch.Tensor) -> dict[str, float | None]:
    """Mean and standard error of the mean of per-image values (N,)."""
    v = v.double()
    sem = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else None
    return {"mean": float(v.mean()), "sem": sem}


def elbo_record(run, x_test: torch.Tensor, *, seed: int, batch_size: int = 1000) -> dict[str, Any]:
    """The ELBO (Eq. 9 / Eq. 11) and its two terms, one z ~ q(z|x) per image of x_test (N, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    terms: dict[str, list[torch.Tensor]] = {"elbo": [], "rec": [], "kl": []}
    for i in range(0, len(x_test), batch_size):
        t = elbo(run.model, x_test[i : i + batch_size], generator=g)
        for key in terms:
            terms[key].append(t[key])
    values = {key: summary(torch.cat(v)) for key, v in terms.items()}
    return {
        "values": values,
        "protocol": {
            "split": "test",
            "n": len(x_test),
            "z_per_image": 1,
            "kl": "closed form",
            "seed": seed,
            "equation": "Eq. 11" if run.stage == 2 else "Eq. 9",
            "likelihood": run.model.likelihood.describe(),
            "units": "nats per image",
        },
    }


def iwae_record(
    run, x: torch.Tensor, priors: dict[str, Any], *, k: int, seed: int, levels: int | None
) -> dict[str, Any]:
    """IWAE per p(z); dequantised IWAE and bits/dim only for data quantised to ``levels`` levels."""
    values: dict[str, dict[str, Any]] = {}
    for name, prior in priors.items():
        t0 = time.perf_counter()
        ll = iwae_log_likelihood(run.model, x, k, prior=prior, generator=torch.Generator().manual_seed(seed))
        values[name] = {"log_likelihood": summary(ll)}
        if levels is not None:
            deq = dequantised_log_likelihood(
                run.model, x, k, prior=prior, levels=levels, generator=torch.Generator().manual_seed(seed)
            )
            values[name].update(
                {
                    "dequantised_log_likelihood": summary(deq["log_likelihood"]),
                    "bits_per_dim": summary(deq["bits_per_dim"]),
                }
            )
        values[name]["seconds"] = round(time.perf_counter() - t0, 2)
    d = int(math.prod(x.shape[1:]))
    proto = {
        "split": "test",
        "n": len(x),
        "images": f"first {len(x)}",
        "k": k,
        "seed": seed,
        "bound": "IWAE (Burda et al. 2016): E[logsumexp_k log w_k - log k]",
        "levels": levels,
        "priors": list(priors),
        "units": "nats per image",
    }
    if levels is None:
        proto["bits_per_dim"] = "not reported: the data are not quantised (resized or float images)"
    else:
        proto["dequantisation"] = f"x + u, u ~ U(0, 1/{levels}) per pixel, drawn before z"
        proto["bits_per_dim"] = f"-(ll - D log {levels}) / (D log 2), D = {d}"
    return {"values": values, "protocol": proto}


def generated_means(run, sampler, n: int, seed: int, batch_size: int = 1000) -> torch.Tensor:
    """Decoder means g(z) (n, C, H, W) of ``n`` codes z (n, L) drawn from ``sampler`` with a generator seeded
    ``seed``, decoded ``batch_size`` at a time: the generated images of FID and precision/recall."""
    z = sampler.sample(n, generator=torch.Generator().manual_seed(seed))  # (n, L)
    with torch.no_grad():
        return torch.cat([run.model.decode_mean(z[i : i + batch_size]) for i in range(0, n, batch_size)])


def fid_record(
    run,
    sampler,
    x_test: torch.Tensor,
    *,
    n: int,
    seed: int,
    dataset: str,
    batch_size: int,
    cache_dir,
    data_dir,
    device,
    progress: bool,
    backend: str = "auto",
) -> dict[str, Any]:
    """FID of ``n`` decoder means g(z), z from ``sampler``, against the first ``n`` of x_test (statistics cached)."""
    t0 = time.perf_counter()
    mu_r, cov_r, real = real_statistics(
        dataset,
        x_test,
        split="test",
        n=n,
        data_dir=data_dir,
        cache_dir=cache_dir,
        batch_size=batch_size,
        device=device,
        progress=progress,
        backend=backend,
    )
    feats = fid_module.inception_features(
        generated_means(run, sampler, n, seed),
        batch_size=batch_size,
        device=device,
        backend=backend,
        cache_dir=cache_dir,
        progress=progress,
        desc="generated features",
    )
    fid = frechet_distance_to_features(mu_r, cov_r, feats)
    warning = fid_module.small_n_warning(n, f"FID of {dataset}")
    return {
        "values": {"fid": fid, "seconds": round(time.perf_counter() - t0, 1)},
        "protocol": {
            "generated": {"n": n, "seed": seed, "images": "decoder means g(z), z from the sampler"},
            "real": {k: real[k] for k in ("dataset", "split", "n", "images", "cache_hit", "backend")},
            "inception": fid_module.inception_protocol(),
            "backend": fid_module.backend_protocol(backend, device),
            **({"warning": warning} if warning else {}),
        },
    }


def pr_record(
    run,
    samplers: dict[str, Any],
    x_test: torch.Tensor,
    *,
    n: int,
    k: int,
    seed: int,
    batch_size: int,
    device,
    progress: bool,
) -> dict[str, Any]:
    """Improved precision and recall of ``n`` decoded samples of each sampler against the first ``n`` of x_test."""
    t0 = time.perf_counter()
    real = fid_module.inception_features(
        x_test[:n], batch_size=batch_size, device=device, progress=progress, desc="real features"
    )  # (n, 2048)
    values = {}
    for name, sampler in samplers.items():
        t1 = time.perf_counter()
        gen = fid_module.inception_features(
            generated_means(run, sampler, n, seed),
            batch_size=batch_size,
            device=device,
            progress=progress,
            desc=f"{name} features",
        )  # (n, 2048)
        values[name] = {**improved_precision_recall(real, gen, k=k), "seconds": round(time.perf_counter() - t1, 1)}
        log.info("%s: precision %.3f, recall %.3f", name, values[name]["precision"], values[name]["recall"])
    return {
        "values": values,
        "protocol": {
            "generated": {"n": n, "seed": seed, "images": "decoder means g(z), z from each sampler"},
            "real": {"split": "test", "n": n, "images": f"first {n}"},
            "k": k,
            "metric": "improved precision and recall (Kynkaanniemi et al. 2019): k-NN balls on Inception pool features",
            "samplers": list(samplers),
            "inception": fid_module.inception_protocol(),
            "real_feature_seconds": round(time.perf_counter() - t0, 1),
        },
    }


def kl_record(q_agg, prior, gmm, *, n: int, runs: int, seed: int, progress: bool) -> dict[str, Any]:
    """The three KLs between the aggregate posterior (Eq. 12), its GMM (Eq. 13) and the prior, named exactly.

    ``KL(q_GMM || p)`` is the paper's Table 1 quantity; the other two say how far the prior
    and the GMM are from the exact aggregate posterior.
    """
    pairs = {"KL(q_GMM || p)": (gmm, prior), "KL(q_agg || p)": (q_agg, prior), "KL(q_agg || q_GMM)": (q_agg, gmm)}
    values = {
        name: kl_monte_carlo(q, p, n=n, runs=runs, seed=seed, progress=progress, desc=name)
        for name, (q, p) in pairs.items()
    }
    return {
        "values": values,
        "protocol": {
            "q_agg": "aggregate posterior of the training codes (Eq. 12)",
            "q_GMM": "the GMM (Eq. 13)",
            "p": "N(0, I)",
            "n": n,
            "runs": runs,
            "seed": seed,
            "estimator": "mean of log q(z) - log p(z) over n samples z ~ q, per run; the paper's "
            "Table 1 reports KL(q_GMM || p)",
            "units": "nats",
        },
    }


def calibration_record(run, x_test: torch.Tensor, *, batch_size: int = 1000) -> dict[str, Any]:
    """Figure 3: how well the predicted variance at mu(x) matches the squared error on x_test."""
    means, logvars = [], []
    with torch.no_grad():
        for i in range(0, len(x_test), batch_size):
            mu, _ = run.model.encode(x_test[i : i + batch_size])
            mean, logvar = run.model.decode(mu)  # (b, C, H, W), broadcastable
            means.append(mean)
            logvars.append(torch.broadcast_to(logvar, mean.shape))
    sigma2_star = float(run.checkpoint.get("sigma2_star") or run.model.likelihood.sigma2)
    values = calibration(x_test, torch.cat(means), torch.cat(logvars), sigma2_global=sigma2_star)
    return {
        "values": values,
        "protocol": {
            "split": "test",
            "n": len(x_test),
            "z": "posterior mean mu(x)",
            "predicted": "per-pixel sigma^2 (Eq. 11)" if run.stage == 2 else "global sigma^2 (Eq. 9)",
            "global": "sigma*^2 of the checkpoint (Eq. 10, end of stage 1)",
            "spearman": "over all test pixels, predicted sigma^2 vs (x - g(mu))^2",
        },
    }
