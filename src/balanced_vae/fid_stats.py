"""Cached statistics of real images for FID (paper Section 5, Table 2).

Real-set statistics (mean (2048,), covariance (2048, 2048), float64) are cached as ``.npz``
files keyed by data set, split, count and a digest of the preprocessing and the network
file (:mod:`balanced_vae.fid`), in the folder :mod:`balanced_vae.fid_cache` names.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import fid as fid_module  # the network's calls, looked up when used (tests put a stand-in there)
from .atomic import atomic_write
from .data import load_dataset
from .fid import backend_protocol, check_fid_images
from .fid_cache import cache_dirs, requested_cache_dir, safe_name
from .metrics import gaussian_statistics

log = logging.getLogger("balanced_vae.fid")  # one logger for FID, as before the module was split


def statistics_key(dataset: str, split: str, n: int, extractor_id: dict[str, Any]) -> str:
    """File name of cached statistics: data set, split, count and a digest of the extractor."""
    digest = hashlib.sha1(json.dumps(extractor_id, sort_keys=True).encode()).hexdigest()[:12]
    return f"{safe_name(dataset)}-{split}-n{n}-{digest}.npz"


_NOT_COMPARED = ("backend",)


def _read_statistics(path: Path, meta: dict) -> tuple[np.ndarray, np.ndarray, dict] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(str(z["meta"]))
            mu, cov = z["mu"], z["cov"]
    except Exception as e:  # a damaged cache is recomputed, never trusted
        log.warning("%s: unreadable FID statistics cache (%s: %s); recomputing", path, type(e).__name__, e)
        return None
    strip = lambda d: {k: v for k, v in d.items() if k not in _NOT_COMPARED}  # noqa: E731
    if strip(stored) != strip(meta) or mu.shape != (cov.shape[0],):
        log.warning("%s: cached statistics were made with another protocol; recomputing", path)
        return None
    return mu, cov, stored


def real_statistics(
    dataset: str,
    x: torch.Tensor | None = None,
    *,
    split: str = "test",
    n: int = 10_000,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    progress: bool = True,
    backend: str = "auto",
    extractor: Callable[[torch.Tensor], torch.Tensor] | None = None,
    extractor_id: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Mean (F,) and covariance (F, F) of the features of the first ``n`` images of a split, cached.

    ``x`` (M, C, H, W) holds the split's images (M >= n); when omitted, ``dataset`` is
    loaded with :func:`balanced_vae.data.load_dataset`. The cache file
    (``statistics_key``) lives in ``cache_dir``, default ``<data dir>/fid-stats`` (see
    :func:`fid_cache_dir` for a read-only folder); it is reused only when its recorded
    protocol equals this one. The key does not hold the feature ``backend`` (torch and
    OpenVINO features agree to ~1e-5); the file records the backend that made it.
    ``extractor`` replaces the Inception network (x -> features); it then needs an
    ``extractor_id`` for the key. Returns ``(mu, cov, protocol)``; ``protocol`` records
    data set, split, count, extractor, the backend that made the statistics and whether
    the cache was hit.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; choose 'train' or 'test'")
    if extractor is not None and extractor_id is None:
        raise ValueError("real_statistics: a custom extractor needs an extractor_id (a dict) for the cache key")
    ext_id = extractor_id if extractor is not None else fid_module.inception_protocol()
    if x is None:
        data = load_dataset(dataset, data_dir=data_dir)
        x = data.x_train if split == "train" else data.x_test
    if not 2 <= n <= len(x):
        raise ValueError(
            f"n={n}: the {dataset} {split} split has {len(x)} images; FID statistics need "
            f"2 <= n <= {len(x)} (lower --n-fid)"
        )
    meta = {
        "dataset": dataset,
        "split": split,
        "n": int(n),
        "images": f"first {n}",
        "shape": list(x.shape[1:]),
        "extractor": ext_id,
        "backend": {"name": "custom extractor"} if extractor is not None else backend_protocol(backend, device),
    }
    folders = cache_dirs(requested_cache_dir(cache_dir, data_dir))
    key = statistics_key(dataset, split, n, ext_id)
    for path in (f / key for f in folders):
        if path.is_file():
            cached = _read_statistics(path, meta)
            if cached is not None:
                log.info("FID statistics of %s %s (n=%d) read from %s", dataset, split, n, path)
                return (
                    cached[0],
                    cached[1],
                    {
                        **cached[2],
                        "backend": cached[2].get("backend", "not recorded"),
                        "cache": str(path),
                        "cache_hit": True,
                    },
                )

    check_fid_images(x[:n], f"{dataset} {split}")
    if extractor is not None:
        feats = extractor(x[:n])
    else:
        feats = fid_module.inception_features(
            x[:n],
            batch_size=batch_size,
            device=device,
            backend=backend,
            cache_dir=requested_cache_dir(cache_dir, data_dir),
            progress=progress,
            desc=f"{dataset} {split} features",
        )
    mu, cov = gaussian_statistics(feats)
    folder = folders[0]
    path = folder / key
    folder.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, mu=mu, cov=cov, meta=np.array(json.dumps(meta, sort_keys=True)))

    atomic_write(path, write)
    log.info("FID statistics of %s %s (n=%d) cached in %s", dataset, split, n, path)
    return mu, cov, {**meta, "cache": str(path), "cache_hit": False}
