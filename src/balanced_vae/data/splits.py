"""Which images a run fits on, watches for stopping and is tested on, and their fingerprint.

A run's config names subsets of its data set (``n_train``, ``n_val``, ``n_test``); these
functions are the one place that reads them, for training (Algorithm 1's stopping rule
watches the validation images) and for every command that reads a run back. The
fingerprint (counts, shape, SHA-256 of the images) goes into each checkpoint, so a run is
never evaluated or resumed on other data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checkpoint import CheckpointError
from .dataset import Dataset

if TYPE_CHECKING:  # the config's fields are read, its module is not needed
    from ..config import TrainConfig


def split_train(data: Dataset, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The images a run fits on and the validation images its stopping rule watches.

    The first ``n_train`` training images (all when None), of which the last ``n_val``
    are held out. The test split is never touched here.
    """
    x = data.x_train[: config.n_train] if config.n_train else data.x_train
    n_val = config.n_val or 0
    if n_val >= len(x):
        raise ValueError(f"n_val={n_val} leaves no training images of {len(x)}; choose a smaller --n-val")
    return (x[: len(x) - n_val], x[len(x) - n_val :]) if n_val else (x, x[:0])


def test_images(data: Dataset, config: TrainConfig) -> torch.Tensor:
    """The test images a run is evaluated on: the first ``n_test`` (all when None)."""
    return data.x_test[: config.n_test] if config.n_test else data.x_test


def data_fingerprint(data: Dataset, config: TrainConfig) -> dict:
    """Counts, shape and SHA-256 of the images a run trains and is tested on (its subsets)."""
    x_train = data.x_train[: config.n_train] if config.n_train else data.x_train
    x_test = test_images(data, config)
    h = hashlib.sha256()
    for x in (x_train, x_test):
        held = x if isinstance(x, torch.Tensor) else getattr(x, "x", None)  # a TensorSource holds its tensor
        if not isinstance(held, torch.Tensor):  # a streamed source: reading it all to hash it costs an epoch
            return {"n_train": len(x_train), "n_test": len(x_test), "shape": list(data.shape), "sha256": None}
        h.update(held.detach().cpu().contiguous().numpy().tobytes())
    return {"n_train": len(x_train), "n_test": len(x_test), "shape": list(data.shape), "sha256": h.hexdigest()}


def check_fingerprint(saved: dict | None, data: Dataset, config: TrainConfig, where: Path) -> None:
    """Refuse data other than the run's own (when the checkpoint recorded it)."""
    if not saved:
        return
    now = data_fingerprint(data, config)
    if None in (now["sha256"], saved.get("sha256")):  # streamed data: counts and shape only
        now, saved = ({k: v for k, v in d.items() if k != "sha256"} for d in (now, saved))
    if now != saved:
        raise CheckpointError(
            f"{where}: the run was trained on other data ({saved['n_train']} train / {saved['n_test']} test images "
            f"of shape {tuple(saved['shape'])}, sha256 {str(saved.get('sha256'))[:12]}) than the data given now "
            f"({now['n_train']} / {now['n_test']} of shape {tuple(now['shape'])}, "
            f"sha256 {str(now.get('sha256'))[:12]}); "
            f"point --data-dir (or the dataset path) at the run's data ({config.dataset})"
        )
