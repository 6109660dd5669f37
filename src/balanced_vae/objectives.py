"""Training objectives, each returning a dict of named terms (paper Sections 3 and 5).

An objective is a callable ``objective(model, x) -> dict`` whose ``"loss"`` entry is the
scalar to minimise; the other entries are per-batch means of named terms, logged as
they are. Baselines differ from the method by their objective and their likelihood,
never by a model class.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .model import VAE

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag exp(logvar)) summed over data dimensions (Eq. 8).

    x, mean: (..., C, H, W); logvar broadcastable to them. Returns (...,) -- the last
    three dimensions are summed.
    """
    r2 = (x - mean).pow(2)
    logp = -0.5 * (LOG_2PI + logvar + r2 * torch.exp(-logvar))     # (..., C, H, W)
    return logp.sum(dim=(-3, -2, -1))


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)), closed form, summed over latents: (B, L) -> (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def elbo_terms(model: VAE, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Per-sample ELBO of Eq. 9 (global sigma^2) or Eq. 11 (per-pixel sigma^2).

    One z ~ q(z|x) per image. Returns ``elbo``, ``rec`` (E_q log p(x|z)), ``kl`` -- each (B,) --
    and ``mse`` (B,), the mean squared residual per image, plus ``x_logvar``.
    """
    mu, logvar = model.encode(x)                                   # (B, L)
    z = model.reparameterise(mu, logvar, generator)                # (B, L)
    mean, x_logvar = model.decode(z, x if model.training else None)
    rec = gaussian_log_prob(x, mean, x_logvar)                      # (B,)
    kl = kl_standard_normal(mu, logvar)                             # (B,)
    mse = (x - mean).pow(2).flatten(1).mean(1)                      # (B,)
    return {"elbo": rec - kl, "rec": rec, "kl": kl, "mse": mse, "x_logvar": x_logvar}


@dataclass(frozen=True)
class ELBO:
    """Negative ELBO (Eq. 9 / Eq. 11). With the model's likelihood this is the learned-variance
    method (``learned``), the plain VAE (fixed sigma^2 = 0.5) or the paper's beta-VAE
    (fixed sigma^2 = 1)."""

    def __call__(self, model: VAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
        t = elbo_terms(model, x)
        out = {k: v.mean() for k, v in t.items() if k != "x_logvar"}
        out["loss"] = -out["elbo"]
        return out
