"""Your own networks and data through the balanced-vae API (docs/API.md).

Trains a small ResNet-style encoder/decoder on Fashion-MNIST with Algorithm 1 (learned
global sigma^2, then a per-pixel variance head), from a DataLoader of uint8 images, then
fits the Gaussian mixture of Eq. 13 to the training codes and decodes samples from it.

    python examples/custom_net.py --data-dir ../shared/data --out runs/custom-net
    python examples/custom_net.py --n-train 2000 --epochs 1 --out /tmp/custom   # a quick run (CI)

The run folder records this file's ``make_networks`` as its factory, so the CLI works on it:

    balanced-vae evaluate runs/custom-net --metrics elbo,iwae
    balanced-vae sample runs/custom-net --sampler gmm --out samples/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from balanced_vae.config import TrainConfig
from balanced_vae.data import read_idx, resolve_data_dir
from balanced_vae.factories import factory_ref
from balanced_vae.model import encode_dataset
from balanced_vae.plots import save_grid
from balanced_vae.runs import load_run
from balanced_vae.samplers import GaussianMixtureSampler
from balanced_vae.sources import TensorSource, as_data
from balanced_vae.train import train


class ResBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convolutions, same width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def make_networks(data_shape, latent_dim, width=16):
    """The factory: (C, H, W) images with H, W divisible by 4 -> (encoder, decoder).

    encoder: x (B, C, H, W) -> (B, 2 L) (mu then logvar); decoder: z (B, L) -> logits (B, C, H, W).
    """
    c, h, w = data_shape
    w4 = (2 * width, h // 4, w // 4)
    encoder = nn.Sequential(
        nn.Conv2d(c, width, 4, 2, 1),
        ResBlock(width),  # (B, width, H/2, W/2)
        nn.Conv2d(width, 2 * width, 4, 2, 1),
        ResBlock(2 * width),  # (B, 2 width, H/4, W/4)
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(w4[0] * w4[1] * w4[2], 2 * latent_dim),
    )
    decoder = nn.Sequential(
        nn.Linear(latent_dim, w4[0] * w4[1] * w4[2]),
        nn.Unflatten(1, w4),
        ResBlock(2 * width),
        nn.ReLU(),
        nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
        ResBlock(width),  # (B, width, H/2, W/2)
        nn.ReLU(),
        nn.ConvTranspose2d(width, c, 4, 2, 1),
    )  # (B, C, H, W) logits
    return encoder, decoder


def fashion_uint8(data_dir, split: str) -> TensorDataset:
    """Fashion-MNIST as your own data might come: uint8 images (N, 1, 28, 28) with labels."""
    folder = resolve_data_dir(data_dir) / "fashion-mnist"
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(next(folder.glob(f"{prefix}-images-idx3-ubyte*")))
    labels = read_idx(next(folder.glob(f"{prefix}-labels-idx1-ubyte*")))
    return TensorDataset(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype("int64")))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder holding fashion-mnist/ (default $BALANCED_VAE_DATA)")
    p.add_argument("--out", default="runs/custom-net", help="run folder")
    p.add_argument("--n-train", type=int, default=None, help="use the first N training images (all by default)")
    p.add_argument("--n-test", type=int, default=1000, help="test images for final.json")
    p.add_argument("--epochs", type=int, default=10, help="maximum epochs per stage")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--components", type=int, default=32, help="K of the Gaussian mixture (Eq. 13)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    train_set, test_set = fashion_uint8(args.data_dir, "train"), fashion_uint8(args.data_dir, "test")
    # (image, label) batches: the trainer takes the first element as the image, uint8 -> [0, 1] per batch
    loader = DataLoader(train_set, batch_size=128, shuffle=True)
    config = TrainConfig(
        dataset="fashion-mnist",  # what `balanced-vae evaluate/sample` load for this run
        data_dir=args.data_dir,
        networks=factory_ref(make_networks),
        network_args={"width": args.width},
        latent_dim=16,
        epochs=args.epochs,
        min_epochs=min(3, args.epochs),
        n_train=args.n_train,
        n_test=args.n_test,
        seed=args.seed,
        batch_size=128,
    )
    run_dir = train(config, args.out, data=as_data(loader, test_set, name="fashion-mnist-uint8"))

    run = load_run(run_dir)  # rebuilt from the factory + weights
    x = TensorSource(train_set.tensors[0][: args.n_train])  # uint8, converted per batch
    mu, _ = encode_dataset(run.model, x)  # (N, L)
    gmm = GaussianMixtureSampler(args.components, random_state=args.seed).fit(mu)
    z = gmm.sample(64, generator=torch.Generator().manual_seed(args.seed))  # (64, L)
    mean, sigma = run.model.generate(z)  # (64, 1, 28, 28) each
    save_grid(mean, Path(run_dir) / "gmm_samples.png", nrow=8, scale=2)
    save_grid(sigma / sigma.max(), Path(run_dir) / "gmm_sigma.png", nrow=8, scale=2)
    final = json.loads((Path(run_dir) / "final.json").read_text())
    summary = {
        "run": str(run_dir),
        "stage": run.stage,
        "sigma2_star": final["sigma2_star"],
        "test_elbo": final["test"]["elbo"],
        "gmm_converged": gmm.converged_,
        "samples": str(Path(run_dir) / "gmm_samples.png"),
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
