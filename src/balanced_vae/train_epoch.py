"""One epoch of Algorithm 1's optimiser steps, on one process or data-parallel (``torchrun``).

The objective runs as a module (:class:`_Step`) so that DistributedDataParallel sees a
forward pass; each global batch is split over the ranks and the epoch's terms are summed
over every rank (see :mod:`balanced_vae.distributed`).
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from .distributed import all_reduce_sum, rank_world
from .sources import epoch_batches

log = logging.getLogger(__name__)


class _Step(nn.Module):
    """The objective as a module, so DistributedDataParallel sees a forward pass: x -> terms.
    ``memory_format``: the layout each batch (B, C, H, W) is put in first (the model's)."""

    def __init__(self, model: nn.Module, objective, memory_format: torch.memory_format) -> None:
        super().__init__()
        self.model, self.objective, self.memory_format = model, objective, memory_format

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.memory_format != torch.contiguous_format and x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        return self.objective(self.model, x)


def stepper(model, objective, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format):
    """``step(x) -> terms``: the objective, wrapped in DistributedDataParallel under a process group.

    Buffers are not broadcast: each rank keeps its own closed-form sums, which the trainer
    adds over ranks itself. Built anew after the stage switch, so every rank starts stage 2
    from rank 0's variance head.
    """
    step = _Step(model, objective, memory_format)
    if rank_world()[1] == 1:
        return step
    ids = [device.index] if device.type == "cuda" else None
    with warnings.catch_warnings():  # torch >= 2.12 renames the flag; the rank-local sums need its meaning
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return nn.parallel.DistributedDataParallel(step, device_ids=ids, broadcast_buffers=False)


def train_epoch(
    step, optimiser, x_fit, perm, *, batch_size, autocast, bar, rank, world, warmup=None, after_step=None
) -> tuple[dict, int | None]:
    """One pass of Adam steps over ``x_fit[perm]``; returns terms summed over every rank and the
    first step whose loss was non-finite (None if none). ``warmup(b)``, when given, is called before
    step ``b`` of the epoch to set the warm-ups' KL weight and learning rate (:func:`balanced_vae.train_state.warmup`);
    ``after_step()`` after each optimiser step (the weights' moving average, :mod:`balanced_vae.ema`).

    Each global batch ``perm[b B:(b+1) B]`` is split over ranks (``[rank::world]``); terms are
    accumulated on the device (no host sync per step).
    """
    sums: dict[str, torch.Tensor] = {}
    finite = torch.ones((), dtype=torch.bool, device=x_fit.device)
    first_bad = torch.full((), -1, dtype=torch.long, device=x_fit.device)
    if world == 1:  # sources stream their batches (a DataLoader's workers); ranks index their share
        batches = epoch_batches(x_fit, perm, batch_size)
    else:
        batches = (x_fit[perm[b * batch_size : (b + 1) * batch_size][rank::world]] for b in range(len(bar)))
    for b in bar:
        x = next(batches)
        if warmup is not None:
            warmup(b)
        with autocast():
            terms = step(x)
        optimiser.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimiser.step()
        if after_step is not None:
            after_step()
        ok = torch.isfinite(terms["loss"].detach())
        first_bad = torch.where(finite & ~ok, torch.full_like(first_bad, b), first_bad)
        finite = finite & ok
        for k, v in terms.items():
            v = v.detach().double() * len(x)
            sums[k] = sums[k] + v if k in sums else v
    keys = sorted(sums)
    total = all_reduce_sum(torch.stack([sums[k] for k in keys] + [(~finite).double()]))  # (K + 1,)
    bad_step = None
    if float(total[-1]) > 0:
        bad_step = int(first_bad) + 1 if not bool(finite) else -1
    return {k: float(v) for k, v in zip(keys, total[:-1])}, bad_step
