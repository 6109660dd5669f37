"""Training objectives, each returning a dict of named terms (paper Sections 3 and 5).

An objective is a callable ``objective(model, x) -> dict`` whose ``"loss"`` entry is the
scalar to minimise; the other entries are per-batch means of named terms, logged as
they are. Baselines differ from the method by their objective and their likelihood,
never by a model class.

* :class:`ELBO` -- the negative ELBO (Eq. 9 / 11): ours (``learned``), ``vae``, ``fixed``.
* :class:`BetaVAE` -- KL weight beta (Higgins et al. 2017); equals beta times the
  negative ELBO at sigma^2 = beta / 2 plus a constant.
* :class:`WAEMMD` -- squared error plus lambda MMD_k(q_z, p_z), inverse multiquadratic
  kernel over seven scales (Tolstikhin et al. 2018, Algorithm 2); :func:`mmd_imq`.
* :class:`DIPVAE` -- the ELBO plus a penalty pulling Cov[mu(x)] (I) or
  E[Sigma(x)] + Cov[mu(x)] (II) to the identity (Kumar et al. 2018); :func:`dip_covariance`,
  :func:`dip_penalty`.

Random numbers inside objectives come from torch's global RNG, whose state the trainer
checkpoints, so a resumed run draws the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from .model import VAE

LOG_2PI = math.log(2 * math.pi)


def elbo_from_mse(mse: float, kl: float, sigma2: float, dims: int) -> float:
    """The mean ELBO of Eq. 9 under one global ``sigma2`` from the mean squared error per dimension
    ``mse`` and the mean KL: ``-D/2 log(2 pi sigma2) - D mse / (2 sigma2) - KL``, D = ``dims``."""
    return -0.5 * dims * (LOG_2PI + math.log(sigma2)) - 0.5 * dims * mse / sigma2 - kl


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag exp(logvar)) summed over data dimensions (Eq. 8).

    x, mean: (..., C, H, W); logvar broadcastable to them. Returns (...,) -- the last
    three dimensions are summed.
    """
    r2 = (x - mean).pow(2)
    logp = -0.5 * (LOG_2PI + logvar + r2 * torch.exp(-logvar))  # (..., C, H, W)
    return logp.sum(dim=(-3, -2, -1))


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)), closed form, summed over latents: (B, L) -> (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def elbo_terms(model: VAE, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Per-sample ELBO of Eq. 9 (global sigma^2) or Eq. 11 (per-pixel sigma^2).

    One z ~ q(z|x) per image. Returns ``elbo``, ``rec`` (E_q log p(x|z)), ``kl`` -- each (B,) --
    and ``mse`` (B,), the mean squared residual per image, plus the tensors that produced
    them: ``x_logvar`` (broadcastable to x) and ``z`` (B, L) (see :data:`NOT_TERMS`). This is
    the one ELBO of the library: training, validation, evaluation and the metrics call it.
    """
    mu, logvar = model.encode(x)  # (B, L)
    return elbo_terms_from_codes(model, x, mu, logvar, generator)


def elbo_terms_from_codes(
    model: VAE, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """:func:`elbo_terms` given the encoder's output ``mu``, ``logvar`` (B, L), so objectives
    that also need the codes (DIP-VAE) encode once."""
    z = model.reparameterise(mu, logvar, generator)  # (B, L)
    mean, x_logvar = model.decode(z, x if model.training else None)
    rec = gaussian_log_prob(x, mean, x_logvar)  # (B,)
    kl = kl_standard_normal(mu, logvar)  # (B,)
    mse = (x - mean).pow(2).flatten(1).mean(1)  # (B,)
    return {"elbo": rec - kl, "rec": rec, "kl": kl, "mse": mse, "x_logvar": x_logvar, "z": z}


#: entries of :func:`elbo_terms` that are the tensors it used, not per-image terms
NOT_TERMS = ("x_logvar", "z")


@dataclass(frozen=True)
class ELBO:
    """Negative ELBO (Eq. 9 / Eq. 11). With the model's likelihood this is the learned-variance
    method (``learned``), the plain VAE (fixed sigma^2 = 0.5) or the paper's beta-VAE
    (fixed sigma^2 = 1)."""

    kl_coef: ClassVar[float] = 1.0  # the weight of KL(q(z|x) || p(z)) in ``loss`` (see :class:`KLWarmup`)

    def __call__(self, model: VAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
        t = elbo_terms(model, x)
        out = {k: v.mean() for k, v in t.items() if k not in NOT_TERMS}
        out["loss"] = -out["elbo"]
        return out


class KLWarmup:
    """An objective whose KL(q(z|x) || p(z)) term is weighed by ``weight`` in [0, 1]:

        loss_w = loss - (1 - weight) kl_coef KL,

    so ``weight = 1`` is the objective itself (for :class:`ELBO`: -E_q log p(x|z) + w KL).
    The trainer sets ``weight`` before each step of the warm-up (``TrainConfig.kl_warmup``);
    Bowman et al. (2016) and Sonderby et al. (2016) use such a ramp against posterior collapse.
    Objectives without a KL term (WAE-MMD) are refused.
    """

    def __init__(self, objective: Callable) -> None:
        coef = getattr(objective, "kl_coef", None)
        if coef is None:
            raise ValueError(f"{type(objective).__name__} has no KL term to warm up; fix: --kl-warmup 0")
        self.objective, self.kl_coef, self.weight = objective, float(coef), 1.0

    def __call__(self, model: VAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
        t = self.objective(model, x)
        if self.weight < 1.0:
            t["loss"] = t["loss"] - (1.0 - self.weight) * self.kl_coef * t["kl"]
        return t


# --------------------------------------------------------------------------- beta-VAE


@dataclass(frozen=True)
class BetaVAE:
    """beta-VAE (Higgins et al. 2017) on the plain VAE's Gaussian reconstruction term:

        loss = E_q[-log N(x; g(z), 0.5 I)] + beta * KL(q(z|x) || p(z))
             = E_q ||x - g(z)||^2 + D/2 log(pi) + beta * KL.

    Multiplying the negative ELBO of Eq. 9 at sigma^2 = beta / 2 by beta gives
    ``E_q ||x - g(z)||^2 + beta D/2 log(pi beta) + beta KL``, so

        loss = beta * (-ELBO_{sigma^2 = beta/2}) + D/2 log(pi) - beta D/2 log(pi beta):

    a KL weight beta *is* the Gaussian likelihood with sigma^2 = beta / 2, up to the
    positive factor beta (which moves no minimiser) and a constant. beta = 1 is the plain
    VAE (sigma^2 = 0.5); beta = 2 is the paper's beta-VAE (sigma^2 = 1).

    Returns ``loss``; ``sse`` (E_q ||x - g(z)||^2), ``kl``, ``mse``; and ``rec``, ``elbo``
    under the model's own likelihood (sigma^2 = beta / 2 for ``--method beta-vae``), all
    batch means.
    """

    beta: float = 2.0

    @property
    def kl_coef(self) -> float:
        return self.beta

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta-VAE needs beta > 0, got {self.beta}; e.g. --hparam beta=2")

    def __call__(self, model: VAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
        t = elbo_terms(model, x)  # (B,) each
        d = x[0].numel()
        sse = t["mse"] * d  # (B,) ||x - g(z)||^2
        nll_half = sse + 0.5 * d * math.log(math.pi)  # (B,) -log N(x; g(z), 0.5 I)
        out = {k: v.mean() for k, v in t.items() if k not in NOT_TERMS}
        out["sse"] = sse.mean()
        out["loss"] = (nll_half + self.beta * t["kl"]).mean()
        return out


# --------------------------------------------------------------------------- WAE-MMD

#: Kernel scales of the WAE code: C = 2 L sigma_z^2 * s for each s.
WAE_SCALES: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def _no_autocast(t: torch.Tensor):
    """Kernel sums and covariances stay in fp32 even inside a bf16 autocast region."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances: a (n, L), b (m, L) -> (n, m)."""
    d = a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2.0 * (a @ b.T)  # (n, m)
    return d.clamp_min(0.0)


def mmd_imq(
    z_q: torch.Tensor, z_p: torch.Tensor, *, sigma2_z: float = 1.0, scales: tuple[float, ...] = WAE_SCALES
) -> torch.Tensor:
    """Unbiased U-statistic estimate of MMD_k^2 between the samples ``z_q`` (n, L) and ``z_p`` (m, L).

    Kernel (Tolstikhin et al. 2018, Sec. 4 and Algorithm 2): a sum of inverse
    multiquadratics ``k(z, z') = sum_s C_s / (C_s + ||z - z'||^2)``, ``C_s = 2 L sigma2_z s``
    for ``s`` in ``scales`` (the WAE code's choice for a N(0, sigma2_z I) prior). Estimator:

        1/(n(n-1)) sum_{i!=j} k(q_i, q_j) + 1/(m(m-1)) sum_{i!=j} k(p_i, p_j)
          - 2/(n m) sum_{i,j} k(q_i, p_j).

    Its expectation is exactly MMD_k^2(q, p) >= 0, so single estimates may be negative.
    Needs n, m >= 2. Returns a scalar (fp32 even under autocast).
    """
    if z_q.dim() != 2 or z_p.dim() != 2 or z_q.shape[1] != z_p.shape[1]:
        raise ValueError(
            f"mmd_imq needs two (n, L) sample matrices of equal L, got {tuple(z_q.shape)} and {tuple(z_p.shape)}"
        )
    n, m, L = z_q.shape[0], z_p.shape[0], z_q.shape[1]
    if n < 2 or m < 2:
        raise ValueError(
            f"mmd_imq needs at least 2 samples on each side, got n={n}, m={m}; use a batch size of at least 2"
        )
    with _no_autocast(z_q):
        z_q, z_p = z_q.float(), z_p.float()
        d_qq, d_pp, d_qp = _sq_dists(z_q, z_q), _sq_dists(z_p, z_p), _sq_dists(z_q, z_p)  # (n,n) (m,m) (n,m)
        off_q = 1.0 - torch.eye(n, dtype=z_q.dtype, device=z_q.device)  # (n, n)
        off_p = 1.0 - torch.eye(m, dtype=z_q.dtype, device=z_q.device)  # (m, m)
        stat = z_q.new_zeros(())
        for s in scales:
            c = 2.0 * L * sigma2_z * s
            k_qq = (c / (c + d_qq) * off_q).sum() / (n * (n - 1))
            k_pp = (c / (c + d_pp) * off_p).sum() / (m * (m - 1))
            k_qp = (c / (c + d_qp)).sum() / (n * m)
            stat = stat + k_qq + k_pp - 2.0 * k_qp
    return stat


@dataclass(frozen=True)
class WAEMMD:
    """Wasserstein auto-encoder with the MMD penalty (Tolstikhin et al. 2018, Eq. 4, Algorithm 2):

        loss = rec_scale * 1/B sum_i ||x_i - g(z_i)||^2 + lam * MMD_k^2(q_z, p_z),

    with c(x, y) = ||x - y||^2 summed over pixels and scaled by ``rec_scale`` = 0.05 as in
    the authors' code (``cost='l2sq'``); ``lam`` = 10 as in their MNIST experiments; the
    kernel and unbiased estimator of :func:`mmd_imq` between the batch's codes and B
    samples of p(z) = N(0, I) drawn with torch's global RNG. The encoder is deterministic
    (z = mu) as in the paper's experiments; ``stochastic=True`` uses z ~ q(z|x) instead.

    Returns batch means ``loss``, ``sse`` (||x - g(z)||^2), ``mse`` and the scalar ``mmd``.
    The model's likelihood is not used in training (only for evaluation).
    """

    lam: float = 10.0
    rec_scale: float = 0.05
    stochastic: bool = False

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise ValueError(f"WAE-MMD needs lambda >= 0, got {self.lam}; e.g. --hparam lambda=10")
        if not self.rec_scale > 0:
            raise ValueError(f"WAE-MMD needs rec_scale > 0, got {self.rec_scale}; e.g. --hparam rec_scale=0.05")

    def __call__(self, model: VAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, logvar = model.encode(x)  # (B, L)
        z = model.reparameterise(mu, logvar) if self.stochastic else mu  # (B, L)
        mean = model.decode_mean(z)  # (B, C, H, W)
        sse = (x - mean).pow(2).flatten(1).sum(1)  # (B,)
        z_p = torch.randn(z.shape, dtype=z.dtype, device=z.device)  # (B, L) ~ p(z), global RNG
        mmd = mmd_imq(z, z_p)
        loss = self.rec_scale * sse.mean() + self.lam * mmd
        return {"loss": loss, "sse": sse.mean(), "mse": sse.mean() / x[0].numel(), "mmd": mmd}


# --------------------------------------------------------------------------- DIP-VAE


def dip_covariance(mu: torch.Tensor, logvar: torch.Tensor | None = None) -> torch.Tensor:
    """Covariance that DIP-VAE pulls towards the identity (Kumar et al. 2018, Sec. 3): (L, L).

    DIP-VAE-I (``logvar=None``): Cov_p(x)[mu(x)], the batch covariance of the posterior
    means ``mu`` (B, L), normalised by B. DIP-VAE-II: the covariance of the aggregate
    posterior, Cov_q(z)[z] = E_p(x)[diag exp(logvar(x))] + Cov_p(x)[mu(x)].
    """
    if mu.dim() != 2:
        raise ValueError(f"dip_covariance needs mu of shape (B, L), got {tuple(mu.shape)}")
    if logvar is not None and logvar.shape != mu.shape:
        raise ValueError(f"dip_covariance: logvar {tuple(logvar.shape)} must match mu {tuple(mu.shape)}")
    with _no_autocast(mu):
        centred = mu.float() - mu.float().mean(0, keepdim=True)  # (B, L)
        cov = centred.T @ centred / mu.shape[0]  # (L, L)
        if logvar is not None:
            cov = cov + torch.diag(logvar.float().exp().mean(0))  # (L, L)
    return cov


def dip_penalty(cov: torch.Tensor, lambda_od: float, lambda_d: float) -> dict[str, torch.Tensor]:
    """DIP regulariser of a covariance ``cov`` (L, L) (Kumar et al. 2018, Sec. 3):

        lambda_od * sum_{i != j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2.

    Returns ``off_diag`` (sum_{i!=j} C_ij^2), ``diag`` (sum_i (C_ii - 1)^2) and ``penalty``.
    """
    diag = torch.diagonal(cov)  # (L,)
    off_diag = cov.pow(2).sum() - diag.pow(2).sum()
    diag_dev = (diag - 1.0).pow(2).sum()
    return {"off_diag": off_diag, "diag": diag_dev, "penalty": lambda_od * off_diag + lambda_d * diag_dev}


@dataclass(frozen=True)
class DIPVAE:
    """DIP-VAE (Kumar et al. 2018, Sec. 3): the negative ELBO plus the DIP penalty,

        loss = -ELBO + lambda_od sum_{i!=j} C_ij^2 + lambda_d sum_i (C_ii - 1)^2,

    with C = Cov[mu(x)] over the batch (``kind="i"``) or C = E[diag exp(logvar(x))] +
    Cov[mu(x)] (``kind="ii"``); see :func:`dip_covariance`. The ELBO uses the model's
    likelihood (sigma^2 = 0.5 for ``--method dip-vae-i|ii``, as the plain VAE).

    Returns batch means ``loss``, ``elbo``, ``rec``, ``kl``, ``mse`` and the scalars
    ``off_diag``, ``diag`` and ``penalty``.
    """

    kind: str = "i"
    lambda_od: float = 10.0
    lambda_d: float = 100.0
    kl_coef: ClassVar[float] = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("i", "ii"):
            raise ValueError(f"DIP-VAE kind must be 'i' or 'ii', got {self.kind!r}")
        if not (self.lambda_od >= 0 and self.lambda_d >= 0):
            raise ValueError(f"DIP-VAE needs lambda_od, lambda_d >= 0, got {self.lambda_od}, {self.lambda_d}")

    def __call__(self, model: VAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, logvar = model.encode(x)  # (B, L)
        t = elbo_terms_from_codes(model, x, mu, logvar)
        cov = dip_covariance(mu, logvar if self.kind == "ii" else None)  # (L, L)
        pen = dip_penalty(cov, self.lambda_od, self.lambda_d)
        out = {k: v.mean() for k, v in t.items() if k not in NOT_TERMS}
        out.update(pen)
        out["loss"] = -out["elbo"] + pen["penalty"]
        return out
