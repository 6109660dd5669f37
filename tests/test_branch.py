"""`train --branch-from`: stage 2 started at another run's stage switch equals a run from scratch."""

import dataclasses
import json

import pytest
import torch

from balanced_vae.checkpoint import CheckpointError, load_checkpoint, slim_checkpoint
from balanced_vae.cli import main
from balanced_vae.config import TrainConfig
from balanced_vae.data import load_dataset
from balanced_vae.plots import read_metrics
from balanced_vae.train import train

FLOORED = TrainConfig(
    method="learned", stages=2, epochs=2, min_epochs=2, n_train=300, n_test=100, batch_size=32, seed=3
)
FLOOR0 = dataclasses.replace(FLOORED, pixel_floor=0.0)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def floored(digits, tmp_path_factory):
    return train(FLOORED, tmp_path_factory.mktemp("floored") / "run", data=digits, progress=False)


def _rows(run):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(run / "metrics.jsonl")]


def test_branch_equals_a_run_from_scratch(floored, digits, tmp_path):
    """The floor-0 run branched at the floored run's switch == the floor-0 run trained from scratch:
    the same weights bit for bit, the same log lines (but the seconds), the same test numbers."""
    scratch = train(FLOOR0, tmp_path / "scratch", data=digits, progress=False)
    branch = train(FLOOR0, tmp_path / "branch", data=digits, progress=False, branch_from=floored)
    a, b = load_checkpoint(scratch / "checkpoint.pt"), load_checkpoint(branch / "checkpoint.pt")
    assert a["done"] and b["done"] and a["stage"] == b["stage"] == 2
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert _rows(scratch) == _rows(branch) and len(_rows(branch)) == 4
    fa, fb = (json.loads((r / "final.json").read_text()) for r in (scratch, branch))
    assert fa["test"] == fb["test"]
    assert fb["stops"]["1"]["epochs"] == 2 and fb["sigma2_star"] == fa["sigma2_star"]
    # the floor differs from the source run's: its head is not the floored one
    floored_head = load_checkpoint(floored / "checkpoint.pt")["model"]
    assert any(not torch.equal(floored_head[k], b["model"][k]) for k in b["model"])


def test_branch_refuses_another_stage_1(floored, digits, tmp_path):
    other = dataclasses.replace(FLOOR0, lr=5e-4)
    with pytest.raises(CheckpointError, match="lr=0.001"):
        train(other, tmp_path / "x", data=digits, progress=False, branch_from=floored)
    assert not (tmp_path / "x").exists()


def test_branch_refuses_a_run_before_its_switch_and_a_slimmed_one(floored, digits, tmp_path):
    early = train(FLOORED, tmp_path / "early", data=digits, progress=False, stop_after=1)
    with pytest.raises(CheckpointError, match="not reached its stage switch"):
        train(FLOOR0, tmp_path / "x", data=digits, progress=False, branch_from=early)
    slim = tmp_path / "slim"
    slim.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        (slim / name).write_bytes((floored / name).read_bytes())
    slim_checkpoint(floored / "stage1.pt", slim / "stage1.pt")
    with pytest.raises(CheckpointError, match="no random states"):
        train(FLOOR0, tmp_path / "y", data=digits, progress=False, branch_from=slim)


def test_cli_branch(floored, tmp_path, capsys):
    out = tmp_path / "floor0"
    assert main(["train", "--branch-from", str(floored), "--out", str(out), "--lr", "0.01"]) == 2
    assert "--lr cannot be given" in capsys.readouterr().err
    assert main(["train", "--branch-from", str(tmp_path), "--out", str(out)]) == 2
    assert "config.json not found" in capsys.readouterr().err
    assert main(["train", "--branch-from", str(floored), "--out", str(out), "--pixel-floor", "0", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["pixel_floor"] == 0.0


def test_reproduce_starts_the_unfloored_run_at_the_floored_runs_switch(digits, tmp_path):
    """ensure_run: learned-floor0 branches from learned once learned is past its switch (stage 1 is
    not trained twice), equal to learned-floor0 trained from scratch; the stop record says so."""
    from balanced_vae.paper.experiments import ensure_run, get_budget, run_dir

    budget = dataclasses.replace(
        get_budget("smoke"), extra_runs=("learned-floor0",), n_train=300, n_test=100, epochs=2, min_epochs=2
    )
    ensure_run(tmp_path, "digits", budget, "learned", data=digits, progress=False)
    branched = ensure_run(tmp_path, "digits", budget, "learned-floor0", data=digits, progress=False)
    stops = json.loads((branched / "final.json").read_text())["stops"]
    source = run_dir(tmp_path, "digits", budget, "learned")
    assert (branched / stops["1"]["branched_from"]).resolve() == source.resolve()
    assert stops["1"]["branched_from"] == "../learned"  # relative: the records stay portable
    fresh = ensure_run(tmp_path / "fresh", "digits", budget, "learned-floor0", data=digits, progress=False)
    assert "branched_from" not in json.loads((fresh / "final.json").read_text())["stops"]["1"]
    a, b = load_checkpoint(fresh / "checkpoint.pt")["model"], load_checkpoint(branched / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
