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
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import struct
import tempfile
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from http.client import HTTPException
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from tqdm import tqdm

logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "load_dataset",
    "read_idx",
    "resolve_data_dir",
    "validate_images",
]

DATASETS = ("digits", "mnist", "fashion-mnist", "celeba")  # plus "folder:PATH", "npz:PATH"
DATA_ENV = "BALANCED_VAE_DATA"
_VALID_NAMES = ", ".join(DATASETS) + ", folder:PATH, npz:PATH"


class DataError(ValueError):
    """Bad or missing data: message names the file/value and the fix."""


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A train/test pair of image batches, checked on construction.

    Attributes:
        name: the name it was loaded under, e.g. ``"mnist"`` or ``"npz:/abs/x.npz"``.
        x_train: (N, C, H, W) float32 in [0, 1], contiguous.
        x_test: (M, C, H, W) float32 in [0, 1], contiguous.
        y_train: (N,) int64 labels, or None when unknown.
        y_test: (M,) int64 labels, or None when unknown.
        levels: the number of intensity levels the images were quantised to (256 for 8-bit
            images, 17 for digits), or None when they are not quantised (resized with
            interpolation, float arrays); bits per dimension need it.
    """

    name: str
    x_train: torch.Tensor
    x_test: torch.Tensor
    y_train: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    levels: int | None = None

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            source = f"dataset {self.name!r} x_{split}"
            validate_images(x, source)
            if x.dtype != torch.float32 or not x.is_contiguous():
                raise DataError(
                    f"{source}: dtype {x.dtype}, contiguous={x.is_contiguous()}; "
                    "fix: pass x.float().contiguous()"
                )
            if y is not None and (y.dtype != torch.int64 or tuple(y.shape) != (len(x),)):
                raise DataError(
                    f"dataset {self.name!r} y_{split}: shape {tuple(y.shape)} dtype {y.dtype}, "
                    f"expected ({len(x)},) int64; fix: one integer label per image, or None"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"dataset {self.name!r}: train images are {tuple(self.x_train.shape[1:])} "
                f"but test images are {tuple(self.x_test.shape[1:])}; fix: give both splits "
                "the same (C, H, W)"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x_train.shape[1:]
        return (c, h, w)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n_train={len(self.x_train)}, "
            f"n_test={len(self.x_test)}, shape={self.shape}, "
            f"labels={self.y_train is not None})"
        )


# --------------------------------------------------------------------------- API


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
        raise DataError(
            f"data directory {path} is a file; fix: point --data-dir / {DATA_ENV} at a directory"
        )
    return path


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    seed: int = 0,
    download: bool = True,
) -> Dataset:
    """Load a dataset as float32 tensors in [0, 1], (N, C, H, W).

    Args:
        name: one of ``DATASETS`` or ``"folder:PATH"`` / ``"npz:PATH"``.
        data_dir: root holding ``mnist/``, ``fashion-mnist/``, ``celeba/``;
            see :func:`resolve_data_dir`.
        image_size: output side S. Default: native size (8 for digits, 28 for
            MNIST, the array's size for npz) and 64 for celeba and folders.
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
    if key in ("mnist", "fashion-mnist"):
        return _load_idx_dataset(key, _data_root(data_dir), download, image_size)
    if key == "celeba":
        return _load_celeba(_data_root(data_dir), image_size or 64, seed)
    if sep and kind == "folder" and arg:
        return _load_folder(arg, image_size or 64, seed)
    if sep and kind == "npz" and arg:
        return _load_npz(arg, image_size)
    raise DataError(f"unknown dataset {name!r}; valid names: {_VALID_NAMES}")


def validate_images(x: torch.Tensor, source: str) -> torch.Tensor:
    """Check that ``x`` is a non-empty (N, C, H, W) float batch, finite, in [0, 1].

    Returns ``x`` unchanged. Raises DataError naming ``source``, the bad shape or
    value and the fix.
    """
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{source}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise DataError(
            f"{source}: expected a 4-D image batch (N, C, H, W), got shape {tuple(x.shape)}; "
            "fix: add the channel axis (x[:, None]) or move channels first (x.permute(0, 3, 1, 2))"
        )
    if x.numel() == 0:
        raise DataError(f"{source}: empty batch of shape {tuple(x.shape)}; fix: provide images")
    if not x.is_floating_point():
        raise DataError(
            f"{source}: dtype {x.dtype}, images must be float in [0, 1]; "
            "fix: x.float() / 255 for 0..255 images"
        )
    lo, hi = (v.item() for v in torch.aminmax(x))  # NaN propagates into both
    if lo != lo or hi != hi:
        n_nan = int(torch.isnan(x).sum())
        raise DataError(f"{source}: {n_nan} NaN values; fix: remove or replace them")
    if lo < 0.0 or hi > 1.0:
        raise DataError(
            f"{source}: values span [{lo:.4g}, {hi:.4g}], outside [0, 1]; fix: rescale to "
            "[0, 1] (divide 0..255 data by 255) and remove infinities"
        )
    return x


# --------------------------------------------------------------------------- IDX

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
_DOWNLOAD_TIMEOUT_S = 10.0
# SHA-256 of the uncompressed IDX bytes (gzip bytes differ between compressors).
_SHA256 = {
    "mnist/train-images-idx3-ubyte":
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "mnist/train-labels-idx1-ubyte":
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "mnist/t10k-images-idx3-ubyte":
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "mnist/t10k-labels-idx1-ubyte":
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "fashion-mnist/train-images-idx3-ubyte":
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "fashion-mnist/train-labels-idx1-ubyte":
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "fashion-mnist/t10k-images-idx3-ubyte":
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "fashion-mnist/t10k-labels-idx1-ubyte":
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
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


def _load_idx_dataset(name: str, root: Path, download: bool, image_size: int | None) -> Dataset:
    """MNIST / Fashion-MNIST from ``root/name/``: (60000, 1, 28, 28) and (10000, 1, 28, 28)."""
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
        name, _resize(x_train, image_size), _resize(x_test, image_size), y_train, y_test,
        levels=_levels(256, x_train, image_size),
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
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
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
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _missing_idx_message(name: str, folder: Path, missing: list[str], reason: str) -> str:
    return (
        f"{name}: missing {', '.join(missing)} in {folder} ({reason}). Fix: place the "
        f"official IDX files {', '.join(_IDX_FILES)} (each gzip '.gz' or raw) in {folder} "
        f"(mirror: {_MIRRORS[name]}), or point --data-dir / the {DATA_ENV} environment "
        f"variable at a directory that contains {name}/ with them"
    )


def _data_root(data_dir: str | os.PathLike | None) -> Path:
    """Resolved data root; a root the user named (argument or env) must exist."""
    root = resolve_data_dir(data_dir)
    user_given = (data_dir is not None and str(data_dir) != "") or bool(os.environ.get(DATA_ENV))
    if user_given and not root.is_dir():
        raise DataError(
            f"data directory {root} (from --data-dir / {DATA_ENV}) does not exist; "
            "fix: create it or correct the path"
        )
    return root


# --------------------------------------------------------------------------- digits

_DIGITS_N_TEST = 300


def _load_digits(seed: int, image_size: int | None) -> Dataset:
    """scikit-learn's 1,797 8x8 digits, values 0..16 scaled to [0, 1]; 1,497 / 300 split."""
    from sklearn.datasets import load_digits  # slow import, only when used

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (1797, 1, 8, 8)
    y = torch.from_numpy(bunch.target.astype(np.int64))  # (1797,)
    train, test = _split_indices(len(x), _DIGITS_N_TEST, seed)
    levels = _levels(17, x, image_size)
    x = _resize(x, image_size)
    return Dataset("digits", x[train].contiguous(), x[test].contiguous(), y[train], y[test], levels=levels)


# --------------------------------------------------------------------------- images

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_CELEBA_CROP = 140
_DECODE_BLOCK = 1024


def _load_celeba(root: Path, size: int, seed: int) -> Dataset:
    """CelebA aligned faces, centre-cropped 140x140 and resized to (3, S, S).

    The official partition (0 train, 2 test) is used when
    ``list_eval_partition.txt`` is present, else a seeded 90/10 split.
    """
    base, img_dir = _find_celeba(root)
    names = sorted(p.name for p in img_dir.iterdir() if p.suffix.lower() == ".jpg")
    if not names:
        raise DataError(f"no .jpg images in {img_dir}; fix: unzip img_align_celeba.zip there")
    images = _celeba_images(base, img_dir, names, size)  # (N, 3, S, S) uint8
    partition_file = base / "list_eval_partition.txt"
    if partition_file.is_file():
        train, test = _official_split(partition_file, names)
    else:
        logger.info("no %s: using a seeded 90/10 split", partition_file)
        train, test = _split_indices(len(names), max(1, round(0.1 * len(names))), seed)
    return Dataset("celeba", _to_float(images[train]), _to_float(images[test]), levels=256)


def _find_celeba(root: Path) -> tuple[Path, Path]:
    """(base, image folder): ``root/celeba/img_align_celeba`` or ``root/img_align_celeba``."""
    for base in (root / "celeba", root):
        img_dir = base / "img_align_celeba"
        if img_dir.is_dir():
            nested = img_dir / "img_align_celeba"  # layout of some zip releases
            if nested.is_dir() and next(img_dir.glob("*.jpg"), None) is None:
                img_dir = nested
            return base, img_dir
    raise DataError(
        f"CelebA not found: expected {root / 'celeba' / 'img_align_celeba'}/*.jpg (or "
        f"{root / 'img_align_celeba'}). CelebA is not downloaded automatically; fix: unzip "
        f"img_align_celeba.zip and put list_eval_partition.txt from the official site into "
        f"{root / 'celeba'}, or point --data-dir / {DATA_ENV} at the folder that holds "
        "img_align_celeba"
    )


def _official_split(partition_file: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``names`` of partition 0 (train) and 2 (test)."""
    partition = {}
    for lineno, line in enumerate(partition_file.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(
                f"{partition_file}:{lineno}: expected '<file>.jpg <0|1|2>', got {line!r}; "
                "fix: use the official list_eval_partition.txt or delete it for a random split"
            )
        partition[fields[0]] = int(fields[1])
    parts = np.array([partition.get(n, -1) for n in names])
    if (parts < 0).any():
        logger.warning("%d images are not in %s; ignored", int((parts < 0).sum()), partition_file)
    train, test = np.flatnonzero(parts == 0), np.flatnonzero(parts == 2)
    if len(train) == 0 or len(test) == 0:
        raise DataError(
            f"{partition_file}: {len(train)} train and {len(test)} test images match the "
            "files on disk; fix: use the partition file that belongs to these images"
        )
    return train, test


def _celeba_images(base: Path, img_dir: Path, names: list[str], size: int) -> np.ndarray:
    """(N, 3, S, S) uint8 from the cache ``base/celeba_{S}.npz``, rebuilt when stale."""
    cache = base / f"celeba_{size}.npz"
    images = _read_cache(cache, names, size)
    if images is None:
        paths = [img_dir / n for n in names]
        images, _ = _decode_images(paths, size, crop=_CELEBA_CROP, desc="decoding CelebA")
        _write_cache(cache, images, names)
    return images


def _read_cache(cache: Path, names: list[str], size: int) -> np.ndarray | None:
    """Cached images if the cache matches ``names`` and (N, 3, S, S) uint8, else None."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:
            cached_names, images = z["names"], z["images"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        logger.warning("unreadable cache %s (%s); rebuilding", cache, e)
        return None
    if (
        images.dtype != np.uint8
        or images.shape != (len(names), 3, size, size)
        or cached_names.tolist() != names
    ):
        logger.info("cache %s does not match the image folder; rebuilding", cache)
        return None
    logger.info("read %d images from cache %s", len(names), cache)
    return images


def _write_cache(cache: Path, images: np.ndarray, names: list[str]) -> None:
    """Atomically write the cache (temp file in the same folder, then rename)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=f".{cache.name}.", suffix=".part")
    except OSError as e:
        logger.warning("cannot write cache %s (%s); continuing without it", cache, e)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=images, names=np.array(names, dtype=str))
        os.replace(tmp, cache)
        logger.info("wrote cache %s", cache)
    except OSError as e:
        logger.warning("cannot write cache %s (%s); continuing without it", cache, e)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load_folder(arg: str, size: int, seed: int) -> Dataset:
    """User images under a folder (recursive, sorted): RGB, or grey if all are grey."""
    folder = _user_path(arg, "image folder")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a directory; fix: use folder:PATH with a folder")
    paths = sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if len(paths) < 2:
        raise DataError(
            f"image folder {folder} holds {len(paths)} images, need at least 2 "
            f"({', '.join(sorted(_IMAGE_SUFFIXES))}, searched recursively); fix: add images"
        )
    images, grey = _decode_images(paths, size, crop=None, desc=f"decoding {folder.name}")
    if grey.all():
        images = images[:, :1]  # (N, 1, S, S)
    train, test = _split_indices(len(paths), max(1, round(0.1 * len(paths))), seed)
    return Dataset(f"folder:{folder}", _to_float(images[train]), _to_float(images[test]), levels=256)


def _decode_images(
    paths: list[Path], size: int, *, crop: int | None, desc: str
) -> tuple[np.ndarray, np.ndarray]:
    """Decode in parallel threads: (N, 3, S, S) uint8 and (N,) bool "was greyscale"."""
    n = len(paths)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    grey = np.empty(n, dtype=bool)
    load = partial(_load_square, size=size, crop=crop)
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool, tqdm(
        total=n, desc=desc, unit="img"
    ) as bar:
        for start in range(0, n, _DECODE_BLOCK):
            block = paths[start : start + _DECODE_BLOCK]
            for i, (rgb, is_grey) in enumerate(pool.map(load, block), start):
                images[i] = rgb.transpose(2, 0, 1)
                grey[i] = is_grey
            bar.update(len(block))
    return images, grey


def _load_square(path: Path, *, size: int, crop: int | None) -> tuple[np.ndarray, bool]:
    """Centre square crop (side ``crop``, default the short side), bilinear resize.

    Returns (S, S, 3) uint8 and whether the source was greyscale.
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            is_grey = img.mode in _GREY_MODES
            img = img.convert("RGB")
            w, h = img.size
            side = min(w, h) if crop is None else min(crop, w, h)
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side))
            # PIL widens the bilinear kernel when shrinking: antialiased.
            img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8), is_grey
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
            Image.DecompressionBombError) as e:   # PIL reports broken files with any of these
        raise DataError(f"cannot read image {path} ({type(e).__name__}: {e}); fix: remove or replace the file") from e


# --------------------------------------------------------------------------- npz


def _load_npz(arg: str, image_size: int | None) -> Dataset:
    """User arrays ``x_train``, ``x_test`` (+ optional ``y_train``, ``y_test``)."""
    path = _user_path(arg, "npz file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {path} as .npz ({e}); fix: save with np.savez") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path} holds a single array, not an .npz archive; "
            "fix: np.savez(path, x_train=..., x_test=...)"
        )
    with archive:
        missing = [k for k in ("x_train", "x_test") if k not in archive.files]
        if missing:
            raise DataError(
                f"{path}: missing arrays {missing} (has {sorted(archive.files)}); "
                "fix: np.savez(path, x_train=..., x_test=..., [y_train=..., y_test=...])"
            )
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
        raise DataError(
            f"{source}: dtype {arr.dtype}; fix: save uint8 0..255 or float values in [0, 1]"
        )
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
    return _resize(x.contiguous(), image_size)


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


# --------------------------------------------------------------------------- helpers


def _user_path(arg: str, what: str) -> Path:
    """Expanded, absolute path that must exist."""
    path = Path(arg).expanduser().resolve()
    if not path.exists():
        raise DataError(f"{what} {path} does not exist; fix: check the path")
    return path


def _split_indices(n: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(n): (train, test) index arrays, each sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _levels(native: int, x: torch.Tensor, image_size: int | None) -> int | None:
    """``native`` levels unless resizing (interpolation) leaves the values unquantised."""
    return native if image_size is None or tuple(x.shape[-2:]) == (image_size, image_size) else None


def _is_8bit(x: torch.Tensor) -> bool:
    """Whether every value of x (in [0, 1]) is k / 255 for an integer k."""
    y = x * 255.0
    return bool(torch.all((y - y.round()).abs() < 1e-4))


def _to_float(images: np.ndarray) -> torch.Tensor:
    """(N, C, H, W) uint8 -> float32 in [0, 1], contiguous."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, S, S): centre square crop, antialiased bilinear resize."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top : top + side, left : left + side]
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp_(0.0, 1.0).contiguous()
