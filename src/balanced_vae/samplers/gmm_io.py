"""A fitted Gaussian mixture on disk: ``gmm.npz`` (weights, means, covariances; no pickle) beside
``gmm.json`` (its settings, fit and source, with the arrays' SHA-256), each written atomically.

:meth:`~balanced_vae.samplers.GaussianMixtureSampler.save` and ``.load`` go through here.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write, write_json_atomic

__all__ = ["GMM_ARRAYS", "GMM_FORMAT_VERSION", "GMM_META", "check_shapes", "gmm_meta", "read_gmm", "write_gmm"]

GMM_ARRAYS = "gmm.npz"
GMM_META = "gmm.json"
GMM_FORMAT_VERSION = 1


def gmm_meta(s: Any) -> dict:
    """The JSON record of a fitted sampler ``s``: its settings (those a fit used), its fit and its shape."""
    return {
        "format_version": GMM_FORMAT_VERSION,
        "kind": "GaussianMixtureSampler",
        "n_components": s.n_components,
        "latent_dim": s.n_features_in_,
        "covariance_type": s.covariance_type,
        "fit_on": s.fit_on,
        "random_state": s.random_state,
        "max_iter": s.max_iter,
        "tol": getattr(s, "tol_", s.tol),  # the settings a fit used
        "reg_covar": s.reg_covar,
        "n_init": s.n_init,
        "init_params": getattr(s, "init_params_", s.init_params),
        "backend": getattr(s, "backend_", s.backend),
        "reg_covar_abs": getattr(s, "reg_covar_", None),
        "converged": s.converged_,
        "n_iter": s.n_iter_,
        "lower_bound": s.lower_bound_ if math.isfinite(s.lower_bound_) else None,
        "n_fit": s.n_fit_,
        "fit_seconds": getattr(s, "fit_seconds_", None),
    }


def write_gmm(s: Any, directory: str | Path, extra: dict | None = None) -> Path:
    """Write the fitted sampler ``s`` into ``directory`` (``extra`` under ``"source"`` in the JSON); returns it."""
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, weights=s.weights_.numpy(), means=s.means_.numpy(), covariances=s.covariances_.numpy())
    data = buf.getvalue()
    atomic_write(directory / GMM_ARRAYS, lambda tmp: Path(tmp).write_bytes(data))
    meta = {**gmm_meta(s), "arrays_sha256": hashlib.sha256(data).hexdigest(), "source": extra or {}}
    write_json_atomic(directory / GMM_META, meta)
    return directory


def read_gmm(directory: str | Path) -> tuple[dict, tuple[np.ndarray, np.ndarray, np.ndarray], Path]:
    """The JSON record and the arrays (weights (K,), means (K, L), covariances (K, L, L)) saved in
    ``directory``, checked against each other, and the arrays' path (for messages)."""
    directory = Path(directory).expanduser()
    meta_path, arr_path = directory / GMM_META, directory / GMM_ARRAYS
    for p in (meta_path, arr_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p}: missing; {directory} is not a saved GaussianMixtureSampler "
                "(fit one with GaussianMixtureSampler(...).fit(mu).save(dir))"
            )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path}: not valid JSON ({e}); delete {directory} and refit") from None
    if meta.get("format_version") != GMM_FORMAT_VERSION or meta.get("kind") != "GaussianMixtureSampler":
        raise ValueError(
            f"{meta_path}: not a GaussianMixtureSampler of format {GMM_FORMAT_VERSION}; delete {directory} and refit"
        )
    data = arr_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.get("arrays_sha256"):
        raise ValueError(
            f"{arr_path}: contents do not match the checksum in {meta_path} (a partial or "
            f"mixed save); delete {directory} and refit"
        )
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = (z["weights"], z["means"], z["covariances"])
    return meta, arrays, arr_path


def check_shapes(s: Any, meta: dict, arr_path: Path) -> None:
    """A ValueError when the sampler ``s`` built from the arrays at ``arr_path`` is not the K x L its record says."""
    if s.n_components != meta["n_components"] or s.n_features_in_ != meta["latent_dim"]:
        raise ValueError(
            f"{arr_path}: arrays hold K={s.n_components}, L={s.n_features_in_} but {arr_path.with_name(GMM_META)} "
            f"says K={meta['n_components']}, L={meta['latent_dim']}; delete {arr_path.parent} and refit"
        )
