"""Evaluation metrics as pure functions of tensors and models (paper Section 5).

* :func:`elbo` -- the per-sample test ELBO (Eq. 9 / Eq. 11) with its two terms;
  :func:`evaluate_elbo` its means over a test set, and :func:`validation_terms` the means of
  any objective's terms (what the trainer validates with), both from one batched loop.
* :func:`iwae_log_likelihood` -- the importance-weighted bound of Burda et al. (2016)
  on log p(x), with the prior or any sampler's ``log_prob`` as p(z) (Table 3).
* :func:`dequantised_log_likelihood` and :func:`bits_per_dim` -- the same bound on
  uniformly dequantised 8-bit data, the figure that is comparable across models.
* :func:`frechet_distance` (and its cheaper routes from features, :func:`frechet_distance_features`,
  :func:`frechet_distance_to_features`) and :func:`gaussian_statistics` -- the Frechet distance
  between two Gaussians, the formula behind FID (Figure 1, Table 2). Inception
  features are computed elsewhere (:mod:`balanced_vae.fid`).
* :func:`calibration` -- how well a predicted per-pixel variance (Eq. 11, Figure 3)
  matches the squared error it claims to describe.

Every function here is deterministic given its ``generator``; none reads files.
Functions that take a model run it in eval mode without gradients and restore its
previous mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from scipy.stats import spearmanr

from .likelihoods import PASS_BATCH
from .model import eval_mode
from .objectives import LOG_2PI, NOT_TERMS, elbo_terms, elbo_terms_from_codes, gaussian_log_prob
from .sources import rows

__all__ = [
    "Prior",
    "bits_per_dim",
    "calibration",
    "dequantise",
    "dequantised_log_likelihood",
    "elbo",
    "evaluate_elbo",
    "frechet_distance",
    "frechet_distance_to_features",
    "frechet_distance_features",
    "gaussian_statistics",
    "iwae_log_likelihood",
    "log_importance_weights",
    "log_normal_diag",
    "log_standard_normal",
    "validation_terms",
]


class Prior(Protocol):
    """Anything with ``log_prob(z (n, L)) -> (n,)``: the prior, a Gaussian mixture, q(z)."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor: ...


# --------------------------------------------------------------------------- densities


def log_normal_diag(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)) summed over the last dimension: (..., L) -> (...,)."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension: (..., L) -> (...,)."""
    return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)


def _log_prior(prior: Prior | None, z: torch.Tensor) -> torch.Tensor:
    """log p(z) for codes of any leading shape (..., L) -> (...,)."""
    if prior is None:
        return log_standard_normal(z)
    flat = z.reshape(-1, z.shape[-1])  # (n, L)
    out = prior.log_prob(flat)
    if out.shape != (flat.shape[0],):
        raise ValueError(
            f"{type(prior).__name__}.log_prob returned shape {tuple(out.shape)} for codes of shape "
            f"{tuple(flat.shape)}; a prior must map (n, L) to (n,)"
        )
    return out.reshape(z.shape[:-1]).to(z.dtype)


def _check_images(x: torch.Tensor, what: str = "x") -> None:
    if x.ndim != 4:
        raise ValueError(f"{what} has shape {tuple(x.shape)}; expected an image batch (B, C, H, W)")


# --------------------------------------------------------------------------- ELBO and IWAE


def elbo(
    model, x: torch.Tensor, *, generator: torch.Generator | None = None, prior: Prior | None = None
) -> dict[str, torch.Tensor]:
    """Per-sample test ELBO of Eq. 9 (global sigma^2) or Eq. 11 (per-pixel sigma^2).

    One z ~ q(z|x) per image, drawn with ``generator``. Returns, each (B,):

    * ``rec`` -- log p(x|z), the reconstruction term;
    * ``kl`` -- KL(q(z|x) || N(0, I)) in closed form;
    * ``elbo`` -- ``rec - kl``;
    * ``kl_mc`` -- the one-sample estimate log q(z|x) - log p(z) with the same z, where
      p(z) is ``prior`` (default N(0, I));
    * ``elbo_mc`` -- ``rec - kl_mc``, the single-sample estimate that
      :func:`iwae_log_likelihood` with k = 1 reproduces exactly given the same noise.
    """
    _check_images(x)
    with eval_mode(model):
        mu, logvar = model.encode(x)  # (B, L)
        t = elbo_terms_from_codes(model, x, mu, logvar, generator)  # the library's one ELBO
        kl_mc = log_normal_diag(t["z"], mu, logvar) - _log_prior(prior, t["z"])  # (B,)
    return {"elbo": t["elbo"], "rec": t["rec"], "kl": t["kl"], "kl_mc": kl_mc, "elbo_mc": t["rec"] - kl_mc}


def log_importance_weights(
    model, x: torch.Tensor, k: int, *, prior: Prior | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), z_k ~ q(z|x): x (B, C, H, W) -> (k, B).

    All k samples of all B images are decoded in one batch of k * B codes.
    """
    _check_images(x)
    if int(k) < 1:
        raise ValueError(f"k={k}: the number of importance samples must be >= 1")
    with eval_mode(model):
        mu, logvar = model.encode(x)  # (B, L)
        z = model.reparameterise(mu, logvar, generator, k=int(k))  # (k, B, L)
        mean, x_logvar = model.decode(z.reshape(-1, z.shape[-1]))  # (k B, C, H, W)
        mean = mean.reshape(k, *x.shape)  # (k, B, C, H, W)
        if x_logvar.ndim == 4 and x_logvar.shape[0] == k * x.shape[0]:  # per-code variance head
            x_logvar = x_logvar.reshape(k, x.shape[0], *x_logvar.shape[1:])  # (k, B, C, H, W)
        log_px_z = gaussian_log_prob(x, mean, x_logvar)  # (k, B)
        log_pz = _log_prior(prior, z)  # (k, B)
        log_qz_x = log_normal_diag(z, mu, logvar)  # (k, B)
    return log_px_z + log_pz - log_qz_x


def iwae_log_likelihood(
    model,
    x: torch.Tensor,
    k: int = 20,
    *,
    prior: Prior | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 100,
) -> torch.Tensor:
    """Importance-weighted lower bound on log p(x) (Burda et al. 2016): x (N, C, H, W) -> (N,).

        log p(x) >= E[ logsumexp_k (log p(x|z_k) + log p(z_k) - log q(z_k|x)) - log k ]

    with z_1..z_k ~ q(z|x) and p(z) = ``prior.log_prob`` (default N(0, I)); the bound is
    the ELBO for k = 1 and tightens as k grows. Images are processed ``batch_size`` at a
    time (k * batch_size decoder passes per batch), drawing noise from ``generator`` in
    order, so the result depends on ``batch_size`` only through the order of draws.
    Paper protocol (Table 3): 500 test images, k = 20.
    """
    _check_images(x)
    out = []
    for i in range(0, len(x), batch_size):
        log_w = log_importance_weights(model, x[i : i + batch_size], k, prior=prior, generator=generator)  # (k, b)
        out.append(torch.logsumexp(log_w, dim=0) - math.log(k))  # (b,)
    return torch.cat(out)


def dequantise(x: torch.Tensor, *, generator: torch.Generator | None = None, levels: int = 256) -> torch.Tensor:
    """Uniform dequantisation: x + u, u ~ U(0, 1/levels) per pixel; x (..., C, H, W) in [0, 1]."""
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + u / levels


def bits_per_dim(log_likelihood: torch.Tensor | float, n_dims: int, levels: int = 256) -> torch.Tensor | float:
    """Bits per dimension of the discretised likelihood of ``levels``-level data.

    A continuous density p on dequantised data x + u, u ~ U(0, 1/levels)^D, bounds the
    probability of the discrete image: log P(x) >= E_u log p(x + u) - D log(levels).
    Hence, with ``ll`` a (lower bound on the) dequantised log-likelihood in nats,

        bits/dim = -(ll - D log(levels)) / (D log 2).
    """
    return -(log_likelihood - n_dims * math.log(levels)) / (n_dims * math.log(2.0))


def dequantised_log_likelihood(
    model,
    x: torch.Tensor,
    k: int = 20,
    *,
    prior: Prior | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 100,
    levels: int = 256,
) -> dict[str, torch.Tensor]:
    """IWAE bound on the dequantised data x + u, u ~ U(0, 1/levels), and its bits per dimension.

    x (N, C, H, W) holds 8-bit images scaled to [0, 1]. A per-pixel variance can shrink
    without limit on pixels that are exactly 0, inflating a continuous log-density;
    the dequantised bound cannot exceed D log(levels) per image on data in the unit
    cube's bins, so it is the figure to compare across models. Returns ``log_likelihood``
    (N,) in nats and ``bits_per_dim`` (N,) (see :func:`bits_per_dim`). The noise u is
    drawn from ``generator`` before the importance samples.
    """
    _check_images(x)
    x_deq = dequantise(x, generator=generator, levels=levels)  # (N, C, H, W)
    ll = iwae_log_likelihood(model, x_deq, k, prior=prior, generator=generator, batch_size=batch_size)  # (N,)
    n_dims = int(np.prod(x.shape[1:]))
    return {"log_likelihood": ll, "bits_per_dim": bits_per_dim(ll, n_dims, levels)}


# --------------------------------------------------------------------------- Frechet distance


def gaussian_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) of features (N, F), in float64."""
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features have shape {f.shape}; need (N, F) with N >= 2 to estimate a covariance")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues -> 0)."""
    w, v = torch.linalg.eigh(0.5 * (a + a.T))
    return (v * w.clamp_min(0.0).sqrt()) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2).

        d^2 = ||mu1 - mu2||^2 + tr(cov1) + tr(cov2) - 2 tr((cov1 cov2)^{1/2})

    the formula of FID (Heusel et al. 2017). The trace of the matrix square root is
    computed as tr((S1 cov2 S1)^{1/2}) with S1 = cov1^{1/2}: the inner matrix is
    symmetric positive semi-definite, so its eigenvalues are real and a singular
    product (fewer samples than features, as with 2048-d Inception features and a
    few hundred images) needs no regularisation and yields no imaginary parts.
    Inputs: mu (F,), cov (F, F) as numpy arrays or tensors; returns a float >= 0
    (rounding error below 0 is clipped).
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    cov1, cov2 = (np.atleast_2d(np.asarray(c, dtype=np.float64)) for c in (cov1, cov2))
    f = mu1.shape[0]
    for name, m, c in (("1", mu1, cov1), ("2", mu2, cov2)):
        if m.shape != (f,) or c.shape != (f, f):
            raise ValueError(
                f"statistics {name}: mean {m.shape} and covariance {c.shape} do not match "
                f"dimension {f}; pass mu (F,) and cov (F, F) from the same feature extractor"
            )
        if not (np.isfinite(m).all() and np.isfinite(c).all()):
            raise ValueError(f"statistics {name} contain NaN or inf; check the features they were computed from")
    c1, c2 = torch.from_numpy(cov1), torch.from_numpy(cov2)  # torch's LAPACK: ~3x numpy's eigh here
    s1 = _psd_sqrt(c1)
    inner = s1 @ c2 @ s1  # (F, F), symmetric PSD
    eig = torch.linalg.eigvalsh(0.5 * (inner + inner.T))
    tr_sqrt = float(eig.clamp_min(0.0).sqrt().sum())
    d2 = np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt
    return float(max(d2, 0.0))


def frechet_distance_features(f1: torch.Tensor | np.ndarray, f2: torch.Tensor | np.ndarray) -> float:
    """:func:`frechet_distance` of the Gaussian statistics of features f1 (N1, F) and f2 (N2, F).

    With fewer samples than features the covariances are low-rank, and with centred
    features X_i the non-zero eigenvalues of cov1 cov2 are the squared singular values of
    X1 X2^T / sqrt((N1 - 1)(N2 - 1)), an (N1, N2) matrix: the distance then costs
    O(N1 N2 F) instead of two eigen-decompositions of (F, F). Otherwise the statistics
    go through :func:`frechet_distance`.
    """
    a, b = (
        torch.as_tensor(np.asarray(f.detach().cpu() if isinstance(f, torch.Tensor) else f), dtype=torch.float64)
        for f in (f1, f2)
    )
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            f"features have shapes {tuple(a.shape)} and {tuple(b.shape)}; need (N1, F) and (N2, F) with N1, N2 >= 2"
        )
    n1, n2, f = len(a), len(b), a.shape[1]
    if min(n1, n2) >= f or not (torch.isfinite(a).all() and torch.isfinite(b).all()):  # also names bad statistics
        return frechet_distance(*gaussian_statistics(a.numpy()), *gaussian_statistics(b.numpy()))
    mu1, mu2 = a.mean(0), b.mean(0)  # (F,)
    x1, x2 = a - mu1, b - mu2  # (N1, F), (N2, F)
    tr_sqrt = float(torch.linalg.svdvals(x1 @ x2.T).sum()) / math.sqrt((n1 - 1) * (n2 - 1))
    d2 = float((mu1 - mu2).pow(2).sum()) + float(x1.pow(2).sum()) / (n1 - 1) + float(x2.pow(2).sum()) / (n2 - 1)
    return float(max(d2 - 2.0 * tr_sqrt, 0.0))


def frechet_distance_to_features(mu: np.ndarray, cov: np.ndarray, features: torch.Tensor | np.ndarray) -> float:
    """:func:`frechet_distance` between N(mu, cov) (F,), (F, F) and the Gaussian statistics of features (N, F).

    With fewer samples than features (N <= F) the features' covariance C = X^T X / (N - 1), X the
    centred features, has rank < N, and the non-zero eigenvalues of cov C are those of the (N, N)
    matrix X cov X^T / (N - 1): tr((cov C)^{1/2}) then costs one (N, N) eigen-decomposition instead
    of two of (F, F) (8 s of a 2048-d FID on one thread at N = 16). Otherwise the statistics go
    through :func:`frechet_distance`. Same value either way, to rounding.
    """
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    mu, cov = np.atleast_1d(np.asarray(mu, dtype=np.float64)), np.atleast_2d(np.asarray(cov, dtype=np.float64))
    if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] != mu.shape[0] or cov.shape != (mu.shape[0],) * 2:
        raise ValueError(
            f"features {f.shape}, mean {mu.shape} and covariance {cov.shape} do not match; "
            "pass features (N, F) with N >= 2 and mu (F,), cov (F, F) from the same feature extractor"
        )
    n = f.shape[0]
    if n > f.shape[1] or not (np.isfinite(f).all() and np.isfinite(mu).all() and np.isfinite(cov).all()):
        return frechet_distance(mu, cov, *gaussian_statistics(f))  # also names non-finite statistics
    mu_f = f.mean(axis=0)  # (F,)
    x = torch.from_numpy(f - mu_f)  # (N, F)
    inner = x @ torch.from_numpy(cov) @ x.T / (n - 1)  # (N, N), symmetric PSD
    tr_sqrt = float(torch.linalg.eigvalsh(0.5 * (inner + inner.T)).clamp_min(0.0).sqrt().sum())
    d2 = np.sum((mu - mu_f) ** 2) + np.trace(cov) + float(x.pow(2).sum()) / (n - 1) - 2.0 * tr_sqrt
    return float(max(d2, 0.0))


# --------------------------------------------------------------------------- calibration


def calibration(
    x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, *, sigma2_global: float, n_bins: int = 10
) -> dict[str, Any]:
    """How well a predicted per-pixel variance describes the reconstruction error (Figure 3).

    x, mean: (N, C, H, W); logvar: the predicted log sigma^2, broadcastable to them
    (a per-pixel head, Eq. 11, or a global value, Eq. 9); ``sigma2_global`` the global
    sigma*^2 to compare with (Eq. 10). Returns:

    * ``spearman`` -- rank correlation, over all N * D pixels, between the predicted
      sigma^2 and the squared error (x - mean)^2; ``None`` when the prediction is
      constant (a global variance has no ranking);
    * ``nll_predicted`` / ``nll_global`` -- mean per-image negative log-likelihood
      -log N(x; mean, sigma^2) in nats with the predicted variance and with
      ``sigma2_global``; ``nll_oracle_global`` with the best global variance for this
      very data (its mean squared error, Eq. 10 on these images);
    * ``mse``, ``mean_sigma2`` and ``bins``: pixels sorted by predicted sigma^2 into
      ``n_bins`` equal-count bins, each with its mean predicted sigma^2 and mean squared
      error (a calibrated model has the two equal).
    """
    _check_images(x)
    if mean.shape != x.shape:
        raise ValueError(f"mean has shape {tuple(mean.shape)} but x has {tuple(x.shape)}; they must match")
    if not sigma2_global > 0:
        raise ValueError(f"sigma2_global={sigma2_global}; must be > 0")
    x, mean = x.double(), mean.double()
    logvar = torch.broadcast_to(logvar.double(), x.shape)  # (N, C, H, W)
    r2 = (x - mean).pow(2)  # (N, C, H, W)
    mse = float(r2.mean())
    nll_pred = -gaussian_log_prob(x, mean, logvar)  # (N,)
    nll_glob = -gaussian_log_prob(x, mean, torch.full((), math.log(sigma2_global), dtype=torch.float64))
    nll_oracle = -gaussian_log_prob(x, mean, torch.full((), math.log(max(mse, 1e-300)), dtype=torch.float64))
    s2 = logvar.exp().flatten().numpy()  # (N D,)
    e2 = r2.flatten().numpy()  # (N D,)
    constant = bool(np.ptp(s2) <= 1e-12 * max(abs(s2).max(), 1e-300))
    rho = None if constant else float(spearmanr(s2, e2).statistic)
    order = np.argsort(s2, kind="stable")
    bins = [
        {"sigma2": float(s2[idx].mean()), "squared_error": float(e2[idx].mean()), "n_pixels": int(len(idx))}
        for idx in np.array_split(order, n_bins)
        if len(idx)
    ]
    return {
        "spearman": rho,
        "nll_predicted": float(nll_pred.mean()),
        "nll_global": float(nll_glob.mean()),
        "nll_oracle_global": float(nll_oracle.mean()),
        "sigma2_global": float(sigma2_global),
        "mse": mse,
        "mean_sigma2": float(s2.mean()),
        "n_images": int(x.shape[0]),
        "n_pixels": int(s2.size),
        "bins": bins,
    }


def evaluate_elbo(model, x, *, seed: int = 0, batch_size: int = 1000) -> dict[str, float]:
    """The test ELBO: mean ELBO, reconstruction term, KL, MSE and mean decoder sigma^2 over ``x`` (N, C, H, W).

    One z per image from a generator seeded with ``seed`` (on ``x``'s device), so repeated
    calls agree. The terms are :func:`~balanced_vae.objectives.elbo_terms`' (Eq. 9 / Eq. 11).
    """
    g = torch.Generator(device=x.device).manual_seed(seed)

    def sums(xb: torch.Tensor) -> dict[str, float]:
        t = elbo_terms(model, xb, generator=g)  # each (b,)
        t["sigma2_mean"] = t["x_logvar"].exp().expand_as(xb).flatten(1).mean(1)  # (b,)
        return {k: float(v.double().sum()) for k, v in t.items() if k not in NOT_TERMS}

    with eval_mode(model):
        return _mean_over(x, sums, batch_size)


def validation_terms(model, objective, x: torch.Tensor, *, seed: int, batch_size: int = PASS_BATCH) -> dict[str, float]:
    """The run's own objective on ``x`` (N, C, H, W) in eval mode: the mean of each of its terms.

    What the trainer validates with, and the test numbers of methods without an ELBO. Random
    numbers come from a forked global RNG seeded ``seed``, so the training stream is untouched and
    repeated calls agree. For ELBO methods ``loss`` is -ELBO (Eq. 9) under the current sigma*^2, the
    same number as :func:`evaluate_elbo`'s up to the noise; for WAE-MMD it is its own
    reconstruction + MMD objective (z = mu).
    """
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), eval_mode(model):
        torch.manual_seed(seed)
        return _mean_over(
            x, lambda xb: {k: float(v.double()) * len(xb) for k, v in objective(model, xb).items()}, batch_size
        )


def _mean_over(
    x: torch.Tensor, batch_sums: Callable[[torch.Tensor], dict[str, float]], batch_size: int
) -> dict[str, float]:
    """The one batched loop of the test numbers: ``batch_sums(x_b)`` (each term summed over the batch)
    added over batches of ``x`` (N, C, H, W) in order, divided by N."""
    sums: dict[str, float] = {}
    for i in range(0, len(x), batch_size):
        for k, v in batch_sums(rows(x, i, i + batch_size)).items():
            sums[k] = sums.get(k, 0.0) + v
    return {k: v / len(x) for k, v in sums.items()}
