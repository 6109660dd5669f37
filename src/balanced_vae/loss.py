"""A drop-in loss for your own training loop: the balanced ELBO (paper Sections 3.2-3.4).

:class:`BalancedLoss` takes what any VAE loop has -- the data ``x``, the decoder mean g(z)
and the encoder's ``(mu, logvar)`` -- and returns the ELBO terms with the decoder variance
handled inside it:

* stage 1 (Eq. 9-10): one global sigma^2 in closed form. In training mode each call uses its
  batch's mean squared residual (detached) and adds the residuals to epoch sums;
  :meth:`BalancedLoss.end_epoch` sets sigma*^2 = sum / count (Eq. 10), which eval mode uses.
  This is exactly what the library's trainer does (:class:`~balanced_vae.likelihoods.GlobalVariance`);
  to get Eq. 10 on the *final* networks of an epoch, as the trainer reports, make a no-grad
  pass with :meth:`BalancedLoss.observe` before ``end_epoch``.
* stage 2 (Eq. 11, Algorithm 1): :meth:`BalancedLoss.to_pixel_variance` freezes sigma*^2 as
  a floor and adds a per-pixel head ``z (B, L) -> (B, *x_shape)`` (e.g. a second decoder);
  from then on each call also needs the code ``z``, and the head's parameters
  (``loss.parameters()``) must be given to the optimiser.

Any shape of ``x`` works: ``(B, C, H, W)``, ``(B, D)``, ...; sums run over all dimensions but
the first.
"""

from __future__ import annotations

import torch
from torch import nn

from .data import DataError
from .likelihoods import GlobalVariance, PixelVariance, ReduceFn, identity
from .model import pixel_variance
from .objectives import gaussian_log_prob, kl_standard_normal
from .sources import canonical_shape


class BalancedLoss(nn.Module):
    """Negative ELBO with the closed-form decoder variance inside (Eq. 9-11).

    ``loss(x, mean, mu, logvar, z=None) -> dict`` of batch means: ``loss`` (= -``elbo``, to
    minimise), ``elbo``, ``rec`` (E_q log p(x|z)), ``kl``, ``mse`` and ``sigma2`` (the
    decoder variance used, averaged over dimensions).

    Args:
        init_sigma2: sigma^2 used in eval mode before the first :meth:`end_epoch`.
        check_range: raise when ``x`` leaves [0, 1] (the Gaussian of Eq. 6-8 is defined there).
    """

    def __init__(self, init_sigma2: float = 1.0, check_range: bool = True) -> None:
        super().__init__()
        self.likelihood = GlobalVariance("closed_form", init_sigma2)
        self.check_range = check_range

    @property
    def stage(self) -> int:
        return 2 if isinstance(self.likelihood, PixelVariance) else 1

    @property
    def sigma2(self) -> float:
        """sigma*^2 of stage 1 (the floor in stage 2)."""
        return self.likelihood.sigma2

    def _layout(self, x: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape != mean.shape:
            raise ValueError(
                f"BalancedLoss: x has shape {tuple(x.shape)} but the decoder mean has "
                f"{tuple(mean.shape)}; fix: the decoder must return one value per data dimension"
            )
        if x.ndim < 2:
            raise ValueError(f"BalancedLoss: x has shape {tuple(x.shape)}; expected a batch (B, ...)")
        if self.check_range:
            lo, hi = (float(v) for v in torch.aminmax(x.detach()))
            if not (0.0 <= lo and hi <= 1.0):
                raise DataError(
                    f"BalancedLoss: x spans [{lo:.4g}, {hi:.4g}], outside [0, 1]; fix: rescale the "
                    "data to [0, 1] (divide 0..255 images by 255)"
                )
        shape = (len(x), *canonical_shape(x.shape[1:]))
        return x.reshape(shape), mean.float().reshape(shape)  # (B, C, H, W)

    def forward(
        self, x: torch.Tensor, mean: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """ELBO terms of one batch: x, mean (B, *x_shape); mu, logvar (B, L); z (B, L) in stage 2."""
        if mu.shape != logvar.shape or mu.ndim != 2 or len(mu) != len(x):
            raise ValueError(
                f"BalancedLoss: mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must both be ({len(x)}, L)"
            )
        if self.stage == 2 and z is None:
            raise ValueError("BalancedLoss in stage 2 needs the code z of each image: loss(x, mean, mu, logvar, z)")
        x4, mean4 = self._layout(x, mean)
        x_logvar = self.likelihood.logvar(z, mean4, x4 if self.training else None)  # broadcastable to x4
        if self.stage == 2:
            if x_logvar.numel() != x4.numel():
                raise ValueError(
                    f"BalancedLoss: the variance head returned {tuple(x_logvar.shape)} for x of shape "
                    f"{tuple(x.shape)}; fix: the head must return one value per data dimension"
                )
            x_logvar = x_logvar.reshape(x4.shape)  # (B, C, H, W)
        rec = gaussian_log_prob(x4, mean4, x_logvar)  # (B,)
        kl = kl_standard_normal(mu.float(), logvar.float())  # (B,)
        out = {
            "elbo": (rec - kl).mean(),
            "rec": rec.mean(),
            "kl": kl.mean(),
            "mse": (x4 - mean4).pow(2).flatten(1).mean(1).mean(),
            "sigma2": x_logvar.detach().exp().mean(),
        }
        out["loss"] = -out["elbo"]
        return out

    @torch.no_grad()
    def observe(self, x: torch.Tensor, mean: torch.Tensor) -> None:
        """Add a batch's squared residuals to the Eq. 10 sums without a loss (a pass on final networks)."""
        if self.stage != 1:
            raise RuntimeError("BalancedLoss.observe: sigma^2 is frozen in stage 2")
        x4, mean4 = self._layout(x, mean)
        r2 = (x4 - mean4).pow(2)
        self.likelihood.sse += r2.sum().double()
        self.likelihood.count += r2.numel()

    def end_epoch(self, reduce: ReduceFn = identity) -> float:
        """sigma*^2 = sum / count of the residuals seen since the last call (Eq. 10); returns it.

        ``reduce`` all-reduces the sums in data-parallel training (e.g. a
        ``torch.distributed.all_reduce`` wrapper), so every process holds the same sigma*^2.
        """
        self.likelihood.end_epoch(reduce)
        return self.sigma2

    def to_pixel_variance(
        self, head: nn.Module, floor: float | None = None, init_sigma2: float | None = None
    ) -> BalancedLoss:
        """Stage 2 of Algorithm 1: per-pixel sigma^2_psi(z) = floor + exp(head(z)) (Eq. 11).

        ``floor`` defaults to the stage-1 sigma*^2; every pixel starts at ``init_sigma2``, or
        just above the floor (1.01 x) when that is not above it, as in the trainer. Add
        ``loss.parameters()`` to your optimiser. Returns ``self``.
        """
        if self.stage == 2:
            raise RuntimeError("BalancedLoss is already in stage 2")
        if not isinstance(head, nn.Module):
            raise ValueError(
                f"to_pixel_variance: head must be an nn.Module z (B, L) -> (B, *x_shape), got {type(head).__name__}"
            )
        sigma2_star = self.sigma2
        floor = sigma2_star if floor is None else floor
        device = self.likelihood.log_sigma2.device
        self.likelihood = pixel_variance(head, floor, sigma2_star if init_sigma2 is None else init_sigma2, None).to(
            device
        )
        return self
