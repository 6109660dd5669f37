"""Checkpoints: state dicts plus JSON, written atomically, loaded with ``weights_only=True``.

A run folder holds ``config.json`` (the :class:`TrainConfig`), ``checkpoint.pt`` (the
latest epoch: model, optimiser, stage, epoch, RNG states), ``stage1.pt`` (the model at
the end of stage 1, for two-stage runs) and ``metrics.jsonl``. Nothing is pickled code;
nothing is ever left half-written (temp file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

# the atomic writers live in .atomic, file digests in .provenance; these names stay importable from here
from .atomic import DiskFullError, atomic_write, write_json_atomic, write_text_atomic  # noqa: F401
from .provenance import file_digest  # noqa: F401

CHECKPOINT = "checkpoint.pt"
STAGE1 = "stage1.pt"
EMA = "ema.pt"  # the moving average of the weights (``TrainConfig.ema``), a weights-only checkpoint
BEST = "best.pt"  # the weights of the stage's best validation epoch (``TrainConfig.keep_best``), weights only
CONFIG = "config.json"
METRICS = "metrics.jsonl"
FINAL = "final.json"  # the test-split numbers of a finished run
RESUMES = "resumes.jsonl"  # what each resume changed (raised caps, the data's new place), with its time
FORMAT_VERSION = 1
# what only resuming needs; a finished run can drop it to be committed or shared (``slim_checkpoint``)
SWITCH_MOMENTS = "switch_moments"  # stage1.pt: the optimiser state by parameter name, carried into stage 2
RESUME_KEYS = ("optimiser", "shuffle_rng", "torch_rng", "torch_rng_ranks", "cuda_rng", "ema", SWITCH_MOMENTS)


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's tensors, keys sorted: the same weights however the file holding them is packed."""
    h = hashlib.sha256()
    for key, t in sorted(state.items()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_digests(folder: str | Path) -> dict[str, dict[str, str]]:
    """For each weights file of a run folder (``checkpoint.pt``, ``stage1.pt``, ``ema.pt``, ``best.pt``): its
    file's SHA-256 and its weights' (:func:`state_sha256`), which a finished run's ``final.json`` keeps so that
    evaluations cached from them are known to be theirs once the files are gone (results keep records only)."""
    out = {}
    for name in (CHECKPOINT, STAGE1, EMA, BEST):
        path = Path(folder) / name
        if path.is_file():
            out[name] = {"sha256": file_digest(path), "model_sha256": state_sha256(load_checkpoint(path)["model"])}
    return out


class CheckpointError(RuntimeError):
    """A missing, damaged or incompatible checkpoint; the message names the file and the fix."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Save a dict of tensors, state dicts and plain values atomically."""
    atomic_write(path, lambda tmp: torch.save({"format_version": FORMAT_VERSION, **payload}, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: checkpoint not found; train first with `balanced-vae train --out {path.parent}`"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged files
        raise CheckpointError(
            f"{path}: cannot be read as a balanced-vae checkpoint ({type(e).__name__}: {e}); "
            "the file is damaged or was not written by this library: delete it and retrain or resume "
            "from an intact copy"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a balanced-vae checkpoint of format {FORMAT_VERSION}")
    return ckpt


def load_weights(model, state: dict[str, Any], path: str | Path, config_path: str | Path) -> None:
    """``model.load_state_dict(state)``, or a :class:`CheckpointError` naming both files when the weights
    in ``path`` do not fit the model that ``config_path`` describes (a config edited by hand, say).
    Every command that loads a run's weights goes through here, so all give the same error."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__  # the first mismatch
        raise CheckpointError(
            f"{path}: weights do not fit the model of {config_path} ({detail}); the config "
            "was edited after training or the checkpoint belongs to another run: undo the edit of "
            f"{Path(config_path).name}, or train a new run with the new values"
        ) from None


def slim_checkpoint(path: str | Path, out: str | Path | None = None) -> tuple[int, int]:
    """Write ``path`` without its :data:`RESUME_KEYS` (Adam's moments, twice the model's size, and
    the RNG states) to ``out`` (default: in place), atomically; returns the bytes (before, after).

    The model, stage, epoch, history, stops and commits stay, so the run can still be evaluated,
    sampled and reported, and ``reproduce`` still counts it finished; only ``train --resume``
    can no longer continue it. Only a finished run's ``checkpoint.pt`` may be slimmed.
    """
    path = Path(path)
    ckpt = load_checkpoint(path)
    if "optimiser" in ckpt and not ckpt.get("done", False):  # stage1.pt holds no optimiser
        raise CheckpointError(
            f"{path}: the run has not finished (stage {ckpt.get('stage')}, epoch "
            f"{ckpt.get('epoch')}); slimming would drop what resuming needs: "
            f"finish it with `balanced-vae train --resume {path.parent}` first"
        )
    before = path.stat().st_size
    out = Path(out) if out is not None else path
    save_checkpoint(out, {k: v for k, v in ckpt.items() if k not in RESUME_KEYS and k != "format_version"})
    return before, out.stat().st_size
