"""Resume and branch rules of a run folder, beside :class:`~balanced_vae.config.TrainConfig`.

A run is re-created from its folder (house style 6): ``config.json`` as ``train`` wrote
it, with the changes of each resume in ``resumes.jsonl``. Only :data:`SAFE_ON_RESUME`
may change when a run is resumed (longer training, the data's new place), and a run that
starts at another run's stage switch of Algorithm 1 (``branch_from``) may differ from it
only in :data:`BRANCH_MAY_DIFFER`. The training loop and the CLI both ask here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from .checkpoint import CONFIG, RESUMES, STAGE1, SWITCH_MOMENTS, CheckpointError, load_checkpoint
from .config import TrainConfig
from .methods import n_stages

log = logging.getLogger(__name__)

#: fields that may change when a run is resumed: longer training, the data's location
SAFE_ON_RESUME = ("epochs", "max_minutes", "data_dir")
#: fields a branch may change: stage 2's floor; where the same data lie
BRANCH_MAY_DIFFER = ("pixel_floor", "data_dir")


class BranchError(CheckpointError):
    """A run cannot start at another run's stage switch (see :func:`branch_source`); nothing was written."""


def differences(saved: TrainConfig, config: TrainConfig, allowed: tuple[str, ...]) -> str:
    """The fields (but ``allowed``) where ``config`` differs from ``saved``, with the saved values:
    ``"lr, width (lr=0.001, width=32)"``; empty when none."""
    differ = [
        f.name
        for f in dataclasses.fields(TrainConfig)
        if getattr(saved, f.name) != getattr(config, f.name) and f.name not in allowed
    ]
    return f"{', '.join(differ)} ({', '.join(f'{d}={getattr(saved, d)!r}' for d in differ)})" if differ else ""


def run_config(folder: str | Path) -> TrainConfig:
    """The config a run folder trains under now: ``config.json`` as `train` created it, with the changes of
    each resume (``resumes.jsonl``: raised caps, the data's new place) applied in order."""
    folder = Path(folder).expanduser()
    config = TrainConfig.load(folder / CONFIG)
    path = folder / RESUMES
    if not path.is_file():
        return config
    for i, ln in enumerate(path.read_text().splitlines()):
        try:
            changes = json.loads(ln)["changes"]
            config = dataclasses.replace(config, **{k: v["to"] for k, v in changes.items() if k in SAFE_ON_RESUME})
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            log.warning("%s: line %d is not a resume record; ignored", path, i + 1)
    return config


def _refuse(given: dict, allowed: tuple[str, ...]) -> list[str]:
    """The options of ``given`` (field name -> value) outside ``allowed``, as ``--option`` names, sorted."""
    return ["--" + k.replace("_", "-") for k in sorted(set(given) - set(allowed))]


def resumed_config(run: str | Path, changes: dict) -> TrainConfig:
    """The config to resume ``run`` under: :func:`run_config` with ``changes`` (field -> value), which may
    name only :data:`SAFE_ON_RESUME`; else a ValueError naming the options that cannot change."""
    run = Path(run)
    refused = _refuse(changes, SAFE_ON_RESUME)
    if refused:
        raise ValueError(
            f"--resume {run}: {', '.join(refused)} cannot change "
            "when a run is resumed (its weights were trained with the values in "
            f"{run / CONFIG}); only --epochs, --max-minutes, --data-dir and --device may"
        )
    return dataclasses.replace(run_config(run), **changes)


def branched_config(run: str | Path, changes: dict) -> TrainConfig:
    """The config of a run that starts at ``run``'s stage switch: ``run``'s own with ``changes`` (field ->
    value), which may name only :data:`BRANCH_MAY_DIFFER`; else a ValueError naming the options refused."""
    run = Path(run)
    if not (run / CONFIG).is_file():
        raise ValueError(f"--branch-from {run}: {run / CONFIG} not found; give the folder of a run of Algorithm 1")
    refused = _refuse(changes, BRANCH_MAY_DIFFER)
    if refused:
        raise ValueError(
            f"--branch-from {run}: {', '.join(refused)} cannot "
            f"be given (stage 1 was trained with the values in {run / CONFIG}); only --pixel-floor, "
            "--data-dir and --device may"
        )
    return dataclasses.replace(run_config(run), **changes)


def branch_source(run: Path, config: TrainConfig) -> tuple[Path, dict]:
    """``run``'s ``stage1.pt`` (path, checkpoint) when a run of ``config`` may start at ``run``'s stage
    switch; else a :class:`BranchError` that says why (no switch yet, no random states, another config)."""
    if not (run / CONFIG).is_file():
        raise BranchError(f"{run / CONFIG}: not a run folder; --branch-from needs a run of Algorithm 1")
    differ = differences(run_config(run), config, BRANCH_MAY_DIFFER)
    if differ:
        raise BranchError(
            f"{run / CONFIG}: stage 1 was trained with other {differ}; a branch may "
            f"change only {', '.join(BRANCH_MAY_DIFFER)}"
        )
    if n_stages(config) < 2:
        raise BranchError(f"--branch-from {run}: the new run has one stage; only stage 2 can branch")
    path = run / STAGE1
    if not path.is_file():
        raise BranchError(f"{path}: {run} has not reached its stage switch yet; branch once stage 1 ended")
    ckpt = load_checkpoint(path)
    if "shuffle_rng" not in ckpt:
        raise BranchError(
            f"{path}: holds no random states of the stage switch (written before branching "
            "existed, or slimmed); train the new run from scratch instead"
        )
    if config.switch == "carry" and not ckpt.get(SWITCH_MOMENTS):
        log.warning("%s: holds no optimiser moments (an older run); stage 2 starts from zero moments", path)
    return path, ckpt


def may_reopen(stop: dict, epoch: int, stage_seconds: float, config: TrainConfig) -> bool:
    """Whether a finished run's last stage, ended by a cap, may go on under raised caps."""
    if stop.get("reason") == "max_epochs":
        return epoch < config.epochs
    if stop.get("reason") == "max_minutes":
        return config.max_minutes is None or stage_seconds < 60 * config.max_minutes
    return False
