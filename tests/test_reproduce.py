"""The paper's tables and figures at the smoke budget, on real MNIST, and the generated results page."""

import csv
import json
import math
import os

import pytest

from balanced_vae.paper.experiments import EXPERIMENTS, get_budget, run_dir, run_specs
from balanced_vae.paper.reproduce import reproduce
from balanced_vae.paper.results_page import build_page

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, data_dir):
    import torch

    from balanced_vae.data import load_dataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # FID's Inception and the small nets run faster without thread contention
    os.environ.setdefault("BALANCED_VAE_DATA", str(data_dir))
    out = tmp_path_factory.mktemp("results")
    data = load_dataset("mnist", data_dir=data_dir)
    try:
        records = reproduce("all", dataset="mnist", budget="smoke", out=out, data=data, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out, records, data


def test_every_table_and_figure_is_written(smoke):
    out, records, _ = smoke
    folder = out / "mnist-smoke"
    assert sorted(p.stem for p in records) == sorted(EXPERIMENTS)
    for name in EXPERIMENTS:
        rec = json.loads((folder / f"{name}.json").read_text())
        assert rec["protocol"]["budget"]["name"] == "smoke" and rec["protocol"]["dataset"] == "mnist"
        for fig in rec.get("figures", []):
            assert (folder / fig).stat().st_size > 1000, fig
        if name.startswith("table"):
            rows = list(csv.DictReader(open(folder / f"{name}.csv")))
            assert rows and len(rows) == len(rec["rows"])
            assert (folder / f"{name}.md").read_text().startswith("### Table")
    assert (folder / "fig1.png").exists()


def test_tables_hold_finite_numbers_with_their_paper_values(smoke):
    out, _, _ = smoke
    folder = out / "mnist-smoke"
    t2 = json.loads((folder / "table2.json").read_text())
    assert {r["method"] for r in t2["rows"]} >= {"learned", "vae", "beta-vae", "dip-vae-i", "wae-mmd"}
    assert all(r["fid"] > 0 for r in t2["rows"])
    assert any(r["paper_fid"] == 8.9 for r in t2["rows"])
    t3 = json.loads((folder / "table3.json").read_text())
    rows = {r["model"]: r for r in t3["rows"]}
    assert set(rows) == {"learned-global", "learned-pixel", "vae", "beta-vae", "dip-vae-i"}
    for r in rows.values():
        assert r["bpd_prior"] > 0 and math.isfinite(r["iwae_prior"])
    assert t3["protocol"]["iwae"]["k"] == get_budget("smoke").k_iwae
    t1 = json.loads((folder / "table1.json").read_text())
    assert [r["sigma2"] for r in t1["rows"]] == ["1", "0.5", "learned", "0.01"]
    assert all(r["kl_gmm_mean"] > 0 for r in t1["rows"])
    t4 = json.loads((folder / "table4.json").read_text())
    assert [r["K"] for r in t4["rows"]] == [*get_budget("smoke").components, "real images (train vs test)"]
    real = json.loads((folder / f"real_fid_n{get_budget('smoke').n_fid}.json").read_text())
    assert t4["rows"][-1]["fid"] == real["fid_train_vs_test"]  # the floor of FID at the same n


def test_every_row_names_the_commit_that_computed_its_numbers(smoke, tmp_path):
    from balanced_vae.provenance import provenance, short_commit

    out, _, _ = smoke
    here = short_commit(provenance())  # everything in the smoke folder was computed by this code
    for name in ("table1", "table2", "table3", "table4"):
        rows = json.loads((out / "mnist-smoke" / f"{name}.json").read_text())["rows"]
        assert [r["commit"] for r in rows] == [here] * len(rows), name
    page = build_page(out, tmp_path / "RESULTS.md").read_text()
    table2 = page[page.index("### Table 2") :].split("\n\n")[1].splitlines()
    assert table2[0].endswith("| commit |") and all(line.endswith(f"| `{here}` |") for line in table2[2:])


def test_finished_runs_are_reused_not_retrained(smoke):
    out, _, data = smoke
    budget = get_budget("smoke")
    ckpt = run_dir(out, "mnist", budget, "learned") / "checkpoint.pt"
    before = ckpt.stat().st_mtime_ns
    reproduce("table3", dataset="mnist", budget="smoke", out=out, data=data, progress=False)
    assert ckpt.stat().st_mtime_ns == before
    assert set(p.name for p in (out / "mnist-smoke" / "runs").iterdir()) == set(run_specs("mnist", budget))


def test_every_record_states_the_compute_behind_its_numbers(smoke, tmp_path):
    out, _, _ = smoke
    folder = out / "mnist-smoke"
    t3 = json.loads((folder / "table3.json").read_text())
    runs = ("learned", "learned", "vae", "beta-vae", "dip-vae-i")  # the runs Table 3 reads
    stops = [
        json.loads((run_dir(out, "mnist", get_budget("smoke"), r) / "final.json").read_text())["stops"]
        for r in dict.fromkeys(runs)
    ]
    trained = sum(s["seconds"] for st in stops for s in st.values())
    assert t3["compute"]["training_seconds"] == pytest.approx(trained, abs=0.2)
    assert t3["compute"]["evaluation_seconds"] > 0
    page = build_page(out, tmp_path / "RESULTS.md").read_text()
    assert f"{t3['compute']['training_seconds'] / 60:.1f} min of training" in page


def test_figure1_kl_is_that_of_a_gmm_fitted_on_sampled_codes(smoke):
    """Figure 1's KL(q_GMM || p) uses the GMM as a density of q(z), fitted on one z ~ q(z|x) per
    image; the sampler's fit on means would squeeze the dimensions a large sigma^2 leaves unused."""
    from balanced_vae.latent import kl_gap

    out, _, data = smoke
    budget = get_budget("smoke")
    rows = {r["run"]: r for r in json.loads((out / "mnist-smoke" / "fig1_data.json").read_text())["rows"]}
    kl = kl_gap(
        run_dir(out, "mnist", budget, "vae"),
        n=budget.n_kl,
        runs=budget.kl_runs,
        seed=budget.seed,
        data=data,
        aggregate=False,
        fit_on="sample",
    )
    assert rows["vae"]["kl_gmm"] == pytest.approx(kl["kl_gmm"]["mean"], rel=1e-9)


def test_prefetch_computes_every_evaluation_the_experiments_read(smoke, monkeypatch):
    """``needs`` (what ``--jobs`` computes in parallel) names exactly the cached evaluations each
    experiment reads; a missing one would be computed serially, an extra one wasted."""
    from balanced_vae.paper.reproduce import FUNCTIONS, Context, needs

    out, _, data = smoke
    ctx = Context("mnist", get_budget("smoke"), out, data=data, progress=False)
    read: list[tuple[str, str]] = []
    evaluate = Context.evaluate

    def recording(self, name, metric, **options):
        read.append((name, self.eval_key(metric, **options)))
        return evaluate(self, name, metric, **options)

    monkeypatch.setattr(Context, "evaluate", recording)
    for name in ("table2", "table3", "table4", "fig1"):
        read.clear()
        FUNCTIONS[name](ctx)
        listed = {(run, ctx.eval_key(metric, **options)) for run, metric, options in needs(name, ctx)}
        assert set(read) == listed, name


def test_results_page_lists_every_table(smoke, tmp_path):
    out, _, _ = smoke
    page = build_page(out, tmp_path / "RESULTS.md").read_text()
    for n in ("Table 1", "Table 2", "Table 3", "Table 4", "Figure 1", "Figure 2", "Figure 3", "Figure 4"):
        assert n in page
    assert "Protocol: budget `smoke`" in page
    t2 = json.loads((out / "mnist-smoke" / "table2.json").read_text())
    from balanced_vae.paper.results_page import _claims_table2

    for claim in _claims_table2(t2):  # the page carries the statements computed from the records
        assert f"- {claim}" in page


def test_claims_are_computed_from_the_numbers():
    """The page's statements follow the rows: the same table with ours best, then ours beaten."""
    from balanced_vae.paper.results_page import _claims_table2, _claims_table3

    def t2(ours: float) -> dict:
        return {
            "protocol": {"budget": {"n_fid": 10_000}},
            "rows": [
                {"method": "learned", "sampler": "prior", "fid": 30.0},
                {"method": "learned", "sampler": "gmm K=32", "fid": ours, "paper_fid": 8.9},
                {"method": "vae", "sampler": "prior", "fid": 20.0},
                {"method": "real images (train vs test)", "sampler": "-", "fid": 1.9},
            ],
        }

    good, bad = _claims_table2(t2(8.0)), _claims_table2(t2(25.0))
    assert good[1].startswith("Agrees") and good[-1].startswith("Reaches")
    assert bad[1].startswith("Differs") and bad[-1].startswith("Does not reach")
    assert "Lowest FID: vae (prior) at 20.0." == bad[0]
    rows = [
        {"model": "learned-global", "iwae_prior": 800.0, "bpd_prior": 6.5},
        {"model": "learned-pixel", "iwae_prior": 700.0, "bpd_prior": 6.4},
        {"model": "vae", "iwae_prior": -470.0, "bpd_prior": 8.9},
    ]
    claims = _claims_table3({"rows": rows})
    assert claims[0].startswith("Differs") and claims[1].startswith("Agrees")


def test_rows_without_their_own_commit_show_the_commit_of_their_record():
    from balanced_vae.paper.results_page import _table_md

    rec = {
        "columns": ["method", "fid", "commit"],
        "protocol": {"git_commit": "0123456789abcdef", "git_dirty": True},
        "rows": [{"method": "a", "fid": 1.5, "commit": "fedcba9876"}, {"method": "b", "fid": 2.5}],
    }
    lines = _table_md(rec).splitlines()
    assert lines[0] == "| method | fid | commit |"
    assert lines[2] == "| a | 1.5 | `fedcba9876` |" and lines[3] == "| b | 2.5 | `0123456789+dirty` |"


def test_bad_requests_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown experiment"):
        reproduce("table9", out=tmp_path)
    with pytest.raises(ValueError, match="MNIST"):
        reproduce("table1", dataset="fashion-mnist", budget="smoke", out=tmp_path)
    with pytest.raises(ValueError, match="unknown budget"):
        reproduce("table2", budget="huge", out=tmp_path)
    with pytest.raises(FileNotFoundError, match="no results"):
        build_page(tmp_path / "none", tmp_path / "R.md")


def test_cli_reproduce_dry_run_and_results_page(smoke, tmp_path, capsys):
    from balanced_vae.cli import main

    assert main(["reproduce", "all", "--budget", "smoke", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "budget smoke" in out and "run z2-learned" in out and "run wae-mmd" in out
    results, _, _ = smoke
    assert main(["results-page", str(results), "--out", str(tmp_path / "R.md")]) == 0
    assert (tmp_path / "R.md").read_text().startswith("# Results")
    assert main(["results-page", str(tmp_path / "nothing"), "--out", str(tmp_path / "X.md")]) == 2


def test_no_extra_runs_leaves_the_unfloored_model_out_of_the_paper_budget(capsys):
    """--no-extra-runs: the paper budget without learned-floor0, in the plan and in the budget it records."""
    from balanced_vae.cli import main

    assert main(["reproduce", "table2,table3", "--budget", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "run learned-floor0" in out and '"extra_runs": ["learned-floor0"]' in out
    assert main(["reproduce", "table2,table3", "--budget", "paper", "--dry-run", "--no-extra-runs"]) == 0
    out = capsys.readouterr().out
    assert "run learned-floor0" not in out and '"extra_runs": []' in out and "run learned:" in out


def test_results_page_says_when_tables_left_the_extra_runs_out(smoke, tmp_path):
    import shutil

    out, _, _ = smoke
    for extra, shown in (([], True), (["learned-floor0"], False)):
        folder = tmp_path / str(shown) / "mnist-paper"
        shutil.copytree(out / "mnist-smoke", folder)
        for path in folder.glob("*.json"):
            rec = json.loads(path.read_text())
            if "budget" not in rec.get("protocol", {}):  # figure data, not a record
                continue
            rec["protocol"]["budget"].update(
                name="paper", extra_runs=extra if path.stem == "table2" else ["learned-floor0"]
            )
            path.write_text(json.dumps(rec))
        page = build_page(folder.parent, tmp_path / f"{shown}.md").read_text()
        assert ("no row for the per-pixel model without the variance floor" in page) is shown


def test_cached_evaluations_are_tied_to_the_weights(smoke):
    out, _, data = smoke
    run = run_dir(out, "mnist", get_budget("smoke"), "vae")
    cache = next((run / "eval").glob("iwae_*.json"))
    doc = json.loads(cache.read_text())
    doc["metrics"]["iwae"]["provenance"]["checkpoint_sha256"] = "0" * 64  # as if other weights made it
    doc["metrics"]["iwae"]["provenance"]["model_sha256"] = "0" * 64
    doc["metrics"]["iwae"]["values"]["prior"]["log_likelihood"]["mean"] = 12345.0
    cache.write_text(json.dumps(doc))
    reproduce("table3", dataset="mnist", budget="smoke", out=out, data=data, progress=False)
    rows = {r["model"]: r for r in json.loads((out / "mnist-smoke" / "table3.json").read_text())["rows"]}
    assert rows["vae"]["iwae_prior"] != 12345.0


def test_cached_evaluations_survive_packing_the_weights(smoke):
    """A checkpoint re-saved without its optimiser state (as the headline models are committed)
    holds the same weights: its cached evaluations are reused, not recomputed."""
    import torch

    from balanced_vae.checkpoint import file_digest, save_checkpoint

    out, _, data = smoke
    run = run_dir(out, "mnist", get_budget("smoke"), "dip-vae-i")
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    save_checkpoint(run / "checkpoint.pt", {k: v for k, v in ckpt.items() if k not in ("optimiser", "format_version")})
    cache = next((run / "eval").glob("iwae_*.json"))
    doc = json.loads(cache.read_text())
    assert doc["metrics"]["iwae"]["provenance"]["checkpoint_sha256"] != file_digest(run / "checkpoint.pt")
    doc["metrics"]["iwae"]["values"]["prior"]["log_likelihood"]["mean"] = 12345.0  # a recompute would lose it
    cache.write_text(json.dumps(doc))
    reproduce("table3", dataset="mnist", budget="smoke", out=out, data=data, progress=False)
    rows = {r["model"]: r for r in json.loads((out / "mnist-smoke" / "table3.json").read_text())["rows"]}
    assert rows["dip-vae-i"]["iwae_prior"] == 12345.0


def test_table2_is_rebuilt_from_committed_records_without_weights(smoke, tmp_path):
    """Results commit records, not weights: Table 2 comes back from them with the same numbers, nothing
    trained; a run whose final.json does not name its weights (an older record) is reported."""
    import shutil

    from balanced_vae.paper.experiments import ensure_run

    out, _, data = smoke
    budget = get_budget("smoke")
    shutil.copytree(out / "mnist-smoke", tmp_path / "mnist-smoke", ignore=shutil.ignore_patterns("*.pt", "gmm_K*"))
    (tmp_path / "mnist-smoke" / "table2.json").unlink()
    reproduce("table2", dataset="mnist", budget="smoke", out=tmp_path, data=data, progress=False)
    rows = json.loads((tmp_path / "mnist-smoke" / "table2.json").read_text())["rows"]
    assert rows == json.loads((out / "mnist-smoke" / "table2.json").read_text())["rows"]
    assert not list((tmp_path / "mnist-smoke").rglob("*.pt"))
    final = run_dir(tmp_path, "mnist", budget, "vae") / "final.json"
    final.write_text(json.dumps({k: v for k, v in json.loads(final.read_text()).items() if k != "weights"}))
    with pytest.raises(ValueError, match="not its weights"):
        ensure_run(tmp_path, "mnist", budget, "vae", data=data, progress=False)
