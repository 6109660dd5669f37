"""The paper's tables and figures (Section 5) by name, over the public API.

``reproduce(name, dataset=..., budget=..., out=...)`` trains what is missing (see
:func:`balanced_vae.paper.experiments.ensure_run`), evaluates, and writes into
``OUT/<dataset>-<budget>/``: ``NAME.csv``, ``NAME.md`` and ``NAME.json`` for tables (the
JSON holds rows, the paper's values and the protocol), ``NAME.png`` for figures.
Evaluations are cached per run (``RUN/eval/*.json``), so tables that share a number
compute it once. The tables are :mod:`balanced_vae.paper.tables`, the figures
:mod:`balanced_vae.paper.figures`; :func:`prefetch` computes what they read ahead, in parallel.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from pathlib import Path

import torch

from ..data import Dataset
from .budgets import chosen_experiments, get_budget, resolved_budget
from .context import Context
from .figures import fig1, fig2, fig3, fig4
from .specs import SPECS
from .tables import table1, table2, table3, table4

__all__ = ["FUNCTIONS", "Context", "needs", "prefetch", "reproduce"]

log = logging.getLogger(__name__)


FUNCTIONS = {
    "table1": table1,
    "table2": table2,
    "table3": table3,
    "table4": table4,
    "fig1": fig1,
    "fig2": fig2,
    "fig3": fig3,
    "fig4": fig4,
}


def needs(name: str, ctx: Context) -> list[tuple[str, str, dict]]:
    """The (run, metric, options) evaluations experiment ``name`` reads (its :data:`~.specs.SPECS`
    entry), for :func:`prefetch`."""
    spec = SPECS.get(name)
    return [(e.run, e.metric, dict(e.options)) for e in spec.evaluations(ctx.budget, ctx.extra_runs)] if spec else []


def _job(
    dataset: str,
    budget: str,
    out: str,
    device: str,
    fid_backend: str,
    run: str,
    evals: list,
    threads: int,
    extra_runs: tuple[str, ...] | None = None,
) -> str:
    """One worker of :func:`prefetch`: train (or reuse) one run, then compute its cached evaluations."""
    torch.set_num_threads(threads)
    # force: one worker serves several runs, and each log line names its own
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {dataset}/{run} %(message)s", force=True)
    ctx = Context(dataset, get_budget(budget, extra_runs), out, progress=False, device=device, fid_backend=fid_backend)
    ctx.run(run, weights=False)
    for _, metric, options in evals:
        ctx.evaluate(run, metric, **options)
    return run


def prefetch(names: list[str], ctx: Context, jobs: int) -> None:
    """Train and evaluate the runs that ``names`` need, ``jobs`` runs at a time in separate processes.

    Every result lands in the same caches that the experiments read (run folders and
    ``RUN/eval/*.json``), so the tables are then assembled without new work. The real
    images' FID statistics are computed first, once, so the workers only read them.
    """
    todo: dict[str, list] = {}
    for name in names:
        for run, metric, options in needs(name, ctx):
            todo.setdefault(run, []).append((run, metric, options))
    if not todo:
        return
    for n in sorted(
        {
            options.get("n_fid") or ctx.budget.n_fid
            for evals in todo.values()
            for _, metric, options in evals
            if metric == "fid"
        }
    ):
        ctx.real_fid(n)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    log.info("prefetch: %d runs, %d at a time, %d threads each", len(todo), jobs, threads)
    with mp.get_context("spawn").Pool(jobs) as pool:
        pending = [
            pool.apply_async(
                _job,
                (
                    ctx.dataset,
                    ctx.budget.name,
                    str(ctx.out),
                    ctx.device,
                    ctx.fid_backend,
                    run,
                    evals,
                    threads,
                    ctx.extra_runs,
                ),
            )
            for run, evals in todo.items()
        ]
        for p in pending:
            log.info("prefetch: %s done", p.get())


def reproduce(
    name: str,
    *,
    dataset: str = "mnist",
    budget: str = "cpu",
    out: str | Path = "results",
    data: Dataset | None = None,
    progress: bool = True,
    device: str | None = "auto",
    jobs: int = 1,
    fid_backend: str = "auto",
    extra_runs: bool = True,
) -> list[Path]:
    """Run experiment ``name`` (``all``, or a comma-separated list) and return the JSON records written.

    ``device`` trains (and runs Inception) there: ``auto`` (default, as on the command line) is CUDA
    when available, else the CPU; ``cpu``, ``cuda`` or ``cuda:N`` name one. ``jobs`` > 1 trains and
    evaluates that many runs at once (:func:`prefetch`); ``fid_backend`` runs the Inception network
    (``auto``, ``torch``, ``openvino``); ``extra_runs=False`` leaves out the budget's runs beyond the paper's (e.g.
    ``learned-floor0``), and the records' budget says so (``extra_runs: []``).
    """
    chosen = get_budget(budget, None if extra_runs else ())
    names = chosen_experiments(name, chosen, dataset)
    ctx = Context(
        dataset,
        chosen,
        out,
        data=data,
        progress=progress,
        device=device,
        fid_backend=fid_backend,
    )
    log.info("budget %s: %s", budget, resolved_budget(ctx.budget))
    if jobs > 1:
        prefetch(names, ctx, jobs)
    records = []
    for n in names:
        ctx.take_commits()  # each row notes the commits of its own numbers only
        ctx.start_experiment()  # and each record the work behind its own numbers
        records.append(FUNCTIONS[n](ctx))
    return records
