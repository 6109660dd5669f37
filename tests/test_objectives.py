"""Baseline objectives: beta-VAE, WAE-MMD, DIP-VAE-I/II, their registry entries and training runs.

Ground truths: a direct double-loop MMD estimator, ``torch.cov``, Monte-Carlo samples of
the aggregate posterior, closed-form covariances of whitened codes, the Gaussian ELBO of
Eq. 9 at sigma^2 = beta / 2, and autograd.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from balanced_vae.cli import main as cli_main
from balanced_vae.config import TrainConfig
from balanced_vae.likelihoods import FixedVariance
from balanced_vae.methods import METHODS, build_model, build_objective, resolve_hparams
from balanced_vae.model import VAE
from balanced_vae.nets import NetSpec
from balanced_vae.objectives import DIPVAE, ELBO, WAE_SCALES, WAEMMD, BetaVAE, dip_covariance, dip_penalty, mmd_imq
from balanced_vae.runs import load_run
from balanced_vae.train import evaluate_elbo, train

BASELINES = ["vae", "beta-vae", "wae-mmd", "dip-vae-i", "dip-vae-ii"]


# --------------------------------------------------------------------------- helpers


def _mmd_loop(a: torch.Tensor, b: torch.Tensor, scales=WAE_SCALES, sigma2_z: float = 1.0) -> float:
    """The WAE U-statistic written out pair by pair, in float64."""
    a, b = a.double(), b.double()
    n, m, L = len(a), len(b), a.shape[1]

    def k(u, v):
        d2 = float(((u - v) ** 2).sum())
        return sum(2 * L * sigma2_z * s / (2 * L * sigma2_z * s + d2) for s in scales)

    aa = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    bb = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    ab = sum(k(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
    return aa + bb - 2 * ab


def _mmd_biased(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The V-statistic (diagonal terms kept): biased upwards, to show the unbiasedness test can fail."""
    L = a.shape[1]
    out = a.new_zeros(())
    for s in WAE_SCALES:
        c = 2 * L * s
        out = (
            out
            + (c / (c + torch.cdist(a, a) ** 2)).mean()
            + (c / (c + torch.cdist(b, b) ** 2)).mean()
            - 2 * (c / (c + torch.cdist(a, b) ** 2)).mean()
        )
    return out


def _whitened(n: int, L: int, g: torch.Generator) -> torch.Tensor:
    """n codes (n, L) whose batch covariance (normalised by n) is exactly the identity."""
    x = torch.randn(n, L, generator=g, dtype=torch.float64)
    x = x - x.mean(0)
    cov = x.T @ x / n
    return (x @ torch.linalg.inv(torch.linalg.cholesky(cov)).T).float()


def _model(beta_sigma2: float = 0.5, latent: int = 4, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(NetSpec((1, 8, 8), latent, 32), FixedVariance(beta_sigma2))


def _batch(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- MMD


def test_mmd_matches_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 3, generator=g), torch.randn(5, 3, generator=g) * 1.5 + 0.3
    assert float(mmd_imq(a, b)) == pytest.approx(_mmd_loop(a, b), rel=1e-5, abs=1e-6)
    assert float(mmd_imq(a, b, sigma2_z=2.0, scales=(0.5, 3.0))) == pytest.approx(
        _mmd_loop(a, b, scales=(0.5, 3.0), sigma2_z=2.0), rel=1e-5, abs=1e-6
    )
    assert float(mmd_imq(a, b)) == pytest.approx(float(mmd_imq(b, a)), abs=1e-6)


def test_mmd_near_zero_for_same_distribution_and_positive_for_shifted():
    g = torch.Generator().manual_seed(1)
    n, L = 200, 4
    same = torch.stack([mmd_imq(torch.randn(n, L, generator=g), torch.randn(n, L, generator=g)) for _ in range(6)])
    shifted = torch.stack(
        [mmd_imq(torch.randn(n, L, generator=g), torch.randn(n, L, generator=g) + 1.0) for _ in range(6)]
    )
    assert same.abs().max() < 0.1 * shifted.min()
    assert shifted.min() > 0
    # more shift, more discrepancy
    far = mmd_imq(torch.randn(n, L, generator=g), torch.randn(n, L, generator=g) + 3.0)
    assert far > shifted.mean()


def test_mmd_is_unbiased_and_the_v_statistic_is_not():
    g = torch.Generator().manual_seed(2)
    n, L, runs = 12, 3, 400
    u, v = [], []
    for _ in range(runs):
        a, b = torch.randn(n, L, generator=g), torch.randn(n, L, generator=g)
        u.append(mmd_imq(a, b))
        v.append(_mmd_biased(a, b))
    u, v = torch.stack(u), torch.stack(v)
    se_u, se_v = u.std() / math.sqrt(runs), v.std() / math.sqrt(runs)
    assert abs(float(u.mean())) < 4 * float(se_u)  # E[U] = MMD^2 = 0
    assert float(v.mean()) > 4 * float(se_v)  # the V-statistic is biased upwards


def test_mmd_rejects_bad_shapes():
    with pytest.raises(ValueError, match="equal L"):
        mmd_imq(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="at least 2"):
        mmd_imq(torch.zeros(1, 2), torch.zeros(4, 2))


# --------------------------------------------------------------------------- DIP


def test_dip_covariance_matches_torch_cov_and_aggregate_samples():
    g = torch.Generator().manual_seed(3)
    mu = torch.randn(64, 3, generator=g) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -0.3], [0.0, 0.0, 0.7]])
    logvar = torch.randn(64, 3, generator=g) * 0.5 - 1.0
    torch.testing.assert_close(dip_covariance(mu), torch.cov(mu.T, correction=0), rtol=1e-5, atol=1e-6)
    expected = torch.cov(mu.T, correction=0) + torch.diag(logvar.exp().mean(0))
    torch.testing.assert_close(dip_covariance(mu, logvar), expected, rtol=1e-5, atol=1e-6)
    # Monte Carlo: the covariance of samples of the aggregate posterior q(z) = 1/B sum_i N(mu_i, Sigma_i)
    z = torch.distributions.Normal(mu, (0.5 * logvar).exp()).sample((4000,)).reshape(-1, 3)  # (4000 B, L)
    torch.testing.assert_close(torch.cov(z.T, correction=0), dip_covariance(mu, logvar), rtol=0.05, atol=0.02)


def test_dip_penalty_is_zero_for_identity_covariance():
    g = torch.Generator().manual_seed(4)
    mu = _whitened(200, 5, g)
    out = dip_penalty(dip_covariance(mu), lambda_od=10.0, lambda_d=100.0)
    assert float(out["penalty"]) == pytest.approx(0.0, abs=1e-6)
    # DIP-VAE-II: Cov[mu] = 0.5 I plus E[Sigma] = 0.5 I
    out2 = dip_penalty(dip_covariance(mu * math.sqrt(0.5), torch.full_like(mu, math.log(0.5))), 10.0, 10.0)
    assert float(out2["penalty"]) == pytest.approx(0.0, abs=1e-6)
    # but DIP-VAE-I on those codes sees Cov[mu] = 0.5 I: a diagonal penalty of L (0.5)^2
    out1 = dip_penalty(dip_covariance(mu * math.sqrt(0.5)), 10.0, 100.0)
    assert float(out1["diag"]) == pytest.approx(5 * 0.25, rel=1e-5)
    assert float(out1["off_diag"]) == pytest.approx(0.0, abs=1e-6)


def test_dip_penalty_grows_with_correlation():
    g = torch.Generator().manual_seed(5)
    w = _whitened(300, 2, g)
    penalties = []
    for rho in (0.0, 0.2, 0.5, 0.8):
        # z2 = rho z1 + sqrt(1 - rho^2) w2 has unit variance and correlation rho with z1
        mu = torch.stack([w[:, 0], rho * w[:, 0] + math.sqrt(1 - rho**2) * w[:, 1]], dim=1)
        out = dip_penalty(dip_covariance(mu), lambda_od=3.0, lambda_d=7.0)
        assert float(out["off_diag"]) == pytest.approx(2 * rho**2, abs=1e-5)
        assert float(out["diag"]) == pytest.approx(0.0, abs=1e-5)
        penalties.append(float(out["penalty"]))
    assert all(b > a for a, b in zip(penalties, penalties[1:]))


def test_dip_objective_adds_penalty_to_negative_elbo():
    model, x = _model(), _batch(32)
    for kind in ("i", "ii"):
        torch.manual_seed(7)
        t = DIPVAE(kind, lambda_od=2.0, lambda_d=3.0)(model, x)
        torch.manual_seed(7)
        neg_elbo = ELBO()(model, x)["loss"]
        mu, logvar = model.encode(x)
        pen = dip_penalty(dip_covariance(mu, logvar if kind == "ii" else None), 2.0, 3.0)["penalty"]
        torch.testing.assert_close(t["loss"], neg_elbo + pen)
    with pytest.raises(ValueError, match="'i' or 'ii'"):
        DIPVAE("iii")


# --------------------------------------------------------------------------- beta-VAE


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0, 4.0])
def test_beta_vae_is_elbo_at_sigma2_beta_over_two_up_to_constant(beta):
    model = _model(beta_sigma2=beta / 2)
    d = 64
    const = 0.5 * d * math.log(math.pi) - beta * 0.5 * d * math.log(math.pi * beta)
    diffs = []
    for seed in range(3):
        x = _batch(16, seed=10 + seed)
        torch.manual_seed(seed)
        lb = BetaVAE(beta)(model, x)["loss"]
        torch.manual_seed(seed)
        le = ELBO()(model, x)["loss"]  # -ELBO with the model's sigma^2 = beta / 2
        diffs.append(float((lb - beta * le).detach()))
        # the same gradients up to the factor beta
        model.zero_grad()
        torch.manual_seed(seed)
        BetaVAE(beta)(model, x)["loss"].backward()
        gb = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        torch.manual_seed(seed)
        (beta * ELBO()(model, x)["loss"]).backward()
        for a, b in zip(gb, (p.grad for p in model.parameters())):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for dlt in diffs:
        assert dlt == pytest.approx(const, rel=1e-4, abs=1e-3)


def test_beta_vae_method_defaults_to_the_papers_sigma2_one():
    shape = (1, 8, 8)
    cfg = TrainConfig(method="beta-vae", latent_dim=4, width=16)
    assert build_model(cfg, shape).likelihood.sigma2 == pytest.approx(1.0)
    assert build_objective(cfg).beta == 2.0
    cfg4 = dataclasses.replace(cfg, hparams={"beta": 4})
    assert build_model(cfg4, shape).likelihood.sigma2 == pytest.approx(2.0)
    assert build_objective(cfg4).beta == 4.0
    with pytest.raises(ValueError, match="beta > 0"):
        build_objective(dataclasses.replace(cfg, hparams={"beta": 0}))


# --------------------------------------------------------------------------- WAE


def test_wae_loss_is_scaled_squared_error_plus_lambda_mmd():
    model, x = _model(), _batch(32)
    torch.manual_seed(11)
    t = WAEMMD(lam=3.0, rec_scale=0.2)(model, x)
    mu, _ = model.encode(x)
    mean = model.decode_mean(mu)  # deterministic encoder: z = mu
    sse = (x - mean).pow(2).sum((1, 2, 3)).mean()
    torch.manual_seed(11)
    z_p = torch.randn(mu.shape)  # the same prior draws, global RNG
    expected = 0.2 * sse + 3.0 * mmd_imq(mu, z_p)
    torch.testing.assert_close(t["loss"], expected)
    torch.testing.assert_close(t["sse"], sse)
    # stochastic encoder: z ~ q(z|x) changes the reconstruction term
    torch.manual_seed(11)
    ts = WAEMMD(lam=3.0, rec_scale=0.2, stochastic=True)(model, x)
    assert float(ts["sse"].detach()) != pytest.approx(float(sse.detach()), rel=1e-4)


@pytest.mark.parametrize("objective", [WAEMMD(), DIPVAE("i"), DIPVAE("ii"), BetaVAE(2.0)])
def test_objectives_stay_fp32_under_bf16_autocast(objective):
    model, x = _model(), _batch(32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t = objective(model, x)
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in t.values())
    t["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --------------------------------------------------------------------------- hyperparameters


def test_hparams_resolve_with_defaults_and_reject_unknown_keys():
    assert resolve_hparams(TrainConfig(method="wae-mmd")) == {"lambda": 10.0, "rec_scale": 0.05, "stochastic": False}
    assert resolve_hparams(TrainConfig(method="wae-mmd", hparams={"lambda": 5, "stochastic": True}))["lambda"] == 5.0
    with pytest.raises(ValueError, match=r"unknown hparam\(s\) \['lamda'\].*lambda \(default 10.0\)"):
        resolve_hparams(TrainConfig(method="wae-mmd", hparams={"lamda": 5}))
    with pytest.raises(ValueError, match="'vae': unknown hparam"):
        build_model(TrainConfig(method="vae", latent_dim=4, width=16, hparams={"beta": 4}), (1, 8, 8))
    with pytest.raises(ValueError, match="true or false"):
        resolve_hparams(TrainConfig(method="wae-mmd", hparams={"stochastic": "yes"}))
    with pytest.raises(ValueError, match="must be a number"):
        resolve_hparams(TrainConfig(method="dip-vae-i", hparams={"lambda_od": "ten"}))


def test_dip_lambda_d_follows_lambda_od_as_in_kumar_et_al():
    assert build_objective(TrainConfig(method="dip-vae-i")) == DIPVAE("i", 10.0, 100.0)
    assert build_objective(TrainConfig(method="dip-vae-ii")) == DIPVAE("ii", 10.0, 10.0)
    assert build_objective(TrainConfig(method="dip-vae-i", hparams={"lambda_od": 2})) == DIPVAE("i", 2.0, 20.0)
    assert build_objective(TrainConfig(method="dip-vae-ii", hparams={"lambda_od": 2})) == DIPVAE("ii", 2.0, 2.0)
    assert build_objective(TrainConfig(method="dip-vae-i", hparams={"lambda_od": 2, "lambda_d": 5})) == DIPVAE(
        "i", 2.0, 5.0
    )


def test_every_method_is_registered_with_documented_hparams():
    for name in BASELINES + ["learned", "fixed"]:
        assert name in METHODS and METHODS[name].doc
    for name, m in METHODS.items():
        for key in m.hparams:
            assert key in m.doc, f"{name}: hparam {key} not mentioned in its doc"


def test_cli_reports_unknown_hparam_in_one_line(tmp_path, capsys):
    rc = cli_main(
        [
            "train",
            "--method",
            "wae-mmd",
            "--hparam",
            "lamda=3",
            "--epochs",
            "1",
            "--n-train",
            "64",
            "--n-test",
            "32",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "lamda" in err and "lambda" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # rejected before a run folder is made


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def digits():
    from balanced_vae.data import load_dataset

    return load_dataset("digits")


def _config(method: str, **kw) -> TrainConfig:
    base = dict(method=method, epochs=3, min_epochs=3, n_train=256, n_test=64, batch_size=32, seed=0)
    return TrainConfig(**{**base, **kw})


def _objective_on(model, objective, x, seed: int = 123) -> float:
    """Mean objective over ``x`` in batches of 64, with fixed random draws."""
    model.train()
    torch.manual_seed(seed)
    with torch.no_grad():
        vals = [float(objective(model, x[i : i + 64])["loss"]) * len(x[i : i + 64]) for i in range(0, len(x), 64)]
    return sum(vals) / len(x)


@pytest.fixture(scope="module")
def baseline_runs(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    return {m: train(_config(m), root / m, data=digits, progress=False) for m in BASELINES}


@pytest.mark.parametrize("method", BASELINES)
def test_each_baseline_trains_lowers_its_objective_and_can_be_evaluated(method, baseline_runs, digits):
    run_dir = baseline_runs[method]
    run = load_run(run_dir)
    config = run.config
    assert config.method == method
    assert json.loads((run_dir / "final.json").read_text())["stage"] == 1
    x = digits.x_train[: config.n_train]
    objective = build_objective(config)
    torch.manual_seed(config.seed)  # the trainer's initialisation
    fresh = build_model(config, digits.shape)
    before, after = _objective_on(fresh, objective, x), _objective_on(run.model, objective, x)
    assert after < before, f"{method}: objective {before:.3f} -> {after:.3f}"
    run.model.eval()
    mean, sigma = run.model.reconstruct(digits.x_test[:8])
    assert mean.shape == sigma.shape == (8, *digits.shape)
    assert torch.allclose(sigma, torch.full_like(sigma, math.sqrt(run.model.likelihood.sigma2)))
    ev = evaluate_elbo(run.model, digits.x_test[:64], seed=1)
    s2 = run.model.likelihood.sigma2
    assert ev["sigma2_mean"] == pytest.approx(s2, rel=1e-5)
    # log N(x; g, s2 I) <= -D/2 log(2 pi s2) and KL >= 0 bound the ELBO from above
    assert math.isfinite(ev["elbo"]) and ev["elbo"] <= -0.5 * x[0].numel() * math.log(2 * math.pi * s2)
    samples, _ = run.model.generate(torch.randn(4, run.model.latent_dim, generator=torch.Generator().manual_seed(0)))
    assert samples.shape == (4, *digits.shape) and torch.isfinite(samples).all()


def test_wae_run_resumes_bit_for_bit(digits, tmp_path):
    """The WAE draws prior samples from torch's global RNG, which the checkpoint carries."""
    cfg = _config("wae-mmd", epochs=2, min_epochs=2, n_train=96, n_test=32)
    train(cfg, tmp_path / "straight", data=digits, progress=False)
    train(cfg, tmp_path / "split", data=digits, progress=False, stop_after=1)
    train(cfg, tmp_path / "split", data=digits, progress=False, resume=True)
    a, b = load_run(tmp_path / "straight").model.state_dict(), load_run(tmp_path / "split").model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_gmm_sampler_works_on_a_baseline_run(baseline_runs, digits):
    from balanced_vae import runs

    run_dir = baseline_runs["wae-mmd"]
    sampler = runs.make_sampler("gmm", run_dir, components=4, data=digits)
    z = sampler.sample(16, generator=torch.Generator().manual_seed(0))
    run = load_run(run_dir)
    assert z.shape == (16, run.model.latent_dim)
    assert torch.isfinite(sampler.log_prob(z)).all()
    mean, _ = run.model.generate(z)
    assert torch.isfinite(mean).all()
