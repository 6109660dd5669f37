"""A model folder to share: safetensors weights and a JSON card; loading it runs no code from a file.

``balanced-vae export RUN OUT`` (:func:`export_run`) writes ``OUT/`` with

* ``model.safetensors``: the weights of the model that ``evaluate`` scores (the run's final
  stage: for Algorithm 1 the stage-2 model with its per-pixel variance head, Eq. 11);
* ``gmm.safetensors``: the GMM of Eq. 13 fitted on the run's training codes (``weights`` (K,),
  ``means`` (K, L), ``covariances`` (K, L, L), float64), so that sampling needs no refit;
* ``model.json``: the card, plain JSON: the full config, the image shape, stage, sigma*^2 (Eq. 10),
  the data fingerprint, the training commit(s), the checksums of both weight files, the GMM's
  settings, and every metric the run recorded with its protocol (``final.json``, ``results*.json``,
  ``eval/*.json``).

:func:`load_model_folder` (and so :func:`balanced_vae.runs.load_run` and every command that takes a
RUN) rebuilds the model from the card with :func:`balanced_vae.methods.build_model` and
``load_state_dict``; weights are read by ``safetensors`` (no ``torch.load``, no unpickling) and
checked against the card's SHA-256. A card with fields this version does not know is refused,
naming the file. Reading a folder is :mod:`balanced_vae.model_card`; its names are importable from
here as before.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write, write_json_atomic
from .checkpoint import FINAL, file_digest
from .model_card import (
    CARD,
    CARD_FIELDS,
    CARD_FORMAT,
    CARD_VERSION,
    GMM_FIELDS,
    GMM_WEIGHTS,
    MODEL_FILES,
    WEIGHTS,
    card_gmm,
    is_model_folder,
    read_card,
    safetensors_torch,
)
from .provenance import provenance
from .runs import Run, as_run, fit_gmm_for_run, model_sha256
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
    "card_gmm",
    "export_run",
    "is_model_folder",
    "load_model_folder",
    "read_card",
]


def _records(run_dir: Path) -> dict[str, Any]:
    """The run's recorded metrics with their protocol: final.json, results*.json and eval/*.json."""
    out: dict[str, Any] = {}
    files = (
        ([run_dir / FINAL] if (run_dir / FINAL).is_file() else [])
        + sorted(run_dir.glob("results*.json"))
        + sorted((run_dir / "eval").glob("*.json"))
    )
    for f in files:
        try:
            out[f.relative_to(run_dir).as_posix()] = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            log.warning("%s: not copied to the model card (%s)", f, e)
    return out


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    st = safetensors_torch()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: st.save_file(tensors, str(tmp), metadata=metadata))


def export_run(
    run, out: str | Path, *, components: int | None = None, gmm: bool = True, data_dir: str | Path | None = None
) -> Path:
    """Write the model folder ``out`` (module docstring) of ``run`` (a :class:`~balanced_vae.runs.Run` or its
    folder): the weights of its ``checkpoint.pt``, its card and, unless ``gmm=False``, the GMM of Eq. 13
    with ``components`` (default: the paper's K for the image shape) fitted on the posterior means of
    its training codes (reused from ``RUN/gmm_K{K}/`` when fitted from the same weights). Returns ``out``.

    ``out`` must be new or empty; the caller (the CLI) applies the write rule of :mod:`balanced_vae.writes`.
    """
    run = as_run(run)
    if run.card is not None:
        raise ValueError(f"{run.path}: is already a model folder; copy it to share it")
    if run.config.networks is not None:
        raise ValueError(
            f"{run.path}: trained with your own networks ({run.config.networks}); a model folder "
            "holds no code, so it cannot rebuild them: share the run folder and your module instead"
        )
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(p.name not in MODEL_FILES for p in out.iterdir())):
        raise ValueError(
            f"{out}: exists and is not an empty folder or a model folder; fix: give a new folder to export into"
        )
    ckpt = run.checkpoint
    gmm_card: dict[str, Any] | None = None
    gmm_tensors: dict[str, torch.Tensor] | None = None
    if gmm:
        s = fit_gmm_for_run(
            run, components if components is not None else run.default_components, fit_on="mean", data_dir=data_dir
        )
        gmm_tensors = {"weights": s.weights_, "means": s.means_, "covariances": s.covariances_}
        gmm_card = {k: v for k, v in s._meta().items() if k in GMM_FIELDS}
        gmm_card["source"] = {k: v for k, v in getattr(s, "source", {}).items()}
    out.mkdir(parents=True, exist_ok=True)
    state = run.model.state_dict()
    _write_safetensors(out / WEIGHTS, state, {"format": CARD_FORMAT, "stage": str(run.stage)})
    if gmm_tensors is None or gmm_card is None:
        (out / GMM_WEIGHTS).unlink(missing_ok=True)  # a model folder exported before, with its GMM
    else:
        _write_safetensors(out / GMM_WEIGHTS, gmm_tensors, {"format": CARD_FORMAT, "kind": "gmm"})
        gmm_card.update(file=GMM_WEIGHTS, sha256=file_digest(out / GMM_WEIGHTS))
    final = json.loads((run.path / FINAL).read_text()) if (run.path / FINAL).is_file() else {}
    commits = list(ckpt.get("commits") or final.get("trained_by_commits") or [])
    card = {
        "format": CARD_FORMAT,
        "format_version": CARD_VERSION,
        "library_version": __version__,
        "config": dataclasses.asdict(run.config),
        "shape": list(run.shape),
        "stage": run.stage,
        "epoch": ckpt.get("epoch"),
        "sigma2_star": ckpt.get("sigma2_star"),
        "data": ckpt.get("data"),
        "trained_by_commits": commits,
        "weights": {
            "file": WEIGHTS,
            "sha256": file_digest(out / WEIGHTS),
            "model_sha256": model_sha256(run.model),
            "tensors": len(state),
            "parameters": int(sum(t.numel() for t in state.values())),
        },
        "gmm": gmm_card,
        "metrics": _records(run.path),
        "source": {
            "run": str(run.path),
            "checkpoint": run.which,
            "checkpoint_sha256": file_digest(run.path / run.which),
            "done": ckpt.get("done"),
        },
        "exported_by": provenance(),
    }
    if not commits:
        card["source"]["note"] = "trained before checkpoints recorded their commit; see the metrics' provenance"
    write_json_atomic(out / CARD, card)
    return out


def load_model_folder(folder: str | Path, *, which: str | None = None) -> Run:
    """The :class:`~balanced_vae.runs.Run` of a model folder (:func:`~balanced_vae.model_card.read_model_folder`):
    the model built from the card's config with the weights of ``model.safetensors``.

    ``which`` may be ``None``, ``"checkpoint.pt"`` (what a command asks for by default) or
    ``"model.safetensors"``: a model folder holds the final stage only.
    """
    return Run.from_model_folder(folder, which=which)
