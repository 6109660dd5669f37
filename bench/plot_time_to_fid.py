"""Time-to-FID curves of ``bench/time_to_fid.py`` records on one figure (issue 27), a panel per data set.

Each record (``bench/results/time_to_fid*.json``) becomes one line: FID (10,000 GMM samples vs the
10,000 test images) of the trained weights against the CPU-minutes of training that bought them;
its best-validation (``fid_best``) and moving-average (``fid_ema``) scores are drawn as separate
markers at the same CPU-minutes (one above the y-axis, set by the trained weights' worst FID, is
drawn at its top with its value written beside it). A record that repeats another one's run (same work folder and
commit: e.g. ``time_to_fid_small_best60.json``, the same copy scored again with ``--score best``)
adds only the scores the other lacks. Horizontal lines: the paper's ours + GMM (MNIST 8.9,
Fashion-MNIST 10.6) and issue 27's target for that data set (8.5, 15).

The label of each line is read from the record's config as saved (configs saved before a field
existed read as ``balanced_vae.config.LEGACY``, the recipe those runs trained with).

    python bench/plot_time_to_fid.py --out docs/time-to-fid.png   # every record in bench/results/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from balanced_vae.config import LEGACY
from balanced_vae.nets import default_width
from balanced_vae.paper.budgets import PAPER
from balanced_vae.plots import plt, save_fig

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_FID = {"mnist": 8.5, "fashion-mnist": 15.0}  # issue 27's targets for ours + GMM


def label(record: dict) -> str:
    """``small w32, radam, best rule (tol 0.001), 61a179d`` from the record's config and provenance."""
    c = {**LEGACY, **record["config"]}
    width = c.get("width") or default_width((1, 28, 28), c["net"])  # None: the family's default (MNIST-sized)
    parts = [f"{c['net']} w{width}", c["optimiser"], f"{c['stopping']} rule (tol {c['tol']:g})"]
    if c.get("lr_drops"):
        parts.append(f"{c['lr_drops']} lr drops")
    if c.get("lr_warmup"):
        parts.append(f"lr warm-up {c['lr_warmup']}")
    if c.get("channels_last"):
        parts.append("channels_last")
    if c.get("precision", "fp32") != "fp32":
        parts.append(c["precision"])
    if c.get("stages") == 1:
        parts.append("stage 1 only")
    if c.get("min_epochs", 0) >= c.get("epochs", 1):
        parts.append("no early stop")
    if record.get("cpu_capability"):  # CPU-minutes differ ~3x between an AVX2 and an AVX-512 machine
        parts.append(record["cpu_capability"])
    commit = (record.get("provenance") or {}).get("git_commit") or "?"
    return ", ".join(parts) + f"; {commit[:7]}"


def dataset(record: dict) -> str:
    """The data set the record's run trained on (``mnist`` for configs saved before the field)."""
    return {**LEGACY, **record["config"]}.get("dataset") or "mnist"


def curves(records: list[dict]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """``{label: {"fid": [(cpu_min, fid), ...], "fid_best": [...], "fid_ema": [...]}}``, points unique
    per CPU-minute and sorted; records of one label are merged (give it one data set's records)."""
    out: dict[str, dict[str, dict[float, float]]] = {}
    for rec in records:
        series = out.setdefault(label(rec), {"fid": {}, "fid_best": {}, "fid_ema": {}})
        for row in rec["rows"]:
            for key, points in series.items():
                if row.get(key) is not None:
                    points[float(row["cpu_minutes"])] = float(row[key])
    return {lab: {k: sorted(v.items()) for k, v in s.items()} for lab, s in out.items()}


def _panel(ax, records: list[dict], name: str) -> None:
    """One data set's lines, markers and reference lines on ``ax``."""
    drawn = curves(records)
    paper = PAPER["table2"][name]["learned"]
    top = max([y for s in drawn.values() for _, y in s["fid"]] + [paper, TARGET_FID[name]]) + 3  # the y-axis' limit
    for lab, s in drawn.items():
        if not s["fid"]:
            continue
        xs, ys = zip(*s["fid"], strict=True)
        (line,) = ax.plot(xs, ys, "o-", label=lab)
        for key, marker, what in (("fid_best", "*", "best.pt"), ("fid_ema", "x", "EMA")):
            if s[key]:
                bx, by = zip(*s[key], strict=True)
                shown = [min(y, top - 0.5) for y in by]  # off the scale: drawn at the top, its value written
                ax.plot(bx, shown, marker, color=line.get_color(), markersize=9, label=f"  {what} of the run above")
                for x, y in zip(bx, by, strict=True):
                    if y > top - 0.5:
                        ax.annotate(f"{y:.0f}", (x, top - 0.5), textcoords="offset points", xytext=(6, -3), fontsize=7)
    ax.axhline(paper, color="k", ls="--", lw=1, label=f"paper, ours + GMM ({paper})")
    ax.axhline(TARGET_FID[name], color="grey", ls=":", lw=1, label=f"issue 27 target ({TARGET_FID[name]})")
    ax.set_ylim(0, top)
    ax.set_xlabel("CPU-minutes of training (process time, all threads)")
    ax.set_ylabel(f"FID, 10k GMM samples vs 10k test ({name})")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)  # below the axes
    ax.grid(alpha=0.3)


def figure(records: list[dict]):
    """A panel per data set (sorted by name): one line per run (trained weights), markers for its
    best.pt and EMA scores."""
    names = sorted({dataset(r) for r in records})
    fig, axes = plt.subplots(  # constrained: each legend below its axes gets room, not the next panel's
        len(names), 1, figsize=(12, 5.6 * len(names)), squeeze=False, layout="constrained"
    )
    for ax, name in zip(axes[:, 0], names, strict=True):
        _panel(ax, [r for r in records if dataset(r) == name], name)
    axes[0, 0].set_title("Time to FID on a 2-core CPU")
    return fig


def plot(records: list[dict], path: Path) -> Path:
    """:func:`figure` written to ``path``; returns the PNG."""
    return save_fig(figure(records), path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "records", nargs="*", type=Path, help="time_to_fid records (default: bench/results/time_to_fid*.json)"
    )
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    a = p.parse_args(argv)
    paths = a.records or sorted(RESULTS.glob("time_to_fid*.json"))
    if not paths:
        p.error(f"no time_to_fid records in {RESULTS}; give their paths")
    records = []
    for path in paths:
        rec = json.loads(path.read_text())
        if rec.get("bench") != "time_to_fid":
            p.error(f"{path}: not a bench/time_to_fid.py record (its 'bench' is {rec.get('bench')!r})")
        if dataset(rec) not in TARGET_FID:
            p.error(f"{path}: trained on {dataset(rec)!r}; this figure draws {' and '.join(TARGET_FID)} only")
        records.append(rec)
    print(plot(records, a.out))


if __name__ == "__main__":
    main()
