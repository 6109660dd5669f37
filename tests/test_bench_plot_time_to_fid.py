"""bench/plot_time_to_fid.py: labels read old configs as the recipe they trained with; repeated runs merge."""

import json

import pytest


@pytest.fixture(scope="module")
def ptf(bench_script):
    return bench_script("plot_time_to_fid")


def _record(config, rows, commit="0123456789abcdef"):
    return {"bench": "time_to_fid", "config": config, "rows": rows, "provenance": {"git_commit": commit}}


def test_an_old_config_is_labelled_with_the_legacy_recipe(ptf):
    old = _record({"width": None, "tol": 0.001}, [])
    assert ptf.label(old) == "small w32, adam, endpoints rule (tol 0.001); 0123456"
    new = _record(
        {"net": "small", "width": 64, "optimiser": "radam", "stopping": "best", "tol": 2e-4, "lr_drops": 2}, []
    )
    assert ptf.label(new) == "small w64, radam, best rule (tol 0.0002), 2 lr drops; 0123456"
    nhwc = _record({**new["config"], "net": "paper", "width": 16, "channels_last": True, "lr_warmup": 1000}, [])
    assert ptf.label(nhwc) == (
        "paper w16, radam, best rule (tol 0.0002), 2 lr drops, lr warm-up 1000, channels_last; 0123456"
    )
    s1 = _record({**new["config"], "stages": 1, "epochs": 200, "min_epochs": 200}, [])
    assert ptf.label(s1) == "small w64, radam, best rule (tol 0.0002), 2 lr drops, stage 1 only, no early stop; 0123456"
    bf16 = _record({**s1["config"], "lr_drops": 0, "precision": "bf16"}, [])
    assert ptf.label(bf16) == "small w64, radam, best rule (tol 0.0002), bf16, stage 1 only, no early stop; 0123456"
    avx2 = {**_record({**bf16["config"], "precision": "fp32"}, []), "cpu_capability": "AVX2"}
    assert ptf.label(avx2) == "small w64, radam, best rule (tol 0.0002), stage 1 only, no early stop, AVX2; 0123456"


def test_a_run_scored_again_adds_only_its_new_scores(ptf):
    cfg = {"net": "small", "width": None, "optimiser": "radam", "stopping": "best", "tol": 1e-3}
    first = _record(cfg, [{"cpu_minutes": 30.6, "fid": 12.8}, {"cpu_minutes": 61.0, "fid": 12.7, "fid_ema": 13.4}])
    again = _record(cfg, [{"cpu_minutes": 61.0, "fid": 12.7, "fid_best": 12.6}])
    other = _record({**cfg, "width": 64}, [{"cpu_minutes": 30.0, "fid": 13.7}])
    got = ptf.curves([first, again, other])
    assert len(got) == 2
    mine = got[ptf.label(first)]
    assert mine == {"fid": [(30.6, 12.8), (61.0, 12.7)], "fid_best": [(61.0, 12.6)], "fid_ema": [(61.0, 13.4)]}


def test_the_figure_is_written_and_a_foreign_record_is_refused(ptf, tmp_path, capsys):
    cfg = {"net": "small", "width": None, "tol": 1e-3}
    path = tmp_path / "ttf.json"
    path.write_text(json.dumps(_record(cfg, [{"cpu_minutes": 5.0, "fid": 16.6}, {"cpu_minutes": 15.0, "fid": 14.3}])))
    ptf.main([str(path), "--out", str(tmp_path / "f.png")])
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"bench": "train_levers"}))
    with pytest.raises(SystemExit):
        ptf.main([str(bad), "--out", str(tmp_path / "g.png")])
    assert "bad.json: not a bench/time_to_fid.py record" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_each_data_set_gets_its_own_panel_and_lines(ptf, tmp_path, capsys):
    cfg = {"net": "small", "width": None, "tol": 1e-3, "dataset": "mnist"}
    mnist = _record(cfg, [{"cpu_minutes": 30.0, "fid": 12.8}])
    fashion = _record({**cfg, "dataset": "fashion-mnist"}, [{"cpu_minutes": 30.0, "fid": 35.0}])
    assert ptf.label(mnist) == ptf.label(fashion)  # same recipe: only the panel tells them apart
    assert len(ptf.figure([mnist]).axes) == 1
    fig = ptf.figure([mnist, fashion])
    assert len(fig.axes) == 2
    for ax, fid, paper, target in zip(fig.axes, (35.0, 12.8), (10.6, 8.9), (15.0, 8.5), strict=True):
        lines = ax.get_lines()  # fashion-mnist sorts first
        assert [list(ln.get_ydata()) for ln in lines if ln.get_marker() == "o"] == [[fid]]
        flat = sorted({ln.get_ydata()[0] for ln in lines if ln.get_linestyle() in ("--", ":")})
        assert flat == sorted([paper, target])
    paths = [tmp_path / "m.json", tmp_path / "f.json"]
    for path, rec in zip(paths, (mnist, fashion), strict=True):
        path.write_text(json.dumps(rec))
    ptf.main([*map(str, paths), "--out", str(tmp_path / "two.png")])
    assert (tmp_path / "two.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps(_record({**cfg, "dataset": "digits"}, [{"cpu_minutes": 1.0, "fid": 50.0}])))
    with pytest.raises(SystemExit):
        ptf.main([str(odd), "--out", str(tmp_path / "odd.png")])
    assert "odd.json: trained on 'digits'" in capsys.readouterr().err
    assert not (tmp_path / "odd.png").exists()


def test_no_panels_legend_hides_behind_the_panel_below(ptf):
    """Each panel's legend, below its axes, is laid out clear of the next panel (it was drawn under the
    MNIST axes, so the Fashion-MNIST panel named only its first line), and names every line it draws."""
    cfg = {"net": "small", "width": None, "tol": 1e-3, "dataset": "mnist"}
    recs = [
        _record({**cfg, "dataset": d, "width": w}, [{"cpu_minutes": 30.0, "fid": 20.0 + w}])
        for d in ("mnist", "fashion-mnist")
        for w in (16, 32, 64)
    ]
    fig = ptf.figure(recs)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    top, bottom = fig.axes  # fashion-mnist sorts first
    legend = top.get_legend()
    assert len(legend.get_texts()) == 5  # three runs, the paper line, the target line
    assert legend.get_window_extent(renderer).y0 > bottom.get_tightbbox(renderer).y1
