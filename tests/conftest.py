"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Directory holding mnist/ and fashion-mnist/ IDX files.

    ``BALANCED_VAE_DATA`` if set, else ``../shared/data`` beside the repository.
    """
    env = os.environ.get("BALANCED_VAE_DATA")
    repo_default = Path(__file__).resolve().parents[2] / "shared" / "data"
    path = Path(env).expanduser() if env else repo_default
    if not (path / "mnist").is_dir():
        if os.environ.get("CI", "").lower() == "true":   # CI must run the real-data checks, never skip them
            pytest.fail(f"CI: real MNIST data not found at {path / 'mnist'}; CI needs ../shared/data or "
                        "BALANCED_VAE_DATA", pytrace=False)
        pytest.skip(
            f"real MNIST data not found at {path / 'mnist'}; set BALANCED_VAE_DATA to a "
            "directory holding mnist/ and fashion-mnist/ IDX files"
        )
    return path
