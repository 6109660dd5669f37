"""Time to quality on a CPU: the 10k-sample FID a CPU budget buys (issue 13).

Trains the default MNIST model (``balanced-vae train --dataset mnist``: learned variance,
Algorithm 1, width 32, latent 16, batch 128, Adam 1e-3; ``--net``, ``--width``, ``--lr-drops``,
``--tol``, ``--lr-warmup``, ``--precision``, ``--channels-last`` and ``--dataset`` change it) one
epoch at a time and takes a copy of the run each time its training has used up the next budget of **CPU time**
(``time.process_time`` of this process, all threads: training steps, the Eq. 10 pass, the
validation pass and checkpoint writes). CPU time, unlike wall time, barely moves when other
jobs share the machine. Each copy is then scored by FID: a K = 32 GMM on the training codes,
10,000 samples against the 10,000 test images, TF-Inception features.

Resumable: the clock and each copy are written atomically under ``--work``, so a killed run
continues where it stopped (the epoch in flight is trained again and its CPU time counted once),
and a call with more budgets trains on from the last copy and scores only the copies not yet scored.

    OMP_NUM_THREADS=1 python bench/time_to_fid.py --budgets 5,15,30 --work /tmp/ttf \\
        > bench/results/time_to_fid.json

``--ema 0.999`` also keeps the weights' moving average and scores it (``fid_ema``) beside the trained
weights; ``--score ema`` scores only the average; ``--out FILE`` keeps the record after each scored copy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from balanced_vae.checkpoint import write_json_atomic
from balanced_vae.config import TrainConfig
from balanced_vae.data import load_dataset
from balanced_vae.evaluate import evaluate_run
from balanced_vae.provenance import provenance
from balanced_vae.train import train


def _read(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def _last_row(run: Path) -> dict:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


def train_to_budgets(config: TrainConfig, work: Path, budgets: list[float], data) -> list[dict]:
    """Train epoch by epoch; copy the run to ``work/snap-<B>`` once ``B`` CPU-minutes are spent."""
    run, clock_path = work / "run", work / "clock.json"
    clock = _read(clock_path, {"cpu_seconds": 0.0, "wall_seconds": 0.0, "snapshots": []})
    done = {s["budget_cpu_minutes"] for s in clock["snapshots"]}
    for budget in budgets:
        if budget in done:
            continue
        while clock["cpu_seconds"] < 60 * budget:
            if (run / "final.json").exists():
                break  # Algorithm 1 finished before the budget: the finished run is the copy
            c0, w0 = time.process_time(), time.perf_counter()
            train(
                config,
                run,
                resume=(run / "checkpoint.pt").exists(),
                data=data,
                progress=False,
                stop_after=1,
                device="cpu",
            )
            clock["cpu_seconds"] += time.process_time() - c0
            clock["wall_seconds"] += time.perf_counter() - w0
            write_json_atomic(clock_path, clock)
            row = _last_row(run)
            print(
                f"cpu {clock['cpu_seconds'] / 60:.1f} min, stage {row.get('stage')} epoch {row.get('epoch')}, "
                f"val_elbo {row.get('val_elbo', float('nan')):.1f}",
                file=sys.stderr,
                flush=True,
            )
        snap, tmp = work / f"snap-{budget:g}", work / f"snap-{budget:g}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(run, tmp, ignore=shutil.ignore_patterns("*.lock", "events.*"))
        shutil.rmtree(snap, ignore_errors=True)
        os.replace(tmp, snap)
        row = _last_row(run)
        clock["snapshots"].append(
            {
                "budget_cpu_minutes": budget,
                "cpu_minutes": round(clock["cpu_seconds"] / 60, 2),
                "wall_minutes": round(clock["wall_seconds"] / 60, 2),
                "stage": row.get("stage"),
                "epoch": row.get("epoch"),
                "val_elbo": row.get("val_elbo"),
                "sigma2": row.get("sigma2"),
                "finished": (run / "final.json").exists(),
                "path": str(snap),
            }
        )
        write_json_atomic(clock_path, clock)
    return clock["snapshots"]


def score(snapshot: dict, which: str, a, data) -> dict:
    """The 10k FID of one copy's weights ``which`` (``checkpoint.pt``, ``ema.pt`` or ``best.pt``), kept in the copy."""
    t0 = time.perf_counter()
    saved = Path(snapshot["path"]) / ("fid.json" if which == "checkpoint.pt" else f"fid_{Path(which).stem}.json")
    res = _read(saved, None)  # a copy scored by an earlier call (budgets added later)
    if res is None or res["metrics"]["fid"]["protocol"]["generated"]["n"] != a.n_fid:
        res = evaluate_run(
            snapshot["path"],
            metrics="fid",
            sampler="gmm",
            n_fid=a.n_fid,
            data=data,
            fid_backend=a.fid_backend,
            progress=False,
            out=saved,
            which=which,
        )
    fid = res["metrics"]["fid"]
    return {
        "fid": fid["values"]["fid"],
        "fid_wall_seconds": round(time.perf_counter() - t0, 1),
        "fid_protocol": fid["protocol"],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", default="5,15,30", help="CPU-minute budgets, comma-separated (default 5,15,30)")
    p.add_argument("--work", type=Path, required=True, help="folder for the run, its copies and the clock")
    p.add_argument("--out", type=Path, default=None, help="also write the record here, after each scored copy")
    p.add_argument("--n-fid", type=int, default=10_000, help="generated and test images for FID (default 10000)")
    p.add_argument("--fid-backend", default="auto", choices=("auto", "torch", "openvino"))
    p.add_argument("--epochs", type=int, default=200, help="Algorithm 1's cap per stage (default 200)")
    p.add_argument(
        "--min-epochs",
        type=int,
        default=TrainConfig.min_epochs,
        help=f"epochs before the stopping rule may end a stage (default {TrainConfig.min_epochs}; "
        "= --epochs: no early stop)",
    )
    p.add_argument("--stages", type=int, default=TrainConfig.stages, choices=(1, 2), help="1: stage 1 only")
    p.add_argument("--data-dir", default=os.environ.get("BALANCED_VAE_DATA"))
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    p.add_argument("--net", default="small", help="network family (default small)")
    p.add_argument("--width", type=int, default=None, help="network width (default: the family's)")
    p.add_argument("--lr-drops", type=int, default=0)
    p.add_argument(
        "--tol", type=float, default=TrainConfig.tol, help=f"the stopping rule's tolerance (default {TrainConfig.tol})"
    )
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument(
        "--lr-warmup",
        type=int,
        default=TrainConfig.lr_warmup,
        help="steps of linear learning-rate warm-up at the start of stage 1 (train --lr-warmup; the paper "
        "family needs it: without it width 16 decodes the all-black image from its first epoch)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=TrainConfig.channels_last,
        help="NHWC conv layers (train --channels-last; measure it first: bench/train_levers.py)",
    )
    p.add_argument(
        "--train-threads",
        type=int,
        default=1,
        help="torch threads while training (default 1: no spinning threads counted as CPU time); "
        "scoring uses as many as torch starts with",
    )
    p.add_argument("--ema", type=float, default=None, help="keep the weights' moving average with this decay")
    p.add_argument(
        "--ema-warmup",
        action=argparse.BooleanOptionalAction,
        default=TrainConfig.ema_warmup,
        help="the average's decay warm-up (train --ema-warmup)",
    )
    p.add_argument("--keep-best", action="store_true", help="keep the best validation epoch's weights (best.pt)")
    p.add_argument(
        "--score",
        default="raw,ema",
        help="which weights of each copy to score, in this order: raw (checkpoint.pt), ema (ema.pt, with --ema), "
        "best (best.pt, with --keep-best); default raw,ema",
    )
    a = p.parse_args(argv)
    budgets = sorted(float(b) for b in a.budgets.split(","))
    kinds = [k for k in a.score.split(",") if k == "raw" or (k == "ema" and a.ema) or (k == "best" and a.keep_best)]
    a.work.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    config = TrainConfig(
        dataset=a.dataset,
        data_dir=a.data_dir,
        epochs=a.epochs,
        min_epochs=a.min_epochs,
        stages=a.stages,
        net=a.net,
        width=a.width,
        lr_drops=a.lr_drops,
        tol=a.tol,
        precision=a.precision,
        channels_last=a.channels_last,
        lr_warmup=a.lr_warmup,
        ema=a.ema,
        ema_warmup=a.ema_warmup,
        keep_best=a.keep_best,
    )
    data = load_dataset(a.dataset, data_dir=a.data_dir)
    score_threads = torch.get_num_threads()
    rows = []
    for budget in budgets:  # train to each budget, then score its copy, so every finished row is kept
        torch.set_num_threads(a.train_threads)
        snaps = train_to_budgets(config, a.work, [b for b in budgets if b <= budget], data)
        s = next(x for x in snaps if x["budget_cpu_minutes"] == budget)  # the clock also holds later copies
        torch.set_num_threads(score_threads)
        row = {k: v for k, v in s.items() if k != "path"}
        for kind in kinds:
            got = score(s, "checkpoint.pt" if kind == "raw" else f"{kind}.pt", a, data)
            row.update(
                got if kind == "raw" else {f"{k}_{kind}" if k != "fid_protocol" else k: v for k, v in got.items()}
            )
            print(f"budget {budget:g} CPU-min ({kind}): FID {got['fid']:.2f}", file=sys.stderr, flush=True)
        rows.append(row)
        record = {
            "bench": "time_to_fid",
            "config": json.loads(config.to_json()),
            "rows": rows,
            "threads": {"train": a.train_threads, "score": score_threads},
            "torch": torch.__version__,
            "machine": platform.processor(),
            "cpu": _cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # AVX2, AVX512, ...: CPU-minutes depend on it
            "provenance": prov,
            "note": "budget = CPU time (process_time, all threads) of training, checked after each epoch; "
            "FID: GMM K=32 on posterior means, n generated vs n test images; fid: the trained weights "
            "(checkpoint.pt), fid_ema: their moving average (ema.pt), fid_best: the best validation epoch's (best.pt)",
        }
        if a.out is not None:
            write_json_atomic(a.out, record)
    print(json.dumps(record, indent=2))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


if __name__ == "__main__":
    main()
