"""The data set: train and test images as float32 tensors in [0, 1], layout (N, C, H, W).

The Gaussian likelihood of Eq. 6-8 (Lin, Roberts, Trigoni, Clark 2019) is defined on x in
[0, 1], so every loader returns float32 tensors in that range and :class:`Dataset` checks it
(:func:`validate_images`). Below :class:`Dataset`, the conversions the loaders share: uint8
to [0, 1], the centre-crop resize to S x S, the seeded train/test split and the number of
intensity levels that survives a resize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DataError",
    "Dataset",
    "quantisation_levels",
    "range_error",
    "resize",
    "split_indices",
    "to_float",
    "validate_images",
]


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
        real_valued: False for images in [0, 1]; True for tables of real values (standardised
            features, :mod:`.table`, layout (N, D, 1, 1)), which are checked finite but not
            range-checked and are modelled with an identity decoder mean
            (``TrainConfig.output``).
    """

    name: str
    x_train: torch.Tensor
    x_test: torch.Tensor
    y_train: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    levels: int | None = None
    real_valued: bool = False

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            source = f"dataset {self.name!r} x_{split}"
            validate_images(x, source, unit_range=not self.real_valued)
            if x.dtype != torch.float32 or not x.is_contiguous():
                raise DataError(
                    f"{source}: dtype {x.dtype}, contiguous={x.is_contiguous()}; fix: pass x.float().contiguous()"
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


def validate_images(x: torch.Tensor, source: str, *, unit_range: bool = True) -> torch.Tensor:
    """Check that ``x`` is a non-empty (N, C, H, W) float batch, finite, in [0, 1]
    (``unit_range=False``: finite only, for real-valued tables).

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
            f"{source}: dtype {x.dtype}, images must be float in [0, 1]; fix: x.float() / 255 for 0..255 images"
        )
    lo, hi = (v.item() for v in torch.aminmax(x))  # NaN propagates into both
    if lo != lo or hi != hi:
        n_nan = int(torch.isnan(x).sum())
        raise DataError(f"{source}: {n_nan} NaN values; fix: remove or replace them")
    if not unit_range and not (math.isfinite(lo) and math.isfinite(hi)):
        raise DataError(f"{source}: {int(torch.isinf(x).sum())} infinite values; fix: remove or replace them")
    if unit_range and (lo < 0.0 or hi > 1.0):
        raise DataError(range_error(source, lo, hi))
    return x


def range_error(source: str, lo: float, hi: float) -> str:
    """The message for values outside [0, 1]: the real range (to the digit that matters) and the fix that
    fits it, e.g. a clip for 1.0000001 (rounding), not a division by 255."""
    span = f"values span [{lo:.8g}, {hi:.8g}], outside [0, 1]"
    if lo != lo or hi != hi or math.isinf(lo) or math.isinf(hi):
        fix = "remove or replace the infinite values"
    elif lo >= -1e-3 and hi <= 1 + 1e-3:
        fix = (
            f"the values stray from [0, 1] by at most {max(-lo, hi - 1):.2g} (rounding): clip them, "
            "e.g. x.clamp(0, 1) or np.clip(x, 0, 1)"
        )
    elif lo >= -1.0 and hi <= 1.0:
        fix = "the data look like [-1, 1] images: map them with (x + 1) / 2"
    elif lo >= 0.0 and hi <= 255.0:
        fix = "the data look like 0..255 images: divide 0..255 data by 255 (or store them as uint8)"
    else:
        fix = f"rescale them to [0, 1], e.g. (x - {lo:.4g}) / ({hi:.4g} - {lo:.4g})"
    return f"{source}: {span}; fix: {fix}"


# --------------------------------------------------------------------------- conversions


def to_float(images: np.ndarray) -> torch.Tensor:
    """(N, C, H, W) uint8 -> float32 in [0, 1], contiguous."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)


def resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, S, S): centre square crop, antialiased bilinear resize.

    ``size=None`` or an image already S x S returns ``x`` itself.
    """
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top : top + side, left : left + side]
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp_(0.0, 1.0).contiguous()


def quantisation_levels(native: int, x: torch.Tensor, image_size: int | None) -> int | None:
    """``native`` levels unless resizing ``x`` to ``image_size`` (interpolation) leaves the values unquantised."""
    return native if image_size is None or tuple(x.shape[-2:]) == (image_size, image_size) else None


def split_indices(n: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(n): (train, test) index arrays, each sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])
