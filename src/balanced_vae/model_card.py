"""A shareable model folder, read: its JSON card checked, its safetensors weights checked and loaded.

A model folder (written by :func:`balanced_vae.export.export_run`) holds ``model.safetensors``,
``gmm.safetensors`` and the card ``model.json``; see :mod:`balanced_vae.export` for what each
holds. This module reads one without running code from it: the card is plain JSON whose fields
are checked (unknown ones refused, naming the file), weights are read by ``safetensors`` (no
``torch.load``, no unpickling) and checked against the card's SHA-256, and the model is rebuilt
with :func:`balanced_vae.methods.build_model`. :meth:`balanced_vae.runs.Run.load` reads model
folders through here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .checkpoint import CHECKPOINT, FINAL, CheckpointError
from .config import TrainConfig
from .methods import build_trained
from .model import VAE
from .samplers import GaussianMixtureSampler
from .version import __version__

log = logging.getLogger(__name__)

__all__ = [
    "CARD",
    "CARD_FIELDS",
    "CARD_FORMAT",
    "CARD_VERSION",
    "GMM_FIELDS",
    "GMM_WEIGHTS",
    "MODEL_FILES",
    "WEIGHTS",
    "ModelFolder",
    "card_gmm",
    "is_model_folder",
    "read_card",
    "read_model_folder",
    "read_saved_model",
    "SavedModel",
    "read_tensors",
    "safetensors_torch",
]

WEIGHTS = "model.safetensors"
GMM_WEIGHTS = "gmm.safetensors"
CARD = "model.json"
MODEL_FILES = (WEIGHTS, GMM_WEIGHTS, CARD)
CARD_FORMAT = "balanced-vae-model"
CARD_VERSION = 1
# every field a card of version 1 may hold (required: all but "gmm" and "metrics", which may be null / empty)
CARD_FIELDS = {
    "format",
    "format_version",
    "library_version",
    "config",
    "shape",
    "stage",
    "epoch",
    "sigma2_star",
    "data",
    "trained_by_commits",
    "weights",
    "gmm",
    "metrics",
    "source",
    "exported_by",
}
_REQUIRED = CARD_FIELDS - {"gmm", "metrics", "epoch", "data", "trained_by_commits", "source", "exported_by"}
GMM_FIELDS = {
    "file",
    "sha256",
    "n_components",
    "latent_dim",
    "covariance_type",
    "fit_on",
    "random_state",
    "max_iter",
    "tol",
    "reg_covar",
    "reg_covar_abs",
    "n_init",
    "init_params",
    "backend",
    "converged",
    "n_iter",
    "lower_bound",
    "n_fit",
    "fit_seconds",
    "format_version",
    "kind",
    "source",
}


class ModelFolder(NamedTuple):
    """A model folder read: what a :class:`~balanced_vae.runs.Run` is built from."""

    config: TrainConfig
    model: VAE
    stage: int
    checkpoint: dict[str, Any]  # what commands read of a checkpoint, from the card (no optimiser)
    card: dict[str, Any]


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`export_run` (its card beside its weights)."""
    path = Path(path).expanduser()
    return (path / CARD).is_file() and (path / WEIGHTS).is_file()


def safetensors_torch():
    """``safetensors.torch``, with the fix when it is missing."""
    try:
        import safetensors.torch as st
    except ImportError:  # a dependency since 0.2; an environment made before may lack it
        raise ImportError("model folders need the safetensors package: pip install safetensors") from None
    return st


def read_card(folder: str | Path) -> dict[str, Any]:
    """The card of a model folder, checked: plain JSON of this format, no unknown field, the fields' types."""
    path = Path(folder).expanduser() / CARD
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: not found; a model folder is written by `balanced-vae export RUN OUT`"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the model folder is damaged: export it again") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise CheckpointError(f'{path}: not a balanced-vae model card ("format": "{CARD_FORMAT}" missing)')
    if card.get("format_version") != CARD_VERSION:
        raise CheckpointError(
            f"{path}: card format_version {card.get('format_version')!r}; this balanced-vae "
            f"({__version__}) reads version {CARD_VERSION}: upgrade balanced-vae"
        )
    unknown = sorted(set(card) - CARD_FIELDS)
    if unknown:
        raise CheckpointError(
            f"{path}: unknown field(s) {unknown} in the card; valid fields: {sorted(CARD_FIELDS)}. "
            "Fix: remove them, or upgrade balanced-vae if a newer version wrote the folder"
        )
    missing = sorted(_REQUIRED - set(card))
    if missing:
        raise CheckpointError(f"{path}: the card lacks {missing}; the model folder is damaged: export it again")

    def need(ok: bool, field: str, what: str) -> None:
        if not ok:
            raise CheckpointError(f"{path}: field {field!r} must be {what}, not {card.get(field)!r}")

    need(isinstance(card["config"], dict), "config", "an object (the TrainConfig)")
    need(
        isinstance(card["shape"], list)
        and len(card["shape"]) >= 1
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in card["shape"]),
        "shape",
        "a list of positive integers",
    )
    need(card["stage"] in (1, 2), "stage", "1 or 2")
    need(
        card["sigma2_star"] is None
        or (
            isinstance(card["sigma2_star"], (int, float))
            and not isinstance(card["sigma2_star"], bool)
            and card["sigma2_star"] > 0
        ),
        "sigma2_star",
        "a positive number or null",
    )
    need(card["stage"] == 1 or card["sigma2_star"] is not None, "sigma2_star", "given for a stage-2 model")
    need(card.get("data") is None or isinstance(card["data"], dict), "data", "an object or null")
    need(isinstance(card.get("metrics", {}), dict), "metrics", "an object")
    w = card["weights"]
    need(
        isinstance(w, dict) and w.get("file") == WEIGHTS and isinstance(w.get("sha256"), str),
        "weights",
        f"an object with file {WEIGHTS!r} and its sha256",
    )
    g = card.get("gmm")
    if g is not None:
        need(
            isinstance(g, dict)
            and g.get("file") == GMM_WEIGHTS
            and isinstance(g.get("sha256"), str)
            and not set(g) - GMM_FIELDS,
            "gmm",
            f"null or an object with file {GMM_WEIGHTS!r}, its sha256 and the fields {sorted(GMM_FIELDS)}",
        )
    return card


def read_tensors(path: Path, sha256: str, card_path: Path) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path``, checked against the ``sha256`` that ``card_path`` gives."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {card_path} names it: export the model folder again")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(
            f"{path}: contents do not match the sha256 in {card_path} (damaged or replaced); "
            "export the model folder again"
        )
    try:
        return safetensors_torch().load(data)
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"{path}: not a safetensors file ({type(e).__name__}: {e})") from None


class SavedModel(NamedTuple):
    """What a model folder saved, read and checked but not yet built into a model."""

    config: TrainConfig
    checkpoint: dict[str, Any]  # what commands read of a checkpoint, from the card (no optimiser)
    card: dict[str, Any]


def read_saved_model(folder: str | Path, *, which: str | None = None) -> SavedModel:
    """The card, config and weights of a model folder, checked (plain JSON of this format, the weights'
    SHA-256, no networks to import), as a checkpoint dict of what commands read of one.

    ``which`` may be ``None``, ``"checkpoint.pt"`` (what a command asks for by default) or
    ``"model.safetensors"``: a model folder holds the final stage only.
    """
    folder = Path(folder).expanduser()
    if which not in (None, CHECKPOINT, WEIGHTS):
        raise CheckpointError(
            f"{folder}: a model folder holds the final stage's weights only ({WEIGHTS}), not "
            f"{which}; use the run folder it was exported from for other checkpoints"
        )
    card = read_card(folder)
    card_path = folder / CARD
    if card["config"].get("networks") is not None:
        raise CheckpointError(
            f"{card_path}: names networks to import ({card['config']['networks']}); a model "
            "folder is loaded without running code from it: load the run folder instead"
        )
    state = read_tensors(folder / WEIGHTS, card["weights"]["sha256"], card_path)
    checkpoint = {
        "model": state,
        "stage": card["stage"],
        "epoch": card.get("epoch"),
        "shape": card["shape"],
        "sigma2_star": card["sigma2_star"],
        "data": card.get("data"),
        "done": True,
        "commits": card.get("trained_by_commits") or [],
        "stops": (card.get("metrics") or {}).get(FINAL, {}).get("stops", {}),
    }
    return SavedModel(TrainConfig.from_dict(card["config"], source=str(card_path)), checkpoint, card)


def read_model_folder(folder: str | Path, *, which: str | None = None) -> ModelFolder:
    """What a model folder holds, read and checked (:func:`read_saved_model`): the model built from the
    card's config (stage 2: with the per-pixel head floored at sigma*^2) with the weights of
    ``model.safetensors``, and the card."""
    folder = Path(folder).expanduser()
    saved = read_saved_model(folder, which=which)
    model = build_trained(saved.config, saved.checkpoint, folder / WEIGHTS, folder / CARD)
    return ModelFolder(saved.config, model, int(saved.checkpoint["stage"]), saved.checkpoint, saved.card)


def card_gmm(run, components: int, fit_on: str, random_state: int, covariance_type: str):
    """The GMM saved in a model folder when it is the one asked for (K, codes, seed, covariances), else None."""
    g = run.card.get("gmm") if run.card else None
    if not g:
        return None
    asked = {
        "n_components": components,
        "fit_on": fit_on,
        "random_state": random_state,
        "covariance_type": covariance_type,
    }
    if any(g.get(k) != v for k, v in asked.items()):
        log.info(
            "%s: its GMM (K=%s, %s) is not the one asked for (%s); fitting in memory",
            run.path,
            g.get("n_components"),
            g.get("fit_on"),
            asked,
        )
        return None
    card_path = run.path / CARD
    t = read_tensors(run.path / GMM_WEIGHTS, g["sha256"], card_path)
    try:
        s = GaussianMixtureSampler.from_params(
            t["weights"].numpy(),
            t["means"].numpy(),
            t["covariances"].numpy(),
            covariance_type=covariance_type,
            fit_on=fit_on,
            random_state=random_state,
            max_iter=g.get("max_iter", 200),
            tol=g.get("tol"),
            reg_covar=g.get("reg_covar", 1e-6),
            n_init=g.get("n_init", 1),
            init_params=g.get("init_params") or "auto",
        )
    except (KeyError, ValueError) as e:
        raise CheckpointError(
            f"{run.path / GMM_WEIGHTS}: not the GMM {card_path} describes ({e}); export the model folder again"
        ) from None
    if s.n_components != g.get("n_components") or s.n_features_in_ != run.model.latent_dim:
        raise CheckpointError(
            f"{run.path / GMM_WEIGHTS}: holds K={s.n_components}, L={s.n_features_in_}; the card "
            f"and model say K={g.get('n_components')}, L={run.model.latent_dim}"
        )
    s.converged_, s.n_iter_ = bool(g.get("converged", True)), int(g.get("n_iter") or 0)
    s.lower_bound_ = float(g["lower_bound"]) if g.get("lower_bound") is not None else float("nan")
    s.n_fit_ = int(g.get("n_fit") or 0)
    if g.get("reg_covar_abs") is not None:
        s.reg_covar_ = float(g["reg_covar_abs"])
    if g.get("backend") in ("torch", "sklearn"):
        s.backend_ = g["backend"]
    _, s.init_params_, s.tol_ = s._resolved()  # the card's settings are the resolved ones of the fit
    s.source = {**(g.get("source") or {}), "model_folder": str(run.path)}
    return s
