"""Subcommands that evaluate a run or compare image sets: evaluate, reconstruct, fid-real, fid.

Each is a pair ``_add_NAME(subparsers)`` / ``_run_NAME(args)``; the library module a command
calls is imported when it runs, so ``balanced-vae --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import writes
from ..checkpoint import CHECKPOINT, STAGE1
from ..paper.budgets import PAPER
from ..protocol import METRICS
from ..writes import Folder, Input, input_of
from .options import POS_INT, add_data_dir, add_fid_backend, add_protocol, add_run, protocol_of, say


def add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="test metrics of a run (ELBO, IWAE, FID, KL, calibration, precision/recall) into RUN/results.json",
        description="Compute the paper's metrics for a trained run and write every number with its protocol "
        "(data split, counts, k, seeds, sampler, Inception implementation, version, git commit) to "
        "RUN/results.json. FID needs `pip install balanced-vae[fid]`; on a CPU the Inception network "
        "runs at a few images per second, so lower --n-fid for a quick look.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_run(p)
    p.add_argument("--metrics", default="elbo,iwae", help=f"comma-separated subset of {','.join(METRICS)}")
    p.add_argument("--checkpoint", default=CHECKPOINT, help=f"checkpoint file in RUN (e.g. {STAGE1})")
    add_protocol(p)
    add_data_dir(p)
    p.add_argument(
        "--fid-cache", default=None, help="folder for cached real-image FID statistics (default: DATA_DIR/fid-stats)"
    )
    p.add_argument("--device", default=None, help="device for the Inception network (default: cuda if available)")
    p.add_argument(
        "--out",
        default=None,
        help="results file (default: RUN/results.json; RUN/results_NAME.json for --checkpoint NAME.pt)",
    )


def run_evaluate(args) -> int:
    from ..evaluate import evaluate_run  # imported when the command runs: `--help` stays fast

    run, stem = Path(args.run), Path(args.checkpoint).stem
    out = args.out or run / ("results.json" if args.checkpoint == CHECKPOINT else f"results_{stem}.json")
    # a run that cannot be written is no reason to refuse: the results are printed when they cannot be saved
    writes.check("evaluate", files=[out], inputs=[Input(run, "run"), Input(run / args.checkpoint)], writable=False)
    doc = evaluate_run(
        args.run,
        protocol_of(args),
        args.metrics,
        which=args.checkpoint,
        data_dir=args.data_dir,
        cache_dir=args.fid_cache,
        device=args.device,
        out=args.out,
    )
    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    say(json.dumps({m: doc["metrics"][m]["values"] for m in names}, indent=2, sort_keys=True))
    writes.record("evaluate", files=[doc["path"]])
    say(f"results written to {doc['path']}")
    return 0


def add_reconstruct(sub) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="picture of test images, reconstructions and per-pixel sigma (Figure 3)",
        description="Write OUT/reconstructions.png: rows of ground truth, reconstruction g(mu(x)) "
        "and the predicted per-pixel sigma of the first N test images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_run(p)
    p.add_argument("--n", type=POS_INT, default=16, help="number of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--checkpoint", default=CHECKPOINT, help=f"checkpoint file in RUN (e.g. {STAGE1})")
    p.add_argument("--error", action="store_true", help="add a row with the absolute error |x - g(mu(x))|")
    p.add_argument("--data-dir", default=None)


def run_reconstruct(args) -> int:
    from ..reconstruct import reconstruct_run  # imported when the command runs: `--help` stays fast

    out = Folder(Path(args.out), names=("reconstructions.png",))
    writes.check(
        "reconstruct", folders=[out], inputs=[Input(Path(args.run), "run"), Input(Path(args.run) / args.checkpoint)]
    )
    path = reconstruct_run(
        args.run, args.out, n=args.n, which=args.checkpoint, split=args.split, data_dir=args.data_dir, error=args.error
    )
    writes.record("reconstruct", folders=[out])
    say(f"wrote {path}")
    return 0


def _add_fid_inputs(p) -> None:
    """The options every real-image FID command shares: data, statistics cache, batch, device, backend."""
    p.add_argument("--data-dir", default=None)
    p.add_argument("--fid-cache", default=None, help="folder for cached statistics (default: DATA_DIR/fid-stats)")
    p.add_argument("--batch-size", type=POS_INT, default=50)
    p.add_argument("--device", default=None)
    add_fid_backend(p)


def _fid_inputs_of(args) -> dict:
    """The keyword arguments of :func:`_add_fid_inputs`'s options and ``--out``, as the FID functions of
    :mod:`balanced_vae.fid_sets` take them."""
    return {
        "data_dir": args.data_dir,
        "cache_dir": args.fid_cache,
        "batch_size": args.batch_size,
        "device": args.device,
        "backend": args.fid_backend,
        "out": args.out,
    }


def add_fid_real(sub) -> None:
    p = sub.add_parser(
        "fid-real",
        help="sanity FID between a data set's real training and test images",
        description="FID between the first N training and the first N test images (the paper "
        "reports 1.9 for MNIST and 0.7 for Fashion-MNIST at N = 10,000). Statistics "
        "are cached; needs `pip install balanced-vae[fid]`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("dataset", help="mnist, fashion-mnist, ...")
    p.add_argument("--n", type=POS_INT, default=10_000, help="images per split")
    _add_fid_inputs(p)
    p.add_argument(
        "--out", default=None, help="also write the result as JSON here (e.g. results/fid-real/mnist-n10000.json)"
    )


def run_fid_real(args) -> int:
    from ..fid_sets import real_data_fid  # imported when the command runs: `--help` stays fast

    writes.check("fid-real", files=[args.out], inputs=[Input(Path(args.data_dir))] if args.data_dir else [])
    doc = real_data_fid(
        args.dataset,
        n=args.n,
        paper_value=PAPER["table2"].get(args.dataset, {}).get("real"),
        **_fid_inputs_of(args),
    )
    writes.record("fid-real", files=[args.out] if args.out else [])
    say(json.dumps(doc, indent=2, sort_keys=True))
    return 0


def add_fid(sub) -> None:
    p = sub.add_parser(
        "fid",
        help="FID between two image sets (folders, .npy/.npz arrays or NAME:SPLIT)",
        description="FID of image set A against image set B with the protocol of `evaluate` "
        "(TF-Inception pool features, 8-bit quantisation, TF1 bilinear resize to "
        "299x299). A set is a folder of PNG/JPEG images (one size), an .npy or .npz "
        "array ((N, H, W), (N, C, H, W) or (N, H, W, C), floats in [0, 1] or uint8; "
        "FILE.npz:KEY picks an array) or a data set with a split (mnist:test, "
        "fashion-mnist:train); a data set's statistics are cached. Needs "
        "`pip install balanced-vae[fid]`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("a", help="first image set, e.g. samples/gmm_means.npy")
    p.add_argument("b", help="second image set, e.g. mnist:test")
    p.add_argument(
        "--n",
        type=POS_INT,
        default=None,
        help="images per set (default: all of a folder or array, 10,000 of a data set split)",
    )
    _add_fid_inputs(p)
    p.add_argument("--out", default=None, help="also write the result as JSON here")


def run_fid(args) -> int:
    from ..fid_sets import fid_between  # imported when the command runs: `--help` stays fast

    writes.check("fid", files=[args.out], inputs=[input_of(args.a), input_of(args.b)])
    doc = fid_between(
        args.a,
        args.b,
        n=args.n,
        **_fid_inputs_of(args),
    )
    writes.record("fid", files=[args.out] if args.out else [])
    say(json.dumps(doc, indent=2, sort_keys=True))
    return 0
