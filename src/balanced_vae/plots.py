"""Figures: image grids, uncertainty maps, panels side by side, learning curves (paper Figures 2-4).

All functions write a PNG atomically and return its path. Matplotlib runs on the
non-interactive Agg backend.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from .atomic import atomic_write  # noqa: E402


def grid(x: torch.Tensor, nrow: int | None = None, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile images x (N, C, H, W) in [0, 1] into one uint8 array (rows*H', cols*W', C)."""
    x = x.detach().float().clamp(0, 1).cpu()
    n, c, h, w = x.shape
    ncol = nrow or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncol)
    out = torch.full((c, nrows * (h + pad) + pad, ncol * (w + pad) + pad), pad_value)
    for i in range(n):
        r, col = divmod(i, ncol)
        out[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = x[i]
    return (out.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def save_grid(x: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Save images x (N, C, H, W) in [0, 1] as one PNG grid, upscaled ``scale`` times."""
    arr = grid(x, nrow)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
    return path


def save_fig(fig, path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def save_rows(
    rows: Sequence[tuple[str, torch.Tensor]],
    path: str | Path,
    cmaps: Sequence[str | None] | None = None,
    title: str | None = None,
) -> Path:
    """One labelled row per (name, images (N, C, H, W)); each row is shown with its own colour map.

    Grey rows of uncertainty maps get a colour bar, so the scale of sigma can be read off.
    """
    n = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(
        len(rows), 1, figsize=(max(6, n * 0.6), 1.0 * len(rows) * max(1, 8 / n) + 0.6), squeeze=False
    )
    for i, (name, x) in enumerate(rows):
        ax = axes[i, 0]
        cmap = (cmaps or [None] * len(rows))[i]
        if cmap is None:
            arr = grid(x, nrow=n)
            im = ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=255)
        else:  # a map of values, not an image: show the raw scale
            v = x.detach().float().mean(1, keepdim=True)
            lo, hi = float(v.min()), float(v.max())
            arr = grid((v - lo) / max(hi - lo, 1e-12), nrow=n, pad_value=0.0)[..., 0] / 255 * (hi - lo) + lo
            im = ax.imshow(arr, cmap=cmap, vmin=lo, vmax=hi)
            fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return save_fig(fig, path)


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``; a damaged line is an error naming the file and line."""
    rows = []
    for i, ln in enumerate(Path(path).read_text().splitlines()):
        if ln.strip():
            try:
                rows.append(json.loads(ln))
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}: line {i + 1} is not valid JSON ({e}); a crash tore it: "
                    "`balanced-vae train --resume RUN` drops it"
                ) from None
    return rows


def plot_curves(metrics: list[dict], path: str | Path) -> Path:
    """Train and validation ELBO per epoch, stages marked; and sigma^2 on a log scale."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.arange(1, len(metrics) + 1)
    for key, style in (("train_elbo", "-"), ("val_elbo", "--")):
        if key in metrics[0]:
            a1.plot(x, [m[key] for m in metrics], style, label=key.replace("_", " "))
    a2.plot(x, [m["sigma2"] for m in metrics], "-", label="global sigma^2 (stage 1) / floor (stage 2)")
    if any("test_sigma2_mean" in m for m in metrics):
        a2.plot(x, [m.get("test_sigma2_mean", np.nan) for m in metrics], ":", label="mean decoder sigma^2 (test)")
    a2.set_yscale("log")
    for ax in (a1, a2):
        switch = [i + 1.5 for i in range(len(metrics) - 1) if metrics[i]["stage"] != metrics[i + 1]["stage"]]
        for s in switch:
            ax.axvline(s, color="grey", lw=0.8)
        ax.set_xlabel("epoch (all stages)")
        ax.legend(fontsize=8)
    a1.set_ylabel("ELBO per image (nats)")
    a2.set_ylabel("sigma^2")
    a1.set_title("learning curves")
    a2.set_title("decoder variance")
    return save_fig(fig, path)


def _tile(values: np.ndarray, nrow: int | None, pad: int = 1) -> np.ndarray:
    """Tile maps (N, H, W) into one (rows*(H+pad)+pad, cols*(W+pad)+pad) array, NaN between tiles."""
    n, h, w = values.shape
    ncol = nrow or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncol)
    out = np.full((nrows * (h + pad) + pad, ncol * (w + pad) + pad), np.nan)
    for i in range(n):
        r, c = divmod(i, ncol)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = values[i]
    return out


def save_value_grid(
    values: torch.Tensor,
    path: str | Path,
    *,
    nrow: int | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    label: str = "sigma",
) -> Path:
    """A grid of value maps (N, C, H, W) (channels averaged) on one colour scale with a colour bar (Figure 4)."""
    arr = _tile(values.detach().float().mean(1).cpu().numpy(), nrow)  # NaN = white gaps
    fig, ax = plt.subplots(figsize=(6, 6 * arr.shape[0] / arr.shape[1] + 0.4))
    cm = plt.get_cmap(cmap).with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(arr), cmap=cm, vmin=float(np.nanmin(arr)), vmax=float(np.nanmax(arr)))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=label)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return save_fig(fig, path)


def save_side_by_side(
    panels: Sequence[tuple[str, torch.Tensor]], path: str | Path, *, nrow: int | None = None, title: str | None = None
) -> Path:
    """Image grids (N, C, H, W) in [0, 1] side by side, one titled panel each (Figure 2)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5.4), squeeze=False)
    for ax, (name, x) in zip(axes[0], panels):
        arr = grid(x, nrow=nrow)
        ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=255)
        ax.set_title(name)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return save_fig(fig, path)
