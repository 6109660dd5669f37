"""One function per table and figure of the paper (Section 5), over the public API.

``reproduce(name, dataset=..., budget=..., out=...)`` trains what is missing (see
:func:`balanced_vae.experiments.ensure_run`), evaluates, and writes into
``OUT/<dataset>-<budget>/``: ``NAME.csv``, ``NAME.md`` and ``NAME.json`` for tables (the
JSON holds rows, the paper's values and the protocol), ``NAME.png`` for figures.
Evaluations are cached per run (``RUN/eval/*.json``), so tables that share a number
compute it once.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch

from ..atomic import write_json_atomic, write_text_atomic
from ..checkpoint import CHECKPOINT, STAGE1
from ..data import Dataset
from ..fid_sets import real_data_fid
from ..latent import gmm_ablation_for_run, kl_gap
from ..latent_density import latent_plot_for_run
from ..latent_samples import write_samples
from ..plots import save_fig
from ..reconstruct import reconstruct_run
from ..runs import load_run
from .context import Context
from .experiments import EXPERIMENTS, PAPER, TABLE2_METHODS, fixed_run_name, get_budget, resolved_budget
from .specs import SPECS, Fig1Row, Table1Row, Table2Row, Table3Row, Table4Row

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- output


def format_number(v: Any) -> str:
    """A table cell: 4 significant digits below 10^4, whole numbers above, blank for None."""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}")
    return "" if v is None else str(v)


def write_table(
    ctx: Context, name: str, columns: list[str], rows: list[dict], *, title: str, protocol: dict, seconds: float
) -> Path:
    """Write ``name`` as CSV, Markdown and JSON (rows + protocol) into the context folder."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(ctx.folder / f"{name}.csv", buf.getvalue())
    md = [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}"]
    md += [f"| {' | '.join(format_number(r.get(c)) for c in columns)} |" for r in rows]
    write_text_atomic(ctx.folder / f"{name}.md", f"### {title}\n\n" + "\n".join(md) + "\n")
    write_json_atomic(
        ctx.folder / f"{name}.json",
        {
            "name": name,
            "title": title,
            "columns": columns,
            "rows": rows,
            "protocol": protocol,
            "seconds": round(seconds, 1),
            "compute": ctx.compute(),
        },
    )
    return ctx.folder / f"{name}.json"


def _figure_record(
    ctx: Context,
    name: str,
    title: str,
    files: list[str],
    protocol: dict,
    seconds: float,
    rows: list[dict] | None = None,
    columns: list[str] | None = None,
) -> Path:
    path = ctx.folder / f"{name}.json"
    write_json_atomic(
        path,
        {
            "name": name,
            "title": title,
            "figures": files,
            "rows": rows or [],
            "columns": columns or [],
            "protocol": protocol,
            "seconds": round(seconds, 1),
            "compute": ctx.compute(),
        },
    )
    return path


# ---------------------------------------------------------------------------------- tables


def table1(ctx: Context) -> Path:
    """Table 1: 2-D latents at sigma^2 = 1, 0.5, learned, 0.01: learned sigma^2, KL(q_GMM || p), densities."""
    t0 = time.perf_counter()
    rows, figures = [], []
    for label, name in (
        ("1", "z2-fixed-1"),
        ("0.5", "z2-fixed-0.5"),
        ("learned", "z2-learned"),
        ("0.01", "z2-fixed-0.01"),
    ):
        path = ctx.run(name)
        run = load_run(path)
        # the GMM stands for q(z) as a density here, so it is fitted on z ~ q(z|x) (Eq. 12);
        # the fit on posterior means (what sampling uses) is shown beside it
        kl = kl_gap(
            run,
            components=ctx.k_default,
            n=ctx.budget.n_kl,
            runs=ctx.budget.kl_runs,
            seed=ctx.budget.seed,
            data=ctx.data,
            aggregate=True,
            fit_on="sample",
        )
        kl_means = kl_gap(
            run,
            components=ctx.k_default,
            n=ctx.budget.n_kl,
            runs=ctx.budget.kl_runs,
            seed=ctx.budget.seed,
            data=ctx.data,
            aggregate=False,
            fit_on="mean",
        )
        ctx.note_commit()  # the KL gaps above: computed by this code
        fig = ctx.folder / f"table1_density_{name}.png"
        latent_plot_for_run(run, fig, components=ctx.k_default, data=ctx.data)
        figures.append(fig.name)
        rows.append(
            Table1Row(
                sigma2=label,
                sigma2_value=run.model.likelihood.sigma2,
                kl_gmm_mean=kl["kl_gmm"]["mean"],
                kl_gmm_std=kl["kl_gmm"]["std"],
                kl_gmm_means_fit=kl_means["kl_gmm"]["mean"],
                kl_agg_mean=kl["kl_aggregate"]["mean"],
                kl_agg_std=kl["kl_aggregate"]["std"],
                paper_kl_gmm=PAPER["table1"]["kl_gmm"][label],
                paper_sigma2=PAPER["table1"]["sigma2_learned"] if label == "learned" else None,
                commit=ctx.take_commits(),
            ).to_dict()
        )
    proto = ctx.protocol(
        latent_dim=2,
        K=ctx.k_default,
        kl_samples=ctx.budget.n_kl,
        kl_runs=ctx.budget.kl_runs,
        kl_estimator=kl["protocol"]["estimator"],
        figures=figures,
        gmm_fit={
            "kl_gmm_mean": "GMM fitted on one z ~ q(z|x) per training image",
            "kl_gmm_means_fit": "GMM fitted on the posterior means mu(x)",
        },
    )
    return write_table(
        ctx,
        "table1",
        [
            "sigma2",
            "sigma2_value",
            "kl_gmm_mean",
            "kl_gmm_std",
            "kl_gmm_means_fit",
            "paper_kl_gmm",
            "kl_agg_mean",
            "kl_agg_std",
            "paper_sigma2",
            "commit",
        ],
        rows,
        title=f"Table 1 ({ctx.dataset}): KL gap of 2-D latent models",
        protocol=proto,
        seconds=time.perf_counter() - t0,
    )


def _fid(ctx: Context, name: str, sampler: str, components: int | None = None, n: int | None = None) -> float:
    """FID of run ``name``'s decoder means under ``sampler`` on ``n`` images (the budget's n_fid when None)."""
    return ctx.evaluate(name, "fid", sampler=sampler, components=components, n_fid=n)["values"]["fid"]


def _real_fid(ctx: Context, n: int | None = None) -> float:
    """FID of ``n`` real training vs ``n`` test images (the budget's n_fid when None), cached."""
    n = n or ctx.budget.n_fid

    cache = ctx.folder / f"real_fid_n{n}.json"
    if not cache.exists():
        real_data_fid(
            ctx.dataset,
            n=n,
            cache_dir=ctx.out / "fid-cache",
            out=cache,
            backend=ctx.fid_backend,
            paper_value=PAPER["table2"].get(ctx.dataset, {}).get("real"),
            device=ctx._inception_device(),
            progress=ctx.progress,
        )
    doc = json.loads(cache.read_text())
    ctx.note_commit(doc.get("provenance"))
    return doc["fid_train_vs_test"]


def table2(ctx: Context) -> Path:
    """Table 2: FID of ours (GMM samples), the baselines (prior samples) and real images."""
    t0 = time.perf_counter()
    paper = PAPER["table2"].get(ctx.dataset, {})
    rows = []
    for m in TABLE2_METHODS:
        rows.append(Table2Row(m, "prior", _fid(ctx, m, "prior"), None, ctx.take_commits()).to_dict())
        if m == "learned":
            rows.append(
                Table2Row(m, f"gmm K={ctx.k_default}", _fid(ctx, m, "gmm"), paper.get(m), ctx.take_commits()).to_dict()
            )
            if "learned-floor0" in ctx.extra_runs:
                rows.append(
                    Table2Row(
                        "learned-floor0",
                        f"gmm K={ctx.k_default}",
                        _fid(ctx, "learned-floor0", "gmm"),
                        None,
                        ctx.take_commits(),
                    ).to_dict()
                )
        else:
            rows[-1]["paper_fid"] = paper.get(m)
    rows.append(
        Table2Row("real images (train vs test)", "-", _real_fid(ctx), paper.get("real"), ctx.take_commits()).to_dict()
    )
    ev = ctx.evaluate("learned", "fid", sampler="gmm")
    ctx.take_commits()
    proto = ctx.protocol(fid=ev["protocol"], paper_sampler="ours: GMM of the aggregate posterior; baselines: prior")
    return write_table(
        ctx,
        "table2",
        ["method", "sampler", "fid", "paper_fid", "commit"],
        rows,
        title=f"Table 2 ({ctx.dataset}): FID, {ctx.budget.n_fid} generated vs {ctx.budget.n_fid} test images",
        protocol=proto,
        seconds=time.perf_counter() - t0,
    )


def table3(ctx: Context) -> Path:
    """Table 3: IWAE test log-likelihood with p(z) = prior and GMM, plus dequantised bits/dim."""
    t0 = time.perf_counter()
    paper = PAPER["table3"].get(ctx.dataset, {})
    entries = [("learned-global", "learned", STAGE1), ("learned-pixel", "learned", CHECKPOINT)]
    if "learned-floor0" in ctx.extra_runs:
        entries.append(("learned-pixel-floor0", "learned-floor0", CHECKPOINT))
    entries += [
        ("vae", "vae", CHECKPOINT),
        ("beta-vae", "beta-vae", CHECKPOINT),
        ("dip-vae-i", "dip-vae-i", CHECKPOINT),
    ]
    rows, proto_iwae = [], None
    for label, name, which in entries:
        ev = ctx.evaluate(name, "iwae", sampler="gmm", which=which)
        proto_iwae = ev["protocol"]
        v = ev["values"]
        gmm_key = next(k for k in v if k.startswith("gmm"))
        rows.append(
            Table3Row(
                model=label,
                iwae_prior=v["prior"]["log_likelihood"]["mean"],
                iwae_gmm=v[gmm_key]["log_likelihood"]["mean"],
                bpd_prior=v["prior"].get("bits_per_dim", {}).get("mean"),
                bpd_gmm=v[gmm_key].get("bits_per_dim", {}).get("mean"),
                paper_iwae=paper.get(label),
                commit=ctx.take_commits(),
            ).to_dict()
        )
    return write_table(
        ctx,
        "table3",
        ["model", "iwae_prior", "iwae_gmm", "paper_iwae", "bpd_prior", "bpd_gmm", "commit"],
        rows,
        title=f"Table 3 ({ctx.dataset}): IWAE log-likelihood (nats per image) and dequantised bits/dim",
        protocol=ctx.protocol(iwae=proto_iwae),
        seconds=time.perf_counter() - t0,
    )


def table4(ctx: Context) -> Path:
    """Table 4: FID of GMM samples against the number of components K, with the fit's held-out score.

    FID uses the budget's ``n_fid_ablation`` images (all of ``n_fid`` when None); real training
    vs test images at the same n are the last row, the floor of FID at that n.
    """
    t0 = time.perf_counter()
    n = ctx.budget.n_fid_ablation or ctx.budget.n_fid
    path = ctx.run("learned")
    ablation = gmm_ablation_for_run(path, components=ctx.budget.components, data=ctx.data)
    ctx.take_commits()
    by_k = {r["K"]: r for r in ablation["rows"]}
    rows = []
    for k in ctx.budget.components:
        r = by_k.get(k, {})
        ctx.note_commit()  # the held-out score: computed by this code
        rows.append(
            Table4Row(
                K=k,
                fid=_fid(ctx, "learned", "gmm", components=k, n=n),
                heldout_loglik=r["heldout_ll"],
                fit_seconds=r["fit_seconds"],
                commit=ctx.take_commits(),
            ).to_dict()
        )
    # the floor of FID at this n: a row without the fit's columns (as records have always held it)
    rows.append({"K": "real images (train vs test)", "fid": _real_fid(ctx, n), "commit": ctx.take_commits()})
    return write_table(
        ctx,
        "table4",
        ["K", "fid", "heldout_loglik", "fit_seconds", "commit"],
        rows,
        title=f"Table 4 ({ctx.dataset}): FID ({n} generated vs {n} test images) against the number "
        "of mixture components",
        protocol=ctx.protocol(ablation=ablation["protocol"], n_fid=n),
        seconds=time.perf_counter() - t0,
    )


# ---------------------------------------------------------------------------------- figures


def fig1(ctx: Context) -> Path:
    """Figure 1: test ELBO, FID (prior and GMM) and KL gap against sigma^2; the learned point marked."""
    t0 = time.perf_counter()
    n = ctx.budget.n_fid_ablation or ctx.budget.n_fid
    rows = []
    points = [(s2, fixed_run_name(s2)) for s2 in ctx.budget.fixed_sigma2] + [(None, "learned")]
    for s2, name in points:
        run = load_run(ctx.run(name), which=STAGE1 if name == "learned" else CHECKPOINT)
        elbo = ctx.evaluate(name, "elbo", which=STAGE1 if name == "learned" else CHECKPOINT)
        # q_GMM as a density of q(z): fitted on one z ~ q(z|x) per image; a fit on the means (the
        # sampler's) squeezes the dimensions a large sigma^2 leaves unused and inflates the KL
        kl = kl_gap(
            run,
            components=ctx.k_default,
            n=ctx.budget.n_kl,
            runs=ctx.budget.kl_runs,
            seed=ctx.budget.seed,
            data=ctx.data,
            aggregate=False,
            fit_on="sample",
        )
        ctx.note_commit()  # the KL gap: computed by this code
        rows.append(
            Fig1Row(
                run=name,
                sigma2=run.model.likelihood.sigma2 if s2 is None else s2,
                learned=s2 is None,
                test_elbo=elbo["values"]["elbo"]["mean"],
                fid_prior=_fid(ctx, name, "prior", n=n),
                fid_gmm=_fid(ctx, name, "gmm", n=n),
                kl_gmm=kl["kl_gmm"]["mean"],
                commit=ctx.take_commits(),
            ).to_dict()
        )
    rows.sort(key=lambda r: r["sigma2"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [("test_elbo", "test ELBO (nats)"), (("fid_prior", "fid_gmm"), "FID"), ("kl_gmm", "KL(q_GMM || p)")]
    for ax, (keys, ylabel) in zip(axes, panels):
        for key in keys if isinstance(keys, tuple) else (keys,):
            xs = [r["sigma2"] for r in rows if not r["learned"]]
            ax.plot(xs, [r[key] for r in rows if not r["learned"]], "o-", label=f"fixed sigma^2 ({key})")
            lr = next(r for r in rows if r["learned"])
            ax.plot([lr["sigma2"]], [lr[key]], "r*", ms=14, label=f"learned ({key})")
        ax.set_xscale("log")
        ax.set_xlabel("sigma^2")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(f"Figure 1 ({ctx.dataset}, {ctx.budget.name} budget)")
    save_fig(fig, ctx.folder / "fig1.png")
    cols = ["run", "sigma2", "learned", "test_elbo", "fid_prior", "fid_gmm", "kl_gmm", "commit"]
    write_table(ctx, "fig1_data", cols, rows, title="Figure 1 data", protocol=ctx.protocol(), seconds=0)
    protocol = ctx.protocol(
        kl_runs=ctx.budget.kl_runs,
        K=ctx.k_default,
        kl_gmm_fit_on="sample",
        n_fid=n,
        real_fid_same_n=_real_fid(ctx, n),
        learned_point="test ELBO and KL of stage1.pt (global sigma^2); FID of the final model's decoder means",
    )
    return _figure_record(
        ctx,
        "fig1",
        f"Figure 1 ({ctx.dataset}): ELBO, FID and KL gap against sigma^2",
        ["fig1.png"],
        protocol,
        time.perf_counter() - t0,
        rows,
        cols,
    )


def fig2(ctx: Context) -> Path:
    """Figure 2: prior versus GMM samples of the learned-variance model, side by side."""
    t0 = time.perf_counter()
    target = ctx.folder / "fig2"
    write_samples(
        ctx.run("learned"),
        target,
        sampler="gmm",
        components=ctx.k_default,
        n=64,
        seed=ctx.budget.seed,
        compare=True,
        data=ctx.data,
    )
    files = sorted(str(p.relative_to(ctx.folder)) for p in target.glob("*.png"))
    return _figure_record(
        ctx,
        "fig2",
        f"Figure 2 ({ctx.dataset}): samples from the prior and from the GMM",
        files,
        ctx.protocol(K=ctx.k_default, n=64),
        time.perf_counter() - t0,
    )


def fig3(ctx: Context) -> Path:
    """Figure 3: test images, reconstructions and predicted per-pixel sigma (stage 2)."""
    t0 = time.perf_counter()
    target = ctx.folder / "fig3"
    reconstruct_run(ctx.run("learned"), target, n=16, data=ctx.data)
    calib = ctx.evaluate("learned", "calibration")
    files = sorted(str(p.relative_to(ctx.folder)) for p in target.glob("*.png"))
    return _figure_record(
        ctx,
        "fig3",
        f"Figure 3 ({ctx.dataset}): reconstruction uncertainty",
        files,
        ctx.protocol(calibration=calib["protocol"]),
        time.perf_counter() - t0,
        rows=[{k: v for k, v in calib["values"].items() if not isinstance(v, (dict, list))}],
        columns=[k for k, v in calib["values"].items() if not isinstance(v, (dict, list))],
    )


def fig4(ctx: Context) -> Path:
    """Figure 4: GMM samples with the per-pixel sigma of each generated image."""
    t0 = time.perf_counter()
    target = ctx.folder / "fig4"
    write_samples(
        ctx.run("learned"), target, sampler="gmm", components=ctx.k_default, n=32, seed=ctx.budget.seed, data=ctx.data
    )
    files = sorted(str(p.relative_to(ctx.folder)) for p in target.glob("*.png"))
    return _figure_record(
        ctx,
        "fig4",
        f"Figure 4 ({ctx.dataset}): generation uncertainty",
        files,
        ctx.protocol(K=ctx.k_default, n=32),
        time.perf_counter() - t0,
    )


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
    ctx.run(run)
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
    for n in names:
        for run, metric, options in needs(n, ctx):
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
        _real_fid(ctx, n)
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
    device: str | None = "cpu",
    jobs: int = 1,
    fid_backend: str = "auto",
    extra_runs: bool = True,
) -> list[Path]:
    """Run experiment ``name`` (``all``, or a comma-separated list) and return the JSON records written.

    ``device`` trains (and runs Inception) there; ``jobs`` > 1 trains and evaluates that many runs
    at once (:func:`prefetch`); ``fid_backend`` runs the Inception network (``auto``, ``torch``,
    ``openvino``); ``extra_runs=False`` leaves out the budget's runs beyond the paper's (e.g.
    ``learned-floor0``), and the records' budget says so (``extra_runs: []``).
    """
    names = list(EXPERIMENTS) if name == "all" else [n.strip() for n in name.split(",") if n.strip()]
    unknown = [n for n in names if n not in FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown experiment {unknown[0]!r}; choose one of {', '.join(EXPERIMENTS)} or all")
    if dataset != "mnist" and "table1" in names:
        if name == "table1":
            raise ValueError("Table 1 is the paper's MNIST experiment; run it with --dataset mnist")
        names.remove("table1")
    ctx = Context(
        dataset,
        get_budget(budget, None if extra_runs else ()),
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
