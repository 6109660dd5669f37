"""Command-line interface: thin subcommands over the public API.

Each subcommand is a pair ``add_NAME(subparsers)`` / ``run_NAME(args)`` of a module of
:mod:`balanced_vae.commands`, registered in :data:`COMMANDS`; this module only builds the parser
and turns the library's errors (bad data, bad checkpoints, bad values) into one line on standard
error and exit status 2: no traceback for a user's mistake.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import writes
from .atomic import DiskFullError
from .checkpoint import CheckpointError
from .commands.evaluate import (
    add_evaluate,
    add_fid,
    add_fid_real,
    add_reconstruct,
    run_evaluate,
    run_fid,
    run_fid_real,
    run_reconstruct,
)
from .commands.latent import (
    add_kl,
    add_latent_plot,
    add_latent_walk,
    add_ood,
    add_report,
    add_sample,
    run_kl,
    run_latent_plot,
    run_latent_walk,
    run_ood,
    run_report,
    run_sample,
)
from .commands.options import say
from .commands.paper import add_reproduce, add_results_page, run_reproduce, run_results_page
from .commands.share import add_export, add_slim, run_export, run_slim
from .commands.train import add_demo, add_train, run_demo, run_train
from .data import DataError
from .version import __version__

COMMANDS = {
    "train": (add_train, run_train),
    "sample": (add_sample, run_sample),
    "kl": (add_kl, run_kl),
    "latent-plot": (add_latent_plot, run_latent_plot),
    "latent-walk": (add_latent_walk, run_latent_walk),
    "ood": (add_ood, run_ood),
    "report": (add_report, run_report),
    "demo": (add_demo, run_demo),
    "evaluate": (add_evaluate, run_evaluate),
    "reconstruct": (add_reconstruct, run_reconstruct),
    "fid-real": (add_fid_real, run_fid_real),
    "fid": (add_fid, run_fid),
    "reproduce": (add_reproduce, run_reproduce),
    "results-page": (add_results_page, run_results_page),
    "slim": (add_slim, run_slim),
    "export": (add_export, run_export),
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
        say(json.dumps(e.result, indent=2, sort_keys=True))
        say(f"balanced-vae {args.command}: error: {e.strerror}", err=True)
        return 2
    except (DataError, CheckpointError, ValueError, DiskFullError, FloatingPointError) as e:
        say(f"balanced-vae {args.command}: error: {e}", err=True)
        return 2
    except BrokenPipeError:  # the reader of the output went away (`| head`): nothing more to say to it
        try:  # stdout to /dev/null, so the interpreter's final flush does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # a stdout without a file descriptor (captured): nothing to flush
            pass
        return 1
    except OSError as e:  # the environment: a read-only or missing folder, no permission, a full disk
        if e.strerror is None:  # raised by balanced-vae with a message that names the path and the fix
            say(f"balanced-vae {args.command}: error: {e}", err=True)
            return 2
        where = f"{e.filename}: " if e.filename else ""
        say(
            f"balanced-vae {args.command}: error: {where}{e.strerror}; fix: choose a path that exists and can "
            "be written (e.g. --out in your own folder), or fix its permissions",
            err=True,
        )
        return 2
    except KeyboardInterrupt:
        run = getattr(args, "resume", None) or getattr(args, "out", None)
        where = (
            (f"; the last checkpoint is in {run}/checkpoint.pt: continue with `balanced-vae train --resume {run}`")
            if args.command == "train" and run
            else ""
        )
        say(f"balanced-vae {args.command}: interrupted{where}", err=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
