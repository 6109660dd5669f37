"""Interpolation and latent traversal with the decoder's per-pixel sigma along the path (beyond the paper).

Figure 4 of the paper shows the predicted sigma of samples; walking through the latent
space shows where along a path the decoder becomes unsure. Two walks:

* :func:`interpolate` -- straight line between the posterior means of two images,
  z_t = (1 - t) mu_a + t mu_b, t in [0, 1];
* :func:`traverse` -- one latent axis at a time from a base code, z = mu_a + s e_d with
  s in [-span, span] (in prior standard deviations, since p(z) = N(0, I)).

:func:`latent_walk_for_run` (``balanced-vae latent-walk``) decodes both walks and writes one
PNG: for each walk a row of decoder means g(z) and a row of sigma(z) (per-pixel for a
stage-2 run, Eq. 11; constant for a global sigma^2, Eq. 9).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from .atomic import write_json_atomic
from .checkpoint import CHECKPOINT
from .plots import save_rows
from .runs import load_run

log = logging.getLogger(__name__)


def interpolate(mu_a: torch.Tensor, mu_b: torch.Tensor, steps: int) -> torch.Tensor:
    """Codes on the segment from mu_a (L,) to mu_b (L,), both ends included: (steps, L)."""
    if steps < 2:
        raise ValueError(f"steps={steps}: an interpolation needs at least 2 points (its two ends)")
    t = torch.linspace(0.0, 1.0, steps, dtype=mu_a.dtype)[:, None]  # (steps, 1)
    return (1 - t) * mu_a[None] + t * mu_b[None]  # (steps, L)


def traverse(base: torch.Tensor, dim: int, span: float, steps: int) -> torch.Tensor:
    """Codes base (L,) with coordinate ``dim`` replaced by base_d + linspace(-span, span): (steps, L)."""
    if not 0 <= dim < base.shape[-1]:
        raise ValueError(f"dim={dim}: the latent space has {base.shape[-1]} dimensions (0..{base.shape[-1] - 1})")
    z = base[None].repeat(steps, 1)  # (steps, L)
    z[:, dim] = base[dim] + torch.linspace(-span, span, steps, dtype=base.dtype)
    return z


def active_dims(logvar: torch.Tensor, n: int) -> list[int]:
    """The ``n`` latent dimensions the encoder uses most: smallest mean posterior variance over logvar (N, L).

    An unused dimension keeps q(z_d|x) ~ N(0, 1) (mean logvar ~ 0); a used one is narrowed.
    """
    order = torch.argsort(logvar.mean(0))  # (L,), most used first
    return [int(d) for d in order[: min(n, logvar.shape[1])]]


def latent_walk_for_run(
    run_dir,
    out: str | Path | None = None,
    *,
    which: str = CHECKPOINT,
    pair: tuple[int, int] = (0, 1),
    dims: Sequence[int] | None = None,
    n_dims: int = 6,
    steps: int = 11,
    span: float = 3.0,
    data=None,
    data_dir: str | None = None,
) -> Path:
    """One PNG of an interpolation between test images ``pair`` and traversals of latent axes.

    The interpolation joins the posterior means of the two test images; each traversal
    moves one axis of the first image's code by [-span, span]. ``dims`` defaults to the
    ``n_dims`` most used axes (:func:`active_dims` over the first 1000 test images).
    Every walk gives two rows: decoder means and sigma. Writes ``out`` (default
    ``RUN/latent_walk.png``) and beside it ``latent_walk.json`` with the protocol.
    """
    run = load_run(run_dir, which=which)
    c = run.config
    data = run.dataset(data, data_dir=data_dir)
    x = data.x_test
    a, b = pair
    if not (0 <= a < len(x) and 0 <= b < len(x)):
        raise ValueError(f"pair={pair}: the test split of {c.dataset} has {len(x)} images; choose indices below that")
    with torch.no_grad():
        mu, logvar = run.model.encode(x[:1000])  # (n, L)
        mu_ab, _ = run.model.encode(x[[a, b]])  # (2, L)
    given = "given" if dims is not None else ""
    dims = list(dims) if dims is not None else active_dims(logvar, n_dims)
    walks = [(f"test {a} -> {b}", interpolate(mu_ab[0], mu_ab[1], steps))]
    walks += [(f"z{d} +-{span:g}", traverse(mu_ab[0], d, span, steps)) for d in dims]
    rows, cmaps = [], []
    for name, z in walks:
        mean, sigma = run.model.generate(z)  # (steps, C, H, W)
        rows += [(name, mean), ("sigma", sigma)]
        cmaps += [None, "viridis"]
    kind = "per-pixel sigma (Eq. 11)" if run.stage == 2 else f"global sigma^2 = {run.model.likelihood.sigma2:.3g}"
    out = Path(out).expanduser() if out is not None else run.path / "latent_walk.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_rows(rows, out, cmaps=cmaps, title=f"{c.dataset}: interpolation and traversals, decoder mean and {kind}")
    write_json_atomic(
        out.with_suffix(".json"),
        {
            "run": str(run.path),
            "checkpoint": which,
            "stage": run.stage,
            "pair": list(pair),
            "dims": dims,
            "steps": steps,
            "span": span,
            "codes": "posterior means mu(x) of test images",
            "dims_rule": given
            if given
            else f"{len(dims)} axes with the smallest mean logvar over the first 1000 test images",
            "rows": [name for name, _ in rows],
        },
    )
    return out
