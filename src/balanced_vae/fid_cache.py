"""Where FID's cached files live: ``<data dir>/fid-stats`` (or the folder asked for), else a user cache.

A folder that cannot be written (a shared, read-only data set) sends new files to
``~/.cache/balanced-vae/fid-stats`` (``$XDG_CACHE_HOME`` if set); both are read. The real-set
statistics (:mod:`balanced_vae.fid_stats`) and the OpenVINO IR (:mod:`balanced_vae.fid_openvino`) live there.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

from .data import resolve_data_dir

log = logging.getLogger("balanced_vae.fid")  # one logger for FID, as before the module was split


def safe_name(name: str) -> str:
    """``name`` as a file-name part: runs of other characters than letters, digits, ``_.-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "data"


def writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (made if missing).

    A folder (or its nearest existing parent) without any write permission bit counts as
    read-only even for root, who could write it anyway: a shared data set marked read-only.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if existing.stat().st_mode & 0o222 == 0:
            return False
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


def _fallback_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "balanced-vae" / "fid-stats"


_FALLBACK_LOGGED: set[Path] = set()


def cache_dirs(folder: Path) -> tuple[Path, ...]:
    """(where to write, and where else to read): the folder itself, or the fallback after it."""
    if writable(folder):
        return (folder,)
    fallback = _fallback_cache_dir()
    if folder not in _FALLBACK_LOGGED:
        _FALLBACK_LOGGED.add(folder)
        log.info("FID cache %s is not writable; new cache files go to %s (and are read from both)", folder, fallback)
    return (fallback, folder)


def fid_cache_dir(cache_dir: str | Path | None = None, data_dir: str | Path | None = None) -> Path:
    """The folder cached FID files are written to: ``cache_dir``, default ``<data dir>/fid-stats``.

    A read-only folder (e.g. a shared, read-only data set) falls back to
    ``~/.cache/balanced-vae/fid-stats`` (``$XDG_CACHE_HOME`` if set), with a log message.
    """
    return cache_dirs(requested_cache_dir(cache_dir, data_dir))[0]


def requested_cache_dir(cache_dir, data_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser().resolve()

    return (resolve_data_dir(data_dir) / "fid-stats").resolve()
