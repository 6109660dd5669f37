"""What the subcommands share: option types (positive numbers), the options of a run's commands (RUN,
the GMM's K and fitted codes, the data folder), the FID backend and evaluation protocol options (each
default the library's, stated once in :mod:`balanced_vae.protocol`), and :func:`say`, the one way a
command speaks to its user."""

from __future__ import annotations

import argparse
import math
import sys

from ..protocol import FID_BACKENDS, PRESETS, QUICK, SAMPLER_KINDS, EvalProtocol, get_protocol
from ..protocol import PAPER as PAPER_PROTOCOL


def say(text: str = "", *, err: bool = False) -> None:
    """One line of a command's output: results, paths written (standard output), or an error (``err``:
    standard error). Every command speaks through here; the library itself logs."""
    print(text, file=sys.stderr if err else sys.stdout)


def _number(kind: type, low: float, inclusive: bool):
    """An argparse type: a finite ``kind`` above ``low`` (or equal, when ``inclusive``), else a clear error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: it must be a finite number {'>=' if inclusive else '>'} {low:g}"
            )
        return value

    parse.__name__ = kind.__name__
    return parse


POS_INT = _number(int, 1, True)
NONNEG_INT = _number(int, 0, True)
POS_FLOAT = _number(float, 0.0, False)
NONNEG_FLOAT = _number(float, 0.0, True)


RUN_HELP = "run folder made by `balanced-vae train`"


def add_run(p, help: str = RUN_HELP) -> None:
    """The positional ``run``: the run folder a command reads."""
    p.add_argument("run", help=help)


def add_gmm(p, *, fit_on: bool = True) -> None:
    """``--components`` (K of the GMM of Eq. 13; None: the library's default for the image size) and, with
    ``fit_on``, ``--fit-on`` (the codes it is fitted on)."""
    p.add_argument(
        "--components", type=POS_INT, default=None, help="K of the GMM (default: 32 for 28x28 images, 500 for 64x64)"
    )
    if fit_on:
        p.add_argument(
            "--fit-on",
            choices=["mean", "sample"],
            default="mean",
            help="codes the GMM is fitted on: posterior means or one z ~ q(z|x) per image",
        )


def add_data_dir(p) -> None:
    """``--data-dir``: where the run's data set is read (None: the run's folder, then $BALANCED_VAE_DATA)."""
    p.add_argument("--data-dir", default=None, help="data folder (default: the run's, then $BALANCED_VAE_DATA)")


def add_fid_backend(p) -> None:
    p.add_argument(
        "--fid-backend",
        choices=list(FID_BACKENDS),
        default=PAPER_PROTOCOL.fid_backend,
        help="runs the Inception network: torch (CPU or CUDA) or openvino (CPU, FP32, 2-3x faster); "
        "auto = openvino on the CPU when installed, else torch",
    )


#: the options of an evaluation protocol: flag -> (field of EvalProtocol, type, help)
_PROTOCOL_OPTIONS = {
    "--sampler": (
        "sampler",
        None,
        "p(z) for FID samples, the second p(z) of the IWAE bound, and the sampler set "
        "beside the prior for precision/recall (pr)",
    ),
    "--components": ("components", POS_INT, "K of the Gaussian mixture (Eq. 13)"),
    "--gmm-fit-on": (
        "gmm_fit_on",
        None,
        "codes the GMM is fitted on (none: posterior means for FID sampling, "
        "one z ~ q(z|x) per image where the GMM is a density: IWAE p(z), KL)",
    ),
    "--n-iwae": ("n_iwae", POS_INT, "test images for the IWAE bound (a preset's count: all when fewer)"),
    "--k": ("k", POS_INT, "importance samples of the IWAE bound"),
    "--n-fid": ("n_fid", POS_INT, "generated and real test images for FID (a preset's count: all when fewer)"),
    "--fid-batch-size": ("fid_batch_size", POS_INT, "images per Inception pass"),
    "--fid-backend": (
        "fid_backend",
        None,
        "runs the Inception network: torch (CPU or CUDA) or openvino (CPU, "
        "FP32, 2-3x faster); auto = openvino on the CPU when installed, "
        "else torch",
    ),
    "--n-pr": ("n_pr", POS_INT, "generated images per sampler and real test images for precision/recall (pr)"),
    "--k-pr": ("k_pr", POS_INT, "nearest neighbours of the precision/recall manifolds"),
    "--n-kl": ("n_kl", POS_INT, "Monte-Carlo samples per KL estimate"),
    "--kl-runs": ("kl_runs", POS_INT, "independent KL estimates (mean and std reported)"),
    "--seed": ("seed", NONNEG_INT, "seed of every sample drawn"),
}
_PROTOCOL_CHOICES = {
    "sampler": list(SAMPLER_KINDS),
    "gmm_fit_on": ["mean", "sample"],
    "fid_backend": list(FID_BACKENDS),
}


class _Given(argparse.Action):
    """Stores an option's value and notes that it was given, so it changes any preset, even to the paper's value."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}


def add_protocol(p) -> None:
    """``--protocol NAME`` and an option per number of :class:`~balanced_vae.protocol.EvalProtocol`; each
    default is the paper's preset, stated once there (the help adds the quick preset's where it differs)."""
    p.add_argument(
        "--protocol",
        choices=list(PRESETS),
        default="paper",
        help="the preset every number below starts from (paper: Section 5)",
    )
    for flag, (field, kind, text) in _PROTOCOL_OPTIONS.items():
        quick = getattr(QUICK, field)
        p.add_argument(
            flag,
            dest=field,
            type=kind,
            choices=_PROTOCOL_CHOICES.get(field),
            action=_Given,
            default=getattr(PAPER_PROTOCOL, field),
            help=text + (f"; quick: {quick}" if quick != getattr(PAPER_PROTOCOL, field) else ""),
        )


def protocol_of(args) -> EvalProtocol:
    """The evaluation protocol of parsed options: the ``--protocol`` preset changed by the options given."""
    return get_protocol(args.protocol).replace(**{f: getattr(args, f) for f in getattr(args, "given", ())})
