"""Samplers over the latent space: prior, exact aggregate posterior, Gaussian mixture (Section 3.5).

Every sampler answers the same two calls, so generation and metrics can use any of them
as p(z):

* ``sample(n, generator=None) -> z (n, L)`` float32, drawn with the caller's
  ``torch.Generator`` (the global torch RNG when ``None``);
* ``log_prob(z (n, L)) -> (n,)`` float32, the log-density in nats.

Samplers
--------
* :class:`PriorSampler` -- p(z) = N(0, I).
* :class:`AggregatePosteriorSampler` -- the exact aggregate posterior of Eq. 12,
  q(z) = 1/N sum_n N(z; mu_n, diag exp(logvar_n)), with ``log_prob`` streamed over chunks of
  components (running logsumexp) so that all 60,000 MNIST posteriors fit in memory.
* :class:`GaussianMixtureSampler` -- Eq. 13, a K-component Gaussian mixture fitted by EM
  (scikit-learn's ``GaussianMixture``; from K = 100 on the same EM vectorised in torch),
  sampled with torch and saved as ``.npz`` + JSON (:mod:`.gmm_io`); its EM from K = 100 on is
  :func:`.em.em_full`.

Beside them, the Monte-Carlo KL estimator :func:`kl_monte_carlo` behind the KL gaps of Table 1. The
samplers of a trained run (its codes, the GMM cached beside its checkpoint) are built in
:mod:`balanced_vae.runs`.
"""

from __future__ import annotations

from ..protocol import CELEBA_COMPONENTS, DEFAULT_COMPONENTS, SAMPLER_KINDS
from .base import AggregatePosteriorSampler, PriorSampler, Sampler, kl_monte_carlo
from .em import GMM_BACKENDS, GMM_INITS, LARGE_K
from .gmm import FIT_ON, GMM_ARRAYS, GMM_FORMAT_VERSION, GMM_META, GaussianMixtureSampler

__all__ = [
    "AggregatePosteriorSampler",
    "CELEBA_COMPONENTS",
    "DEFAULT_COMPONENTS",
    "FIT_ON",
    "GMM_ARRAYS",
    "GMM_BACKENDS",
    "GMM_FORMAT_VERSION",
    "GMM_INITS",
    "GMM_META",
    "GaussianMixtureSampler",
    "LARGE_K",
    "PriorSampler",
    "SAMPLER_KINDS",
    "Sampler",
    "kl_monte_carlo",
]
