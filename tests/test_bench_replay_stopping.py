"""bench/replay_stopping.py: replayed on a committed run's log, the trained rule stops where training did."""

import json
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


@pytest.fixture(scope="module")
def rs(bench_script):
    return bench_script("replay_stopping")


def test_the_replay_of_the_trained_rule_stops_where_training_stopped(rs, capsys):
    log = RESULTS / "time_to_fid_small_2threads_metrics.jsonl"  # the default rule: best, window 3, tol 1e-3
    rs.main([str(log), "--windows", "3,4", "--tols", "1e-3"])
    got = json.loads(capsys.readouterr().out)
    assert got["stopped_in_training_after_epoch"] == 21
    assert [(s["window"], s["stops_after_epoch"]) for s in got["stops"]] == [(3, 21), (4, None)]
    assert got["epochs_logged"] == 21


def test_a_stage_with_a_learning_rate_drop_is_refused(rs, capsys, tmp_path):
    log = tmp_path / "m.jsonl"
    rows = [{"stage": 1, "epoch": e, "val_elbo": 100.0 + e} for e in range(1, 6)]
    rows[3]["lr_drop"] = 1e-4
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit):
        rs.main([str(log)])
    assert "dropped its learning rate" in capsys.readouterr().err


def test_the_default_window_goes_on_through_the_pause_that_window_3_stopped_on(rs):
    """Epochs 18-21 of the stage-1-only run paused (805.4, 805.5, 805.0, 805.2) and the ELBO then rose
    to 819.5 by epoch 37: window 3 ends the stage at 21, the default goes on to the epoch cap (30)."""
    from balanced_vae.config import TrainConfig

    rows = [json.loads(line) for line in (RESULTS / "time_to_fid_small_s1_metrics.jsonl").read_text().splitlines()]
    history = [r["val_elbo"] for r in rows if r["stage"] == 1][: TrainConfig.epochs]
    assert len(history) == TrainConfig.epochs == 30
    assert rs.replay(history, 784, TrainConfig(window=3)) == 21
    assert rs.replay(history, 784, TrainConfig()) is None
    assert history[-1] - history[20] > 5 * 784 * TrainConfig.tol  # what going on bought: 8.6 nats
