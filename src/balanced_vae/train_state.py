"""Where Algorithm 1 stands (paper Section 3.4) and how a run enters it: new, resumed, branched, stage 2.

:class:`TrainState` is everything the loop of :mod:`balanced_vae.train` carries from epoch to
epoch and writes into each checkpoint; :func:`restore` puts a checkpoint back (weights,
optimiser, random states), :func:`branch_at` starts a run at another run's stage switch and
:func:`enter_stage2` is the switch itself: the stage-1 model saved, the per-pixel variance
head added over the floor sigma*^2, a fresh optimiser.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .atomic import write_text_atomic
from .checkpoint import CHECKPOINT, CONFIG, METRICS, STAGE1, CheckpointError, load_weights, save_checkpoint
from .config import TrainConfig
from .data.splits import check_fingerprint
from .distributed import gather_rng_states
from .resume import may_reopen

# importable from here as before the rules and the splits moved (resume.py, data/splits.py)
from .run_folder import truncate_metrics

log = logging.getLogger(__name__)


def make_optimiser(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser of every stage: RAdam (or Adam, ``config.optimiser``) at ``config.lr`` over all of
    the model's parameters (a fresh one at the stage switch, whose new variance head starts from zero
    moments)."""
    kind = {"radam": torch.optim.RAdam, "adam": torch.optim.Adam}[config.optimiser]
    return kind(model.parameters(), lr=config.lr)


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

    def move(v):
        if isinstance(v, torch.Tensor):
            return v.detach().cpu()
        if isinstance(v, dict):
            return {k: move(u) for k, u in v.items()}
        if isinstance(v, list):
            return [move(u) for u in v]
        return v

    return move(module_or_optimiser.state_dict())


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


def restore(ckpt: dict, model, shuffle, config, out: Path, rank: int, world: int, device) -> tuple[TrainState, object]:
    """Load a checkpoint into the model, the shuffle and the RNGs; returns the state and the optimiser.

    A slimmed checkpoint (weights only) of a finished run loads as finished; continuing it is refused.
    A finished run whose last stage was ended by a cap that has since been raised (more
    ``--epochs``, ``--max-minutes``) is reopened.
    """
    st = state_of(ckpt)
    reopen = st.done and may_reopen(st.stops.get(str(st.stage), {}), st.epoch, st.stage_seconds, config)
    if st.stage == 2:
        model.with_pixel_variance(
            config.pixel_floor if config.pixel_floor is not None else st.sigma2_star, init_sigma2=st.sigma2_star
        )
        model.to(device)
    optimiser = make_optimiser(model, config)
    load_weights(model, ckpt["model"], out / CHECKPOINT, out / CONFIG)
    if "optimiser" not in ckpt:  # slimmed (`balanced-vae slim`): finished, and can only stay so
        if not st.done or reopen:
            raise CheckpointError(
                f"{out / CHECKPOINT}: holds weights only (slimmed for sharing), without the optimiser and "
                "random states that training further needs; train into a new folder instead"
            )
        return st, optimiser
    optimiser.load_state_dict(ckpt["optimiser"])
    set_rng_states(ckpt, shuffle, out, rank, world, device)
    if rank == 0:
        truncate_metrics(out / METRICS, st.stage, st.epoch)
    if reopen:
        log.info(
            "%s: continuing the last stage with the new caps (epochs %d, max_minutes %s)",
            out,
            config.epochs,
            config.max_minutes,
        )
        st.stops.pop(str(st.stage), None)
        st.done = False
    return st, optimiser


def branch_at(
    path: Path, ckpt: dict, model, shuffle, config, out: Path, data, fingerprint: dict, rank: int, world: int, device
) -> tuple[TrainState, object]:
    """Start ``out`` at the stage switch saved in ``ckpt`` (another run's ``stage1.pt`` at ``path``, from
    :func:`branch_source`): its stage-1 weights, state, random states and log lines, then the
    switch itself under this run's config (its own floor). Returns the state and the optimiser."""
    check_fingerprint(ckpt.get("data"), data, config, path)
    load_weights(model, ckpt["model"], path, path.parent / CONFIG)
    set_rng_states(ckpt, shuffle, out, rank, world, device)
    st = state_of(ckpt)
    # where stage 1 (and its seconds) came from, relative to this run, so records stay portable
    st.stops["1"] = {**st.stops["1"], "branched_from": os.path.relpath(path.parent.resolve(), out.resolve())}
    if rank == 0:
        rows = (
            [
                ln
                for ln in (path.parent / METRICS).read_text().splitlines()
                if ln.strip() and json.loads(ln)["stage"] == 1
            ]
            if (path.parent / METRICS).is_file()
            else []
        )
        write_text_atomic(out / METRICS, "".join(r + "\n" for r in rows))
        log.info("%s: stage 1 taken from %s (%d epochs); training stage 2", out, path, st.epoch)
    return st, enter_stage2(model, st, config, out, data.shape, rank, device, shuffle, fingerprint)


def enter_stage2(model, st: TrainState, config, out: Path, shape, rank: int, device, shuffle, data_fp):
    """Algorithm 1's switch: save the stage-1 model, add the per-pixel head over the floor, new Adam.

    ``stage1.pt`` also holds the state and the random states from before the head is drawn, so
    another run may start here (:func:`branch_source`)."""
    rng_states = gather_rng_states()  # a collective: every rank takes part
    if rank == 0:
        save_checkpoint(out / STAGE1, resumable(model, st, shape, data_fp, shuffle, rng_states, device))
    floor = config.pixel_floor if config.pixel_floor is not None else st.sigma2_star
    model.with_pixel_variance(floor, init_sigma2=st.sigma2_star)
    model.to(device)
    st.stage, st.epoch, st.history, st.stage_seconds, st.lr_drops, st.lr_dropped_at = 2, 0, [], 0.0, 0, 0
    return make_optimiser(model, config)
