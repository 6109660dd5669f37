"""Replay the convergence rule on a run's logged validation ELBOs: where would other windows and tolerances stop?

Reads one stage of a ``metrics.jsonl`` (a run's, or a time-to-FID log in ``bench/results/``) and, for
every ``--windows`` x ``--tols`` pair, finds the first epoch at which
:func:`balanced_vae.train_state.converged` (the rule ``train --stopping`` names, with ``--min-epochs``)
would have ended the stage. ``null``: not within the logged epochs. Learning-rate drops and the KL
warm-up restart the rule's window in training; this replay is for stages that had neither.

    python bench/replay_stopping.py bench/results/time_to_fid_small_s1_metrics.jsonl --windows 3,4,5
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from balanced_vae.config import TrainConfig
from balanced_vae.train_state import converged


def replay(history: list[float], dims: int, config: TrainConfig) -> int | None:
    """The first epoch (1-based) after which ``converged`` holds for ``history`` (validation ELBOs)."""
    for n in range(config.min_epochs, len(history) + 1):
        if converged(history[:n], config, dims, since=0):
            return n
    return None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", type=Path, help="a metrics.jsonl with val_elbo per epoch")
    p.add_argument("--stage", type=int, default=1, help="which stage's epochs (default 1)")
    p.add_argument("--dims", type=int, default=784, help="data dimensions D of the rule's tol x D (default 784)")
    p.add_argument("--windows", default="3,4,5,6,8", help="windows to replay, comma-separated")
    p.add_argument("--tols", default="1e-3,2e-4", help="tolerances to replay, comma-separated")
    p.add_argument("--stopping", default=TrainConfig.stopping, choices=("best", "endpoints"))
    p.add_argument("--min-epochs", type=int, default=TrainConfig.min_epochs)
    a = p.parse_args(argv)
    rows = [json.loads(line) for line in a.metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("stage") == a.stage]
    if not rows or any(not math.isfinite(r.get("val_elbo", math.nan)) for r in rows):
        p.error(f"{a.metrics}: stage {a.stage} has no epochs, or an epoch without a finite val_elbo")
    if any("lr_drop" in r for r in rows):
        p.error(f"{a.metrics}: stage {a.stage} dropped its learning rate; the replay does not restart the window")
    history = [float(r["val_elbo"]) for r in rows]
    stops = []
    for tol in (float(t) for t in a.tols.split(",")):
        for window in (int(w) for w in a.windows.split(",")):
            config = TrainConfig(window=window, tol=tol, stopping=a.stopping, min_epochs=a.min_epochs)
            stops.append({"window": window, "tol": tol, "stops_after_epoch": replay(history, a.dims, config)})
    logged = next((r["epoch"] for r in rows if r.get("stop")), None)
    out = {"bench": "replay_stopping", "metrics": str(a.metrics), "stage": a.stage, "epochs_logged": len(history)}
    print(json.dumps({**out, "stopped_in_training_after_epoch": logged, "stops": stops}, indent=1))


if __name__ == "__main__":
    main()
