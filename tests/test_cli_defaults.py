"""Every default of the command line is the library's, stated once there (issue 29).

For each subcommand, an option named like a parameter of the library function it calls (or a
field of the config it builds: TrainConfig for ``train``, the evaluation protocol for
``evaluate``) has that parameter's default.
"""

import argparse
import dataclasses
import inspect

import pytest

from balanced_vae.cli import build_parser
from balanced_vae.config import TrainConfig
from balanced_vae.export import export_run
from balanced_vae.fid_sets import fid_between, real_data_fid
from balanced_vae.latent import kl_gap, latent_plot_for_run, write_samples
from balanced_vae.latent_walk import latent_walk_for_run
from balanced_vae.ood import ood_for_run
from balanced_vae.paper.reproduce import reproduce
from balanced_vae.protocol import PAPER
from balanced_vae.reconstruct import reconstruct_run
from balanced_vae.report import build_report

# the library's defaults each subcommand passes its options to
LIBRARY = {
    "train": [TrainConfig],
    "evaluate": [PAPER],
    "reconstruct": [reconstruct_run],
    "fid-real": [real_data_fid],
    "fid": [fid_between],
    "sample": [write_samples],
    "kl": [kl_gap],
    "latent-plot": [latent_plot_for_run],
    "ood": [ood_for_run],
    "report": [build_report],
    "latent-walk": [latent_walk_for_run],
    "reproduce": [reproduce],
    "export": [export_run],
}
# options whose CLI default differs from the library's on purpose, with the reason
DERIVED = {
    ("train", "method"): "None: from --variance, else learned (config.method_of)",
}


def _defaults(source) -> dict:
    if dataclasses.is_dataclass(source):
        return {
            f.name: getattr(source, f.name) if not isinstance(source, type) else f.default
            for f in dataclasses.fields(source)
            if not isinstance(source, type) or f.default is not dataclasses.MISSING
        }
    return {
        name: p.default
        for name, p in inspect.signature(source).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_is_checked():
    # no option of these names a library default (results-page: its folders are the command's own)
    assert set(_subparsers()) - set(LIBRARY) <= {"demo", "slim", "results-page"}


@pytest.mark.parametrize("command", sorted(LIBRARY))
def test_cli_defaults_equal_the_library(command):
    sub = _subparsers()[command]
    library = {}
    for source in LIBRARY[command]:
        library.update(_defaults(source))
    checked, wrong = 0, []
    for action in sub._actions:
        if action.dest not in library or (command, action.dest) in DERIVED or action.default is argparse.SUPPRESS:
            continue
        checked += 1
        default, want = action.default, library[action.dest]
        same = tuple(default) == tuple(want) if isinstance(default, list) else default == want
        if not same:
            wrong.append(
                f"{command} --{action.dest.replace('_', '-')}: CLI {action.default!r}, library {library[action.dest]!r}"
            )
    assert not wrong, "\n".join(wrong)
    assert checked, f"{command}: no option shares a name with the library"


def test_output_piped_into_a_closed_reader_ends_quietly(monkeypatch, capsys):
    """`balanced-vae ... | head`: the reader goes away, and the command ends with status 1, no traceback
    and no 'choose a path' advice (a closed pipe is not a folder to fix)."""
    from balanced_vae.cli import main
    from balanced_vae.commands import paper

    def closed(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(paper, "say", closed)
    assert main(["reproduce", "all", "--budget", "smoke", "--dry-run"]) == 1
    assert "error" not in capsys.readouterr().err
