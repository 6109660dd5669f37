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
  sampled with torch and saved as ``.npz`` + JSON.

Beside them, the Monte-Carlo KL estimator :func:`kl_monte_carlo` behind the KL gaps of Table 1. The
samplers of a trained run (its codes, the GMM cached beside its checkpoint) are built in
:mod:`balanced_vae.runs`.
"""

from __future__ import annotations

from ..protocol import CELEBA_COMPONENTS, DEFAULT_COMPONENTS, SAMPLER_KINDS
from .base import AggregatePosteriorSampler, PriorSampler, Sampler, kl_monte_carlo
from .em import GMM_BACKENDS, GMM_INITS, LARGE_K

# the EM helpers under the names bench/gmm_fit.py and the tests have used
from .em import cholesky_or_jitter as _cholesky_or_jitter
from .em import code_scale as _code_scale
from .em import em_full as _em_full
from .em import init_assignments as _init_assignments
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
    "_cholesky_or_jitter",
    "_code_scale",
    "_em_full",
    "_init_assignments",
    "kl_monte_carlo",
]
