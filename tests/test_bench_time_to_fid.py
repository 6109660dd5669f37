"""bench/time_to_fid.py: a call that resumes with copies already taken scores each budget's own copy."""

import json

import pytest
import torch


@pytest.fixture
def ttf(bench_script):
    return bench_script("time_to_fid")


def test_each_budget_row_is_its_own_copy(ttf, tmp_path, monkeypatch, capsys):
    """Both copies were taken by an earlier call: the 30-minute row must not report the 60-minute copy."""
    snaps = [
        {"budget_cpu_minutes": b, "cpu_minutes": b + 1.0, "epoch": e, "path": str(tmp_path / f"snap-{b:g}")}
        for b, e in ((30.0, 5), (60.0, 10))
    ]
    (tmp_path / "clock.json").write_text(
        json.dumps({"cpu_seconds": 3700.0, "wall_seconds": 4000.0, "snapshots": snaps})
    )
    fid_of = {str(tmp_path / "snap-30"): 19.8, str(tmp_path / "snap-60"): 18.9}
    monkeypatch.setattr(ttf, "score", lambda s, which, a, data: {"fid": fid_of[s["path"]], "fid_wall_seconds": 0.0})
    monkeypatch.setattr(ttf, "load_dataset", lambda *a, **k: None)
    monkeypatch.setattr(ttf, "train", lambda *a, **k: pytest.fail("nothing is left to train"))
    ttf.main(["--budgets", "30,60", "--work", str(tmp_path), "--score", "raw"])
    record = json.loads(capsys.readouterr().out)
    rows = record["rows"]
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # CPU-minutes depend on it
    assert [(r["budget_cpu_minutes"], r["epoch"], r["fid"]) for r in rows] == [(30.0, 5, 19.8), (60.0, 10, 18.9)]
