"""Where data lives: the data root (argument > environment > user cache) and user paths.

The data directory is the explicit argument (``--data-dir``), else the ``BALANCED_VAE_DATA``
environment variable, else ``$XDG_CACHE_HOME/balanced-vae`` (``~/.cache``).
"""

from __future__ import annotations

import os
from pathlib import Path

from .dataset import DataError

__all__ = ["DATA_ENV", "data_root", "resolve_data_dir", "user_path"]

DATA_ENV = "BALANCED_VAE_DATA"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Data root: ``data_dir`` > env ``BALANCED_VAE_DATA`` > ``$XDG_CACHE_HOME/balanced-vae``.

    The path is expanded (``~``) and made absolute; it need not exist yet.
    Raises DataError if it exists but is not a directory.
    """
    if data_dir is not None and str(data_dir) != "":
        path = Path(data_dir)
    elif os.environ.get(DATA_ENV):
        path = Path(os.environ[DATA_ENV])
    else:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        cache = Path(xdg) if xdg and Path(xdg).is_absolute() else Path("~/.cache")
        path = cache / "balanced-vae"
    path = path.expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise DataError(f"data directory {path} is a file; fix: point --data-dir / {DATA_ENV} at a directory")
    return path


def data_root(data_dir: str | os.PathLike | None) -> Path:
    """Resolved data root; a root the user named (argument or env) must exist."""
    root = resolve_data_dir(data_dir)
    user_given = (data_dir is not None and str(data_dir) != "") or bool(os.environ.get(DATA_ENV))
    if user_given and not root.is_dir():
        raise DataError(
            f"data directory {root} (from --data-dir / {DATA_ENV}) does not exist; fix: create it or correct the path"
        )
    return root


def user_path(arg: str, what: str) -> Path:
    """Expanded, absolute path that must exist; ``what`` names it in the error."""
    path = Path(arg).expanduser().resolve()
    if not path.exists():
        raise DataError(f"{what} {path} does not exist; fix: check the path")
    return path
