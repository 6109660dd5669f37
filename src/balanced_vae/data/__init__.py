"""Datasets as in-memory float tensors in [0, 1], layout (N, C, H, W).

The paper (Lin, Roberts, Trigoni, Clark 2019, Section 4) evaluates on MNIST,
Fashion-MNIST (28x28 grey) and CelebA (64x64 RGB centre crops). The Gaussian
likelihood of Eq. 6-8 is defined on x in [0, 1], so every loader returns float32
tensors in that range and :class:`Dataset` checks it.

Sources, all through :func:`load_dataset`:

- ``digits``: scikit-learn's 1,797 real 8x8 digits, shipped with scikit-learn;
  the embedded default that needs no download.
- ``mnist``, ``fashion-mnist``: the standard IDX files (gzip or raw) in
  ``<data_dir>/mnist/`` and ``<data_dir>/fashion-mnist/``, verified against the
  SHA-256 of their uncompressed content; downloaded from the official mirrors
  when missing and a network exists.
- ``celeba``: ``<data_dir>/celeba/img_align_celeba/*.jpg`` with the official
  ``list_eval_partition.txt`` split; decoded once and cached as
  ``celeba_{S}.npz`` beside the images.
- ``folder:PATH``: the user's own images; ``npz:PATH``: the user's own arrays.

The data directory is the explicit argument, else the ``BALANCED_VAE_DATA``
environment variable, else ``$XDG_CACHE_HOME/balanced-vae`` (``~/.cache``).

Modules: :mod:`.dataset` (:class:`Dataset`, :func:`validate_images` and the conversions
the loaders share), :mod:`.paths` (the data root), :mod:`.load` (:func:`load_dataset` and
digits), :mod:`.idx` (MNIST, Fashion-MNIST), :mod:`.folders` (image folders, CelebA),
:mod:`.npz` (arrays). This package re-exports the public names.
"""

from __future__ import annotations

from .dataset import DataError, Dataset, validate_images
from .idx import read_idx
from .load import DATASETS, load_dataset
from .paths import DATA_ENV, resolve_data_dir  # noqa: F401  (DATA_ENV: importable, as before)

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "load_dataset",
    "read_idx",
    "resolve_data_dir",
    "validate_images",
]
