"""The Gaussian-mixture sampler of Eq. 13: fitted by EM on a run's codes, sampled with torch, saved as
``.npz`` + JSON (see :mod:`balanced_vae.samplers`)."""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from sklearn.mixture import GaussianMixture
from sklearn.utils import check_random_state

from ..objectives import LOG_2PI
from .base import check_codes, check_n, check_z
from .em import GMM_BACKENDS, GMM_INITS, LARGE_K, code_scale, em_full, full_covariances, init_assignments
from .gmm_io import GMM_ARRAYS, GMM_FORMAT_VERSION, GMM_META, check_shapes, gmm_meta, read_gmm, write_gmm

log = logging.getLogger(__name__)

__all__ = ["FIT_ON", "GMM_ARRAYS", "GMM_FORMAT_VERSION", "GMM_META", "GaussianMixtureSampler"]

FIT_ON = ("mean", "sample")


class GaussianMixtureSampler:
    """A K-component Gaussian mixture over latent codes, fitted by EM (Eq. 13).

    Fitting is EM in float64 on the codes, initialised as scikit-learn does and seeded by
    ``random_state``. Below K = 100 (:data:`LARGE_K`; the paper's K = 32) it is
    scikit-learn's ``GaussianMixture`` with its defaults (k-means init, tol 1e-3). From K = 100
    on (CelebA's K = 500) the defaults are the large-K fit, measured by ``bench/gmm_fit.py``
    on 50,000 x 64 synthetic codes shaped like VAE means (K = 500, one core):

    * ``backend="torch"`` (full covariances): :func:`em_full`, scikit-learn's EM and stopping
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

    source: dict  # where a saved fit came from (set by ``load``, ``runs.fit_gmm_for_run``, ``export.card_gmm``)

    def __init__(
        self,
        n_components: int = 32,
        covariance_type: str = "full",
        fit_on: str = "mean",
        random_state: int = 0,
        max_iter: int = 200,
        tol: float | None = None,
        reg_covar: float = 1e-6,
        n_init: int = 1,
        init_params: str = "auto",
        backend: str = "auto",
    ) -> None:
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
        if (
            isinstance(self.n_components, bool)
            or not isinstance(self.n_components, (int, np.integer))
            or self.n_components < 1
        ):
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
            raise ValueError(
                f"backend='torch' fits full covariances only, not {self.covariance_type!r}; "
                "fix: use backend='sklearn' or 'auto'"
            )
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
        backend = (
            self.backend
            if self.backend != "auto"
            else ("torch" if large and self.covariance_type == "full" else "sklearn")
        )
        init = self.init_params if self.init_params != "auto" else ("k-means++" if large else "kmeans")
        tol = self.tol if self.tol is not None else (1e-2 if large else 1e-3)
        return backend, init, float(tol)

    # ------------------------------------------------------------------ fitting
    def fit(
        self, mu: torch.Tensor, logvar: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> GaussianMixtureSampler:
        """Fit by EM on codes mu (N, L) (``fit_on="mean"``) or on z ~ N(mu, exp(logvar)).

        ``logvar`` (N, L) is required for ``fit_on="sample"``; ``generator`` draws those
        samples (default: a generator seeded with ``random_state``). Returns ``self``.
        """
        self._validate_params()
        mu, logvar = check_codes(mu, logvar, "GaussianMixtureSampler.fit")
        if self.fit_on == "sample":
            if logvar is None:
                raise ValueError(
                    "GaussianMixtureSampler.fit: fit_on='sample' needs logvar (N, L); "
                    "fix: pass fit(mu, logvar) or use fit_on='mean'"
                )
            g = generator if generator is not None else torch.Generator().manual_seed(self.random_state)
            codes = mu.double() + (0.5 * logvar.double()).exp() * torch.randn(
                mu.shape, generator=g, dtype=torch.float64
            )
        else:
            codes = mu.double()  # (N, L)
        if not torch.isfinite(codes).all():
            raise ValueError(
                "GaussianMixtureSampler.fit: the codes drawn from N(mu, exp(logvar)) are not finite "
                "(logvar too large); fix: check the encoder or use fit_on='mean'"
            )
        n, d = codes.shape
        if n < self.n_components:
            raise ValueError(
                f"GaussianMixtureSampler.fit: {n} codes for K={self.n_components} components; "
                "fix: fit on at least K codes or lower n_components"
            )
        distinct = len(np.unique(codes.numpy(), axis=0))
        if distinct < self.n_components:
            raise ValueError(
                f"GaussianMixtureSampler.fit: the {n} codes hold only {distinct} distinct points, fewer "
                f"than K={self.n_components} components (a collapsed encoder?); fix: lower "
                "n_components or fit on samples (fit_on='sample')"
            )
        x = codes.numpy()
        scale = code_scale(x)
        backend, self.init_params_, self.tol_ = self._resolved()
        t0 = time.perf_counter()
        if backend == "torch":
            fit = self._fit_torch(codes, scale)
        else:
            fit = self._fit_sklearn(x, scale)
        self.fit_seconds_ = time.perf_counter() - t0
        self.backend_ = backend
        if not fit["converged"]:
            log.warning(
                "GMM with K=%d did not converge in %d EM iterations (lower bound %.4g); raise max_iter or tol",
                self.n_components,
                self.max_iter,
                fit["lower_bound"],
            )
        self._set_params(fit["weights"], fit["means"], fit["covariances"])
        self.converged_ = bool(fit["converged"])
        self.n_iter_ = int(fit["n_iter"])
        self.lower_bound_ = float(fit["lower_bound"])
        self.n_fit_ = int(n)
        log.info(
            "GMM K=%d fitted on %d codes (%s) by %s in %.2fs, %d iterations",
            self.n_components,
            n,
            self.fit_on,
            backend,
            self.fit_seconds_,
            self.n_iter_,
        )
        return self

    def _fit_sklearn(self, x: np.ndarray, scale: float) -> dict:
        """scikit-learn's EM; should it fail (a covariance not positive definite), refit with 10x the
        regularisation, up to 1e-2 of the codes' variance."""
        rel = self.reg_covar
        while True:
            gm = GaussianMixture(
                n_components=self.n_components,
                covariance_type=self.covariance_type,
                random_state=self.random_state,
                max_iter=self.max_iter,
                tol=self.tol_,
                reg_covar=rel * scale,
                n_init=self.n_init,
                init_params=self.init_params_,
            )
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "Best performing initialization did not converge")
                    gm.fit(x)
                break
            except ValueError as e:
                if rel >= 1e-2:
                    raise ValueError(
                        f"GaussianMixtureSampler.fit: EM failed for K={self.n_components} even with "
                        f"reg_covar={rel:g} (x the codes' variance {scale:.3g}) ({e}); "
                        "fix: lower n_components"
                    ) from None
                log.warning(
                    "GMM K=%d: EM failed with reg_covar=%g (%s); retrying with %g",
                    self.n_components,
                    rel,
                    str(e).split(".")[0],
                    max(rel * 10, 1e-9),
                )
                rel = float(f"{max(rel * 10, 1e-9):.3g}")  # 1e-6 * 10 is 9.999e-06; from 0 too
        self.reg_covar_ = rel * scale
        d = x.shape[1]
        return {
            "weights": gm.weights_,
            "means": gm.means_,
            "n_iter": gm.n_iter_,
            "converged": gm.converged_,
            "covariances": full_covariances(gm.covariances_, self.covariance_type, self.n_components, d),
            "lower_bound": gm.lower_bound_,
        }

    def _fit_torch(self, codes: torch.Tensor, scale: float) -> dict:
        """:func:`em_full` from scikit-learn's initialisation, ``n_init`` times; the best lower bound wins."""
        rng = check_random_state(self.random_state)  # one stream for all inits, as scikit-learn
        self.reg_covar_ = self.reg_covar * scale
        best = None
        for _ in range(self.n_init):
            pairs = init_assignments(codes.numpy(), self.n_components, self.init_params_, rng)
            fit = em_full(codes, pairs, self.n_components, self.reg_covar_, scale, self.tol_, self.max_iter)
            if best is None or fit["lower_bound"] > best["lower_bound"]:
                best = fit
        return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in best.items()}

    def _set_params(self, weights, means, covariances) -> None:
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))  # (K,)
        m = torch.as_tensor(np.asarray(means, dtype=np.float64))  # (K, L)
        cov = torch.as_tensor(np.asarray(covariances, dtype=np.float64))  # (K, L, L)
        k, d = m.shape
        if w.shape != (k,) or cov.shape != (k, d, d):
            raise ValueError(
                f"GMM parameters do not fit together: weights {tuple(w.shape)}, means {tuple(m.shape)}, "
                f"covariances {tuple(cov.shape)}; expected (K,), (K, L), (K, L, L)"
            )
        if (
            not (torch.isfinite(w).all() and torch.isfinite(m).all() and torch.isfinite(cov).all())
            or (w < 0).any()
            or abs(float(w.sum()) - 1.0) > 1e-6
        ):
            raise ValueError("GMM parameters are not finite or the weights do not sum to 1")
        chol, info = torch.linalg.cholesky_ex(cov)  # (K, L, L) lower
        if (info != 0).any():
            bad = int(torch.nonzero(info)[0])
            raise ValueError(
                f"GMM covariance of component {bad} is not positive definite; fix: refit with a larger reg_covar"
            )
        eye = torch.eye(d, dtype=torch.float64).expand(k, d, d)
        self.weights_ = w
        self.means_ = m
        self.covariances_ = cov
        self.n_components = k
        self.n_features_in_ = d
        self._chol = chol
        # P = L^-T so that P P^T = Sigma^-1 and ||(z - m) P||^2 is the Mahalanobis distance
        self.precisions_cholesky_ = torch.linalg.solve_triangular(chol, eye, upper=False).transpose(1, 2)
        self._log_norm = (
            torch.log(w)
            - 0.5 * d * LOG_2PI
            + torch.log(torch.diagonal(self.precisions_cholesky_, dim1=1, dim2=2)).sum(1)
        )  # (K,)

    @classmethod
    def from_params(cls, weights, means, covariances, **kwargs) -> GaussianMixtureSampler:
        """A fitted sampler with given weights (K,), means (K, L) and full covariances (K, L, L)."""
        s = cls(n_components=len(weights), **kwargs)
        s._validate_params()
        s._set_params(weights, means, covariances)
        s.converged_, s.n_iter_, s.lower_bound_, s.n_fit_ = True, 0, float("nan"), 0
        return s

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise NotFittedError(
                "this GaussianMixtureSampler is not fitted yet; call fit(mu) first or "
                "GaussianMixtureSampler.load(directory)"
            )

    @property
    def latent_dim(self) -> int:
        self._check_fitted()
        return self.n_features_in_

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ q_GMM(z) (Eq. 13): (n, L). Component indices first, then N(0, I) noise, from ``generator``."""
        self._check_fitted()
        n = check_n(n)
        idx = torch.multinomial(self.weights_, n, replacement=True, generator=generator)  # (n,)
        eps = torch.randn(n, self.n_features_in_, generator=generator, dtype=torch.float64)  # (n, L)
        z = self.means_[idx] + torch.einsum("nij,nj->ni", self._chol[idx], eps)  # (n, L)
        return z.float()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q_GMM(z) = logsumexp_k [log w_k + log N(z; m_k, Sigma_k)]: (n, L) -> (n,).

        Equals scikit-learn's ``score_samples`` of the same parameters.
        """
        self._check_fitted()
        z = check_z(z, self.n_features_in_, "GaussianMixtureSampler")
        n, d = z.shape
        per = max(1, (1 << 22) // max(n * d, 1))  # components per block: <= 32 MiB
        parts = []
        for j in range(0, self.n_components, per):
            diff = z.unsqueeze(0) - self.means_[j : j + per].unsqueeze(1)  # (k, n, L)
            y = torch.bmm(diff, self.precisions_cholesky_[j : j + per])  # (k, n, L)
            parts.append(self._log_norm[j : j + per, None] - 0.5 * y.pow(2).sum(-1))  # (k, n)
        return torch.logsumexp(torch.cat(parts), dim=0).float()  # (n,)

    def score(self, z: torch.Tensor) -> float:
        """Mean log-likelihood per code, as scikit-learn's ``score``."""
        return float(self.log_prob(z).double().mean())

    # ------------------------------------------------------------------ persistence
    def _meta(self) -> dict:
        return gmm_meta(self)

    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``gmm.npz`` (weights, means, covariances; no pickle) and ``gmm.json`` atomically.

        ``extra`` (JSON-able) is stored under ``"source"`` in the JSON, e.g. which checkpoint
        the codes came from. Returns the directory.
        """
        self._check_fitted()
        return write_gmm(self, directory, extra)

    @classmethod
    def load(cls, directory: str | Path) -> GaussianMixtureSampler:
        """Read a sampler written by :meth:`save`; ``source`` holds the saved ``extra``."""
        meta, (weights, means, covariances), where = read_gmm(directory)
        s = cls(
            n_components=int(meta["n_components"]),
            covariance_type=meta["covariance_type"],
            fit_on=meta["fit_on"],
            random_state=meta["random_state"],
            max_iter=meta["max_iter"],
            tol=meta["tol"],
            reg_covar=meta["reg_covar"],
            n_init=meta["n_init"],
            init_params=meta.get("init_params", "kmeans"),
        )  # saved before init_params: k-means
        try:
            s._set_params(weights, means, covariances)
        except ValueError as e:
            raise ValueError(f"{where}: {e}; delete {Path(directory).expanduser()} and refit") from None
        check_shapes(s, meta, where)
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
        return (
            f"GaussianMixtureSampler(n_components={self.n_components}, covariance_type="
            f"{self.covariance_type!r}, fit_on={self.fit_on!r}{fitted})"
        )
