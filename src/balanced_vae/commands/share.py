"""Subcommands that make a finished run fit to commit or share: slim (weights only) and export (a model folder).

Each is a pair ``add_NAME(subparsers)`` / ``run_NAME(args)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import writes
from ..checkpoint import CHECKPOINT, STAGE1, slim_checkpoint
from ..writes import Folder, Input
from .options import add_data_dir, add_gmm, add_run, say


def add_slim(sub) -> None:
    p = sub.add_parser(
        "slim",
        help="drop the optimiser and random states from finished runs' checkpoints (to commit or share)",
        description="Rewrite RUN/checkpoint.pt and RUN/stage1.pt of each finished run with weights only: Adam's "
        "moments (twice the model's size) and the random states go; the model, stage, epoch, history "
        "and commits stay. The run can still be evaluated, sampled, reported and reused by reproduce; "
        "`train --resume` can no longer continue it. Each file is replaced atomically.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder made by `balanced-vae train` or reproduce")


def run_slim(args) -> int:
    writes.check("slim", folders=[Folder(Path(run), "run") for run in args.runs])
    for run in map(Path, args.runs):
        for name in (CHECKPOINT, STAGE1):
            if name == CHECKPOINT or (run / name).is_file():  # a missing checkpoint.pt is named by the loader
                before, after = slim_checkpoint(run / name)
                say(f"{run / name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
    return 0


def add_export(sub) -> None:
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
    add_run(p)
    p.add_argument("out", help="new folder (or a model folder export made) to write")
    add_gmm(p, fit_on=False)
    p.add_argument("--no-gmm", dest="gmm", action="store_false", help="leave the GMM out (no data needed)")
    add_data_dir(p)


def run_export(args) -> int:
    from ..export import MODEL_FILES, export_run  # imported when the command runs: `--help` stays fast

    out = Folder(Path(args.out), names=MODEL_FILES)
    writes.check("export", folders=[out], inputs=[Input(Path(args.run), "run"), Input(Path(args.run) / CHECKPOINT)])
    path = export_run(args.run, args.out, components=args.components, gmm=args.gmm, data_dir=args.data_dir)
    writes.record("export", folders=[out])
    size = sum(f.stat().st_size for f in path.iterdir() if f.name in MODEL_FILES)
    say(f"model folder {path}/ ({size / 2**20:.1f} MiB): {', '.join(sorted(f.name for f in path.iterdir()))}")
    return 0
