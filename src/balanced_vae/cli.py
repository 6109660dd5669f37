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
import sys
from pathlib import Path

from . import __version__


def _add_train(sub) -> None:
    from .methods import METHODS

    p = sub.add_parser(
        "train", help="train a VAE (Algorithm 1 for --method learned)",
        description="Train a Gaussian VAE into a run folder. With --method learned (the default) stage 1 "
                    "learns a global decoder variance sigma^2 (Eq. 10) and stage 2 adds a per-pixel variance "
                    "head (Eq. 11). Methods: " + "; ".join(f"{k}: {v.doc}" for k, v in METHODS.items()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="digits",
                   help="digits (embedded), mnist, fashion-mnist, celeba, folder:PATH or npz:PATH")
    p.add_argument("--data-dir", default=None, help="folder holding mnist/, fashion-mnist/, celeba/ "
                   "(default: $BALANCED_VAE_DATA, else ~/.cache/balanced-vae)")
    p.add_argument("--image-size", type=int, default=None, help="resize celeba/folder images to this size")
    p.add_argument("--method", default=None, choices=sorted(METHODS),
                   help="objective and likelihood (default: learned, or fixed with --variance fixed)")
    p.add_argument("--variance", choices=["learned", "fixed"], default=None,
                   help="shorthand: learned = --method learned, fixed = --method fixed")
    p.add_argument("--sigma2", type=float, default=0.5, help="decoder variance for --variance fixed")
    p.add_argument("--sigma2-mode", choices=["closed_form", "gradient"], default="closed_form",
                   help="how the global sigma^2 is learned in stage 1")
    p.add_argument("--stages", type=int, choices=[1, 2], default=2, help="stages of Algorithm 1 (learned only)")
    p.add_argument("--pixel-floor", type=float, default=None,
                   help="floor of the per-pixel variance in stage 2 (default: the stage-1 sigma*^2; 0 allowed)")
    p.add_argument("--latent-dim", type=int, default=None, help="latent size (default 16; 8 for tiny images)")
    p.add_argument("--width", type=int, default=None, help="network width (default from the image shape)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=30, help="maximum epochs per stage")
    p.add_argument("--min-epochs", type=int, default=3)
    p.add_argument("--tol", type=float, default=1e-3, help="convergence: relative change of test ELBO")
    p.add_argument("--window", type=int, default=3, help="convergence window in epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--n-test", type=int, default=None, help="use only the first N test images")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16 autocasts the networks (losses stay fp32)")
    p.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE",
                   help="objective hyperparameter, e.g. --hparam lambda=10 (repeatable)")
    p.add_argument("--out", default=None, help="run folder (required unless --resume)")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue the run in this folder")
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
    from .config import TrainConfig
    from .train import train

    if args.resume:
        run = Path(args.resume)
        config = TrainConfig.load(run / "config.json")
        if args.dry_run:
            print(config.to_json())
            return 0
        train(config, run, resume=True)
        print(f"run finished: {run}")
        return 0
    if not args.out and not args.dry_run:
        raise ValueError("train needs --out RUN_FOLDER (or --resume RUN)")
    method = args.method or ("fixed" if args.variance == "fixed" else "learned")
    if args.variance and args.method and method != ("fixed" if args.variance == "fixed" else "learned"):
        raise ValueError(f"--variance {args.variance} contradicts --method {args.method}; give one of them")
    config = TrainConfig(
        dataset=args.dataset, data_dir=args.data_dir, image_size=args.image_size, method=method,
        sigma2=args.sigma2, sigma2_mode=args.sigma2_mode, stages=args.stages, pixel_floor=args.pixel_floor,
        latent_dim=args.latent_dim, width=args.width, batch_size=args.batch_size, lr=args.lr,
        epochs=args.epochs, min_epochs=args.min_epochs, tol=args.tol, window=args.window, seed=args.seed,
        n_train=args.n_train, n_test=args.n_test, precision=args.precision, hparams=_parse_hparams(args.hparam))
    if args.dry_run:
        from .data import load_dataset

        data = load_dataset(config.dataset, data_dir=config.data_dir, image_size=config.image_size)
        print(json.dumps({**dataclasses.asdict(config.resolved(data.shape)), "image_shape": list(data.shape),
                          "n_train": len(data.x_train), "n_test": len(data.x_test)}, indent=2, sort_keys=True))
        return 0
    train(config, args.out)
    print(f"run finished: {args.out}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train both stages on the embedded digits set and write a report",
                       description="Train Algorithm 1 (both stages) on scikit-learn's 8x8 digits (no download) "
                                   "and write reconstructions with per-pixel sigma maps, prior samples, learning "
                                   "curves and a summary into --out.")
    p.add_argument("--out", default="demo-report", help="report folder")
    p.add_argument("--seed", type=int, default=0)


def _run_demo(args) -> int:
    from .demo import DEMO_CONFIG, run_demo

    summary = run_demo(args.out, config=dataclasses.replace(DEMO_CONFIG, seed=args.seed))
    print(f"demo report in {args.out}/")
    for k, v in summary.items():
        print(f"  {k}: {v}")
    return 0


COMMANDS = {
    "train": (_add_train, _run_train),
    "demo": (_add_demo, _run_demo),
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
    from .checkpoint import CheckpointError
    from .data import DataError

    try:
        return COMMANDS[args.command][1](args)
    except (DataError, CheckpointError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"balanced-vae {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
