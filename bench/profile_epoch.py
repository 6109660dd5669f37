"""torch.profiler breakdown of one training epoch (6,400 MNIST images, default network, fixed sigma^2), issue 13.

OMP_NUM_THREADS=2 python bench/profile_epoch.py > bench/results/profile_epoch.txt
"""

import os
import tempfile
import time

from torch.profiler import ProfilerActivity, profile

from balanced_vae.config import TrainConfig
from balanced_vae.data import load_dataset
from balanced_vae.train import train


def main() -> None:
    data = load_dataset("mnist", data_dir=os.environ.get("BALANCED_VAE_DATA", "../shared/data"))
    cfg = TrainConfig(
        dataset="mnist",
        method="fixed",
        sigma2=1.0,
        stages=1,
        n_train=6400,
        n_val=0,
        n_test=100,
        epochs=1,
        min_epochs=1,
        batch_size=128,
        latent_dim=16,
        width=32,
    )
    with tempfile.TemporaryDirectory() as d:
        train(cfg, d + "/warm", data=data, progress=False)  # warm-up: allocator, kernels
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            train(cfg, d + "/r", data=data, progress=False)
            print("seconds", time.perf_counter() - t)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=22))


if __name__ == "__main__":
    main()
