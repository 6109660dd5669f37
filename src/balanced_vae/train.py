"""The staged training loop of Algorithm 1 (paper Section 3.4).

Stage 1 trains encoder, decoder and the global sigma^2 until the test ELBO converges;
stage 2 freezes sigma*^2 as the floor, adds the per-pixel variance head and continues
from the stage-1 weights. Fixed-variance and baseline runs have one stage.

Every epoch appends one line to ``metrics.jsonl`` and replaces ``checkpoint.pt``
atomically, so ``train(..., resume=True)`` continues exactly as if never interrupted.
Data-parallel: when ``torch.distributed`` is initialised, each process takes every
``world``-th index of the shared permutation, the closed-form sums are all-reduced,
and only rank 0 writes files (wrap gradients with DDP yourself or all-reduce them).
"""
from __future__ import annotations

import json
import logging
import math
import time
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import (CHECKPOINT, CONFIG, METRICS, STAGE1, CheckpointError, load_checkpoint,
                         save_checkpoint, write_json_atomic, write_text_atomic)
from .config import TrainConfig
from .data import Dataset, load_dataset
from .methods import build_model, build_objective, n_stages
from .objectives import elbo_terms

log = logging.getLogger(__name__)


class RunExistsError(FileExistsError):
    """The output folder already holds a run."""


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _dist()[1] > 1:
        torch.distributed.all_reduce(t)
    return t


@torch.no_grad()
def evaluate_elbo(model, x: torch.Tensor, *, seed: int = 0, batch_size: int = 1000) -> dict[str, float]:
    """Mean test ELBO, reconstruction term, KL, MSE and mean decoder sigma^2 over ``x`` (N, C, H, W).

    One z per image from a generator seeded with ``seed``, so repeated calls agree.
    """
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}
    for i in range(0, len(x), batch_size):
        t = elbo_terms(model, x[i:i + batch_size], generator=g)
        t["sigma2_mean"] = t.pop("x_logvar").exp().expand_as(x[i:i + batch_size]).flatten(1).mean(1)
        for k, v in t.items():
            sums[k] = sums.get(k, 0.0) + float(v.double().sum())
    model.train(was_training)
    return {k: v / len(x) for k, v in sums.items()}


def _converged(history: list[float], config: TrainConfig) -> bool:
    """Relative change of the test ELBO over ``window`` epochs below ``tol``."""
    w = config.window
    if len(history) < max(config.min_epochs, w + 1):
        return False
    old, new = history[-1 - w], history[-1]
    return abs(new - old) / max(abs(old), 1e-8) < config.tol


def _subset(data: Dataset, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    x_train = data.x_train[: config.n_train] if config.n_train else data.x_train
    x_test = data.x_test[: config.n_test] if config.n_test else data.x_test
    return x_train, x_test


def _prepare_run_dir(out: Path, config: TrainConfig, resume: bool) -> None:
    if (out / CHECKPOINT).exists() and not resume:
        raise RunExistsError(f"{out} already holds a run; pass --resume {out} to continue it, or choose another --out")
    if resume and not (out / CHECKPOINT).exists():
        raise CheckpointError(f"{out / CHECKPOINT}: nothing to resume; start the run without --resume")
    if resume:
        saved = TrainConfig.load(out / CONFIG)
        if saved != config:
            raise CheckpointError(f"{out / CONFIG}: the run was trained with another config; resume it "
                                  "with `balanced-vae train --resume RUN` and no other options")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / CONFIG, config.to_json() + "\n")


def _tensorboard(out: Path):
    """A SummaryWriter into ``out/tensorboard`` when TensorBoard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


@contextmanager
def _run_lock(out: Path):
    """Hold ``out/.lock`` (our pid) while training, so two processes never train one run folder."""
    lock = out / ".lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(lock.read_text() or 0)
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):   # stale lock of a process that died
            lock.unlink(missing_ok=True)
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        else:
            raise RunExistsError(f"{out} is being trained by process {pid}; wait for it or stop it") from None
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _truncate_metrics(path: Path, stage: int, epoch: int) -> None:
    """Drop log lines written after the checkpoint being resumed from."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines()
            if ln.strip() and (json.loads(ln)["stage"], json.loads(ln)["epoch"]) <= (stage, epoch)]
    write_text_atomic(path, "".join(k + "\n" for k in keep))


def train(config: TrainConfig, out: str | Path, *, resume: bool = False, data: Dataset | None = None,
          progress: bool = True, stop_after: int | None = None) -> Path:
    """Train ``config`` into the run folder ``out`` (Algorithm 1); returns the folder.

    ``data`` may be given to skip loading (tests, experiments). With ``resume=True`` the
    folder's checkpoint is continued; its config must equal ``config``. ``stop_after``
    ends this call after that many epochs (checkpoint written), for time-boxed jobs.
    """
    out = Path(out).expanduser()
    data = data if data is not None else load_dataset(config.dataset, data_dir=config.data_dir,
                                                      image_size=config.image_size, seed=config.seed)
    config = config.resolved(data.shape)
    if config.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {config.precision!r}")
    objective = build_objective(config)   # validates hyperparameters before any file is written
    rank, world = _dist()
    if rank == 0:
        _prepare_run_dir(out, config, resume)
    if rank != 0:
        return _train(config, out, resume, data, objective, progress, stop_after, rank, world)
    with _run_lock(out):
        return _train(config, out, resume, data, objective, progress, stop_after, rank, world)


def _train(config, out, resume, data, objective, progress, stop_after, rank, world) -> Path:
    """The loop of :func:`train`, run while holding the run folder's lock."""
    x_train, x_test = _subset(data, config)
    stages = n_stages(config)

    torch.manual_seed(config.seed)
    model = build_model(config, data.shape)
    shuffle = torch.Generator().manual_seed(config.seed)
    stage, epoch, history, sigma2_star = 1, 0, [], None
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    if resume:
        ckpt = load_checkpoint(out / CHECKPOINT)
        stage, epoch, history = int(ckpt["stage"]), int(ckpt["epoch"]), list(ckpt["history"])
        sigma2_star = ckpt["sigma2_star"]
        if stage == 2:
            model.with_pixel_variance(config.pixel_floor if config.pixel_floor is not None else sigma2_star,
                                      init_sigma2=sigma2_star)
            optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
        model.load_state_dict(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimiser"])
        shuffle.set_state(ckpt["shuffle_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        if rank == 0:
            _truncate_metrics(out / METRICS, stage, epoch)
        if ckpt["done"]:
            log.info("%s: training already finished", out)
            return out

    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if config.precision == "bf16" else nullcontext
    writer = _tensorboard(out) if rank == 0 else None
    done, epochs_this_call = False, 0
    while not done and (stop_after is None or epochs_this_call < stop_after):
        epochs_this_call += 1
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(x_train), generator=shuffle)[rank::world]
        n_batches = math.ceil(len(perm) / config.batch_size)
        sums: dict[str, float] = {}
        bar = tqdm(range(n_batches), desc=f"stage {stage} epoch {epoch + 1}", disable=not progress or rank != 0,
                   leave=False)
        for b in bar:
            x = x_train[perm[b * config.batch_size:(b + 1) * config.batch_size]]
            with autocast():
                terms = objective(model, x)
            optimiser.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimiser.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(x)
            bar.set_postfix(loss=f"{float(terms['loss'].detach()):.4g}", refresh=False)
        model.likelihood.end_epoch(_all_reduce)
        epoch += 1
        test = evaluate_elbo(model, x_test, seed=config.seed + 1)
        history.append(test["elbo"])
        row = {"stage": stage, "epoch": epoch, "seconds": round(time.perf_counter() - t0, 3),
               **{f"train_{k}": v / len(perm) for k, v in sums.items()},
               **{f"test_{k}": v for k, v in test.items()},
               "sigma2": model.likelihood.sigma2}
        log.info("stage %d epoch %d: test ELBO %.2f, sigma2 %.4g", stage, epoch, test["elbo"], row["sigma2"])

        if _converged(history, config) or epoch >= config.epochs:
            if stage < stages:
                sigma2_star = model.likelihood.sigma2
                if rank == 0:
                    save_checkpoint(out / STAGE1, {"model": model.state_dict(), "stage": 1, "epoch": epoch,
                                                   "shape": list(data.shape), "sigma2_star": sigma2_star})
                floor = config.pixel_floor if config.pixel_floor is not None else sigma2_star
                model.with_pixel_variance(floor, init_sigma2=sigma2_star)
                optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
                stage, epoch, history = 2, 0, []
            else:
                done = True
        if sigma2_star is None and stages == 1:
            sigma2_star = model.likelihood.sigma2
        if rank == 0:
            with open(out / METRICS, "a") as f:
                f.write(json.dumps(row) + "\n")
            if writer is not None:
                step = (row["stage"] - 1) * config.epochs + row["epoch"]   # epochs over both stages
                for k, v in row.items():
                    if k not in ("stage", "epoch"):
                        writer.add_scalar(k, v, step)
                writer.flush()
            save_checkpoint(out / CHECKPOINT, {
                "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                "stage": stage, "epoch": epoch, "history": history, "done": done,
                "sigma2_star": sigma2_star if sigma2_star is not None else model.likelihood.sigma2,
                "shape": list(data.shape), "shuffle_rng": shuffle.get_state(),
                "torch_rng": torch.get_rng_state()})
    if writer is not None:
        writer.close()
    if rank == 0 and done:
        write_json_atomic(out / "final.json", {"test": evaluate_elbo(model, x_test, seed=config.seed + 1),
                                               "stage": stage, "sigma2_star": sigma2_star})
    return out
