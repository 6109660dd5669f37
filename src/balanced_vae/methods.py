"""Methods: which likelihood and which objective a run trains with (paper Section 5).

A method is data: a likelihood factory, an objective factory, whether it has the
second (per-pixel variance) stage of Algorithm 1, and the objective hyperparameters it
accepts (``TrainConfig.hparams``, ``--hparam KEY=VALUE``) with their defaults.
``balanced-vae train --method NAME`` picks one from :data:`METHODS`. The baselines of
the paper's Tables 2 and 3 (VAE, beta-VAE, WAE-MMD, DIP-VAE-I/II) are registered here and
share the networks, data, loop and checkpoints; docs/METHODS.md gives their equations,
references and the source of every default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_weights
from .config import TrainConfig
from .factories import build_networks
from .likelihoods import FixedVariance, GlobalVariance, Likelihood
from .model import VAE
from .nets import NetSpec
from .objectives import DIPVAE, ELBO, WAEMMD, BetaVAE


@dataclass(frozen=True)
class Method:
    """How to build a run's likelihood and objective from its config.

    ``hparams`` maps each accepted hyperparameter to its default; the factories read the
    resolved values with :func:`resolve_hparams`, which rejects unknown keys.
    """

    likelihood: Callable[[TrainConfig], Likelihood]
    objective: Callable[[TrainConfig], Callable]
    staged: bool = False
    doc: str = ""
    hparams: dict[str, Any] = field(default_factory=dict)


def _h(c: TrainConfig) -> dict[str, Any]:
    return resolve_hparams(c)


def _dip(c: TrainConfig, kind: str, ratio: float) -> DIPVAE:
    """DIP-VAE objective; an unset lambda_d follows Kumar et al.: ratio x lambda_od."""
    h = _h(c)
    lambda_d = h["lambda_d"] if "lambda_d" in c.hparams else ratio * h["lambda_od"]
    return DIPVAE(kind, lambda_od=h["lambda_od"], lambda_d=lambda_d)


METHODS: dict[str, Method] = {
    "learned": Method(
        likelihood=lambda c: GlobalVariance(c.sigma2_mode),
        objective=lambda c: ELBO(),
        staged=True,
        doc="ours: learned global sigma^2 (Eq. 10), then a per-pixel head (Eq. 11)",
    ),
    "fixed": Method(
        likelihood=lambda c: FixedVariance(c.sigma2),
        objective=lambda c: ELBO(),
        doc="ELBO with sigma^2 fixed at --sigma2",
    ),
    "vae": Method(
        likelihood=lambda c: FixedVariance(0.5), objective=lambda c: ELBO(), doc="original VAE: sigma^2 = 0.5"
    ),
    "beta-vae": Method(
        likelihood=lambda c: FixedVariance(_h(c)["beta"] / 2),
        objective=lambda c: BetaVAE(_h(c)["beta"]),
        doc="beta-VAE: -log N(x; g(z), 0.5) + beta KL, i.e. sigma^2 = beta/2; default beta=2 is the "
        "paper's sigma^2 = 1 (--hparam beta=B)",
        hparams={"beta": 2.0},
    ),
    "wae-mmd": Method(
        likelihood=lambda c: FixedVariance(0.5),
        objective=lambda c: WAEMMD(lam=_h(c)["lambda"], rec_scale=_h(c)["rec_scale"], stochastic=_h(c)["stochastic"]),
        doc="WAE-MMD (Tolstikhin et al. 2018): rec_scale ||x - g(z)||^2 + lambda MMD (IMQ kernel); "
        "hparams lambda=10, rec_scale=0.05, stochastic=false; evaluated with sigma^2 = 0.5",
        hparams={"lambda": 10.0, "rec_scale": 0.05, "stochastic": False},
    ),
    "dip-vae-i": Method(
        likelihood=lambda c: FixedVariance(0.5),
        objective=lambda c: _dip(c, "i", 10.0),
        doc="DIP-VAE-I (Kumar et al. 2018): ELBO (sigma^2 = 0.5) + penalty on Cov[mu(x)]; "
        "hparams lambda_od=10, lambda_d=10*lambda_od",
        hparams={"lambda_od": 10.0, "lambda_d": 100.0},
    ),
    "dip-vae-ii": Method(
        likelihood=lambda c: FixedVariance(0.5),
        objective=lambda c: _dip(c, "ii", 1.0),
        doc="DIP-VAE-II (Kumar et al. 2018): ELBO (sigma^2 = 0.5) + penalty on E[Sigma(x)] + Cov[mu(x)]; "
        "hparams lambda_od=10, lambda_d=lambda_od",
        hparams={"lambda_od": 10.0, "lambda_d": 10.0},
    ),
}


def _coerce(method: str, key: str, value: Any, default: Any) -> Any:
    """Check one hyperparameter against the type of its default."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ValueError(f"method {method!r}: hparam {key}={value!r} must be true or false, e.g. --hparam {key}=true")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"method {method!r}: hparam {key}={value!r} must be a number, e.g. --hparam {key}={default}")
    return float(value)


def resolve_hparams(config: TrainConfig) -> dict[str, Any]:
    """The method's hyperparameters: its defaults overridden by ``config.hparams``.

    Raises ValueError naming the method, the unknown or ill-typed key and the valid ones.
    """
    method = get_method(config.method)
    given = dict(config.hparams or {})
    unknown = sorted(set(given) - set(method.hparams))
    if unknown:
        valid = ", ".join(f"{k} (default {v})" for k, v in method.hparams.items()) or "none"
        raise ValueError(f"method {config.method!r}: unknown hparam(s) {unknown}; valid hparams: {valid}")
    return {k: _coerce(config.method, k, given[k], d) if k in given else d for k, d in method.hparams.items()}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}") from None


def n_stages(config: TrainConfig) -> int:
    """Number of stages of Algorithm 1 this run trains (1 or 2)."""
    return config.stages if get_method(config.method).staged else 1


def build_model(config: TrainConfig, shape: tuple[int, ...]) -> VAE:
    """A fresh stage-1 model for ``config`` (resolved) on examples of ``shape`` ((C, H, W) for
    the built-in networks; any shape for a ``config.networks`` factory).

    Factory networks are checked on a zero batch (eval mode, no random numbers drawn), so a
    network whose output does not fit raises :class:`~balanced_vae.model.NetworkError`
    before the first step; the variance head of stage 2 is the decoder of a second call.
    """
    resolve_hparams(config)  # every method rejects hyperparameters it does not know
    likelihood = get_method(config.method).likelihood(config)
    output = config.output or "sigmoid"  # None: images (configs saved before the field existed)
    if config.networks is None:
        return VAE(
            NetSpec(tuple(shape), config.latent_dim, config.width, config.blocks, config.net), likelihood, output=output
        )

    def make():
        return build_networks(config.networks, shape, config.latent_dim, config.network_args)

    encoder, decoder = make()
    model = VAE(
        encoder,
        decoder,
        likelihood,
        latent_dim=config.latent_dim,
        data_shape=tuple(shape),
        variance_head=lambda: make()[1],
        output=output,
    )
    return model.check(torch.zeros(2, *shape))


def build_trained(config: TrainConfig, checkpoint: dict[str, Any], path: Path, config_path: Path) -> VAE:
    """The model a checkpoint saved, in eval mode: :func:`build_model` for ``checkpoint["shape"]``, the
    per-pixel variance head of stage 2 (floored at ``checkpoint["sigma2_star"]``) when the checkpoint is
    of stage 2, then its weights ``checkpoint["model"]``. ``path`` (the weights' file) and ``config_path``
    (the config's) name the files in the error when the two do not fit. The one home of this rebuild:
    run folders and model folders are read through it."""
    model = build_model(config, tuple(checkpoint["shape"]))
    if checkpoint["stage"] == 2:
        model.with_pixel_variance(float(checkpoint["sigma2_star"]))
    load_weights(model, checkpoint["model"], path, config_path)
    return model.eval()


def build_objective(config: TrainConfig) -> Callable:
    """The objective ``objective(model, x) -> dict`` of ``config``'s method and hyperparameters."""
    resolve_hparams(config)
    return get_method(config.method).objective(config)
