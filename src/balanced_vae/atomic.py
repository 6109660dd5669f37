"""Atomic file writes: a file is either whole (its new or its previous version) or absent.

The one helper every module that writes files uses (house style 7): the content goes to a
temp file in the destination folder, which is then renamed onto the destination with
``os.replace``. Below everything else in the library; it imports nothing from it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["DiskFullError", "atomic_write", "write_json_atomic", "write_text_atomic"]

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

    ``write`` may raise to abandon the write (a failed checksum, say): the temp file is
    removed and ``path`` keeps its old content. A full disk raises :class:`DiskFullError`
    naming the folder.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        if _out_of_space(e, path.parent):
            raise DiskFullError(
                errno.ENOSPC,
                f"no space left on {path.parent} to write {path.name}; free some space and run the same command again",
            ) from None
        raise
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if _out_of_space(e, path.parent):
            raise DiskFullError(
                errno.ENOSPC,
                f"no space left on {path.parent} while writing {path.name}; "
                f"{path.name} still holds its previous version: free some space "
                "and resume (`balanced-vae train --resume RUN`)",
            ) from None
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (no NaN or Infinity, which other JSON readers reject), atomically."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    except ValueError:
        raise ValueError(
            f"{path}: refusing to write a non-finite number (NaN or inf) into JSON; "
            "the computation that produced it failed"
        ) from None
    write_text_atomic(path, text + "\n")
