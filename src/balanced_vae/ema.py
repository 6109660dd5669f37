"""An exponential moving average of the weights, kept beside training and evaluated as weights of their own.

``W_ema <- d_n W_ema + (1 - d_n) W`` after the n-th optimiser step (parameters and buffers, so a
network with BatchNorm averages its running statistics too), from torch's own
:class:`~torch.optim.swa_utils.AveragedModel` and :func:`~torch.optim.swa_utils.get_ema_multi_avg_fn`.
With the warm-up (``TrainConfig.ema_warmup``, the default) ``d_n = min(decay, (1 + n) / (10 + n))``,
the schedule of TensorFlow's ``ExponentialMovingAverage(num_updates=n)``: the average forgets its
first, random weights within tens of steps instead of keeping ``decay^n`` of them (0.999 keeps 10 %
of the initial weights after 2,300 steps, which sinks the average of a deep net that is still
moving). Without it ``d_n = decay`` from the first step (runs made before the option).
Training never reads the average: the stopping rule, the stage switch and sigma*^2 of Algorithm 1
are those of the trained weights. Each epoch the average is written to ``ema.pt`` in the run folder,
a checkpoint of weights only that every command reading a run takes with ``--checkpoint ema.pt``.

The average starts again from the trained weights at Algorithm 1's stage switch (the per-pixel
head is new there). With the closed-form variance, a run that ends in stage 1 gives the average its
own sigma^2 at the end, Eq. 10 on the averaged networks; until then ``ema.pt`` and the
``ema_val_*`` log columns use the trained networks' sigma*^2 of the epoch (an ELBO all the same, at a
sigma^2 near the maximiser, and without a second Eq. 10 pass over the training set every epoch;
an average of the trained log sigma^2 would lag behind it, since Eq. 10 moves it once an epoch).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def warm_decay(decay: float, n: int) -> float:
    """The decay of the average's ``n``-th update (``n`` weights averaged before it) with the warm-up."""
    return min(decay, (1.0 + n) / (10.0 + n))


def make_ema(model: nn.Module, decay: float, warmup: bool = True) -> AveragedModel:
    """A copy of ``model`` whose parameters and buffers follow the model's by ``decay`` per step
    (:func:`warm_decay` of it with ``warmup``)."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"EMA decay {decay!r} must lie in (0, 1) (command line: --ema, e.g. 0.999)")

    def warmed(ema_params, params, n_averaged) -> None:
        get_ema_multi_avg_fn(warm_decay(decay, int(n_averaged)))(ema_params, params, n_averaged)

    avg = warmed if warmup else get_ema_multi_avg_fn(decay)
    return AveragedModel(model, multi_avg_fn=avg, use_buffers=True)


def ema_of(
    model: nn.Module, decay: float | None, state: dict | None = None, *, warmup: bool = True
) -> AveragedModel | None:
    """The average of ``model`` when ``decay`` asks for one (``state``: a checkpoint's, when resuming), else None."""
    if not decay:
        return None
    ema = make_ema(model, decay, warmup)
    if state is not None:
        load_ema(ema, state)
    return ema


def ema_state(ema: AveragedModel) -> dict:
    """What a checkpoint holds of the average: its weights (CPU) and how many steps it has averaged."""
    return {
        "model": {k: v.detach().cpu() for k, v in ema.module.state_dict().items()},
        "n_averaged": int(ema.n_averaged),
    }


def load_ema(ema: AveragedModel, state: dict) -> None:
    """Put :func:`ema_state` back into ``ema`` (a copy of the same network)."""
    ema.module.load_state_dict(state["model"])
    ema.n_averaged.fill_(int(state["n_averaged"]))


def set_closed_form_sigma2(ema: AveragedModel, sigma2: float) -> None:
    """Give the averaged networks their own Eq. 10 variance ``sigma2``."""
    ema.module.likelihood.log_sigma2.fill_(math.log(max(sigma2, 1e-12)))


@torch.no_grad()
def update(ema: AveragedModel | None, model: nn.Module) -> None:
    """One step of the average (no-op without one)."""
    if ema is not None:
        ema.update_parameters(model)
