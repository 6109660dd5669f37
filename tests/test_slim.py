"""`balanced-vae slim`: a finished run's checkpoints without what only resuming needs."""

import pytest
import torch

from balanced_vae.checkpoint import CHECKPOINT, RESUME_KEYS, STAGE1, CheckpointError, file_digest, slim_checkpoint
from balanced_vae.cli import main
from balanced_vae.config import TrainConfig
from balanced_vae.data import load_dataset
from balanced_vae.runs import load_run
from balanced_vae.train import train

CONFIG = TrainConfig(method="learned", epochs=1, min_epochs=1, n_train=200, n_test=50)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-stage run (one epoch per stage) and the model state of its full checkpoint."""
    run = train(CONFIG, tmp_path_factory.mktemp("slim") / "r", data=load_dataset("digits"), progress=False)
    full = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)
    return run, full


def test_slim_keeps_the_model_and_drops_only_the_resume_state(finished, capsys):
    run, full = finished
    size = (run / CHECKPOINT).stat().st_size
    assert main(["slim", str(run)]) == 0
    assert f"{run / CHECKPOINT}:" in capsys.readouterr().out
    slim = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)
    assert set(full) - set(slim) == {k for k in RESUME_KEYS if k in full} and "optimiser" in full
    for k in set(slim) - {"model"}:
        assert slim[k] == full[k], k
    assert slim["model"].keys() == full["model"].keys()
    assert all(torch.equal(slim["model"][k], full["model"][k]) for k in full["model"])
    # Adam keeps two moments per parameter: the weights alone are about a third of the file
    assert (run / CHECKPOINT).stat().st_size < 0.4 * size
    loaded = load_run(run)
    assert loaded.stage == 2
    assert all(torch.equal(v, full["model"][k]) for k, v in loaded.model.state_dict().items())
    assert (run / STAGE1).is_file()


def test_a_slimmed_run_counts_finished_and_refuses_to_continue(finished, capsys):
    run, _ = finished
    slim_checkpoint(run / CHECKPOINT)  # idempotent: slimming twice changes nothing
    digest = file_digest(run / CHECKPOINT)
    assert train(CONFIG, run, data=load_dataset("digits"), progress=False, resume=True) == run
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    assert "holds weights only" in capsys.readouterr().err
    assert file_digest(run / CHECKPOINT) == digest


def test_an_unfinished_run_is_not_slimmed(tmp_path):
    config = TrainConfig(method="vae", epochs=3, min_epochs=3, n_train=200, n_test=50)
    run = train(config, tmp_path / "r", data=load_dataset("digits"), progress=False, stop_after=1)
    digest = file_digest(run / CHECKPOINT)
    with pytest.raises(CheckpointError, match="has not finished.*--resume"):
        slim_checkpoint(run / CHECKPOINT)
    assert file_digest(run / CHECKPOINT) == digest
    assert main(["slim", str(tmp_path)]) == 2  # not a run folder
