"""A table that outlasts a session: finished runs kept as records without weights, and the w64 budget.

Results commit each run's config, metrics and evaluation records, not its weights; a table whose runs
take several sessions (the ``w64`` budget) reuses the records of the runs already finished, where its
``final.json`` names the weights those records were computed from.
"""

import dataclasses
import json
from pathlib import Path

import pytest

from balanced_vae.checkpoint import CHECKPOINT, FINAL, STAGE1, file_digest
from balanced_vae.data import load_dataset
from balanced_vae.paper.budgets import TABLE2_METHODS, get_budget, run_specs
from balanced_vae.paper.context import Context
from balanced_vae.paper.experiments import ensure_run, run_dir
from balanced_vae.paper.reproduce import reproduce

ROOT = Path(__file__).resolve().parents[1]
TINY = dataclasses.replace(get_budget("smoke"), name="tiny", n_train=200, n_test=50, epochs=1, min_epochs=1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def drop_weights(run: Path) -> None:
    for pt in run.glob("*.pt"):
        pt.unlink()


@pytest.fixture()
def finished(digits, tmp_path):
    """A finished tiny VAE run with its test ELBO cached, then its weights deleted (as results commit it)."""
    ctx = Context("digits", TINY, tmp_path, data=digits, progress=False)
    entry = ctx.evaluate("vae", "elbo")
    run = run_dir(tmp_path, "digits", TINY, "vae")
    drop_weights(run)
    return tmp_path, run, entry


def test_final_json_names_every_weights_file_the_run_ended_with(digits, tmp_path):
    from balanced_vae.runs import load_run, model_sha256

    ctx = Context("digits", TINY, tmp_path, data=digits, progress=False)
    entry = ctx.evaluate("learned", "elbo", which=STAGE1)  # two stages: checkpoint.pt and stage1.pt
    run = run_dir(tmp_path, "digits", TINY, "learned")
    weights = json.loads((run / FINAL).read_text())["weights"]
    assert sorted(weights) == [CHECKPOINT, STAGE1]
    for name, named in weights.items():
        assert named == {
            "sha256": file_digest(run / name),
            "model_sha256": model_sha256(load_run(run, which=name).model),
        }
    drop_weights(run)
    assert (
        Context("digits", TINY, tmp_path, data=digits, progress=False).evaluate("learned", "elbo", which=STAGE1)
        == entry
    )


def test_records_of_a_finished_run_are_reused_without_its_weights(finished, digits):
    out, run, entry = finished
    metrics = (run / "metrics.jsonl").read_text()
    again = Context("digits", TINY, out, data=digits, progress=False).evaluate("vae", "elbo")
    assert again == entry
    assert not (run / CHECKPOINT).exists() and (run / "metrics.jsonl").read_text() == metrics  # nothing retrained


def test_a_metric_never_computed_from_the_gone_weights_is_a_clear_error(finished, digits):
    out, run, _ = finished
    with pytest.raises(ValueError, match=r"not its weights \(checkpoint.pt\), and it has no record iwae_gmm"):
        Context("digits", TINY, out, data=digits, progress=False).evaluate("vae", "iwae", sampler="gmm")
    assert not (run / CHECKPOINT).exists()


def test_an_experiment_that_reads_the_weights_themselves_says_they_are_gone(finished, digits):
    out, run, _ = finished
    with pytest.raises(ValueError, match="reads the weights themselves"):
        Context("digits", TINY, out, data=digits, progress=False).run("vae")


def test_a_record_of_other_weights_is_not_reused(finished, digits):
    out, run, _ = finished
    final = json.loads((run / FINAL).read_text())
    final["weights"][CHECKPOINT] = {"sha256": "0" * 64, "model_sha256": "1" * 64}  # another run's weights
    (run / FINAL).write_text(json.dumps(final))
    with pytest.raises(ValueError, match="was computed from other weights than the checkpoint.pt its final.json names"):
        Context("digits", TINY, out, data=digits, progress=False).evaluate("vae", "elbo")


def test_records_of_slimmed_weights_are_kept(digits, tmp_path):
    """Records computed after the checkpoint was slimmed (another file, the same weights) are reused."""
    from balanced_vae.checkpoint import slim_checkpoint

    ctx = Context("digits", TINY, tmp_path, data=digits, progress=False)
    ctx.run("vae")
    run = run_dir(tmp_path, "digits", TINY, "vae")
    before = file_digest(run / CHECKPOINT)
    slim_checkpoint(run / CHECKPOINT)
    assert file_digest(run / CHECKPOINT) != before
    entry = ctx.evaluate("vae", "elbo")
    drop_weights(run)
    assert Context("digits", TINY, tmp_path, data=digits, progress=False).evaluate("vae", "elbo") == entry


def test_a_reopened_run_is_no_longer_finished(digits, tmp_path):
    """Raised caps reopen a finished run: its final.json goes until the run finishes again, so an
    interrupted reopening never passes for finished with the old weights' records."""
    from balanced_vae.train import train

    config = run_specs("digits", TINY)["vae"]
    out = train(config, tmp_path / "r", data=digits, progress=False)
    assert (out / FINAL).exists()
    train(dataclasses.replace(config, epochs=3), out, data=digits, progress=False, resume=True, stop_after=1)
    assert not (out / FINAL).exists()
    train(dataclasses.replace(config, epochs=3), out, data=digits, progress=False, resume=True)
    final = json.loads((out / FINAL).read_text())
    assert final["weights"][CHECKPOINT]["sha256"] == file_digest(out / CHECKPOINT)
    assert final["stops"]["1"]["epochs"] == 3


def test_an_older_final_json_without_the_digest_still_needs_the_weights(finished, digits):
    out, run, _ = finished
    final = json.loads((run / FINAL).read_text())
    del final["weights"]
    (run / FINAL).write_text(json.dumps(final))
    with pytest.raises(ValueError, match="does not name them"):
        ensure_run(out, "digits", TINY, "vae", data=digits, progress=False)


def test_records_of_another_config_are_refused(finished, digits):
    out, _, _ = finished
    other = dataclasses.replace(TINY, epochs=2, min_epochs=2)
    with pytest.raises(ValueError, match="another config"):
        ensure_run(out, "digits", other, "vae", data=digits, progress=False)


def test_w64_budget_gives_every_table2_method_the_recipe_of_the_7_12_record():
    budget = get_budget("w64")
    specs = run_specs("mnist", budget)
    for m in TABLE2_METHODS:
        c = specs[m]
        assert (c.width, c.precision, c.epochs, c.min_epochs, c.optimiser) == (64, "bf16", 124, 124, "radam"), m
    assert specs["learned"].stages == 1
    record = json.loads((ROOT / "bench/results/time_to_fid_w64_bf16_s1_180.json").read_text())
    recorded = {k: v for k, v in record["config"].items() if k not in ("data_dir", "epochs", "min_epochs")}
    ours = json.loads(specs["learned"].to_json())
    assert {k: ours[k] for k in recorded if k != "latent_dim"} == {
        k: v for k, v in recorded.items() if k != "latent_dim"
    }
    assert record["rows"][-1]["epoch"] == 124  # the epochs that 180 CPU-minutes bought that run


def test_w64_budget_refuses_what_it_was_not_made_for_before_writing(tmp_path, capsys):
    from balanced_vae.cli import main

    with pytest.raises(ValueError, match="runs table2 only, not 'table3'"):
        reproduce("table3", budget="w64", out=tmp_path / "r")
    assert not (tmp_path / "r").exists()
    assert main(["reproduce", "all", "--budget", "w64", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert [ln.split(":")[0].strip() for ln in out.splitlines() if ln.startswith("  run ")] == [
        f"run {m}" for m in TABLE2_METHODS
    ]
    assert "stages=1 epochs<=124 width=64 precision=bf16" in out
    assert main(["reproduce", "table3", "--budget", "w64", "--dry-run"]) == 2  # refused as the real run is
    assert "runs table2 only, not 'table3'" in capsys.readouterr().err


def test_committed_paper_runs_match_their_budget_configs(data_dir):
    """The paper budget's committed run folders are the runs the budget names: ema_warmup, a field added
    after they were trained, does nothing without a moving average. (Their final.json files predate the
    weights' digests, so their records still need the weights to be reused.)"""
    from balanced_vae.paper.experiments import same_training
    from balanced_vae.resume import run_config

    data = load_dataset("mnist", data_dir=data_dir)
    specs = run_specs("mnist", get_budget("paper"))
    runs = sorted((ROOT / "results/mnist-paper/runs").iterdir())
    assert len(runs) >= 5
    for run in runs:
        assert same_training(run_config(run), specs[run.name].resolved(data.shape, len(data.x_train))), run.name


def test_same_training_ignores_ema_warmup_only_without_a_moving_average():
    from balanced_vae.config import TrainConfig
    from balanced_vae.paper.experiments import same_training

    a = TrainConfig(ema_warmup=False)
    assert same_training(a, TrainConfig(ema_warmup=True))
    assert not same_training(TrainConfig(ema=0.99, ema_warmup=False), TrainConfig(ema=0.99, ema_warmup=True))
    assert not same_training(a, TrainConfig(ema_warmup=False, width=64))


def test_results_page_describes_the_w64_budget_by_its_own_recipe(tmp_path):
    """A w64 Table 2 on the results page: its fixed-epoch recipe, not 'much shorter training than the
    paper's', and no 'not run' list of the experiments it was never made for."""
    from balanced_vae.paper.budgets import resolved_budget
    from balanced_vae.paper.results_page import build_page

    record = json.loads((ROOT / "results/mnist-paper/table2.json").read_text())
    record["protocol"]["budget"] = resolved_budget(get_budget("w64"))
    (tmp_path / "results/mnist-w64/runs").mkdir(parents=True)
    (tmp_path / "results/mnist-w64/table2.json").write_text(json.dumps(record))
    page = build_page(tmp_path / "results", tmp_path / "RESULTS.md").read_text()
    assert "Every run trains 124 epochs per stage with no stopping rule, in bf16; ours is stage 1 only" in page
    assert "This budget runs table2 only." in page
    assert "much shorter training" not in page and "Not run for this data set" not in page
