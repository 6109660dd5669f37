"""Decoder noise models p(x|z) = N(x; g(z), diag sigma^2) behind one interface (paper Section 3).

Every likelihood answers ``logvar(z, mean, x=None)``: the log-variance of the Gaussian
decoder, broadcastable to ``mean`` (B, C, H, W). One parameterisation (log-variance)
is used everywhere.

* :class:`FixedVariance` -- sigma^2 constant (0.5 = plain VAE, 1 = the paper's beta-VAE).
* :class:`GlobalVariance` -- one sigma^2 learned for all pixels (Eq. 9-10), either in
  closed form or by gradient on log sigma^2.
* :class:`PixelVariance` -- a head predicting log sigma^2_psi(z)_d per data dimension
  (Eq. 11) above a floor, by default the stage-1 sigma*^2 (Algorithm 1, stage 2).

How the closed form is learned (``GlobalVariance(mode="closed_form")``)
-----------------------------------------------------------------------
Eq. 10 says that for a fixed encoder and decoder the ELBO is maximised by
``sigma*^2 = 1/(N D) sum_n E_q ||x_n - g(z)||^2``. During training the networks move
every step, so the library uses:

1. in each training step, the maximiser of *that batch's* ELBO: the batch's mean squared
   residual (one z ~ q(z|x) per image), detached, as sigma^2;
2. meanwhile it accumulates the sum of squared residuals and the number of residuals
   over the whole epoch; at the end of the epoch, ``sigma*^2 = sum / count`` (Eq. 10 with
   one Monte-Carlo sample per image, over the epoch's training images). In data-parallel
   training both sums are all-reduced before the division, so every process holds the
   same sigma*^2.

That running value is what :class:`~balanced_vae.loss.BalancedLoss` users get from
``end_epoch``. The trainer of Algorithm 1 instead ends each stage-1 epoch with
:meth:`Likelihood.closed_form_update`: Eq. 10 exactly, from a second no-grad pass over the
training images on the *final* networks of the epoch (:func:`closed_form_sigma2`), because
the epoch average lags networks that moved during the epoch. That value is what validation,
checkpoints, every reported ELBO and stage 2 use.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .distributed import all_reduce_sum, rank_world
from .sources import rows

#: images per batch of the no-grad passes of every epoch (Eq. 10, validation): at width 64 on two CPU
#: threads 256 ran 1.33x faster per image than 1,000, whose activations outgrow the caches (bench/epoch_parts.py)
PASS_BATCH = 256

ReduceFn = Callable[[torch.Tensor], torch.Tensor]


def identity(t: torch.Tensor) -> torch.Tensor:
    """The reduction of a single process (no other ranks to sum over)."""
    return t


class Likelihood(nn.Module):
    """Interface of a Gaussian decoder noise model."""

    def logvar(self, z: torch.Tensor, mean: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Log-variance broadcastable to ``mean`` (B, C, H, W); ``x`` only in training."""
        raise NotImplementedError

    @property
    def sigma2(self) -> float:
        """The global sigma^2 (or the floor, for a per-pixel head)."""
        raise NotImplementedError

    def end_epoch(self, reduce: ReduceFn = identity) -> None:
        """sigma^2 from the running sums of the epoch's training steps (closed form only; see the module)."""

    def closed_form_update(self, model: nn.Module, x: torch.Tensor, *, seed: int, batch_size: int = PASS_BATCH) -> None:
        """Algorithm 1's end of a training epoch: sigma*^2 by Eq. 10 on ``model``'s networks as they are.

        Only the closed-form global variance has one; every other noise model keeps its sigma^2
        (fixed, learned by gradient, or a per-pixel head over a frozen floor).
        """

    def describe(self) -> dict:
        """JSON-able description, saved with checkpoints."""
        return {"kind": type(self).__name__, "sigma2": self.sigma2}


class FixedVariance(Likelihood):
    """sigma^2 held at a constant (Eq. 9 with sigma^2 fixed)."""

    def __init__(self, sigma2: float) -> None:
        super().__init__()
        if not sigma2 > 0:
            raise ValueError(f"sigma2 must be > 0, got {sigma2}")
        self.register_buffer("log_sigma2", torch.tensor(math.log(sigma2)))

    def logvar(self, z, mean, x=None):
        return self.log_sigma2.expand(1, 1, 1, 1)  # (1, 1, 1, 1)

    @property
    def sigma2(self) -> float:
        return float(self.log_sigma2.exp())


class GlobalVariance(Likelihood):
    """One learned sigma^2 for every data dimension (Eq. 9, Eq. 10).

    ``mode="closed_form"`` follows Eq. 10 as described in the module docstring;
    ``mode="gradient"`` learns ``log_sigma2`` with the networks' optimiser.
    """

    def __init__(self, mode: str = "closed_form", init_sigma2: float = 1.0) -> None:
        super().__init__()
        if mode not in ("closed_form", "gradient"):
            raise ValueError(f"mode must be 'closed_form' or 'gradient', got {mode!r}")
        self.mode = mode
        init = torch.tensor(math.log(init_sigma2))
        # under data parallelism the trainer sets this to a sum over ranks, so each step's
        # sigma^2 is the mean squared residual of the *global* batch
        self.reduce_step: ReduceFn | None = None
        if mode == "gradient":
            self.log_sigma2 = nn.Parameter(init)
        else:
            self.register_buffer("log_sigma2", init)
            self.register_buffer("sse", torch.zeros((), dtype=torch.float64))
            self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def logvar(self, z, mean, x=None):
        if self.mode == "closed_form" and self.training and x is not None:
            r2 = (x - mean.detach()).pow(2)  # (B, C, H, W)
            sse = r2.sum().double()
            self.sse += sse
            self.count += r2.numel()
            if self.reduce_step is not None:
                both = self.reduce_step(torch.stack([sse, sse.new_tensor(float(r2.numel()))]))  # (2,)
                batch_sigma2 = (both[0] / both[1]).float()
            else:
                batch_sigma2 = r2.mean()
            return batch_sigma2.clamp_min(1e-12).log().expand(1, 1, 1, 1)
        return self.log_sigma2.expand(1, 1, 1, 1)  # (1, 1, 1, 1)

    def end_epoch(self, reduce: ReduceFn = identity) -> None:
        if self.mode != "closed_form" or self.count.item() == 0:
            return
        sse, count = reduce(self.sse.clone()), reduce(self.count.clone())
        self.log_sigma2.fill_(math.log(max(float(sse / count), 1e-12)))
        self.sse.zero_()
        self.count.zero_()

    def closed_form_update(self, model: nn.Module, x: torch.Tensor, *, seed: int, batch_size: int = PASS_BATCH) -> None:
        """sigma*^2 = :func:`closed_form_sigma2` of ``model`` (this likelihood's VAE) on the training images
        ``x`` (N, C, H, W): Eq. 10 on the final networks of the epoch. The running sums of the epoch's
        steps are dropped, so the next epoch's start from zero."""
        if self.mode != "closed_form":
            return
        sigma2 = closed_form_sigma2(model, x, seed=seed, batch_size=batch_size)
        self.log_sigma2.fill_(math.log(max(sigma2, 1e-12)))
        self.sse.zero_()
        self.count.zero_()

    @property
    def sigma2(self) -> float:
        return float(self.log_sigma2.detach().exp())

    def describe(self) -> dict:
        return {**super().describe(), "mode": self.mode}


class PixelVariance(Likelihood):
    """Per-dimension variance sigma^2_psi(z)_d = floor + exp(head(z)_d) (Eq. 11).

    ``head`` maps z (B, L) to raw log-variances (B, C, H, W). The floor (stage-1 sigma*^2
    by default; 0 allowed) is added in log space: ``logvar = logaddexp(raw, log floor)``.
    The raw output is clamped below at ``min_logvar`` so a floor of 0 stays finite.
    """

    def __init__(self, head: nn.Module, floor: float, min_logvar: float = -16.0) -> None:
        super().__init__()
        if floor < 0:
            raise ValueError(f"variance floor must be >= 0, got {floor}")
        self.head = head
        self.min_logvar = min_logvar
        self.register_buffer("log_floor", torch.tensor(math.log(floor) if floor > 0 else -math.inf))

    def logvar(self, z, mean, x=None):
        raw = self.head(z).float().clamp_min(self.min_logvar)  # (B, C, H, W)
        return torch.logaddexp(raw, self.log_floor)

    @property
    def sigma2(self) -> float:
        return float(self.log_floor.exp())

    def describe(self) -> dict:
        return {"kind": "PixelVariance", "floor": self.sigma2}


def closed_form_sigma2(model: nn.Module, x: torch.Tensor, *, seed: int = 0, batch_size: int = PASS_BATCH) -> float:
    """Eq. 10 on the current networks: sigma*^2 = 1/(N D) sum_n ||x_n - g(z_n)||^2, z_n ~ q(z|x_n).

    A no-grad pass in eval mode over ``x`` (N, C, H, W) with one z per image from a generator
    seeded ``seed``; under data parallelism each process passes its shard and the sums are
    all-reduced. This is the value stage 2, checkpoints and every reported ELBO use, rather than
    the epoch average, which lags networks that moved during the epoch. (It sets eval mode by hand:
    :mod:`balanced_vae.model`, home of ``eval_mode``, imports this module.)
    """
    rank, world = rank_world()
    g = torch.Generator(device=x.device).manual_seed(seed)
    sse = torch.zeros((), dtype=torch.float64, device=x.device)
    xs = x[rank::world]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(xs), batch_size):
                xb = rows(xs, i, i + batch_size)
                mu, logvar = model.encode(xb)  # (b, L)
                mean = model.decode_mean(model.reparameterise(mu, logvar, g))  # (b, C, H, W)
                sse += (xb - mean).pow(2).sum().double()
    finally:
        model.train(was_training)
    count = torch.tensor(float(xs.numel()), dtype=torch.float64, device=x.device)
    return float(all_reduce_sum(sse) / all_reduce_sum(count))
