"""Checkpoints: state dicts plus JSON, written atomically, loaded with ``weights_only=True``.

A run folder holds ``config.json`` (the :class:`TrainConfig`), ``checkpoint.pt`` (the
latest epoch: model, optimiser, stage, epoch, RNG states), ``stage1.pt`` (the model at
the end of stage 1, for two-stage runs) and ``metrics.jsonl``. Nothing is pickled code;
nothing is ever left half-written (temp file in the same folder, then ``os.replace``).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
STAGE1 = "stage1.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
FINAL = "final.json"          # the test-split numbers of a finished run
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A missing, damaged or incompatible checkpoint; the message names the file and the fix."""


_UMASK = os.umask(0)
os.umask(_UMASK)


class DiskFullError(OSError):
    """No space left where a file was being written; the previous version of the file is intact."""


def _out_of_space(e: BaseException, folder: Path) -> bool:
    """Whether ``e`` (OSError, or torch's RuntimeError from its zip writer) means a full disk."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(e, RuntimeError):
        try:
            return shutil.disk_usage(folder).free < (1 << 20)
        except OSError:
            return False
    return False


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so ``path`` is whole or absent.

    A full disk raises :class:`DiskFullError` naming the folder; ``path`` keeps its old content.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        if _out_of_space(e, path.parent):
            raise DiskFullError(errno.ENOSPC, f"no space left on {path.parent} to write {path.name}; free some "
                                              "space and run the same command again") from None
        raise
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)   # mkstemp makes 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if _out_of_space(e, path.parent):
            raise DiskFullError(errno.ENOSPC, f"no space left on {path.parent} while writing {path.name}; "
                                              f"{path.name} still holds its previous version: free some space "
                                              "and resume (`balanced-vae train --resume RUN`)") from None
        raise


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_text_atomic(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (no NaN or Infinity, which other JSON readers reject), atomically."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    except ValueError:
        raise ValueError(f"{path}: refusing to write a non-finite number (NaN or inf) into JSON; "
                         "the computation that produced it failed") from None
    write_text_atomic(path, text + "\n")


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


def __getattr__(name: str):
    """``load_run`` and ``LoadedRun`` moved to :mod:`balanced_vae.runs`; the old names still work."""
    if name in ("load_run", "LoadedRun"):
        import warnings

        from . import runs

        warnings.warn(f"balanced_vae.checkpoint.{name} moved to balanced_vae.runs "
                      f"({'load_run' if name == 'load_run' else 'Run'})", DeprecationWarning, stacklevel=2)
        return runs.load_run if name == "load_run" else runs.Run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
