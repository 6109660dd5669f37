"""The staged training loop of Algorithm 1 (paper Section 3.4): :func:`train`, its entry point.

Stage 1 trains encoder, decoder and the global sigma^2 until the test ELBO converges;
stage 2 freezes sigma*^2 as the floor, adds the per-pixel variance head and continues
from the stage-1 weights. Fixed-variance and baseline runs have one stage.

:func:`train` checks the config and the data before anything is written, applies the one write
rule, holds the run folder's lock and runs a :class:`~balanced_vae.trainer.Trainer`, which holds
what Algorithm 1 carries from epoch to epoch. Every epoch appends one line to ``metrics.jsonl``
and replaces ``checkpoint.pt`` atomically, so ``train(..., resume=True)`` continues exactly as if
never interrupted. Data-parallel (``torchrun``, see :mod:`balanced_vae.distributed`): each global
batch is split over the ranks, the objective runs inside DistributedDataParallel, the closed-form
sums are all-reduced, rank 0 decides stopping and the stage switch for all, and only rank 0
writes files.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from . import writes
from .checkpoint import CHECKPOINT, CheckpointError
from .config import TrainConfig, n_batches_of
from .data import Dataset, load_dataset

# importable from here as before they moved: the splits (data.splits), the devices (distributed),
# Eq. 10 (likelihoods), the test ELBO (metrics), the resume and branch rules (resume), the run folder's
# files (run_folder), the loop's state and rules (train_state) and the loop itself (trainer)
from .data.splits import split_train
from .distributed import cpu_has_bf16, rank_world, resolve_device  # noqa: F401
from .likelihoods import closed_form_sigma2  # noqa: F401
from .methods import build_objective
from .metrics import evaluate_elbo, validation_terms  # noqa: F401
from .objectives import KLWarmup
from .provenance import source_commit
from .resume import BRANCH_MAY_DIFFER, SAFE_ON_RESUME, BranchError, branch_source, run_config  # noqa: F401
from .run_folder import RunExistsError, prepare_run_dir, run_lock  # noqa: F401
from .sources import as_data
from .train_state import COLLAPSE_KL, TrainState, make_optimiser  # noqa: F401
from .trainer import DivergenceError, Trainer  # noqa: F401

log = logging.getLogger(__name__)


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """The config with its data folder and ``folder:``/``npz:`` paths made absolute, so a run
    folder means the same data from any working directory."""
    data_dir = str(Path(config.data_dir).expanduser().resolve()) if config.data_dir else None
    kind, sep, arg = config.dataset.partition(":")
    dataset = (
        f"{kind}:{Path(arg).expanduser().resolve()}" if sep and kind in ("folder", "npz", "csv") else config.dataset
    )
    return dataclasses.replace(config, data_dir=data_dir, dataset=dataset)


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    data: Dataset | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    device: str | torch.device | None = "auto",
    branch_from: str | Path | None = None,
    record: bool = True,
) -> Path:
    """Train ``config`` into the run folder ``out`` (Algorithm 1); returns the folder.

    ``data`` may be given to skip loading: a :class:`~balanced_vae.data.Dataset`, or a tensor,
    torch Dataset or DataLoader (uint8 held as uint8 and converted per batch, or streamed),
    or :func:`~balanced_vae.sources.as_data` of a train and test pair. With ``resume=True`` the
    folder's checkpoint is continued; its config must equal ``config``. ``stop_after``
    ends this call after that many epochs (checkpoint written), for time-boxed jobs.
    ``device`` ("auto", the default and the command line's: a CUDA GPU when there is one, else the
    CPU; or "cpu", "cuda", "cuda:N") is where the model and the data live during training;
    checkpoints are device-independent, so a run resumes anywhere.

    ``branch_from`` (a run of Algorithm 1 past its stage switch) starts the new run ``out`` at
    that run's switch, so stage 1 is not trained again: its ``stage1.pt`` holds the weights and
    the random states of the switch, and ``config`` may differ from that run's only in
    :data:`BRANCH_MAY_DIFFER` (the floor, the data folder). The branch equals a run trained from scratch
    with ``config``, bit for bit on one device (e.g. ``--pixel-floor 0`` beside the floored run).
    ``record=False`` keeps a new folder out of the record of what balanced-vae made (:mod:`.writes`):
    for callers that own a temporary folder (``BalancedVAE.fit``).
    """
    out = Path(out).expanduser()
    dev = resolve_device(device)
    config = absolute_paths(config)
    data = (
        as_data(data)
        if data is not None
        else load_dataset(config.dataset, data_dir=config.data_dir, image_size=config.image_size, seed=config.seed)
    )
    if not resume and config.image_size is None and config.dataset.startswith("folder:"):
        config = dataclasses.replace(config, image_size=data.shape[-1])  # config.json says the size used
    config = config.resolved(
        data.shape, len(data.x_train), real_valued=getattr(data, "real_valued", False), world=rank_world()[1]
    )
    if config.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {config.precision!r}")
    if config.precision == "bf16" and dev.type == "cpu" and not cpu_has_bf16():
        log.warning(
            "--precision bf16 on a CPU without AVX512-BF16 or AMX: bf16 is emulated here and trains about "
            "10-20x slower than fp32 (bench/train_levers.py); fix: --precision fp32"
        )
    objective = build_objective(config)  # validates hyperparameters before any file is written
    if config.kl_warmup:
        KLWarmup(objective)  # refuses objectives without a KL term before any file is written
    x_fit, _ = split_train(data, config)  # validates n_val before any file is written
    steps = n_batches_of(len(x_fit), config.batch_size, rank_world()[1])
    if (config.lr_warmup or 0) > config.epochs * steps:
        raise ValueError(
            f"TrainConfig.lr_warmup={config.lr_warmup}: longer than the epoch cap (--epochs "
            f"{config.epochs} x {steps} steps); fix: a shorter --lr-warmup or more --epochs"
        )
    branch = None
    if branch_from is not None and not resume:
        branch = branch_source(Path(branch_from).expanduser(), config)

    def run(note: dict | None = None) -> Path:  # rank 0 builds it under the lock, after the folder's checks
        trainer = Trainer(config, out, data, objective, device=dev, progress=progress)
        started = trainer.start(commit=source_commit(), resume=resume, branch=branch, note=note)
        return trainer.run(stop_after) if started else out

    if rank_world()[0] != 0:  # writes nothing: rank 0 checks the folder and holds its lock
        return run()
    if resume and not (out / CHECKPOINT).exists():
        raise CheckpointError(f"{out / CHECKPOINT}: nothing to resume; start the run without --resume")
    if not resume and record:  # the one write rule: a new folder, an empty one, or a run that train made
        writes.check(
            "train",
            folders=[writes.Folder(out, "run")],
            inputs=[
                writes.input_of(config.dataset),
                writes.Input(Path(config.data_dir)) if config.data_dir else None,
                writes.Input(Path(branch_from).expanduser(), "run") if branch_from is not None else None,
            ],
        )
    out.mkdir(parents=True, exist_ok=True)
    if not resume and record:
        writes.record("train", folders=[writes.Folder(out, "run")])
    with run_lock(out):  # nothing is written into the folder before its lock is held
        return run(prepare_run_dir(out, config, resume))
