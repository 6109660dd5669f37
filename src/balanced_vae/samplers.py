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
  (scikit-learn's ``GaussianMixture``), sampled with torch and saved as ``.npz`` + JSON.

and the Monte-Carlo KL estimator :func:`kl_monte_carlo` behind the KL gaps of Table 1. The
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
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from sklearn.mixture import GaussianMixture
from tqdm.auto import tqdm

from .atomic import atomic_write, write_json_atomic
from .objectives import LOG_2PI

log = logging.getLogger(__name__)

GMM_ARRAYS = "gmm.npz"
GMM_META = "gmm.json"
GMM_FORMAT_VERSION = 1
FIT_ON = ("mean", "sample")
SAMPLER_KINDS = ("prior", "gmm", "aggregate")
#: the paper's K of Eq. 13 for MNIST and Fashion-MNIST (CelebA: :data:`CELEBA_COMPONENTS`)
DEFAULT_COMPONENTS = 32
CELEBA_COMPONENTS = 500


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


class GaussianMixtureSampler:
    """A K-component Gaussian mixture over latent codes, fitted by EM (Eq. 13).

    Fitting is scikit-learn's ``GaussianMixture`` (k-means initialisation, seeded by
    ``random_state``); sampling and ``log_prob`` are done here in torch with float64
    internals, so ``sample`` uses the caller's generator and never sklearn's RNG.

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
        max_iter, tol, reg_covar, n_init: passed to ``sklearn.mixture.GaussianMixture``.

    Fitted attributes: ``weights_`` (K,), ``means_`` (K, L), ``covariances_`` (K, L, L),
    ``precisions_cholesky_`` (K, L, L) (upper triangular, P P^T = Sigma^-1), ``converged_``,
    ``n_iter_``, ``lower_bound_``, ``n_features_in_``, ``n_fit_``.
    """

    def __init__(self, n_components: int = 32, covariance_type: str = "full", fit_on: str = "mean",
                 random_state: int = 0, max_iter: int = 200, tol: float = 1e-3, reg_covar: float = 1e-6,
                 n_init: int = 1) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.fit_on = fit_on
        self.random_state = random_state
        self.max_iter = max_iter
        self.tol = tol
        self.reg_covar = reg_covar
        self.n_init = n_init

    def _validate_params(self) -> None:
        if isinstance(self.n_components, bool) or not isinstance(self.n_components, (int, np.integer)) \
                or self.n_components < 1:
            raise ValueError(f"n_components={self.n_components!r}; fix: pass a positive integer K")
        if self.covariance_type not in ("full", "tied", "diag", "spherical"):
            raise ValueError(f"covariance_type={self.covariance_type!r}; choose full, tied, diag or spherical")
        if self.fit_on not in FIT_ON:
            raise ValueError(f"fit_on={self.fit_on!r}; choose one of {FIT_ON}")

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
        n, d = codes.shape
        if n < self.n_components:
            raise ValueError(f"GaussianMixtureSampler.fit: {n} codes for K={self.n_components} components; "
                             "fix: fit on at least K codes or lower n_components")
        distinct = len(np.unique(codes.numpy(), axis=0))
        if distinct < self.n_components:
            raise ValueError(f"GaussianMixtureSampler.fit: the {n} codes hold only {distinct} distinct points, fewer "
                             f"than K={self.n_components} components (a collapsed encoder?); fix: lower "
                             "n_components or fit on samples (fit_on='sample')")
        t0 = time.perf_counter()
        reg = self.reg_covar
        while True:   # EM may meet a collapsed component (large K): regularise more, never fail silently
            gm = GaussianMixture(n_components=self.n_components, covariance_type=self.covariance_type,
                                 random_state=self.random_state, max_iter=self.max_iter, tol=self.tol,
                                 reg_covar=reg, n_init=self.n_init)
            try:
                gm.fit(codes.numpy())
                break
            except ValueError as e:
                if reg >= 1e-2:
                    raise ValueError(f"GaussianMixtureSampler.fit: EM failed for K={self.n_components} even with "
                                     f"reg_covar={reg:g} ({e}); fix: lower n_components") from None
                log.warning("GMM K=%d: EM failed with reg_covar=%g (%s); retrying with %g", self.n_components, reg,
                            str(e).split(".")[0], reg * 10)
                reg = float(f"{reg * 10:.3g}")   # 1e-6 * 10 is 9.999e-06 in floating point
        self.reg_covar_ = reg
        self.fit_seconds_ = time.perf_counter() - t0
        if not gm.converged_:
            log.warning("GMM with K=%d did not converge in %d EM iterations (lower bound %.4g); "
                        "raise max_iter or tol", self.n_components, self.max_iter, gm.lower_bound_)
        self._set_params(gm.weights_, gm.means_,
                         _full_covariances(gm.covariances_, self.covariance_type, self.n_components, d))
        self.converged_ = bool(gm.converged_)
        self.n_iter_ = int(gm.n_iter_)
        self.lower_bound_ = float(gm.lower_bound_)
        self.n_fit_ = int(n)
        log.info("GMM K=%d fitted on %d codes (%s) in %.2fs, %d iterations", self.n_components, n, self.fit_on,
                 self.fit_seconds_, self.n_iter_)
        return self

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
                "random_state": self.random_state, "max_iter": self.max_iter, "tol": self.tol,
                "reg_covar": self.reg_covar, "n_init": self.n_init, "converged": self.converged_,
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
                tol=meta["tol"], reg_covar=meta["reg_covar"], n_init=meta["n_init"])
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
