"""Algorithm 1 end to end: real MNIST, resume, checkpoints and the errors users meet."""

import dataclasses
import json

import pytest
import torch

from balanced_vae.checkpoint import CheckpointError, load_checkpoint
from balanced_vae.cli import main
from balanced_vae.config import TrainConfig
from balanced_vae.data import load_dataset
from balanced_vae.plots import read_metrics
from balanced_vae.runs import load_run
from balanced_vae.train import RunExistsError, evaluate_elbo, train


@pytest.fixture(scope="module")
def mnist(data_dir):
    return load_dataset("mnist", data_dir=data_dir)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def mnist_run(mnist, tmp_path_factory):
    """A short two-stage run on 6,000 real MNIST images."""
    config = TrainConfig(
        dataset="mnist", n_train=6000, n_test=1000, epochs=4, min_epochs=4, stages=2, batch_size=64, width=16, seed=0
    )
    return train(config, tmp_path_factory.mktemp("mnist") / "run", data=mnist, progress=False)


def test_mnist_stage1_elbo_rises_and_sigma2_falls(mnist_run):
    m = [r for r in read_metrics(mnist_run / "metrics.jsonl") if r["stage"] == 1]
    assert len(m) == 4
    assert m[-1]["val_elbo"] > m[0]["val_elbo"] + 100  # nats per image
    assert m[-1]["sigma2"] < 0.1  # well below the plain VAE's 0.5
    assert all(a["sigma2"] > b["sigma2"] for a, b in zip(m, m[1:]))


def test_mnist_stage2_beats_stage1(mnist_run, mnist):
    x = mnist.x_test[:1000]
    s1 = evaluate_elbo(load_run(mnist_run, which="stage1.pt").model, x, seed=1)["elbo"]
    s2 = evaluate_elbo(load_run(mnist_run).model, x, seed=1)["elbo"]
    assert s2 > s1 + 50
    run = load_run(mnist_run)
    assert run.stage == 2
    # the per-pixel variance never falls under the stage-1 sigma*^2 floor
    _, sigma = run.model.reconstruct(x[:32])
    assert float(sigma.pow(2).min()) >= run.checkpoint["sigma2_star"] * (1 - 1e-5)
    final = json.loads((mnist_run / "final.json").read_text())
    assert final["test"]["elbo"] == pytest.approx(evaluate_elbo(run.model, mnist.x_test[:1000], seed=1)["elbo"])


@pytest.mark.parametrize("method", ["learned", "fixed"])
def test_resume_equals_uninterrupted(method, digits, tmp_path):
    """2 epochs straight == 1 epoch, stop, resume, 1 epoch (bit-identical parameters)."""
    config = (
        TrainConfig(method=method, epochs=1, stages=2, n_train=300, n_test=100, batch_size=32, seed=3)
        if method == "learned"
        else TrainConfig(method="fixed", sigma2=0.1, epochs=2, min_epochs=2, n_train=300, n_test=100, batch_size=32)
    )
    straight = train(config, tmp_path / "a", data=digits, progress=False)
    part = train(config, tmp_path / "b", data=digits, progress=False, stop_after=1)
    assert not (part / "final.json").exists()
    train(config, part, data=digits, progress=False, resume=True)
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(part / "checkpoint.pt")
    assert a["stage"] == b["stage"] and a["done"] and b["done"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert (
        read_metrics(straight / "metrics.jsonl")[-1]["val_elbo"] == read_metrics(part / "metrics.jsonl")[-1]["val_elbo"]
    )
    assert len(read_metrics(part / "metrics.jsonl")) == 2


def test_lr_drops_continue_a_converged_stage_at_a_tenth_of_the_rate(digits, tmp_path):
    """With a tolerance the rule always meets, it fires as soon as it may: at epoch 2 (window 1),
    where the rate drops; its window starts again, so the next firing, which ends the stage, is
    at epoch 4, not 3. An interrupted run resumed after the drop ends bit-identical."""
    config = TrainConfig(
        method="fixed",
        sigma2=0.1,
        epochs=20,
        min_epochs=1,
        window=1,
        tol=10.0,
        lr_drops=1,
        n_train=300,
        n_test=100,
        batch_size=32,
        optimiser="adam",
    )  # out of the early low-KL phase
    straight = train(config, tmp_path / "a", data=digits, progress=False)
    rows = read_metrics(straight / "metrics.jsonl")
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    assert [r.get("lr_drop") for r in rows] == [None, pytest.approx(1e-4), None, None]
    final = json.loads((straight / "final.json").read_text())
    assert final["stops"]["1"] == {
        "reason": "converged",
        "epochs": 4,
        "lr_drops": 1,
        "seconds": final["stops"]["1"]["seconds"],
    }
    part = train(config, tmp_path / "b", data=digits, progress=False, stop_after=3)
    assert not (part / "final.json").exists()
    train(config, part, data=digits, progress=False, resume=True)
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(part / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [r["lr"] for r in read_metrics(part / "metrics.jsonl")] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])


def test_without_lr_drops_the_stage_ends_where_the_rule_first_fires(digits, tmp_path):
    config = TrainConfig(
        method="fixed", sigma2=0.1, epochs=20, min_epochs=1, window=1, tol=10.0, n_train=300, n_test=100, batch_size=32
    )
    final = json.loads((train(config, tmp_path / "a", data=digits, progress=False) / "final.json").read_text())
    assert final["stops"]["1"]["epochs"] == 2 and "lr_drops" not in final["stops"]["1"]


def test_resume_drops_log_lines_written_after_the_checkpoint(digits, tmp_path):
    config = TrainConfig(method="vae", epochs=2, min_epochs=2, n_train=200, n_test=50)
    run = train(config, tmp_path / "r", data=digits, progress=False, stop_after=1)
    with open(run / "metrics.jsonl", "a") as f:  # a crash between the log line and the checkpoint
        f.write(json.dumps({"stage": 1, "epoch": 2, "val_elbo": 0.0}) + "\n")
    train(config, run, data=digits, progress=False, resume=True)
    assert [m["epoch"] for m in read_metrics(run / "metrics.jsonl")] == [1, 2]


def test_pixel_floor_zero_trains(digits, tmp_path):
    config = TrainConfig(epochs=1, stages=2, pixel_floor=0.0, n_train=200, n_test=50)
    run = load_run(train(config, tmp_path / "r", data=digits, progress=False))
    _, sigma = run.model.reconstruct(digits.x_test[:8])
    assert torch.isfinite(sigma).all() and run.model.likelihood.sigma2 == 0.0


def test_existing_run_is_not_overwritten(digits, tmp_path):
    config = TrainConfig(method="vae", epochs=1, n_train=100, n_test=50)
    train(config, tmp_path / "r", data=digits, progress=False)
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    with pytest.raises(RunExistsError, match="--resume"):
        train(config, tmp_path / "r", data=digits, progress=False)
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before


def test_resume_with_another_config_is_refused(digits, tmp_path):
    config = TrainConfig(method="vae", epochs=1, n_train=100, n_test=50)
    train(config, tmp_path / "r", data=digits, progress=False)
    with pytest.raises(CheckpointError, match="other lr"):
        train(
            TrainConfig(method="vae", epochs=1, n_train=100, n_test=50, lr=0.1),
            tmp_path / "r",
            data=digits,
            progress=False,
            resume=True,
        )


def test_damaged_and_incompatible_checkpoints(digits, tmp_path):
    config = TrainConfig(method="vae", epochs=1, n_train=100, n_test=50)
    run = train(config, tmp_path / "r", data=digits, progress=False)
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="checkpoint.pt.*damaged"):
        load_run(run)
    run2 = train(config, tmp_path / "r2", data=digits, progress=False)
    cfg = json.loads((run2 / "config.json").read_text())
    cfg["latent_dim"] = 3
    (run2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_run(run2)
    with pytest.raises(CheckpointError, match="not found"):
        load_run(tmp_path / "r2", which="nope.pt")
    with pytest.raises(CheckpointError, match="no such run folder"):
        load_run(tmp_path / "missing")


def test_cli_bad_dataset_leaves_no_run_folder(tmp_path, capsys):
    assert main(["train", "--dataset", "imagenet", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "imagenet" in err and "digits" in err
    assert not (tmp_path / "r").exists()


def test_cli_dry_run_prints_resolved_config(capsys):
    assert main(["train", "--dataset", "digits", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["latent_dim"] == 8 and cfg["width"] == 256 and cfg["image_shape"] == [1, 8, 8]
    assert cfg["method"] == "learned" and cfg["stages"] == 2


def test_cli_train_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--variance",
        "fixed",
        "--sigma2",
        "0.5",
        "--epochs",
        "1",
        "--n-train",
        "100",
        "--n-test",
        "50",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", str(out)]) == 0  # finished: nothing more to do
    assert main(["train", "--resume", str(tmp_path / "none")]) == 2
    assert main(["train", "--variance", "fixed", "--method", "learned", "--out", str(tmp_path / "x")]) == 2


def test_demo_report(tmp_path):
    import dataclasses

    from balanced_vae.demo import DEMO_CONFIG, run_demo

    summary = run_demo(
        tmp_path / "demo", config=dataclasses.replace(DEMO_CONFIG, epochs=3, min_epochs=3), progress=False
    )
    for name in (
        "reconstructions.png",
        "prior_samples.png",
        "prior_vs_gmm.png",
        "curves.png",
        "summary.json",
        "report.html",
    ):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    assert summary["stage1_epochs"] == 3 and summary["stage2_epochs"] == 3
    assert (tmp_path / "demo" / "report.html").read_text().count("data:image/png;base64,") == 4


def test_a_run_being_trained_is_not_trained_twice(digits, tmp_path):
    import os

    config = TrainConfig(method="vae", epochs=2, min_epochs=2, n_train=100, n_test=50)
    run = train(config, tmp_path / "r", data=digits, progress=False, stop_after=1)
    (run / ".lock").write_text(str(os.getppid()))  # a live process holds the run
    with pytest.raises(RunExistsError, match="being trained by process"):
        train(config, run, data=digits, progress=False, resume=True)
    (run / ".lock").write_text("999999999")  # a dead one: the lock is stale
    train(config, run, data=digits, progress=False, resume=True)
    assert not (run / ".lock").exists() and (run / "final.json").exists()


# ------------------------------------------------------------------ issue 15: quantities as the paper defines them


def test_one_stage_learned_run_reports_its_final_sigma2(digits, tmp_path):
    """final.json and the checkpoint hold the last epoch's sigma*^2, not the first epoch's."""
    config = TrainConfig(method="learned", stages=1, epochs=4, min_epochs=4, n_train=400, n_test=100, seed=1)
    run = train(config, tmp_path / "r", data=digits, progress=False)
    rows = read_metrics(run / "metrics.jsonl")
    assert rows[0]["sigma2"] != pytest.approx(rows[-1]["sigma2"], rel=1e-3)  # sigma^2 moved
    final = json.loads((run / "final.json").read_text())
    assert final["sigma2_star"] == pytest.approx(rows[-1]["sigma2"], rel=1e-12)
    assert load_checkpoint(run / "checkpoint.pt")["sigma2_star"] == pytest.approx(rows[-1]["sigma2"], rel=1e-12)


def test_sigma2_star_is_eq10_on_the_final_networks(digits, tmp_path):
    """The stage-1 sigma*^2 equals the mean squared residual of the final networks over the training
    images (brute force, one z per image), not the average over an epoch in which they moved."""
    from balanced_vae.model import VAE
    from balanced_vae.train import split_train

    config = TrainConfig(method="learned", stages=1, epochs=2, min_epochs=2, n_train=400, n_test=100, seed=2)
    run = load_run(train(config, tmp_path / "r", data=digits, progress=False))
    x_fit, _ = split_train(digits, run.config)
    g = torch.Generator().manual_seed(run.config.seed + 2)
    with torch.no_grad():
        mu, logvar = run.model.encode(x_fit)
        mean = run.model.decode_mean(VAE.reparameterise(mu, logvar, g))
    brute = float((x_fit - mean).pow(2).double().mean())
    assert run.model.likelihood.sigma2 == pytest.approx(brute, rel=1e-6)


def test_training_never_reads_the_test_split(digits, tmp_path):
    """Stopping and checkpoints depend on the validation split only: replacing every test image
    changes nothing that training writes, except final.json's test numbers."""
    import dataclasses

    noisy = dataclasses.replace(digits, x_test=torch.rand_like(digits.x_test))
    config = TrainConfig(method="vae", epochs=6, min_epochs=2, tol=1e-2, n_train=400, seed=0)
    a = train(config, tmp_path / "a", data=digits, progress=False)
    b = train(config, tmp_path / "b", data=noisy, progress=False)
    assert (a / "metrics.jsonl").read_text().count("\n") == (b / "metrics.jsonl").read_text().count("\n")
    ma, mb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in ma] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in mb
    ]
    assert not any(k.startswith("test_") for r in ma for k in r)
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    assert json.loads((a / "final.json").read_text())["test"] != json.loads((b / "final.json").read_text())["test"]


def test_convergence_rule_is_absolute_in_nats_per_dimension():
    from balanced_vae.train_state import converged

    config = TrainConfig(min_epochs=1, window=3, tol=1e-3)
    dims = 784
    # near -480 nats: 0.5 nats over three epochs is 6e-4 nats/dim -> converged; 2 nats is not
    assert converged([-480.5, -480.4, -480.2, -480.0], config, dims)
    assert not converged([-482.0, -481.0, -480.5, -480.0], config, dims)
    # near 0 the same absolute rule applies (a relative rule would never stop here)
    assert converged([-0.3, -0.2, 0.1, 0.2], config, dims)


def test_stop_reason_is_recorded(digits, tmp_path):
    config = TrainConfig(method="learned", epochs=2, min_epochs=2, n_train=300, n_test=50)
    run = train(config, tmp_path / "r", data=digits, progress=False)
    final = json.loads((run / "final.json").read_text())
    assert final["stops"]["1"]["reason"] == "max_epochs" and final["stops"]["2"]["reason"] == "max_epochs"
    assert final["stops"]["1"]["epochs"] == 2


def test_train_elbo_and_validation_elbo_use_the_same_sigma2(digits, tmp_path):
    """The logged training ELBO of a closed-form run is Eq. 9 under the epoch's sigma*^2."""
    import math

    config = TrainConfig(method="learned", stages=1, epochs=1, n_train=300, n_test=50)
    row = read_metrics(train(config, tmp_path / "r", data=digits, progress=False) / "metrics.jsonl")[0]
    d, s2 = 64, row["sigma2"]
    expected = -0.5 * d * math.log(2 * math.pi * s2) - 0.5 * d * row["train_mse"] / s2 - row["train_kl"]
    assert row["train_elbo"] == pytest.approx(expected, rel=1e-9)
    assert "train_elbo_batch_sigma2" in row


def test_wae_has_no_elbo_in_final_json(digits, tmp_path):
    config = TrainConfig(method="wae-mmd", epochs=1, n_train=200, n_test=50)
    final = json.loads((train(config, tmp_path / "r", data=digits, progress=False) / "final.json").read_text())
    assert "test" not in final and final["test_objective"]["loss"] > 0


def test_final_json_names_the_commits_that_trained_the_run(digits, tmp_path, monkeypatch):
    from balanced_vae import train as train_module

    commits = iter(["aaaa", "aaaa", "bbbb+dirty"])  # start, resume at the same, then another
    monkeypatch.setattr(train_module, "source_commit", lambda: next(commits))
    config = TrainConfig(method="fixed", stages=1, epochs=1, min_epochs=1, n_train=200, n_test=50)
    out = train(config, tmp_path / "r", data=digits, progress=False, stop_after=1)
    assert json.loads((out / "final.json").read_text())["trained_by_commits"] == ["aaaa"]
    for epochs in (2, 3):  # raised caps reopen the finished run
        train(dataclasses.replace(config, epochs=epochs), out, data=digits, progress=False, resume=True)
    final = json.loads((out / "final.json").read_text())
    assert final["trained_by_commits"] == ["aaaa", "bbbb+dirty"]
    assert final["provenance"]["git_commit"] and "git_dirty" in final["provenance"]


def test_a_run_reads_back_its_own_data_and_refuses_other_data(digits, tmp_path):
    from balanced_vae.data import Dataset
    from balanced_vae.runs import load_run

    config = TrainConfig(method="fixed", stages=1, epochs=1, min_epochs=1, n_train=200, n_test=50, n_val=20)
    run = load_run(train(config, tmp_path / "r", data=digits, progress=False))
    assert torch.equal(run.images("train", data=digits), digits.x_train[:200])  # validation images included
    assert torch.equal(run.images("test", data=digits), digits.x_test[:50])
    other = Dataset(name="digits", x_train=digits.x_train.flip(0), x_test=digits.x_test)
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        run.images("train", data=other)
    small = Dataset(
        name="digits",
        x_train=digits.x_train[:, :, :4, :4].contiguous(),
        x_test=digits.x_test[:, :, :4, :4].contiguous(),
    )
    with pytest.raises(ValueError, match=r"shape \(1, 8, 8\)"):
        run.dataset(small)


# ------------------------------------------------------------------ issue 10: failures that are loud


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    from balanced_vae.train import DivergenceError

    config = TrainConfig(method="learned", sigma2_mode="gradient", lr=1e30, epochs=3, n_train=200, n_test=50)
    with pytest.raises(DivergenceError, match=r"stage 1, epoch 1.*--lr"):
        train(config, tmp_path / "r", data=digits, progress=False)
    assert not (tmp_path / "r" / "final.json").exists() and not (tmp_path / "r" / "checkpoint.pt").exists()
    assert not (tmp_path / "r" / ".lock").exists()


def test_second_train_into_a_busy_run_changes_nothing(digits, tmp_path):
    import os

    config = TrainConfig(method="vae", epochs=2, min_epochs=2, n_train=100, n_test=50)
    run = train(config, tmp_path / "r", data=digits, progress=False, stop_after=1)
    before = (run / "config.json").read_bytes()
    (run / ".lock").write_text(str(os.getppid()))
    with pytest.raises(RunExistsError, match="being trained"):
        train(TrainConfig(method="vae", epochs=5, lr=0.5, n_train=100, n_test=50), run, data=digits, progress=False)
    assert (run / "config.json").read_bytes() == before


def test_an_empty_lock_file_is_stale(digits, tmp_path):
    config = TrainConfig(method="vae", epochs=2, min_epochs=2, n_train=100, n_test=50)
    run = train(config, tmp_path / "r", data=digits, progress=False, stop_after=1)
    (run / ".lock").write_text("")
    train(config, run, data=digits, progress=False, resume=True)
    assert (run / "final.json").exists()


def test_device_errors_are_clear():
    from balanced_vae.train import resolve_device

    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
        assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="not a device"):
        resolve_device("tpu:banana")


def test_a_collapsed_posterior_is_recorded_and_warned_about(digits, tmp_path, caplog):
    """beta = 1000 makes every code the prior (KL -> 0): the stop records it and the log says the fix.
    Ours passes through a collapsed phase early (KL 0.013 nats after 3 epochs here) and leaves it
    (3.8 nats after 10 epochs per stage): a run stopped in that phase is flagged, a trained one is not."""
    config = TrainConfig(
        method="beta-vae", hparams={"beta": 1000.0}, epochs=3, min_epochs=3, n_train=400, n_test=50, seed=0
    )
    with caplog.at_level("WARNING", logger="balanced_vae.train"):
        final = json.loads((train(config, tmp_path / "c", data=digits, progress=False) / "final.json").read_text())
    assert final["stops"]["1"]["posterior_collapse"]["val_kl"] < 0.1
    assert "posterior collapsed" in caplog.text and "--lr" in caplog.text
    early = TrainConfig(epochs=3, min_epochs=3, n_test=50, seed=0)
    final = json.loads((train(early, tmp_path / "e", data=digits, progress=False) / "final.json").read_text())
    assert "posterior_collapse" in final["stops"]["1"]
    ours = dataclasses.replace(early, epochs=10, min_epochs=10)
    final = json.loads((train(ours, tmp_path / "o", data=digits, progress=False) / "final.json").read_text())
    assert all("posterior_collapse" not in s for s in final["stops"].values())


def test_cpu_has_bf16_agrees_with_the_kernel_flags():
    """Ground truth on Linux: the CPU flags the kernel reports (avx512_bf16, amx_bf16)."""
    from balanced_vae.distributed import cpu_has_bf16

    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        pytest.skip("no /proc/cpuinfo on this system")
    assert cpu_has_bf16() == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


@pytest.mark.parametrize("hardware", [False, True])
def test_bf16_on_a_cpu_without_bf16_hardware_warns_with_the_fix(hardware, digits, tmp_path, caplog, monkeypatch):
    import balanced_vae.train as train_module

    monkeypatch.setattr(train_module, "cpu_has_bf16", lambda: hardware)
    config = TrainConfig(precision="bf16", epochs=1, min_epochs=1, n_train=64, n_test=32, width=8, seed=0)
    with caplog.at_level("WARNING", logger="balanced_vae.train"):
        assert (train(config, tmp_path / "r", data=digits, progress=False) / "final.json").exists()
    assert ("emulated" in caplog.text and "--precision fp32" in caplog.text) == (not hardware)
