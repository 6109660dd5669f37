"""Samplers over the latent space: prior, exact aggregate posterior, Gaussian mixture (Section 3.5).

Every sampler answers the same two calls, so generation and metrics can use any of them
as p(z):

* ``sample(n, generator=None) -> z (n, L)`` float32, drawn with the caller's
  ``torch.Generator`` (the global torch RNG when ``None``);
* ``log_prob(z (n, L)) -> (n,)`` float32, the log-density in nats.

Samplers
--------
* :class:`PriorSampler` -- p(z) = N(0, I).
* :class:`AggregatePosteriorSampler` -- the exact aggregate posterior of Eq. 12,
  q(z) = 1/N sum_n N(z; mu_n, diag exp(logvar_n)), with ``log_prob`` streamed over chunks of
  components (running logsumexp) so that all 60,000 MNIST posteriors fit in memory.
* :class:`GaussianMixtureSampler` -- Eq. 13, a K-component Gaussian mixture fitted by EM
  (scikit-learn's ``GaussianMixture``; from K = 100 on the same EM vectorised in torch),
  sampled with torch and saved as ``.npz`` + JSON.

Beside them, the Monte-Carlo KL estimator :func:`kl_monte_carlo` behind the KL gaps of Table 1. The
samplers of a trained run (its codes, the GMM cached beside its checkpoint) are built in
:mod:`balanced_vae.runs`.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.exceptions import NotFittedError
from sklearn.mixture import GaussianMixture
from sklearn.utils import check_random_state
from tqdm.auto import tqdm

from .atomic import atomic_write, write_json_atomic
from .objectives import LOG_2PI
# the paper's K and the sampler names are protocol numbers; importable from here as before
from .protocol import CELEBA_COMPONENTS, DEFAULT_COMPONENTS, SAMPLER_KINDS  # noqa: F401

log = logging.getLogger(__name__)

GMM_ARRAYS = "gmm.npz"
GMM_META = "gmm.json"
GMM_FORMAT_VERSION = 1
FIT_ON = ("mean", "sample")


class Sampler(Protocol):
    """What every sampler offers: ``sample(n, generator) -> (n, L)``, ``log_prob(z) -> (n,)``."""

    latent_dim: int

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def log_prob(self, z: torch.Tensor) -> torch.Tensor: ...


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"number of samples n={n!r}; fix: pass a positive integer")
    return int(n)


def _check_z(z: torch.Tensor, latent_dim: int, who: str) -> torch.Tensor:
    z = torch.as_tensor(z)
    if z.ndim != 2 or z.shape[1] != latent_dim:
        raise ValueError(f"{who}.log_prob: z has shape {tuple(z.shape)}, expected (n, {latent_dim}); "
                         f"fix: pass a batch of {latent_dim}-dimensional codes")
    return z.detach().to(torch.float64)


def _check_codes(mu, logvar, who: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    mu = torch.as_tensor(mu).detach().cpu()
    if mu.ndim != 2 or mu.shape[0] < 1 or mu.shape[1] < 1:
        raise ValueError(f"{who}: mu has shape {tuple(mu.shape)}, expected (N, L) with N, L >= 1; "
                         "fix: pass the encoder means of a batch, e.g. from encode_dataset(model, x)")
    if not torch.isfinite(mu).all():
        raise ValueError(f"{who}: mu holds non-finite values; fix: check the encoder / checkpoint")
    if logvar is None:
        return mu, None
    logvar = torch.as_tensor(logvar).detach().cpu()
    if logvar.shape != mu.shape:
        raise ValueError(f"{who}: logvar has shape {tuple(logvar.shape)} but mu has {tuple(mu.shape)}; "
                         "fix: pass the encoder's (mu, logvar) pair")
    if not torch.isfinite(logvar).all():
        raise ValueError(f"{who}: logvar holds non-finite values; fix: check the encoder / checkpoint")
    return mu, logvar


class PriorSampler:
    """The prior p(z) = N(0, I) over ``latent_dim`` dimensions (Eq. 6)."""

    def __init__(self, latent_dim: int) -> None:
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, (int, np.integer)) or latent_dim < 1:
            raise ValueError(f"latent_dim={latent_dim!r}; fix: pass a positive integer")
        self.latent_dim = int(latent_dim)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I): (n, L)."""
        return torch.randn(_check_n(n), self.latent_dim, generator=generator)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) summed over latents: (n, L) -> (n,)."""
        z = _check_z(z, self.latent_dim, "PriorSampler")
        return (-0.5 * (self.latent_dim * LOG_2PI + z.pow(2).sum(1))).float()  # (n,)

    def __repr__(self) -> str:
        return f"PriorSampler(latent_dim={self.latent_dim})"


class AggregatePosteriorSampler:
    """The exact aggregate posterior of Eq. 12: q(z) = 1/N sum_n N(z; mu_n, diag exp(logvar_n)).

    Args:
        mu: (N, L) encoder means of the N training images.
        logvar: (N, L) encoder log-variances.
        chunk_size: mixture components scored at a time in :meth:`log_prob`; the batch of z
            is cut so that one block holds about 2^21 float64 log-densities (16 MiB).
    """

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor, chunk_size: int = 4096) -> None:
        mu, logvar = _check_codes(mu, logvar, "AggregatePosteriorSampler")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size!r}; fix: pass a positive integer")
        self.mu = mu.float()                                       # (N, L)
        self.logvar = logvar.float()                               # (N, L)
        self.chunk_size = int(chunk_size)
        self.latent_dim = mu.shape[1]
        # log N(z; mu_n, diag v_n) = [z^2, z, 1] . [-1/(2 v_n), mu_n / v_n, c_n]: one matrix product
        # per block instead of an (n, N, L) tensor; float64 keeps the expanded square exact.
        lv = self.logvar.double()
        inv_var = torch.exp(-lv)                                                   # (N, L)
        mu64 = self.mu.double()
        const = -0.5 * (self.latent_dim * LOG_2PI + lv.sum(1) + (mu64.pow(2) * inv_var).sum(1))  # (N,)
        self._weights = torch.cat([-0.5 * inv_var, mu64 * inv_var, const[:, None]], 1)  # (N, 2L + 1)

    @property
    def n_components(self) -> int:
        return self.mu.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ q(z) (Eq. 12): pick n ~ U{1..N}, then z = mu_n + exp(logvar_n / 2) eps. (n, L).

        Draws the component indices first, then the noise, both from ``generator``.
        """
        n = _check_n(n)
        idx = torch.randint(self.n_components, (n,), generator=generator)            # (n,)
        eps = torch.randn(n, self.latent_dim, generator=generator)                   # (n, L)
        return self.mu[idx] + (0.5 * self.logvar[idx]).exp() * eps                   # (n, L)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z) of Eq. 12 by a chunked logsumexp over the N components: (n, L) -> (n,)."""
        z = _check_z(z, self.latent_dim, "AggregatePosteriorSampler")
        rows = max(1, (1 << 21) // min(self.chunk_size, self.n_components))  # block <= 16 MiB of float64
        out = torch.empty(len(z), dtype=torch.float64)
        for i in range(0, len(z), rows):
            zi = z[i:i + rows]                                                    # (b, L)
            phi = torch.cat([zi.pow(2), zi, torch.ones(len(zi), 1, dtype=torch.float64)], 1)  # (b, 2L + 1)
            acc = torch.full((len(zi),), -math.inf, dtype=torch.float64)          # (b,)
            for j in range(0, self.n_components, self.chunk_size):
                logp = phi @ self._weights[j:j + self.chunk_size].T               # (b, M)
                acc = torch.logaddexp(acc, torch.logsumexp(logp, dim=1))
            out[i:i + rows] = acc
        return (out - math.log(self.n_components)).float()                        # (n,)

    def __repr__(self) -> str:
        return f"AggregatePosteriorSampler(N={self.n_components}, latent_dim={self.latent_dim})"


def _full_covariances(cov: np.ndarray, covariance_type: str, k: int, d: int) -> np.ndarray:
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
_RESP_FLOOR = 1e-12          # responsibilities below this are dropped from the M-step sums
_EM_ROWS = 2048              # codes per block in the E-step


def _code_scale(codes: np.ndarray) -> float:
    """The codes' mean per-dimension variance: the unit of ``reg_covar`` (1 for constant codes)."""
    v = float(codes.var(axis=0).mean())
    return v if math.isfinite(v) and v > 0 else 1.0


def _init_assignments(x: np.ndarray, k: int, init_params: str, random_state) -> tuple[np.ndarray, np.ndarray]:
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
        torch.mul(x[:, i:], x[:, i:i + 1], out=out[:, o:o + d - i])
        o += d - i
    out[:, o:o + d] = x
    out[:, -1] = 1.0
    return out


def _m_step(stats: torch.Tensor, iu: torch.Tensor, d: int, reg: float, n: int | None):
    """Weights, means and regularised covariances from the sums [sum r x x^T (upper), sum r x, sum r]
    (K, P + L + 1), as scikit-learn's ``_estimate_gaussian_parameters`` (nk + 10 eps)."""
    p = iu.shape[1]
    nk_raw = stats[:, -1]
    nk = nk_raw + 10 * torch.finfo(torch.float64).eps                                   # (K,)
    means = stats[:, p:p + d] / nk[:, None]                                             # (K, L)
    sxx = torch.zeros(len(stats), d, d, dtype=torch.float64)
    sxx[:, iu[0], iu[1]] = stats[:, :p]
    sxx[:, iu[1], iu[0]] = stats[:, :p]
    # sum r (x - m)(x - m)^T / nk = sum r x x^T / nk - (2 - nk_raw / nk) m m^T
    cov = sxx / nk[:, None, None] - (2 - nk_raw / nk)[:, None, None] * means[:, :, None] * means[:, None, :]
    cov.diagonal(dim1=1, dim2=2).add_(reg)
    weights = nk / (n if n is not None else nk.sum())
    return weights, means, cov


def _cholesky_or_jitter(cov: torch.Tensor, reg: float, scale: float, k_total: int,
                        jitter: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Covariances (K, L, L) and their lower Cholesky factors; a component that is not positive definite
    (identical codes with ``reg_covar=0``, rounding) gets 10x, 100x, ... more on its diagonal, up to 1e-2
    of the codes' variance, else a ``ValueError``. ``jitter`` (if given) counts the repairs and keeps
    the largest amount added."""
    chol, info = torch.linalg.cholesky_ex(cov)
    extra = max(reg, 1e-10 * scale)               # from reg_covar = 0 too
    while (info != 0).any():
        bad = torch.nonzero(info).flatten()
        extra *= 10
        if extra > 1e-2 * scale:
            raise ValueError(f"GaussianMixtureSampler.fit: the covariance of component {int(bad[0])} of "
                             f"K={k_total} is not positive definite even with {extra / 10:.3g} on its diagonal "
                             "(its codes are (nearly) identical); fix: lower n_components or raise reg_covar")
        if jitter is not None:
            jitter["count"] = jitter.get("count", 0) + len(bad)
            jitter["max"] = max(jitter.get("max", 0.0), extra)
        cov = cov.clone()
        cov[bad] += extra * torch.eye(cov.shape[-1], dtype=cov.dtype)
        chol[bad], info[bad] = torch.linalg.cholesky_ex(cov[bad])
    return cov, chol


def _em_full(x: torch.Tensor, pairs: tuple[np.ndarray, np.ndarray], k: int, reg: float, scale: float,
             tol: float, max_iter: int, on_iter: Callable[..., None] | None = None) -> dict:
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
    xc = x - centre                                                           # (N, L)
    iu = torch.triu_indices(d, d)                                             # (2, P)
    p = iu.shape[1]
    offdiag = (iu[0] != iu[1]).to(torch.float64)                              # (P,)

    feats = torch.empty(min(n, _EM_ROWS), p + d + 1, dtype=torch.float64)    # reused every block

    def add_sums(stats: torch.Tensor, rows: torch.Tensor, comps: torch.Tensor, r: torch.Tensor,
                 f: torch.Tensor) -> None:
        """stats (K, P + L + 1) += sum over the pairs (row, comp) of r * f[row] (a sparse product)."""
        s = torch.sparse_coo_tensor(torch.stack([comps, rows]), r, (k, len(f)), dtype=torch.float64,
                                    check_invariants=False)
        stats += torch.sparse.mm(s, f)

    idx, comps = (torch.as_tensor(a, dtype=torch.long) for a in pairs)
    stats = torch.zeros(k, p + d + 1, dtype=torch.float64)
    for i in range(0, n, _EM_ROWS):                                           # initial M-step from 0/1 resp.
        sel = (idx >= i) & (idx < i + _EM_ROWS)
        if sel.any():
            add_sums(stats, idx[sel] - i, comps[sel], torch.ones(int(sel.sum()), dtype=torch.float64),
                     _triu_features(xc[i:i + _EM_ROWS], feats))
    weights, means, cov = _m_step(stats, iu, d, reg, n)
    lower_bound, converged, n_iter, jitter = -math.inf, False, 0, {}
    for n_iter in range(1, max_iter + 1):
        cov, chol = _cholesky_or_jitter(cov, reg, scale, k, jitter)           # (K, L, L)
        prec = torch.cholesky_inverse(chol)                                   # (K, L, L)
        prec_m = torch.einsum("kij,kj->ki", prec, means)                     # (K, L)
        const = (torch.log(weights) - 0.5 * d * LOG_2PI - torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
                 - 0.5 * (means * prec_m).sum(1))                             # (K,)
        quad = -0.5 * prec[:, iu[0], iu[1]] * (1 + offdiag)                   # (K, P)
        w = torch.cat([quad, prec_m, const[:, None]], 1).T.contiguous()       # (P + L + 1, K)
        stats = torch.zeros(k, p + d + 1, dtype=torch.float64)
        total = 0.0
        for i in range(0, n, _EM_ROWS):
            f = _triu_features(xc[i:i + _EM_ROWS], feats)                     # (b, P + L + 1)
            logp = f @ w                                                      # (b, K) log w_k N(x; m_k, S_k)
            norm = torch.logsumexp(logp, 1)                                   # (b,)
            total += float(norm.sum())
            r = torch.exp(logp.sub_(norm[:, None]))                           # (b, K) responsibilities
            rows, cs = torch.nonzero(r >= _RESP_FLOOR, as_tuple=True)
            add_sums(stats, rows, cs, r[rows, cs], f)
        prev, lower_bound = lower_bound, total / n
        weights, means, cov = _m_step(stats, iu, d, reg, None)
        if on_iter is not None:
            on_iter(n_iter, lower_bound, weights, means + centre, cov)
        if abs(lower_bound - prev) < tol:
            converged = True
            break
    cov, _ = _cholesky_or_jitter(cov, reg, scale, k, jitter)                  # the returned fit is usable
    if jitter:
        log.warning("GMM K=%d: %d covariance(s) were not positive definite during EM and got up to %.3g more on "
                    "their diagonal (reg_covar %.3g); fix: raise reg_covar", k, jitter["count"], jitter["max"], reg)
    return {"weights": weights, "means": means + centre, "covariances": cov, "n_iter": n_iter,
            "converged": converged, "lower_bound": lower_bound}


class GaussianMixtureSampler:
    """A K-component Gaussian mixture over latent codes, fitted by EM (Eq. 13).

    Fitting is EM in float64 on the codes, initialised as scikit-learn does and seeded by
    ``random_state``. Below K = 100 (:data:`LARGE_K`; the paper's K = 32) it is
    scikit-learn's ``GaussianMixture`` with its defaults (k-means init, tol 1e-3). From K = 100
    on (CelebA's K = 500) the defaults are the large-K fit, measured by ``bench/gmm_fit.py``
    on 50,000 x 64 synthetic codes shaped like VAE means (K = 500, one core):

    * ``backend="torch"`` (full covariances): :func:`_em_full`, scikit-learn's EM and stopping
      rule vectorised over components: the same fit (same iterations, held-out
      log-likelihood equal to 1e-10 nats) 8.6x faster (619 s -> 72 s with scikit-learn's
      settings, 17 iterations each);
    * ``init_params="k-means++"``: k-means++ seeds instead of a full k-means: a held-out
      log-likelihood 3.7 nats per code higher on each of 3 seeds, and a start of 3 s, not 9 s;
    * ``tol=1e-2``: 10 EM iterations instead of 19-24; held-out log-likelihood within 0.06
      nats (higher: at 100 codes per 64-d component, later iterations overfit).

    Together: 43 s instead of 619 s for the fit before this change (scikit-learn with these
    settings: 356 s).

    Sampling and ``log_prob`` are done here in torch with float64 internals, so ``sample``
    uses the caller's generator and never sklearn's RNG.

    ``reg_covar`` is relative: each covariance gets ``reg_covar`` times the codes' mean
    per-dimension variance on its diagonal (``reg_covar_`` holds the absolute amount), so a
    fit does not depend on the codes' scale and latent dimensions an encoder does not use
    (variance ~0 across images) cannot make a covariance singular. Should one still fail to
    be positive definite, its diagonal gets 10x, 100x, ... more (up to 1e-2 of the codes'
    variance) and a warning is logged. Codes that cannot hold K components (fewer than K
    distinct codes, non-finite values) are refused with a ``ValueError`` that says what to do.

    What it is fitted on (``fit_on``), default ``"mean"``:

    * ``"mean"`` -- the posterior means mu_n, one code per training image. This is the
      paper's practice (fit the codes of the training set) and it is deterministic given the
      encoder. Decoded samples are what Figure 2 shows.
    * ``"sample"`` -- one z_n ~ q(z|x_n) per image, a sample of the aggregate posterior of
      Eq. 12 itself, so EM then maximises a Monte-Carlo estimate of E_q(z)[log q_GMM(z)]: the
      faithful choice when the GMM stands in for q(z) in a density (KL, IWAE prior). Latent
      dimensions the encoder does not use (mu ~ 0, logvar ~ 0) keep their unit variance here,
      whereas a fit on means squeezes them to ``reg_covar``, which leaves the decoded
      images unchanged but inflates KL(q_GMM || p) by about 1/2 log(1/reg_covar) nats per
      unused dimension.

    Measured (MNIST, 10,000 training images, 5 + 5 epochs, K = 32; KL by :func:`kl_monte_carlo`,
    10 x 10,000 samples): with L = 16, KL(q_agg || q_GMM) is 21.2 nats for a fit on means and
    14.5 for a fit on samples (KL(q_GMM || q_agg) 75.4 vs 75.2); with L = 2 both give 0.03.
    So ``"mean"`` stays the default for generation, as in the paper, and density uses should
    pass ``fit_on="sample"``.

    Args:
        n_components: K (32 for 28x28 data in the paper, 500 for CelebA).
        covariance_type: "full" (default), "tied", "diag" or "spherical"; stored as full matrices.
        fit_on: "mean" or "sample" (see above).
        random_state: seeds EM's initialisation and, when ``fit`` gets no generator, the
            draws of ``fit_on="sample"``.
        max_iter, n_init: as in ``sklearn.mixture.GaussianMixture``.
        tol: EM stops when the mean log-likelihood per code changes by less than this; ``None``
            (default): 1e-2 from K = 100 on, else 1e-3 (scikit-learn's).
        reg_covar: added to every covariance's diagonal, in units of the codes' mean
            per-dimension variance (see above).
        init_params: "kmeans" (one run of k-means, scikit-learn's default) or "k-means++" (its
            seeds only); "auto" (default): "k-means++" from K = 100 on, else "kmeans".
        backend: "torch" (full covariances only), "sklearn", or "auto" (default): "torch" for
            full covariances from K = 100 on, else "sklearn".

    Fitted attributes: ``weights_`` (K,), ``means_`` (K, L), ``covariances_`` (K, L, L),
    ``precisions_cholesky_`` (K, L, L) (upper triangular, P P^T = Sigma^-1), ``converged_``,
    ``n_iter_``, ``lower_bound_``, ``n_features_in_``, ``n_fit_``; after ``fit`` also
    ``reg_covar_`` (absolute), ``backend_``, ``init_params_``, ``tol_`` (the settings used) and
    ``fit_seconds_``.
    """

    def __init__(self, n_components: int = 32, covariance_type: str = "full", fit_on: str = "mean",
                 random_state: int = 0, max_iter: int = 200, tol: float | None = None, reg_covar: float = 1e-6,
                 n_init: int = 1, init_params: str = "auto", backend: str = "auto") -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.fit_on = fit_on
        self.random_state = random_state
        self.max_iter = max_iter
        self.tol = tol
        self.reg_covar = reg_covar
        self.n_init = n_init
        self.init_params = init_params
        self.backend = backend

    def _validate_params(self) -> None:
        if isinstance(self.n_components, bool) or not isinstance(self.n_components, (int, np.integer)) \
                or self.n_components < 1:
            raise ValueError(f"n_components={self.n_components!r}; fix: pass a positive integer K")
        if self.covariance_type not in ("full", "tied", "diag", "spherical"):
            raise ValueError(f"covariance_type={self.covariance_type!r}; choose full, tied, diag or spherical")
        if self.fit_on not in FIT_ON:
            raise ValueError(f"fit_on={self.fit_on!r}; choose one of {FIT_ON}")
        if self.init_params not in GMM_INITS:
            raise ValueError(f"init_params={self.init_params!r}; choose one of {GMM_INITS}")
        if self.backend not in GMM_BACKENDS:
            raise ValueError(f"backend={self.backend!r}; choose one of {GMM_BACKENDS}")
        if self.backend == "torch" and self.covariance_type != "full":
            raise ValueError(f"backend='torch' fits full covariances only, not {self.covariance_type!r}; "
                             "fix: use backend='sklearn' or 'auto'")
        for name in ("reg_covar", "tol"):
            v = getattr(self, name)
            if v is None and name == "tol":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}={v!r}; fix: pass a finite number >= 0")
        for name in ("max_iter", "n_init"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}={v!r}; fix: pass a positive integer")

    def _resolved(self) -> tuple[str, str, float]:
        """(backend, init_params, tol) of a fit: the settings, with "auto" / None resolved by K."""
        large = self.n_components >= LARGE_K
        backend = self.backend if self.backend != "auto" else \
            ("torch" if large and self.covariance_type == "full" else "sklearn")
        init = self.init_params if self.init_params != "auto" else ("k-means++" if large else "kmeans")
        tol = self.tol if self.tol is not None else (1e-2 if large else 1e-3)
        return backend, init, float(tol)

    # ------------------------------------------------------------------ fitting
    def fit(self, mu: torch.Tensor, logvar: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> "GaussianMixtureSampler":
        """Fit by EM on codes mu (N, L) (``fit_on="mean"``) or on z ~ N(mu, exp(logvar)).

        ``logvar`` (N, L) is required for ``fit_on="sample"``; ``generator`` draws those
        samples (default: a generator seeded with ``random_state``). Returns ``self``.
        """
        self._validate_params()
        mu, logvar = _check_codes(mu, logvar, "GaussianMixtureSampler.fit")
        if self.fit_on == "sample":
            if logvar is None:
                raise ValueError("GaussianMixtureSampler.fit: fit_on='sample' needs logvar (N, L); "
                                 "fix: pass fit(mu, logvar) or use fit_on='mean'")
            g = generator if generator is not None else torch.Generator().manual_seed(self.random_state)
            codes = mu.double() + (0.5 * logvar.double()).exp() * torch.randn(mu.shape, generator=g,
                                                                              dtype=torch.float64)
        else:
            codes = mu.double()                                                  # (N, L)
        if not torch.isfinite(codes).all():
            raise ValueError("GaussianMixtureSampler.fit: the codes drawn from N(mu, exp(logvar)) are not finite "
                             "(logvar too large); fix: check the encoder or use fit_on='mean'")
        n, d = codes.shape
        if n < self.n_components:
            raise ValueError(f"GaussianMixtureSampler.fit: {n} codes for K={self.n_components} components; "
                             "fix: fit on at least K codes or lower n_components")
        distinct = len(np.unique(codes.numpy(), axis=0))
        if distinct < self.n_components:
            raise ValueError(f"GaussianMixtureSampler.fit: the {n} codes hold only {distinct} distinct points, fewer "
                             f"than K={self.n_components} components (a collapsed encoder?); fix: lower "
                             "n_components or fit on samples (fit_on='sample')")
        x = codes.numpy()
        scale = _code_scale(x)
        backend, self.init_params_, self.tol_ = self._resolved()
        t0 = time.perf_counter()
        if backend == "torch":
            fit = self._fit_torch(codes, scale)
        else:
            fit = self._fit_sklearn(x, scale)
        self.fit_seconds_ = time.perf_counter() - t0
        self.backend_ = backend
        if not fit["converged"]:
            log.warning("GMM with K=%d did not converge in %d EM iterations (lower bound %.4g); "
                        "raise max_iter or tol", self.n_components, self.max_iter, fit["lower_bound"])
        self._set_params(fit["weights"], fit["means"], fit["covariances"])
        self.converged_ = bool(fit["converged"])
        self.n_iter_ = int(fit["n_iter"])
        self.lower_bound_ = float(fit["lower_bound"])
        self.n_fit_ = int(n)
        log.info("GMM K=%d fitted on %d codes (%s) by %s in %.2fs, %d iterations", self.n_components, n, self.fit_on,
                 backend, self.fit_seconds_, self.n_iter_)
        return self

    def _fit_sklearn(self, x: np.ndarray, scale: float) -> dict:
        """scikit-learn's EM; should it fail (a covariance not positive definite), refit with 10x the
        regularisation, up to 1e-2 of the codes' variance."""
        rel = self.reg_covar
        while True:
            gm = GaussianMixture(n_components=self.n_components, covariance_type=self.covariance_type,
                                 random_state=self.random_state, max_iter=self.max_iter, tol=self.tol_,
                                 reg_covar=rel * scale, n_init=self.n_init, init_params=self.init_params_)
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "Best performing initialization did not converge")
                    gm.fit(x)
                break
            except ValueError as e:
                if rel >= 1e-2:
                    raise ValueError(f"GaussianMixtureSampler.fit: EM failed for K={self.n_components} even with "
                                     f"reg_covar={rel:g} (x the codes' variance {scale:.3g}) ({e}); "
                                     "fix: lower n_components") from None
                log.warning("GMM K=%d: EM failed with reg_covar=%g (%s); retrying with %g", self.n_components, rel,
                            str(e).split(".")[0], max(rel * 10, 1e-9))
                rel = float(f"{max(rel * 10, 1e-9):.3g}")   # 1e-6 * 10 is 9.999e-06; from 0 too
        self.reg_covar_ = rel * scale
        d = x.shape[1]
        return {"weights": gm.weights_, "means": gm.means_, "n_iter": gm.n_iter_, "converged": gm.converged_,
                "covariances": _full_covariances(gm.covariances_, self.covariance_type, self.n_components, d),
                "lower_bound": gm.lower_bound_}

    def _fit_torch(self, codes: torch.Tensor, scale: float) -> dict:
        """:func:`_em_full` from scikit-learn's initialisation, ``n_init`` times; the best lower bound wins."""
        rng = check_random_state(self.random_state)        # one stream for all inits, as scikit-learn
        self.reg_covar_ = self.reg_covar * scale
        best = None
        for _ in range(self.n_init):
            pairs = _init_assignments(codes.numpy(), self.n_components, self.init_params_, rng)
            fit = _em_full(codes, pairs, self.n_components, self.reg_covar_, scale, self.tol_, self.max_iter)
            if best is None or fit["lower_bound"] > best["lower_bound"]:
                best = fit
        return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in best.items()}

    def _set_params(self, weights, means, covariances) -> None:
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))               # (K,)
        m = torch.as_tensor(np.asarray(means, dtype=np.float64))                 # (K, L)
        cov = torch.as_tensor(np.asarray(covariances, dtype=np.float64))         # (K, L, L)
        k, d = m.shape
        if w.shape != (k,) or cov.shape != (k, d, d):
            raise ValueError(f"GMM parameters do not fit together: weights {tuple(w.shape)}, means {tuple(m.shape)}, "
                             f"covariances {tuple(cov.shape)}; expected (K,), (K, L), (K, L, L)")
        if not (torch.isfinite(w).all() and torch.isfinite(m).all() and torch.isfinite(cov).all()) \
                or (w < 0).any() or abs(float(w.sum()) - 1.0) > 1e-6:
            raise ValueError("GMM parameters are not finite or the weights do not sum to 1")
        chol, info = torch.linalg.cholesky_ex(cov)                               # (K, L, L) lower
        if (info != 0).any():
            bad = int(torch.nonzero(info)[0])
            raise ValueError(f"GMM covariance of component {bad} is not positive definite; "
                             "fix: refit with a larger reg_covar")
        eye = torch.eye(d, dtype=torch.float64).expand(k, d, d)
        self.weights_ = w
        self.means_ = m
        self.covariances_ = cov
        self.n_components = k
        self.n_features_in_ = d
        self._chol = chol
        # P = L^-T so that P P^T = Sigma^-1 and ||(z - m) P||^2 is the Mahalanobis distance
        self.precisions_cholesky_ = torch.linalg.solve_triangular(chol, eye, upper=False).transpose(1, 2)
        self._log_norm = (torch.log(w) - 0.5 * d * LOG_2PI
                          + torch.log(torch.diagonal(self.precisions_cholesky_, dim1=1, dim2=2)).sum(1))  # (K,)

    @classmethod
    def from_params(cls, weights, means, covariances, **kwargs) -> "GaussianMixtureSampler":
        """A fitted sampler with given weights (K,), means (K, L) and full covariances (K, L, L)."""
        s = cls(n_components=len(weights), **kwargs)
        s._validate_params()
        s._set_params(weights, means, covariances)
        s.converged_, s.n_iter_, s.lower_bound_, s.n_fit_ = True, 0, float("nan"), 0
        return s

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise NotFittedError("this GaussianMixtureSampler is not fitted yet; call fit(mu) first or "
                                 "GaussianMixtureSampler.load(directory)")

    @property
    def latent_dim(self) -> int:
        self._check_fitted()
        return self.n_features_in_

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ q_GMM(z) (Eq. 13): (n, L). Component indices first, then N(0, I) noise, from ``generator``."""
        self._check_fitted()
        n = _check_n(n)
        idx = torch.multinomial(self.weights_, n, replacement=True, generator=generator)     # (n,)
        eps = torch.randn(n, self.n_features_in_, generator=generator, dtype=torch.float64)  # (n, L)
        z = self.means_[idx] + torch.einsum("nij,nj->ni", self._chol[idx], eps)              # (n, L)
        return z.float()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q_GMM(z) = logsumexp_k [log w_k + log N(z; m_k, Sigma_k)]: (n, L) -> (n,).

        Equals scikit-learn's ``score_samples`` of the same parameters.
        """
        self._check_fitted()
        z = _check_z(z, self.n_features_in_, "GaussianMixtureSampler")
        n, d = z.shape
        per = max(1, (1 << 22) // max(n * d, 1))                  # components per block: <= 32 MiB
        parts = []
        for j in range(0, self.n_components, per):
            diff = z.unsqueeze(0) - self.means_[j:j + per].unsqueeze(1)             # (k, n, L)
            y = torch.bmm(diff, self.precisions_cholesky_[j:j + per])                # (k, n, L)
            parts.append(self._log_norm[j:j + per, None] - 0.5 * y.pow(2).sum(-1))   # (k, n)
        return torch.logsumexp(torch.cat(parts), dim=0).float()                      # (n,)

    def score(self, z: torch.Tensor) -> float:
        """Mean log-likelihood per code, as scikit-learn's ``score``."""
        return float(self.log_prob(z).double().mean())

    # ------------------------------------------------------------------ persistence
    def _meta(self) -> dict:
        return {"format_version": GMM_FORMAT_VERSION, "kind": "GaussianMixtureSampler",
                "n_components": self.n_components, "latent_dim": self.n_features_in_,
                "covariance_type": self.covariance_type, "fit_on": self.fit_on,
                "random_state": self.random_state, "max_iter": self.max_iter,
                "tol": getattr(self, "tol_", self.tol),                        # the settings a fit used
                "reg_covar": self.reg_covar, "n_init": self.n_init,
                "init_params": getattr(self, "init_params_", self.init_params),
                "backend": getattr(self, "backend_", self.backend), "reg_covar_abs": getattr(self, "reg_covar_", None),
                "converged": self.converged_,
                "n_iter": self.n_iter_,
                "lower_bound": self.lower_bound_ if math.isfinite(self.lower_bound_) else None, "n_fit": self.n_fit_,
                "fit_seconds": getattr(self, "fit_seconds_", None)}

    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``gmm.npz`` (weights, means, covariances; no pickle) and ``gmm.json`` atomically.

        ``extra`` (JSON-able) is stored under ``"source"`` in the JSON, e.g. which checkpoint
        the codes came from. Returns the directory.
        """
        self._check_fitted()
        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, weights=self.weights_.numpy(), means=self.means_.numpy(),
                 covariances=self.covariances_.numpy())
        data = buf.getvalue()
        atomic_write(directory / GMM_ARRAYS, lambda tmp: Path(tmp).write_bytes(data))
        meta = {**self._meta(), "arrays_sha256": hashlib.sha256(data).hexdigest(), "source": extra or {}}
        write_json_atomic(directory / GMM_META, meta)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "GaussianMixtureSampler":
        """Read a sampler written by :meth:`save`; ``source`` holds the saved ``extra``."""
        directory = Path(directory).expanduser()
        meta_path, arr_path = directory / GMM_META, directory / GMM_ARRAYS
        for p in (meta_path, arr_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: missing; {directory} is not a saved GaussianMixtureSampler "
                                        "(fit one with GaussianMixtureSampler(...).fit(mu).save(dir))")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}: not valid JSON ({e}); delete {directory} and refit") from None
        if meta.get("format_version") != GMM_FORMAT_VERSION or meta.get("kind") != "GaussianMixtureSampler":
            raise ValueError(f"{meta_path}: not a GaussianMixtureSampler of format {GMM_FORMAT_VERSION}; "
                             f"delete {directory} and refit")
        data = arr_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta.get("arrays_sha256"):
            raise ValueError(f"{arr_path}: contents do not match the checksum in {meta_path} (a partial or "
                             f"mixed save); delete {directory} and refit")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            weights, means, covariances = z["weights"], z["means"], z["covariances"]
        s = cls(n_components=int(meta["n_components"]), covariance_type=meta["covariance_type"],
                fit_on=meta["fit_on"], random_state=meta["random_state"], max_iter=meta["max_iter"],
                tol=meta["tol"], reg_covar=meta["reg_covar"], n_init=meta["n_init"],
                init_params=meta.get("init_params", "kmeans"))   # saved before init_params: k-means
        try:
            s._set_params(weights, means, covariances)
        except ValueError as e:
            raise ValueError(f"{arr_path}: {e}; delete {directory} and refit") from None
        if s.n_components != meta["n_components"] or s.n_features_in_ != meta["latent_dim"]:
            raise ValueError(f"{arr_path}: arrays hold K={s.n_components}, L={s.n_features_in_} but {meta_path} "
                             f"says K={meta['n_components']}, L={meta['latent_dim']}; delete {directory} and refit")
        s.converged_, s.n_iter_ = bool(meta["converged"]), int(meta["n_iter"])
        s.lower_bound_ = float(meta["lower_bound"]) if meta["lower_bound"] is not None else float("nan")
        s.n_fit_ = int(meta["n_fit"])
        if meta.get("fit_seconds") is not None:
            s.fit_seconds_ = float(meta["fit_seconds"])
        if meta.get("reg_covar_abs") is not None:
            s.reg_covar_ = float(meta["reg_covar_abs"])
        if meta.get("backend") in ("torch", "sklearn"):
            s.backend_ = meta["backend"]
        s.init_params_, s.tol_ = s.init_params, s.tol
        s.source = meta.get("source", {})
        return s

    def __repr__(self) -> str:
        fitted = f", latent_dim={self.n_features_in_}" if hasattr(self, "weights_") else ", unfitted"
        return (f"GaussianMixtureSampler(n_components={self.n_components}, covariance_type="
                f"{self.covariance_type!r}, fit_on={self.fit_on!r}{fitted})")


# ---------------------------------------------------------------------- estimators


def kl_monte_carlo(q, p, n: int = 10_000, runs: int = 10, seed: int = 0, *, progress: bool = False,
                   desc: str = "KL runs") -> dict:
    """KL(q || p) = E_q[log q(z) - log p(z)] by Monte Carlo (Table 1's protocol).

    Run r draws ``n`` samples from ``q`` with a generator seeded ``seed + r`` and averages
    ``log q - log p``; the result reports the mean and sample standard deviation (ddof=1)
    of the ``runs`` estimates, the standard error of their mean (``sem``) and each estimate.
    ``q`` needs ``sample`` and ``log_prob``; ``p`` only ``log_prob``.
    """
    n, runs = _check_n(n), _check_n(runs)
    estimates = []
    for r in tqdm(range(runs), desc=desc, disable=not progress, leave=False):
        g = torch.Generator().manual_seed(seed + r)
        z = q.sample(n, generator=g)                                        # (n, L)
        estimates.append(float((q.log_prob(z).double() - p.log_prob(z).double()).mean()))
    est = np.asarray(estimates)
    std = float(est.std(ddof=1)) if runs > 1 else None                    # None, not NaN: stays valid JSON
    return {"mean": float(est.mean()), "std": std, "sem": std / math.sqrt(runs) if runs > 1 else None,
            "n": n, "runs": runs, "seed": seed, "estimates": estimates}
