"""Checkpoints: state dicts plus JSON, written atomically, loaded with ``weights_only=True``.

A run folder holds ``config.json`` (the :class:`TrainConfig`), ``checkpoint.pt`` (the
latest epoch: model, optimiser, stage, epoch, RNG states), ``stage1.pt`` (the model at
the end of stage 1, for two-stage runs) and ``metrics.jsonl``. Nothing is pickled code;
nothing is ever left half-written (temp file in the same folder, then ``os.replace``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# The atomic writers live in .atomic; imported from here by most of the library.
from .atomic import DiskFullError, atomic_write, write_json_atomic, write_text_atomic  # noqa: F401
from .config import TrainConfig

CHECKPOINT = "checkpoint.pt"
STAGE1 = "stage1.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A missing, damaged or incompatible checkpoint; the message names the file and the fix."""


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Save a dict of tensors, state dicts and plain values atomically."""
    atomic_write(path, lambda tmp: torch.save({"format_version": FORMAT_VERSION, **payload}, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; train first with `balanced-vae train --out {path.parent}`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged files
        raise CheckpointError(
            f"{path}: cannot be read as a balanced-vae checkpoint ({type(e).__name__}: {e}); "
            "the file is damaged or was not written by this library: delete it and retrain or resume "
            "from an intact copy") from None
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a balanced-vae checkpoint of format {FORMAT_VERSION}")
    return ckpt


@dataclass
class LoadedRun:
    """A trained run read back from its folder: ``config``, ``model`` (eval mode), ``stage``."""

    path: Path
    config: TrainConfig
    model: torch.nn.Module
    stage: int
    checkpoint: dict[str, Any]


def load_run(run_dir: str | Path, *, which: str = CHECKPOINT) -> LoadedRun:
    """Rebuild the model of a run folder from ``config.json`` and a checkpoint file in it."""
    from .methods import build_model

    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder")
    config = TrainConfig.load(run_dir / CONFIG)
    ckpt = load_checkpoint(run_dir / which)
    model = build_model(config, tuple(ckpt["shape"]))
    if ckpt["stage"] == 2:
        model.with_pixel_variance(float(ckpt["sigma2_star"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{run_dir / which}: weights do not fit the model of {run_dir / CONFIG} ({e}); "
            "the config was edited after training or the checkpoint belongs to another run") from None
    model.eval()
    return LoadedRun(run_dir, config, model, int(ckpt["stage"]), ckpt)
