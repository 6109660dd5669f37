"""Subcommands of the paper's tables and figures (:mod:`balanced_vae.paper`): reproduce, results-page.

The paper package is imported when one of them runs, so no other command loads it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import writes
from ..paper.budgets import BUDGETS, EXPERIMENTS, chosen_experiments, get_budget, resolved_budget, run_specs
from ..writes import Folder, Input
from .options import POS_INT, add_fid_backend, say


def add_reproduce(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="reproduce a table or figure of the paper (trains what is missing)",
        description="Train what is missing (reusing finished runs in --out, resuming interrupted ones), evaluate, "
        "and write each table as CSV/Markdown/JSON and each figure as PNG under "
        "OUT/<dataset>-<budget>/. Budgets: "
        + "; ".join(
            f"{b.name}: epochs<={b.epochs}, n_fid={b.n_fid}, width={b.width or 'default'}"
            + (f", {b.precision}" if b.precision != "fp32" else "")
            + (f" ({', '.join(b.experiments)} only)" if b.experiments else "")
            for b in BUDGETS.values()
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("experiment", help=f"one of {', '.join(EXPERIMENTS)}, a comma-separated list, or all")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "celeba"])
    p.add_argument("--budget", default="cpu", choices=sorted(BUDGETS))
    p.add_argument("--out", default="results", help="results folder")
    p.add_argument("--dry-run", action="store_true", help="print the budget and the runs it needs, then exit")
    p.add_argument("--device", default="auto", help="training and Inception device: auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--no-extra-runs",
        dest="extra_runs",
        action="store_false",
        help="leave out the budget's runs beyond the paper's (paper budgets: learned-floor0, Table 3's "
        "per-pixel model without the variance floor, whose stage 2 may not meet the convergence "
        "rule); the records' budget then lists extra_runs: []",
    )
    p.add_argument(
        "--jobs",
        type=POS_INT,
        default=1,
        help="train and evaluate this many runs at once in separate processes (e.g. on one GPU)",
    )
    add_fid_backend(p)


def run_reproduce(args) -> int:
    from ..paper.reproduce import reproduce  # imported when the command runs: `--help` stays fast

    budget = get_budget(args.budget, None if args.extra_runs else ())
    say(f"budget {budget.name}: {json.dumps(resolved_budget(budget))}")
    names = chosen_experiments(args.experiment, budget, args.dataset)  # refused here, before anything is written
    if args.dry_run:
        from ..methods import n_stages
        from ..paper.specs import SPECS

        say(f"experiments: {', '.join(names)}")
        specs = run_specs(args.dataset, budget)
        if all(n in SPECS and n != "table1" for n in names):  # the runs their evaluations read; else every run
            read = {e.run for n in names for e in SPECS[n].evaluations(budget, budget.extra_runs)}
            specs = {name: cfg for name, cfg in specs.items() if name in read}
        for name, cfg in specs.items():
            say(
                f"  run {name}: method={cfg.method} sigma2={cfg.sigma2} latent={cfg.latent_dim} stages={n_stages(cfg)} "
                f"epochs<={cfg.epochs} width={cfg.width or 'default'} precision={cfg.precision}"
            )
        return 0
    writes.check("reproduce", folders=[Folder(Path(args.out), "results")])
    for path in reproduce(
        args.experiment,
        dataset=args.dataset,
        budget=args.budget,
        out=args.out,
        device=args.device,
        jobs=args.jobs,
        fid_backend=args.fid_backend,
        extra_runs=args.extra_runs,
    ):
        say(f"wrote {path}")
    writes.record("reproduce", folders=[Folder(Path(args.out), "results")])
    return 0


def add_results_page(sub) -> None:
    p = sub.add_parser("results-page", help="generate docs/RESULTS.md from the reproduce result files")
    p.add_argument("results", nargs="?", default="results", help="results folder written by reproduce")
    p.add_argument("--out", default="docs/RESULTS.md")


def run_results_page(args) -> int:
    from ..paper.results_page import build_page  # imported when the command runs: `--help` stays fast

    writes.check("results-page", files=[args.out], inputs=[Input(Path(args.results), "folder")])
    path = build_page(args.results, args.out)
    writes.record("results-page", files=[path])
    say(f"wrote {path}")
    return 0
