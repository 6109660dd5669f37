"""Provenance of every result record: the package, the git commit and whether the tree was dirty.

Each record a command writes (``final.json``, ``results.json``, the tables of ``reproduce``)
carries :func:`provenance`, so a number can be traced to the code that computed it.
"""
from __future__ import annotations

import datetime as _dt
import os
import subprocess
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .checkpoint import file_digest


def git_commit() -> str:
    """The git commit of the source tree this package is imported from, or ``"unknown"``.

    Where the tree is a copy without ``.git`` (a lent GPU machine), ``$BALANCED_VAE_GIT_COMMIT``
    names the commit it was copied from.
    """
    if os.environ.get("BALANCED_VAE_GIT_COMMIT"):
        return os.environ["BALANCED_VAE_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else "unknown"


def git_dirty() -> bool | None:
    """Whether the source tree has uncommitted changes to tracked files (None when unknown)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def source_commit() -> str:
    """The commit of the source tree, with ``+dirty`` when tracked files were modified."""
    return git_commit() + ("+dirty" if git_dirty() else "")


def provenance(checkpoint: Path | None = None) -> dict[str, Any]:
    """Package version, git commit, torch version, UTC time and (optionally) a checkpoint's SHA-256."""
    out = {"package": "balanced-vae", "version": __version__, "git_commit": git_commit(), "git_dirty": git_dirty(),
           "torch": torch.__version__, "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if checkpoint is not None:
        out["checkpoint"] = checkpoint.name
        out["checkpoint_sha256"] = file_digest(checkpoint)
    return out


def short_commit(record: dict[str, Any] | None) -> str | None:
    """``abc1234567`` (``+dirty`` when the tree was modified) of a record's provenance; None when absent."""
    if not record or not record.get("git_commit"):
        return None
    return record["git_commit"][:10] + ("+dirty" if record.get("git_dirty") else "")
