"""One entry point, :func:`load_dataset`: a data set's name to its loader; the embedded digits.

``digits`` is scikit-learn's 1,797 real 8x8 digits, shipped with scikit-learn: the default
that needs no download. The other names are loaded by :mod:`.idx` (``mnist``,
``fashion-mnist``), :mod:`.folders` (``celeba``, ``folder:PATH``) and :mod:`.npz`
(``npz:PATH``, images or a 2-D table) and :mod:`.table` (``csv:PATH``, a table of real
numbers, standardised).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .dataset import DataError, Dataset, quantisation_levels, resize, split_indices
from .folders import load_celeba, load_folder
from .idx import IDX_DATASETS, load_idx_dataset
from .npz import load_npz
from .paths import data_root
from .table import load_csv

__all__ = ["DATASETS", "load_dataset"]

DATASETS = ("digits", "mnist", "fashion-mnist", "celeba")  # plus "folder:PATH", "npz:PATH", "csv:PATH"
_VALID_NAMES = ", ".join(DATASETS) + ", folder:PATH, npz:PATH, csv:PATH[?target=COLUMN]"
_DIGITS_N_TEST = 300


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    seed: int = 0,
    download: bool = True,
) -> Dataset:
    """Load a dataset as float32 tensors in [0, 1], (N, C, H, W); a table (``csv:PATH``, a 2-D
    ``npz:PATH``) as standardised real values (N, D, 1, 1) (:mod:`.table`, ``real_valued``).

    Args:
        name: one of ``DATASETS`` or ``"folder:PATH"`` / ``"npz:PATH"`` / ``"csv:PATH"``
            (``"csv:PATH?target=COLUMN"`` leaves that column out).
        data_dir: root holding ``mnist/``, ``fashion-mnist/``, ``celeba/``;
            see :func:`balanced_vae.data.resolve_data_dir`.
        image_size: output side S. Default: native size (8 for digits, 28 for
            MNIST, the array's size for npz, the images' own size for a folder of
            square images of one size) and 64 for celeba and other folders.
        seed: seeds the train/test split where the source has none
            (digits, folders, celeba without a partition file).
        download: fetch missing MNIST / Fashion-MNIST files from the official
            mirrors (checksums verified).
    """
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size={image_size!r}; fix: pass a positive integer or None")
    kind, sep, arg = name.partition(":")
    key = name.strip().lower()
    if key == "digits":
        return _load_digits(seed, image_size)
    if key in IDX_DATASETS:
        return load_idx_dataset(key, data_root(data_dir), download, image_size)
    if key == "celeba":
        return load_celeba(data_root(data_dir), image_size or 64, seed)
    if sep and kind == "folder" and arg:
        return load_folder(arg, image_size, seed)
    if sep and kind == "npz" and arg:
        return load_npz(arg, image_size, seed)
    if sep and kind == "csv" and arg:
        return load_csv(arg, seed)
    raise DataError(f"unknown dataset {name!r}; valid names: {_VALID_NAMES}")


def _load_digits(seed: int, image_size: int | None) -> Dataset:
    """scikit-learn's 1,797 8x8 digits, values 0..16 scaled to [0, 1]; 1,497 / 300 split."""
    from sklearn.datasets import load_digits  # slow import, only when used

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (1797, 1, 8, 8)
    y = torch.from_numpy(bunch.target.astype(np.int64))  # (1797,)
    train, test = split_indices(len(x), _DIGITS_N_TEST, seed)
    levels = quantisation_levels(17, x, image_size)
    x = resize(x, image_size)
    return Dataset("digits", x[train].contiguous(), x[test].contiguous(), y[train], y[test], levels=levels)
