"""Devices and data parallelism (torch.distributed, launched by ``torchrun``).

:func:`resolve_device` turns ``auto``/``cpu``/``cuda:N`` into a checked device (one GPU
per rank under torchrun); every command that places a model or a network asks it.

One process per GPU (NCCL) or several CPU processes (gloo). Each step's global batch of
``batch_size`` images is split over the ranks, gradients are averaged by
DistributedDataParallel, the closed-form sigma^2 statistics (Eq. 10) are summed over
ranks, decisions (stopping, the stage switch) are taken on rank 0 and broadcast, and only
rank 0 writes files. Without an initialised process group every helper is the identity
of a single process (rank 0 of 1).
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (identity for one process); returns ``t``."""
    if rank_world()[1] > 1:
        dist.all_reduce(t)
    return t


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable value of our own making; identity for one process)."""
    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_rng_states() -> list[torch.Tensor]:
    """Every rank's CPU RNG state, in rank order (on every rank), for exact resume."""
    state = torch.get_rng_state()
    if rank_world()[1] == 1:
        return [state]
    out = [torch.empty_like(state) for _ in range(rank_world()[1])]
    if dist.get_backend() == "nccl":  # NCCL gathers device tensors only
        dev = torch.device("cuda", torch.cuda.current_device())
        buf = [t.to(dev) for t in out]
        dist.all_gather(buf, state.to(dev))
        return [t.cpu() for t in buf]
    dist.all_gather(out, state)
    return out


def init_from_env(device: str | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment, once.

    Backend NCCL when training on CUDA, gloo on the CPU. Returns whether this process is
    part of a group of more than one.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        cuda = str(device or "auto") != "cpu" and torch.cuda.is_available()
        backend = "nccl" if cuda else "gloo"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        log.info("process group: rank %d of %d (%s)", dist.get_rank(), world, backend)
    return True


def local_cuda_index() -> int | None:
    """The CUDA device of this rank under torchrun (``LOCAL_RANK``), or None outside one."""
    if rank_world()[1] > 1 and "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; checks that a CUDA device exists."""
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and dev.index is None and local_cuda_index() is not None:
        dev = torch.device("cuda", local_cuda_index())  # one GPU per rank under torchrun
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA GPU is visible to PyTorch here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
    elif dev.type != "cpu":
        raise ValueError(f"--device {device}: only cpu and cuda are supported")
    return dev


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 in hardware (AVX512-BF16 or AMX), as PyTorch's own CPU checks see it.

    Without either, ``torch.autocast("cpu", torch.bfloat16)`` is emulated: ``bench/train_levers.py`` measured
    it at 0.05x-0.09x fp32 on an AVX2-only CPU (``bench/results/train_levers_families_avx2.json``).
    """
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(c()) for c in checks if c is not None)


def shutdown(wait: bool = True) -> None:
    """Leave the process group once every rank is done with it.

    Rank 0 writes the run's last files (the test metrics, ``final.json``) while the other
    ranks are already finished; a rank that tore down its gloo group and exited then could
    abort ("terminate called without an active exception"), and torchrun killed rank 0
    before ``final.json`` was written. So: free what may still hold the group (a
    DistributedDataParallel in a reference cycle), wait at a barrier for every rank, then destroy.
    ``wait=False`` (after an error, when another rank may be inside a collective) destroys at once.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        if wait:
            dist.barrier()
        dist.destroy_process_group()
