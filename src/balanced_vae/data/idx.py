"""MNIST and Fashion-MNIST from their standard IDX files, checksummed, downloaded if missing.

The paper (Lin et al. 2019, Section 4) trains on MNIST and Fashion-MNIST, 28x28 grey. The four
standard files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``; gzip or raw) are read from
``<data_dir>/mnist/`` and ``<data_dir>/fashion-mnist/`` and verified against the SHA-256 of
their uncompressed content; missing ones are fetched from the official mirrors when a
network exists, verified before they are renamed into place.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import struct
import zlib
from http.client import HTTPException
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import torch

from ..atomic import atomic_write
from .dataset import DataError, Dataset, quantisation_levels, resize
from .paths import DATA_ENV

logger = logging.getLogger(__name__)

__all__ = ["IDX_DATASETS", "load_idx_dataset", "read_idx"]

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
# split -> (images file, labels file, count)
_IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
_IDX_FILES = tuple(f for split in _IDX_SPLITS.values() for f in split[:2])
_MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
IDX_DATASETS = tuple(_MIRRORS)  # ("mnist", "fashion-mnist")
_DOWNLOAD_TIMEOUT_S = 10.0
# SHA-256 of the uncompressed IDX bytes (gzip bytes differ between compressors).
_SHA256 = {
    "mnist/train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "mnist/train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "mnist/t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "mnist/t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "fashion-mnist/train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "fashion-mnist/train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "fashion-mnist/t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "fashion-mnist/t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip or raw) into an array of its declared shape.

    Images (magic 2051) give (N, 28, 28) uint8 for MNIST, labels (magic 2049) give
    (N,); any IDX type code and rank is decoded generically, in native byte order.
    Raises DataError for a missing, corrupt, truncated or non-IDX file.
    """
    path = Path(path).expanduser()
    return _parse_idx(_read_bytes(path), path)


def _read_bytes(path: Path) -> bytes:
    """Uncompressed content of ``path``; gzip is detected by suffix or magic bytes."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}; fix: check the path and permissions") from e
    if path.suffix != ".gz" and raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path} is not a valid gzip file ({e}); fix: delete it and re-download, or "
            "place the official file there (gzip or uncompressed)"
        ) from e


def _parse_idx(buf: bytes, path: Path, expect_magic: int | None = None) -> np.ndarray:
    """Decode IDX bytes: 4-byte magic (0, 0, type, rank), rank big-endian uint32 dims, data."""
    fix = "fix: delete it and re-download, or place the official file there"
    if len(buf) < 4 or buf[0] or buf[1] or buf[2] not in _IDX_DTYPES or buf[3] == 0:
        magic = int.from_bytes(buf[:4].ljust(4, b"\0"), "big")
        raise DataError(
            f"{path}: bad IDX magic number {magic} (expected {_IMAGES_MAGIC} for images or "
            f"{_LABELS_MAGIC} for labels); {fix}"
        )
    magic, ndim = int.from_bytes(buf[:4], "big"), buf[3]
    if expect_magic is not None and magic != expect_magic:
        raise DataError(f"{path}: IDX magic number {magic}, expected {expect_magic}; {fix}")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path}: truncated IDX header ({len(buf)} bytes); {fix}")
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    dtype = np.dtype(_IDX_DTYPES[buf[2]])
    count = int(np.prod(dims, dtype=np.int64))
    expected = header + count * dtype.itemsize
    if len(buf) != expected:
        what = "truncated" if len(buf) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {what}: header declares shape {dims} ({expected} bytes) "
            f"but the content has {len(buf)} bytes; {fix}"
        )
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))  # writable copy in native order


def load_idx_dataset(name: str, root: Path, download: bool, image_size: int | None) -> Dataset:
    """MNIST / Fashion-MNIST from ``root/name/``: (60000, 1, 28, 28) and (10000, 1, 28, 28).

    ``name`` is one of :data:`IDX_DATASETS`; missing files are downloaded when ``download``;
    ``image_size`` S resizes to (1, S, S).
    """
    folder = root / name
    paths = _find_idx_files(name, folder)
    missing = [f for f in _IDX_FILES if f not in paths]
    if missing and download:
        _download_idx(name, folder, missing)
        paths = _find_idx_files(name, folder)
    elif missing:
        raise DataError(_missing_idx_message(name, folder, missing, "download=False"))
    x_train, y_train = _read_idx_split(name, paths, "train")
    x_test, y_test = _read_idx_split(name, paths, "test")
    logger.info("loaded %s from %s", name, folder)
    return Dataset(
        name,
        resize(x_train, image_size),
        resize(x_test, image_size),
        y_train,
        y_test,
        levels=quantisation_levels(256, x_train, image_size),
    )


def _find_idx_files(name: str, folder: Path) -> dict[str, Path]:
    """Standard file name -> existing path, raw preferred over ``.gz``."""
    found = {}
    for base in _IDX_FILES:
        for candidate in (folder / base, folder / f"{base}.gz"):
            if candidate.is_file():
                found[base] = candidate
                break
    return found


def _read_idx_split(name: str, paths: dict[str, Path], split: str):
    """(x, y): x (n, 1, 28, 28) float32 in [0, 1], y (n,) int64."""
    images_file, labels_file, n = _IDX_SPLITS[split]
    images = _read_verified(name, images_file, paths[images_file], _IMAGES_MAGIC)
    labels = _read_verified(name, labels_file, paths[labels_file], _LABELS_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != n or len(labels) != n:
        raise DataError(
            f"{name} {split}: images {images.shape} ({paths[images_file]}) and labels "
            f"{labels.shape} ({paths[labels_file]}), expected ({n}, 28, 28) and ({n},); "
            f"fix: place the official files in {paths[images_file].parent}"
        )
    x = torch.from_numpy(images).unsqueeze(1).float().div_(255.0)  # (n, 1, 28, 28)
    y = torch.from_numpy(labels.astype(np.int64))  # (n,)
    return x, y


def _read_verified(name: str, base: str, path: Path, magic: int) -> np.ndarray:
    """Parse one IDX file and check the SHA-256 of its uncompressed bytes."""
    buf = _read_bytes(path)
    arr = _parse_idx(buf, path, expect_magic=magic)
    want, got = _SHA256[f"{name}/{base}"], hashlib.sha256(buf).hexdigest()
    if got != want:
        raise DataError(
            f"{path}: SHA-256 of the uncompressed content is {got}, expected {want} for the "
            f"official {name} {base}; the file is corrupt or not the official one. Fix: delete "
            f"it and re-download (download=True), or place the official file at "
            f"{path.parent / base}(.gz)"
        )
    return arr


def _download_idx(name: str, folder: Path, missing: list[str]) -> None:
    """Fetch ``missing`` files as ``.gz`` into ``folder``; DataError at the first failure."""
    for i, base in enumerate(missing):
        url = f"{_MIRRORS[name]}{base}.gz"
        logger.info("downloading %s to %s", url, folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _fetch_verified(url, folder / f"{base}.gz", _SHA256[f"{name}/{base}"])
        except (OSError, HTTPException) as e:
            reason = f"download of {url} failed: {e}"
            raise DataError(_missing_idx_message(name, folder, missing[i:], reason)) from e


def _fetch_verified(url: str, dest: Path, sha256: str) -> None:
    """Download to a temp file beside ``dest``, check the checksum, then rename."""

    def fetch(tmp: str) -> None:
        with open(tmp, "wb") as f, urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            shutil.copyfileobj(response, f)
        try:
            got = hashlib.sha256(_read_bytes(Path(tmp))).hexdigest()
        except DataError as e:
            raise DataError(f"downloaded {url} is corrupt ({e}); fix: retry later") from e
        if got != sha256:
            raise DataError(
                f"downloaded {url} has SHA-256 {got} (uncompressed), expected {sha256}; "
                f"fix: retry later, or place the official file at {dest}"
            )

    atomic_write(dest, fetch)  # a failed download or checksum leaves no file


def _missing_idx_message(name: str, folder: Path, missing: list[str], reason: str) -> str:
    return (
        f"{name}: missing {', '.join(missing)} in {folder} ({reason}). Fix: place the "
        f"official IDX files {', '.join(_IDX_FILES)} (each gzip '.gz' or raw) in {folder} "
        f"(mirror: {_MIRRORS[name]}), or point --data-dir / the {DATA_ENV} environment "
        f"variable at a directory that contains {name}/ with them"
    )
