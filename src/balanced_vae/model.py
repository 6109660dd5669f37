"""The VAE module (paper Section 3): encode -> (mu, logvar), decode -> (mean, log-variance).

The model knows its networks and its likelihood; it knows nothing of objectives,
optimisers or trainer state.

Network contract (any ``nn.Module``; the built-in :mod:`~balanced_vae.nets` are one way
to make them):

* encoder: ``x (B, *data_shape) -> h (B, 2 L)`` (first half ``mu``, second half ``logvar``)
  or a pair ``(mu, logvar)``, each ``(B, L)``;
* decoder: ``z (B, L) -> logits (B, *data_shape)``; the model squashes them with a
  sigmoid into the mean g(z) in (0, 1);
* variance head (stage 2 of Algorithm 1, Eq. 11): same contract as the decoder, its
  output read as a raw log-variance per data dimension.

``data_shape`` is one example's shape as your data has it: ``(C, H, W)`` images of any
size and channel count, or ``(D,)`` flat vectors. Inside the library every batch is held
as ``(B, C, H, W)`` (see :func:`~balanced_vae.sources.canonical_shape`; a vector is
``(D, 1, 1)``); the model reshapes to ``data_shape`` before your networks see it, and
returns means in the library layout.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .likelihoods import Likelihood, PixelVariance
from .nets import NetSpec, make_decoder, make_encoder
from .sources import canonical_shape, rows


class NetworkError(ValueError):
    """A network's output does not fit the contract; the message names the shape and the fix."""


class _ScaledHead(nn.Module):
    """A user's variance head whose output starts at a constant: ``offset + gain * head(z)``.

    ``gain`` starts at 0, so every pixel's sigma^2 starts at the same value for any
    architecture (what zeroing the last layer does for the built-in networks); the output
    is reshaped to the library layout ``(B, C, H, W)``.
    """

    def __init__(self, head: nn.Module, offset: float, shape: tuple[int, ...] | None) -> None:
        super().__init__()
        self.head = head
        self.shape = canonical_shape(shape) if shape is not None else None
        self.gain = nn.Parameter(torch.zeros(()))
        self.offset = nn.Parameter(torch.tensor(float(offset)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        raw = self.offset + self.gain * self.head(z).float()  # (B, *data_shape)
        return raw if self.shape is None else raw.reshape(len(z), *self.shape)  # (B, C, H, W)


def head_offset(floor: float, init_sigma2: float | None) -> float:
    """The log of ``sigma^2 - floor`` a new variance head starts at, so that every pixel's sigma^2 of
    Eq. 11 starts at ``init_sigma2`` (default 1.01 x the floor; 1 without a floor)."""
    init = init_sigma2 if init_sigma2 is not None else (1.01 * floor if floor > 0 else 1.0)
    return math.log(init - floor if init > floor else 0.01 * max(floor, 1e-8))


def pixel_variance(
    head: nn.Module, floor: float, init_sigma2: float | None, data_shape: tuple[int, ...] | None
) -> PixelVariance:
    """The stage-2 likelihood (Eq. 11) around any head ``z (B, L) -> (B, *data_shape)``.

    Every pixel's sigma^2 starts at ``init_sigma2`` (default 1.01 x the floor) via
    :class:`_ScaledHead`, so stage 2 begins where stage 1 ended. The log-variance comes in
    the library layout (B, C, H, W), or as the head returns it when ``data_shape`` is None.
    """
    return PixelVariance(_ScaledHead(head, head_offset(floor, init_sigma2), data_shape), floor=floor)


def _fresh_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every layer's parameters re-initialised (``reset_parameters``)."""
    new = copy.deepcopy(module)
    for m in new.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return new


@contextmanager
def eval_mode(model: nn.Module, *, grad: bool = False) -> Iterator[nn.Module]:
    """Run a block with ``model`` in eval mode (and without gradients unless ``grad``), then
    restore its training flag, whatever happens in the block."""
    was_training = model.training
    model.eval()
    try:
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            yield model
    finally:
        model.train(was_training)


class VAE(nn.Module):
    """Gaussian encoder q(z|x) = N(mu, diag exp(logvar)), Gaussian decoder p(x|z) (Eq. 6-8).

    ``VAE(encoder, decoder, likelihood)`` takes any networks that follow the contract of the
    module docstring; ``VAE(spec, likelihood)`` builds the built-in networks of a
    :class:`~balanced_vae.nets.NetSpec`. The decoder mean g(z) is a sigmoid of the decoder
    network's output, so it lies in (0, 1) like the data; ``output="identity"`` takes the
    output as it is, for real-valued data such as standardised tables
    (:attr:`~balanced_vae.config.TrainConfig.output`).

    Args:
        latent_dim: L; inferred from the encoder by :meth:`check` when not given.
        data_shape: one example's shape as the networks take it; default: the library
            layout (C, H, W) the batches arrive in.
        variance_head: the stage-2 head (Eq. 11): a module, or a callable returning a fresh
            one. Default: a re-initialised copy of the decoder.
        output: ``"sigmoid"`` (default) or ``"identity"``: the decoder mean g(z) as a function
            of the decoder network's output.
    """

    def __init__(
        self,
        encoder: nn.Module | NetSpec,
        decoder: nn.Module | Likelihood,
        likelihood: Likelihood | None = None,
        *,
        latent_dim: int | None = None,
        data_shape: tuple[int, ...] | None = None,
        variance_head: nn.Module | Callable[[], nn.Module] | None = None,
        output: str = "sigmoid",
    ) -> None:
        super().__init__()
        if output not in ("sigmoid", "identity"):
            raise NetworkError(f"VAE output={output!r}; choose 'sigmoid' (data in [0, 1]) or 'identity' (real values)")
        self.output = output
        if isinstance(encoder, NetSpec):  # VAE(spec, likelihood): the built-in networks
            spec, likelihood = encoder, decoder
            encoder, decoder = make_encoder(spec), make_decoder(spec)
            latent_dim = spec.latent_dim
        else:
            spec = None
        for name, net in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(net, nn.Module):
                raise NetworkError(
                    f"VAE {name}: expected a torch.nn.Module, got {type(net).__name__}; "
                    "fix: VAE(encoder, decoder, likelihood) with nn.Modules"
                )
        if not isinstance(likelihood, Likelihood):
            raise NetworkError(
                f"VAE likelihood: expected a balanced_vae.likelihoods.Likelihood, got "
                f"{type(likelihood).__name__}; fix: e.g. GlobalVariance('closed_form')"
            )
        self.spec = spec
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self._latent_dim = latent_dim
        self.data_shape = tuple(data_shape) if data_shape is not None else None
        object.__setattr__(self, "_variance_head", variance_head)  # not a submodule: no weights before stage 2

    @property
    def latent_dim(self) -> int:
        if self._latent_dim is None:
            raise NetworkError(
                "VAE.latent_dim is unknown: pass latent_dim=L to VAE(...) or call model.check(x) on a batch first"
            )
        return self._latent_dim

    def _to_networks(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the library layout (B, C, H, W) -> (B, *data_shape), the networks' layout."""
        if self.data_shape is None or tuple(x.shape[1:]) == self.data_shape:
            return x
        return x.reshape(len(x), *self.data_shape)

    def _from_networks(self, out: torch.Tensor) -> torch.Tensor:
        """(B, *data_shape) -> the library layout (B, C, H, W)."""
        if self.data_shape is None or len(self.data_shape) == 3:
            return out
        return out.reshape(len(out), *canonical_shape(self.data_shape))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) (or (B, *data_shape)) -> mu (B, L), logvar (B, L)."""
        h = self.encoder(self._to_networks(x))
        if isinstance(h, (tuple, list)):
            mu, logvar = (t.float() for t in h)  # (B, L) each
        else:
            h = h.float()  # (B, 2L); fp32 even under bf16 autocast
            if h.ndim != 2 or h.shape[1] % 2:
                raise NetworkError(
                    f"encoder output has shape {tuple(h.shape)}; expected (B, 2L) (an even "
                    "width: mu then logvar) or a pair (mu, logvar) of (B, L); fix the encoder's "
                    "last layer"
                )
            mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L) -> g(z) (B, C, H, W): in (0, 1), or unbounded for ``output="identity"``."""
        out = self.decoder(z).float()
        return self._from_networks(torch.sigmoid(out) if self.output == "sigmoid" else out)

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, L) -> mean (B, C, H, W), decoder log-variance broadcastable to it.

        ``x`` is passed only in training, for the closed-form global variance (Eq. 10).
        """
        mean = self.decode_mean(z)
        return mean, self.likelihood.logvar(z, mean, x)

    @staticmethod
    def reparameterise(
        mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None, k: int | None = None
    ) -> torch.Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I): (B, L), or (k, B, L) when ``k`` is given."""
        shape = mu.shape if k is None else (k, *mu.shape)
        eps = torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + (0.5 * logvar).exp() * eps

    def with_pixel_variance(self, floor: float, init_sigma2: float | None = None) -> VAE:
        """Algorithm 1, stage 2: the same networks with a new per-pixel variance head.

        The head's output starts at a constant (:func:`head_offset`) so that every pixel's sigma^2
        starts near ``init_sigma2`` (default: 1.01 x the floor), and stage 2 begins where stage 1
        ended instead of at sigma^2 ~ 1: the built-in head's last layer starts at zero weight and
        that bias; a head of your networks is wrapped in a :class:`_ScaledHead` of gain 0.
        """
        offset = head_offset(floor, init_sigma2)
        head = self._built_in_head(offset) if self.spec is not None else self._your_head(offset)
        self.likelihood = PixelVariance(head, floor=floor)
        return self

    def _built_in_head(self, offset: float) -> nn.Module:
        """A decoder of the built-in family whose last layer starts at zero weight and bias ``offset``."""
        assert self.spec is not None
        head = make_decoder(self.spec)
        last = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(offset)
        return head

    def _your_head(self, offset: float) -> nn.Module:
        """The ``variance_head`` given (a module or a factory; else a re-initialised copy of the decoder),
        on the decoder's device, its output started at ``offset`` and shaped as one example."""
        vh = self._variance_head
        net = vh if isinstance(vh, nn.Module) else vh() if vh is not None else _fresh_copy(self.decoder)
        if not isinstance(net, nn.Module):
            raise NetworkError(
                f"variance_head returned {type(net).__name__}, not an nn.Module; fix: "
                "pass a module or a function returning a fresh decoder-shaped module"
            )
        device = next(self.decoder.parameters(), torch.empty(0)).device
        if self.data_shape is None:  # the decoder's own output shape
            with torch.no_grad():
                self.data_shape = tuple(self.decoder(torch.zeros(1, self.latent_dim, device=device)).shape[1:])
        return _ScaledHead(net.to(device), offset, self.data_shape)

    @torch.no_grad()
    def check(self, x: torch.Tensor) -> VAE:
        """Check the networks' contract on a batch ``x`` (B, *data_shape); sets ``latent_dim`` if unknown.

        Sets ``data_shape`` to x's example shape if unknown. Runs the encoder and decoder once
        in eval mode (no gradients, no random numbers) and
        raises :class:`NetworkError` naming the shapes and the fix when the encoder's width is
        odd, its ``latent_dim`` differs from the one given, or the decoder's output is not x's
        shape. Returns ``self``.
        """
        with eval_mode(self):
            h = self.encoder(self._to_networks(x))
            if isinstance(h, (tuple, list)):
                if len(h) != 2 or h[0].shape != h[1].shape or h[0].ndim != 2:
                    raise NetworkError(
                        f"encoder returned {len(h)} tensors of shapes {[tuple(t.shape) for t in h]};"
                        " expected (mu, logvar), each (B, L)"
                    )
                width = 2 * h[0].shape[1]
            else:
                if h.ndim != 2 or h.shape[0] != len(x) or h.shape[1] % 2:
                    raise NetworkError(
                        f"encoder output has shape {tuple(h.shape)} for x of shape {tuple(x.shape)}; expected "
                        f"({len(x)}, 2L), an even width holding mu then logvar (or a pair (mu, logvar)); fix the "
                        "encoder's last layer, e.g. nn.Linear(features, 2 * latent_dim)"
                    )
                width = h.shape[1]
            if self._latent_dim is not None and width != 2 * self._latent_dim:
                raise NetworkError(
                    f"encoder gives L = {width // 2} latent dimensions but latent_dim = "
                    f"{self._latent_dim}; fix: make the encoder output 2 * {self._latent_dim} features"
                )
            self._latent_dim = width // 2
            if self.data_shape is None:  # x's layout is the networks' layout from now on
                self.data_shape = tuple(x.shape[1:])
            out = self.decoder(torch.zeros(len(x), self._latent_dim, device=x.device))
            want = self.data_shape or tuple(x.shape[1:])
            if tuple(out.shape) != (len(x), *want):
                raise NetworkError(
                    f"decoder output has shape {tuple(out.shape)} for z of shape "
                    f"({len(x)}, {self._latent_dim}); expected x's shape {(len(x), *want)}; fix the "
                    "decoder so that it returns one logit per data dimension"
                )
        return self

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode the posterior mean of x (B, C, H, W): mean (B, C, H, W), sigma (B, C, H, W)."""
        mu, _ = self.encode(x)
        return self.generate(mu)

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode codes z (B, L): mean (B, C, H, W) and per-pixel sigma (B, C, H, W) (Figure 4)."""
        mean, logvar = self.decode(z)
        return mean, (0.5 * logvar).exp().expand_as(mean)


@torch.no_grad()
def encode_dataset(model, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior parameters of every image: x (N, C, H, W) -> mu (N, L), logvar (N, L), float32.

    ``x`` may also be a source of :mod:`balanced_vae.sources` (uint8 or streamed data, any
    example shape), converted ``batch_size`` examples at a time. Runs the encoder in eval
    mode without gradients and restores the model's training flag.
    """
    if isinstance(x, torch.Tensor) and x.ndim != 4:
        raise ValueError(
            f"encode_dataset: x has shape {tuple(x.shape)}, expected (N, C, H, W); for other shapes "
            "or uint8 data pass balanced_vae.sources.TensorSource(x)"
        )
    with eval_mode(model):
        mus, logvars = [], []
        for i in range(0, len(x), batch_size):
            mu, logvar = model.encode(rows(x, i, i + batch_size))  # (b, L)
            mus.append(mu.float().cpu())
            logvars.append(logvar.float().cpu())
    return torch.cat(mus), torch.cat(logvars)
