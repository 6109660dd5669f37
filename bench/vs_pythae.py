"""Training speed against pythae on the same networks, data, batch, optimiser and objective (issue 13).

Both train a Gaussian-decoder VAE with sigma^2 = 1 (pythae's ``reconstruction_loss="mse"``:
0.5 ||x - g(z)||^2 + KL, i.e. our ``--method fixed --sigma2 1`` up to a constant) on the same
real MNIST images, with our conv28 encoder/decoder plugged into pythae as custom networks,
batch 128, Adam lr 1e-3, one epoch per round. Rounds are interleaved (ours, pythae, ours, ...)
in one process, each library through its own trainer (checkpointing included). After the same
number of steps the test ELBO of both models is computed by one function, so speed is not
bought by doing less.

    pip install pythae            # bench environment only, not a dependency of balanced-vae
    OMP_NUM_THREADS=2 python bench/vs_pythae.py --images 12800 --rounds 3 > bench/results/vs_pythae.json

Ours runs once per ``--precisions`` value each round (default fp32 and bf16 autocast; pythae has
no bf16 option), so the ratio of each is measured against the same pythae rounds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time

import torch


def elbo_sigma2_one(encode, decode_mean, x: torch.Tensor, seed: int = 0) -> float:
    """Mean ELBO (nats) of x (N, 1, 28, 28) under N(x; g(z), I) with one z per image."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            xb = x[i : i + 1000]
            mu, logvar = encode(xb)
            z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=g)
            mean = decode_mean(z)
            d = xb[0].numel()
            rec = -0.5 * (xb - mean).pow(2).flatten(1).sum(1) - 0.5 * d * math.log(2 * math.pi)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
            total += float((rec - kl).sum())
    return total / len(x)


def run_ours(data, n: int, out: str, epochs: int, seed: int, precision: str = "fp32"):
    from balanced_vae.config import TrainConfig
    from balanced_vae.runs import load_run
    from balanced_vae.train import train

    config = TrainConfig(
        dataset="mnist",
        method="fixed",
        sigma2=1.0,
        stages=1,
        n_train=n,
        n_val=0,
        n_test=100,
        epochs=epochs,
        min_epochs=epochs,
        batch_size=128,
        lr=1e-3,
        latent_dim=16,
        width=32,
        seed=seed,
        precision=precision,
    )
    t0 = time.perf_counter()
    train(config, out, data=data, progress=False, device="cpu")
    seconds = time.perf_counter() - t0
    model = load_run(out).model
    return seconds, model


def run_pythae(data, n: int, out: str, epochs: int, seed: int):
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    from balanced_vae.nets import NetSpec, make_decoder, make_encoder

    spec = NetSpec((1, 28, 28), 16, 32)

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = make_encoder(spec)

        def forward(self, x):
            mu, logvar = self.net(x).chunk(2, dim=1)
            return ModelOutput(embedding=mu, log_covariance=logvar.clamp(-30, 20))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = make_decoder(spec)

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    torch.manual_seed(seed)
    model = VAE(
        VAEConfig(input_dim=(1, 28, 28), latent_dim=16, reconstruction_loss="mse"), encoder=Encoder(), decoder=Decoder()
    )
    cfg = BaseTrainerConfig(
        output_dir=out,
        num_epochs=epochs,
        per_device_train_batch_size=128,
        learning_rate=1e-3,
        optimizer_cls="Adam",
        steps_saving=None,
        seed=seed,
        no_cuda=True,
    )
    from pythae.data.datasets import BaseDataset

    x = data.x_train[:n]
    t0 = time.perf_counter()
    dataset = BaseDataset(data=x, labels=torch.zeros(len(x)))
    BaseTrainer(model=model, train_dataset=dataset, eval_dataset=None, training_config=cfg).train()
    seconds = time.perf_counter() - t0
    model.eval()

    def encode(xb):
        o = model.encoder(xb)
        return o.embedding, o.log_covariance

    return seconds, (encode, lambda z: model.decoder(z).reconstruction)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=12_800, help="training images per epoch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1, help="epochs per round")
    p.add_argument("--data-dir", default=os.environ.get("BALANCED_VAE_DATA", "../shared/data"))
    p.add_argument(
        "--precisions",
        default="fp32,bf16",
        help="our trainer's --precision values to run each round (pythae trains in fp32)",
    )
    args = p.parse_args()
    precisions = args.precisions.split(",")
    import logging

    logging.disable(logging.WARNING)
    from balanced_vae.data import load_dataset

    data = load_dataset("mnist", data_dir=args.data_dir)
    x_test = data.x_test[:2000]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            row = {"round": r}
            for prec in precisions:
                t_ours, model = run_ours(data, args.images, f"{tmp}/ours{r}{prec}", args.epochs, seed=r, precision=prec)
                row[f"ours_{prec}_seconds"] = round(t_ours, 2)
                row[f"ours_{prec}_test_elbo"] = elbo_sigma2_one(model.encode, model.decode_mean, x_test)
            t_py, (enc, dec) = run_pythae(data, args.images, f"{tmp}/pythae{r}", args.epochs, seed=r)
            row.update({"pythae_seconds": round(t_py, 2), "pythae_test_elbo": elbo_sigma2_one(enc, dec, x_test)})
            rows.append(row)
    images = args.images * args.epochs

    def median(v):
        return sorted(v)[len(v) // 2]

    py = [images / r["pythae_seconds"] for r in rows]
    ours = {prec: [images / r[f"ours_{prec}_seconds"] for r in rows] for prec in precisions}
    print(
        json.dumps(
            {
                "bench": "vs_pythae",
                "images_per_round": images,
                "rounds": rows,
                "pythae_images_per_s": median(py),
                **{f"ours_{prec}_images_per_s": median(v) for prec, v in ours.items()},
                **{
                    f"ratio_ours_{prec}_over_pythae": median([o / q for o, q in zip(v, py)]) for prec, v in ours.items()
                },
                **{
                    f"ours_{prec}_minus_pythae_elbo": median(
                        [r[f"ours_{prec}_test_elbo"] - r["pythae_test_elbo"] for r in rows]
                    )
                    for prec in precisions
                },
                "cpu_flags": sorted(
                    {f for f in open("/proc/cpuinfo").read().split() if f.startswith(("avx512_bf16", "amx"))}
                )
                if os.path.exists("/proc/cpuinfo")
                else [],
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.processor(),
                "note": "median over interleaved rounds; both trainers write their checkpoints; ELBO under sigma^2 = 1 "
                "on 2000 test images with one z per image",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
