"""Data-parallel training under torchrun (gloo, 2 CPU processes) against one process (issue 11)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from balanced_vae.checkpoint import load_checkpoint

SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from balanced_vae import likelihoods, train as train_mod
    from balanced_vae.config import TrainConfig
    from balanced_vae.data import load_dataset
    from balanced_vae.distributed import init_from_env, rank_world, shutdown
    from balanced_vae.model import VAE

    out, data_dir, method, epochs, stop_after, resume, deterministic = sys.argv[1:8]
    if deterministic == "1":   # z = mu: no sampling noise, so one process and two must agree step for step
        VAE.reparameterise = staticmethod(lambda mu, logvar, generator=None, k=None: mu)
    init_from_env("cpu")
    rank = rank_world()[0]
    seen = []
    original = likelihoods.closed_form_sigma2  # Eq. 10's pass, as the likelihood runs it each epoch
    def recording(*a, **kw):
        seen.append(original(*a, **kw))
        return seen[-1]
    likelihoods.closed_form_sigma2 = recording
    data = load_dataset("mnist", data_dir=data_dir)
    config = TrainConfig(dataset="mnist", method=method, n_train=1024, n_val=256, batch_size=64, width=8,
                         latent_dim=4, epochs=int(epochs), min_epochs=int(epochs), stages=2, seed=0)
    train_mod.train(config, out, data=data, progress=False, device="cpu",
                    stop_after=None if stop_after == "0" else int(stop_after), resume=resume == "1")
    with open(f"{out}/sigma2_rank{rank}.json", "w") as f:
        json.dump(seen, f)
    shutdown()
""")


def _run(tmp_path, out, data_dir, *, procs, method="learned", epochs=1, stop_after=0, resume=False, deterministic=True):
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    args = [
        str(out),
        str(data_dir),
        method,
        str(epochs),
        str(stop_after),
        "1" if resume else "0",
        "1" if deterministic else "0",
    ]
    cmd = (
        [sys.executable, str(script), *args]
        if procs == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(procs),
            str(script),
            *args,
        ]
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def data_dir_(data_dir):
    return data_dir


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path, data_dir_):
    """Both stages of Algorithm 1: 2 gloo ranks with 32 images each per step give the parameters
    of one process with the 64-image global batch, and both ranks hold the same sigma*^2."""
    _run(tmp_path, tmp_path / "one", data_dir_, procs=1)
    _run(tmp_path, tmp_path / "two", data_dir_, procs=2)
    a, b = load_checkpoint(tmp_path / "one" / "checkpoint.pt"), load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert a["stage"] == b["stage"] == 2
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5), k
    assert b["sigma2_star"] == pytest.approx(a["sigma2_star"], rel=1e-5)
    r0 = json.loads((tmp_path / "two" / "sigma2_rank0.json").read_text())
    r1 = json.loads((tmp_path / "two" / "sigma2_rank1.json").read_text())
    assert r0 == r1 and r0 == pytest.approx(json.loads((tmp_path / "one" / "sigma2_rank0.json").read_text()), rel=1e-5)


def test_torchrun_resume_equals_uninterrupted(tmp_path, data_dir_):
    """Stochastic z, 2 ranks: stop after the first epoch, resume under torchrun, same weights bit for bit."""
    _run(tmp_path, tmp_path / "straight", data_dir_, procs=2, method="vae", epochs=2, deterministic=False)
    _run(tmp_path, tmp_path / "part", data_dir_, procs=2, method="vae", epochs=2, stop_after=1, deterministic=False)
    assert not (tmp_path / "part" / "final.json").exists()
    _run(tmp_path, tmp_path / "part", data_dir_, procs=2, method="vae", epochs=2, resume=True, deterministic=False)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert a["done"] and b["done"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
