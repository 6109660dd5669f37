"""Trust (issue 28): nothing a user owns is ever damaged or silently changed.

One test per case of the issue, then a property test: the writing commands run with destinations
drawn among existing files, inputs, folders that are not runs and new paths, and no file that
existed before changes unless it belongs to the command's own run."""

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balanced_vae import writes
from balanced_vae.cli import main
from balanced_vae.config import TrainConfig
from balanced_vae.data import DataError, load_dataset, validate_images
from balanced_vae.train import train

RUN_RECORD = ("config.json", "checkpoint.pt", "stage1.pt", "metrics.jsonl", "final.json")


def _digests(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) -> SHA-256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, digits):
    """A finished two-stage run on 200 digits with 2-D latents, one epoch per stage (seconds)."""
    config = TrainConfig(dataset="digits", epochs=1, min_epochs=1, n_train=200, n_test=50, latent_dim=2)
    return train(config, tmp_path_factory.mktemp("base") / "run", data=digits, progress=False)


@pytest.fixture
def run(base_run, tmp_path):
    return Path(shutil.copytree(base_run, tmp_path / "run"))


def _fails_cleanly(capsys, *names) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "nothing was written" in err and "Fix:" in err, err
    for name in names:
        assert str(name) in err, (name, err)
    return err


# ---------------------------------------------------------------- damage with exit 0


def test_train_into_a_folder_that_is_not_a_run_changes_nothing(tmp_path, capsys):
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text('{"my": "settings"}\n')
    (user / "metrics.jsonl").write_text('{"mine": 1}\n')
    before = _digests(user)
    assert main(["train", "--dataset", "digits", "--n-train", "200", "--epochs", "1", "--out", str(user)]) == 2
    _fails_cleanly(capsys, user, "not a balanced-vae run", "config.json")
    assert _digests(user) == before
    empty = tmp_path / "empty"  # an empty folder made for the run is fine
    empty.mkdir()
    assert (
        main(
            ["train", "--dataset", "digits", "--n-train", "200", "--epochs", "1", "--stages", "1", "--out", str(empty)]
        )
        == 0
    )
    assert (empty / "final.json").is_file()


def test_fid_never_writes_over_its_input(tmp_path, capsys):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, np.zeros((4, 8, 8), np.float32))
    np.save(b, np.ones((4, 8, 8), np.float32))
    images = tmp_path / "images"
    images.mkdir()
    before = _digests(tmp_path)
    assert main(["fid", str(a), str(b), "--out", str(a)]) == 2
    _fails_cleanly(capsys, a, "is an input of `fid`")
    assert main(["fid", str(images), str(b), "--out", str(images / "fid.json")]) == 2
    _fails_cleanly(capsys, "inside", "an input folder")
    assert _digests(tmp_path) == before


def test_resume_below_what_ran_is_refused_and_config_json_stays_as_created(digits, tmp_path, capsys):
    run = tmp_path / "r"
    assert (
        main(
            [
                "train",
                "--variance",
                "fixed",
                "--epochs",
                "2",
                "--min-epochs",
                "2",
                "--n-train",
                "200",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    before = _digests(run)
    assert main(["train", "--resume", str(run), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "--epochs 1" in err and "already ran 2 epochs" in err and "--epochs >= 2" in err
    assert _digests(run) == before
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    assert (run / "config.json").read_bytes() and _digests(run)["config.json"] == before["config.json"]
    [line] = (run / "resumes.jsonl").read_text().splitlines()
    note = json.loads(line)
    assert note["changes"] == {"epochs": {"from": 2, "to": 3}} and note["epoch"] == 2 and note["time_utc"]
    from balanced_vae.train import run_config

    assert run_config(run).epochs == 3 and TrainConfig.load(run / "config.json").epochs == 2
    assert main(["train", "--resume", str(run)]) == 0  # under its own caps it is finished
    assert len((run / "resumes.jsonl").read_text().splitlines()) == 1


# ---------------------------------------------------------------- unwritable destinations, tracebacks


def test_an_unwritable_destination_is_named_before_any_work(run, tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setattr(writes.os, "access", lambda p, mode: Path(p) != ro)  # root ignores chmod; say read-only
    before = _digests(tmp_path)
    for argv in (
        ["train", "--dataset", "digits", "--epochs", "1", "--out", str(ro / "r")],
        ["sample", str(run), "--sampler", "prior", "--out", str(ro / "s")],
        ["report", str(run), "--out", str(ro / "report.html")],
    ):
        assert main(argv) == 2
        _fails_cleanly(capsys, ro, "read-only")
    assert _digests(tmp_path) == before


def test_evaluate_on_a_read_only_run_prints_what_it_computed(run, monkeypatch, capsys):
    import balanced_vae.atomic as atomic

    def read_only(*a, **k):
        raise PermissionError(13, "Permission denied", str(run))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    before = _digests(run)
    assert main(["evaluate", str(run), "--metrics", "elbo"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["metrics"]["elbo"]["values"]["elbo"]["mean"] < 0  # the numbers are not lost
    assert "Traceback" not in err and "results.json" in err and "Permission denied" in err and "--out" in err
    assert _digests(run) == before


def test_a_hand_edited_config_gives_every_command_the_same_clear_error(run, capsys):
    config = json.loads((run / "config.json").read_text())
    config["latent_dim"] = 3
    (run / "config.json").write_text(json.dumps(config))
    before = _digests(run)
    errors = []
    for argv in (
        ["train", "--resume", str(run), "--epochs", "2"],
        ["sample", str(run), "--out", str(run / "s")],
        ["evaluate", str(run), "--metrics", "elbo"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        errors.append(err.split("error: ", 1)[1])
    assert all("weights do not fit the model of" in e and "undo the edit" in e for e in errors), errors
    assert len({e.split(":", 1)[1] for e in errors}) == 1  # the same words from every command
    assert _digests(run) == before


def test_a_broken_value_in_config_json_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 0}))
    with pytest.raises(ValueError, match=r"config.json: TrainConfig.epochs=0.*undo the edit"):
        TrainConfig.load(tmp_path / "config.json")


# ---------------------------------------------------------------- silent changes


def test_folder_images_keep_their_own_size(tmp_path, caplog):
    from PIL import Image

    tiny = tmp_path / "tiny"
    tiny.mkdir()
    for i in range(12):
        Image.fromarray(np.full((4, 4), 20 * i, np.uint8)).save(tiny / f"{i}.png")
    run = tmp_path / "r"
    assert main(["train", "--dataset", f"folder:{tiny}", "--epochs", "1", "--stages", "1", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["image_size"] == 4  # recorded, not 64
    assert torch.load(run / "checkpoint.pt", weights_only=True)["shape"] == [1, 4, 4]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(mixed / "b.png")
    with caplog.at_level(logging.WARNING):
        assert load_dataset(f"folder:{mixed}").shape == (1, 64, 64)
    assert "resized to 64x64" in caplog.text and "--image-size" in caplog.text and "b.png 5x6" in caplog.text


def test_fid_from_few_images_warns_that_it_is_biased(tmp_path, stand_in_inception, caplog):
    from balanced_vae.evaluate import fid_between

    stand_in_inception()
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.random((12, 8, 8)).astype(np.float32))
    np.save(tmp_path / "b.npy", rng.random((12, 8, 8)).astype(np.float32))
    with caplog.at_level(logging.WARNING):
        doc = fid_between(tmp_path / "a.npy", tmp_path / "b.npy", progress=False)
    assert "n = 12" in doc["warning"] and "biased" in doc["warning"] and "2048" in doc["warning"]
    assert "n = 12" in caplog.text
    from balanced_vae.fid import small_n_warning

    assert small_n_warning(2048) is None


@pytest.mark.parametrize(
    "value, fix",
    [(1.0000001, "clip"), (255.0, "divide 0..255 data by 255"), (-0.5, "(x + 1) / 2"), (float("inf"), "infinite")],
)
def test_a_range_error_prints_the_real_range_and_the_fix_that_fits(value, fix):
    x = torch.full((2, 1, 2, 2), 0.0025)
    x[0, 0, 0, 0] = value
    with pytest.raises(DataError) as e:
        validate_images(x, "d.npz")
    assert fix in str(e.value)
    if value == 1.0000001:
        assert "1.0000001" in str(e.value) and "255" not in str(e.value)


# ---------------------------------------------------------------- the report says only what is true


def test_the_report_of_an_unfinished_run_says_so_at_the_top(digits, tmp_path):
    from balanced_vae.report import build_report

    config = TrainConfig(dataset="digits", method="vae", epochs=3, min_epochs=3, n_train=200, n_test=50)
    run = train(config, tmp_path / "r", data=digits, progress=False, stop_after=1)
    page = build_report(run, n=2, components=2, data=digits).read_text()
    assert page.index("Unfinished run") < page.index("<h2>Protocol</h2>") and f"--resume {run}" in page
    train(config, run, data=digits, progress=False, resume=True)
    assert "Unfinished run" not in build_report(run, n=2, components=2, data=digits).read_text()
    assert "not recorded per epoch" in build_report(run, n=2, components=2, data=digits).read_text()


def test_reproduce_and_demo_refuse_a_folder_they_did_not_make(tmp_path, capsys):
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("mine")
    before = _digests(tmp_path)
    assert main(["reproduce", "table1", "--out", str(user)]) == 2
    _fails_cleanly(capsys, user, "thesis.tex")
    assert main(["demo", "--out", str(user)]) == 2
    _fails_cleanly(capsys, user)
    assert main(["results-page", str(user), "--out", str(user / "thesis.tex")]) == 2
    _fails_cleanly(capsys, user / "thesis.tex")
    assert _digests(tmp_path) == before


def test_sample_and_ood_never_replace_a_users_file(run, tmp_path, capsys):
    user = tmp_path / "user"
    user.mkdir()
    (user / "prior_means.png").write_bytes(b"my picture")
    before = _digests(tmp_path)
    assert main(["sample", str(run), "--sampler", "prior", "--out", str(user)]) == 2
    _fails_cleanly(capsys, user / "prior_means.png", "not written by balanced-vae")
    assert main(["ood", str(run), "--out", "digits", "--results", str(user / "prior_means.png")]) == 2
    _fails_cleanly(capsys, user / "prior_means.png", "is a file")
    assert _digests(tmp_path) == before


def test_a_file_balanced_vae_wrote_may_be_replaced_unless_changed_since(run, tmp_path, capsys):
    out = tmp_path / "kl.json"
    argv = ["kl", str(run), "--n", "50", "--runs", "1", "--components", "2", "--no-aggregate", "--out", str(out)]
    assert main(argv) == 0 and main(argv) == 0  # its own file: replaced
    out.write_text(out.read_text() + " ")  # changed by hand: no longer only balanced-vae's
    assert main(argv) == 2
    _fails_cleanly(capsys, out, "changed since")


# ---------------------------------------------------------------- the property


def _sandbox(base_run: Path) -> dict[str, Path]:
    root = Path(tempfile.mkdtemp(prefix="trust-"))
    run = Path(shutil.copytree(base_run, root / "run"))
    (root / "user.txt").write_text("a user's file\n")
    user = root / "userdir"
    user.mkdir()
    (user / "notes.txt").write_text("notes\n")
    (user / "config.json").write_text('{"mine": true}\n')
    inputs = root / "inputs"
    inputs.mkdir()
    np.save(inputs / "a.npy", np.random.default_rng(0).random((6, 8, 8)).astype(np.float32))
    np.save(inputs / "b.npy", np.random.default_rng(1).random((6, 8, 8)).astype(np.float32))
    return {"root": root, "run": run, "a": inputs / "a.npy", "b": inputs / "b.npy"}


def _argv(command: str, p: dict[str, Path], dest: str) -> list[str]:
    run = str(p["run"])
    return {
        "train": ["train", "--dataset", "digits", "--n-train", "200", "--epochs", "1", "--stages", "1", "--out", dest],
        "sample": ["sample", run, "--sampler", "prior", "--n", "4", "--out", dest],
        "reconstruct": ["reconstruct", run, "--n", "2", "--out", dest],
        "evaluate": ["evaluate", run, "--metrics", "elbo", "--out", dest],
        "kl": ["kl", run, "--n", "50", "--runs", "1", "--components", "2", "--no-aggregate", "--out", dest],
        "latent-walk": ["latent-walk", run, "--steps", "3", "--n-dims", "1", "--out", dest],
        "latent-plot": ["latent-plot", run, "--components", "2", "--resolution", "8", "--out", dest],
        "report": ["report", run, "--n", "2", "--components", "2", "--out", dest],
        "fid": ["fid", str(p["a"]), str(p["b"]), "--out", dest],
        "fid-real": ["fid-real", "digits", "--n", "4", "--fid-cache", str(p["root"] / "fid-cache"), "--out", dest],
        "results-page": ["results-page", str(p["root"] / "userdir"), "--out", dest],
        "slim": ["slim", dest],
        "export": ["export", run, dest, "--components", "2"],
    }[command]


DESTINATIONS = {  # kind -> path in the sandbox; the first three are never to be written over
    "existing file": lambda p, c: p["root"] / "user.txt",
    "input": lambda p, c: p["a"] if c == "fid" else p["run"] / ("checkpoint.pt" if c != "train" else ""),
    "file in a non-run folder": lambda p, c: p["root"] / "userdir" / "config.json",
    "non-run folder": lambda p, c: p["root"] / "userdir",
    "new path": lambda p, c: (
        p["root"]
        / "new"
        / (
            "out.json"
            if c in ("evaluate", "kl", "fid", "fid-real")
            else "out.html"
            if c in ("report", "results-page")
            else "out.png"
            if c.startswith("latent")
            else "out"
        )
    ),
    "new path in the run": lambda p, c: p["run"] / "extra" / ("out.json" if c in ("evaluate", "kl") else "out"),
    "the run": lambda p, c: p["run"],  # slim's own run; a folder of new outputs for sample; else refused
}
NEVER = ("existing file", "input", "file in a non-run folder")


@settings(
    max_examples=91,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    command=st.sampled_from(
        [
            "train",
            "sample",
            "reconstruct",
            "evaluate",
            "kl",
            "latent-walk",
            "latent-plot",
            "report",
            "fid",
            "fid-real",
            "results-page",
            "slim",
            "export",
        ]
    ),
    kind=st.sampled_from(sorted(DESTINATIONS)),
)
def test_no_command_changes_a_file_it_does_not_own(base_run, stand_in_inception, capsys, command, kind):
    stand_in_inception()
    p = _sandbox(base_run)
    try:
        dest = DESTINATIONS[kind](p, command)
        before = _digests(p["root"])
        code = main(_argv(command, p, str(dest)))
        err = capsys.readouterr().err
        assert code in (0, 2) and "Traceback" not in err, (command, kind, err)
        if kind in NEVER:
            assert code == 2, (command, kind)
        after = _digests(p["root"])
        own_run = command == "slim" and dest == p["run"]
        for name, digest in before.items():
            in_run = name.startswith("run/")
            record = in_run and name.split("/", 1)[1] in RUN_RECORD
            if code == 2 or not in_run or (record and not own_run):
                assert after.get(name) == digest, (command, kind, name, err)
    finally:
        shutil.rmtree(p["root"], ignore_errors=True)


def test_a_run_whose_stage_ended_by_its_wall_clock_cap_resumes_under_it(tmp_path):
    """The cap is checked after each epoch, so stage 1 ran past it; resuming stage 2 under the same
    config (what a second call of a GPU script does) must not be refused for that overshoot."""
    from balanced_vae.data import load_dataset
    from balanced_vae.train import train

    digits = load_dataset("digits")
    config = TrainConfig(epochs=3, min_epochs=3, stages=2, n_train=1000, batch_size=10, max_minutes=1e-4)
    run = train(config, tmp_path / "run", data=digits, progress=False, stop_after=1)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["stage"] == 2 and ckpt["stops"]["1"]["reason"] == "max_minutes"
    assert ckpt["stops"]["1"]["seconds"] > 60 * config.max_minutes  # the overshoot of one epoch
    train(config, run, data=digits, progress=False, resume=True)
    assert (run / "final.json").is_file()
