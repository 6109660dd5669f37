"""Metrics against closed forms: IWAE, dequantisation, Frechet distance, calibration; evaluate/reconstruct."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from balanced_vae.config import TrainConfig
from balanced_vae.likelihoods import FixedVariance
from balanced_vae.metrics import (
    bits_per_dim,
    calibration,
    dequantise,
    dequantised_log_likelihood,
    elbo,
    frechet_distance,
    frechet_distance_features,
    frechet_distance_to_features,
    gaussian_statistics,
    iwae_log_likelihood,
    log_importance_weights,
)
from balanced_vae.model import VAE
from balanced_vae.nets import NetSpec
from balanced_vae.objectives import elbo_terms, gaussian_log_prob


def _vae(stage2: bool = False, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    model = VAE(NetSpec((1, 8, 8), latent_dim=3, width=32), FixedVariance(0.05))
    if stage2:
        model.with_pixel_variance(0.01)
        with torch.no_grad():  # make the head's output depend on z, so per-code variances differ
            for m in model.likelihood.head.modules():
                if isinstance(m, nn.Linear) and m.out_features == 64:
                    m.weight.normal_(0, 0.3)
    return model.eval()


def _images(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 8, 8, generator=g) * 255).round() / 255


# --------------------------------------------------------------------------- IWAE


@pytest.mark.parametrize("stage2", [False, True])
def test_iwae_k1_equals_single_sample_elbo_with_same_noise(stage2):
    model, x = _vae(stage2), _images(6)
    iw = iwae_log_likelihood(model, x, 1, generator=torch.Generator().manual_seed(3))
    e = elbo(model, x, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(iw, e["elbo_mc"], rtol=1e-5, atol=1e-4)
    # the reconstruction term is the library's own ELBO term with the same z
    ref = elbo_terms(model, x, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(e["rec"], ref["rec"])
    torch.testing.assert_close(e["kl"], ref["kl"])


@pytest.mark.parametrize("stage2", [False, True])
def test_batched_log_weights_equal_a_per_sample_loop(stage2):
    """All k x B codes decoded at once == decoding each z_k on its own (per-code variance head too)."""
    model, x, k = _vae(stage2), _images(4), 5
    log_w = log_importance_weights(model, x, k, generator=torch.Generator().manual_seed(0))  # (k, B)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = model.reparameterise(mu, logvar, g, k=k)  # (k, B, L)
        for j in range(k):
            mean, x_logvar = model.decode(z[j])
            lq = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z[j]).sum(-1)
            lp = torch.distributions.Normal(0.0, 1.0).log_prob(z[j]).sum(-1)
            torch.testing.assert_close(log_w[j], gaussian_log_prob(x, mean, x_logvar) + lp - lq, rtol=1e-5, atol=1e-4)


def test_iwae_k1_averages_to_the_analytic_elbo_and_grows_with_k():
    model, x = _vae(), _images(8)
    reps = 200
    xr = x.repeat(reps, 1, 1, 1)  # (reps B, ...)
    t = elbo(model, xr, generator=torch.Generator().manual_seed(0))
    d = (t["elbo"] - t["elbo_mc"]).reshape(reps, -1)  # analytic KL vs its one-sample estimate
    assert ((d.mean(0)).abs() < 4 * d.std(0) / math.sqrt(reps)).all()
    e = t["elbo"].reshape(reps, -1).mean(0)  # (B,) ELBO averaged over z
    means = [
        float(iwae_log_likelihood(model, xr[: 8 * 50], k, generator=torch.Generator().manual_seed(2)).mean())
        for k in (1, 10, 100)
    ]
    assert means[0] < means[1] < means[2]
    assert means[1] > float(e.mean())  # IWAE not below the ELBO on average


class LinearGaussianVAE(nn.Module):
    """p(z) = N(0, I), p(x|z) = N(W z + b, s2 I): log p(x) = log N(x; b, W W^T + s2 I) exactly.

    W has orthogonal columns, so the true posterior is diagonal: the encoder can be exact
    (``exact=True``) or deliberately off (shifted mean, inflated variance).
    """

    shape = (1, 2, 3)

    def __init__(self, exact: bool = True) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        d, latent = 6, 2
        q, _ = torch.linalg.qr(torch.randn(d, latent, generator=g, dtype=torch.float64))
        self.W = q * torch.tensor([1.5, 0.7], dtype=torch.float64)  # (D, L)
        self.b = 0.5 + 0.1 * torch.randn(d, generator=g, dtype=torch.float64)  # (D,)
        self.s2 = 0.05
        prec = torch.eye(latent, dtype=torch.float64) + self.W.T @ self.W / self.s2  # diagonal
        self.post_var = torch.diagonal(torch.linalg.inv(prec))  # (L,)
        self.exact = exact

    latent_dim = 2
    reparameterise = staticmethod(VAE.reparameterise)

    def encode(self, x):
        r = x.reshape(len(x), -1).double() - self.b  # (B, D)
        mu = (r @ self.W / self.s2) * self.post_var  # (B, L)
        logvar = self.post_var.log().expand_as(mu)
        if not self.exact:
            mu, logvar = mu + 0.7 * self.post_var.sqrt(), logvar + math.log(1.5)
        return mu.float(), logvar.float()

    def decode(self, z):
        mean = (z.double() @ self.W.T + self.b).float().reshape(len(z), *self.shape)
        return mean, torch.full((1, 1, 1, 1), math.log(self.s2))

    def log_px(self, x, prior_mean=None, prior_var=None):
        m = torch.zeros(2, dtype=torch.float64) if prior_mean is None else prior_mean
        v = torch.ones(2, dtype=torch.float64) if prior_var is None else prior_var
        cov = self.W @ torch.diag(v) @ self.W.T + self.s2 * torch.eye(6, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b + self.W @ m, cov).log_prob(x.reshape(len(x), -1).double())


def _lg_data(model, n=5, seed=3):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = z @ model.W.T + model.b + math.sqrt(model.s2) * torch.randn(n, 6, generator=g, dtype=torch.float64)
    return x.float().reshape(n, *model.shape)


def test_iwae_with_the_exact_posterior_is_exact_for_any_k():
    model = LinearGaussianVAE(exact=True)
    x = _lg_data(model)
    exact = model.log_px(x).float()
    for k in (1, 7):
        log_w = log_importance_weights(model, x, k, generator=torch.Generator().manual_seed(k))
        torch.testing.assert_close(log_w, exact.expand(k, -1), rtol=0, atol=2e-4)


def test_iwae_approaches_the_exact_log_likelihood_of_a_linear_gaussian_model():
    model = LinearGaussianVAE(exact=False)
    x = _lg_data(model, n=200)
    exact = model.log_px(x)
    gaps = []
    for k in (1, 10, 3000):
        iw = iwae_log_likelihood(model, x, k, generator=torch.Generator().manual_seed(0)).double()
        gaps.append(float((exact - iw).mean()))
    # KL(q || posterior) = 0.5 (1.5 - 1 - log 1.5 + 0.49) per latent: the k = 1 gap is about 0.58
    assert gaps[0] > 0.3  # the proposal is really off ...
    assert gaps[0] > gaps[1] > gaps[2]
    assert abs(gaps[2]) < 0.01  # ... and k = 3000 closes the gap


class _ShiftedPrior:
    """p(z) = N(m, diag v): any object with log_prob (n, L) -> (n,) serves as the prior."""

    def __init__(self, m, v):
        self.d = torch.distributions.Independent(torch.distributions.Normal(m, v.sqrt()), 1)

    def log_prob(self, z):
        return self.d.log_prob(z.double()).float()


def test_iwae_uses_any_prior_log_prob():
    model = LinearGaussianVAE(exact=False)
    x = _lg_data(model, n=50)
    m, v = torch.tensor([0.5, -0.3], dtype=torch.float64), torch.tensor([2.0, 0.5], dtype=torch.float64)
    exact = model.log_px(x, m, v)
    iw = iwae_log_likelihood(model, x, 3000, prior=_ShiftedPrior(m, v), generator=torch.Generator().manual_seed(0))
    assert abs(float((exact - iw.double()).mean())) < 0.02
    assert float((model.log_px(x) - exact).abs().mean()) > 0.3  # the prior mattered


def test_prior_with_wrong_output_shape_is_rejected():
    class Bad:
        def log_prob(self, z):
            return z.sum()

    with pytest.raises(ValueError, match="log_prob returned shape"):
        iwae_log_likelihood(_vae(), _images(2), 2, prior=Bad())


# --------------------------------------------------------------------------- dequantisation


def test_dequantise_adds_uniform_noise_within_one_bin():
    x = _images(200)
    xd = dequantise(x, generator=torch.Generator().manual_seed(0))
    u = xd - x
    assert float(u.min()) >= 0 and float(u.max()) < 1 / 256
    assert abs(float(u.mean()) - 1 / 512) < 1e-5


def test_bits_per_dim_closed_forms():
    d = 784
    assert bits_per_dim(d * math.log(256), d) == pytest.approx(0.0, abs=1e-12)  # all mass in the bin
    assert bits_per_dim(0.0, d) == pytest.approx(8.0)  # uniform on the unit cube
    assert bits_per_dim(-d * math.log(2), d) == pytest.approx(9.0)


def test_dequantised_likelihood_is_the_exact_density_of_the_noisy_data():
    """With the exact posterior the bound is exact, so it must equal log p(x + u) for the same u."""
    model = LinearGaussianVAE(exact=True)
    x = _lg_data(model)
    out = dequantised_log_likelihood(model, x, 3, generator=torch.Generator().manual_seed(5))
    u = dequantise(torch.zeros_like(x), generator=torch.Generator().manual_seed(5))
    exact = model.log_px(x + u)
    torch.testing.assert_close(out["log_likelihood"].double(), exact, rtol=0, atol=2e-4)
    torch.testing.assert_close(
        out["bits_per_dim"].double(), -(exact - 6 * math.log(256)) / (6 * math.log(2)), rtol=0, atol=1e-4
    )


# --------------------------------------------------------------------------- Frechet distance


def _random_cov(d, seed, rank=None):
    g = np.random.default_rng(seed)
    a = g.normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


def test_frechet_distance_of_identical_statistics_is_zero():
    mu, cov = np.random.default_rng(0).normal(size=40), _random_cov(40, 1)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8 * np.trace(cov))


def test_frechet_distance_1d_closed_form():
    m1, s1, m2, s2 = 0.3, 1.7, -1.1, 0.4
    expected = (m1 - m2) ** 2 + (s1 - s2) ** 2
    assert frechet_distance([m1], [[s1**2]], [m2], [[s2**2]]) == pytest.approx(expected, rel=1e-12)
    d = frechet_distance(np.array([m1, 0.0]), np.diag([s1**2, 4.0]), np.array([m2, 0.0]), np.diag([s2**2, 1.0]))
    assert d == pytest.approx(expected + 1.0, rel=1e-12)  # diagonal: sum of 1-D terms


def test_frechet_distance_matches_scipy_sqrtm_formula():
    g = np.random.default_rng(2)
    mu1, mu2 = g.normal(size=30), g.normal(size=30)
    c1, c2 = _random_cov(30, 3), _random_cov(30, 4)
    s = scipy.linalg.sqrtm(c1 @ c2)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * np.real(s))
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-9)
    assert frechet_distance(mu2, c2, mu1, c1) == pytest.approx(ref, rel=1e-9)


def test_frechet_distance_with_singular_covariances():
    """Fewer samples than features: covariances are singular. A pure shift c gives exactly ||c||^2."""
    f = np.random.default_rng(5).normal(size=(20, 64))  # rank <= 19 in 64 dims
    c = np.linspace(-1, 1, 64)
    mu1, cov1 = gaussian_statistics(f)
    mu2, cov2 = gaussian_statistics(f + c)
    d = frechet_distance(mu1, cov1, mu2, cov2)
    # rounding noise eps on the zero eigenvalues enters as sqrt(eps): about 1e-7 relative here
    assert np.isfinite(d) and d == pytest.approx(np.sum(c**2), rel=1e-6)


@pytest.mark.parametrize("n1,n2", [(7, 12), (20, 29), (29, 29)])
def test_frechet_distance_from_features_low_rank_path_agrees(n1, n2):
    """The (N1, N2) singular-value route equals the (F, F) eigen route, singular or not."""
    g = np.random.default_rng(n1)
    f1 = g.normal(size=(n1, 30)) @ g.normal(size=(30, 30))
    f2 = 0.5 + g.normal(size=(n2, 30))
    ref = frechet_distance(*gaussian_statistics(f1), *gaussian_statistics(f2))
    assert frechet_distance_features(f1, f2) == pytest.approx(ref, rel=1e-7)
    assert frechet_distance_features(torch.from_numpy(f1), f1 + 0.0) == pytest.approx(0.0, abs=1e-6 * ref)
    with pytest.raises(ValueError, match="NaN or inf"):  # named, not a LinAlgError from the SVD
        frechet_distance_features(f1 * np.nan, f2)


@pytest.mark.parametrize("n", [5, 17, 30, 45])
def test_frechet_distance_to_features_agrees_with_scipy_sqrtm(n):
    """Statistics vs features: the (N, N) route (N <= F = 30) and the fallback (N > F) equal sqrtm's formula."""
    g = np.random.default_rng(n)
    mu, cov = g.normal(size=30), _random_cov(30, 7)
    f = 0.3 + g.normal(size=(n, 30)) @ g.normal(size=(30, 30))
    mu_f, cov_f = gaussian_statistics(f)
    s = scipy.linalg.sqrtm(cov @ cov_f)
    ref = np.sum((mu - mu_f) ** 2) + np.trace(cov + cov_f - 2 * np.real(s))
    assert frechet_distance_to_features(mu, cov, f) == pytest.approx(ref, rel=1e-7)
    assert frechet_distance_to_features(mu, cov, torch.from_numpy(f).float()) == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance_to_features(mu[:4], cov, f)
    with pytest.raises(ValueError, match="NaN or inf"):
        frechet_distance_to_features(mu, cov, f * np.nan)


def test_gaussian_statistics_and_input_errors():
    f = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    mu, cov = gaussian_statistics(f)
    np.testing.assert_allclose(cov, np.cov(f.double().numpy(), rowvar=False), rtol=1e-12)
    np.testing.assert_allclose(mu, f.double().mean(0).numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(mu, cov, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN or inf"):
        frechet_distance(mu, cov * np.nan, mu, cov)
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_statistics(f[:1])


# --------------------------------------------------------------------------- calibration


def _heteroscedastic(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.rand(n, 1, 6, 6, generator=g)
    sigma2 = 0.001 + 0.05 * torch.rand(n, 1, 6, 6, generator=g)
    x = mean + sigma2.sqrt() * torch.randn(n, 1, 6, 6, generator=g)
    return x, mean, sigma2


def test_calibration_of_the_true_variance():
    x, mean, sigma2 = _heteroscedastic()
    glob = float(sigma2.mean())
    c = calibration(x, mean, sigma2.log(), sigma2_global=glob)
    normal = torch.distributions.Normal
    ref_pred = -normal(mean.double(), sigma2.double().sqrt()).log_prob(x.double()).sum((1, 2, 3)).mean()
    ref_glob = -normal(mean.double(), math.sqrt(glob)).log_prob(x.double()).sum((1, 2, 3)).mean()
    assert c["nll_predicted"] == pytest.approx(float(ref_pred), rel=1e-9)
    assert c["nll_global"] == pytest.approx(float(ref_glob), rel=1e-9)
    assert c["nll_predicted"] < c["nll_oracle_global"] <= c["nll_global"]
    assert c["spearman"] > 0.2
    assert c["mse"] == pytest.approx(float((x - mean).double().pow(2).mean()))
    s = [b["sigma2"] for b in c["bins"]]
    assert s == sorted(s) and sum(b["n_pixels"] for b in c["bins"]) == x.numel()
    for b in c["bins"]:  # calibrated: error matches the prediction per bin
        assert b["squared_error"] == pytest.approx(b["sigma2"], rel=0.1)


def test_calibration_of_a_shuffled_or_global_variance():
    x, mean, sigma2 = _heteroscedastic()
    true = calibration(x, mean, sigma2.log(), sigma2_global=0.02)
    perm = torch.randperm(sigma2.numel(), generator=torch.Generator().manual_seed(0))
    shuffled = calibration(x, mean, sigma2.flatten()[perm].reshape(sigma2.shape).log(), sigma2_global=0.02)
    assert abs(shuffled["spearman"]) < 0.03
    assert shuffled["nll_predicted"] > true["nll_predicted"]
    flat = calibration(x, mean, torch.full((1, 1, 1, 1), math.log(0.02)), sigma2_global=0.02)
    assert flat["spearman"] is None
    assert flat["nll_predicted"] == pytest.approx(flat["nll_global"])
    with pytest.raises(ValueError, match="must match"):
        calibration(x, mean[:3], sigma2.log(), sigma2_global=0.02)


# --------------------------------------------------------------------------- evaluate / reconstruct / CLI


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from balanced_vae.data import load_dataset
    from balanced_vae.train import train

    data = load_dataset("digits")
    cfg = TrainConfig(dataset="digits", epochs=2, min_epochs=1, batch_size=128, seed=0, n_train=500)
    run = train(cfg, tmp_path_factory.mktemp("runs") / "run", data=data, progress=False)
    return run, data


def test_evaluate_run_writes_every_number_with_its_protocol(digits_run):
    from balanced_vae.evaluate import evaluate_run
    from balanced_vae.runs import load_run
    from balanced_vae.train import evaluate_elbo

    run_dir, data = digits_run
    doc = evaluate_run(
        run_dir,
        metrics="elbo,iwae,kl,calibration",
        sampler="gmm",
        components=3,
        n_iwae=50,
        k=5,
        n_kl=200,
        kl_runs=2,
        data=data,
        progress=False,
    )
    saved = json.loads((run_dir / "results.json").read_text())
    assert doc.pop("path") == str(run_dir / "results.json")
    assert saved == json.loads(json.dumps(doc))
    m = saved["metrics"]
    assert set(m) == {"elbo", "iwae", "kl", "calibration"}
    for entry in m.values():
        assert entry["provenance"]["version"] and entry["provenance"]["git_commit"]
        assert len(entry["provenance"]["checkpoint_sha256"]) == 64
        assert entry["protocol"]["dataset"] == "digits"
    # the test ELBO is the library's own evaluation with one z per image
    model = load_run(run_dir).model
    ref = evaluate_elbo(model, data.x_test, seed=0)
    assert m["elbo"]["values"]["elbo"]["mean"] == pytest.approx(ref["elbo"], rel=1e-5)
    assert m["elbo"]["protocol"]["n"] == len(data.x_test)
    iw = m["iwae"]
    assert iw["protocol"]["k"] == 5 and iw["protocol"]["n"] == 50 and iw["protocol"]["gmm"]["K"] == 3
    assert set(iw["values"]) == {"prior", "gmm_K3"}
    ll = iwae_log_likelihood(model, data.x_test[:50], 5, generator=torch.Generator().manual_seed(0))
    assert iw["values"]["prior"]["log_likelihood"]["mean"] == pytest.approx(float(ll.mean()), rel=1e-5)
    assert (
        m["kl"]["values"]["KL(q_GMM || p)"]["runs"] == 2
        and "KL(q_agg || q_GMM)" in m["kl"]["values"]
        and m["kl"]["protocol"]["gmm"]["fit_on"] == "sample"
    )
    assert m["calibration"]["values"]["spearman"] is not None  # a two-stage run has a variance head
    # a second call adds metrics without dropping the first ones
    s1 = evaluate_run(run_dir, metrics=["elbo", "calibration"], which="stage1.pt", data=data, progress=False)
    assert s1["path"] == str(run_dir / "results_stage1.json") and s1["stage"] == 1
    assert set(json.loads((run_dir / "results_stage1.json").read_text())["metrics"]) == {"elbo", "calibration"}
    assert s1["metrics"]["calibration"]["values"]["spearman"] is None  # stage 1: one global sigma^2
    assert s1["metrics"]["elbo"]["values"]["elbo"]["mean"] != m["elbo"]["values"]["elbo"]["mean"]
    evaluate_run(run_dir, metrics="elbo", seed=1, data=data, progress=False)
    again = json.loads((run_dir / "results.json").read_text())["metrics"]
    assert set(again) == set(m) and again["elbo"]["protocol"]["seed"] == 1


def test_cli_evaluate_and_reconstruct(digits_run, tmp_path, capsys, monkeypatch):
    from balanced_vae.cli import main

    run_dir, _ = digits_run
    out = tmp_path / "r.json"
    assert (
        main(["evaluate", str(run_dir), "--metrics", "elbo,iwae", "--n-iwae", "20", "--k", "3", "--out", str(out)]) == 0
    )
    assert set(json.loads(out.read_text())["metrics"]) == {"elbo", "iwae"}
    assert main(["reconstruct", str(run_dir), "--n", "8", "--out", str(tmp_path / "fig"), "--error"]) == 0
    png = tmp_path / "fig" / "reconstructions.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate", str(run_dir), "--metrics", "elbo,bogus"]) == 2
    assert main(["evaluate", str(run_dir), "--metrics", "iwae", "--n-iwae", "100000"]) == 2
    assert main(["reconstruct", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "n_iwae=100000" in err and "no such run folder" in err


def test_bits_per_dim_use_the_data_sets_levels_and_are_absent_without_them(tmp_path):
    """Issue 15.7: digits (17 levels) get bits/dim over 17 levels; unquantised data get none."""
    import dataclasses

    from balanced_vae.config import TrainConfig
    from balanced_vae.data import load_dataset
    from balanced_vae.evaluate import evaluate_run
    from balanced_vae.train import train

    data = load_dataset("digits")
    run = train(TrainConfig(method="vae", epochs=1, n_train=200, n_test=50), tmp_path / "r", data=data, progress=False)
    doc = evaluate_run(run, metrics="iwae", n_iwae=20, k=2, data=data, progress=False)
    assert doc["metrics"]["iwae"]["protocol"]["levels"] == 17
    assert "bits_per_dim" in doc["metrics"]["iwae"]["values"]["prior"]
    doc = evaluate_run(run, metrics="iwae", n_iwae=20, k=2, data=dataclasses.replace(data, levels=None), progress=False)
    assert "bits_per_dim" not in doc["metrics"]["iwae"]["values"]["prior"]
    assert "not quantised" in doc["metrics"]["iwae"]["protocol"]["bits_per_dim"]
