"""Shared pytest fixtures."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch


def _missing(name: str, path: Path, hint: str) -> None:
    """Fail under ``CI=true`` (CI must run the real-data checks, never skip them), else skip."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI: real {name} data not found at {path}; {hint}", pytrace=False)
    pytest.skip(f"real {name} data not found at {path}; {hint}")


@pytest.fixture(autouse=True, scope="session")
def _cores_shared_between_workers():
    """Under pytest-xdist (``-n N``), each worker's torch gets its share of the cores, not all of them.

    N workers of all the cores each would oversubscribe the machine (2 cores: two workers at one
    thread each ran the suite faster than one process at two threads).
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // workers))
    yield


@pytest.fixture(autouse=True, scope="session")
def _made_paths_record(tmp_path_factory):
    """Keep the record of paths balanced-vae made (:mod:`balanced_vae.writes`) out of the user's home."""
    old = os.environ.get("BALANCED_VAE_STATE")
    os.environ["BALANCED_VAE_STATE"] = str(tmp_path_factory.mktemp("state"))
    yield
    if old is None:
        os.environ.pop("BALANCED_VAE_STATE", None)
    else:
        os.environ["BALANCED_VAE_STATE"] = old


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Directory holding mnist/ and fashion-mnist/ IDX files.

    ``BALANCED_VAE_DATA`` if set, else ``../shared/data`` beside the repository.
    """
    env = os.environ.get("BALANCED_VAE_DATA")
    repo_default = Path(__file__).resolve().parents[2] / "shared" / "data"
    path = Path(env).expanduser() if env else repo_default
    if not (path / "mnist").is_dir():
        _missing(
            "MNIST",
            path / "mnist",
            "set BALANCED_VAE_DATA to a directory holding mnist/ and "
            "fashion-mnist/ IDX files (CI needs ../shared/data beside the repository)",
        )
    return path


@pytest.fixture(scope="session")
def real_dataset(data_dir):
    """``real_dataset(name)``: the folder of data set ``name`` under :func:`data_dir`, or skip (fail under CI)."""

    def need(name: str) -> Path:
        if not (data_dir / name).is_dir():
            _missing(name, data_dir / name, f"put the {name}/ IDX files in {data_dir}")
        return data_dir / name

    return need


@pytest.fixture(scope="session")
def bench_script():
    """``bench_script(name)``: the module of ``bench/<name>.py`` (scripts, not a package), loaded once."""
    loaded: dict = {}

    def load(name: str):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(
                name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
            )
            loaded[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded[name])
        return loaded[name]

    return load


@pytest.fixture
def stand_in_inception(monkeypatch):
    """``stand_in_inception(pool=2, record=None, path=None)``: replace the Inception network by
    average pooling over ``pool`` x ``pool`` blocks of the channel mean ((N, C, H, W) -> (N, H*W/pool^2)),
    so FID plumbing runs without the network; the network itself is tested in test_fid.py.

    Returns the list of calls, each ``record(x, kwargs)`` (default: the batch size ``len(x)``).
    ``path`` also stands in for the network file, for records that name it.
    """
    from balanced_vae import fid

    def patch(pool: int = 2, record=None, path=None) -> list:
        calls = []

        def features(x, **kw):
            calls.append(record(x, kw) if record else len(x))
            return torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), pool).flatten(1)

        protocol = {"implementation": f"pool{pool} stand-in"}
        # every caller looks these up in balanced_vae.fid when it runs (fid_stats, fid_sets, run_metrics, evaluate)
        monkeypatch.setattr(fid, "inception_features", features)
        monkeypatch.setattr(fid, "inception_protocol", lambda *a: protocol)
        if path is not None:
            monkeypatch.setattr(fid, "inception_path", lambda: path)
        return calls

    return patch
