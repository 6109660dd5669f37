"""The paper's figures (Section 5), one function each: train what is missing, evaluate, draw, record.

Each takes the :class:`~balanced_vae.paper.context.Context` of one (dataset, budget, out), writes
its PNGs and returns the JSON record beside them (:func:`~balanced_vae.paper.records.figure_record`).
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib.pyplot as plt

from ..checkpoint import CHECKPOINT, STAGE1
from ..latent_samples import write_samples
from ..plots import save_fig
from ..reconstruct import reconstruct_run
from ..runs import load_run
from .budgets import fixed_run_name
from .context import Context
from .records import figure_record, write_table
from .specs import Fig1Row

__all__ = ["fig1", "fig2", "fig3", "fig4"]


def _pngs(ctx: Context, folder: Path) -> list[str]:
    """The PNGs a figure drew into ``folder``, by name, as paths relative to the context folder."""
    return sorted(str(p.relative_to(ctx.folder)) for p in folder.glob("*.png"))


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
        kl = ctx.kl_gap(run, aggregate=False, fit_on="sample")
        ctx.note_commit()  # the KL gap: computed by this code
        rows.append(
            Fig1Row(
                run=name,
                sigma2=run.model.likelihood.sigma2 if s2 is None else s2,
                learned=s2 is None,
                test_elbo=elbo["values"]["elbo"]["mean"],
                fid_prior=ctx.fid(name, "prior", n=n),
                fid_gmm=ctx.fid(name, "gmm", n=n),
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
        real_fid_same_n=ctx.real_fid(n),
        learned_point="test ELBO and KL of stage1.pt (global sigma^2); FID of the final model's decoder means",
    )
    return figure_record(
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
    return figure_record(
        ctx,
        "fig2",
        f"Figure 2 ({ctx.dataset}): samples from the prior and from the GMM",
        _pngs(ctx, target),
        ctx.protocol(K=ctx.k_default, n=64),
        time.perf_counter() - t0,
    )


def fig3(ctx: Context) -> Path:
    """Figure 3: test images, reconstructions and predicted per-pixel sigma (stage 2)."""
    t0 = time.perf_counter()
    target = ctx.folder / "fig3"
    reconstruct_run(ctx.run("learned"), target, n=16, data=ctx.data)
    calib = ctx.evaluate("learned", "calibration")
    return figure_record(
        ctx,
        "fig3",
        f"Figure 3 ({ctx.dataset}): reconstruction uncertainty",
        _pngs(ctx, target),
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
    return figure_record(
        ctx,
        "fig4",
        f"Figure 4 ({ctx.dataset}): generation uncertainty",
        _pngs(ctx, target),
        ctx.protocol(K=ctx.k_default, n=32),
        time.perf_counter() - t0,
    )
