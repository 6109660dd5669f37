"""The best validation epoch's weights (``--keep-best``): which epoch, its file, and its test numbers."""

import json

import pytest

from balanced_vae.checkpoint import load_checkpoint
from balanced_vae.cli import main
from balanced_vae.config import TrainConfig
from balanced_vae.data import load_dataset
from balanced_vae.data.splits import split_train
from balanced_vae.methods import build_objective
from balanced_vae.metrics import evaluate_elbo, validation_terms
from balanced_vae.runs import load_run
from balanced_vae.train import train
from balanced_vae.train_state import TrainState, is_best

CONFIG = TrainConfig(
    epochs=4, min_epochs=4, stages=2, n_train=300, n_test=100, batch_size=32, seed=0, keep_best=True, lr=3e-3
)
# 108 fitted images at lr 1e-2: validation peaks at epoch 4 or 5 and falls by over a nat at epoch 6
BOUNCE = TrainConfig(
    epochs=6, min_epochs=6, stages=1, n_train=120, n_test=100, batch_size=16, seed=0, keep_best=True, lr=1e-2
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def run(digits, tmp_path_factory):
    return train(BOUNCE, tmp_path_factory.mktemp("best") / "run", data=digits, progress=False)


def _stage_rows(run, stage):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == stage]


def test_best_pt_holds_the_best_validation_epoch_not_the_last(run, digits):
    """best.pt's epoch is the argmax of the logged validation ELBO (here not the last epoch), and its
    weights, read back, give that logged number again (same validation images, same seed)."""
    rows = _stage_rows(run, 1)
    best_row = max(rows, key=lambda r: r["val_elbo"])
    assert best_row["epoch"] < rows[-1]["epoch"] and best_row["val_elbo"] > rows[-1]["val_elbo"] + 0.5
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["best"]["epoch"] == best_row["epoch"] and ckpt["best"]["val_objective"] == best_row["val_elbo"]
    assert "optimiser" not in ckpt  # weights only
    loaded = load_run(run, which="best.pt")
    _, x_val = split_train(digits, loaded.config)
    terms = validation_terms(loaded.model, build_objective(loaded.config), x_val, seed=loaded.config.seed + 1)
    assert terms["elbo"] == pytest.approx(best_row["val_elbo"], rel=1e-5)


def test_final_json_scores_the_best_weights_on_the_test_split(run):
    """best_test is the test ELBO of the best epoch's weights, beside the last epoch's (test)."""
    final = json.loads((run / "final.json").read_text())
    assert final["best_test"]["epoch"] == load_checkpoint(run / "best.pt")["best"]["epoch"]
    assert final["best_test"]["elbo"] != pytest.approx(final["test"]["elbo"], abs=1e-3)
    loaded = load_run(run, which="best.pt")
    x_test = loaded.images("test")
    assert final["best_test"]["elbo"] == pytest.approx(
        evaluate_elbo(loaded.model, x_test, seed=BOUNCE.seed + 1)["elbo"]
    )


def test_a_two_stage_runs_best_weights_are_of_stage_2(digits, tmp_path):
    out = train(CONFIG, tmp_path / "run", data=digits, progress=False)
    ckpt = load_checkpoint(out / "best.pt")
    rows = _stage_rows(out, 2)
    assert ckpt["stage"] == 2 and ckpt["best"]["epoch"] == max(rows, key=lambda r: r["val_elbo"])["epoch"]
    assert load_run(out, which="best.pt").model.likelihood.__class__.__name__ == "PixelVariance"


def test_without_the_option_no_best_weights_are_written(digits, tmp_path):
    config = TrainConfig(**{**CONFIG.__dict__, "keep_best": False, "epochs": 2, "min_epochs": 2, "stages": 1})
    out = train(config, tmp_path / "run", data=digits, progress=False)
    assert not (out / "best.pt").exists()
    assert "best_test" not in json.loads((out / "final.json").read_text())


def test_epochs_of_the_kl_warm_up_never_count_as_best():
    """Stage 1 with a 2-epoch KL warm-up: the warm-up's higher objective (a down-weighted KL) is not
    the bar; in stage 2 every epoch counts."""
    config = TrainConfig(kl_warmup=2, epochs=10)
    st = TrainState(stage=1, history=[5.0, 9.0, 3.0])
    assert is_best(st, config)
    assert not is_best(st, TrainConfig(epochs=10))
    assert not is_best(TrainState(stage=2, history=[5.0, 9.0, 3.0]), config)
    assert not is_best(TrainState(stage=1, history=[5.0, 9.0]), config)  # still warming up


def test_evaluate_reads_the_best_weights(run, tmp_path):
    """`evaluate --checkpoint best.pt` scores the best epoch's weights: another number than the last epoch's
    under the same protocol."""
    best, last = tmp_path / "best.json", tmp_path / "last.json"
    assert main(["evaluate", str(run), "--checkpoint", "best.pt", "--metrics", "elbo", "--out", str(best)]) == 0
    assert main(["evaluate", str(run), "--metrics", "elbo", "--out", str(last)]) == 0
    a, b = json.loads(best.read_text()), json.loads(last.read_text())
    assert a["checkpoint"] == "best.pt"
    assert a["metrics"]["elbo"]["values"]["elbo"]["mean"] != b["metrics"]["elbo"]["values"]["elbo"]["mean"]


def test_the_command_line_option_reaches_the_config(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--keep-best", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["keep_best"] is True
    with pytest.raises(ValueError, match="keep_best"):
        TrainConfig(keep_best=1)
