"""Where Algorithm 1 stands (paper Section 3.4) and the rules that move it on.

:class:`TrainState` is the part of the :class:`~balanced_vae.trainer.Trainer` that goes into each
checkpoint (:func:`resumable`, :func:`state_of`, :func:`set_rng_states`). The rules are functions
of it and of the config: when a stage has converged (:func:`converged`, :func:`stop_reason`), the
learning-rate drops (:func:`drop_lr`) and the warm-ups of the KL weight and the rate (:func:`warmup`),
each a function of the step alone, so a resumed run takes the same values.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .config import TrainConfig
from .objectives import KLWarmup

log = logging.getLogger(__name__)

COLLAPSE_KL = 0.1  # nats per image: below this at a stage's end the decoder ignores z


def make_optimiser(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser of every stage: RAdam (or Adam, ``config.optimiser``) at ``config.lr`` over all of
    the model's parameters (a new one at the stage switch, given stage 1's moments by
    :func:`carry_moments`; the new variance head starts from zero moments)."""
    if config.optimiser == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    # multi-tensor: PyTorch's one-tensor-at-a-time RAdam, its CPU default, took 2.7-3.5x as long a step
    # at width 64 (bench/epoch_parts.py); Adam's default already runs as fast as its multi-tensor form
    return torch.optim.RAdam(model.parameters(), lr=config.lr, foreach=True)


def moments(model: nn.Module, optimiser: torch.optim.Optimizer) -> dict[str, dict]:
    """The optimiser's per-parameter state (moments, step count) by parameter name, on the CPU: what
    the stage switch carries into stage 2 (:func:`carry_moments`), and ``stage1.pt`` keeps for a branch."""
    return {name: to_cpu(optimiser.state[p]) for name, p in model.named_parameters() if p in optimiser.state}


def moments_to_carry(
    model: nn.Module, optimiser: torch.optim.Optimizer, config: TrainConfig, source: dict | None
) -> dict[str, dict]:
    """Stage 1's moments for stage 2 (``config.switch == "carry"``): ``source``'s (a branch source's
    ``stage1.pt``), else ``optimiser``'s (:func:`moments`); none for a fresh switch."""
    if config.switch != "carry":
        return {}
    return moments(model, optimiser) if source is None else source


def carry_moments(model: nn.Module, optimiser: torch.optim.Optimizer, saved: dict[str, dict]) -> None:
    """Give ``optimiser`` (stage 2's, fresh) stage 1's state of each parameter that persists, by name
    (``saved``: :func:`moments`); the variance head's new parameters keep zero moments.

    Why: a fresh RAdam takes its first steps un-rectified (momentum SGD, not divided by the second
    moment), and by the switch the gradients carry 1 / sigma*^2 (often ~200): those steps undid
    stage 1 on the small network (training MSE 0.02 -> 0.11). With the moments carried the persisting
    weights go on at the step size they had.
    """
    for name, p in model.named_parameters():
        if name in saved:
            # the step count stays on the CPU, where torch keeps it (unless capturable or fused)
            optimiser.state[p] = {k: v.to(p.device) if k != "step" else v for k, v in saved[name].items()}


@dataclass
class TrainState:
    """Where Algorithm 1 stands; everything in it goes into the checkpoint."""

    stage: int = 1
    epoch: int = 0
    history: list = field(default_factory=list)  # -(validation loss) per epoch of this stage
    sigma2_star: float | None = None
    stops: dict = field(default_factory=dict)  # stage -> {reason, epochs, seconds}
    stage_seconds: float = 0.0
    done: bool = False
    commits: list = field(default_factory=list)  # the source commits that trained it ("+dirty" when modified)
    lr_drops: int = 0  # learning-rate drops made in this stage
    lr_dropped_at: int = 0  # len(history) at the last drop


def state_of(ckpt: dict) -> TrainState:
    """The :class:`TrainState` a checkpoint (``checkpoint.pt``, or ``stage1.pt`` at the switch) holds."""
    return TrainState(
        stage=int(ckpt["stage"]),
        epoch=int(ckpt["epoch"]),
        history=list(ckpt.get("history", [])),
        sigma2_star=ckpt["sigma2_star"],
        stops=dict(ckpt.get("stops", {})),
        stage_seconds=float(ckpt.get("stage_seconds", 0.0)),
        done=bool(ckpt.get("done", False)),
        commits=list(ckpt.get("commits", [])),
        lr_drops=int(ckpt.get("lr_drops", 0)),
        lr_dropped_at=int(ckpt.get("lr_dropped_at", 0)),
    )


def cpu_state(module_or_optimiser) -> dict:
    """A state dict with every tensor on the CPU, so checkpoints load on any device."""
    return to_cpu(module_or_optimiser.state_dict())


def to_cpu(v):
    """``v`` (a tensor, or dicts and lists of them) with every tensor detached and on the CPU."""
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    if isinstance(v, dict):
        return {k: to_cpu(u) for k, u in v.items()}
    if isinstance(v, list):
        return [to_cpu(u) for u in v]
    return v


def resumable(model, st: TrainState, shape, data_fp: dict, shuffle, rng_states: list, device) -> dict:
    """What a checkpoint holds to go on from here exactly (but the optimiser): the weights, the
    state, the data fingerprint and the random states (``rng_states``: every rank's torch state)."""
    return {
        "model": cpu_state(model),
        **dataclasses.asdict(st),
        "shape": list(shape),
        "data": data_fp,
        "shuffle_rng": shuffle.get_state(),
        "torch_rng": torch.get_rng_state(),
        "torch_rng_ranks": rng_states,
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_states(ckpt: dict, shuffle, out: Path, rank: int, world: int, device) -> None:
    """Put the checkpoint's shuffle, torch (this rank's) and CUDA random states back."""
    shuffle.set_state(ckpt["shuffle_rng"])
    states = ckpt.get("torch_rng_ranks") or [ckpt["torch_rng"]]
    if len(states) != world:
        log.warning(
            "%s was trained by %d process(es), resumed by %d: random draws will differ from an uninterrupted run",
            out,
            len(states),
            world,
        )
    torch.set_rng_state(states[rank % len(states)])
    if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(ckpt["cuda_rng"], device)


def converged(history: list[float], config: TrainConfig, dims: int, since: int = 0) -> bool:
    """The validation objective improved by less than ``tol`` nats per dimension over ``window`` epochs.

    ``stopping="best"``: the best of the last ``window`` epochs against the best before them, so
    one lucky or unlucky epoch neither ends nor prolongs a stage; ``"endpoints"``: the last epoch
    against the one ``window`` epochs before (the rule of runs made before 0.2). Absolute, not relative: the ELBO carries the constant -D/2 log(2 pi sigma^2), so a
    relative rule stops runs near -480 nats early and never stops runs near 0. ``since``:
    the epochs of ``history`` before it (before a learning-rate drop, or in the KL warm-up) are not compared.
    """
    w = config.window
    if len(history) < max(config.min_epochs, since + w + 1):
        return False
    h = history[since:]
    if config.stopping == "endpoints":  # two noisy points: fires while the trend still rises
        return abs(h[-1] - h[-1 - w]) / dims < config.tol
    return (max(h[-w:]) - max(h[:-w])) / dims < config.tol


def stop_reason(st: TrainState, config: TrainConfig, dims: int, validated: bool) -> str | None:
    """Why the current stage ends after this epoch: converged, max_epochs, max_minutes, or None."""
    since = max(st.lr_dropped_at, config.kl_warmup if st.stage == 1 else 0)
    if validated and converged(st.history, config, dims, since=since):
        return "converged"
    if st.epoch >= config.epochs:
        return "max_epochs"
    if config.max_minutes is not None and st.stage_seconds >= 60 * config.max_minutes:
        return "max_minutes"
    return None


def is_best(st: TrainState, config: TrainConfig) -> bool:
    """Whether the epoch just validated is the stage's best so far (epochs of the KL warm-up excepted)."""
    h = st.history[config.kl_warmup if st.stage == 1 else 0 :]
    return bool(h) and h[-1] >= max(h)


def drop_lr(optimiser: torch.optim.Optimizer, st: TrainState) -> float:
    """Divide the learning rate by 10 and restart the convergence window; returns the new rate."""
    for group in optimiser.param_groups:
        group["lr"] = group["lr"] / 10
    st.lr_drops += 1
    st.lr_dropped_at = len(st.history)
    log.info(
        "stage %d epoch %d: converged; learning rate dropped to %.3g (drop %d)",
        st.stage,
        st.epoch,
        optimiser.param_groups[0]["lr"],
        st.lr_drops,
    )
    return optimiser.param_groups[0]["lr"]


@dataclass
class WarmupStep:
    """``on_step(b)``, called before step ``b`` of an epoch of stage 1 that starts at step ``first`` of the
    stage: sets the warm-ups' KL weight and learning rate (:func:`warmup`); ``kl_weights`` holds the KL
    weights it set."""

    warm: KLWarmup | None
    optimiser: torch.optim.Optimizer
    st: TrainState
    config: TrainConfig
    first: int
    kl_steps: int
    kl_weights: list[float] = field(default_factory=list)

    def __call__(self, b: int) -> None:
        s, lr_steps = self.first + b + 1, self.config.lr_warmup or 0
        if self.warm is not None:
            self.warm.weight = min(1.0, s / self.kl_steps) if self.kl_steps else 1.0
            self.kl_weights.append(self.warm.weight)
        if s <= lr_steps:  # of the rate after any drop (a drop divides by 10)
            for group in self.optimiser.param_groups:
                group["lr"] = self.config.lr / 10**self.st.lr_drops * s / lr_steps


def warmup(
    warm: KLWarmup | None, optimiser: torch.optim.Optimizer, st: TrainState, config: TrainConfig, n_batches: int
) -> WarmupStep | None:
    """``on_step(b)`` for an epoch of stage 1 that has a warm-up step, else None (and the warm-ups done).

    Step ``b`` of epoch ``e`` is step ``s = e n_batches + b`` of the stage. The KL weight is
    ``min(1, (s + 1) / (kl_warmup n_batches))``; the learning rate ``lr min(1, (s + 1) / lr_warmup)``.
    Both are functions of the step alone, so a resumed run takes the same values.
    """
    kl_steps, lr_steps = config.kl_warmup * n_batches, config.lr_warmup or 0  # None: resolved by train()
    first = st.epoch * n_batches
    if st.stage != 1 or first >= max(kl_steps, lr_steps):
        if warm is not None:
            warm.weight = 1.0
        return None
    return WarmupStep(warm, optimiser, st, config, first, kl_steps)


def check_collapse(out: Path, st: TrainState, val: dict) -> None:
    """Record and warn when a stage ends with KL(q(z|x) || p(z)) < COLLAPSE_KL on the validation images
    (posterior collapse: every x is coded as the prior, so every sample is the same image)."""
    kl = val.get("kl")
    if kl is None or kl >= COLLAPSE_KL:
        return
    st.stops[str(st.stage)]["posterior_collapse"] = {"val_kl": kl}
    log.warning(
        "%s: stage %d ended with the posterior collapsed: KL(q(z|x) || p(z)) = %.3g nats on the "
        "validation images, so the decoder ignores z and every sample is the same image. Early epochs pass "
        "through this phase, and wide or deep networks at --lr 1e-3 can stay in it; fix: more --min-epochs "
        "if the stage ended early, else train again with a lower --lr (3e-4) or another --seed",
        out,
        st.stage,
        kl,
    )
