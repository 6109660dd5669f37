"""Provenance of every result record: the package, the git commit and whether the tree was dirty.

Each record a command writes (``final.json``, ``results.json``, the tables of ``reproduce``)
carries :func:`provenance`, so a number can be traced to the code that computed it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import torch

from .version import __version__

MAX_DIRTY_FILES = 20  # modified paths listed in a record's provenance


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def git_commit() -> str:
    """The git commit of the source tree this package is imported from, or ``"unknown"``.

    Where the tree is a copy without ``.git`` (a lent GPU machine), ``$BALANCED_VAE_GIT_COMMIT``
    names the commit it was copied from.
    """
    if os.environ.get("BALANCED_VAE_GIT_COMMIT"):
        return os.environ["BALANCED_VAE_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else "unknown"


def git_dirty_files(root: Path | None = None) -> list[str] | None:
    """Tracked files of the source tree (or of the git tree at ``root``) with uncommitted changes,
    as ``git status --porcelain`` names them (``" M path"``); None when unknown."""
    here = root or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return [line for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else None


def git_dirty(root: Path | None = None) -> bool | None:
    """Whether the source tree has uncommitted changes to tracked files (None when unknown)."""
    files = git_dirty_files(root)
    return None if files is None else bool(files)


def source_commit() -> str:
    """The commit of the source tree, with ``+dirty`` when tracked files were modified."""
    return git_commit() + ("+dirty" if git_dirty() else "")


def provenance(checkpoint: Path | None = None) -> dict[str, Any]:
    """Package version, git commit, torch version, UTC time and (optionally) a checkpoint's SHA-256."""
    dirty = git_dirty_files()
    out = {
        "package": "balanced-vae",
        "version": __version__,
        "git_commit": git_commit(),
        "git_dirty": None if dirty is None else bool(dirty),
        "torch": torch.__version__,
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if dirty:  # what differed from the commit, so that a "+dirty" record can be judged
        out["git_dirty_files"] = dirty[:MAX_DIRTY_FILES] + (
            [f"... {len(dirty) - MAX_DIRTY_FILES} more"] if len(dirty) > MAX_DIRTY_FILES else []
        )
    if checkpoint is not None:
        out["checkpoint"] = checkpoint.name
        out["checkpoint_sha256"] = file_digest(checkpoint)
    return out


def short_commit(record: dict[str, Any] | None) -> str | None:
    """``abc1234567`` (``+dirty`` when the tree was modified) of a record's provenance; None when absent."""
    if not record or not record.get("git_commit"):
        return None
    return record["git_commit"][:10] + ("+dirty" if record.get("git_dirty") else "")
