"""`balanced-vae export`: a model folder of safetensors weights and a JSON card, loaded without torch.load (issue 30)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from balanced_vae.checkpoint import CHECKPOINT, CheckpointError
from balanced_vae.cli import main
from balanced_vae.config import TrainConfig
from balanced_vae.data import load_dataset
from balanced_vae.evaluate import evaluate_run
from balanced_vae.export import CARD, GMM_WEIGHTS, WEIGHTS, export_run, is_model_folder, read_card
from balanced_vae.runs import load_run, make_sampler
from balanced_vae.samplers import GaussianMixtureSampler
from balanced_vae.train import train

CONFIG = TrainConfig(method="learned", epochs=1, min_epochs=1, n_train=300, n_test=50)
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A finished two-stage run on the embedded digits and its model folder, written by the CLI."""
    root = tmp_path_factory.mktemp("export")
    run = train(CONFIG, root / "run", data=load_dataset("digits"), progress=False)
    assert main(["export", str(run), str(root / "model")]) == 0
    return run, root / "model"


@pytest.fixture
def no_torch_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called while loading a model folder")

    monkeypatch.setattr(torch, "load", refuse)


def test_the_folder_holds_safetensors_weights_and_a_card(exported):
    run_dir, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == sorted([CARD, GMM_WEIGHTS, WEIGHTS])
    card = json.loads((folder / CARD).read_text())
    run = load_run(run_dir)
    assert card["stage"] == 2 and card["shape"] == [1, 8, 8]
    assert card["sigma2_star"] == run.checkpoint["sigma2_star"]
    assert card["data"] == run.checkpoint["data"] and card["data"]["sha256"]
    assert card["config"] == json.loads(run.config.to_json())
    assert card["trained_by_commits"] == run.checkpoint["commits"]
    assert (
        card["metrics"]["final.json"]["test"]["elbo"]
        == json.loads((run_dir / "final.json").read_text())["test"]["elbo"]
    )
    assert card["gmm"]["n_components"] == 32 and card["gmm"]["fit_on"] == "mean"
    assert any(k.startswith("likelihood.head") for k in card_keys(folder))  # the per-pixel head of stage 2


def card_keys(folder):
    from safetensors import safe_open

    with safe_open(str(folder / WEIGHTS), "pt") as f:
        return list(f.keys())


def test_the_model_folder_gives_the_runs_outputs_without_torch_load(exported, no_torch_load, monkeypatch):
    run_dir, folder = exported
    monkeypatch.setattr(GaussianMixtureSampler, "fit", lambda *a, **k: pytest.fail("the GMM was refitted"))
    m = load_run(folder)
    assert is_model_folder(folder) and m.stage == 2 and m.card is not None
    z = make_sampler("gmm", m).sample(16, generator=torch.Generator().manual_seed(0))  # (16, L)
    mean, sigma = m.model.generate(z)
    assert mean.shape == (16, 1, 8, 8) and torch.isfinite(sigma).all()
    monkeypatch.undo()  # torch.load back, for the run's checkpoint
    run = load_run(run_dir)
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, m.model.state_dict()[k]), k
    ref = make_sampler("gmm", run).sample(16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ref, z)
    assert torch.equal(run.model.generate(z)[0], mean)


def test_commands_take_the_model_folder(exported, no_torch_load, tmp_path, capsys):
    _, folder = exported
    assert main(["sample", str(folder), "--n", "8", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "gmm_sigma.npy").is_file()
    assert main(["evaluate", str(folder), "--metrics", "elbo", "--out", str(tmp_path / "r.json")]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["metrics"]["elbo"]["provenance"]["checkpoint"] == WEIGHTS
    capsys.readouterr()
    # a model folder's own files are never written over
    assert main(["evaluate", str(folder), "--metrics", "elbo", "--out", str(folder / CARD)]) == 2
    assert "own record" in capsys.readouterr().err
    assert main(["evaluate", str(folder), "--checkpoint", "stage1.pt", "--out", str(tmp_path / "s1.json")]) == 2
    assert "final stage's weights only" in capsys.readouterr().err


def test_evaluate_scores_the_same_model(exported, tmp_path):
    run_dir, folder = exported
    a = evaluate_run(run_dir, metrics="elbo", out=tmp_path / "a.json", progress=False)
    b = evaluate_run(folder, metrics="elbo", out=tmp_path / "b.json", progress=False)
    assert a["metrics"]["elbo"]["values"] == b["metrics"]["elbo"]["values"]


def test_an_exported_folder_loads_and_samples_in_a_fresh_process(exported, tmp_path):
    _, folder = exported
    script = (
        "import sys, torch\n"
        "def refuse(*a, **k): raise SystemExit('torch.load called')\n"
        "torch.load = refuse\n"
        "from balanced_vae.runs import load_run, make_sampler\n"
        "run = load_run(sys.argv[1])\n"
        "z = make_sampler('gmm', run).sample(4, generator=torch.Generator().manual_seed(0))\n"
        "mean, sigma = run.model.generate(z)\n"
        "print(tuple(mean.shape), run.stage, float(sigma.min()) > 0)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "BALANCED_VAE_DATA": str(tmp_path / "no-data"),
    }  # the GMM comes from the folder: no data needed
    out = subprocess.run(
        [sys.executable, "-c", script, str(folder)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(4,", "1,", "8,", "8)", "2", "True"]


def _copy(folder: Path, dest: Path) -> Path:
    dest.mkdir()
    for p in folder.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


def test_a_card_is_checked_and_named_in_every_error(exported, tmp_path, no_torch_load):
    _, folder = exported
    bad = _copy(folder, tmp_path / "unknown")
    card = json.loads((bad / CARD).read_text())
    (bad / CARD).write_text(json.dumps({**card, "code": "import os"}))
    with pytest.raises(CheckpointError, match=rf"{bad / CARD}.*unknown field.*'code'"):
        load_run(bad)
    (bad / CARD).write_text(json.dumps({**card, "config": {**card["config"], "hidden": 1}}))
    with pytest.raises(ValueError, match=rf"{bad / CARD}.*unknown config field"):
        load_run(bad)
    (bad / CARD).write_text(json.dumps({**card, "stage": 3}))
    with pytest.raises(CheckpointError, match="'stage' must be 1 or 2"):
        read_card(bad)
    (bad / CARD).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_run(bad)
    damaged = _copy(folder, tmp_path / "damaged")
    data = bytearray((damaged / WEIGHTS).read_bytes())
    data[-1] ^= 1
    (damaged / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the sha256"):
        load_run(damaged)


def test_export_follows_the_write_rule(exported, tmp_path, capsys):
    run_dir, folder = exported
    assert main(["export", str(run_dir), str(folder)]) == 0  # a folder export made: written again
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / CARD).write_text("{}")
    assert main(["export", str(run_dir), str(tmp_path / "mine")]) == 2  # a file it did not make
    assert (tmp_path / "mine" / CARD).read_text() == "{}"
    assert main(["export", str(run_dir), str(run_dir / CHECKPOINT)]) == 2
    assert main(["export", str(folder), str(tmp_path / "again")]) == 2  # a model folder is copied, not exported
    assert "already a model folder" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


def test_export_without_the_gmm_needs_no_data(exported, tmp_path):
    run_dir, _ = exported
    out = export_run(run_dir, tmp_path / "m", gmm=False)
    assert not (out / GMM_WEIGHTS).exists() and read_card(out)["gmm"] is None
    assert load_run(out).model.latent_dim == CONFIG.resolved((1, 8, 8)).latent_dim
