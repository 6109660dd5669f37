"""The HTML run report (self-contained, checked in headless Chromium) and the latent-walk figure."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess

import pytest
import torch

from balanced_vae.cli import main
from balanced_vae.config import TrainConfig
from balanced_vae.data import load_dataset
from balanced_vae.latent_walk import active_dims, interpolate, latent_walk_for_run, traverse
from balanced_vae.report import build_report, metrics_rows
from balanced_vae.train import train


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def run2d(tmp_path_factory, digits):
    """Both stages of Algorithm 1 on 300 digits with 2-D latents, two epochs each (a few seconds)."""
    run_dir = tmp_path_factory.mktemp("report") / "run"
    train(
        TrainConfig(dataset="digits", latent_dim=2, epochs=2, min_epochs=1, n_train=300, seed=0),
        run_dir,
        data=digits,
        progress=False,
    )
    return run_dir


@pytest.fixture(scope="module")
def report(run2d, digits):
    return build_report(run2d, components=4, data=digits, n=8)


def test_report_is_one_self_contained_file_with_every_section(report, run2d):
    text = report.read_text()
    assert report == run2d / "report.html"
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == 5  # curves, reconstructions, prior vs GMM, sigma of GMM samples, 2-D densities
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in text and "http://" not in text and "https://" not in text and "@import" not in text
    for heading in (
        "Protocol",
        "Config",
        "Learning curves",
        "Reconstructions and uncertainty",
        "Samples: prior vs GMM",
        "Latent space (2-D)",
        "Metrics",
    ):
        assert f"<h2>{heading}</h2>" in text, heading
    assert "test (end of training)" in html.unescape(text)  # final.json in the metrics table


def test_metrics_rows_read_evaluation_records(run2d, tmp_path):
    (run2d / "eval").mkdir(exist_ok=True)
    (run2d / "eval" / "x.json").write_text(
        json.dumps(
            {"metrics": {"iwae": {"values": {"prior": {"log_likelihood": {"mean": 1.5, "sem": 0.1}, "seconds": 3}}}}}
        )
    )
    ood = tmp_path / "ood.json"
    ood.write_text(
        json.dumps(
            {
                "in": "a",
                "out": "b",
                "models": {"global": {"metrics": {"elbo": {"auroc": 0.25, "auprc": 0.5, "fpr_at_95_tpr": 1.0}}}},
            }
        )
    )
    try:
        rows = metrics_rows(run2d, records=[ood])
    finally:
        shutil.rmtree(run2d / "eval")
    assert ("eval/x.json", "iwae", "prior/log_likelihood", "1.5 ± 0.1") in rows
    assert (str(ood), "ood a vs b", "global/elbo", "AUROC 0.250, AUPRC 0.500, FPR@95%TPR 1.000") in rows
    assert not any("seconds" in r[2] for r in rows)
    with pytest.raises(FileNotFoundError, match="no such record"):
        build_report(run2d, tmp_path / "r.html", records=[tmp_path / "missing.json"])


def _chromium() -> str | None:
    for name in (os.environ.get("BALANCED_VAE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


_CHECK = (
    '<script>window.addEventListener("load",()=>{const b=[...document.images].filter('
    'i=>!(i.complete&&i.naturalWidth>0)).map(i=>i.alt);document.body.setAttribute("data-image-check",'
    "JSON.stringify({n:document.images.length,broken:b}));});</script></body>"
)


def test_report_renders_in_headless_chromium(report, tmp_path):
    chromium = _chromium()
    if chromium is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                "CI=true but no Chromium found: install Debian's chromium (apt-get install -y chromium) "
                "or set BALANCED_VAE_CHROMIUM"
            )
        pytest.skip("headless Chromium not installed (apt-get install -y chromium); report rendering not checked")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    # 1. the report as written: nothing in the console
    res = subprocess.run(
        flags + ["--enable-logging=stderr", "--v=0", "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "<h2>Metrics</h2>" in res.stdout
    console = [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln]
    assert console == [], console
    # 2. a copy with a checker script: every image decoded to a non-empty bitmap
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", _CHECK))
    res = subprocess.run(flags + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'data-image-check="([^"]*)"', res.stdout)
    assert found, res.stdout[-2000:]
    check = json.loads(html.unescape(found.group(1)))
    assert check == {"n": 5, "broken": []}


def test_interpolation_and_traversal_codes():
    a, b = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([2.0, 1.0, 0.0])
    z = interpolate(a, b, 5)
    torch.testing.assert_close(z[0], a)
    torch.testing.assert_close(z[-1], b)
    torch.testing.assert_close(z[2], torch.tensor([1.0, 1.0, 1.0]))
    t = traverse(a, 1, 2.0, 5)
    torch.testing.assert_close(t[:, 1], torch.tensor([-1.0, 0.0, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(t[:, [0, 2]], a[[0, 2]].expand(5, 2))
    assert active_dims(torch.tensor([[0.0, -3.0, -1.0], [0.0, -3.0, -1.0]]), 2) == [1, 2]
    with pytest.raises(ValueError, match="at least 2"):
        interpolate(a, b, 1)
    with pytest.raises(ValueError, match="3 dimensions"):
        traverse(a, 3, 1.0, 4)


def test_latent_walk_and_report_commands(run2d, digits, tmp_path):
    path = latent_walk_for_run(run2d, tmp_path / "walk.png", pair=(0, 5), steps=7, data=digits)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert path.stat().st_size > 0 and meta["dims"] and len(meta["rows"]) == 2 * (1 + len(meta["dims"]))
    assert meta["rows"][:2] == ["test 0 -> 5", "sigma"]
    assert main(["latent-walk", str(run2d), "--dims", "1", "--steps", "3", "--out", str(tmp_path / "w.png")]) == 0
    assert main(["report", str(run2d), "--components", "3", "--n", "4", "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_text().count("data:image/png;base64,") == 5
    assert main(["latent-walk", str(run2d), "--pair", "0", "99999", "--out", str(tmp_path / "x.png")]) == 2
