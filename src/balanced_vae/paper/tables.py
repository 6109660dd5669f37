"""The paper's tables (Section 5), one function each: train what is missing, evaluate, write the table.

Each takes the :class:`~balanced_vae.paper.context.Context` of one (dataset, budget, out) and
returns the JSON record it wrote (:func:`~balanced_vae.paper.records.write_table`); its rows are
the typed rows of :mod:`balanced_vae.paper.specs`.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..checkpoint import CHECKPOINT, STAGE1
from ..latent import gmm_ablation_for_run
from ..latent_density import latent_plot_for_run
from ..runs import load_run
from .budgets import PAPER, TABLE2_METHODS
from .context import Context
from .records import write_table
from .specs import Table1Row, Table2Row, Table3Row, Table4Row

__all__ = ["table1", "table2", "table3", "table4"]


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
        kl = ctx.kl_gap(run, aggregate=True, fit_on="sample")
        kl_means = ctx.kl_gap(run, aggregate=False, fit_on="mean")
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


def table2(ctx: Context) -> Path:
    """Table 2: FID of ours (GMM samples), the baselines (prior samples) and real images."""
    t0 = time.perf_counter()
    paper = PAPER["table2"].get(ctx.dataset, {})
    ctx.real_fid()  # first: a table that takes several sessions has its real-images record from the first one
    ctx.take_commits()
    rows = []
    for m in TABLE2_METHODS:
        rows.append(Table2Row(m, "prior", ctx.fid(m, "prior"), None, ctx.take_commits()).to_dict())
        if m == "learned":
            rows.append(
                Table2Row(m, f"gmm K={ctx.k_default}", ctx.fid(m, "gmm"), paper.get(m), ctx.take_commits()).to_dict()
            )
            if "learned-floor0" in ctx.extra_runs:
                rows.append(
                    Table2Row(
                        "learned-floor0",
                        f"gmm K={ctx.k_default}",
                        ctx.fid("learned-floor0", "gmm"),
                        None,
                        ctx.take_commits(),
                    ).to_dict()
                )
        else:
            rows[-1]["paper_fid"] = paper.get(m)
    rows.append(
        Table2Row("real images (train vs test)", "-", ctx.real_fid(), paper.get("real"), ctx.take_commits()).to_dict()
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
                fid=ctx.fid("learned", "gmm", components=k, n=n),
                heldout_loglik=r["heldout_ll"],
                fit_seconds=r["fit_seconds"],
                commit=ctx.take_commits(),
            ).to_dict()
        )
    # the floor of FID at this n: a row without the fit's columns (as records have always held it)
    rows.append({"K": "real images (train vs test)", "fid": ctx.real_fid(n), "commit": ctx.take_commits()})
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
