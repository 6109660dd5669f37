"""The VAE module (paper Section 3): encode -> (mu, logvar), decode -> (mean, log-variance).

The model knows its networks and its likelihood; it knows nothing of objectives,
optimisers or trainer state.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .likelihoods import Likelihood, PixelVariance
from .nets import NetSpec, make_decoder, make_encoder


class VAE(nn.Module):
    """Gaussian encoder q(z|x) = N(mu, diag exp(logvar)), Gaussian decoder p(x|z) (Eq. 6-8).

    The decoder mean g(z) is a sigmoid of the decoder network's output, so it lies in
    (0, 1) like the data.
    """

    def __init__(self, spec: NetSpec, likelihood: Likelihood) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = make_encoder(spec)
        self.decoder = make_decoder(spec)
        self.likelihood = likelihood

    @property
    def latent_dim(self) -> int:
        return self.spec.latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> mu (B, L), logvar (B, L)."""
        h = self.encoder(x).float()                               # (B, 2L); fp32 even under bf16 autocast
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L) -> g(z) (B, C, H, W) in (0, 1)."""
        return torch.sigmoid(self.decoder(z).float())

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, L) -> mean (B, C, H, W), decoder log-variance broadcastable to it.

        ``x`` is passed only in training, for the closed-form global variance (Eq. 10).
        """
        mean = self.decode_mean(z)
        return mean, self.likelihood.logvar(z, mean, x)

    @staticmethod
    def reparameterise(mu: torch.Tensor, logvar: torch.Tensor,
                       generator: torch.Generator | None = None, k: int | None = None) -> torch.Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I): (B, L), or (k, B, L) when ``k`` is given."""
        shape = mu.shape if k is None else (k, *mu.shape)
        eps = torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + (0.5 * logvar).exp() * eps

    def with_pixel_variance(self, floor: float, init_sigma2: float | None = None) -> "VAE":
        """Algorithm 1, stage 2: the same networks with a new per-pixel variance head.

        The head's last layer starts at zero weight and a bias chosen so that every
        pixel's sigma^2 starts near ``init_sigma2`` (default: 1.01 x the floor), so stage 2
        begins where stage 1 ended instead of at sigma^2 ~ 1.
        """
        head = make_decoder(self.spec)
        init = init_sigma2 if init_sigma2 is not None else (1.01 * floor if floor > 0 else 1.0)
        extra = init - floor if init > floor else 0.01 * max(floor, 1e-8)
        last = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d))][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(math.log(extra))
        self.likelihood = PixelVariance(head, floor=floor)
        return self

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode the posterior mean of x (B, C, H, W): mean (B, C, H, W), sigma (B, C, H, W)."""
        mu, _ = self.encode(x)
        return self.generate(mu)

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode codes z (B, L): mean (B, C, H, W) and per-pixel sigma (B, C, H, W) (Figure 4)."""
        mean, logvar = self.decode(z)
        return mean, (0.5 * logvar).exp().expand_as(mean)
