"""Command-line interface: thin subcommands over the public API.

Each subcommand is a pair ``_add_NAME(subparsers)`` / ``_run_NAME(args)``, registered in
:data:`COMMANDS`. Errors from the library (bad data, bad checkpoints, bad values) are
printed as one line and exit with status 2; no traceback for a user's mistake.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from pathlib import Path

from . import __version__, writes
from .atomic import DiskFullError, write_json_atomic
from .checkpoint import CHECKPOINT, STAGE1, CheckpointError, slim_checkpoint
from .config import OPTIMISERS, OUTPUTS, STOPPING, TrainConfig, method_of
from .data import DataError, load_dataset
from .data.table import TARGET_SEP
from .distributed import init_from_env, rank_world, shutdown
from .methods import METHODS, resolve_hparams
from .nets import NETS
from .paper.experiments import BUDGETS, EXPERIMENTS, PAPER, get_budget, resolved_budget, run_specs
from .protocol import (DEFAULT_COMPONENTS, FID_BACKENDS, METRICS, PRESETS, QUICK, SAMPLER_KINDS, EvalProtocol,
                       get_protocol)
from .protocol import PAPER as PAPER_PROTOCOL
from .resume import branched_config, resumed_config
from .train import train
from .writes import Folder, Input, input_of


def _number(kind: type, low: float, inclusive: bool):
    """An argparse type: a finite ``kind`` above ``low`` (or equal, when ``inclusive``), else a clear error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be a finite number "
                                             f"{'>=' if inclusive else '>'} {low:g}")
        return value
    parse.__name__ = kind.__name__
    return parse


_POS_INT = _number(int, 1, True)
_NONNEG_INT = _number(int, 0, True)
_POS_FLOAT = _number(float, 0.0, False)
_NONNEG_FLOAT = _number(float, 0.0, True)


def _add_fid_backend(p) -> None:
    p.add_argument("--fid-backend", choices=list(FID_BACKENDS), default=PAPER_PROTOCOL.fid_backend,
                   help="runs the Inception network: torch (CPU or CUDA) or openvino (CPU, FP32, 2-3x faster); "
                        "auto = openvino on the CPU when installed, else torch")


#: the options of an evaluation protocol: flag -> (field of EvalProtocol, type, help)
_PROTOCOL_OPTIONS = {
    "--sampler": ("sampler", None, "p(z) for FID samples, the second p(z) of the IWAE bound, and the sampler set "
                                   "beside the prior for precision/recall (pr)"),
    "--components": ("components", _POS_INT, "K of the Gaussian mixture (Eq. 13)"),
    "--gmm-fit-on": ("gmm_fit_on", None, "codes the GMM is fitted on (none: posterior means for FID sampling, "
                                         "one z ~ q(z|x) per image where the GMM is a density: IWAE p(z), KL)"),
    "--n-iwae": ("n_iwae", _POS_INT, "test images for the IWAE bound (a preset's count: all when fewer)"),
    "--k": ("k", _POS_INT, "importance samples of the IWAE bound"),
    "--n-fid": ("n_fid", _POS_INT, "generated and real test images for FID (a preset's count: all when fewer)"),
    "--fid-batch-size": ("fid_batch_size", _POS_INT, "images per Inception pass"),
    "--fid-backend": ("fid_backend", None, "runs the Inception network: torch (CPU or CUDA) or openvino (CPU, "
                                           "FP32, 2-3x faster); auto = openvino on the CPU when installed, "
                                           "else torch"),
    "--n-pr": ("n_pr", _POS_INT, "generated images per sampler and real test images for precision/recall (pr)"),
    "--k-pr": ("k_pr", _POS_INT, "nearest neighbours of the precision/recall manifolds"),
    "--n-kl": ("n_kl", _POS_INT, "Monte-Carlo samples per KL estimate"),
    "--kl-runs": ("kl_runs", _POS_INT, "independent KL estimates (mean and std reported)"),
    "--seed": ("seed", _NONNEG_INT, "seed of every sample drawn"),
}
_PROTOCOL_CHOICES = {"sampler": list(SAMPLER_KINDS), "gmm_fit_on": ["mean", "sample"],
                     "fid_backend": list(FID_BACKENDS)}


class _Given(argparse.Action):
    """Stores an option's value and notes that it was given, so it changes any preset, even to the paper's value."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}


def _add_protocol(p) -> None:
    """``--protocol NAME`` and an option per number of :class:`~balanced_vae.protocol.EvalProtocol`; each
    default is the paper's preset, stated once there (the help adds the quick preset's where it differs)."""
    p.add_argument("--protocol", choices=list(PRESETS), default="paper",
                   help="the preset every number below starts from (paper: Section 5)")
    for flag, (field, kind, text) in _PROTOCOL_OPTIONS.items():
        quick = getattr(QUICK, field)
        p.add_argument(flag, dest=field, type=kind, choices=_PROTOCOL_CHOICES.get(field), action=_Given,
                       default=getattr(PAPER_PROTOCOL, field),
                       help=text + (f"; quick: {quick}" if quick != getattr(PAPER_PROTOCOL, field) else ""))


def protocol_of(args) -> EvalProtocol:
    """The evaluation protocol of parsed options: the ``--protocol`` preset changed by the options given."""
    return get_protocol(args.protocol).replace(**{f: getattr(args, f) for f in getattr(args, "given", ())})


def _add_train(sub) -> None:
    _D = TrainConfig()   # one source of every training default: the config's fields

    p = sub.add_parser(
        "train", help="train a VAE (Algorithm 1 for --method learned)",
        description="Train a Gaussian VAE into a run folder. With --method learned (the default) stage 1 "
                    "learns a global decoder variance sigma^2 (Eq. 10) and stage 2 adds a per-pixel variance "
                    "head (Eq. 11). Methods: " + "; ".join(f"{k}: {v.doc}" for k, v in METHODS.items()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default=_D.dataset,
                   help="digits (embedded), mnist, fashion-mnist, celeba, folder:PATH, npz:PATH (images, or a "
                        "table (N, D) of real values) or csv:PATH (a table: header row, numeric columns)")
    p.add_argument("--target", default=None, metavar="COLUMN",
                   help="csv:PATH only: the column to leave out (e.g. the label); recorded as csv:PATH?target=COLUMN")
    p.add_argument("--output", choices=list(OUTPUTS), default=_D.output,
                   help="decoder mean: sigmoid (data in [0, 1]) or identity (real values); default: identity for "
                        "a table (csv:, 2-D npz:), sigmoid for images")
    p.add_argument("--data-dir", default=_D.data_dir, help="folder holding mnist/, fashion-mnist/, celeba/ "
                   "(default: $BALANCED_VAE_DATA, else ~/.cache/balanced-vae)")
    p.add_argument("--image-size", type=_POS_INT, default=_D.image_size,
                   help="centre-crop and resize celeba/folder images to this size (default: 64 for celeba; a "
                        "folder's own size when its images are square and of one size, else 64, with a warning)")
    p.add_argument("--method", default=None, choices=sorted(METHODS),
                   help="objective and likelihood (default: learned, or fixed with --variance fixed)")
    p.add_argument("--variance", choices=["learned", "fixed"], default=None,
                   help="shorthand: learned = --method learned, fixed = --method fixed")
    p.add_argument("--sigma2", type=_POS_FLOAT, default=_D.sigma2, help="decoder variance for --variance fixed")
    p.add_argument("--sigma2-mode", choices=["closed_form", "gradient"], default=_D.sigma2_mode,
                   help="how the global sigma^2 is learned in stage 1")
    p.add_argument("--stages", type=_POS_INT, choices=[1, 2], default=_D.stages,
                   help="stages of Algorithm 1 (learned only)")
    p.add_argument("--pixel-floor", type=_NONNEG_FLOAT, default=_D.pixel_floor,
                   help="floor of the per-pixel variance in stage 2 (default: the stage-1 sigma*^2; 0 allowed)")
    p.add_argument("--latent-dim", type=_POS_INT, default=_D.latent_dim,
                   help="latent size (default 16; 8 for tiny images)")
    p.add_argument("--width", type=_POS_INT, default=_D.width, help="network width (default from the image shape)")
    p.add_argument("--blocks", type=_NONNEG_INT, default=_D.blocks,
                   help="residual 3x3 blocks per coarse level of the conv networks (0: the shallow default)")
    p.add_argument("--net", choices=NETS, default=_D.net,
                   help="network family: small (fast), paper (the WAE/RAE conv net, about 20x small's "
                        "parameters; a GPU job), res (residual, between the two)")
    p.add_argument("--kl-warmup", type=_NONNEG_INT, default=_D.kl_warmup,
                   help="epochs over which the KL weight rises from 0 to 1 at the start of stage 1, against "
                        "posterior collapse of large networks (the converged objective is the ELBO itself)")
    p.add_argument("--lr-warmup", type=_NONNEG_INT, default=_D.lr_warmup,
                   help="Adam steps over which the learning rate rises linearly to --lr at the start of stage 1 "
                        "(against the saturated, all-black decoder that wide or deep networks fall into; 0: off)")
    p.add_argument("--optimiser", choices=OPTIMISERS, default=_D.optimiser,
                   help="radam: rectified Adam, whose damped first steps keep wide or deep networks from "
                        "saturating on the all-black image; adam: plain Adam (runs made before 0.2)")
    p.add_argument("--stopping", choices=STOPPING, default=_D.stopping,
                   help="convergence rule: best = best of the last --window epochs vs the best before; "
                        "endpoints = last epoch vs --window epochs before (the rule before 0.2)")
    p.add_argument("--batch-size", type=_POS_INT, default=_D.batch_size)
    p.add_argument("--lr", type=_POS_FLOAT, default=_D.lr)
    p.add_argument("--epochs", type=_POS_INT, default=_D.epochs, help="maximum epochs per stage")
    p.add_argument("--min-epochs", type=_NONNEG_INT, default=_D.min_epochs)
    p.add_argument("--tol", type=_NONNEG_FLOAT, default=_D.tol,
                   help="convergence: change of the validation objective over --window epochs, in nats per "
                        "data dimension")
    p.add_argument("--window", type=_POS_INT, default=_D.window, help="convergence window in epochs")
    p.add_argument("--lr-drops", type=_NONNEG_INT, default=_D.lr_drops,
                   help="when a stage converges, divide the learning rate by 10 and go on, up to this many times "
                        "per stage; the stage ends when it converges after the last drop (0: the paper's rule)")
    p.add_argument("--n-val", type=_NONNEG_INT, default=_D.n_val,
                   help="training images held out (the last ones) for the stopping rule; default 10%% of them, "
                        "at most 5000. The test split is never used for stopping")
    p.add_argument("--max-minutes", type=_POS_FLOAT, default=_D.max_minutes,
                   help="wall-clock cap per stage, in minutes")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=_NONNEG_INT, default=_D.seed)
    p.add_argument("--n-train", type=_POS_INT, default=_D.n_train, help="use only the first N training images")
    p.add_argument("--n-test", type=_POS_INT, default=_D.n_test, help="use only the first N test images")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=_D.precision,
                   help="bf16 autocasts the networks (losses stay fp32)")
    p.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE",
                   help="objective hyperparameter, e.g. --hparam lambda=10 (repeatable)")
    p.add_argument("--out", default=None, help="run folder (required unless --resume)")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue the run in this folder")
    p.add_argument("--branch-from", default=None, metavar="RUN",
                   help="start the new run --out at RUN's stage switch instead of training stage 1 again: its "
                        "config is RUN's, and only --pixel-floor, --data-dir and --device may be given, e.g. "
                        "--branch-from runs/learned --pixel-floor 0")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def _parse_hparams(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--hparam {item!r}: expected KEY=VALUE, e.g. --hparam lambda=10")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _run_train(args) -> int:
    if init_from_env(args.device):   # launched by torchrun: one process per GPU or CPU rank
        try:
            return _run_train_local(args, quiet=rank_world()[0] != 0)
        finally:
            shutdown()
    return _run_train_local(args)


def _run_train_local(args, quiet: bool = False) -> int:
    """`train` in this process: a new run from the options, or --resume RUN under raised caps."""
    if args.resume:
        run = Path(args.resume)
        config = resumed_config(run, {k: getattr(args, k) for k in _given_options(args) - _HOW - {"resume"}})
        if args.dry_run:
            print(config.to_json())
            return 0
        train(config, run, resume=True, device=args.device)
        if not quiet:
            print(f"run finished: {run}")
        return 0
    if not args.out and not args.dry_run:
        raise ValueError("train needs --out RUN_FOLDER (or --resume RUN)")
    if args.branch_from:
        return _run_branch(args, quiet)
    method = method_of(args.method, args.variance)
    # the options named like TrainConfig's fields
    fields = ({f.name for f in dataclasses.fields(TrainConfig)} & set(vars(args))) - {"method"}
    config = TrainConfig(**{f: getattr(args, f) for f in fields}, method=method,
                         hparams=_parse_hparams(args.hparam))
    if args.target is not None:
        if not config.dataset.startswith("csv:"):
            raise ValueError(f"--target {args.target}: leaves a column of a csv:PATH table out, but --dataset is "
                             f"{config.dataset!r}; fix: drop --target")
        config = dataclasses.replace(config, dataset=f"{config.dataset}{TARGET_SEP}{args.target}")

    resolve_hparams(config)  # reject unknown --hparam keys before any data or run folder
    if args.dry_run:
        data = load_dataset(config.dataset, data_dir=config.data_dir, image_size=config.image_size)
        print(json.dumps({**dataclasses.asdict(config.resolved(data.shape, len(data.x_train),
                                                               real_valued=data.real_valued)),
                          "image_shape": list(data.shape),
                          "n_train": len(data.x_train), "n_test": len(data.x_test)}, indent=2, sort_keys=True))
        return 0
    train(config, args.out, device=args.device)
    if not quiet:
        print(f"run finished: {args.out}")
    return 0


#: `train` options that say how to run, not what: never a change of the run's config
_HOW = {"device", "verbose", "dry_run"}


def _given_options(args) -> set[str]:
    """The `train` options given on the command line (those that differ from their defaults)."""
    defaults = vars(build_parser().parse_args(["train"]))
    return {k for k, v in vars(args).items() if k in defaults and v != defaults[k]}


def _run_branch(args, quiet: bool) -> int:
    """`train --branch-from RUN --out NEW`: stage 2 of RUN's config (a new floor) from RUN's switch."""
    run = Path(args.branch_from)
    config = branched_config(run, {k: getattr(args, k) for k in _given_options(args) - _HOW - {"branch_from", "out"}})
    if args.dry_run:
        print(config.to_json())
        return 0
    train(config, args.out, device=args.device, branch_from=run)
    if not quiet:
        print(f"run finished: {args.out}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train both stages on the embedded digits set and write a report",
                       description="Train Algorithm 1 (both stages) on scikit-learn's 8x8 digits (no download) "
                                   "and write reconstructions with per-pixel sigma maps, prior samples, learning "
                                   "curves and a summary into --out.")
    p.add_argument("--out", default="demo-report", help="report folder")
    p.add_argument("--seed", type=_NONNEG_INT, default=0)


def _run_demo(args) -> int:
    from .demo import DEMO_CONFIG, run_demo   # imported when the command runs: `--help` stays fast
    writes.check("demo", folders=[Folder(Path(args.out), "demo")])
    summary = run_demo(args.out, config=dataclasses.replace(DEMO_CONFIG, seed=args.seed))
    writes.record("demo", folders=[Folder(Path(args.out), "demo")])
    print(f"demo report in {args.out}/")
    for k, v in summary.items():
        print(f"  {k}: {v}")
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="test metrics of a run (ELBO, IWAE, FID, KL, calibration, precision/recall) into "
                         "RUN/results.json",
        description="Compute the paper's metrics for a trained run and write every number with its protocol "
                    "(data split, counts, k, seeds, sampler, Inception implementation, version, git commit) to "
                    "RUN/results.json. FID needs `pip install balanced-vae[fid]`; on a CPU the Inception network "
                    "runs at a few images per second, so lower --n-fid for a quick look.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="run folder made by `balanced-vae train`")
    p.add_argument("--metrics", default="elbo,iwae", help=f"comma-separated subset of {','.join(METRICS)}")
    p.add_argument("--checkpoint", default=CHECKPOINT, help=f"checkpoint file in RUN (e.g. {STAGE1})")
    _add_protocol(p)
    p.add_argument("--data-dir", default=None, help="data folder (default: the run's, then $BALANCED_VAE_DATA)")
    p.add_argument("--fid-cache", default=None, help="folder for cached real-image FID statistics "
                   "(default: DATA_DIR/fid-stats)")
    p.add_argument("--device", default=None, help="device for the Inception network (default: cuda if available)")
    p.add_argument("--out", default=None, help="results file (default: RUN/results.json; "
                   "RUN/results_NAME.json for --checkpoint NAME.pt)")


def _run_evaluate(args) -> int:
    from .evaluate import evaluate_run   # imported when the command runs: `--help` stays fast
    run, stem = Path(args.run), Path(args.checkpoint).stem
    out = args.out or run / ("results.json" if args.checkpoint == CHECKPOINT else f"results_{stem}.json")
    # a run that cannot be written is no reason to refuse: the results are printed when they cannot be saved
    writes.check("evaluate", files=[out], inputs=[Input(run, "run"), Input(run / args.checkpoint)], writable=False)
    doc = evaluate_run(args.run, protocol_of(args), args.metrics, which=args.checkpoint, data_dir=args.data_dir,
                       cache_dir=args.fid_cache, device=args.device, out=args.out)
    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    print(json.dumps({m: doc["metrics"][m]["values"] for m in names}, indent=2, sort_keys=True))
    writes.record("evaluate", files=[doc["path"]])
    print(f"results written to {doc['path']}")
    return 0


def _add_reconstruct(sub) -> None:
    p = sub.add_parser("reconstruct", help="picture of test images, reconstructions and per-pixel sigma (Figure 3)",
                       description="Write OUT/reconstructions.png: rows of ground truth, reconstruction g(mu(x)) "
                                   "and the predicted per-pixel sigma of the first N test images.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="run folder made by `balanced-vae train`")
    p.add_argument("--n", type=_POS_INT, default=16, help="number of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--checkpoint", default=CHECKPOINT, help=f"checkpoint file in RUN (e.g. {STAGE1})")
    p.add_argument("--error", action="store_true", help="add a row with the absolute error |x - g(mu(x))|")
    p.add_argument("--data-dir", default=None)


def _run_reconstruct(args) -> int:
    from .evaluate import reconstruct_run   # imported when the command runs: `--help` stays fast
    out = Folder(Path(args.out), names=("reconstructions.png",))
    writes.check("reconstruct", folders=[out],
                 inputs=[Input(Path(args.run), "run"), Input(Path(args.run) / args.checkpoint)])
    path = reconstruct_run(args.run, args.out, n=args.n, which=args.checkpoint, split=args.split,
                           data_dir=args.data_dir, error=args.error)
    writes.record("reconstruct", folders=[out])
    print(f"wrote {path}")
    return 0


def _add_fid_inputs(p) -> None:
    """The options every real-image FID command shares: data, statistics cache, batch, device, backend."""
    p.add_argument("--data-dir", default=None)
    p.add_argument("--fid-cache", default=None, help="folder for cached statistics (default: DATA_DIR/fid-stats)")
    p.add_argument("--batch-size", type=_POS_INT, default=50)
    p.add_argument("--device", default=None)
    _add_fid_backend(p)


def _add_fid_real(sub) -> None:
    p = sub.add_parser("fid-real", help="sanity FID between a data set's real training and test images",
                       description="FID between the first N training and the first N test images (the paper "
                                   "reports 1.9 for MNIST and 0.7 for Fashion-MNIST at N = 10,000). Statistics "
                                   "are cached; needs `pip install balanced-vae[fid]`.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dataset", help="mnist, fashion-mnist, ...")
    p.add_argument("--n", type=_POS_INT, default=10_000, help="images per split")
    _add_fid_inputs(p)
    p.add_argument("--out", default=None, help="also write the result as JSON here "
                   "(e.g. results/fid-real/mnist-n10000.json)")


def _run_fid_real(args) -> int:
    from .evaluate import real_data_fid   # imported when the command runs: `--help` stays fast
    writes.check("fid-real", files=[args.out], inputs=[Input(Path(args.data_dir))] if args.data_dir else [])
    doc = real_data_fid(args.dataset, n=args.n, data_dir=args.data_dir, cache_dir=args.fid_cache,
                        batch_size=args.batch_size, device=args.device, backend=args.fid_backend,
                        paper_value=PAPER["table2"].get(args.dataset, {}).get("real"), out=args.out)
    writes.record("fid-real", files=[args.out] if args.out else [])
    print(json.dumps(doc, indent=2, sort_keys=True))
    return 0


def _add_fid(sub) -> None:
    p = sub.add_parser("fid", help="FID between two image sets (folders, .npy/.npz arrays or NAME:SPLIT)",
                       description="FID of image set A against image set B with the protocol of `evaluate` "
                                   "(TF-Inception pool features, 8-bit quantisation, TF1 bilinear resize to "
                                   "299x299). A set is a folder of PNG/JPEG images (one size), an .npy or .npz "
                                   "array ((N, H, W), (N, C, H, W) or (N, H, W, C), floats in [0, 1] or uint8; "
                                   "FILE.npz:KEY picks an array) or a data set with a split (mnist:test, "
                                   "fashion-mnist:train); a data set's statistics are cached. Needs "
                                   "`pip install balanced-vae[fid]`.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("a", help="first image set, e.g. samples/gmm_means.npy")
    p.add_argument("b", help="second image set, e.g. mnist:test")
    p.add_argument("--n", type=_POS_INT, default=None,
                   help="images per set (default: all of a folder or array, 10,000 of a data set split)")
    _add_fid_inputs(p)
    p.add_argument("--out", default=None, help="also write the result as JSON here")


def _run_fid(args) -> int:
    from .evaluate import fid_between   # imported when the command runs: `--help` stays fast
    writes.check("fid", files=[args.out], inputs=[input_of(args.a), input_of(args.b)])
    doc = fid_between(args.a, args.b, n=args.n, data_dir=args.data_dir, cache_dir=args.fid_cache,
                      batch_size=args.batch_size, device=args.device, backend=args.fid_backend, out=args.out)
    writes.record("fid", files=[args.out] if args.out else [])
    print(json.dumps(doc, indent=2, sort_keys=True))
    return 0


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate images from the prior, the GMM or the aggregate posterior (Fig. 2, 4)",
                       description="Decode N samples of the run's latent space and write OUT/KIND_means.png, the "
                                   "per-pixel sigma grid OUT/KIND_sigma.png when the run has a variance head "
                                   "(stage 2; otherwise the global sigma is reported), the raw arrays "
                                   "(KIND_z.npy, KIND_means.npy, KIND_sigma.npy) and KIND_samples.json. The GMM "
                                   "(Eq. 13) is fitted on the run's training codes once and kept in RUN/gmm_K<K>/.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="run folder made by `balanced-vae train`")
    p.add_argument("--sampler", choices=list(SAMPLER_KINDS), default="gmm",
                   help="p(z) to sample: N(0, I), the GMM of Eq. 13 or the exact aggregate posterior of Eq. 12")
    p.add_argument("--components", type=_POS_INT, default=None,
                   help="K of the GMM (default: 32 for 28x28 images, 500 for 64x64)")
    p.add_argument("--fit-on", choices=["mean", "sample"], default="mean",
                   help="codes the GMM is fitted on: posterior means or one z ~ q(z|x) per image")
    p.add_argument("--n", type=_POS_INT, default=64, help="number of samples")
    p.add_argument("--seed", type=_NONNEG_INT, default=0, help="seed of the generator that draws the codes")
    p.add_argument("--compare", action="store_true",
                   help="also write OUT/compare_prior_gmm.png: prior and GMM samples side by side (Figure 2)")
    p.add_argument("--data-dir", default=None, help="data folder (default: the run's, then $BALANCED_VAE_DATA)")
    p.add_argument("--out", required=True, help="output folder")


def _run_sample(args) -> int:
    from .latent import write_samples   # imported when the command runs: `--help` stays fast
    kinds = ("means.png", "z.npy", "means.npy", "sigma.png", "sigma.npy", "samples.json")
    names = tuple(f"{args.sampler}_{n}" for n in kinds) + (("compare_prior_gmm.png",) if args.compare else ())
    out = Folder(Path(args.out), names=names)
    writes.check("sample", folders=[out], inputs=[Input(Path(args.run), "run")])
    s = write_samples(args.run, args.out, sampler=args.sampler, components=args.components, n=args.n,
                      seed=args.seed, compare=args.compare, data_dir=args.data_dir, fit_on=args.fit_on)
    writes.record("sample", folders=[out])
    note = (f"per-pixel sigma, mean {s['sigma_mean']:.4g}" if s["per_pixel_sigma"]
            else f"global sigma {s['sigma2_global'] ** 0.5:.4g} (no per-pixel head: no sigma grid)")
    print(f"{s['n']} samples from {s['name']} ({note}) in {args.out}/: {', '.join(s['files'])}")
    return 0


def _add_kl(sub) -> None:
    p = sub.add_parser("kl", help="KL gap of Table 1: KL(q_GMM || p) and KL(q_agg || p) by Monte Carlo",
                       description="Estimate KL(q_GMM || p) (log q from the GMM of Eq. 13) and KL(q_agg || p) "
                                   "(the exact aggregate posterior of Eq. 12) for p = N(0, I): N samples per "
                                   "run, RUNS runs, mean and standard deviation over runs. Prints and writes "
                                   "the numbers with their protocol as JSON. With --ablation K [K ...] it instead "
                                   "fits the GMM for each K on the training codes and reports the held-out "
                                   "(test-code) log-likelihood and fitting time (Table 4).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="run folder made by `balanced-vae train`")
    p.add_argument("--components", type=_POS_INT, default=None,
                   help="K of the GMM (default: 32 for 28x28 images, 500 for 64x64)")
    p.add_argument("--fit-on", choices=["mean", "sample"], default="mean",
                   help="codes the GMM is fitted on: posterior means or one z ~ q(z|x) per image")
    p.add_argument("--n", type=_POS_INT, default=10_000, help="Monte-Carlo samples per run")
    p.add_argument("--runs", type=_POS_INT, default=10, help="independent estimates (mean and std reported)")
    p.add_argument("--seed", type=_NONNEG_INT, default=0, help="run r uses a generator seeded SEED + r")
    p.add_argument("--no-aggregate", action="store_true", help="skip KL(q_agg || p) (the slower estimate)")
    p.add_argument("--ablation", type=_POS_INT, nargs="+", default=None, metavar="K",
                   help="Table 4: fit the GMM for each K and report held-out log-likelihood and time")
    p.add_argument("--data-dir", default=None, help="data folder (default: the run's, then $BALANCED_VAE_DATA)")
    p.add_argument("--out", default=None, help="JSON file (default: RUN/kl.json, or RUN/gmm_ablation.json)")


def _run_kl(args) -> int:
    from .latent import gmm_ablation_for_run, kl_gap   # imported when the command runs: `--help` stays fast
    out = args.out or str(Path(args.run) / ("gmm_ablation.json" if args.ablation else "kl.json"))
    writes.check("kl", files=[out], inputs=[Input(Path(args.run), "run")])
    if args.ablation:
        doc = gmm_ablation_for_run(args.run, args.ablation, fit_on=args.fit_on, data_dir=args.data_dir, out=out)
        print(f"{'K':>6} {'held-out ll':>12} {'train ll':>10} {'fit s':>8} {'iters':>6}")
        for r in doc["rows"]:
            print(f"{r['K']:>6} {r['heldout_ll']:>12.4f} {r['train_ll']:>10.4f} {r['fit_seconds']:>8.2f} "
                  f"{r['n_iter']:>6}{'' if r['converged'] else '  (not converged)'}")
    else:
        doc = kl_gap(args.run, components=args.components, n=args.n, runs=args.runs, seed=args.seed,
                     aggregate=not args.no_aggregate, data_dir=args.data_dir, fit_on=args.fit_on, progress=True)
        def write():
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out, doc)
        writes.save(out, doc, write)
        pr = doc["protocol"]
        print(f"protocol: n={pr['n']} samples x runs={pr['runs']}, seed={pr['seed']}, K={pr['K']} "
              f"(fit on {pr['fit_on']}), {pr['n_train_codes']} training codes, p = N(0, I)")
        for key, name in (("kl_gmm", "KL(q_GMM || p)"), ("kl_aggregate", "KL(q_agg || p)")):
            if key in doc:
                std = doc[key]["std"]
                print(f"{name}: {doc[key]['mean']:.4f}" + (f" +- {std:.4f} (std over runs)" if std is not None else ""))
    writes.record("kl", files=[out])
    print(f"written to {out}")
    return 0


def _add_latent_plot(sub) -> None:
    p = sub.add_parser("latent-plot", help="2-D latent log-densities: prior, aggregate posterior, GMM (one PNG)",
                       description="For a run with 2-D latents, draw log-density heat maps of the prior N(0, I), "
                                   "the exact aggregate posterior (Eq. 12) and its GMM approximation (Eq. 13) "
                                   "side by side on the same grid and colour scale.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="run folder made by `balanced-vae train --latent-dim 2`")
    p.add_argument("--components", type=_POS_INT, default=None,
                   help="K of the GMM (default: 32 for 28x28 images, 500 for 64x64)")
    p.add_argument("--fit-on", choices=["mean", "sample"], default="mean",
                   help="codes the GMM is fitted on: posterior means or one z ~ q(z|x) per image")
    p.add_argument("--resolution", type=_POS_INT, default=200, help="grid points per axis")
    p.add_argument("--lim", type=_POS_FLOAT, default=None,
                   help="grid spans [-LIM, LIM]^2 (default: max(4, 1.1 x 99.9th percentile of |mu|))")
    p.add_argument("--span", type=_POS_FLOAT, default=15.0, help="colour scale covers the top SPAN nats")
    p.add_argument("--data-dir", default=None, help="data folder (default: the run's, then $BALANCED_VAE_DATA)")
    p.add_argument("--out", default=None, help="PNG file (default: RUN/latent_density.png)")


def _run_latent_plot(args) -> int:
    from .latent import latent_plot_for_run   # imported when the command runs: `--help` stays fast
    writes.check("latent-plot", files=[args.out or Path(args.run) / "latent_density.png"],
                 inputs=[Input(Path(args.run), "run")])
    path = latent_plot_for_run(args.run, args.out, components=args.components, resolution=args.resolution,
                               lim=args.lim, span=args.span, data_dir=args.data_dir, fit_on=args.fit_on)
    writes.record("latent-plot", files=[path])
    print(f"wrote {path}")
    return 0


def _add_ood(sub) -> None:
    p = sub.add_parser(
        "ood", help="out-of-distribution detection by ELBO, IWAE (prior, GMM), dequantised and typicality scores",
        description="Score the first N test images of --in (default: the run's data set) and of --out with each "
                    "checkpoint of the run (default: stage1.pt, the global sigma^2, and checkpoint.pt, the "
                    "per-pixel head) and print AUROC, AUPRC and FPR at 95%% TPR per score, OOD = positive class. "
                    "Writes RESULTS/<trained>-run_<in>-vs-<out>.json and .md. Run both directions: likelihoods of "
                    "Gaussian VAEs are known to rank Fashion-MNIST-trained models' MNIST digits as more likely "
                    "(Nalisnick et al. 2019).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="run folder made by `balanced-vae train`")
    p.add_argument("--in", dest="in_dataset", default=None, help="in-distribution data set (default: the run's)")
    p.add_argument("--out", dest="out_dataset", required=True, help="out-of-distribution data set, e.g. fashion-mnist")
    p.add_argument("--checkpoints", default=None,
                   help="comma-separated checkpoint files of RUN (default: stage1.pt if present, checkpoint.pt)")
    p.add_argument("--n", type=_POS_INT, default=2000, help="first N test images of each data set")
    p.add_argument("--n-ref", type=_POS_INT, default=2000, help="validation images for the typicality reference")
    p.add_argument("--k", type=_POS_INT, default=20, help="importance samples of the IWAE bounds")
    p.add_argument("--components", type=_POS_INT, default=DEFAULT_COMPONENTS, help="K of the GMM used as p(z)")
    p.add_argument("--seed", type=_NONNEG_INT, default=0)
    p.add_argument("--data-dir", default=None, help="data folder (default: the run's, then $BALANCED_VAE_DATA)")
    p.add_argument("--results", default=None, help="folder for the JSON and Markdown (default: RUN/ood)")


def _run_ood(args) -> int:
    from .ood import ood_for_run, ood_markdown, write_ood   # imported when the command runs: `--help` stays fast
    results = Path(args.results) if args.results else Path(args.run) / "ood"
    inputs = [Input(Path(args.run), "run"), input_of(args.in_dataset), input_of(args.out_dataset)]
    writes.check("ood", folders=[Folder(results)], inputs=inputs)
    checkpoints = [c.strip() for c in args.checkpoints.split(",") if c.strip()] if args.checkpoints else None
    doc = ood_for_run(args.run, out_dataset=args.out_dataset, in_dataset=args.in_dataset, checkpoints=checkpoints,
                      n=args.n, n_ref=args.n_ref, k=args.k, components=args.components, seed=args.seed,
                      data_dir=args.data_dir)
    print(ood_markdown(doc))
    stem = f"{doc['trained_on']}-run_{doc['in']}-vs-{doc['out']}"
    out = Folder(results, names=(f"{stem}.json", f"{stem}.md"))
    writes.check("ood", folders=[out], inputs=inputs)   # the names are known now; the result is printed above
    paths = write_ood(doc, results)
    writes.record("ood", folders=[out])
    for path in paths:
        print(f"wrote {path}")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="one self-contained HTML report of a run (curves, reconstructions, samples, metrics)",
        description="Write RUN/report.html: config and protocol, learning curves with sigma^2, reconstructions with "
                    "per-pixel sigma maps, prior and GMM samples side by side, every evaluation record of the run "
                    "as a table, and for 2-D latents the density plots. Figures are embedded PNGs; the file needs "
                    "no network to view.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="run folder made by `balanced-vae train`")
    p.add_argument("--n", type=_POS_INT, default=12, help="test images to reconstruct")
    p.add_argument("--components", type=_POS_INT, default=None,
                   help="K of the GMM (default: 32 for 28x28 images, 500 for 64x64)")
    p.add_argument("--seed", type=_NONNEG_INT, default=0, help="seed of the prior and GMM samples")
    p.add_argument("--data-dir", default=None, help="data folder (default: the run's, then $BALANCED_VAE_DATA)")
    p.add_argument("--records", nargs="+", default=[], metavar="JSON",
                   help="further result files for the metrics table (evaluate --out FILE, ood JSON)")
    p.add_argument("--out", default=None, help="HTML file (default: RUN/report.html)")


def _run_report(args) -> int:
    from .report import build_report   # imported when the command runs: `--help` stays fast
    writes.check("report", files=[args.out or Path(args.run) / "report.html"],
                 inputs=[Input(Path(args.run), "run"), *(Input(Path(r)) for r in args.records)])
    path = build_report(args.run, args.out, n=args.n, seed=args.seed, components=args.components,
                        data_dir=args.data_dir, records=args.records)
    writes.record("report", files=[path])
    print(f"wrote {path}")
    return 0


def _add_latent_walk(sub) -> None:
    p = sub.add_parser(
        "latent-walk", help="interpolation and latent traversals with the decoder sigma along the path (one PNG)",
        description="Decode the straight line between the posterior means of two test images and traversals of "
                    "single latent axes from the first one; each walk is a row of decoder means and a row of "
                    "sigma (per-pixel for a stage-2 run).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="run folder made by `balanced-vae train`")
    p.add_argument("--pair", type=_NONNEG_INT, nargs=2, default=[0, 1], metavar=("A", "B"), help="test image indices")
    p.add_argument("--dims", type=_NONNEG_INT, nargs="+", default=None,
                   help="latent axes to traverse (default: the --n-dims most used ones)")
    p.add_argument("--n-dims", type=_POS_INT, default=6, help="how many axes when --dims is not given")
    p.add_argument("--steps", type=_POS_INT, default=11, help="points per walk")
    p.add_argument("--span", type=_POS_FLOAT, default=3.0, help="traversal range +-SPAN around the code")
    p.add_argument("--checkpoint", default=CHECKPOINT, help=f"checkpoint file in RUN (e.g. {STAGE1})")
    p.add_argument("--data-dir", default=None, help="data folder (default: the run's, then $BALANCED_VAE_DATA)")
    p.add_argument("--out", default=None, help="PNG file (default: RUN/latent_walk.png)")


def _run_latent_walk(args) -> int:
    from .latent_walk import latent_walk_for_run   # imported when the command runs: `--help` stays fast
    png = Path(args.out) if args.out else Path(args.run) / "latent_walk.png"
    writes.check("latent-walk", files=[png, png.with_suffix(".json")],
                 inputs=[Input(Path(args.run), "run"), Input(Path(args.run) / args.checkpoint)])
    path = latent_walk_for_run(args.run, args.out, which=args.checkpoint, pair=tuple(args.pair), dims=args.dims,
                               n_dims=args.n_dims, steps=args.steps, span=args.span, data_dir=args.data_dir)
    writes.record("latent-walk", files=[path, path.with_suffix(".json")])
    print(f"wrote {path}")
    return 0


def _add_reproduce(sub) -> None:
    p = sub.add_parser(
        "reproduce", help="reproduce a table or figure of the paper (trains what is missing)",
        description="Train what is missing (reusing finished runs in --out, resuming interrupted ones), evaluate, "
                    "and write each table as CSV/Markdown/JSON and each figure as PNG under "
                    "OUT/<dataset>-<budget>/. Budgets: " + "; ".join(
                        f"{b.name}: epochs<={b.epochs}, n_fid={b.n_fid}, width={b.width or 'default'}"
                        for b in BUDGETS.values()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("experiment", help=f"one of {', '.join(EXPERIMENTS)}, a comma-separated list, or all")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "celeba"])
    p.add_argument("--budget", default="cpu", choices=sorted(BUDGETS))
    p.add_argument("--out", default="results", help="results folder")
    p.add_argument("--dry-run", action="store_true", help="print the budget and the runs it needs, then exit")
    p.add_argument("--device", default="auto", help="training and Inception device: auto, cpu, cuda, cuda:N")
    p.add_argument("--no-extra-runs", dest="extra_runs", action="store_false",
                   help="leave out the budget's runs beyond the paper's (paper budgets: learned-floor0, Table 3's "
                        "per-pixel model without the variance floor, whose stage 2 may not meet the convergence "
                        "rule); the records' budget then lists extra_runs: []")
    p.add_argument("--jobs", type=_POS_INT, default=1,
                   help="train and evaluate this many runs at once in separate processes (e.g. on one GPU)")
    _add_fid_backend(p)


def _run_reproduce(args) -> int:
    from .paper.reproduce import reproduce   # imported when the command runs: `--help` stays fast
    budget = get_budget(args.budget, None if args.extra_runs else ())
    print(f"budget {budget.name}: {json.dumps(resolved_budget(budget))}")
    if args.dry_run:
        for name, cfg in run_specs(args.dataset, budget).items():
            print(f"  run {name}: method={cfg.method} sigma2={cfg.sigma2} latent={cfg.latent_dim} epochs<={cfg.epochs}")
        return 0
    writes.check("reproduce", folders=[Folder(Path(args.out), "results")])
    for path in reproduce(args.experiment, dataset=args.dataset, budget=args.budget, out=args.out,
                          device=args.device, jobs=args.jobs, fid_backend=args.fid_backend,
                          extra_runs=args.extra_runs):
        print(f"wrote {path}")
    writes.record("reproduce", folders=[Folder(Path(args.out), "results")])
    return 0


def _add_results_page(sub) -> None:
    p = sub.add_parser("results-page", help="generate docs/RESULTS.md from the reproduce result files")
    p.add_argument("results", nargs="?", default="results", help="results folder written by reproduce")
    p.add_argument("--out", default="docs/RESULTS.md")


def _run_results_page(args) -> int:
    from .paper.results_page import build_page   # imported when the command runs: `--help` stays fast
    writes.check("results-page", files=[args.out], inputs=[Input(Path(args.results), "folder")])
    path = build_page(args.results, args.out)
    writes.record("results-page", files=[path])
    print(f"wrote {path}")
    return 0


def _add_slim(sub) -> None:
    p = sub.add_parser(
        "slim", help="drop the optimiser and random states from finished runs' checkpoints (to commit or share)",
        description="Rewrite RUN/checkpoint.pt and RUN/stage1.pt of each finished run with weights only: Adam's "
                    "moments (twice the model's size) and the random states go; the model, stage, epoch, history "
                    "and commits stay. The run can still be evaluated, sampled, reported and reused by reproduce; "
                    "`train --resume` can no longer continue it. Each file is replaced atomically.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder made by `balanced-vae train` or reproduce")


def _run_slim(args) -> int:
    writes.check("slim", folders=[Folder(Path(run), "run") for run in args.runs])
    for run in map(Path, args.runs):
        for name in (CHECKPOINT, STAGE1):
            if name == CHECKPOINT or (run / name).is_file():   # a missing checkpoint.pt is named by the loader
                before, after = slim_checkpoint(run / name)
                print(f"{run / name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
    return 0


COMMANDS = {
    "train": (_add_train, _run_train),
    "sample": (_add_sample, _run_sample),
    "kl": (_add_kl, _run_kl),
    "latent-plot": (_add_latent_plot, _run_latent_plot),
    "latent-walk": (_add_latent_walk, _run_latent_walk),
    "ood": (_add_ood, _run_ood),
    "report": (_add_report, _run_report),
    "demo": (_add_demo, _run_demo),
    "evaluate": (_add_evaluate, _run_evaluate),
    "reconstruct": (_add_reconstruct, _run_reconstruct),
    "fid-real": (_add_fid_real, _run_fid_real),
    "fid": (_add_fid, _run_fid),
    "reproduce": (_add_reproduce, _run_reproduce),
    "results-page": (_add_results_page, _run_results_page),
    "slim": (_add_slim, _run_slim),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="balanced-vae",
        description="VAEs that balance their own ELBO by learning the decoder variance "
                    "(Lin, Roberts, Trigoni, Clark 2019).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")

    try:
        return COMMANDS[args.command][1](args)
    except writes.NotSaved as e:   # computed but not saved: print it rather than lose it
        print(json.dumps(e.result, indent=2, sort_keys=True))
        print(f"balanced-vae {args.command}: error: {e.strerror}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, ValueError, DiskFullError, FloatingPointError) as e:
        print(f"balanced-vae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:   # the environment: a read-only or missing folder, no permission, a full disk
        if e.strerror is None:   # raised by balanced-vae with a message that names the path and the fix
            print(f"balanced-vae {args.command}: error: {e}", file=sys.stderr)
            return 2
        where = f"{e.filename}: " if e.filename else ""
        print(f"balanced-vae {args.command}: error: {where}{e.strerror}; fix: choose a path that exists and can "
              "be written (e.g. --out in your own folder), or fix its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        run = getattr(args, "resume", None) or getattr(args, "out", None)
        where = (f"; the last checkpoint is in {run}/checkpoint.pt: continue with "
                 f"`balanced-vae train --resume {run}`") if args.command == "train" and run else ""
        print(f"balanced-vae {args.command}: interrupted{where}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
