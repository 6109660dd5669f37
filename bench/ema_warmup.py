"""The moving average's warm-up (issue 27): the same short MNIST run with ``--ema 0.999``, warm-up on and off.

With a constant decay ``d`` the average keeps ``d^n`` of the random initial weights after ``n`` steps
(0.999: 43 % after the 844 steps of two MNIST epochs); the warm-up ``min(d, (1 + n) / (10 + n))``
forgets them within tens of steps. Training never reads the average, so the trained weights of the
two runs are the same; only the averages differ. Prints JSON: per epoch the validation ELBO of the
trained weights and of the average, and the test ELBO of both from ``final.json``.

    OMP_NUM_THREADS=1 python bench/ema_warmup.py --work /tmp/ema-warmup > bench/results/ema_warmup.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

from balanced_vae.config import TrainConfig
from balanced_vae.data import load_dataset
from balanced_vae.provenance import provenance
from balanced_vae.train import train


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for the two runs (replaced)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=os.environ.get("BALANCED_VAE_DATA"))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--decay", type=float, default=0.999)
    p.add_argument("--net", default="small")
    a = p.parse_args(argv)
    data = load_dataset(a.dataset, data_dir=a.data_dir)
    runs = {}
    for name, warm in (("warmup", True), ("constant", False)):
        config = TrainConfig(
            dataset=a.dataset,
            data_dir=a.data_dir,
            net=a.net,
            epochs=a.epochs,
            min_epochs=a.epochs,
            stages=1,
            ema=a.decay,
            ema_warmup=warm,
        )
        out = a.work / name
        if out.exists():
            shutil.rmtree(out)
        train(config, out, data=data, progress=False, device="cpu")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        final = json.loads((out / "final.json").read_text())
        runs[name] = {
            "config": json.loads(config.to_json()),
            "epochs": [
                {"epoch": r["epoch"], "val_elbo": r["val_elbo"], "ema_val_elbo": r["ema_val_elbo"]} for r in rows
            ],
            "test_elbo": final["test"]["elbo"],
            "ema_test_elbo": final["ema_test"]["elbo"],
        }
    record = {
        "bench": "ema_warmup",
        "runs": runs,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "provenance": provenance(),
        "note": "one-stage runs (stage 1 ends with the average's own Eq. 10 sigma^2); ELBO in nats per image",
    }
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
