"""The staged training loop of Algorithm 1 (paper Section 3.4).

Stage 1 trains encoder, decoder and the global sigma^2 until the test ELBO converges;
stage 2 freezes sigma*^2 as the floor, adds the per-pixel variance head and continues
from the stage-1 weights. Fixed-variance and baseline runs have one stage.

Every epoch appends one line to ``metrics.jsonl`` and replaces ``checkpoint.pt``
atomically, so ``train(..., resume=True)`` continues exactly as if never interrupted.
Data-parallel (``torchrun``, see :mod:`balanced_vae.distributed`): each global batch is
split over the ranks, the objective runs inside DistributedDataParallel, the closed-form
sums are all-reduced, rank 0 decides stopping and the stage switch for all, and only
rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import ema as ema_
from . import writes
from .atomic import write_json_atomic
from .checkpoint import CHECKPOINT, EMA, FINAL, CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import Dataset, load_dataset
from .data.splits import check_fingerprint, data_fingerprint, split_train, test_images
from .distributed import all_reduce_sum, broadcast, gather_rng_states, rank_world, resolve_device

# importable from here as before they moved: Eq. 10 (likelihoods), the test ELBO (metrics), the resume
# and branch rules (resume), the run folder's files (run_folder), the loop's state (train_state)
from .likelihoods import closed_form_sigma2
from .methods import build_model, build_objective, n_stages
from .metrics import evaluate_elbo, validation_terms
from .objectives import LOG_2PI, KLWarmup
from .provenance import provenance, source_commit
from .resume import BRANCH_MAY_DIFFER, SAFE_ON_RESUME, BranchError, branch_source, run_config  # noqa: F401
from .run_folder import (
    RunExistsError,  # noqa: F401
    log_row,
    note_resume,
    prepare_run_dir,
    run_lock,
    tensorboard,
)
from .sources import as_data
from .train_epoch import n_batches_of, stepper, train_epoch
from .train_state import TrainState, branch_at, cpu_state, enter_stage2, make_optimiser, restore, resumable
from .train_state import TrainState as _State  # noqa: F401

log = logging.getLogger(__name__)


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or weights; the last good checkpoint is kept."""


def _converged(history: list[float], config: TrainConfig, dims: int, since: int = 0) -> bool:
    """The validation objective improved by less than ``tol`` nats per dimension over ``window`` epochs.

    ``stopping="best"``: the best of the last ``window`` epochs against the best before them, so
    one lucky or unlucky epoch neither ends nor prolongs a stage; ``"endpoints"``: the last epoch
    against the one ``window`` epochs before (the rule of runs made before 0.2). Absolute, not relative: the ELBO carries the constant -D/2 log(2 pi sigma^2), so a
    relative rule stops runs near -480 nats early and never stops runs near 0. ``since``:
    the epochs of ``history`` before it (before a learning-rate drop, or in the KL warm-up) are not compared.
    """
    w = config.window
    if len(history) < max(config.min_epochs, since + w + 1):
        return False
    h = history[since:]
    if config.stopping == "endpoints":  # two noisy points: fires while the trend still rises
        return abs(h[-1] - h[-1 - w]) / dims < config.tol
    return (max(h[-w:]) - max(h[:-w])) / dims < config.tol


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
    device: str | torch.device | None = "cpu",
    branch_from: str | Path | None = None,
    record: bool = True,
) -> Path:
    """Train ``config`` into the run folder ``out`` (Algorithm 1); returns the folder.

    ``data`` may be given to skip loading: a :class:`~balanced_vae.data.Dataset`, or a tensor,
    torch Dataset or DataLoader (uint8 held as uint8 and converted per batch, or streamed),
    or :func:`~balanced_vae.sources.as_data` of a train and test pair. With ``resume=True`` the
    folder's checkpoint is continued; its config must equal ``config``. ``stop_after``
    ends this call after that many epochs (checkpoint written), for time-boxed jobs.
    ``device`` ("cpu", "cuda", "cuda:N" or "auto") is where the model and the data live
    during training; checkpoints are device-independent, so a run resumes anywhere.

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
    config = config.resolved(data.shape, len(data.x_train), real_valued=getattr(data, "real_valued", False))
    if config.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {config.precision!r}")
    objective = build_objective(config)  # validates hyperparameters before any file is written
    if config.kl_warmup:
        KLWarmup(objective)  # refuses objectives without a KL term before any file is written
    x_fit, _ = split_train(data, config)  # validates n_val before any file is written
    steps = n_batches_of(len(x_fit), config.batch_size, rank_world()[1])
    if config.lr_warmup > config.epochs * steps:
        raise ValueError(
            f"TrainConfig.lr_warmup={config.lr_warmup}: longer than the epoch cap (--epochs "
            f"{config.epochs} x {steps} steps); fix: a shorter --lr-warmup or more --epochs"
        )
    branch = None
    if branch_from is not None and not resume:
        branch = branch_source(Path(branch_from).expanduser(), config)
    rank, world = rank_world()
    if rank != 0:
        return _train(config, out, resume, data, objective, progress, stop_after, rank, world, dev, branch)
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
        note = prepare_run_dir(out, config, resume)
        return _train(config, out, resume, data, objective, progress, stop_after, rank, world, dev, branch, note)


COLLAPSE_KL = 0.1  # nats per image: below this at a stage's end the decoder ignores z


def _train_elbo(sums: dict, n: int, sigma2: float, dims: int) -> float:
    """Mean training ELBO of the epoch under one sigma^2 (Eq. 9), from its summed MSE and KL.

    For the closed-form global variance every step used its own batch's sigma^2; this puts
    the epoch's training ELBO under the same sigma*^2 as the validation ELBO, so the two
    curves compare.
    """
    mse, kl = sums["mse"] / n, sums["kl"] / n
    return -0.5 * dims * (LOG_2PI + math.log(sigma2)) - 0.5 * dims * mse / sigma2 - kl


def _train(
    config, out, resume, data, objective, progress, stop_after, rank, world, device, branch=None, note=None
) -> Path:
    """The loop of :func:`train`, run while holding the run folder's lock: one epoch, the stopping
    rule, the stage switch, the log line and the checkpoint, until done."""
    x_fit, x_val = (t.to(device) for t in split_train(data, config))
    dims = int(math.prod(data.shape))
    if world > len(x_fit) or world > config.batch_size:
        raise ValueError(
            f"{world} processes but {len(x_fit)} training images and batch size {config.batch_size}: "
            "every rank needs images of every batch; use fewer processes or a larger --batch-size"
        )
    torch.manual_seed(config.seed)
    model = build_model(config, data.shape).to(device)  # identical on every rank
    if rank > 0:
        torch.manual_seed(config.seed + rank)  # but each rank draws its own z
    shuffle = torch.Generator().manual_seed(config.seed)
    optimiser = make_optimiser(model, config)
    fingerprint = data_fingerprint(data, config)
    st = TrainState()
    if resume:
        ckpt = load_checkpoint(out / CHECKPOINT)
        check_fingerprint(ckpt.get("data"), data, config, out / CHECKPOINT)
        st, optimiser = restore(ckpt, model, shuffle, config, out, rank, world, device)
        if rank == 0:
            note_resume(out, note)  # only once the run's weights have loaded: a failed resume changes nothing
        if st.done:
            log.info("%s: training already finished", out)
            return out
    elif branch is not None:
        st, optimiser = branch_at(*branch, model, shuffle, config, out, data, fingerprint, rank, world, device)
    ema = _ema_of(model, config, ckpt if resume else None)
    source = source_commit()
    if not st.commits or st.commits[-1] != source:
        st.commits.append(source)
    closed_form = getattr(model.likelihood, "mode", None) == "closed_form"
    if closed_form and world > 1:
        model.likelihood.reduce_step = all_reduce_sum
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if config.precision == "bf16" else nullcontext
    )
    warm = KLWarmup(objective) if config.kl_warmup else None
    step = stepper(model, warm if warm is not None and st.stage == 1 else objective, device)
    writer = tensorboard(out) if rank == 0 else None
    for _ in itertools.count() if stop_after is None else range(stop_after):
        if st.done:
            break
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(x_fit), generator=shuffle).to(device)  # the same on every rank
        n_batches = n_batches_of(len(perm), config.batch_size, world)
        bar = tqdm(
            range(n_batches),
            desc=f"stage {st.stage} epoch {st.epoch + 1}",
            disable=not progress or rank != 0,
            leave=False,
        )
        on_step = _warmup(warm, optimiser, st, config, n_batches)
        sums, bad_step = train_epoch(
            step,
            optimiser,
            x_fit,
            perm,
            batch_size=config.batch_size,
            autocast=autocast,
            bar=bar,
            rank=rank,
            world=world,
            warmup=on_step,
            after_step=functools.partial(ema_.update, ema, model) if ema is not None else None,
        )
        _check_finite(model, bad_step, st, config, out)
        model.likelihood.closed_form_update(model, x_fit, seed=config.seed + 2)  # Eq. 10 on the final networks
        st.epoch += 1
        val = validation_terms(model, objective, x_val, seed=config.seed + 1) if len(x_val) else {}
        if val:
            st.history.append(-val["loss"])
        st.stage_seconds += time.perf_counter() - t0
        row = _epoch_row(
            st,
            sums,
            min(len(perm), n_batches * config.batch_size),
            val,
            model,
            closed_form,
            dims,
            time.perf_counter() - t0,
        )
        row["lr"] = optimiser.param_groups[0]["lr"]
        if ema is not None and len(x_val):  # recorded only: training never reads the average
            row.update(
                {
                    f"ema_val_{k}": v
                    for k, v in validation_terms(ema.module, objective, x_val, seed=config.seed + 1).items()
                }
            )
        if warm is not None and st.stage == 1:  # the epoch's mean KL weight (1 after the warm-up)
            w = on_step.kl_weights if on_step is not None else []
            row["kl_weight"] = sum(w) / len(w) if w else 1.0
        if st.stage == 1:
            st.sigma2_star = model.likelihood.sigma2
        reason = broadcast(_stop_reason(st, config, dims, bool(val)))  # every rank stops with rank 0
        if reason == "converged" and st.lr_drops < config.lr_drops:
            row["lr_drop"] = _drop_lr(optimiser, st)
            reason = None
        if reason is not None:
            st.stops[str(st.stage)] = {
                "reason": reason,
                "epochs": st.epoch,
                "seconds": round(st.stage_seconds, 1),
                **({"lr_drops": st.lr_drops} if config.lr_drops else {}),
            }
            row["stop"] = reason
            _check_collapse(out, st, val)
            if st.stage < n_stages(config):
                optimiser = enter_stage2(model, st, config, out, data.shape, rank, device, shuffle, fingerprint)
                step = stepper(model, objective, device)
                ema = _ema_of(model, config)  # stage 2 averages from the switch on, head included
            else:
                st.done = True
                if ema is not None and closed_form and st.stage == 1:  # the average's own Eq. 10, once
                    ema_.set_closed_form_sigma2(ema, closed_form_sigma2(ema.module, x_fit, seed=config.seed + 2))
        rng_states = gather_rng_states()  # a collective: every rank takes part
        if rank == 0:
            log_row(out, writer, row, config)
            save_checkpoint(
                out / CHECKPOINT,
                {
                    "optimiser": cpu_state(optimiser),
                    **resumable(model, st, data.shape, fingerprint, shuffle, rng_states, device),
                    **({"ema": ema_.ema_state(ema)} if ema is not None else {}),
                },
            )
            if ema is not None:  # the average as weights of their own: `--checkpoint ema.pt`
                save_checkpoint(out / EMA, _ema_checkpoint(ema, st, data.shape, fingerprint, config))
    if writer is not None:
        writer.close()
    if rank == 0 and st.done:
        _write_final(out, model, objective, config, data, st, device, ema)
    return out


def _ema_of(model, config: TrainConfig, ckpt: dict | None = None):
    """The weights' moving average when ``config.ema`` asks for one (from ``ckpt``'s when resuming), else None."""
    if not config.ema:
        return None
    ema = ema_.make_ema(model, config.ema)
    if ckpt is not None and "ema" in ckpt:
        ema_.load_ema(ema, ckpt["ema"])
    return ema


def _ema_checkpoint(ema, st: TrainState, shape, fingerprint: dict, config: TrainConfig) -> dict:
    """``ema.pt``: the average's weights with the run's state, a checkpoint every command can read."""
    return {
        "model": ema_.ema_state(ema)["model"],
        **dataclasses.asdict(st),
        "shape": list(shape),
        "data": fingerprint,
        "ema": {"decay": config.ema, "n_averaged": int(ema.n_averaged)},
    }


def _check_finite(model, bad_step: int | None, st: TrainState, config, out: Path) -> None:
    """Stop with :class:`DivergenceError` when a loss or a weight became non-finite this epoch."""
    if bad_step is None and all(torch.isfinite(p).all() for p in model.parameters()):
        return
    where = f"stage {st.stage}, epoch {st.epoch + 1}" + (f", step {bad_step}" if bad_step and bad_step > 0 else "")
    raise DivergenceError(
        f"{out}: training diverged at {where}: the loss or the weights became non-finite "
        f"(NaN/inf). The likely cause is the learning rate (--lr {config.lr:g}); lower it and resume "
        f"from the last good checkpoint with a fresh run, or start again. {out / CHECKPOINT} "
        f"still holds epoch {st.epoch} of stage {st.stage}."
    )


def _epoch_row(
    st: TrainState, sums: dict, n_seen: int, val: dict, model, closed_form: bool, dims: int, seconds: float
) -> dict:
    """The epoch's line of ``metrics.jsonl``: training means, validation terms, sigma^2."""
    train_terms = {f"train_{k}": v / n_seen for k, v in sums.items()}
    if closed_form and st.stage == 1:
        train_terms["train_elbo_batch_sigma2"] = train_terms["train_elbo"]
        train_terms["train_elbo"] = _train_elbo(sums, n_seen, model.likelihood.sigma2, dims)
    row = {
        "stage": st.stage,
        "epoch": st.epoch,
        "seconds": round(seconds, 3),
        **train_terms,
        **{f"val_{k}": v for k, v in val.items()},
        "sigma2": model.likelihood.sigma2,
    }
    log.info(
        "stage %d epoch %d: validation loss %.2f, sigma2 %.4g",
        st.stage,
        st.epoch,
        val.get("loss", float("nan")),
        row["sigma2"],
    )
    return row


def _check_collapse(out: Path, st: TrainState, val: dict) -> None:
    """Record and warn when a stage ends with KL(q(z|x) || p(z)) < COLLAPSE_KL on the validation images
    (posterior collapse: every x is coded as the prior, so every sample is the same image)."""
    kl = val.get("kl")
    if kl is None or kl >= COLLAPSE_KL:
        return
    st.stops[str(st.stage)]["posterior_collapse"] = {"val_kl": kl}
    log.warning(
        "%s: stage %d ended with the posterior collapsed: KL(q(z|x) || p(z)) = %.3g nats on the "
        "validation images, so the decoder ignores z and every sample is the same image. Early epochs pass "
        "through this phase, and wide or deep networks at --lr 1e-3 can stay in it; fix: more --min-epochs "
        "if the stage ended early, else train again with a lower --lr (3e-4) or another --seed",
        out,
        st.stage,
        kl,
    )


def _drop_lr(optimiser, st: TrainState) -> float:
    """Divide the learning rate by 10 and restart the convergence window; returns the new rate."""
    for group in optimiser.param_groups:
        group["lr"] = group["lr"] / 10
    st.lr_drops += 1
    st.lr_dropped_at = len(st.history)
    log.info(
        "stage %d epoch %d: converged; learning rate dropped to %.3g (drop %d)",
        st.stage,
        st.epoch,
        optimiser.param_groups[0]["lr"],
        st.lr_drops,
    )
    return optimiser.param_groups[0]["lr"]


def _warmup(warm: KLWarmup | None, optimiser, st: TrainState, config, n_batches: int):
    """``on_step(b)`` for an epoch of stage 1 that has a warm-up step, else None (and the warm-ups done).

    Step ``b`` of epoch ``e`` is step ``s = e n_batches + b`` of the stage. The KL weight is
    ``min(1, (s + 1) / (kl_warmup n_batches))``; the learning rate ``lr min(1, (s + 1) / lr_warmup)``.
    Both are functions of the step alone, so a resumed run takes the same values.
    """
    kl_steps, lr_steps = config.kl_warmup * n_batches, config.lr_warmup
    first = st.epoch * n_batches
    if st.stage != 1 or first >= max(kl_steps, lr_steps):
        if warm is not None:
            warm.weight = 1.0
        return None

    def on_step(b: int) -> None:
        s = first + b + 1
        if warm is not None:
            warm.weight = min(1.0, s / kl_steps) if kl_steps else 1.0
            on_step.kl_weights.append(warm.weight)
        if s <= lr_steps:  # of the rate after any drop (a drop divides by 10)
            for group in optimiser.param_groups:
                group["lr"] = config.lr / 10**st.lr_drops * s / lr_steps

    on_step.kl_weights = []
    return on_step


def _stop_reason(st: TrainState, config, dims: int, validated: bool) -> str | None:
    """Why the current stage ends after this epoch: converged, max_epochs, max_minutes, or None."""
    since = max(st.lr_dropped_at, config.kl_warmup if st.stage == 1 else 0)
    if validated and _converged(st.history, config, dims, since=since):
        return "converged"
    if st.epoch >= config.epochs:
        return "max_epochs"
    if config.max_minutes is not None and st.stage_seconds >= 60 * config.max_minutes:
        return "max_minutes"
    return None


def _write_final(out, model, objective, config, data, st: TrainState, device, ema=None) -> None:
    """``final.json``: the test-split numbers of the finished run, computed once, after training.

    WAE-MMD trains a deterministic encoder whose log-variance is never trained, so no
    ELBO is reported for it; its own objective is (z = mu).
    """
    x_test = test_images(data, config).to(device)
    doc = {
        "stage": st.stage,
        "sigma2_star": st.sigma2_star,
        "stops": st.stops,
        "device": str(device),
        "trained_by_commits": st.commits,
        "provenance": provenance(),
    }
    if config.method == "wae-mmd":
        doc["test_objective"] = validation_terms(model, objective, x_test, seed=config.seed + 1)
        doc["note"] = "WAE-MMD: deterministic encoder, no ELBO reported; test_objective uses z = mu"
    else:
        doc["test"] = evaluate_elbo(model, x_test, seed=config.seed + 1)
        if ema is not None:  # the moving average, scored as weights of their own (ema.pt)
            doc["ema_test"] = evaluate_elbo(ema.module, x_test, seed=config.seed + 1)
    write_json_atomic(out / FINAL, doc)
