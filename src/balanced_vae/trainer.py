"""The :class:`Trainer` of Algorithm 1 (paper Section 3.4): what the staged loop carries from epoch to epoch.

One object holds the model, its optimiser and objective, the stage state (:class:`TrainState`),
the process's rank and device, the run folder, the data splits, the weights' moving average and
the TensorBoard writer; :meth:`Trainer.epoch` reads as Algorithm 1 does: train an epoch, set
sigma*^2 by Eq. 10, validate, apply the stopping rule, switch stage or finish, log and checkpoint.
The entry point that validates a config and holds the run folder's lock is
:func:`balanced_vae.train.train`; the rules of the stopping and the warm-ups are in
:mod:`balanced_vae.train_state`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from . import ema as ema_
from .atomic import write_json_atomic, write_text_atomic
from .checkpoint import (
    BEST,
    CHECKPOINT,
    CONFIG,
    EMA,
    FINAL,
    METRICS,
    STAGE1,
    SWITCH_MOMENTS,
    CheckpointError,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    weights_digests,
)
from .config import TrainConfig, n_batches_of
from .data.splits import check_fingerprint, data_fingerprint, split_train, test_images
from .distributed import all_reduce_sum, broadcast, gather_rng_states, rank_world
from .likelihoods import GlobalVariance, closed_form_sigma2
from .methods import build_model, build_trained, n_stages
from .metrics import evaluate_elbo, validation_terms
from .objectives import KLWarmup, elbo_from_mse
from .provenance import provenance
from .resume import may_reopen
from .run_folder import log_row, note_resume, tensorboard, truncate_metrics
from .train_epoch import stepper, train_epoch
from .train_state import (
    TrainState,
    carry_moments,
    check_collapse,
    cpu_state,
    drop_lr,
    is_best,
    make_optimiser,
    moments_to_carry,
    resumable,
    set_rng_states,
    state_of,
    stop_reason,
    warmup,
)

log = logging.getLogger(__name__)


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or weights; the last good checkpoint is kept."""


class Trainer:
    """Algorithm 1 on one process (one rank of a data-parallel job): built, started, run.

    ``Trainer(config, out, data, objective, device=...)`` builds the stage-1 model with the run's seed;
    :meth:`start` puts it where the run stands (new, resumed, or branched at another run's stage
    switch); :meth:`run` trains epochs until the run is done. ``x_fit`` (N, C, H, W) are the training
    images (the optimiser's steps and Eq. 10 read them), ``x_val`` the validation images (the stopping
    rule reads them); both live on ``device``. ``closed_form``: stage 1 sets sigma^2 by Eq. 10. Only
    rank 0 writes files.
    """

    def __init__(
        self, config: TrainConfig, out: Path, data: Any, objective: Callable, *, device: torch.device, progress: bool
    ) -> None:
        self.config, self.out, self.data, self.objective, self.device = config, out, data, objective, device
        self.progress = progress  # a progress bar per epoch (rank 0 only)
        self.rank, self.world = rank_world()
        self.x_fit, self.x_val = (t.to(device) for t in split_train(data, config))
        self.dims = int(math.prod(data.shape))
        if self.world > len(self.x_fit) or self.world > config.batch_size:
            raise ValueError(
                f"{self.world} processes but {len(self.x_fit)} training images and batch size {config.batch_size}: "
                "every rank needs images of every batch; use fewer processes or a larger --batch-size"
            )
        torch.manual_seed(config.seed)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = build_model(config, data.shape)  # identical on every rank
        self.place()
        if self.rank > 0:
            torch.manual_seed(config.seed + self.rank)  # but each rank draws its own z
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.optimiser = make_optimiser(self.model, config)
        self.fingerprint = data_fingerprint(data, config)
        self.st = TrainState()
        self.ema: AveragedModel | None = None
        self.warm = KLWarmup(objective) if config.kl_warmup else None
        likelihood = self.model.likelihood
        self.closed_form = isinstance(likelihood, GlobalVariance) and likelihood.mode == "closed_form"
        self.autocast: Callable[[], AbstractContextManager] = (
            (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if config.precision == "bf16" else nullcontext
        )
        self.writer: Any = None
        self.step: Callable | None = None

    # ------------------------------------------------------------------ where the run starts

    def start(
        self, *, commit: str, resume: bool = False, branch: tuple[Path, dict] | None = None, note: dict | None = None
    ) -> bool:
        """Put the run where it stands: new, resumed from ``out``'s checkpoint (``note``: what the resume
        changes, for ``resumes.jsonl``), or ``branch`` = (path, ``stage1.pt``) of another run's switch.
        ``commit`` is the source commit training now. False when a resumed run had already finished."""
        ckpt = None
        if resume:
            ckpt = load_checkpoint(self.out / CHECKPOINT)
            check_fingerprint(ckpt.get("data"), self.data, self.config, self.out / CHECKPOINT)
            self.restore(ckpt)
            if self.rank == 0:
                note_resume(self.out, note)  # only once the run's weights have loaded: a failed resume changes nothing
            if self.st.done:
                log.info("%s: training already finished", self.out)
                return False
        elif branch is not None:
            self.branch_at(*branch)
        self.ema = self.average(ckpt.get("ema") if ckpt is not None else None)
        if not self.st.commits or self.st.commits[-1] != commit:
            self.st.commits.append(commit)
        likelihood = self.model.likelihood
        if isinstance(likelihood, GlobalVariance) and self.closed_form and self.world > 1:
            likelihood.reduce_step = all_reduce_sum  # each step's sigma^2 of the global batch
        first = self.warm if self.warm is not None and self.st.stage == 1 else self.objective
        self.step = stepper(self.model, first, self.device, self.memory_format)
        self.writer = tensorboard(self.out) if self.rank == 0 else None
        return True

    def restore(self, ckpt: dict) -> None:
        """Load a checkpoint into the model, the optimiser, the shuffle and the RNGs.

        A slimmed checkpoint (weights only) of a finished run loads as finished; continuing it is refused. A finished
        run whose last stage was ended by a cap since raised (``--epochs``, ``--max-minutes``) is reopened.
        """
        config, out, st = self.config, self.out, state_of(ckpt)
        reopen = st.done and may_reopen(st.stops.get(str(st.stage), {}), st.epoch, st.stage_seconds, config)
        self.st = st
        if st.stage == 2:
            self.add_pixel_head()
        self.optimiser = make_optimiser(self.model, config)
        load_weights(self.model, ckpt["model"], out / CHECKPOINT, out / CONFIG)
        if "optimiser" not in ckpt:  # slimmed (`balanced-vae slim`): finished, and can only stay so
            if not st.done or reopen:
                raise CheckpointError(
                    f"{out / CHECKPOINT}: holds weights only (slimmed for sharing), without the optimiser and "
                    "random states that training further needs; train into a new folder instead"
                )
            return
        self.optimiser.load_state_dict(ckpt["optimiser"])
        set_rng_states(ckpt, self.shuffle, out, self.rank, self.world, self.device)
        if self.rank == 0:
            truncate_metrics(out / METRICS, st.stage, st.epoch)
        if reopen:
            log.info(
                "%s: reopened under the raised caps (epochs %d, max_minutes %s)", out, config.epochs, config.max_minutes
            )
            st.stops.pop(str(st.stage), None)
            st.done = False
            if self.rank == 0:  # no longer finished: its test numbers and final weights are to come
                (out / FINAL).unlink(missing_ok=True)

    def branch_at(self, path: Path, ckpt: dict) -> None:
        """Start at the stage switch saved in ``ckpt`` (another run's ``stage1.pt`` at ``path``, from
        :func:`~balanced_vae.resume.branch_source`): its stage-1 weights, state, random states and log
        lines, then the switch itself under this run's config (its own floor)."""
        out = self.out
        check_fingerprint(ckpt.get("data"), self.data, self.config, path)
        load_weights(self.model, ckpt["model"], path, path.parent / CONFIG)
        set_rng_states(ckpt, self.shuffle, out, self.rank, self.world, self.device)
        self.st = state_of(ckpt)
        # where stage 1 (and its seconds) came from, relative to this run, so records stay portable
        self.st.stops["1"] = {
            **self.st.stops["1"],
            "branched_from": os.path.relpath(path.parent.resolve(), out.resolve()),
        }
        if self.rank == 0:
            lines = (path.parent / METRICS).read_text().splitlines() if (path.parent / METRICS).is_file() else []
            rows = [ln for ln in lines if ln.strip() and json.loads(ln)["stage"] == 1]
            write_text_atomic(out / METRICS, "".join(r + "\n" for r in rows))
            log.info("%s: stage 1 taken from %s (%d epochs); training stage 2", out, path, self.st.epoch)
        self.enter_stage2(ckpt.get(SWITCH_MOMENTS, {}))  # none in an older (or a fresh-switch) stage1.pt: warned

    # ------------------------------------------------------------------ Algorithm 1

    def run(self, stop_after: int | None = None) -> Path:
        """Epochs until the run is done (or ``stop_after`` of them, checkpoint written), then, once
        done, ``final.json``; returns the run folder."""
        epochs = 0
        while not self.st.done and (stop_after is None or epochs < stop_after):
            self.epoch()
            epochs += 1
        if self.writer is not None:
            self.writer.close()
        if self.rank == 0 and self.st.done:
            self.write_final()
        return self.out

    def epoch(self) -> None:
        """One epoch of Algorithm 1, top to bottom: the optimiser's steps, sigma*^2 by Eq. 10, validation,
        the stopping rule (or a learning-rate drop), the stage switch or the end, the log line and checkpoint."""
        st, config, model = self.st, self.config, self.model
        t0 = time.perf_counter()
        sums, n_seen, kl_weights = self.train_epoch()  # the optimiser's steps over the training images
        with self.autocast():  # Eq. 10 on the final networks, at the precision they trained at
            model.likelihood.closed_form_update(model, self.x_fit, seed=config.seed + 2)
        if self.ema is not None and self.closed_form and st.stage == 1:  # the average validates at sigma*^2 too
            ema_.set_closed_form_sigma2(self.ema, model.likelihood.sigma2)
        st.epoch += 1
        val = self.validate(model)  # the stage's objective on the validation images
        if val:
            st.history.append(-val["loss"])
        st.stage_seconds += time.perf_counter() - t0
        row = self.log_line(sums, n_seen, val, kl_weights, seconds=time.perf_counter() - t0)
        if st.stage == 1:
            st.sigma2_star = model.likelihood.sigma2
        if val and config.keep_best and is_best(st, config):  # before a stage switch adds the new head
            self.save_weights(BEST, model, best={"epoch": st.epoch, "val_objective": st.history[-1]})
        reason = broadcast(stop_reason(st, config, self.dims, bool(val)))  # every rank stops with rank 0
        if reason == "converged" and st.lr_drops < config.lr_drops:  # converged: go on at a lower rate
            row["lr_drop"] = drop_lr(self.optimiser, st)
            reason = None
        if reason is not None:
            row["stop"] = reason
            self.end_stage(reason, val)
        self.save(row)

    def train_epoch(self) -> tuple[dict, int, list | None]:
        """The optimiser's steps over this epoch's shuffle of the training images; returns the terms
        summed over the epoch, the number of images seen and the steps' KL weights (None without a warm-up)."""
        config, st = self.config, self.st
        self.model.train()
        perm = torch.randperm(len(self.x_fit), generator=self.shuffle).to(self.device)  # the same on every rank
        n_batches = n_batches_of(len(perm), config.batch_size, self.world)
        bar = tqdm(
            range(n_batches),
            desc=f"stage {st.stage} epoch {st.epoch + 1}",
            disable=not self.progress or self.rank != 0,
            leave=False,
        )
        on_step = warmup(self.warm, self.optimiser, st, config, n_batches)
        sums, bad_step = train_epoch(
            self.step,
            self.optimiser,
            self.x_fit,
            perm,
            batch_size=config.batch_size,
            autocast=self.autocast,
            bar=bar,
            rank=self.rank,
            world=self.world,
            warmup=on_step,
            after_step=functools.partial(ema_.update, self.ema, self.model) if self.ema is not None else None,
        )
        self.check_finite(bad_step)
        kl_weights = on_step.kl_weights if on_step is not None else []
        return sums, min(len(perm), n_batches * config.batch_size), kl_weights if self.warm is not None else None

    def validate(self, model) -> dict[str, float]:
        """The run's objective on the validation images, each term's mean (:func:`validation_terms`); {} without any."""
        if not len(self.x_val):
            return {}
        return validation_terms(model, self.objective, self.x_val, seed=self.config.seed + 1)

    def end_stage(self, reason: str, val: dict) -> None:
        """Record why the stage ended; then Algorithm 1's switch to stage 2, or the end of the run."""
        st = self.st
        st.stops[str(st.stage)] = {
            "reason": reason,
            "epochs": st.epoch,
            "seconds": round(st.stage_seconds, 1),
            **({"lr_drops": st.lr_drops} if self.config.lr_drops else {}),
        }
        check_collapse(self.out, st, val)
        if st.stage < n_stages(self.config):
            self.enter_stage2()
            self.step = stepper(self.model, self.objective, self.device, self.memory_format)
            self.ema = self.average()  # stage 2 averages from the switch on, head included
            return
        st.done = True
        if self.ema is not None and self.closed_form and st.stage == 1:  # the average's own Eq. 10, once
            sigma2 = closed_form_sigma2(self.ema.module, self.x_fit, seed=self.config.seed + 2)
            ema_.set_closed_form_sigma2(self.ema, sigma2)

    def enter_stage2(self, switch: dict | None = None) -> None:
        """Algorithm 1's switch: save the stage-1 model, add the per-pixel head over the floor, a new optimiser
        that goes on with stage 1's moments (:func:`carry_moments`; ``switch``: a branch source's, else ours).
        ``stage1.pt`` also holds the state, the moments and the random states from before the head is
        drawn, so another run may start here (:func:`~balanced_vae.resume.branch_source`)."""
        st, config = self.st, self.config
        rng_states = gather_rng_states()  # a collective: every rank takes part
        carried = moments_to_carry(self.model, self.optimiser, config, switch)
        if self.rank == 0:  # none kept when none are carried, so that a branch of this run warns too
            keep = {SWITCH_MOMENTS: carried} if carried else {}
            save_checkpoint(self.out / STAGE1, {**self.resumable(rng_states), **keep})
        self.add_pixel_head()
        st.stage, st.epoch, st.history, st.stage_seconds, st.lr_drops, st.lr_dropped_at = 2, 0, [], 0.0, 0, 0
        self.optimiser = make_optimiser(self.model, config)
        carry_moments(self.model, self.optimiser, carried)

    def add_pixel_head(self) -> None:
        """Stage 2's model: the per-pixel variance head (Eq. 11) over the floor (the config's, else the
        stage-1 sigma*^2), every pixel starting at sigma*^2."""
        sigma2_star = self.st.sigma2_star
        assert sigma2_star is not None, "stage 2 follows a stage 1 that set sigma*^2"
        floor = self.config.pixel_floor if self.config.pixel_floor is not None else sigma2_star
        self.model.with_pixel_variance(floor, init_sigma2=sigma2_star)
        self.place()

    def place(self) -> None:  # the run's device and memory layout (``channels_last``: NHWC conv weights)
        self.model.to(self.device)
        self.model.to(memory_format=self.memory_format)  # type: ignore[call-overload]  # torch's stub lacks it

    def average(self, state: dict | None = None) -> AveragedModel | None:
        """The weights' moving average of the config (``state``: a checkpoint's, when resuming), or None."""
        return ema_.ema_of(self.model, self.config.ema, state, warmup=self.config.ema_warmup)

    # ------------------------------------------------------------------ what it writes

    def resumable(self, rng_states: list) -> dict:
        """What a checkpoint holds to go on from here exactly, but the optimiser (:func:`resumable`)."""
        return resumable(self.model, self.st, self.data.shape, self.fingerprint, self.shuffle, rng_states, self.device)

    def log_line(self, sums: dict, n_seen: int, val: dict, kl_weights: list | None, *, seconds: float) -> dict:
        """The epoch's line of ``metrics.jsonl``: training means (the training ELBO under the epoch's
        sigma*^2), validation terms, sigma^2, the rate; the average's validation terms and the KL weight."""
        st, model = self.st, self.model
        train_terms = {f"train_{k}": v / n_seen for k, v in sums.items()}
        if self.closed_form and st.stage == 1:
            train_terms["train_elbo_batch_sigma2"] = train_terms["train_elbo"]
            # every step used its own batch's sigma^2: the epoch's ELBO under sigma*^2 compares with validation's
            mse, kl = sums["mse"] / n_seen, sums["kl"] / n_seen
            train_terms["train_elbo"] = elbo_from_mse(mse, kl, model.likelihood.sigma2, self.dims)
        row: dict[str, Any] = {
            "stage": st.stage,
            "epoch": st.epoch,
            "seconds": round(seconds, 3),
            **train_terms,
            **{f"val_{k}": v for k, v in val.items()},
            "sigma2": model.likelihood.sigma2,
        }
        loss = val.get("loss", math.nan)
        log.info("stage %d epoch %d: validation loss %.2f, sigma2 %.4g", st.stage, st.epoch, loss, row["sigma2"])
        row["lr"] = self.optimiser.param_groups[0]["lr"]
        if self.ema is not None and len(self.x_val):  # recorded only: training never reads the average
            row.update({f"ema_val_{k}": v for k, v in self.validate(self.ema.module).items()})
        if kl_weights is not None and st.stage == 1:  # the epoch's mean KL weight (1 after the warm-up)
            row["kl_weight"] = sum(kl_weights) / len(kl_weights) if kl_weights else 1.0
        return row

    def save(self, row: dict) -> None:
        """The epoch's log line, ``checkpoint.pt`` and (with an average) ``ema.pt``, written by rank 0."""
        rng_states = gather_rng_states()  # a collective: every rank takes part
        if self.rank != 0:
            return
        log_row(self.out, self.writer, row, self.config)
        ckpt = {"optimiser": cpu_state(self.optimiser), **self.resumable(rng_states)}
        if self.ema is not None:
            ckpt["ema"] = ema_.ema_state(self.ema)
        save_checkpoint(self.out / CHECKPOINT, ckpt)
        if self.ema is not None:  # the average as weights of their own: `--checkpoint ema.pt`
            about = {"decay": self.config.ema, "warmup": self.config.ema_warmup, "n_averaged": int(self.ema.n_averaged)}
            self.save_weights(EMA, self.ema.module, ema=about)

    def save_weights(self, name: str, model: torch.nn.Module, **about: Any) -> None:
        """``RUN/name``: ``model``'s weights (CPU) with the run's state, image shape and data fingerprint, as
        ``checkpoint.pt`` holds them but no optimiser or random states: a checkpoint every command reads
        (``--checkpoint name``), written by rank 0. ``about``: what these weights are (``ema=``, ``best=``)."""
        if self.rank != 0:
            return
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        run = {**dataclasses.asdict(self.st), "shape": list(self.data.shape), "data": self.fingerprint}
        save_checkpoint(self.out / name, {"model": weights, **run, **about})

    def write_final(self) -> None:
        """``final.json``: the test-split numbers of the finished run, computed once, after training.

        WAE-MMD trains a deterministic encoder whose log-variance is never trained, so no ELBO is
        reported for it; its own objective is (z = mu). ``weights`` names the final weights' files.
        """
        x_test, seed, st = test_images(self.data, self.config).to(self.device), self.config.seed + 1, self.st
        doc: dict[str, Any] = {
            "stage": st.stage,
            "sigma2_star": st.sigma2_star,
            "stops": st.stops,
            "device": str(self.device),
            "trained_by_commits": st.commits,
            "provenance": provenance(),
            "weights": weights_digests(self.out),  # the final weights' digests (paper.final_weights)
        }
        if self.config.method == "wae-mmd":
            doc["test_objective"] = validation_terms(self.model, self.objective, x_test, seed=seed)
            doc["note"] = "WAE-MMD: deterministic encoder, no ELBO reported; test_objective uses z = mu"
        else:
            doc["test"] = evaluate_elbo(self.model, x_test, seed=seed)
            if self.ema is not None:  # the moving average, scored as weights of their own (ema.pt)
                doc["ema_test"] = evaluate_elbo(self.ema.module, x_test, seed=seed)
            best = self.best_model()
            if best is not None:  # the best validation epoch's weights (best.pt), scored after training
                doc["best_test"] = {**evaluate_elbo(best[0], x_test, seed=seed), "epoch": best[1]}
        write_json_atomic(self.out / FINAL, doc)

    def best_model(self) -> tuple[torch.nn.Module, int] | None:
        """The final stage's model with the weights of ``best.pt`` (``keep_best``) and their epoch, or None."""
        path = self.out / BEST
        if not self.config.keep_best or not path.is_file():
            return None
        ckpt = load_checkpoint(path)
        if ckpt["stage"] != self.st.stage:  # a stage without validation wrote none of its own
            return None
        return build_trained(self.config, ckpt, path, self.out / CONFIG).to(self.device), int(ckpt["best"]["epoch"])

    def check_finite(self, bad_step: int | None) -> None:
        """Stop with :class:`DivergenceError` when a loss or a weight became non-finite this epoch."""
        if bad_step is None and all(torch.isfinite(p).all() for p in self.model.parameters()):
            return
        st, out = self.st, self.out
        where = f"stage {st.stage}, epoch {st.epoch + 1}" + (f", step {bad_step}" if bad_step and bad_step > 0 else "")
        raise DivergenceError(
            f"{out}: training diverged at {where}: the loss or the weights became non-finite "
            f"(NaN/inf). The likely cause is the learning rate (--lr {self.config.lr:g}); lower it and resume "
            f"from the last good checkpoint with a fresh run, or start again. {out / CHECKPOINT} "
            f"still holds epoch {st.epoch} of stage {st.stage}."
        )
