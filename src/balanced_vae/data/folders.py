"""Image folders and CelebA: image files decoded, centre-cropped and resized to (C, S, S).

The paper (Lin et al. 2019, Section 4) uses CelebA as 64x64 RGB centre crops:
``<data_dir>/celeba/img_align_celeba/*.jpg`` with the official ``list_eval_partition.txt``
split, decoded once and cached as ``celeba_{S}.npz`` beside the images. ``folder:PATH``
loads the user's own images the same way (RGB, or grey if all of them are grey).
"""

from __future__ import annotations

import logging
import os
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from ..atomic import atomic_write
from .dataset import DataError, Dataset, split_indices, to_float
from .paths import DATA_ENV, user_path

logger = logging.getLogger(__name__)

__all__ = ["load_celeba", "load_folder"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_CELEBA_CROP = 140
_DECODE_BLOCK = 1024
#: what PIL raises on a broken or hostile image file
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


def load_celeba(root: Path, size: int, seed: int) -> Dataset:
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
        train, test = split_indices(len(names), max(1, round(0.1 * len(names))), seed)
    return Dataset("celeba", to_float(images[train]), to_float(images[test]), levels=256)


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
    if images.dtype != np.uint8 or images.shape != (len(names), 3, size, size) or cached_names.tolist() != names:
        logger.info("cache %s does not match the image folder; rebuilding", cache)
        return None
    logger.info("read %d images from cache %s", len(names), cache)
    return images


def _write_cache(cache: Path, images: np.ndarray, names: list[str]) -> None:
    """Atomically write the cache; a folder that cannot take it only costs a warning."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, images=images, names=np.array(names, dtype=str))

    try:
        atomic_write(cache, write)
    except OSError as e:
        logger.warning("cannot write cache %s (%s); continuing without it", cache, e)
        return
    logger.info("wrote cache %s", cache)


def load_folder(arg: str, size: int | None, seed: int) -> Dataset:
    """User images under a folder (recursive, sorted): RGB, or grey if all are grey.

    ``size=None`` keeps the images' own size when they share one square size; images of several
    sizes, or not square, are centre-cropped and resized to 64x64, with a warning that says so and
    names ``--image-size`` (a run records the size it used in its config.json).
    """
    folder = user_path(arg, "image folder")
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
    if size is None:
        size = _own_size(folder, paths)
    images, grey = _decode_images(paths, size, crop=None, desc=f"decoding {folder.name}")
    if grey.all():
        images = images[:, :1]  # (N, 1, S, S)
    train, test = split_indices(len(paths), max(1, round(0.1 * len(paths))), seed)
    return Dataset(f"folder:{folder}", to_float(images[train]), to_float(images[test]), levels=256)


FOLDER_RESIZE = 64  # the side images of several sizes (or not square) are brought to without --image-size


def _own_size(folder: Path, paths: list[Path]) -> int:
    """The side of the images when all are square and of one size (read from their headers); else
    :data:`FOLDER_RESIZE`, announced with a warning."""
    sizes: dict[tuple[int, int], Path] = {}
    for p in paths:
        try:
            with Image.open(p) as img:
                w, h = img.size  # a square stays square under any EXIF rotation
        except _UNREADABLE as e:
            raise _unreadable(p, e) from e
        sizes.setdefault((w, h), p)
    if len(sizes) == 1 and next(iter(sizes))[0] == next(iter(sizes))[1]:
        side = next(iter(sizes))[0]
        logger.info("folder:%s: %d images of their own size %dx%d", folder, len(paths), side, side)
        return side
    found = ", ".join(f"{p.name} {w}x{h}" for (w, h), p in list(sizes.items())[:3])
    logger.warning(
        "folder:%s: the images are %s (%s); each is centre-cropped to a square and resized to %dx%d. "
        "Pass --image-size S to choose the size",
        folder,
        "of several sizes" if len(sizes) > 1 else "not square",
        found,
        FOLDER_RESIZE,
        FOLDER_RESIZE,
    )
    return FOLDER_RESIZE


def _decode_images(paths: list[Path], size: int, *, crop: int | None, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode in parallel threads: (N, 3, S, S) uint8 and (N,) bool "was greyscale"."""
    n = len(paths)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    grey = np.empty(n, dtype=bool)
    load = partial(_load_square, size=size, crop=crop)
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool, tqdm(total=n, desc=desc, unit="img") as bar:
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
    except _UNREADABLE as e:
        raise _unreadable(path, e) from e


def _unreadable(path: Path, e: BaseException) -> DataError:
    """The error of an image file PIL cannot read (one of :data:`_UNREADABLE`), with the fix."""
    return DataError(f"cannot read image {path} ({type(e).__name__}: {e}); fix: remove or replace the file")
