"""examples/custom_net.py runs (on a subset) and the CLI evaluates and samples the run it trained."""

import json
import os
import subprocess
import sys
from pathlib import Path

import balanced_vae
from balanced_vae.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_net.py"


def test_custom_net_example_trains_and_the_cli_evaluates_its_run(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONPATH": os.pathsep.join([str(Path(balanced_vae.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--data-dir",
            str(data_dir),
            "--out",
            str(run),
            "--n-train",
            "2000",
            "--n-test",
            "500",
            "--epochs",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout[out.stdout.index("{") :])
    assert summary["stage"] == 2 and summary["gmm_converged"]
    assert (run / "gmm_samples.png").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["networks"] == f"{EXAMPLE}:make_networks" and config["network_args"] == {"width": 16}

    # a different process rebuilds the networks from the recorded factory
    assert main(["evaluate", str(run), "--metrics", "elbo", "--data-dir", str(data_dir)]) == 0
    results = json.loads((run / "results.json").read_text())
    final = json.loads((run / "final.json").read_text())
    elbo = results["metrics"]["elbo"]["values"]["elbo"]
    elbo = elbo["mean"] if isinstance(elbo, dict) else elbo
    assert abs(elbo - final["test"]["elbo"]) < 0.05 * abs(final["test"]["elbo"])
    assert (
        main(
            [
                "sample",
                str(run),
                "--sampler",
                "gmm",
                "--n",
                "16",
                "--out",
                str(tmp_path / "s"),
                "--data-dir",
                str(data_dir),
            ]
        )
        == 0
    )
    assert (tmp_path / "s" / "gmm_means.png").is_file()
    capsys.readouterr()
