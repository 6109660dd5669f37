"""Subcommands that train: train (a run of any method, Algorithm 1 by default; resume; branch) and demo.

Each is a pair ``add_NAME(subparsers)`` / ``run_NAME(args)``; the training loop is imported when
a command runs, so ``balanced-vae --help`` stays fast. Every default of ``train`` is a field of
:class:`~balanced_vae.config.TrainConfig`, stated once there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from .. import writes
from ..config import OPTIMISERS, OUTPUTS, PAPER_LR_WARMUP, STOPPING, SWITCHES, TrainConfig, method_of
from ..data import load_dataset
from ..data.table import TARGET_SEP
from ..distributed import init_from_env, rank_world, shutdown
from ..methods import METHODS, resolve_hparams
from ..nets import NETS
from ..resume import branched_config, resumed_config
from ..writes import Folder
from .options import NONNEG_FLOAT, NONNEG_INT, POS_FLOAT, POS_INT, say


def add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a VAE (Algorithm 1 for --method learned)",
        description="Train a Gaussian VAE into a run folder. With --method learned (the default) stage 1 "
        "learns a global decoder variance sigma^2 (Eq. 10) and stage 2 adds a per-pixel variance "
        "head (Eq. 11). Methods: " + "; ".join(f"{k}: {v.doc}" for k, v in METHODS.items()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    D = TrainConfig()  # one source of every training default: the config's fields
    _add_data_options(p, D)
    _add_model_options(p, D)
    _add_optimiser_options(p, D)
    _add_run_options(p, D)


def _add_data_options(p, D: TrainConfig) -> None:
    """What to train on: the data set, its table column or image size, the decoder's output."""
    p.add_argument(
        "--dataset",
        default=D.dataset,
        help="digits (embedded), mnist, fashion-mnist, celeba, folder:PATH, npz:PATH (images, or a "
        "table (N, D) of real values) or csv:PATH (a table: header row, numeric columns)",
    )
    p.add_argument(
        "--target",
        default=None,
        metavar="COLUMN",
        help="csv:PATH only: the column to leave out (e.g. the label); recorded as csv:PATH?target=COLUMN",
    )
    p.add_argument(
        "--output",
        choices=list(OUTPUTS),
        default=D.output,
        help="decoder mean: sigmoid (data in [0, 1]) or identity (real values); default: identity for "
        "a table (csv:, 2-D npz:), sigmoid for images",
    )
    p.add_argument(
        "--data-dir",
        default=D.data_dir,
        help="folder holding mnist/, fashion-mnist/, celeba/ (default: $BALANCED_VAE_DATA, else ~/.cache/balanced-vae)",
    )
    p.add_argument(
        "--image-size",
        type=POS_INT,
        default=D.image_size,
        help="centre-crop and resize celeba/folder images to this size (default: 64 for celeba; a "
        "folder's own size when its images are square and of one size, else 64, with a warning)",
    )


def _add_model_options(p, D: TrainConfig) -> None:
    """The method (objective and likelihood) and the networks."""
    p.add_argument(
        "--method",
        default=None,
        choices=sorted(METHODS),
        help="objective and likelihood (default: learned, or fixed with --variance fixed)",
    )
    p.add_argument(
        "--variance",
        choices=["learned", "fixed"],
        default=None,
        help="shorthand: learned = --method learned, fixed = --method fixed",
    )
    p.add_argument("--sigma2", type=POS_FLOAT, default=D.sigma2, help="decoder variance for --variance fixed")
    p.add_argument(
        "--sigma2-mode",
        choices=["closed_form", "gradient"],
        default=D.sigma2_mode,
        help="how the global sigma^2 is learned in stage 1",
    )
    p.add_argument(
        "--stages", type=POS_INT, choices=[1, 2], default=D.stages, help="stages of Algorithm 1 (learned only)"
    )
    p.add_argument(
        "--pixel-floor",
        type=NONNEG_FLOAT,
        default=D.pixel_floor,
        help="floor of the per-pixel variance in stage 2 (default: the stage-1 sigma*^2; 0 allowed)",
    )
    p.add_argument(
        "--latent-dim", type=POS_INT, default=D.latent_dim, help="latent size (default 16; 8 for tiny images)"
    )
    p.add_argument("--width", type=POS_INT, default=D.width, help="network width (default from the image shape)")
    p.add_argument(
        "--blocks",
        type=NONNEG_INT,
        default=D.blocks,
        help="residual 3x3 blocks per coarse level of the conv networks (0: the shallow default)",
    )
    p.add_argument(
        "--net",
        choices=NETS,
        default=D.net,
        help="network family: small (fast), paper (the WAE/RAE conv net, about 20x small's "
        "parameters; a GPU job), res (residual, between the two)",
    )


def _add_optimiser_options(p, D: TrainConfig) -> None:
    """Warm-ups, the optimiser, the batches and the stopping rule of each stage."""
    p.add_argument(
        "--kl-warmup",
        type=NONNEG_INT,
        default=D.kl_warmup,
        help="epochs over which the KL weight rises from 0 to 1 at the start of stage 1, against "
        "posterior collapse of large networks (the converged objective is the ELBO itself)",
    )
    p.add_argument(
        "--lr-warmup",
        type=NONNEG_INT,
        default=D.lr_warmup,
        help="Adam steps over which the learning rate rises linearly to --lr at the start of stage 1 "
        "(against the saturated, all-black decoder that wide or deep networks fall into; 0: off; "
        f"default: {PAPER_LR_WARMUP} for --net paper, at most the --epochs cap's steps, 0 for the others)",
    )
    p.add_argument(
        "--optimiser",
        choices=OPTIMISERS,
        default=D.optimiser,
        help="radam: rectified Adam, whose damped first steps keep wide or deep networks from "
        "saturating on the all-black image; adam: plain Adam (runs made before 0.2)",
    )
    p.add_argument(
        "--switch",
        choices=SWITCHES,
        default=D.switch,
        help="stage 2's optimiser: carry = goes on with stage 1's moments (the new variance head starts "
        "from zero); fresh = a new optimiser (runs made before 0.2; a fresh RAdam's first steps can undo stage 1)",
    )
    p.add_argument(
        "--stopping",
        choices=STOPPING,
        default=D.stopping,
        help="convergence rule: best = best of the last --window epochs vs the best before; "
        "endpoints = last epoch vs --window epochs before (the rule before 0.2)",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=D.ema,
        metavar="DECAY",
        help="keep an exponential moving average of the weights with this decay per step (e.g. 0.999), "
        "written each epoch to RUN/ema.pt and evaluated with --checkpoint ema.pt (default: none)",
    )
    p.add_argument(
        "--ema-warmup",
        action=argparse.BooleanOptionalAction,
        default=D.ema_warmup,
        help="with --ema: the n-th step's decay is min(DECAY, (1+n)/(10+n)), so the average forgets the "
        "random initial weights; --no-ema-warmup: DECAY from the first step",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=D.channels_last,
        help="train the conv layers on NHWC tensors: faster for the res and paper families on some CPUs "
        "(measure: python bench/train_levers.py --net res --levers fp32,channels_last)",
    )
    p.add_argument(
        "--keep-best",
        action=argparse.BooleanOptionalAction,
        default=D.keep_best,
        help="write the weights of the stage's best validation epoch to RUN/best.pt, evaluated with "
        "--checkpoint best.pt and in final.json (best_test)",
    )
    p.add_argument("--batch-size", type=POS_INT, default=D.batch_size)
    p.add_argument("--lr", type=POS_FLOAT, default=D.lr)
    p.add_argument("--epochs", type=POS_INT, default=D.epochs, help="maximum epochs per stage")
    p.add_argument("--min-epochs", type=NONNEG_INT, default=D.min_epochs)
    p.add_argument(
        "--tol",
        type=NONNEG_FLOAT,
        default=D.tol,
        help="convergence: change of the validation objective over --window epochs, in nats per data dimension",
    )
    p.add_argument(
        "--window",
        type=POS_INT,
        default=D.window,
        help=f"convergence window in epochs (default {D.window}; 3 stopped MNIST on a pause of the validation ELBO)",
    )
    p.add_argument(
        "--lr-drops",
        type=NONNEG_INT,
        default=D.lr_drops,
        help="when a stage converges, divide the learning rate by 10 and go on, up to this many times "
        "per stage; the stage ends when it converges after the last drop (0: the paper's rule)",
    )
    p.add_argument(
        "--n-val",
        type=NONNEG_INT,
        default=D.n_val,
        help="training images held out (the last ones) for the stopping rule; default 10%% of them, "
        "at most 5000. The test split is never used for stopping",
    )
    p.add_argument("--max-minutes", type=POS_FLOAT, default=D.max_minutes, help="wall-clock cap per stage, in minutes")


def _add_run_options(p, D: TrainConfig) -> None:
    """Where and how the run goes: device, seed, subsets, precision, hyperparameters, its folder, resume, branch."""
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=NONNEG_INT, default=D.seed)
    p.add_argument("--n-train", type=POS_INT, default=D.n_train, help="use only the first N training images")
    p.add_argument("--n-test", type=POS_INT, default=D.n_test, help="use only the first N test images")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default=D.precision,
        help="bf16 autocasts the networks (losses stay fp32)",
    )
    p.add_argument(
        "--hparam",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="objective hyperparameter, e.g. --hparam lambda=10 (repeatable)",
    )
    p.add_argument("--out", default=None, help="run folder (required unless --resume)")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue the run in this folder")
    p.add_argument(
        "--branch-from",
        default=None,
        metavar="RUN",
        help="start the new run --out at RUN's stage switch instead of training stage 1 again: its "
        "config is RUN's, and only --pixel-floor, --data-dir and --device may be given, e.g. "
        "--branch-from runs/learned --pixel-floor 0",
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def _parse_hparams(items: list[str]) -> dict:
    """``--hparam KEY=VALUE`` options -> {key: value}, each value read as JSON when it is JSON, else a string."""
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


def run_train(args) -> int:
    if init_from_env(args.device):  # launched by torchrun: one process per GPU or CPU rank
        try:
            code = _run_train_local(args, quiet=rank_world()[0] != 0)
        except BaseException:
            shutdown(wait=False)  # another rank may be inside a collective: waiting for it would hang
            raise
        shutdown()  # every rank waits for rank 0's last files before the group goes
        return code
    return _run_train_local(args)


def _run_train_local(args, quiet: bool = False) -> int:
    """`train` in this process: a new run from the options, --resume RUN under raised caps, or
    --branch-from RUN; with --dry-run the resolved config is printed instead."""
    from ..train import train  # imported when the command runs: `--help` stays fast

    planned = _planned_run(args)
    if planned is None:
        return 0
    config, out, how = planned
    train(config, out, device=args.device, **how)
    if not quiet:
        say(f"run finished: {out}")
    return 0


#: `train` options that say how to run, not what: never a change of the run's config
_HOW = {"device", "verbose", "dry_run"}


def _planned_run(args) -> tuple[TrainConfig, str | Path, dict] | None:
    """(config, run folder, how: resume or branch_from) of the run the options ask for; None for a
    --dry-run, after printing its config."""
    if args.resume:
        run = Path(args.resume)
        config = resumed_config(run, {k: getattr(args, k) for k in _given_options(args) - _HOW - {"resume"}})
        return _unless_dry(args, config, run, {"resume": True})
    if not args.out and not args.dry_run:
        raise ValueError("train needs --out RUN_FOLDER (or --resume RUN)")
    if args.branch_from:  # stage 2 of RUN's config (a new floor) from RUN's switch
        run = Path(args.branch_from)
        changes = {k: getattr(args, k) for k in _given_options(args) - _HOW - {"branch_from", "out"}}
        config = branched_config(run, changes)
        return _unless_dry(args, config, args.out, {"branch_from": run})
    config = _new_config(args)
    resolve_hparams(config)  # reject unknown --hparam keys before any data or run folder
    if not args.dry_run:
        return config, args.out, {}
    data = load_dataset(config.dataset, data_dir=config.data_dir, image_size=config.image_size)
    resolved = {
        **dataclasses.asdict(config.resolved(data.shape, len(data.x_train), real_valued=data.real_valued)),
        "image_shape": list(data.shape),
        "n_train": len(data.x_train),
        "n_test": len(data.x_test),
    }
    say(json.dumps(resolved, indent=2, sort_keys=True))
    return None


def _unless_dry(args, config: TrainConfig, out, how: dict) -> tuple[TrainConfig, str | Path, dict] | None:
    """The run planned, or None after printing its config for a --dry-run."""
    if args.dry_run:
        say(config.to_json())
        return None
    return config, out, how


def _new_config(args) -> TrainConfig:
    """The config of a new run: the options named like TrainConfig's fields, the method, --hparam, --target."""
    fields = ({f.name for f in dataclasses.fields(TrainConfig)} & set(vars(args))) - {"method"}
    hparams = _parse_hparams(args.hparam)
    config = TrainConfig(
        **{f: getattr(args, f) for f in fields}, method=method_of(args.method, args.variance), hparams=hparams
    )
    if args.target is None:
        return config
    if not config.dataset.startswith("csv:"):
        raise ValueError(
            f"--target {args.target}: leaves a column of a csv:PATH table out, but --dataset is "
            f"{config.dataset!r}; fix: drop --target"
        )
    return dataclasses.replace(config, dataset=f"{config.dataset}{TARGET_SEP}{args.target}")


def _given_options(args) -> set[str]:
    """The `train` options given on the command line (those that differ from their defaults)."""
    sub = argparse.ArgumentParser().add_subparsers()
    add_train(sub)
    defaults = vars(sub.choices["train"].parse_args([]))
    return {k for k, v in vars(args).items() if k in defaults and v != defaults[k]}


def add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train both stages on the embedded digits set and write a report",
        description="Train Algorithm 1 (both stages) on scikit-learn's 8x8 digits (no download) "
        "and write reconstructions with per-pixel sigma maps, prior samples, learning "
        "curves and a summary into --out.",
    )
    p.add_argument("--out", default="demo-report", help="report folder")
    p.add_argument("--seed", type=NONNEG_INT, default=0)


def run_demo(args) -> int:
    from .. import demo  # imported when the command runs: `--help` stays fast

    writes.check("demo", folders=[Folder(Path(args.out), "demo")])
    summary = demo.run_demo(args.out, config=dataclasses.replace(demo.DEMO_CONFIG, seed=args.seed))
    writes.record("demo", folders=[Folder(Path(args.out), "demo")])
    say(f"demo report in {args.out}/")
    for k, v in summary.items():
        say(f"  {k}: {v}")
    return 0
