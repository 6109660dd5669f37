"""A trained run as one object: its folder, config, weights, data, and the samplers fitted to it.

A run folder (written by :func:`balanced_vae.train.train`) holds ``config.json``,
``checkpoint.pt`` (and ``stage1.pt`` for two-stage runs), ``metrics.jsonl``, ``final.json``
and, once fitted, ``gmm_K{K}/`` with the GMM of Eq. 13 on the run's training codes.
:class:`Run` rebuilds the model from those files and knows the data the run was trained
on (the data set its config names, its ``n_train`` / ``n_test`` subsets, checked against
the fingerprint in the checkpoint). Every command that reads a run goes through here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CHECKPOINT, CONFIG, CheckpointError, load_checkpoint, state_sha256
from .config import TrainConfig
from .data import Dataset, load_dataset
from .data.splits import check_fingerprint, test_images
from .methods import build_trained
from .model import VAE, encode_dataset
from .model_card import CARD, WEIGHTS, card_gmm, is_model_folder, read_model_folder, read_saved_model
from .resume import run_config
from .samplers import (
    CELEBA_COMPONENTS,
    DEFAULT_COMPONENTS,
    GMM_META,
    SAMPLER_KINDS,
    AggregatePosteriorSampler,
    GaussianMixtureSampler,
    PriorSampler,
    Sampler,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


@dataclass
class Run:
    """A trained run read back from its folder.

    ``model`` is in eval mode; ``checkpoint`` is the loaded checkpoint dict (``which`` names
    its file, ``checkpoint.pt`` unless another was asked for); ``stage`` is 2 once the
    per-pixel variance head of Algorithm 1 exists.
    """

    path: Path
    config: TrainConfig
    model: VAE
    stage: int
    checkpoint: dict[str, Any]
    which: str = CHECKPOINT
    card: dict[str, Any] | None = None  # the card of a model folder (`balanced-vae export`), else None
    _checked: Dataset | None = field(default=None, init=False, repr=False, compare=False)  # data already checked

    @classmethod
    def load(cls, run_dir: str | Path, *, which: str = CHECKPOINT) -> Run:
        """Rebuild the model of ``run_dir`` from ``config.json`` (with its resumes' changes) and the
        checkpoint file ``which``; a model folder (``balanced-vae export``: a card beside safetensors
        weights, no ``torch.load``) from its card and weights instead. Both are built by
        :func:`~balanced_vae.methods.build_trained`."""
        run_dir = Path(run_dir).expanduser()
        if not run_dir.is_dir():
            raise CheckpointError(f"{run_dir}: no such run folder")
        if is_model_folder(run_dir) and not (run_dir / CONFIG).is_file():
            config, ckpt, card = read_saved_model(run_dir, which=which)
            which, config_path = WEIGHTS, run_dir / CARD
        else:
            config, ckpt, card = run_config(run_dir), load_checkpoint(run_dir / which), None
            config_path = run_dir / CONFIG
        model = build_trained(config, ckpt, run_dir / which, config_path)
        return cls(run_dir, config, model, int(ckpt["stage"]), ckpt, which, card=card)

    @classmethod
    def from_model_folder(cls, folder: str | Path, *, which: str | None = None) -> Run:
        """The run of a model folder (``balanced-vae export``), read by
        :func:`~balanced_vae.model_card.read_model_folder`, even when a ``config.json`` lies beside it."""
        folder = Path(folder).expanduser()
        m = read_model_folder(folder, which=which)
        return cls(folder, m.config, m.model, m.stage, m.checkpoint, WEIGHTS, card=m.card)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape (C, H, W) of one image the run was trained on."""
        return tuple(self.checkpoint["shape"])

    @property
    def default_components(self) -> int:
        """The paper's K of Eq. 13 for this image shape: 500 for 64x64 (CelebA), else 32."""
        return CELEBA_COMPONENTS if self.shape[1] >= 64 else DEFAULT_COMPONENTS

    def dataset(self, data: Dataset | None = None, *, data_dir: str | Path | None = None) -> Dataset:
        """The data set the run was trained on, loaded from its config (``data_dir`` overrides the
        folder there) or the ``data`` given, checked against the run's image shape and fingerprint."""
        c = self.config
        if self._checked is not None and (data is self._checked or (data is None and data_dir is None)):
            return self._checked  # loading and hashing every image again would only repeat the answer
        if data is None:
            data = load_dataset(c.dataset, data_dir=data_dir or c.data_dir, image_size=c.image_size, seed=c.seed)
        if tuple(data.shape) != self.shape:
            raise ValueError(
                f"{self.path}: the run was trained on images of shape {self.shape} but the data given are "
                f"{tuple(data.shape)}; fix: pass the run's dataset ({c.dataset}); a run trained from Python data "
                "(train(..., data=...)) is evaluated on the dataset its config names: train it with "
                "TrainConfig(dataset=NAME) of data the CLI can load (e.g. npz:PATH), or pass data= in Python"
            )
        check_fingerprint(self.checkpoint.get("data"), data, c, self.path / self.which)
        self._checked = data
        return data

    def images(
        self, split: str = "train", *, data: Dataset | None = None, data_dir: str | Path | None = None
    ) -> torch.Tensor:
        """The images the run was trained on (``"train"``: every training image, its validation
        images included) or is evaluated on (``"test"``), with its ``n_train`` / ``n_test`` subsets."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; choose 'train' or 'test'")
        data = self.dataset(data, data_dir=data_dir)
        c = self.config
        if split == "test":
            return test_images(data, c)
        return data.x_train[: c.n_train] if c.n_train else data.x_train

    def gmm_dir(self, components: int, fit_on: str = "mean") -> Path:
        """Where the GMM fit lives: ``RUN/gmm_K{K}`` (``RUN/gmm_K{K}_sample`` for a fit on samples)."""
        return self.path / (f"gmm_K{components}" + ("" if fit_on == "mean" else f"_{fit_on}"))


def load_run(run_dir: str | Path, *, which: str = CHECKPOINT) -> Run:
    """The run in ``run_dir``, a run folder or a model folder written by ``balanced-vae export`` (see :meth:`Run.load`)."""
    return Run.load(run_dir, which=which)


def as_run(run: Run | str | Path) -> Run:
    """A loaded run as it is, or the run folder ``run`` loaded (its ``checkpoint.pt``)."""
    return run if isinstance(run, Run) else Run.load(run)


def model_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's weights (state dict, keys sorted): which encoder a fit's codes came from."""
    return state_sha256(model.state_dict())


def fit_gmm_for_run(
    run: Run | str | Path,
    n_components: int | None = DEFAULT_COMPONENTS,
    *,
    data: Dataset | None = None,
    refit: bool = False,
    fit_on: str = "mean",
    random_state: int = 0,
    data_dir: str | Path | None = None,
    covariance_type: str = "full",
) -> GaussianMixtureSampler:
    """The GMM of Eq. 13 for a run, fitted on its training codes and cached in :meth:`Run.gmm_dir`.

    The cache holds the SHA-256 of the weights it was fitted from; it is reloaded when made
    from the same weights and settings (and by the current fitting recipe, which records the
    absolute regularisation it used) and refitted (and overwritten) when ``refit`` is true
    or the weights differ (e.g. training went on since). A run loaded from a checkpoint other
    than ``checkpoint.pt`` is fitted in memory, since the cache belongs to ``checkpoint.pt``.
    ``n_components=None`` takes the paper's K for the run's image shape.
    """
    run = as_run(run)
    k = n_components if n_components is not None else run.default_components
    settings = {"fit_on": fit_on, "random_state": random_state, "covariance_type": covariance_type}
    if run.card is not None:  # a model folder: the GMM saved in it, when it is the one asked for
        saved = card_gmm(run, k, fit_on, random_state, covariance_type)
        if saved is not None:
            return saved
    cached = run.which == CHECKPOINT
    folder = run.gmm_dir(k, fit_on)
    weights_sha = model_sha256(run.model)
    if cached and not refit and (folder / GMM_META).is_file():
        try:
            s = GaussianMixtureSampler.load(folder)
        except ValueError as e:
            log.warning("%s: cannot reuse the saved GMM (%s); refitting", folder, e)
        else:
            saved = {"fit_on": s.fit_on, "random_state": s.random_state, "covariance_type": s.covariance_type}
            current = getattr(s, "reg_covar_", None) is not None  # fitted with the data-relative regularisation
            if s.source.get("model_sha256") == weights_sha and saved == settings and s.n_components == k and current:
                log.info("%s: reusing the saved GMM", folder)
                return s
            log.warning("%s: saved GMM is from other weights or settings; refitting", folder)
    mu, logvar = encode_dataset(run.model, run.images("train", data=data, data_dir=data_dir))  # (N, L)
    s = GaussianMixtureSampler(k, covariance_type=covariance_type, fit_on=fit_on, random_state=random_state)
    s.fit(mu, logvar)
    if cached:
        try:
            s.save(
                folder,
                extra={
                    "model_sha256": weights_sha,
                    "stage": run.stage,
                    "epoch": run.checkpoint.get("epoch"),
                    "dataset": run.config.dataset,
                    "n_codes": len(mu),
                },
            )
        except OSError as e:  # a read-only run: the fit is used, only not kept for the next command
            log.warning("%s: cannot keep the GMM fit there (%s); it is fitted again next time", folder, e.strerror or e)
        else:
            s.source = json.loads((folder / GMM_META).read_text())["source"]
    return s


def make_sampler(
    kind: str,
    run: Run | str | Path,
    *,
    components: int | None = DEFAULT_COMPONENTS,
    data: Dataset | None = None,
    fit_on: str = "mean",
    data_dir: str | Path | None = None,
) -> Sampler:
    """A sampler of ``kind`` ("prior", "gmm" or "aggregate") for ``run`` (a :class:`Run` or its folder).

    "gmm" comes from :func:`fit_gmm_for_run` (cached); "aggregate" encodes the run's training
    images (Eq. 12). ``components=None`` takes the paper's K for the run's image shape.
    """
    if kind not in SAMPLER_KINDS:
        raise ValueError(f"unknown sampler {kind!r}; choose one of {SAMPLER_KINDS}")
    run = as_run(run)
    if kind == "prior":
        return PriorSampler(run.model.latent_dim)
    if kind == "gmm":
        return fit_gmm_for_run(run, components, data=data, fit_on=fit_on, data_dir=data_dir)
    return AggregatePosteriorSampler(*encode_dataset(run.model, run.images("train", data=data, data_dir=data_dir)))
