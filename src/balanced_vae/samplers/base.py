"""The samplers of the prior and the exact aggregate posterior (Eq. 12), their checks, and the
Monte-Carlo KL estimator of Table 1 (see :mod:`balanced_vae.samplers`)."""

from __future__ import annotations

import logging
import math
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ..objectives import LOG_2PI

log = logging.getLogger(__name__)


class Sampler(Protocol):
    """What every sampler offers: ``sample(n, generator) -> (n, L)``, ``log_prob(z) -> (n,)``."""

    @property
    def latent_dim(self) -> int: ...

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def log_prob(self, z: torch.Tensor) -> torch.Tensor: ...


def check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"number of samples n={n!r}; fix: pass a positive integer")
    return int(n)


def check_z(z: torch.Tensor, latent_dim: int, who: str) -> torch.Tensor:
    z = torch.as_tensor(z)
    if z.ndim != 2 or z.shape[1] != latent_dim:
        raise ValueError(
            f"{who}.log_prob: z has shape {tuple(z.shape)}, expected (n, {latent_dim}); "
            f"fix: pass a batch of {latent_dim}-dimensional codes"
        )
    return z.detach().to(torch.float64)


def check_codes(mu, logvar, who: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    mu = torch.as_tensor(mu).detach().cpu()
    if mu.ndim != 2 or mu.shape[0] < 1 or mu.shape[1] < 1:
        raise ValueError(
            f"{who}: mu has shape {tuple(mu.shape)}, expected (N, L) with N, L >= 1; "
            "fix: pass the encoder means of a batch, e.g. from encode_dataset(model, x)"
        )
    if not torch.isfinite(mu).all():
        raise ValueError(f"{who}: mu holds non-finite values; fix: check the encoder / checkpoint")
    if logvar is None:
        return mu, None
    logvar = torch.as_tensor(logvar).detach().cpu()
    if logvar.shape != mu.shape:
        raise ValueError(
            f"{who}: logvar has shape {tuple(logvar.shape)} but mu has {tuple(mu.shape)}; "
            "fix: pass the encoder's (mu, logvar) pair"
        )
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
        return torch.randn(check_n(n), self.latent_dim, generator=generator)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) summed over latents: (n, L) -> (n,)."""
        z = check_z(z, self.latent_dim, "PriorSampler")
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
        mu, logvar = check_codes(mu, logvar, "AggregatePosteriorSampler")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size!r}; fix: pass a positive integer")
        self.mu = mu.float()  # (N, L)
        self.logvar = logvar.float()  # (N, L)
        self.chunk_size = int(chunk_size)
        self.latent_dim = mu.shape[1]
        # log N(z; mu_n, diag v_n) = [z^2, z, 1] . [-1/(2 v_n), mu_n / v_n, c_n]: one matrix product
        # per block instead of an (n, N, L) tensor; float64 keeps the expanded square exact.
        lv = self.logvar.double()
        inv_var = torch.exp(-lv)  # (N, L)
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
        n = check_n(n)
        idx = torch.randint(self.n_components, (n,), generator=generator)  # (n,)
        eps = torch.randn(n, self.latent_dim, generator=generator)  # (n, L)
        return self.mu[idx] + (0.5 * self.logvar[idx]).exp() * eps  # (n, L)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z) of Eq. 12 by a chunked logsumexp over the N components: (n, L) -> (n,)."""
        z = check_z(z, self.latent_dim, "AggregatePosteriorSampler")
        rows = max(1, (1 << 21) // min(self.chunk_size, self.n_components))  # block <= 16 MiB of float64
        out = torch.empty(len(z), dtype=torch.float64)
        for i in range(0, len(z), rows):
            zi = z[i : i + rows]  # (b, L)
            phi = torch.cat([zi.pow(2), zi, torch.ones(len(zi), 1, dtype=torch.float64)], 1)  # (b, 2L + 1)
            acc = torch.full((len(zi),), -math.inf, dtype=torch.float64)  # (b,)
            for j in range(0, self.n_components, self.chunk_size):
                logp = phi @ self._weights[j : j + self.chunk_size].T  # (b, M)
                acc = torch.logaddexp(acc, torch.logsumexp(logp, dim=1))
            out[i : i + rows] = acc
        return (out - math.log(self.n_components)).float()  # (n,)

    def __repr__(self) -> str:
        return f"AggregatePosteriorSampler(N={self.n_components}, latent_dim={self.latent_dim})"


# ---------------------------------------------------------------------- estimators


def kl_monte_carlo(
    q, p, n: int = 10_000, runs: int = 10, seed: int = 0, *, progress: bool = False, desc: str = "KL runs"
) -> dict:
    """KL(q || p) = E_q[log q(z) - log p(z)] by Monte Carlo (Table 1's protocol).

    Run r draws ``n`` samples from ``q`` with a generator seeded ``seed + r`` and averages
    ``log q - log p``; the result reports the mean and sample standard deviation (ddof=1)
    of the ``runs`` estimates, the standard error of their mean (``sem``) and each estimate.
    ``q`` needs ``sample`` and ``log_prob``; ``p`` only ``log_prob``.
    """
    n, runs = check_n(n), check_n(runs)
    estimates = []
    for r in tqdm(range(runs), desc=desc, disable=not progress, leave=False):
        g = torch.Generator().manual_seed(seed + r)
        z = q.sample(n, generator=g)  # (n, L)
        estimates.append(float((q.log_prob(z).double() - p.log_prob(z).double()).mean()))
    est = np.asarray(estimates)
    std = float(est.std(ddof=1)) if runs > 1 else None  # None, not NaN: stays valid JSON
    return {
        "mean": float(est.mean()),
        "std": std,
        "sem": std / math.sqrt(runs) if runs > 1 else None,
        "n": n,
        "runs": runs,
        "seed": seed,
        "estimates": estimates,
    }
