"""Image sets for FID between any two sets of images (paper Section 5, Table 2's protocol).

``balanced-vae fid A B`` scores any generator with the same Inception protocol as
``evaluate``: each of A and B is one of

* a folder of PNG / JPEG images (read in sorted file-name order, all one size; grey
  when every image is grey, else RGB; no resizing here, FID's preprocessing resizes);
* an ``.npy`` array or an ``.npz`` archive (its only array, or ``FILE.npz:KEY``), of
  shape (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3, float in [0, 1] or
  uint8 in 0..255;
* a data set name with a split, ``NAME:SPLIT`` (``mnist:test``, ``fashion-mnist:train``,
  ``digits:test``, ...): its statistics are cached like every real set's.

Bad input (mixed sizes, fewer than 2 images, NaN, values outside [0, 1]) raises one
:class:`~balanced_vae.data.DataError` naming the file or array and the fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .data import DataError, load_dataset
from .fid import check_fid_images

log = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "ImageSet", "load_image_set"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_NPZ_KEYS = ("x", "images", "samples", "x_test", "arr_0")
_SPLITS = ("train", "test")


@dataclass(frozen=True)
class ImageSet:
    """Images (N, C, H, W) float32 in [0, 1] and where they came from.

    ``dataset`` and ``split`` are set for a data set (``NAME:SPLIT``): its statistics are
    then cached by :func:`balanced_vae.fid.real_statistics`.
    """

    x: torch.Tensor
    source: str
    kind: str  # "folder", "array" or "dataset"
    dataset: str | None = None
    split: str | None = None

    def describe(self) -> dict:
        out = {"source": self.source, "kind": self.kind, "n_available": len(self.x), "shape": list(self.x.shape[1:])}
        if self.dataset is not None:
            out.update(dataset=self.dataset, split=self.split)
        return out


def load_image_set(spec: str | Path, *, data_dir: str | Path | None = None) -> ImageSet:
    """Read an image set from a folder, an ``.npy`` / ``.npz`` file or ``NAME:SPLIT`` (see the module)."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        s = ImageSet(_read_folder(path), str(path), "folder")
    elif path.is_file() or _npz_with_key(spec) is not None:
        s = ImageSet(*_read_array(spec), "array")
    else:
        name, sep, split = spec.rpartition(":")
        if not sep or not name:
            raise DataError(
                f"{spec!r} is neither a folder nor an .npy/.npz file, nor a data set with a split; "
                f"fix: give an existing path, or NAME:SPLIT such as {spec}:test"
            )
        if split not in _SPLITS:
            raise DataError(f"{spec!r}: split {split!r}; fix: use {name}:train or {name}:test")

        data = load_dataset(name, data_dir=data_dir)
        s = ImageSet(data.x_train if split == "train" else data.x_test, spec, "dataset", name, split)
    check_fid_images(s.x, s.source)
    return s


# --------------------------------------------------------------------------- folders


def _read_folder(folder: Path) -> torch.Tensor:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(
            f"{folder}: no {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} images; fix: point to a "
            "folder of image files, or an .npy/.npz array"
        )
    images, first = [], None
    for f in files:
        try:
            with Image.open(f) as img:
                img.load()
                grey = img.mode in ("1", "L", "LA", "I", "I;16", "F")
                a = np.asarray(img.convert("L" if grey else "RGB"))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise DataError(f"{f}: cannot be read as an image ({e}); fix: remove or re-save it") from None
        if first is None:
            first = (f, a.shape[:2])
        elif a.shape[:2] != first[1]:
            raise DataError(
                f"{folder}: mixed image sizes: {f.name} is {a.shape[1]}x{a.shape[0]} but "
                f"{first[0].name} is {first[1][1]}x{first[1][0]} (width x height); fix: resize all "
                "images to one size (FID itself resizes them to 299x299)"
            )
        images.append(a)
    if any(a.ndim == 3 for a in images):  # some RGB: all RGB
        images = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in images]
    arr = np.stack(images)  # (N, H, W) or (N, H, W, 3), uint8
    x = torch.from_numpy(arr).float().div(255.0)
    log.info("read %d images of %s from %s", len(x), tuple(arr.shape[1:]), folder)
    return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------- arrays


def _npz_with_key(spec: str) -> tuple[Path, str] | None:
    file, sep, key = spec.rpartition(":")
    if sep and file.lower().endswith(".npz") and Path(file).expanduser().is_file():
        return Path(file).expanduser(), key
    return None


def _read_array(spec: str) -> tuple[torch.Tensor, str]:
    """The images of an .npy file or of one array of an .npz archive, and the array's name (FILE[:KEY])."""
    with_key = _npz_with_key(spec)
    path, key = with_key if with_key is not None else (Path(spec).expanduser(), None)
    try:
        if path.suffix.lower() == ".npy":
            a = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.files)
                if key is None:
                    key = keys[0] if len(keys) == 1 else next((k for k in _NPZ_KEYS if k in keys), None)
                if key not in keys:
                    raise DataError(f"{path}: holds the arrays {keys}; fix: name one, e.g. {path}:{keys[0]}")
                a = z[key]
        else:
            raise DataError(f"{path}: not a folder, .npy or .npz file; fix: save the images with numpy.save")
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(
            f"{path}: cannot be read as a numpy array ({e}); fix: save it with numpy.save / "
            "numpy.savez (no pickled objects)"
        ) from None
    name = f"{path}" + (f":{key}" if key is not None else "")
    return _as_images(a, name), name


def _as_images(a: np.ndarray, name: str) -> torch.Tensor:
    """(N, H, W), (N, C, H, W) or (N, H, W, C), C in {1, 3}, uint8 or float -> (N, C, H, W) float32."""
    if a.dtype == np.uint8:
        x = torch.from_numpy(a.astype(np.float32) / 255.0)
    elif np.issubdtype(a.dtype, np.floating):
        x = torch.from_numpy(a.astype(np.float32, copy=False))
    else:
        raise DataError(f"{name}: dtype {a.dtype}; fix: save float images in [0, 1] or uint8 images in 0..255")
    if x.ndim == 3:
        x = x[:, None]  # (N, 1, H, W)
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2).contiguous()  # channels last -> (N, C, H, W)
    elif x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(
            f"{name}: shape {tuple(a.shape)}; fix: save images as (N, H, W), (N, C, H, W) or "
            "(N, H, W, C) with C = 1 (grey) or 3 (RGB)"
        )
    return x
