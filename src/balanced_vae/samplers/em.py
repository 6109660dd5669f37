"""EM of a K-component full-covariance Gaussian mixture in torch, for the large K of Eq. 13 (CelebA's 500),
and the helpers the scikit-learn fit shares (see :class:`~balanced_vae.samplers.gmm.GaussianMixtureSampler`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from sklearn.cluster import KMeans, kmeans_plusplus

from ..objectives import LOG_2PI

log = logging.getLogger(__name__)


def full_covariances(cov: np.ndarray, covariance_type: str, k: int, d: int) -> np.ndarray:
    """scikit-learn's covariances_ of any type as full matrices (K, L, L)."""
    if covariance_type == "full":
        return np.asarray(cov, dtype=np.float64)
    if covariance_type == "tied":
        return np.broadcast_to(cov, (k, d, d)).copy()
    if covariance_type == "diag":
        return np.stack([np.diag(c) for c in cov])
    if covariance_type == "spherical":
        return np.stack([np.eye(d) * c for c in cov])
    raise ValueError(f"covariance_type={covariance_type!r}; choose full, tied, diag or spherical")


#: the ways :class:`GaussianMixtureSampler` can fit, and its initialisations (scikit-learn's names)
GMM_BACKENDS = ("auto", "torch", "sklearn")
GMM_INITS = ("auto", "kmeans", "k-means++")
#: from this K on (CelebA's 500) :class:`GaussianMixtureSampler` defaults to the large-K fit
#: measured by ``bench/gmm_fit.py``: torch EM (full covariances), k-means++ seeds, tol 1e-2;
#: below it, scikit-learn's ``GaussianMixture`` with its defaults (k-means, tol 1e-3)
LARGE_K = 100
RESP_FLOOR = 1e-12  # responsibilities below this are dropped from the M-step sums
EM_ROWS = 2048  # codes per block in the E-step


def code_scale(codes: np.ndarray) -> float:
    """The codes' mean per-dimension variance: the unit of ``reg_covar`` (1 for constant codes)."""
    v = float(codes.var(axis=0).mean())
    return v if math.isfinite(v) and v > 0 else 1.0


def init_assignments(x: np.ndarray, k: int, init_params: str, random_state) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's hard initial responsibilities as (code index, component) pairs, all of weight 1.

    ``"kmeans"``: every code in its k-means cluster (one run of Lloyd's algorithm); ``"k-means++"``:
    the K seeds of k-means++ only, one per component. ``random_state`` is the
    ``np.random.RandomState`` that scikit-learn's ``GaussianMixture.fit`` would pass.
    """
    if init_params == "kmeans":
        labels = KMeans(n_clusters=k, n_init=1, random_state=random_state).fit(x).labels_
        return np.arange(len(x)), np.asarray(labels)
    _, idx = kmeans_plusplus(x, k, random_state=random_state)
    return np.asarray(idx), np.arange(k)


def _triu_features(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """[x_i x_j for i <= j (row-major upper triangle), x, 1] of each code, written into ``out``:
    (b, L) -> (b, L(L+1)/2 + L + 1). A reused buffer and contiguous row slices keep this cheap."""
    b, d = x.shape
    out = out[:b]
    o = 0
    for i in range(d):
        torch.mul(x[:, i:], x[:, i : i + 1], out=out[:, o : o + d - i])
        o += d - i
    out[:, o : o + d] = x
    out[:, -1] = 1.0
    return out


def _m_step(stats: torch.Tensor, iu: torch.Tensor, d: int, reg: float, n: int | None):
    """Weights, means and regularised covariances from the sums [sum r x x^T (upper), sum r x, sum r]
    (K, P + L + 1), as scikit-learn's ``_estimate_gaussian_parameters`` (nk + 10 eps)."""
    p = iu.shape[1]
    nk_raw = stats[:, -1]
    nk = nk_raw + 10 * torch.finfo(torch.float64).eps  # (K,)
    means = stats[:, p : p + d] / nk[:, None]  # (K, L)
    sxx = torch.zeros(len(stats), d, d, dtype=torch.float64)
    sxx[:, iu[0], iu[1]] = stats[:, :p]
    sxx[:, iu[1], iu[0]] = stats[:, :p]
    # sum r (x - m)(x - m)^T / nk = sum r x x^T / nk - (2 - nk_raw / nk) m m^T
    cov = sxx / nk[:, None, None] - (2 - nk_raw / nk)[:, None, None] * means[:, :, None] * means[:, None, :]
    cov.diagonal(dim1=1, dim2=2).add_(reg)
    weights = nk / (n if n is not None else nk.sum())
    return weights, means, cov


def cholesky_or_jitter(
    cov: torch.Tensor, reg: float, scale: float, k_total: int, jitter: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Covariances (K, L, L) and their lower Cholesky factors; a component that is not positive definite
    (identical codes with ``reg_covar=0``, rounding) gets 10x, 100x, ... more on its diagonal, up to 1e-2
    of the codes' variance, else a ``ValueError``. ``jitter`` (if given) counts the repairs and keeps
    the largest amount added."""
    chol, info = torch.linalg.cholesky_ex(cov)
    extra = max(reg, 1e-10 * scale)  # from reg_covar = 0 too
    while (info != 0).any():
        bad = torch.nonzero(info).flatten()
        extra *= 10
        if extra > 1e-2 * scale:
            raise ValueError(
                f"GaussianMixtureSampler.fit: the covariance of component {int(bad[0])} of "
                f"K={k_total} is not positive definite even with {extra / 10:.3g} on its diagonal "
                "(its codes are (nearly) identical); fix: lower n_components or raise reg_covar"
            )
        if jitter is not None:
            jitter["count"] = jitter.get("count", 0) + len(bad)
            jitter["max"] = max(jitter.get("max", 0.0), extra)
        cov = cov.clone()
        cov[bad] += extra * torch.eye(cov.shape[-1], dtype=cov.dtype)
        chol[bad], info[bad] = torch.linalg.cholesky_ex(cov[bad])
    return cov, chol


def _add_sums(stats: torch.Tensor, rows: torch.Tensor, comps: torch.Tensor, r: torch.Tensor, f: torch.Tensor) -> None:
    """stats (K, P + L + 1) += sum over the pairs (row, comp) of r * f[row] (a sparse product)."""
    s = torch.sparse_coo_tensor(
        torch.stack([comps, rows]), r, (len(stats), len(f)), dtype=torch.float64, check_invariants=False
    )
    stats += torch.sparse.mm(s, f)


def _score_weights(weights, means, chol, iu, offdiag) -> torch.Tensor:
    """(P + L + 1, K): the columns w_k with [x x^T (upper), x, 1] . w_k = log w_k + log N(x; m_k, S_k), from
    the weights (K,), means (K, L) and lower Cholesky factors (K, L, L) of the covariances."""
    d = means.shape[1]
    prec = torch.cholesky_inverse(chol)  # (K, L, L)
    prec_m = torch.einsum("kij,kj->ki", prec, means)  # (K, L)
    const = (
        torch.log(weights)
        - 0.5 * d * LOG_2PI
        - torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
        - 0.5 * (means * prec_m).sum(1)
    )  # (K,)
    quad = -0.5 * prec[:, iu[0], iu[1]] * (1 + offdiag)  # (K, P)
    return torch.cat([quad, prec_m, const[:, None]], 1).T.contiguous()  # (P + L + 1, K)


def em_full(
    x: torch.Tensor,
    pairs: tuple[np.ndarray, np.ndarray],
    k: int,
    reg: float,
    scale: float,
    tol: float,
    max_iter: int,
    on_iter: Callable[..., None] | None = None,
) -> dict:
    """EM for a full-covariance Gaussian mixture on codes x (N, L) float64, from hard initial pairs.

    The algorithm, initialisation, lower bound and stopping rule of scikit-learn's
    ``GaussianMixture.fit`` (one initialisation), vectorised over components: the E-step
    scores every code against every component with one matrix product per block,
    log N(x; m, S) = [x x^T (upper), x, 1] . [-Lambda/2 (upper, off-diagonal doubled), Lambda m, c]
    with Lambda = S^-1 (float64, on codes centred on their mean), and the M-step sums
    r x x^T over the responsibilities r >= 1e-12 only (a sparse product). Returns the
    parameters (means in the codes' original frame), ``n_iter``, ``converged`` and
    ``lower_bound`` (mean log-likelihood per code before the last M-step). ``on_iter``, if
    given, is called after every M-step as ``on_iter(n_iter, lower_bound, weights, means,
    covariances)`` (to follow a fit, as ``bench/gmm_fit.py`` does).
    """
    n, d = x.shape
    centre = x.mean(0)
    xc = x - centre  # (N, L)
    iu = torch.triu_indices(d, d)  # (2, P)
    p = iu.shape[1]
    offdiag = (iu[0] != iu[1]).to(torch.float64)  # (P,)
    feats = torch.empty(min(n, EM_ROWS), p + d + 1, dtype=torch.float64)  # reused every block

    idx, comps = (torch.as_tensor(a, dtype=torch.long) for a in pairs)
    stats = torch.zeros(k, p + d + 1, dtype=torch.float64)
    for i in range(0, n, EM_ROWS):  # initial M-step from 0/1 resp.
        sel = (idx >= i) & (idx < i + EM_ROWS)
        if sel.any():
            ones = torch.ones(int(sel.sum()), dtype=torch.float64)
            _add_sums(stats, idx[sel] - i, comps[sel], ones, _triu_features(xc[i : i + EM_ROWS], feats))
    weights, means, cov = _m_step(stats, iu, d, reg, n)
    lower_bound, converged, n_iter, jitter = -math.inf, False, 0, {}
    for n_iter in range(1, max_iter + 1):
        cov, chol = cholesky_or_jitter(cov, reg, scale, k, jitter)  # (K, L, L)
        w = _score_weights(weights, means, chol, iu, offdiag)  # (P + L + 1, K)
        stats = torch.zeros(k, p + d + 1, dtype=torch.float64)
        total = 0.0
        for i in range(0, n, EM_ROWS):
            f = _triu_features(xc[i : i + EM_ROWS], feats)  # (b, P + L + 1)
            logp = f @ w  # (b, K) log w_k N(x; m_k, S_k)
            norm = torch.logsumexp(logp, 1)  # (b,)
            total += float(norm.sum())
            r = torch.exp(logp.sub_(norm[:, None]))  # (b, K) responsibilities
            rows, cs = torch.nonzero(r >= RESP_FLOOR, as_tuple=True)
            _add_sums(stats, rows, cs, r[rows, cs], f)
        prev, lower_bound = lower_bound, total / n
        weights, means, cov = _m_step(stats, iu, d, reg, None)
        if on_iter is not None:
            on_iter(n_iter, lower_bound, weights, means + centre, cov)
        if abs(lower_bound - prev) < tol:
            converged = True
            break
    cov, _ = cholesky_or_jitter(cov, reg, scale, k, jitter)  # the returned fit is usable
    if jitter:
        log.warning(
            "GMM K=%d: %d covariance(s) were not positive definite during EM and got up to %.3g more on "
            "their diagonal (reg_covar %.3g); fix: raise reg_covar",
            k,
            jitter["count"],
            jitter["max"],
            reg,
        )
    return {
        "weights": weights,
        "means": means + centre,
        "covariances": cov,
        "n_iter": n_iter,
        "converged": converged,
        "lower_bound": lower_bound,
    }
