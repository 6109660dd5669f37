"""Encoder and decoder networks, chosen from the input shape (paper Section 5).

Three families, all sharing one contract:

* encoder: ``x (B, C, H, W) -> h (B, 2 L)`` (split into ``mu`` and ``logvar`` by the model);
* decoder: ``z (B, L) -> raw (B, C, H, W)``, unbounded; the model squashes the mean
  with a sigmoid and the variance head reads the raw output as a log-variance.

``MLP`` serves tiny images (at most 16x16, e.g. the 8x8 ``digits``), ``Conv28`` serves
28x28 images (MNIST, Fashion-MNIST) and ``Conv64`` 64x64 images (CelebA, folders).
Defaults are sized to train in seconds per epoch on two CPU cores; their cost is
given by :func:`count_macs`.

Depth: ``blocks`` > 0 (conv families only) adds that many residual blocks
``h + conv3x3(relu(conv3x3(relu(h))))`` after each of the two coarsest feature maps of the
encoder and before each of the two coarsest upsamplings of the decoder. The last conv of
every block starts at zero, so a deeper network starts as the function of the shallow one
it extends; ``blocks=0`` builds exactly the shallow network (same modules, same random draws).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class NetSpec:
    """What a network family needs to know: input shape ``(C, H, W)``, latent size, width, and
    residual blocks per coarse level (``blocks``, conv families only)."""

    shape: tuple[int, int, int]
    latent_dim: int
    width: int
    blocks: int = 0

    def __post_init__(self) -> None:
        if self.blocks and self.family == "mlp":
            raise ValueError(f"blocks={self.blocks}: residual blocks need a conv network (28x28 or 64x64 "
                             f"images), not the MLP of images of shape {self.shape}; fix: --blocks 0")

    @property
    def family(self) -> str:
        c, h, w = self.shape
        if h <= 16 and w <= 16:
            return "mlp"
        if (h, w) == (28, 28):
            return "conv28"
        if (h, w) == (64, 64):
            return "conv64"
        raise ValueError(
            f"no network family for images of shape {self.shape}: use images of at most "
            "16x16 (MLP), 28x28 or 64x64 (resize with --image-size 64)"
        )


def default_width(shape: tuple[int, int, int]) -> int:
    """Default base width for a shape: hidden units (MLP) or first-layer channels (conv)."""
    family = NetSpec(shape, 2, 1).family
    return {"mlp": 256, "conv28": 32, "conv64": 32}[family]


class _Residual(nn.Module):
    """``h + conv3x3(relu(conv3x3(relu(h))))`` on ``(B, c, H, W)``; the last conv starts at zero."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1))
        nn.init.zeros_(self.f[3].weight)
        nn.init.zeros_(self.f[3].bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.f(h)


def _res(c: int, n: int) -> list[nn.Module]:
    return [_Residual(c) for _ in range(n)]


class _Reshape(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


def _mlp_encoder(s: NetSpec) -> nn.Module:
    d = s.shape[0] * s.shape[1] * s.shape[2]
    return nn.Sequential(
        nn.Flatten(), nn.Linear(d, s.width), nn.ReLU(),
        nn.Linear(s.width, s.width), nn.ReLU(), nn.Linear(s.width, 2 * s.latent_dim),
    )


def _mlp_decoder(s: NetSpec) -> nn.Module:
    d = s.shape[0] * s.shape[1] * s.shape[2]
    return nn.Sequential(
        nn.Linear(s.latent_dim, s.width), nn.ReLU(),
        nn.Linear(s.width, s.width), nn.ReLU(), nn.Linear(s.width, d), _Reshape(*s.shape),
    )


def _conv28_encoder(s: NetSpec) -> nn.Module:
    c, w = s.shape[0], s.width
    return nn.Sequential(
        nn.Conv2d(c, w, 4, 2, 1), nn.ReLU(), *_res(w, s.blocks),              # (B, w, 14, 14)
        nn.Conv2d(w, 2 * w, 4, 2, 1), nn.ReLU(), *_res(2 * w, s.blocks),      # (B, 2w, 7, 7)
        nn.Flatten(), nn.Linear(2 * w * 49, 8 * w), nn.ReLU(),
        nn.Linear(8 * w, 2 * s.latent_dim),
    )


def _conv28_decoder(s: NetSpec) -> nn.Module:
    c, w = s.shape[0], s.width
    return nn.Sequential(
        nn.Linear(s.latent_dim, 8 * w), nn.ReLU(),
        nn.Linear(8 * w, 2 * w * 49), nn.ReLU(), _Reshape(2 * w, 7, 7), *_res(2 * w, s.blocks),
        nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.ReLU(), *_res(w, s.blocks),   # (B, w, 14, 14)
        nn.ConvTranspose2d(w, c, 4, 2, 1),                                      # (B, C, 28, 28)
    )


def _conv64_encoder(s: NetSpec) -> nn.Module:
    c, w = s.shape[0], s.width
    return nn.Sequential(
        nn.Conv2d(c, w, 4, 2, 1), nn.ReLU(),             # (B, w, 32, 32)
        nn.Conv2d(w, w, 4, 2, 1), nn.ReLU(),             # (B, w, 16, 16)
        nn.Conv2d(w, 2 * w, 4, 2, 1), nn.ReLU(), *_res(2 * w, s.blocks),        # (B, 2w, 8, 8)
        nn.Conv2d(2 * w, 2 * w, 4, 2, 1), nn.ReLU(), *_res(2 * w, s.blocks),    # (B, 2w, 4, 4)
        nn.Flatten(), nn.Linear(2 * w * 16, 8 * w), nn.ReLU(),
        nn.Linear(8 * w, 2 * s.latent_dim),
    )


def _conv64_decoder(s: NetSpec) -> nn.Module:
    c, w = s.shape[0], s.width
    return nn.Sequential(
        nn.Linear(s.latent_dim, 8 * w), nn.ReLU(),
        nn.Linear(8 * w, 2 * w * 16), nn.ReLU(), _Reshape(2 * w, 4, 4), *_res(2 * w, s.blocks),
        nn.ConvTranspose2d(2 * w, 2 * w, 4, 2, 1), nn.ReLU(), *_res(2 * w, s.blocks),   # (B, 2w, 8, 8)
        nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.ReLU(),                               # (B, w, 16, 16)
        nn.ConvTranspose2d(w, w, 4, 2, 1), nn.ReLU(),           # (B, w, 32, 32)
        nn.ConvTranspose2d(w, c, 4, 2, 1),                      # (B, C, 64, 64)
    )


_FAMILIES = {
    "mlp": (_mlp_encoder, _mlp_decoder),
    "conv28": (_conv28_encoder, _conv28_decoder),
    "conv64": (_conv64_encoder, _conv64_decoder),
}


def make_encoder(spec: NetSpec) -> nn.Module:
    """Encoder ``x (B, C, H, W) -> (B, 2 L)`` for ``spec``'s shape."""
    return _FAMILIES[spec.family][0](spec)


def make_decoder(spec: NetSpec) -> nn.Module:
    """Decoder ``z (B, L) -> raw (B, C, H, W)`` for ``spec``'s shape (also the variance head)."""
    return _FAMILIES[spec.family][1](spec)


def count_macs(net: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass for one input of ``input_shape`` (no batch dim).

    Counts ``Linear``, ``Conv2d`` and ``ConvTranspose2d`` layers, which dominate; FLOPs are
    about twice this number.
    """
    total = 0

    def hook(module: nn.Module, inp, out) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += module.in_features * module.out_features
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += out.shape[1] * out.shape[2] * out.shape[3] * k * module.in_channels // module.groups
        elif isinstance(module, nn.ConvTranspose2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += inp[0].shape[2] * inp[0].shape[3] * k * module.in_channels * module.out_channels

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            net(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return total
