"""The OpenVINO backend of FID's Inception network: the same ``default_1.pt`` weights, compiled for the CPU.

The TorchScript module of :mod:`balanced_vae.fid_inception` is converted once with
``openvino.convert_model`` and compiled for the CPU in FP32 (``INFERENCE_PRECISION_HINT=f32``,
latency hint, as many threads as torch uses). The converted IR (``.xml`` + ``.bin``) is cached
beside the real-set statistics (:mod:`balanced_vae.fid_cache`), keyed by the network file's
digest and the OpenVINO version. Its features equal the TorchScript ones to about 1e-5 (max abs)
and it runs about 2x faster on a 2-core CPU (``bench/feature_throughput.py``). Preprocessing is
always done in torch (:func:`balanced_vae.fid.preprocess`); :func:`balanced_vae.fid.feature_network`
picks the backend.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .fid_cache import cache_dirs, requested_cache_dir, safe_name
from .fid_inception import INPUT_SIZE, inception_digest, inception_path, load_inception

log = logging.getLogger("balanced_vae.fid")  # one logger for FID, as before the module was split

__all__ = [
    "OPENVINO_CONFIG",
    "OPENVINO_INFER_BATCH",
    "OpenVINOInception",
    "load_openvino_inception",
    "openvino_available",
    "openvino_ir",
    "openvino_version",
]

# FP32 on the CPU. On 2 cores (bench/feature_throughput.py --sweep) infer batches of 1-16 and
# the LATENCY / THROUGHPUT hints (1 stream sync / 2 streams async) all ran at 15-19 images/s:
# the network is compute-bound; latency with batches of 4 is simple and as fast as any.
# No CPU pinning: OpenVINO pins its threads to the first cores by default, so two processes
# with one thread each (`reproduce --jobs 2`) both ran on core 0, each at half speed, while
# core 1 idled: 4.5 images/s per worker pinned, 8.9 unpinned (bench/openvino_pinning.py).
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": "NO"}
OPENVINO_INFER_BATCH = 4
_IR_RECIPE = 1  # bump when the conversion below changes, so cached IRs of the old recipe are not reused


def openvino_available() -> bool:
    """Whether the ``openvino`` package is importable (found without importing it)."""
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def openvino_version() -> str:
    """The installed OpenVINO's version string (part of the IR's cache key and of the FID protocol)."""
    import openvino as ov

    return ov.get_version()


def openvino_ir(path: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """The OpenVINO IR (``.xml``; weights in the ``.bin`` beside it) of the TorchScript network.

    Converted once with ``openvino.convert_model`` straight from the TorchScript module
    (FP32 weights, not compressed) and cached as
    ``inception-<sha1 of the network file>-ov<OpenVINO version>-r<recipe>.xml`` in
    :func:`~balanced_vae.fid_cache.fid_cache_dir`; the ``.bin`` and then the ``.xml`` are renamed
    into place, so an ``.xml`` is only ever there with its whole ``.bin``.
    """
    import openvino as ov

    path = Path(path) if path is not None else inception_path()
    stem = f"inception-{inception_digest(str(path))[:16]}-ov{safe_name(openvino_version())}-r{_IR_RECIPE}"
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
