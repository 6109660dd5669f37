"""Improved precision and recall of generated samples (Kynkaanniemi et al. 2019).

FID (Figure 1, Table 2) folds two failures into one number: samples that do not look
like data (fidelity) and data that no sample resembles (coverage). Kynkaanniemi,
Karras, Laine, Lehtinen and Aila (2019), "Improved Precision and Recall Metric for
Assessing Generative Models", separate them on the same Inception features as FID:

* each feature vector phi of a set Phi spans a ball whose radius is the distance to its
  k-th nearest neighbour in Phi (k = 3 in the paper); the union of the balls estimates
  the support (the "manifold") of the set;
* precision = fraction of generated features inside the real manifold,
* recall = fraction of real features inside the generated manifold.

:func:`improved_precision_recall` is a pure function of two feature matrices; the
features themselves come from :mod:`balanced_vae.fid` (``evaluate --metrics pr``).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import pairwise_distances
from sklearn.neighbors import NearestNeighbors

__all__ = ["improved_precision_recall", "knn_radii", "manifold_coverage"]


def _as_features(f, name: str) -> np.ndarray:
    a = np.asarray(f.detach().cpu() if isinstance(f, torch.Tensor) else f, dtype=np.float64)
    if a.ndim != 2 or len(a) < 2:
        raise ValueError(f"{name} features have shape {a.shape}; need (N, F) with N >= 2")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} features contain NaN or inf; check the images they were computed from")
    return a


def knn_radii(features: np.ndarray, k: int = 3) -> np.ndarray:
    """Distance of each feature (N, F) to its k-th nearest neighbour in the same set, itself excluded: (N,).

    Uses scikit-learn's exact ``NearestNeighbors`` (Euclidean).
    """
    if not 1 <= k < len(features):
        raise ValueError(f"k={k} nearest neighbours need at least k + 1 = {k + 1} features; got {len(features)}")
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(features).kneighbors(features)  # (N, k+1), self first
    return dist[:, k]


def manifold_coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """For each query (M, F): is it inside some ball ||q - m_i|| <= r_i of the manifold (N, F), radii (N,)? -> (M,) bool.

    Distances are computed ``chunk`` queries at a time, so memory stays O(chunk N).
    """
    inside = np.empty(len(queries), dtype=bool)
    for i in range(0, len(queries), chunk):
        d = pairwise_distances(queries[i : i + chunk], manifold)  # (c, N)
        inside[i : i + chunk] = (d <= radii[None, :]).any(axis=1)
    return inside


def improved_precision_recall(real, generated, k: int = 3) -> dict:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of features real (N, F) and generated (M, F).

    Returns ``precision`` (fraction of generated features within the k-NN manifold of the
    real ones: fidelity), ``recall`` (fraction of real features within the k-NN manifold
    of the generated ones: coverage), ``k``, ``n_real`` and ``n_generated``. Identical
    sets give 1 and 1; sets further apart than every radius give 0 and 0. Both figures
    depend on N, M and k, so compare them only at equal counts.
    """
    r = _as_features(real, "real")
    g = _as_features(generated, "generated")
    if r.shape[1] != g.shape[1]:
        raise ValueError(
            f"real features are (N, {r.shape[1]}) but generated are (M, {g.shape[1]}); "
            "compute both with the same feature extractor"
        )
    precision = float(manifold_coverage(r, knn_radii(r, k), g).mean())
    recall = float(manifold_coverage(g, knn_radii(g, k), r).mean())
    return {"precision": precision, "recall": recall, "k": int(k), "n_real": len(r), "n_generated": len(g)}
