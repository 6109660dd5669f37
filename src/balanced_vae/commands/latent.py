"""Subcommands over a run's latent space and its report: sample, kl, latent-plot, ood, report, latent-walk.

Each is a pair ``_add_NAME(subparsers)`` / ``_run_NAME(args)``; the library module a command
calls is imported when it runs, so ``balanced-vae --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import writes
from ..checkpoint import CHECKPOINT, STAGE1
from ..protocol import DEFAULT_COMPONENTS, SAMPLER_KINDS
from ..writes import Folder, Input, input_of
from .options import NONNEG_INT, POS_FLOAT, POS_INT, add_data_dir, add_gmm, add_run, say


def _write_file(
    command: str,
    args,
    default: str,
    make: Callable[[], Path],
    *,
    inputs: Sequence[Input] = (),
    sidecars: tuple[str, ...] = (),
) -> int:
    """Run ``command``, which writes one file: ``--out``, else RUN/``default``, beside it the same path with
    each suffix of ``sidecars``. Checks that it may write them (it reads RUN and ``inputs``), writes them
    (``make()`` returns the file's path), records them and names the file."""
    target = Path(args.out) if args.out else Path(args.run) / default
    writes.check(
        command,
        files=[target, *(target.with_suffix(s) for s in sidecars)],
        inputs=[Input(Path(args.run), "run"), *inputs],
    )
    path = make()
    writes.record(command, files=[path, *(path.with_suffix(s) for s in sidecars)])
    say(f"wrote {path}")
    return 0


def add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="generate images from the prior, the GMM or the aggregate posterior (Fig. 2, 4)",
        description="Decode N samples of the run's latent space and write OUT/KIND_means.png, the "
        "per-pixel sigma grid OUT/KIND_sigma.png when the run has a variance head "
        "(stage 2; otherwise the global sigma is reported), the raw arrays "
        "(KIND_z.npy, KIND_means.npy, KIND_sigma.npy) and KIND_samples.json. The GMM "
        "(Eq. 13) is fitted on the run's training codes once and kept in RUN/gmm_K<K>/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_run(p)
    p.add_argument(
        "--sampler",
        choices=list(SAMPLER_KINDS),
        default="gmm",
        help="p(z) to sample: N(0, I), the GMM of Eq. 13 or the exact aggregate posterior of Eq. 12",
    )
    add_gmm(p)
    p.add_argument("--n", type=POS_INT, default=64, help="number of samples")
    p.add_argument("--seed", type=NONNEG_INT, default=0, help="seed of the generator that draws the codes")
    p.add_argument(
        "--compare",
        action="store_true",
        help="also write OUT/compare_prior_gmm.png: prior and GMM samples side by side (Figure 2)",
    )
    add_data_dir(p)
    p.add_argument("--out", required=True, help="output folder")


def run_sample(args) -> int:
    from ..latent_samples import write_samples  # imported when the command runs: `--help` stays fast

    kinds = (
        "means.png",
        "z.npy",
        "means.npy",
        "sigma.png",
        "sigma.npy",
        "samples.json",
        "means.csv",
        "sigma.csv",
        "rows.csv",
    )  # the CSVs: runs on tables (table_run.write_table_samples)
    names = tuple(f"{args.sampler}_{n}" for n in kinds) + (("compare_prior_gmm.png",) if args.compare else ())
    out = Folder(Path(args.out), names=names)
    writes.check("sample", folders=[out], inputs=[Input(Path(args.run), "run")])
    s = write_samples(
        args.run,
        args.out,
        sampler=args.sampler,
        components=args.components,
        n=args.n,
        seed=args.seed,
        compare=args.compare,
        data_dir=args.data_dir,
        fit_on=args.fit_on,
    )
    writes.record("sample", folders=[out])
    note = (
        f"per-pixel sigma, mean {s['sigma_mean']:.4g}"
        if s["per_pixel_sigma"]
        else f"global sigma {s['sigma2_global'] ** 0.5:.4g} (no per-pixel head: no sigma grid)"
    )
    say(f"{s['n']} samples from {s['name']} ({note}) in {args.out}/: {', '.join(s['files'])}")
    return 0


def add_kl(sub) -> None:
    p = sub.add_parser(
        "kl",
        help="KL gap of Table 1: KL(q_GMM || p) and KL(q_agg || p) by Monte Carlo",
        description="Estimate KL(q_GMM || p) (log q from the GMM of Eq. 13) and KL(q_agg || p) "
        "(the exact aggregate posterior of Eq. 12) for p = N(0, I): N samples per "
        "run, RUNS runs, mean and standard deviation over runs. Prints and writes "
        "the numbers with their protocol as JSON. With --ablation K [K ...] it instead "
        "fits the GMM for each K on the training codes and reports the held-out "
        "(test-code) log-likelihood and fitting time (Table 4).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_run(p)
    add_gmm(p)
    p.add_argument("--n", type=POS_INT, default=10_000, help="Monte-Carlo samples per run")
    p.add_argument("--runs", type=POS_INT, default=10, help="independent estimates (mean and std reported)")
    p.add_argument("--seed", type=NONNEG_INT, default=0, help="run r uses a generator seeded SEED + r")
    p.add_argument("--no-aggregate", action="store_true", help="skip KL(q_agg || p) (the slower estimate)")
    p.add_argument(
        "--ablation",
        type=POS_INT,
        nargs="+",
        default=None,
        metavar="K",
        help="Table 4: fit the GMM for each K and report held-out log-likelihood and time",
    )
    add_data_dir(p)
    p.add_argument("--out", default=None, help="JSON file (default: RUN/kl.json, or RUN/gmm_ablation.json)")


def run_kl(args) -> int:
    from ..latent import gmm_ablation_for_run, kl_gap  # imported when the command runs: `--help` stays fast

    out = args.out or str(Path(args.run) / ("gmm_ablation.json" if args.ablation else "kl.json"))
    writes.check("kl", files=[out], inputs=[Input(Path(args.run), "run")])
    if args.ablation:
        doc = gmm_ablation_for_run(args.run, args.ablation, fit_on=args.fit_on, data_dir=args.data_dir, out=out)
        say(f"{'K':>6} {'held-out ll':>12} {'train ll':>10} {'fit s':>8} {'iters':>6}")
        for r in doc["rows"]:
            say(
                f"{r['K']:>6} {r['heldout_ll']:>12.4f} {r['train_ll']:>10.4f} {r['fit_seconds']:>8.2f} "
                f"{r['n_iter']:>6}{'' if r['converged'] else '  (not converged)'}"
            )
    else:
        doc = kl_gap(
            args.run,
            components=args.components,
            n=args.n,
            runs=args.runs,
            seed=args.seed,
            aggregate=not args.no_aggregate,
            data_dir=args.data_dir,
            fit_on=args.fit_on,
            progress=True,
        )
        writes.save_json(out, doc)
        pr = doc["protocol"]
        say(
            f"protocol: n={pr['n']} samples x runs={pr['runs']}, seed={pr['seed']}, K={pr['K']} "
            f"(fit on {pr['fit_on']}), {pr['n_train_codes']} training codes, p = N(0, I)"
        )
        for key, name in (("kl_gmm", "KL(q_GMM || p)"), ("kl_aggregate", "KL(q_agg || p)")):
            if key in doc:
                std = doc[key]["std"]
                say(f"{name}: {doc[key]['mean']:.4f}" + (f" +- {std:.4f} (std over runs)" if std is not None else ""))
    writes.record("kl", files=[out])
    say(f"written to {out}")
    return 0


def add_latent_plot(sub) -> None:
    p = sub.add_parser(
        "latent-plot",
        help="2-D latent log-densities: prior, aggregate posterior, GMM (one PNG)",
        description="For a run with 2-D latents, draw log-density heat maps of the prior N(0, I), "
        "the exact aggregate posterior (Eq. 12) and its GMM approximation (Eq. 13) "
        "side by side on the same grid and colour scale.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_run(p, help="run folder made by `balanced-vae train --latent-dim 2`")
    add_gmm(p)
    p.add_argument("--resolution", type=POS_INT, default=200, help="grid points per axis")
    p.add_argument(
        "--lim",
        type=POS_FLOAT,
        default=None,
        help="grid spans [-LIM, LIM]^2 (default: max(4, 1.1 x 99.9th percentile of |mu|))",
    )
    p.add_argument("--span", type=POS_FLOAT, default=15.0, help="colour scale covers the top SPAN nats")
    add_data_dir(p)
    p.add_argument("--out", default=None, help="PNG file (default: RUN/latent_density.png)")


def run_latent_plot(args) -> int:
    from ..latent_density import latent_plot_for_run  # imported when the command runs: `--help` stays fast

    return _write_file(
        "latent-plot",
        args,
        "latent_density.png",
        lambda: latent_plot_for_run(
            args.run,
            args.out,
            components=args.components,
            resolution=args.resolution,
            lim=args.lim,
            span=args.span,
            data_dir=args.data_dir,
            fit_on=args.fit_on,
        ),
    )


def add_ood(sub) -> None:
    p = sub.add_parser(
        "ood",
        help="out-of-distribution detection by ELBO, IWAE (prior, GMM), dequantised and typicality scores",
        description="Score the first N test images of --in (default: the run's data set) and of --out with each "
        "checkpoint of the run (default: stage1.pt, the global sigma^2, and checkpoint.pt, the "
        "per-pixel head) and print AUROC, AUPRC and FPR at 95%% TPR per score, OOD = positive class. "
        "Writes RESULTS/<trained>-run_<in>-vs-<out>.json and .md. Run both directions: likelihoods of "
        "Gaussian VAEs are known to rank Fashion-MNIST-trained models' MNIST digits as more likely "
        "(Nalisnick et al. 2019).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_run(p)
    p.add_argument("--in", dest="in_dataset", default=None, help="in-distribution data set (default: the run's)")
    p.add_argument("--out", dest="out_dataset", required=True, help="out-of-distribution data set, e.g. fashion-mnist")
    p.add_argument(
        "--checkpoints",
        default=None,
        help="comma-separated checkpoint files of RUN (default: stage1.pt if present, checkpoint.pt)",
    )
    p.add_argument("--n", type=POS_INT, default=2000, help="first N test images of each data set")
    p.add_argument("--n-ref", type=POS_INT, default=2000, help="validation images for the typicality reference")
    p.add_argument("--k", type=POS_INT, default=20, help="importance samples of the IWAE bounds")
    p.add_argument("--components", type=POS_INT, default=DEFAULT_COMPONENTS, help="K of the GMM used as p(z)")
    p.add_argument("--seed", type=NONNEG_INT, default=0)
    add_data_dir(p)
    p.add_argument("--results", default=None, help="folder for the JSON and Markdown (default: RUN/ood)")


def run_ood(args) -> int:
    from ..ood import ood_for_run, ood_markdown, write_ood  # imported when the command runs: `--help` stays fast

    results = Path(args.results) if args.results else Path(args.run) / "ood"
    inputs = [Input(Path(args.run), "run"), input_of(args.in_dataset), input_of(args.out_dataset)]
    writes.check("ood", folders=[Folder(results)], inputs=inputs)
    checkpoints = [c.strip() for c in args.checkpoints.split(",") if c.strip()] if args.checkpoints else None
    doc = ood_for_run(
        args.run,
        out_dataset=args.out_dataset,
        in_dataset=args.in_dataset,
        checkpoints=checkpoints,
        n=args.n,
        n_ref=args.n_ref,
        k=args.k,
        components=args.components,
        seed=args.seed,
        data_dir=args.data_dir,
    )
    say(ood_markdown(doc))
    stem = f"{doc['trained_on']}-run_{doc['in']}-vs-{doc['out']}"
    out = Folder(results, names=(f"{stem}.json", f"{stem}.md"))
    writes.check("ood", folders=[out], inputs=inputs)  # the names are known now; the result is printed above
    paths = write_ood(doc, results)
    writes.record("ood", folders=[out])
    for path in paths:
        say(f"wrote {path}")
    return 0


def add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML report of a run (curves, reconstructions, samples, metrics)",
        description="Write RUN/report.html: config and protocol, learning curves with sigma^2, reconstructions with "
        "per-pixel sigma maps, prior and GMM samples side by side, every evaluation record of the run "
        "as a table, and for 2-D latents the density plots. Figures are embedded PNGs; the file needs "
        "no network to view.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_run(p)
    p.add_argument("--n", type=POS_INT, default=12, help="test images to reconstruct")
    add_gmm(p, fit_on=False)
    p.add_argument("--seed", type=NONNEG_INT, default=0, help="seed of the prior and GMM samples")
    add_data_dir(p)
    p.add_argument(
        "--records",
        nargs="+",
        default=[],
        metavar="JSON",
        help="further result files for the metrics table (evaluate --out FILE, ood JSON)",
    )
    p.add_argument("--out", default=None, help="HTML file (default: RUN/report.html)")


def run_report(args) -> int:
    from ..report import build_report  # imported when the command runs: `--help` stays fast

    return _write_file(
        "report",
        args,
        "report.html",
        lambda: build_report(
            args.run,
            args.out,
            n=args.n,
            seed=args.seed,
            components=args.components,
            data_dir=args.data_dir,
            records=args.records,
        ),
        inputs=[Input(Path(r)) for r in args.records],
    )


def add_latent_walk(sub) -> None:
    p = sub.add_parser(
        "latent-walk",
        help="interpolation and latent traversals with the decoder sigma along the path (one PNG)",
        description="Decode the straight line between the posterior means of two test images and traversals of "
        "single latent axes from the first one; each walk is a row of decoder means and a row of "
        "sigma (per-pixel for a stage-2 run).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_run(p)
    p.add_argument("--pair", type=NONNEG_INT, nargs=2, default=[0, 1], metavar=("A", "B"), help="test image indices")
    p.add_argument(
        "--dims",
        type=NONNEG_INT,
        nargs="+",
        default=None,
        help="latent axes to traverse (default: the --n-dims most used ones)",
    )
    p.add_argument("--n-dims", type=POS_INT, default=6, help="how many axes when --dims is not given")
    p.add_argument("--steps", type=POS_INT, default=11, help="points per walk")
    p.add_argument("--span", type=POS_FLOAT, default=3.0, help="traversal range +-SPAN around the code")
    p.add_argument("--checkpoint", default=CHECKPOINT, help=f"checkpoint file in RUN (e.g. {STAGE1})")
    add_data_dir(p)
    p.add_argument("--out", default=None, help="PNG file (default: RUN/latent_walk.png)")


def run_latent_walk(args) -> int:
    from ..latent_walk import latent_walk_for_run  # imported when the command runs: `--help` stays fast

    return _write_file(
        "latent-walk",
        args,
        "latent_walk.png",
        lambda: latent_walk_for_run(
            args.run,
            args.out,
            which=args.checkpoint,
            pair=tuple(args.pair),
            dims=args.dims,
            n_dims=args.n_dims,
            steps=args.steps,
            span=args.span,
            data_dir=args.data_dir,
        ),
        inputs=[Input(Path(args.run) / args.checkpoint)],
        sidecars=(".json",),
    )
