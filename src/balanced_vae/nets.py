"""Encoder and decoder networks, chosen from the input shape (paper Section 5).

Three families, all sharing one contract:

* encoder: ``x (B, C, H, W) -> h (B, 2 L)`` (split into ``mu`` and ``logvar`` by the model);
* decoder: ``z (B, L) -> raw (B, C, H, W)``, unbounded; the model squashes the mean
  with a sigmoid and the variance head reads the raw output as a log-variance.

``MLP`` serves tiny images (at most 16x16, e.g. the 8x8 ``digits``), ``Conv28`` serves
28x28 images (MNIST, Fashion-MNIST) and ``Conv64`` 64x64 images (CelebA, folders).
Defaults are sized to train in seconds per epoch on two CPU cores; their cost is
given by :func:`count_macs`.

Families by name (``NetSpec.net``, ``--net``), each for every method and both image sizes:

* ``small`` -- the conv nets above (the default), 2.5 M MACs per 28x28 image at width 32;
* ``paper`` -- the conv net of the WAE/RAE line the paper's results come from (Ghosh et al.
  2020): 4x4 (28x28, zero-padded to 32x32) or 5x5 (64x64) stride-2 convs with BatchNorm + ReLU
  at ``w, 2w, 4w, 8w`` channels (``w`` = 128), a dense layer to ``2 L``; the decoder is dense to
  ``8 x 8 x 8w``, transposed convs halving the channels, then one to ``C`` channels;
* ``res`` -- an efficient residual design for CPUs: a 3x3 stem, one pre-activation residual
  block (BatchNorm, ReLU, 3x3 conv, twice) per scale, stride-2 convs down and
  nearest-neighbour upsampling + 3x3 conv up, at ``w, 2w, 4w`` channels over three scales.

Depth: ``blocks`` > 0 (``small`` conv families only) adds that many residual blocks
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
    net: str = "small"

    def __post_init__(self) -> None:
        if self.net not in NETS:
            raise ValueError(f"unknown network family {self.net!r}; choose one of {', '.join(NETS)} (--net)")
        family = self.family  # refuses shapes and families that do not go together
        if self.blocks and family == "mlp":
            raise ValueError(
                f"blocks={self.blocks}: residual blocks need a conv network (28x28 or 64x64 "
                f"images), not the MLP of images of shape {self.shape}; fix: --blocks 0"
            )
        if self.blocks and self.net != "small":
            raise ValueError(
                f"blocks={self.blocks}: --blocks deepens the small conv nets only, not --net "
                f"{self.net}; fix: --blocks 0 (or --net small)"
            )

    @property
    def family(self) -> str:
        """The builder's key: ``mlp`` (tiny images, any ``net``... but ``small`` only), else
        ``<net><size>``, e.g. ``conv28`` (small), ``paper28``, ``res64``."""
        c, h, w = self.shape
        if h <= 16 and w <= 16:
            if self.net != "small":
                raise ValueError(
                    f"--net {self.net} needs 28x28 or 64x64 images, not {self.shape}; tiny images "
                    "use the MLP of --net small"
                )
            return "mlp"
        if (h, w) in ((28, 28), (64, 64)):
            return {"small": "conv", "paper": "paper", "res": "res"}[self.net] + str(h)
        raise ValueError(
            f"no network family for images of shape {self.shape}: use images of at most "
            "16x16 (MLP), 28x28 or 64x64 (resize with --image-size 64)"
        )


#: network families by name (``--net``)
NETS = ("small", "paper", "res")


def default_width(shape: tuple[int, int, int], net: str = "small") -> int:
    """Default base width for a shape: hidden units (MLP) or first-layer channels (conv)."""
    family = NetSpec(shape, 2, 1, net=net).family
    return {"mlp": 256, "conv28": 32, "conv64": 32, "paper28": 128, "paper64": 128, "res28": 32, "res64": 32}[family]


def default_latent_dim(shape: tuple[int, ...], net: str = "small") -> int:
    """8 for tiny images, 64 for the paper net on 64x64 images (the RAE CelebA setting), else 16."""
    if len(shape) == 3 and shape[1] <= 16:
        return 8
    return 64 if net == "paper" and tuple(shape[1:]) == (64, 64) else 16


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
        nn.Flatten(),
        nn.Linear(d, s.width),
        nn.ReLU(),
        nn.Linear(s.width, s.width),
        nn.ReLU(),
        nn.Linear(s.width, 2 * s.latent_dim),
    )


def _mlp_decoder(s: NetSpec) -> nn.Module:
    d = s.shape[0] * s.shape[1] * s.shape[2]
    return nn.Sequential(
        nn.Linear(s.latent_dim, s.width),
        nn.ReLU(),
        nn.Linear(s.width, s.width),
        nn.ReLU(),
        nn.Linear(s.width, d),
        _Reshape(*s.shape),
    )


def _conv28_encoder(s: NetSpec) -> nn.Module:
    c, w = s.shape[0], s.width
    return nn.Sequential(
        nn.Conv2d(c, w, 4, 2, 1),
        nn.ReLU(),
        *_res(w, s.blocks),  # (B, w, 14, 14)
        nn.Conv2d(w, 2 * w, 4, 2, 1),
        nn.ReLU(),
        *_res(2 * w, s.blocks),  # (B, 2w, 7, 7)
        nn.Flatten(),
        nn.Linear(2 * w * 49, 8 * w),
        nn.ReLU(),
        nn.Linear(8 * w, 2 * s.latent_dim),
    )


def _conv28_decoder(s: NetSpec) -> nn.Module:
    c, w = s.shape[0], s.width
    return nn.Sequential(
        nn.Linear(s.latent_dim, 8 * w),
        nn.ReLU(),
        nn.Linear(8 * w, 2 * w * 49),
        nn.ReLU(),
        _Reshape(2 * w, 7, 7),
        *_res(2 * w, s.blocks),
        nn.ConvTranspose2d(2 * w, w, 4, 2, 1),
        nn.ReLU(),
        *_res(w, s.blocks),  # (B, w, 14, 14)
        nn.ConvTranspose2d(w, c, 4, 2, 1),  # (B, C, 28, 28)
    )


def _conv64_encoder(s: NetSpec) -> nn.Module:
    c, w = s.shape[0], s.width
    return nn.Sequential(
        nn.Conv2d(c, w, 4, 2, 1),
        nn.ReLU(),  # (B, w, 32, 32)
        nn.Conv2d(w, w, 4, 2, 1),
        nn.ReLU(),  # (B, w, 16, 16)
        nn.Conv2d(w, 2 * w, 4, 2, 1),
        nn.ReLU(),
        *_res(2 * w, s.blocks),  # (B, 2w, 8, 8)
        nn.Conv2d(2 * w, 2 * w, 4, 2, 1),
        nn.ReLU(),
        *_res(2 * w, s.blocks),  # (B, 2w, 4, 4)
        nn.Flatten(),
        nn.Linear(2 * w * 16, 8 * w),
        nn.ReLU(),
        nn.Linear(8 * w, 2 * s.latent_dim),
    )


def _conv64_decoder(s: NetSpec) -> nn.Module:
    c, w = s.shape[0], s.width
    return nn.Sequential(
        nn.Linear(s.latent_dim, 8 * w),
        nn.ReLU(),
        nn.Linear(8 * w, 2 * w * 16),
        nn.ReLU(),
        _Reshape(2 * w, 4, 4),
        *_res(2 * w, s.blocks),
        nn.ConvTranspose2d(2 * w, 2 * w, 4, 2, 1),
        nn.ReLU(),
        *_res(2 * w, s.blocks),  # (B, 2w, 8, 8)
        nn.ConvTranspose2d(2 * w, w, 4, 2, 1),
        nn.ReLU(),  # (B, w, 16, 16)
        nn.ConvTranspose2d(w, w, 4, 2, 1),
        nn.ReLU(),  # (B, w, 32, 32)
        nn.ConvTranspose2d(w, c, 4, 2, 1),  # (B, C, 64, 64)
    )


# ----------------------------------------------------------------- paper: the WAE/RAE conv net


class _Crop(nn.Module):
    """(B, C, H + 2p, W + 2p) -> (B, C, H, W): the centre, undoing the encoder's zero padding."""

    def __init__(self, p: int) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.p : -self.p, self.p : -self.p] if self.p else x


def _down(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, 2, (k - 1) // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def _up(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [
        nn.ConvTranspose2d(cin, cout, k, 2, (k - 1) // 2, output_padding=k % 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


def _paper_encoder(s: NetSpec) -> nn.Module:
    """28x28: pad to 32, 4x4 convs -> (B, 8w, 2, 2); 64x64: 5x5 convs -> (B, 8w, 4, 4); dense to 2L."""
    c, w, h = s.shape[0], s.width, s.shape[1]
    k, pad = (4, 2) if h == 28 else (5, 0)
    side = (h + 2 * pad) // 16
    return nn.Sequential(
        nn.ZeroPad2d(pad),
        *_down(c, w, k),
        *_down(w, 2 * w, k),
        *_down(2 * w, 4 * w, k),
        *_down(4 * w, 8 * w, k),
        nn.Flatten(),
        nn.Linear(8 * w * side * side, 2 * s.latent_dim),
    )


def _paper_decoder(s: NetSpec) -> nn.Module:
    """Dense to (B, 8w, 8, 8); 28x28: two 4x4 up-convs to 32x32, a stride-1 one to C, the centre
    28x28; 64x64: three 5x5 up-convs to 64x64, a stride-1 one to C."""
    c, w, h = s.shape[0], s.width, s.shape[1]
    k = 4 if h == 28 else 5
    ups = [*_up(8 * w, 4 * w, k), *_up(4 * w, 2 * w, k)] + ([] if h == 28 else [*_up(2 * w, w, k)])
    last = 2 * w if h == 28 else w
    return nn.Sequential(
        nn.Linear(s.latent_dim, 8 * w * 64),
        _Reshape(8 * w, 8, 8),
        nn.BatchNorm2d(8 * w),
        nn.ReLU(),
        *ups,
        # a stride-1 5x5 up-conv keeps the side; a 4x4 one cannot (odd padding), so 28x28 takes a 3x3 conv
        nn.ConvTranspose2d(last, c, 5, 1, 2) if k == 5 else nn.Conv2d(last, c, 3, 1, 1),
        _Crop(2 if h == 28 else 0),
    )


# ----------------------------------------------------------------- res: an efficient residual net


class _PreActBlock(nn.Module):
    """``h + conv3x3(relu(bn(conv3x3(relu(bn(h))))))`` on (B, c, H, W); the last conv starts at zero."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, 1, 1),
        )
        nn.init.zeros_(self.f[5].weight)
        nn.init.zeros_(self.f[5].bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.f(h)


def _res_sides(h: int) -> list[int]:
    """Feature-map sides of the three scales: 28 -> 28, 14, 7; 64 -> 32, 16, 8 (a stride-2 stem)."""
    return [28, 14, 7] if h == 28 else [32, 16, 8]


def _res_encoder(s: NetSpec) -> nn.Module:
    c, w, h = s.shape[0], s.width, s.shape[1]
    side = _res_sides(h)[-1]
    stem = nn.Conv2d(c, w, 3, 1, 1) if h == 28 else nn.Conv2d(c, w, 4, 2, 1)
    return nn.Sequential(
        stem,
        _PreActBlock(w),  # (B, w, 28|32, .)
        nn.Conv2d(w, 2 * w, 4, 2, 1),
        _PreActBlock(2 * w),  # (B, 2w, 14|16, .)
        nn.Conv2d(2 * w, 4 * w, 4, 2, 1),
        _PreActBlock(4 * w),  # (B, 4w, 7|8, .)
        nn.BatchNorm2d(4 * w),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * w * side * side, 2 * s.latent_dim),
    )


def _res_decoder(s: NetSpec) -> nn.Module:
    c, w, h = s.shape[0], s.width, s.shape[1]
    side = _res_sides(h)[-1]
    tail = [nn.Conv2d(w, c, 3, 1, 1)] if h == 28 else [nn.Upsample(scale_factor=2), nn.Conv2d(w, c, 3, 1, 1)]
    return nn.Sequential(
        nn.Linear(s.latent_dim, 4 * w * side * side),
        _Reshape(4 * w, side, side),
        _PreActBlock(4 * w),
        nn.Upsample(scale_factor=2),
        nn.Conv2d(4 * w, 2 * w, 3, 1, 1),
        _PreActBlock(2 * w),  # (B, 2w, 14|16, .)
        nn.Upsample(scale_factor=2),
        nn.Conv2d(2 * w, w, 3, 1, 1),
        _PreActBlock(w),  # (B, w, 28|32, .)
        nn.BatchNorm2d(w),
        nn.ReLU(),
        *tail,  # (B, C, 28|64, .)
    )


_FAMILIES = {
    "mlp": (_mlp_encoder, _mlp_decoder),
    "conv28": (_conv28_encoder, _conv28_decoder),
    "conv64": (_conv64_encoder, _conv64_decoder),
    "paper28": (_paper_encoder, _paper_decoder),
    "paper64": (_paper_encoder, _paper_decoder),
    "res28": (_res_encoder, _res_decoder),
    "res64": (_res_encoder, _res_decoder),
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
            total += inp[0].shape[2] * inp[0].shape[3] * k * module.in_channels * module.out_channels // module.groups

    handles = [
        m.register_forward_hook(hook)
        for m in net.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))
    ]
    try:
        with torch.no_grad():
            net(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return total
