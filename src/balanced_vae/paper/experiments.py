"""The runs of the paper's experiments (Section 5): reused when finished, resumed when interrupted,
trained when missing.

Runs live in ``OUT/<dataset>-<budget>/runs/<name>`` (:func:`run_dir`); their configs come from the
budget (:mod:`balanced_vae.paper.budgets`, whose names are importable from here as before). Each
table is written as CSV, Markdown and JSON (the JSON carries the protocol), each figure as PNG, by
:mod:`balanced_vae.paper.reproduce`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from ..checkpoint import CHECKPOINT, FINAL, STAGE1, load_checkpoint
from ..config import TrainConfig
from ..data import Dataset, load_dataset
from ..resume import BranchError, run_config
from ..train import train
from .budgets import (
    BUDGETS,
    EXPERIMENTS,
    PAPER,
    TABLE2_METHODS,
    Budget,
    fixed_run_name,
    get_budget,
    resolved_budget,
    run_specs,
)

log = logging.getLogger(__name__)

__all__ = [
    "BUDGETS",
    "EXPERIMENTS",
    "PAPER",
    "TABLE2_METHODS",
    "Budget",
    "ensure_run",
    "fixed_run_name",
    "get_budget",
    "resolved_budget",
    "final_weights",
    "run_dir",
    "run_specs",
]


def run_dir(out: str | Path, dataset: str, budget: Budget, name: str) -> Path:
    return Path(out) / f"{dataset}-{budget.name}" / "runs" / name


def same_training(a: TrainConfig, b: TrainConfig) -> bool:
    """Whether two resolved configs train the same run: equal, but for ``ema_warmup`` where no moving
    average is kept (runs made before the field existed load it as False; the default is now True)."""
    if a.ema is None and b.ema is None:
        a, b = dataclasses.replace(a, ema_warmup=False), dataclasses.replace(b, ema_warmup=False)
    return a == b


def final_weights(path: Path) -> dict[str, dict[str, str]]:
    """The digests of the weights files a finished run ended with, by file name, as its ``final.json``
    names them (``{}``: an older record that does not). A record cached from one of those files (same
    file digest, or the same weights however packed) was computed from the run's final weights, so it stays
    valid once the file is gone (results keep records, not weights)."""
    try:
        weights = json.loads((path / FINAL).read_text()).get("weights")
    except (OSError, ValueError):
        return {}
    return weights if isinstance(weights, dict) else {}


def ensure_run(
    out: str | Path,
    dataset: str,
    budget: Budget,
    name: str,
    *,
    data: Dataset | None = None,
    progress: bool = True,
    device: str | None = "auto",
) -> Path:
    """Reuse, resume or train the run ``name`` on ``device`` (``auto``: CUDA when available); returns its folder."""
    config = run_specs(dataset, budget)[name]
    path = run_dir(out, dataset, budget, name)
    if (path / FINAL).exists():
        data = data if data is not None else load_dataset(dataset, data_dir=config.data_dir)
        if (path / CHECKPOINT).exists():
            shape = tuple(load_checkpoint(path / CHECKPOINT)["shape"])
        elif CHECKPOINT in final_weights(path):  # records only: the evaluations cached from them are reused
            shape = data.shape
        else:
            raise ValueError(
                f"{path} holds the records of a finished run but not its weights (checkpoints are not "
                f"committed with results), and its {FINAL} does not name them; delete {path} to re-train it, "
                f"or copy its {CHECKPOINT} back"
            )
        if same_training(run_config(path), config.resolved(shape, len(data.x_train))):
            return path
        raise ValueError(f"{path} holds a run with another config; delete it or use another --out")
    data = data if data is not None else load_dataset(dataset, data_dir=config.data_dir)
    resume = (path / CHECKPOINT).exists()
    if not resume:  # a run that shares another's stage 1 (learned-floor0) starts at that run's switch
        for other in run_specs(dataset, budget):
            source = run_dir(out, dataset, budget, other)
            if other != name and (source / STAGE1).is_file():
                try:
                    run = train(config, path, data=data, progress=progress, device=device, branch_from=source)
                except BranchError as e:
                    log.info("%s cannot start at %s's stage switch (%s)", name, other, e)
                    continue
                return run
    log.info("training %s (%s)", path, "resume" if resume else "new")
    return train(config, path, data=data, progress=progress, resume=resume, device=device)
