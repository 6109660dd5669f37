"""bench/train_levers.py --families: the parser, and one side-by-side record on random data."""

import json

import pytest


@pytest.fixture(scope="module")
def tl(bench_script):
    return bench_script("train_levers")


def test_families_parse_with_and_without_a_width(tl):
    assert tl.parse_families("small:64,paper:32,res") == [("small", 64), ("paper", 32), ("res", None)]


@pytest.mark.parametrize("bad", ["small:wide", ":32", "small:64,,res"])
def test_a_malformed_family_is_refused_with_the_form_it_wants(tl, bad):
    with pytest.raises(SystemExit, match="NET:WIDTH"):
        tl.parse_families(bad)


def test_families_are_timed_side_by_side_with_ratios_per_family(tl, monkeypatch, capsys):
    import torch

    class Data:
        x_train = torch.rand(400, 1, 28, 28)

    monkeypatch.setattr(tl, "load_dataset", lambda *a, **k: Data())
    torch.set_num_threads(1)
    tl.main(["--families", "small:8,res:4", "--levers", "fp32,channels_last", "--steps", "1", "--rounds", "1"])
    rec = json.loads(capsys.readouterr().out)
    keys = ["small:8/fp32", "small:8/channels_last", "res:4/fp32", "res:4/channels_last"]
    assert list(rec["images_per_s"]) == keys and rec["families"] == ["small:8", "res:4"]
    ips = rec["images_per_s"]
    assert rec["ratio_vs_fp32"]["res:4/fp32"] == 1.0
    assert rec["ratio_vs_fp32"]["res:4/channels_last"] == round(ips["res:4/channels_last"] / ips["res:4/fp32"], 3)
    assert rec["ratio_vs_first"]["res:4/fp32"] == round(ips["res:4/fp32"] / ips["small:8/fp32"], 3)
    assert rec["net"] is None and rec["width"] is None
