"""Methods: which likelihood and which objective a run trains with (paper Section 5).

A method is data: a likelihood factory, an objective factory and whether it has the
second (per-pixel variance) stage of Algorithm 1. ``balanced-vae train --method NAME``
picks one from :data:`METHODS`; baselines register here too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .config import TrainConfig
from .likelihoods import FixedVariance, GlobalVariance, Likelihood
from .model import VAE
from .nets import NetSpec
from .objectives import ELBO


@dataclass(frozen=True)
class Method:
    """How to build a run's likelihood and objective from its config."""

    likelihood: Callable[[TrainConfig], Likelihood]
    objective: Callable[[TrainConfig], Callable]
    staged: bool = False
    doc: str = ""


METHODS: dict[str, Method] = {
    "learned": Method(
        likelihood=lambda c: GlobalVariance(c.sigma2_mode),
        objective=lambda c: ELBO(), staged=True,
        doc="ours: learned global sigma^2 (Eq. 10), then a per-pixel head (Eq. 11)"),
    "fixed": Method(
        likelihood=lambda c: FixedVariance(c.sigma2), objective=lambda c: ELBO(),
        doc="ELBO with sigma^2 fixed at --sigma2"),
    "vae": Method(
        likelihood=lambda c: FixedVariance(0.5), objective=lambda c: ELBO(),
        doc="original VAE: sigma^2 = 0.5"),
    "beta-vae": Method(
        likelihood=lambda c: FixedVariance(1.0), objective=lambda c: ELBO(),
        doc="the paper's beta-VAE: sigma^2 = 1"),
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}") from None


def n_stages(config: TrainConfig) -> int:
    """Number of stages of Algorithm 1 this run trains (1 or 2)."""
    return config.stages if get_method(config.method).staged else 1


def build_model(config: TrainConfig, shape: tuple[int, int, int]) -> VAE:
    """A fresh stage-1 model for ``config`` (resolved) on images of ``shape`` (C, H, W)."""
    spec = NetSpec(tuple(shape), config.latent_dim, config.width)
    return VAE(spec, get_method(config.method).likelihood(config))


def build_objective(config: TrainConfig) -> Callable:
    return get_method(config.method).objective(config)
