"""The evaluation protocol: every number that says how a metric was measured (paper Section 5).

The paper's protocol (Tables 1-3): the test ELBO on the whole test split; the IWAE bound
with k = 20 importance samples on the first 500 test images; FID of 10,000 decoded
samples against the first 10,000 test images on TF-Inception features; Monte-Carlo KL
with 10,000 samples, 10 times; K = 32 components of the GMM of Eq. 13. These numbers
live here once; the CLI, the budgets of :mod:`balanced_vae.paper.experiments` and
:func:`balanced_vae.evaluate.evaluate_run` take their defaults from :data:`PAPER`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: the metrics of :mod:`balanced_vae.evaluate`, in the order of its registry
METRICS = ("elbo", "iwae", "fid", "kl", "calibration", "pr")
#: p(z) of samples and of the IWAE bound: the prior, the GMM of Eq. 13, the aggregate posterior of Eq. 12
SAMPLER_KINDS = ("prior", "gmm", "aggregate")
#: the paper's K of Eq. 13 for MNIST and Fashion-MNIST (CelebA: :data:`CELEBA_COMPONENTS`)
DEFAULT_COMPONENTS = 32
CELEBA_COMPONENTS = 500
GMM_FITS = (None, "mean", "sample")
FID_BACKENDS = ("auto", "torch", "openvino")


@dataclass(frozen=True)
class EvalProtocol:
    """How each metric of :mod:`balanced_vae.evaluate` is measured; recorded with every number.

    ``sampler`` ("prior", "gmm" or "aggregate", K = ``components``; None: the paper's K for
    the image shape) is p(z) for FID, the second p(z) of the IWAE bound and the sampler set
    beside the prior for precision/recall. ``gmm_fit_on`` picks the codes the GMM is fitted
    on (None: posterior means for sampling, one z ~ q(z|x) per image where the GMM is a
    density). ``clip`` names the counts that are clipped to the test images there are (with
    a notice) rather than refused: the preset's own counts, not counts a caller chose.
    """

    n_iwae: int = 500  # test images of the IWAE bound (Table 3)
    k: int = 20  # importance samples of the IWAE bound
    n_fid: int = 10_000  # generated and real test images per FID (Table 2)
    fid_batch_size: int = 50  # images per Inception forward pass
    fid_backend: str = "auto"  # the Inception network's runtime (see balanced_vae.fid.resolve_backend)
    n_pr: int = 500  # images per sampler and real images of precision/recall
    k_pr: int = 3  # nearest neighbours of the precision/recall manifolds
    n_kl: int = 10_000  # Monte-Carlo samples per KL estimate (Table 1)
    kl_runs: int = 10  # independent KL estimates
    seed: int = 0
    sampler: str = "prior"
    components: int | None = DEFAULT_COMPONENTS
    gmm_fit_on: str | None = None
    clip: tuple[str, ...] = ("n_iwae", "n_fid")

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLER_KINDS:
            raise ValueError(f"sampler={self.sampler!r}; choose prior, gmm or aggregate")
        if self.gmm_fit_on not in GMM_FITS:
            raise ValueError(f"gmm_fit_on={self.gmm_fit_on!r}; choose 'mean' or 'sample' (or None for the defaults)")
        if self.fid_backend not in FID_BACKENDS:
            raise ValueError(f"fid_backend={self.fid_backend!r}; choose one of {', '.join(FID_BACKENDS)}")

    def replace(self, **changes) -> EvalProtocol:
        """This protocol with ``changes``; a count given here is the caller's and is no longer clipped."""
        clip = tuple(c for c in self.clip if c not in changes)
        return dataclasses.replace(self, **{"clip": clip, **changes})

    @property
    def fit_sampling(self) -> str:
        """The codes of a GMM that is sampled from (FID, precision/recall): the paper's posterior means."""
        return self.gmm_fit_on or "mean"

    @property
    def fit_density(self) -> str:
        """The codes of a GMM that is a density (IWAE's p(z), KL): one z ~ q(z|x) per image, since a fit on
        means squeezes unused latent dimensions to reg_covar (see :mod:`balanced_vae.samplers`)."""
        return self.gmm_fit_on or "sample"


#: the paper's protocol (Section 5)
PAPER = EvalProtocol()
#: a look in minutes on a CPU: fewer images and samples, the same estimators
QUICK = EvalProtocol(n_iwae=100, k=5, n_fid=1000, n_pr=200, n_kl=1000, kl_runs=3)
PRESETS = {"paper": PAPER, "quick": QUICK}


def get_protocol(name: str) -> EvalProtocol:
    """The preset ``name`` ("paper" or "quick")."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(PRESETS)}") from None
