"""The files of a run folder while it trains: the lock, config.json and resumes.jsonl, metrics.jsonl, TensorBoard.

Only rank 0 writes; every file is replaced atomically or appended line by line, so a crash
leaves a folder that ``train --resume`` continues (see :mod:`balanced_vae.checkpoint`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from .atomic import DiskFullError, write_text_atomic
from .checkpoint import CHECKPOINT, CONFIG, METRICS, RESUMES, CheckpointError, load_checkpoint
from .config import TrainConfig
from .resume import SAFE_ON_RESUME, differences, run_config

# importable from here as before the rules and the splits moved (resume.py, data/splits.py)


log = logging.getLogger(__name__)


class RunExistsError(FileExistsError):
    """The output folder already holds a run."""


def check_caps(out: Path, config: TrainConfig) -> dict:
    """Refuse caps below what the run already ran (its config could no longer re-create it); returns the
    state of its checkpoint (stage, epoch).

    Epochs count over every stage. Minutes count only for the stage in progress: the wall-clock cap is
    checked after each epoch, so a stage it ended always ran past it by up to one epoch, and that is
    no reason to refuse the cap it was trained under."""
    ckpt = load_checkpoint(out / CHECKPOINT)
    at = {"stage": int(ckpt["stage"]), "epoch": int(ckpt["epoch"])}
    ran = {
        str(at["stage"]): {"epochs": at["epoch"], "seconds": float(ckpt.get("stage_seconds", 0.0))},
        **{
            s: {"epochs": v.get("epochs", 0), "seconds": v.get("seconds", 0.0)}
            for s, v in ckpt.get("stops", {}).items()
        },
    }
    stage, most = max(ran.items(), key=lambda kv: kv[1]["epochs"])
    if config.epochs < most["epochs"]:
        raise ValueError(
            f"--epochs {config.epochs}: stage {stage} of {out} already ran {most['epochs']} epochs; "
            "a lower cap would leave a folder its config cannot re-create. Fix: give --epochs >= "
            f"{most['epochs']} (or leave it out), or train a new run with the lower cap"
        )
    seconds = float(ckpt.get("stage_seconds", 0.0)) if not ckpt.get("done", False) else 0.0
    if config.max_minutes is not None and 60 * config.max_minutes < seconds:
        raise ValueError(
            f"--max-minutes {config.max_minutes:g}: stage {at['stage']} of {out} already ran "
            f"{seconds / 60:.2f} minutes; fix: give --max-minutes >= "
            f"{math.ceil(seconds / 60 * 100) / 100:g} (or leave it out), or train a new run"
        )
    return at


def prepare_run_dir(out: Path, config: TrainConfig, resume: bool) -> dict | None:
    """Write ``config.json`` of a new run; on resume, check the config and return what it changes, for
    :func:`note_resume` once the checkpoint has loaded (``config.json`` stays as the run was created)."""
    if (out / CHECKPOINT).exists() and not resume:
        raise RunExistsError(f"{out} already holds a run; pass --resume {out} to continue it, or choose another --out")
    if resume and not (out / CHECKPOINT).exists():
        raise CheckpointError(f"{out / CHECKPOINT}: nothing to resume; start the run without --resume")
    if not resume:
        write_text_atomic(out / CONFIG, config.to_json() + "\n")
        return None
    saved = run_config(out)
    differ = differences(saved, config, SAFE_ON_RESUME)
    if differ:
        raise CheckpointError(
            f"{out / CONFIG}: the run was trained with other {differ}; only "
            f"{', '.join(SAFE_ON_RESUME)} may change on resume"
        )
    where = check_caps(out, config)
    changes = {
        k: {"from": getattr(saved, k), "to": getattr(config, k)}
        for k in SAFE_ON_RESUME
        if getattr(saved, k) != getattr(config, k)
    }
    return (
        {"time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), **where, "changes": changes}
        if changes
        else None
    )


def note_resume(out: Path, note: dict | None) -> None:
    """Append what a resume changed to ``resumes.jsonl`` (see :func:`run_config`)."""
    if note is None:
        return
    with open(out / RESUMES, "a") as f:
        f.write(json.dumps(note, allow_nan=False) + "\n")
    log.info(
        "%s: resumed with %s (noted in %s)",
        out,
        ", ".join(f"{k}={v['to']}" for k, v in note["changes"].items()),
        RESUMES,
    )


def tensorboard(out: Path):
    """A SummaryWriter into ``out/tensorboard`` when TensorBoard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


@contextmanager
def run_lock(out: Path):
    """Hold ``out/.lock`` (our pid) while training, so two processes never train one run folder."""
    lock = out / ".lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(lock.read_text() or 0)
            if pid <= 0:  # an empty or damaged lock (e.g. written on a full disk) names no process
                raise ValueError(pid)
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):  # stale lock of a process that died
            lock.unlink(missing_ok=True)
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        else:
            raise RunExistsError(f"{out} is being trained by process {pid}; wait for it or stop it") from None
    try:
        os.write(fd, str(os.getpid()).encode())
    except OSError as e:
        os.close(fd)
        lock.unlink(missing_ok=True)
        raise DiskFullError(
            e.errno,
            f"cannot write {lock} ({e.strerror}): no space left on {out}? free some space and run the command again",
        ) from None
    os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def truncate_metrics(path: Path, stage: int, epoch: int) -> None:
    """Drop log lines written after the checkpoint being resumed from."""
    if not path.exists():
        return
    keep = []
    for i, ln in enumerate(path.read_text().splitlines()):
        if not ln.strip():
            continue
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:  # a line torn by a crash or power loss: it was never checkpointed
            log.warning("%s: dropping unreadable line %d (%r...)", path, i + 1, ln[:40])
            continue
        if (row["stage"], row["epoch"]) <= (stage, epoch):
            keep.append(ln)
    write_text_atomic(path, "".join(k + "\n" for k in keep))


def log_row(out: Path, writer, row: dict, config) -> None:
    """Append the row to ``metrics.jsonl`` (and TensorBoard when installed)."""
    with open(out / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")
    if writer is not None:
        global_epoch = (row["stage"] - 1) * config.epochs + row["epoch"]  # epochs over both stages
        for k, v in row.items():
            if k not in ("stage", "epoch", "stop"):
                writer.add_scalar(k, v, global_epoch)
        writer.flush()
