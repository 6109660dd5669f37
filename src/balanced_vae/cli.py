"""Command-line interface: thin subcommands over the public API.

Each subcommand is a pair ``_add_NAME(subparsers)`` / ``_run_NAME(args)``, registered in
:data:`COMMANDS`: ``train``, ``demo`` and ``slim`` here, the others in :mod:`balanced_vae.commands`.
Errors from the library (bad data, bad checkpoints, bad values) are
printed as one line and exit with status 2; no traceback for a user's mistake.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from . import writes
from .atomic import DiskFullError
from .checkpoint import CHECKPOINT, STAGE1, CheckpointError, slim_checkpoint
from .commands.evaluate import (
    _add_evaluate,
    _add_fid,
    _add_fid_real,
    _add_reconstruct,
    _run_evaluate,
    _run_fid,
    _run_fid_real,
    _run_reconstruct,
)
from .commands.latent import (
    _add_kl,
    _add_latent_plot,
    _add_latent_walk,
    _add_ood,
    _add_report,
    _add_sample,
    _run_kl,
    _run_latent_plot,
    _run_latent_walk,
    _run_ood,
    _run_report,
    _run_sample,
)
from .commands.options import _NONNEG_FLOAT, _NONNEG_INT, _POS_FLOAT, _POS_INT
from .commands.paper import _add_reproduce, _add_results_page, _run_reproduce, _run_results_page
from .config import OPTIMISERS, OUTPUTS, STOPPING, TrainConfig, method_of
from .data import DataError, load_dataset
from .data.table import TARGET_SEP
from .distributed import init_from_env, rank_world, shutdown
from .methods import METHODS, resolve_hparams
from .nets import NETS
from .resume import branched_config, resumed_config
from .train import train
from .version import __version__
from .writes import Folder, Input


def _add_train(sub) -> None:
    _D = TrainConfig()  # one source of every training default: the config's fields

    p = sub.add_parser(
        "train",
        help="train a VAE (Algorithm 1 for --method learned)",
        description="Train a Gaussian VAE into a run folder. With --method learned (the default) stage 1 "
        "learns a global decoder variance sigma^2 (Eq. 10) and stage 2 adds a per-pixel variance "
        "head (Eq. 11). Methods: " + "; ".join(f"{k}: {v.doc}" for k, v in METHODS.items()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        default=_D.dataset,
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
        default=_D.output,
        help="decoder mean: sigmoid (data in [0, 1]) or identity (real values); default: identity for "
        "a table (csv:, 2-D npz:), sigmoid for images",
    )
    p.add_argument(
        "--data-dir",
        default=_D.data_dir,
        help="folder holding mnist/, fashion-mnist/, celeba/ (default: $BALANCED_VAE_DATA, else ~/.cache/balanced-vae)",
    )
    p.add_argument(
        "--image-size",
        type=_POS_INT,
        default=_D.image_size,
        help="centre-crop and resize celeba/folder images to this size (default: 64 for celeba; a "
        "folder's own size when its images are square and of one size, else 64, with a warning)",
    )
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
    p.add_argument("--sigma2", type=_POS_FLOAT, default=_D.sigma2, help="decoder variance for --variance fixed")
    p.add_argument(
        "--sigma2-mode",
        choices=["closed_form", "gradient"],
        default=_D.sigma2_mode,
        help="how the global sigma^2 is learned in stage 1",
    )
    p.add_argument(
        "--stages", type=_POS_INT, choices=[1, 2], default=_D.stages, help="stages of Algorithm 1 (learned only)"
    )
    p.add_argument(
        "--pixel-floor",
        type=_NONNEG_FLOAT,
        default=_D.pixel_floor,
        help="floor of the per-pixel variance in stage 2 (default: the stage-1 sigma*^2; 0 allowed)",
    )
    p.add_argument(
        "--latent-dim", type=_POS_INT, default=_D.latent_dim, help="latent size (default 16; 8 for tiny images)"
    )
    p.add_argument("--width", type=_POS_INT, default=_D.width, help="network width (default from the image shape)")
    p.add_argument(
        "--blocks",
        type=_NONNEG_INT,
        default=_D.blocks,
        help="residual 3x3 blocks per coarse level of the conv networks (0: the shallow default)",
    )
    p.add_argument(
        "--net",
        choices=NETS,
        default=_D.net,
        help="network family: small (fast), paper (the WAE/RAE conv net, about 20x small's "
        "parameters; a GPU job), res (residual, between the two)",
    )
    p.add_argument(
        "--kl-warmup",
        type=_NONNEG_INT,
        default=_D.kl_warmup,
        help="epochs over which the KL weight rises from 0 to 1 at the start of stage 1, against "
        "posterior collapse of large networks (the converged objective is the ELBO itself)",
    )
    p.add_argument(
        "--lr-warmup",
        type=_NONNEG_INT,
        default=_D.lr_warmup,
        help="Adam steps over which the learning rate rises linearly to --lr at the start of stage 1 "
        "(against the saturated, all-black decoder that wide or deep networks fall into; 0: off)",
    )
    p.add_argument(
        "--optimiser",
        choices=OPTIMISERS,
        default=_D.optimiser,
        help="radam: rectified Adam, whose damped first steps keep wide or deep networks from "
        "saturating on the all-black image; adam: plain Adam (runs made before 0.2)",
    )
    p.add_argument(
        "--stopping",
        choices=STOPPING,
        default=_D.stopping,
        help="convergence rule: best = best of the last --window epochs vs the best before; "
        "endpoints = last epoch vs --window epochs before (the rule before 0.2)",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=_D.ema,
        metavar="DECAY",
        help="keep an exponential moving average of the weights with this decay per step (e.g. 0.999), "
        "written each epoch to RUN/ema.pt and evaluated with --checkpoint ema.pt (default: none)",
    )
    p.add_argument("--batch-size", type=_POS_INT, default=_D.batch_size)
    p.add_argument("--lr", type=_POS_FLOAT, default=_D.lr)
    p.add_argument("--epochs", type=_POS_INT, default=_D.epochs, help="maximum epochs per stage")
    p.add_argument("--min-epochs", type=_NONNEG_INT, default=_D.min_epochs)
    p.add_argument(
        "--tol",
        type=_NONNEG_FLOAT,
        default=_D.tol,
        help="convergence: change of the validation objective over --window epochs, in nats per data dimension",
    )
    p.add_argument("--window", type=_POS_INT, default=_D.window, help="convergence window in epochs")
    p.add_argument(
        "--lr-drops",
        type=_NONNEG_INT,
        default=_D.lr_drops,
        help="when a stage converges, divide the learning rate by 10 and go on, up to this many times "
        "per stage; the stage ends when it converges after the last drop (0: the paper's rule)",
    )
    p.add_argument(
        "--n-val",
        type=_NONNEG_INT,
        default=_D.n_val,
        help="training images held out (the last ones) for the stopping rule; default 10%% of them, "
        "at most 5000. The test split is never used for stopping",
    )
    p.add_argument(
        "--max-minutes", type=_POS_FLOAT, default=_D.max_minutes, help="wall-clock cap per stage, in minutes"
    )
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=_NONNEG_INT, default=_D.seed)
    p.add_argument("--n-train", type=_POS_INT, default=_D.n_train, help="use only the first N training images")
    p.add_argument("--n-test", type=_POS_INT, default=_D.n_test, help="use only the first N test images")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default=_D.precision,
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
    if init_from_env(args.device):  # launched by torchrun: one process per GPU or CPU rank
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
    config = TrainConfig(**{f: getattr(args, f) for f in fields}, method=method, hparams=_parse_hparams(args.hparam))
    if args.target is not None:
        if not config.dataset.startswith("csv:"):
            raise ValueError(
                f"--target {args.target}: leaves a column of a csv:PATH table out, but --dataset is "
                f"{config.dataset!r}; fix: drop --target"
            )
        config = dataclasses.replace(config, dataset=f"{config.dataset}{TARGET_SEP}{args.target}")

    resolve_hparams(config)  # reject unknown --hparam keys before any data or run folder
    if args.dry_run:
        data = load_dataset(config.dataset, data_dir=config.data_dir, image_size=config.image_size)
        print(
            json.dumps(
                {
                    **dataclasses.asdict(config.resolved(data.shape, len(data.x_train), real_valued=data.real_valued)),
                    "image_shape": list(data.shape),
                    "n_train": len(data.x_train),
                    "n_test": len(data.x_test),
                },
                indent=2,
                sort_keys=True,
            )
        )
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
    p = sub.add_parser(
        "demo",
        help="train both stages on the embedded digits set and write a report",
        description="Train Algorithm 1 (both stages) on scikit-learn's 8x8 digits (no download) "
        "and write reconstructions with per-pixel sigma maps, prior samples, learning "
        "curves and a summary into --out.",
    )
    p.add_argument("--out", default="demo-report", help="report folder")
    p.add_argument("--seed", type=_NONNEG_INT, default=0)


def _run_demo(args) -> int:
    from .demo import DEMO_CONFIG, run_demo  # imported when the command runs: `--help` stays fast

    writes.check("demo", folders=[Folder(Path(args.out), "demo")])
    summary = run_demo(args.out, config=dataclasses.replace(DEMO_CONFIG, seed=args.seed))
    writes.record("demo", folders=[Folder(Path(args.out), "demo")])
    print(f"demo report in {args.out}/")
    for k, v in summary.items():
        print(f"  {k}: {v}")
    return 0


def _add_slim(sub) -> None:
    p = sub.add_parser(
        "slim",
        help="drop the optimiser and random states from finished runs' checkpoints (to commit or share)",
        description="Rewrite RUN/checkpoint.pt and RUN/stage1.pt of each finished run with weights only: Adam's "
        "moments (twice the model's size) and the random states go; the model, stage, epoch, history "
        "and commits stay. The run can still be evaluated, sampled, reported and reused by reproduce; "
        "`train --resume` can no longer continue it. Each file is replaced atomically.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder made by `balanced-vae train` or reproduce")


def _run_slim(args) -> int:
    writes.check("slim", folders=[Folder(Path(run), "run") for run in args.runs])
    for run in map(Path, args.runs):
        for name in (CHECKPOINT, STAGE1):
            if name == CHECKPOINT or (run / name).is_file():  # a missing checkpoint.pt is named by the loader
                before, after = slim_checkpoint(run / name)
                print(f"{run / name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a model folder to share: safetensors weights, the GMM and a JSON card",
        description="Write OUT/model.safetensors (the weights `evaluate` scores: the final stage, with the per-pixel "
        "variance head), OUT/gmm.safetensors (the GMM of Eq. 13 on the training codes, so `sample` needs "
        "no refit; fitting it needs the run's data) and OUT/model.json (config, data fingerprint, "
        "sigma*^2, training commits, the run's metrics with their protocol). Every command that takes "
        "a RUN, and runs.load_run, accept OUT; loading it never unpickles.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", help="run folder made by `balanced-vae train`")
    p.add_argument("out", help="new folder (or a model folder export made) to write")
    p.add_argument(
        "--components", type=_POS_INT, default=None, help="K of the GMM (default: 32 for 28x28 images, 500 for 64x64)"
    )
    p.add_argument("--no-gmm", dest="gmm", action="store_false", help="leave the GMM out (no data needed)")
    p.add_argument("--data-dir", default=None, help="data folder (default: the run's, then $BALANCED_VAE_DATA)")


def _run_export(args) -> int:
    from .export import MODEL_FILES, export_run

    out = Folder(Path(args.out), names=MODEL_FILES)
    writes.check("export", folders=[out], inputs=[Input(Path(args.run), "run"), Input(Path(args.run) / CHECKPOINT)])
    path = export_run(args.run, args.out, components=args.components, gmm=args.gmm, data_dir=args.data_dir)
    writes.record("export", folders=[out])
    size = sum(f.stat().st_size for f in path.iterdir() if f.name in MODEL_FILES)
    print(f"model folder {path}/ ({size / 2**20:.1f} MiB): {', '.join(sorted(f.name for f in path.iterdir()))}")
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
    "export": (_add_export, _run_export),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="balanced-vae",
        description="VAEs that balance their own ELBO by learning the decoder variance "
        "(Lin, Roberts, Trigoni, Clark 2019).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )

    try:
        return COMMANDS[args.command][1](args)
    except writes.NotSaved as e:  # computed but not saved: print it rather than lose it
        print(json.dumps(e.result, indent=2, sort_keys=True))
        print(f"balanced-vae {args.command}: error: {e.strerror}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, ValueError, DiskFullError, FloatingPointError) as e:
        print(f"balanced-vae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the environment: a read-only or missing folder, no permission, a full disk
        if e.strerror is None:  # raised by balanced-vae with a message that names the path and the fix
            print(f"balanced-vae {args.command}: error: {e}", file=sys.stderr)
            return 2
        where = f"{e.filename}: " if e.filename else ""
        print(
            f"balanced-vae {args.command}: error: {where}{e.strerror}; fix: choose a path that exists and can "
            "be written (e.g. --out in your own folder), or fix its permissions",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        run = getattr(args, "resume", None) or getattr(args, "out", None)
        where = (
            (f"; the last checkpoint is in {run}/checkpoint.pt: continue with `balanced-vae train --resume {run}`")
            if args.command == "train" and run
            else ""
        )
        print(f"balanced-vae {args.command}: interrupted{where}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
