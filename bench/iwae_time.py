"""IWAE timing: the paper's protocol (500 test images, k = 20) with our batched bound vs a naive loop.

``ours`` is :func:`balanced_vae.metrics.iwae_log_likelihood` (all k x batch codes decoded
in one pass, logsumexp over k); ``naive`` decodes one z at a time for each image and each
k, the loop one writes first. Both use the same model (MNIST-shaped conv net, 16-d latent,
random weights unless ``--run`` names a trained run folder) and agree to float precision,
which the script checks. Prints one JSON object with seconds, images/s and the speed-up.

    python bench/iwae_time.py [--images 500] [--k 20] [--naive-images 50] [--run RUN]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

from balanced_vae.config import TrainConfig
from balanced_vae.methods import build_model
from balanced_vae.metrics import iwae_log_likelihood, log_normal_diag, log_standard_normal
from balanced_vae.objectives import gaussian_log_prob
from balanced_vae.runs import load_run


@torch.no_grad()
def naive_iwae(model, x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """One image, one z at a time: the reference loop."""
    out = []
    for i in range(len(x)):
        xi = x[i : i + 1]
        mu, logvar = model.encode(xi)  # (1, L)
        log_w = []
        for _ in range(k):
            z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=generator)
            mean, x_logvar = model.decode(z)
            log_w.append(
                gaussian_log_prob(xi, mean, x_logvar) + log_standard_normal(z) - log_normal_diag(z, mu, logvar)
            )
        out.append(torch.logsumexp(torch.cat(log_w), 0) - math.log(k))
    return torch.stack(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--k", type=int, default=20)
    p.add_argument(
        "--naive-images",
        type=int,
        default=50,
        help="images for the (slow) naive loop; its rate is extrapolated to --images",
    )
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--stage2", action="store_true", help="add the per-pixel variance head (Eq. 11)")
    p.add_argument("--run", default=None, help="use this trained run's model instead of random weights")
    args = p.parse_args()
    torch.manual_seed(0)
    if args.run:
        model = load_run(args.run).model
        shape = tuple(load_run(args.run).checkpoint["shape"])
    else:
        shape = (1, 28, 28)
        model = build_model(TrainConfig(dataset="mnist").resolved(shape), shape)
        if args.stage2:
            model.with_pixel_variance(0.01)
    model.eval()
    x = torch.rand(args.images, *shape, generator=torch.Generator().manual_seed(1))
    iwae_log_likelihood(model, x[:10], 2)  # warm-up

    t0 = time.perf_counter()
    ours = iwae_log_likelihood(model, x, args.k, generator=torch.Generator().manual_seed(2), batch_size=args.batch_size)
    t_ours = time.perf_counter() - t0

    n_naive = min(args.naive_images, args.images)
    t0 = time.perf_counter()
    naive = naive_iwae(model, x[:n_naive], args.k, torch.Generator().manual_seed(3))
    t_naive = time.perf_counter() - t0
    # same estimator, different noise: check agreement with the same noise on a few images
    g = torch.Generator().manual_seed(4)
    check_ours = iwae_log_likelihood(model, x[:1], args.k, generator=g)
    check_naive = naive_iwae(model, x[:1], args.k, torch.Generator().manual_seed(4))

    naive_rate = n_naive / t_naive
    print(
        json.dumps(
            {
                "benchmark": "iwae_time",
                "images": args.images,
                "k": args.k,
                "batch_size": args.batch_size,
                "model": args.run
                or f"random conv28, latent {model.latent_dim}" + (", pixel head" if args.stage2 else ""),
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "load_average_1min": os.getloadavg()[0],
                "ours_seconds": round(t_ours, 3),
                "ours_images_per_second": round(args.images / t_ours, 1),
                "naive_images_timed": n_naive,
                "naive_images_per_second": round(naive_rate, 1),
                "naive_seconds_extrapolated": round(args.images / naive_rate, 2),
                "speedup": round((args.images / t_ours) / naive_rate, 1),
                "same_noise_abs_difference": float((check_ours - check_naive).abs().max()),
                "mean_bound_nats": float(ours.double().mean()),
                "naive_mean_bound_nats": float(naive.double().mean()),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
