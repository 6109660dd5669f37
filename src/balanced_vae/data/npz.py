"""The user's own arrays: ``npz:PATH``, an ``np.savez`` archive of ``x_train``, ``x_test``
(uint8 0..255 or float in [0, 1]; (N, H, W), (N, C, H, W) or (N, H, W, C)) and optional
``y_train``, ``y_test`` integer labels. Arrays of shape (N, D) are a table of real values
(any range), standardised by :mod:`.table`.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from .dataset import DataError, Dataset, resize, validate_images
from .paths import user_path
from .table import check_table, table_dataset

__all__ = ["load_npz"]


def load_npz(arg: str, image_size: int | None, seed: int = 0) -> Dataset:
    """User arrays ``x_train``, ``x_test`` (+ optional ``y_train``, ``y_test``); 2-D arrays are a table."""
    path = user_path(arg, "npz file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {path} as .npz ({e}); fix: save with np.savez") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path} holds a single array, not an .npz archive; fix: np.savez(path, x_train=..., x_test=...)"
        )
    with archive:
        missing = [k for k in ("x_train", "x_test") if k not in archive.files]
        if missing:
            raise DataError(
                f"{path}: missing arrays {missing} (has {sorted(archive.files)}); "
                "fix: np.savez(path, x_train=..., x_test=..., [y_train=..., y_test=...])"
            )
        if _npz_array(archive, "x_train", path).ndim == 2:  # (N, D): a table of real values
            if image_size is not None:
                raise DataError(f"{path}: x_train is a table (N, D); --image-size applies to images; fix: drop it")
            x_train, x_test = (_npz_array(archive, k, path) for k in ("x_train", "x_test"))
            columns = [f"x{j}" for j in range(x_train.shape[1])]
            check_table(x_train, columns, f"{path} [x_train]")
            check_table(x_test, columns, f"{path} [x_test]", training=False)
            return table_dataset(f"npz:{path}", x_train, x_test, seed=seed)[0]
        x = {k: _npz_images(archive, k, path, image_size) for k in ("x_train", "x_test")}
        y = {
            k: _npz_labels(archive, k, path, len(x[f"x{k[1:]}"])) if k in archive.files else None
            for k in ("y_train", "y_test")
        }
    levels = 256 if image_size is None and all(_is_8bit(t) for t in x.values()) else None
    return Dataset(f"npz:{path}", x["x_train"], x["x_test"], y["y_train"], y["y_test"], levels=levels)


def _npz_images(archive, key: str, path: Path, image_size: int | None) -> torch.Tensor:
    """(N, C, H, W) float32 in [0, 1] from uint8 0..255 or float [0, 1] arrays."""
    source = f"{path} [{key}]"
    arr = _npz_array(archive, key, path)
    if arr.ndim not in (3, 4) or arr.shape[0] == 0:
        raise DataError(
            f"{source}: shape {arr.shape} is not a non-empty image batch; fix: save (N, H, W), "
            "(N, C, H, W) or (N, H, W, C) with C in {1, 3} and N >= 1"
        )
    if arr.dtype == np.uint8:
        x = torch.from_numpy(arr.astype(np.float32) / 255.0)
    elif np.issubdtype(arr.dtype, np.floating):
        x = torch.from_numpy(arr.astype(np.float32))
    else:
        raise DataError(f"{source}: dtype {arr.dtype}; fix: save uint8 0..255 or float values in [0, 1]")
    if x.ndim == 3:
        x = x.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(
            f"{source}: shape {arr.shape} is not an image batch; fix: save (N, H, W), "
            "(N, C, H, W) or (N, H, W, C) with C in {1, 3}"
        )
    validate_images(x, source)
    return resize(x.contiguous(), image_size)


def _npz_labels(archive, key: str, path: Path, n: int) -> torch.Tensor:
    """(n,) int64 labels."""
    arr = _npz_array(archive, key, path)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(
            f"{path} [{key}]: shape {arr.shape} dtype {arr.dtype}, expected ({n},) integers; "
            f"fix: one integer label per image, or leave {key} out"
        )
    return torch.from_numpy(arr.astype(np.int64))


def _npz_array(archive, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise DataError(f"{path} [{key}]: cannot read ({type(e).__name__}: {e}); fix: save a numeric array") from e


def _is_8bit(x: torch.Tensor) -> bool:
    """Whether every value of x (in [0, 1]) is k / 255 for an integer k."""
    y = x * 255.0
    return bool(torch.all((y - y.round()).abs() < 1e-4))
