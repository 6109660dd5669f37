"""Data sources for training from Python: a tensor, a torch Dataset or a DataLoader.

The trainer (Algorithm 1) reads its images through two calls only, so it runs the same
loop on a :class:`~balanced_vae.data.Dataset` of float tensors and on the sources here:

* ``x[a:b]`` (any slice) -> a source over those examples (no copy);
* ``x[idx]`` (a LongTensor of positions) -> a float32 batch ``(B, C, H, W)`` in [0, 1] on
  the source's device, converted from the stored form *per batch*.

Sources:

* :class:`TensorSource` -- examples held in memory. ``uint8`` data (0..255) stay ``uint8``
  and are divided by 255 per batch, so a CelebA-sized set (200,000 x 3 x 64 x 64) takes
  2.5 GB instead of 9.8 GB as float32 (``bench/source_memory.py``). Float data in [0, 1] are
  used as given (no copy).
* :class:`DatasetSource` -- a map-style ``torch.utils.data.Dataset`` (or the dataset of a
  ``DataLoader``) read per batch: streamed, never held in memory. A DataLoader lends its
  ``num_workers``, ``collate_fn`` and ``pin_memory``; its own batch order is replaced by the
  run's seeded permutation (batch size from the config), so a resumed run continues exactly.

Which part of an item is the image (:func:`take_image`): a tensor or array is the image; of
a tuple or list, the first element (``(image, label)``); of a dict, ``item[key]``, by default
the first of ``"image"``, ``"x"``, ``"img"``, ``"pixel_values"`` present. ``key=`` picks
another entry (a dict key or a tuple position).

Any example shape works: ``(C, H, W)`` images of any size and channel count, ``(D,)`` flat
vectors, ``(H, W)`` single-channel images. Batches come in the library layout
``(B, C, H, W)`` of :func:`canonical_shape`; the model hands the networks ``data_shape``.

Bad input (an empty set, dtypes other than uint8/float, values outside [0, 1], NaN,
items without an image) raises :class:`~balanced_vae.data.DataError` when the source is
made, i.e. before any file is written or step taken; a streamed source checks its first
batch then and every later batch as it is read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate
from torch.utils.data import Dataset as TorchDataset

from .data import DataError, Dataset
from .data.dataset import range_error

log = logging.getLogger(__name__)

IMAGE_KEYS = ("image", "x", "img", "pixel_values")


def canonical_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The library layout (C, H, W) of one example of ``shape``.

    ``(C, H, W)`` stays; ``(D,)`` -> ``(D, 1, 1)``; ``(H, W)`` -> ``(1, H, W)``; higher ranks
    ``(C, A, ..., W)`` -> ``(C, A * ..., W)``. Only the layout changes, never the values.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        raise DataError("examples are scalars (shape ()); fix: give each example at least one dimension")
    if len(shape) == 1:
        return (shape[0], 1, 1)
    if len(shape) == 2:
        return (1, shape[0], shape[1])
    return (shape[0], math.prod(shape[1:-1]), shape[-1])


def take_image(item: Any, key: Any = None, where: str = "item") -> torch.Tensor:
    """The image part of a dataset item or collated batch (rule in the module docstring)."""
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(item)
    if isinstance(item, torch.Tensor):
        if key is not None:
            raise DataError(f"{where} is a tensor but key={key!r} was given; fix: drop key=")
        return item
    if isinstance(item, dict):
        if key is None:
            key = next((k for k in IMAGE_KEYS if k in item), None)
            if key is None:
                raise DataError(
                    f"{where} is a dict with keys {sorted(map(str, item))} and none of {IMAGE_KEYS}; "
                    "fix: pass key='NAME' naming the image entry"
                )
        if key not in item:
            raise DataError(f"{where} has no key {key!r} (keys: {sorted(map(str, item))}); fix: pass the right key=")
        return take_image(item[key], None, f"{where}[{key!r}]")
    if isinstance(item, (tuple, list)):
        pos = 0 if key is None else key
        if not isinstance(pos, int) or not -len(item) <= pos < len(item):
            raise DataError(
                f"{where} is a {type(item).__name__} of {len(item)} entries; key={key!r} must be a "
                "position in it (default 0: the image of (image, label))"
            )
        return take_image(item[pos], None, f"{where}[{pos}]")
    raise DataError(
        f"{where} is a {type(item).__name__}, not an image tensor; fix: return tensors from your "
        "Dataset (e.g. torchvision.transforms.PILToTensor or ToTensor), or tuples/dicts holding one"
    )


def to_unit_float(x: torch.Tensor, where: str) -> torch.Tensor:
    """A batch as float32 in [0, 1]: ``uint8`` is divided by 255; float is checked, not rescaled."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if not x.is_floating_point():
        raise DataError(
            f"{where}: dtype {x.dtype}; images must be uint8 (0..255) or float in [0, 1]; "
            "fix: x.to(torch.uint8) for 0..255 integers, or x.float() / 255"
        )
    x = x.float()
    _check_range(x, where)
    return x


def _check_range(x: torch.Tensor, where: str) -> None:
    if x.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(x))
    if lo != lo or hi != hi:
        raise DataError(f"{where}: {int(torch.isnan(x).sum())} NaN values; fix: remove or replace them")
    if lo < 0.0 or hi > 1.0:
        raise DataError(range_error(where, lo, hi))


class TensorSource:
    """Examples held in memory, ``x`` (N, *data_shape), as uint8 (converted per batch) or float in [0, 1].

    Float data are range-checked once here, in chunks, without a copy.
    """

    def __init__(self, x: torch.Tensor | np.ndarray, *, name: str = "tensor", _checked: bool = False) -> None:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise DataError(f"{name}: expected a tensor or array, got {type(x).__name__}")
        if not _checked:
            if x.ndim < 2 or len(x) == 0 or x[0].numel() == 0:
                raise DataError(
                    f"{name}: shape {tuple(x.shape)}; expected (N, *example_shape) with N >= 1, e.g. "
                    "(N, C, H, W) images or (N, D) vectors"
                )
            if x.dtype != torch.uint8:
                if not x.is_floating_point():
                    to_unit_float(x[:1], name)  # raises the dtype error
                for i in range(0, len(x), 4096):
                    _check_range(x[i : i + 4096], f"{name} (examples {i}..{min(i + 4096, len(x)) - 1})")
        self.x = x.detach()
        self.name = name

    @property
    def shape(self) -> tuple[int, ...]:
        """One example's shape, as the data have it."""
        return tuple(self.x.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def __len__(self) -> int:
        return len(self.x)

    def numel(self) -> int:
        return self.x.numel()

    def to(self, device: str | torch.device) -> TensorSource:
        """The same examples on ``device`` (still uint8 there)."""
        return TensorSource(self.x.to(device), name=self.name, _checked=True)

    def __getitem__(self, key: slice | torch.Tensor) -> TensorSource | torch.Tensor:
        if isinstance(key, slice):
            return TensorSource(self.x[key], name=self.name, _checked=True)
        x = self.x[key.to(self.x.device)]  # (B, *data_shape)
        return to_unit_float(x, self.name).reshape(len(x), *canonical_shape(self.shape))  # (B, C, H, W)

    def batches(self, perm: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        for i in range(0, len(perm), batch_size):
            yield self[perm[i : i + batch_size]]

    def __repr__(self) -> str:
        return f"TensorSource({self.name!r}, n={len(self)}, shape={self.shape}, dtype={self.x.dtype})"


class DatasetSource:
    """A map-style torch Dataset read per batch; nothing is held in memory.

    Items are collated by ``collate_fn`` (default: torch's ``default_collate``) and the image
    taken by :func:`take_image` with ``key``. With ``num_workers > 0`` each epoch's batches are
    read by a DataLoader over the run's permutation, so workers prefetch them.
    """

    def __init__(
        self,
        dataset: TorchDataset,
        *,
        key: Any = None,
        name: str = "dataset",
        num_workers: int = 0,
        collate_fn=None,
        pin_memory: bool = False,
        index: torch.Tensor | None = None,
        device: str | torch.device = "cpu",
        _shape: tuple[int, ...] | None = None,
    ) -> None:
        if (
            isinstance(dataset, IterableDataset)
            or not hasattr(dataset, "__getitem__")
            or not hasattr(dataset, "__len__")
        ):
            raise DataError(
                f"{name}: {type(dataset).__name__} is not a map-style Dataset (with __len__ and "
                "__getitem__); the trainer needs indexable data for its seeded shuffle, validation "
                "split and exact resume; fix: wrap your data in a map-style torch Dataset"
            )
        self.dataset, self.key, self.name = dataset, key, name
        self.num_workers, self.collate_fn, self.pin_memory = num_workers, collate_fn, pin_memory
        self.index = torch.arange(len(dataset)) if index is None else index
        self._device = torch.device(device)
        if len(self.index) == 0 and index is None:
            raise DataError(f"{name}: the dataset is empty; fix: provide examples")
        self._shape = _shape
        if _shape is None:  # read (and check) the first batch now, before any step: it tells the shape
            self[torch.arange(min(2, len(self)))]
            self._shape = self._raw_shape

    def _collate(self, items: list) -> Any:
        return (self.collate_fn or default_collate)(items)

    def _convert(self, batch: Any, positions: torch.Tensor) -> torch.Tensor:
        where = (
            f"{self.name} (examples {int(positions.min())}..{int(positions.max())})" if len(positions) else self.name
        )
        x = take_image(batch, self.key, f"{self.name} item")
        if x.ndim < 2:
            raise DataError(f"{where}: a batch of shape {tuple(x.shape)}; each example needs at least one dimension")
        self._raw_shape = tuple(x.shape[1:])
        if self._shape is not None and self._raw_shape != self._shape:
            raise DataError(
                f"{where}: examples of shape {self._raw_shape}, earlier ones were {self._shape}; "
                "fix: give every example the same shape (resize or crop in your Dataset)"
            )
        x = to_unit_float(x, where).reshape(len(x), *canonical_shape(self._raw_shape))  # (B, C, H, W)
        return x.to(self._device, non_blocking=True)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def device(self) -> torch.device:
        return self._device

    def __len__(self) -> int:
        return len(self.index)

    def numel(self) -> int:
        return len(self) * math.prod(self._shape)

    def _like(self, index: torch.Tensor, device: torch.device) -> DatasetSource:
        return DatasetSource(
            self.dataset,
            key=self.key,
            name=self.name,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            index=index,
            device=device,
            _shape=self._shape,
        )

    def to(self, device: str | torch.device) -> DatasetSource:
        return self._like(self.index, torch.device(device))

    def __getitem__(self, key: slice | torch.Tensor) -> DatasetSource | torch.Tensor:
        if isinstance(key, slice):
            return self._like(self.index[key], self._device)
        positions = self.index[key.cpu()]
        return self._convert(self._collate([self.dataset[int(i)] for i in positions]), positions)

    def batches(self, perm: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        chunks = [perm[i : i + batch_size].cpu() for i in range(0, len(perm), batch_size)]
        if self.num_workers == 0:
            for c in chunks:
                yield self[c]
            return
        loader = DataLoader(
            self.dataset,
            batch_sampler=[self.index[c].tolist() for c in chunks],
            num_workers=self.num_workers,
            collate_fn=self.collate_fn or default_collate,
            pin_memory=self.pin_memory and self._device.type == "cuda",
        )
        for c, batch in zip(chunks, loader):
            yield self._convert(batch, self.index[c])

    def __repr__(self) -> str:
        return f"DatasetSource({self.name!r}, n={len(self)}, shape={self.shape}, workers={self.num_workers})"


@dataclass(frozen=True, eq=False)
class ImageData:
    """A train/test pair of sources: what :func:`~balanced_vae.train.train` accepts besides a Dataset.

    ``shape`` is one example's shape as the data have it (the networks' ``data_shape``).
    """

    name: str
    x_train: TensorSource | DatasetSource
    x_test: TensorSource | DatasetSource

    @property
    def shape(self) -> tuple[int, ...]:
        return self.x_train.shape


def as_source(data: Any, *, key: Any = None, name: str = "data") -> TensorSource | DatasetSource:
    """A tensor/array, a map-style torch Dataset or a DataLoader as a source (first batch checked)."""
    if isinstance(data, (TensorSource, DatasetSource)):
        return data
    if isinstance(data, (torch.Tensor, np.ndarray)):
        if key is not None:
            raise DataError(f"{name}: key={key!r} applies to Dataset / DataLoader items, not to a tensor")
        return TensorSource(data, name=name)
    if isinstance(data, DataLoader):
        if data.batch_size is None:
            log.info("%s: the DataLoader has no batch_size; the run's batch_size is used", name)
        return DatasetSource(
            data.dataset,
            key=key,
            name=name,
            num_workers=data.num_workers,
            collate_fn=data.collate_fn,
            pin_memory=data.pin_memory,
        )
    if isinstance(data, TorchDataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return DatasetSource(data, key=key, name=name)
    raise DataError(
        f"{name}: a {type(data).__name__} is not training data; pass a tensor (N, ...), a torch "
        "Dataset, a DataLoader, or a balanced_vae Dataset"
    )


def as_data(train: Any, test: Any = None, *, key: Any = None, name: str | None = None) -> Dataset | ImageData:
    """What the trainer trains on: a balanced_vae Dataset as it is, anything else as :class:`ImageData`.

    ``train`` and ``test`` may each be a tensor / array (uint8 0..255 or float in [0, 1]),
    a map-style torch Dataset or a DataLoader; ``key`` picks the image out of tuple/dict
    items. Without ``test`` the last 10 % of the training examples (at most 5,000) stand in
    for it, i.e. the default validation images, and ``final.json``'s test numbers are theirs.
    """
    if isinstance(train, (Dataset, ImageData)):
        if test is not None or key is not None:
            raise DataError(f"{type(train).__name__} {train.name!r} already holds its splits; drop test= and key=")
        return train
    name = name or type(train).__name__
    x_train = as_source(train, key=key, name=f"{name} (train)")
    if test is None:
        n = len(x_train)
        x_test = x_train[n - max(1, min(5000, n // 10)) :]
        log.info("%s: no test data given; the last %d training examples stand in for it", name, len(x_test))
    else:
        x_test = as_source(test, key=key, name=f"{name} (test)")
        if x_test.shape != x_train.shape:
            raise DataError(
                f"{name}: training examples are {x_train.shape} but test examples are {x_test.shape}; "
                "fix: give both splits the same shape"
            )
    return ImageData(name, x_train, x_test)


def rows(x: torch.Tensor | TensorSource | DatasetSource, start: int, stop: int) -> torch.Tensor:
    """Examples ``start:stop`` of a float tensor or a source, as a float32 batch (B, C, H, W)."""
    if isinstance(x, torch.Tensor):
        return x[start:stop]
    return x[torch.arange(start, min(stop, len(x)))]


def epoch_batches(
    x: torch.Tensor | TensorSource | DatasetSource, perm: torch.Tensor, batch_size: int
) -> Iterator[torch.Tensor]:
    """The batches ``x[perm[0:b]], x[perm[b:2b]], ...`` of one epoch, as float32 (B, C, H, W)."""
    if isinstance(x, torch.Tensor):
        return (x[perm[i : i + batch_size]] for i in range(0, len(perm), batch_size))
    return x.batches(perm, batch_size)
