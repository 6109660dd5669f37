"""Samplers (Eq. 12-13), Monte-Carlo KL gaps, latent density plots and the K ablation (Section 3.5)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from balanced_vae.cli import main
from balanced_vae.latent import gmm_ablation, latent_density_grid, plot_latent_densities, write_samples
from balanced_vae.model import encode_dataset
from balanced_vae.runs import fit_gmm_for_run, load_run, make_sampler, model_sha256
from balanced_vae.samplers import AggregatePosteriorSampler, GaussianMixtureSampler, PriorSampler, kl_monte_carlo

TRUE_WEIGHTS = np.array([0.5, 0.3, 0.2])
TRUE_MEANS = np.array([[-4.0, 0.0], [3.0, 3.0], [3.0, -3.0]])
TRUE_COVS = np.array([[[1.0, 0.3], [0.3, 0.5]], [[0.4, 0.0], [0.0, 0.4]], [[0.6, -0.2], [-0.2, 0.3]]])


def _three_blobs(n: int, seed: int) -> np.ndarray:
    """n draws from the known 3-component mixture above."""
    rng = np.random.default_rng(seed)
    k = rng.choice(3, size=n, p=TRUE_WEIGHTS)
    chol = np.linalg.cholesky(TRUE_COVS)
    return TRUE_MEANS[k] + np.einsum("nij,nj->ni", chol[k], rng.standard_normal((n, 2)))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are small: one intra-op thread avoids spin-waiting on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(_three_blobs(3000, 0)), torch.tensor(_three_blobs(1000, 1))


@pytest.fixture(scope="module")
def gmm3(blobs) -> GaussianMixtureSampler:
    return GaussianMixtureSampler(3, random_state=0).fit(blobs[0])


# ---------------------------------------------------------------------- prior and aggregate posterior


def test_prior_log_prob_matches_torch_distributions():
    z = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    ref = Independent(Normal(torch.zeros(4), torch.ones(4)), 1).log_prob(z)
    torch.testing.assert_close(PriorSampler(4).log_prob(z), ref)
    assert PriorSampler(4).sample(7, generator=torch.Generator().manual_seed(0)).shape == (7, 4)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096])
def test_aggregate_log_prob_equals_direct_logsumexp(chunk_size):
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(60, 3, generator=g) * 2, torch.randn(60, 3, generator=g) - 1.0
    z = torch.randn(40, 3, generator=g) * 2
    comps = Independent(Normal(mu.double(), (0.5 * logvar.double()).exp()), 1)
    direct = torch.logsumexp(comps.log_prob(z.double()[:, None, :]), dim=1) - math.log(60)  # (40,)
    got = AggregatePosteriorSampler(mu, logvar, chunk_size=chunk_size).log_prob(z)
    assert got.shape == (40,) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), direct, rtol=1e-6, atol=1e-5)


def test_aggregate_samples_have_the_mixture_moments():
    g = torch.Generator().manual_seed(2)
    mu, logvar = torch.randn(5, 2, generator=g) * 3, torch.randn(5, 2, generator=g)
    z = AggregatePosteriorSampler(mu, logvar).sample(200_000, generator=torch.Generator().manual_seed(0))
    mean = mu.mean(0)  # law of total expectation
    var = logvar.exp().mean(0) + mu.pow(2).mean(0) - mean.pow(2)  # law of total variance
    torch.testing.assert_close(z.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(z.var(0), var, rtol=0.02, atol=0.02)


# ---------------------------------------------------------------------- Gaussian mixture


def test_gmm_recovers_known_three_component_mixture(gmm3):
    order = np.argsort(gmm3.means_[:, 0].numpy() + 0.1 * gmm3.means_[:, 1].numpy())
    true_order = np.argsort(TRUE_MEANS[:, 0] + 0.1 * TRUE_MEANS[:, 1])
    means, weights = gmm3.means_.numpy()[order], gmm3.weights_.numpy()[order]
    np.testing.assert_allclose(means, TRUE_MEANS[true_order], atol=0.1)
    np.testing.assert_allclose(weights, TRUE_WEIGHTS[true_order], atol=0.03)
    np.testing.assert_allclose(gmm3.covariances_.numpy()[order], TRUE_COVS[true_order], atol=0.1)
    assert gmm3.converged_ and gmm3.n_features_in_ == 2 and gmm3.n_fit_ == 3000


@pytest.mark.parametrize("covariance_type", ["full", "diag", "tied", "spherical"])
def test_gmm_log_prob_agrees_with_sklearn_score_samples(blobs, covariance_type):
    x, x_new = blobs
    s = GaussianMixtureSampler(4, covariance_type=covariance_type, random_state=0).fit(x)
    ref = GaussianMixture(
        4, covariance_type=covariance_type, random_state=0, max_iter=s.max_iter, tol=s.tol_, reg_covar=s.reg_covar_
    ).fit(x.numpy())
    assert s.reg_covar_ == pytest.approx(s.reg_covar * x.numpy().var(0).mean())  # relative to the codes' variance
    np.testing.assert_allclose(s.log_prob(x_new).numpy(), ref.score_samples(x_new.numpy()), rtol=1e-5, atol=1e-5)
    assert s.score(x_new) == pytest.approx(ref.score(x_new.numpy()), abs=1e-5)


def test_gmm_sampling_uses_the_callers_generator(gmm3):
    state = torch.get_rng_state()
    a = gmm3.sample(500, generator=torch.Generator().manual_seed(3))
    b = gmm3.sample(500, generator=torch.Generator().manual_seed(3))
    c = gmm3.sample(500, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), state), "sampling with a generator must not touch the global RNG"
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    z = gmm3.sample(100_000, generator=torch.Generator().manual_seed(5)).double()
    w, m, cov = gmm3.weights_, gmm3.means_, gmm3.covariances_
    mean = (w[:, None] * m).sum(0)
    second = (w[:, None, None] * (cov + m[:, :, None] * m[:, None, :])).sum(0)
    torch.testing.assert_close(z.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), second - torch.outer(mean, mean), atol=0.1, rtol=0.02)


def test_fixed_generator_gives_identical_samples_for_every_sampler():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(30, 3, generator=g), torch.randn(30, 3, generator=g)
    for s in (
        PriorSampler(3),
        AggregatePosteriorSampler(mu, logvar),
        GaussianMixtureSampler(2, random_state=0).fit(mu),
    ):
        a = s.sample(64, generator=torch.Generator().manual_seed(9))
        b = s.sample(64, generator=torch.Generator().manual_seed(9))
        assert torch.equal(a, b) and a.shape == (64, 3)
        assert s.log_prob(a).shape == (64,) and torch.isfinite(s.log_prob(a)).all()


def test_save_and_reload_gives_identical_log_prob_and_samples(gmm3, blobs, tmp_path):
    folder = gmm3.save(tmp_path / "gmm", extra={"note": "test"})
    with np.load(folder / "gmm.npz", allow_pickle=False) as arrays:
        assert sorted(arrays.files) == ["covariances", "means", "weights"]
    meta = json.loads((folder / "gmm.json").read_text())
    assert meta["n_components"] == 3 and meta["fit_on"] == "mean" and meta["source"] == {"note": "test"}
    back = GaussianMixtureSampler.load(folder)
    z = blobs[1]
    assert torch.equal(back.log_prob(z), gmm3.log_prob(z))
    assert torch.equal(
        back.sample(100, generator=torch.Generator().manual_seed(0)),
        gmm3.sample(100, generator=torch.Generator().manual_seed(0)),
    )
    assert (back.converged_, back.n_iter_, back.n_fit_) == (gmm3.converged_, gmm3.n_iter_, gmm3.n_fit_)


def test_load_rejects_missing_and_mismatched_files(gmm3, tmp_path):
    with pytest.raises(FileNotFoundError, match="gmm.json"):
        GaussianMixtureSampler.load(tmp_path / "nothing")
    folder = gmm3.save(tmp_path / "a")
    GaussianMixtureSampler(2).fit(torch.randn(50, 2)).save(tmp_path / "b")
    (folder / "gmm.npz").write_bytes((tmp_path / "b" / "gmm.npz").read_bytes())
    with pytest.raises(ValueError, match="checksum"):
        GaussianMixtureSampler.load(folder)


def test_gmm_errors_name_the_shape_and_the_fix(gmm3):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="fit"):
        GaussianMixtureSampler(3).sample(4)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        gmm3.log_prob(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="at least K"):
        GaussianMixtureSampler(10).fit(torch.randn(5, 2))
    with pytest.raises(ValueError, match="needs logvar"):
        GaussianMixtureSampler(2, fit_on="sample").fit(torch.randn(50, 2))
    with pytest.raises(ValueError, match="fit_on"):
        GaussianMixtureSampler(2, fit_on="codes").fit(torch.randn(50, 2))


def test_fit_on_sample_keeps_unused_dimensions_at_unit_variance():
    """An unused latent dimension (mu = 0, logvar = 0) is N(0, 1) under q(z); a fit on means squeezes it."""
    g = torch.Generator().manual_seed(0)
    mu = torch.stack([torch.randn(4000, generator=g) * 2, torch.zeros(4000)], 1)  # dim 2 unused
    logvar = torch.stack([torch.full((4000,), -4.0), torch.zeros(4000)], 1)
    on_samples = GaussianMixtureSampler(1, fit_on="sample").fit(mu, logvar, generator=torch.Generator().manual_seed(1))
    on_means = GaussianMixtureSampler(1, fit_on="mean").fit(mu, logvar)
    assert on_samples.covariances_[0, 1, 1] == pytest.approx(1.0, abs=0.06)
    assert on_means.covariances_[0, 1, 1] < 1e-5
    again = GaussianMixtureSampler(1, fit_on="sample").fit(mu, logvar, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.means_, on_samples.means_)


# ---------------------------------------------------------------------- Monte-Carlo KL


def test_kl_monte_carlo_matches_closed_form_for_a_diagonal_gaussian():
    mu, logvar = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[-1.0, 0.5, 0.0]])
    q = AggregatePosteriorSampler(mu, logvar)  # one component: a single Gaussian
    exact = float(
        kl_divergence(
            Independent(Normal(mu[0], (0.5 * logvar[0]).exp()), 1),
            Independent(Normal(torch.zeros(3), torch.ones(3)), 1),
        )
    )
    r = kl_monte_carlo(q, PriorSampler(3), n=10_000, runs=10, seed=0)
    assert (r["n"], r["runs"], r["seed"], len(r["estimates"])) == (10_000, 10, 0, 10)
    assert r["sem"] == pytest.approx(r["std"] / math.sqrt(10))
    assert abs(r["mean"] - exact) < 3 * r["sem"], (r, exact)
    assert r["std"] > 0


def test_kl_monte_carlo_matches_closed_form_for_a_full_covariance_gaussian():
    cov = torch.tensor([[1.5, 0.6], [0.6, 0.5]], dtype=torch.float64)
    mean = torch.tensor([1.0, -0.5], dtype=torch.float64)
    q = GaussianMixtureSampler.from_params(np.ones(1), mean[None].numpy(), cov[None].numpy())
    exact = float(
        kl_divergence(MultivariateNormal(mean, cov), MultivariateNormal(torch.zeros(2), torch.eye(2).double()))
    )
    r = kl_monte_carlo(q, PriorSampler(2), n=10_000, runs=10, seed=3)
    assert abs(r["mean"] - exact) < 3 * r["sem"], (r, exact)


# ---------------------------------------------------------------------- density grid and ablation


def test_latent_density_grid_is_normalised_and_the_plot_is_written(gmm3, tmp_path):
    g = torch.Generator().manual_seed(0)
    agg = AggregatePosteriorSampler(torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g) * 0.3 - 1)
    samplers = {"prior": PriorSampler(2), "aggregate": agg, "gmm": gmm3}
    axis, dens = latent_density_grid(samplers, lim=9.0, resolution=201)
    cell = (axis[1] - axis[0]) ** 2
    for name, d in dens.items():
        assert d.shape == (201, 201)
        assert np.exp(d).sum() * cell == pytest.approx(1.0, abs=0.01), name
    i, j = 100 + 30, 100 - 60  # row = z2, column = z1
    z = torch.tensor([[axis[j], axis[i]]], dtype=torch.float32)
    assert dens["gmm"][i, j] == pytest.approx(float(gmm3.log_prob(z)), abs=1e-4)
    path = plot_latent_densities(samplers, tmp_path / "lat.png", lim=9.0, resolution=60)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="latent-dim 2"):
        latent_density_grid({"prior": PriorSampler(3)})


def test_gmm_ablation_scores_held_out_codes_like_sklearn(blobs):
    x, x_new = blobs
    rows = gmm_ablation(x, x_new, [1, 3, 5], random_state=0)
    assert [r["K"] for r in rows] == [1, 3, 5]
    for r in rows:
        ref = GaussianMixture(r["K"], random_state=0, max_iter=200, reg_covar=1e-6 * x.numpy().var(0).mean()).fit(
            x.numpy()
        )  # reg_covar is relative
        assert r["heldout_ll"] == pytest.approx(ref.score(x_new.numpy()), abs=1e-5)
        assert r["n_iter"] == ref.n_iter_
    assert rows[1]["heldout_ll"] > rows[0]["heldout_ll"] + 0.5  # the data have 3 components


# ---------------------------------------------------------------------- a short real MNIST run


@pytest.fixture(scope="module")
def mnist(data_dir):
    from balanced_vae.data import load_dataset

    return data_dir, load_dataset("mnist", data_dir=data_dir)


@pytest.fixture(scope="module")
def mnist_run(mnist, tmp_path_factory):
    """Two stages of one epoch on 600 MNIST images with 2-D latents (a few seconds)."""
    from balanced_vae.config import TrainConfig
    from balanced_vae.train import train

    root, data = mnist
    config = TrainConfig(
        dataset="mnist",
        data_dir=str(root),
        n_train=600,
        n_test=100,
        epochs=1,
        min_epochs=1,
        stages=2,
        latent_dim=2,
        width=8,
        batch_size=100,
        seed=0,
    )
    return train(config, tmp_path_factory.mktemp("run") / "mnist", data=data, progress=False)


def test_gmm_for_run_is_cached_beside_the_checkpoint(mnist, mnist_run, monkeypatch):
    data = mnist[1]
    s = fit_gmm_for_run(mnist_run, 8, data=data)
    folder = load_run(mnist_run).gmm_dir(8)
    assert folder == mnist_run / "gmm_K8" and (folder / "gmm.npz").is_file()
    assert s.n_fit_ == 600 and s.latent_dim == 2 and s.source["n_codes"] == 600

    def no_refit(*a, **k):
        raise AssertionError("a cached GMM must be reloaded, not refitted")

    with monkeypatch.context() as m:
        m.setattr(GaussianMixtureSampler, "fit", no_refit)
        again = make_sampler("gmm", mnist_run, components=8, data=data)
    z = s.sample(50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.log_prob(z), s.log_prob(z))
    refit = fit_gmm_for_run(mnist_run, 8, data=data, refit=True)
    assert torch.allclose(refit.log_prob(z), s.log_prob(z), atol=1e-5)  # seeded EM: the same fit


def test_decoded_gmm_samples_have_the_datas_shape_and_range(mnist, mnist_run, tmp_path):
    data = mnist[1]
    s = write_samples(mnist_run, tmp_path, sampler="gmm", components=8, n=16, seed=0, compare=True, data=data)
    means = np.load(tmp_path / "gmm_means.npy", allow_pickle=False)
    sigma = np.load(tmp_path / "gmm_sigma.npy", allow_pickle=False)
    z = np.load(tmp_path / "gmm_z.npy", allow_pickle=False)
    assert means.shape == (16, *data.shape) == sigma.shape and z.shape == (16, 2)
    assert means.min() >= 0 and means.max() <= 1 and means.std() > 0
    assert np.isfinite(sigma).all() and sigma.min() > 0
    assert s["per_pixel_sigma"] and s["stage"] == 2 and s["components"] == 8
    for f in ("gmm_means.png", "gmm_sigma.png", "compare_prior_gmm.png", "gmm_samples.json"):
        assert (tmp_path / f).is_file(), f
    # the written codes are the GMM's samples under the same seed, decoded by the run's model
    gmm = GaussianMixtureSampler.load(load_run(mnist_run).gmm_dir(8))
    np.testing.assert_array_equal(z, gmm.sample(16, generator=torch.Generator().manual_seed(0)).numpy())


def test_sample_grids_show_at_most_256_samples_and_the_arrays_keep_all(mnist, mnist_run, tmp_path):
    from PIL import Image

    from balanced_vae.latent import GRID_MAX
    from balanced_vae.plots import grid

    s = write_samples(mnist_run, tmp_path, sampler="prior", n=300, seed=0, data=mnist[1])
    means = np.load(tmp_path / "prior_means.npy", allow_pickle=False)
    assert means.shape[0] == 300 and np.load(tmp_path / "prior_sigma.npy").shape[0] == 300
    assert s["n"] == 300 and s["n_grid"] == GRID_MAX == 256
    with Image.open(tmp_path / "prior_means.png") as img:  # a 16 x 16 grid, upscaled 3x
        assert img.size == tuple(3 * v for v in grid(torch.from_numpy(means[:256]), 16).shape[1::-1])


def test_stage1_run_reports_its_global_sigma_and_gets_its_own_gmm(mnist, mnist_run, tmp_path):
    data = mnist[1]
    stage1 = load_run(mnist_run, which="stage1.pt")
    s = write_samples(stage1, tmp_path, sampler="gmm", components=4, n=9, data=data)
    assert not s["per_pixel_sigma"] and s["stage"] == 1
    assert s["sigma2_global"] == pytest.approx(stage1.checkpoint["sigma2_star"])
    assert not (tmp_path / "gmm_sigma.png").exists() and not (tmp_path / "gmm_sigma.npy").exists()
    # the stage-1 GMM is fitted in memory on the stage-1 codes: the cache beside the run belongs to checkpoint.pt
    own = GaussianMixtureSampler(4).fit(*encode_dataset(stage1.model, data.x_train[:600]))
    z = np.load(tmp_path / "gmm_z.npy", allow_pickle=False)
    np.testing.assert_array_equal(z, own.sample(9, generator=torch.Generator().manual_seed(0)).numpy())
    folder = load_run(mnist_run).gmm_dir(4)
    assert not folder.exists() or GaussianMixtureSampler.load(folder).source["model_sha256"] != model_sha256(
        stage1.model
    )
    final = fit_gmm_for_run(mnist_run, 4, data=data)  # the final weights' own fit, cached
    assert final.source["stage"] == 2 and final.source["model_sha256"] == model_sha256(load_run(mnist_run).model)


def test_encode_dataset_matches_the_encoder(mnist, mnist_run):
    run = load_run(mnist_run)
    x = mnist[1].x_train[:250]
    mu, logvar = encode_dataset(run.model, x, batch_size=100)
    ref_mu, ref_logvar = run.model.encode(x)
    torch.testing.assert_close(mu, ref_mu.detach())
    torch.testing.assert_close(logvar, ref_logvar.detach())


def test_cli_sample_kl_and_latent_plot(mnist, mnist_run, tmp_path, capsys):
    root = str(mnist[0])
    assert (
        main(
            [
                "sample",
                str(mnist_run),
                "--sampler",
                "prior",
                "--n",
                "9",
                "--out",
                str(tmp_path / "s"),
                "--data-dir",
                root,
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "s" / "prior_means.npy").shape == (9, 1, 28, 28)
    assert (
        main(
            [
                "kl",
                str(mnist_run),
                "--components",
                "8",
                "--n",
                "500",
                "--runs",
                "3",
                "--out",
                str(tmp_path / "kl.json"),
                "--data-dir",
                root,
            ]
        )
        == 0
    )
    doc = json.loads((tmp_path / "kl.json").read_text())
    assert doc["protocol"]["n"] == 500 and doc["protocol"]["runs"] == 3 and doc["protocol"]["K"] == 8
    assert doc["protocol"]["seed"] == 0 and len(doc["kl_aggregate"]["estimates"]) == 3
    assert doc["kl_gmm"]["mean"] > 0 and doc["kl_aggregate"]["mean"] > 0
    assert "KL(q_GMM || p)" in capsys.readouterr().out
    assert (
        main(
            [
                "latent-plot",
                str(mnist_run),
                "--components",
                "8",
                "--resolution",
                "40",
                "--out",
                str(tmp_path / "lat.png"),
                "--data-dir",
                root,
            ]
        )
        == 0
    )
    assert (tmp_path / "lat.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        main(["kl", str(mnist_run), "--ablation", "1", "4", "--out", str(tmp_path / "abl.json"), "--data-dir", root])
        == 0
    )
    rows = json.loads((tmp_path / "abl.json").read_text())["rows"]
    assert [r["K"] for r in rows] == [1, 4] and all(math.isfinite(r["heldout_ll"]) for r in rows)
    assert main(["sample", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2


def test_gmm_fitted_on_samples_recovers_an_aggregate_posterior_equal_to_the_prior():
    """Issue 15.2: q_agg = N(0, I) exactly (mu ~ N(0, 1 - s^2), posterior variance s^2), so
    KL(q_agg || p) = 0. A GMM of z ~ q(z|x) finds it; a GMM of the means mu(x) does not."""
    from balanced_vae.samplers import GaussianMixtureSampler, PriorSampler, kl_monte_carlo

    g = torch.Generator().manual_seed(0)
    n, L, s2 = 20_000, 2, 0.6
    mu = torch.randn(n, L, generator=g) * (1 - s2) ** 0.5
    logvar = torch.full((n, L), float(np.log(s2)))
    prior = PriorSampler(L)
    on_samples = GaussianMixtureSampler(4, fit_on="sample", random_state=0).fit(mu, logvar)
    on_means = GaussianMixtureSampler(4, fit_on="mean", random_state=0).fit(mu, logvar)
    kl_s = kl_monte_carlo(on_samples, prior, n=20_000, runs=3)["mean"]
    kl_m = kl_monte_carlo(on_means, prior, n=20_000, runs=3)["mean"]
    assert abs(kl_s) < 0.02  # close to the true 0
    assert kl_m > 0.15  # the fit on means is a narrower distribution (true KL of N(0, 0.4 I): 0.32)


def test_gmm_fit_regularises_more_when_em_fails_and_refuses_degenerate_codes(monkeypatch):
    """Issue 13.4: a K=500-style failure of EM (ill-defined covariance) is retried with a larger
    reg_covar, recorded in ``reg_covar_``; codes with fewer distinct points than K get a clear error."""
    from sklearn.mixture import GaussianMixture

    from balanced_vae.samplers import GaussianMixtureSampler

    real_fit, calls = GaussianMixture.fit, []

    def flaky(self, X, y=None):
        calls.append(self.reg_covar)
        if self.reg_covar < 1e-5:
            raise ValueError(
                "Fitting the mixture model failed because some components have ill-defined "
                "empirical covariance (for instance caused by singleton or collapsed samples)."
            )
        return real_fit(self, X, y)

    monkeypatch.setattr(GaussianMixture, "fit", flaky)
    mu = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    s = GaussianMixtureSampler(4, random_state=0).fit(mu)
    scale = mu.double().numpy().var(0).mean()  # reg_covar is in units of the codes' variance
    assert calls == pytest.approx([1e-6 * scale, 1e-5 * scale]) and s.reg_covar_ == pytest.approx(1e-5 * scale)
    with pytest.raises(ValueError, match="distinct points"):
        GaussianMixtureSampler(8).fit(torch.zeros(50, 2))


# ---------------------------------------------------------------------- issue 13.4: K=500-style fits


def _vae_like_codes(n_clusters: int, per: int, seed: int, collapsed: int = 3, active: int = 5) -> np.ndarray:
    """Codes shaped like VAE posterior means: ``n_clusters`` anisotropic blobs on ``active``
    dimensions and ``collapsed`` unused dimensions with standard deviation 1e-5 (float32 values)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, active)) * 3
    a = rng.standard_normal((n_clusters, active, active)) * 0.3
    lab = np.repeat(np.arange(n_clusters), per)
    x = centres[lab] + np.einsum("nij,nj->ni", a[lab], rng.standard_normal((len(lab), active)))
    return np.concatenate([x, 1e-5 * rng.standard_normal((len(lab), collapsed))], 1).astype(np.float32)


@pytest.mark.parametrize("init_params,n_init", [("kmeans", 1), ("k-means++", 1), ("k-means++", 2)])
def test_torch_em_is_sklearns_em_on_collapsed_codes(init_params, n_init):
    """The large-K fit (torch EM) is scikit-learn's GaussianMixture: same init, same iterations,
    same parameters and held-out log-likelihood, on codes with collapsed dimensions."""
    x = torch.from_numpy(_vae_like_codes(12, 60, seed=0))
    held = torch.from_numpy(_vae_like_codes(12, 20, seed=1))
    s = GaussianMixtureSampler(12, backend="torch", init_params=init_params, n_init=n_init, random_state=3).fit(x)
    ref = GaussianMixture(
        12,
        init_params=init_params,
        n_init=n_init,
        random_state=3,
        reg_covar=s.reg_covar_,
        max_iter=s.max_iter,
        tol=s.tol_,
    ).fit(x.double().numpy())
    assert s.backend_ == "torch" and s.n_iter_ == ref.n_iter_ and s.converged_ == ref.converged_
    np.testing.assert_allclose(s.means_.numpy(), ref.means_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(s.covariances_.numpy(), ref.covariances_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(s.weights_.numpy(), ref.weights_, rtol=0, atol=1e-10)
    assert s.lower_bound_ == pytest.approx(ref.lower_bound_, abs=1e-8)
    np.testing.assert_allclose(
        s.log_prob(held).numpy(), ref.score_samples(held.double().numpy()), rtol=1e-6, atol=1e-4
    )  # log_prob returns float32
    assert s.score(held) == pytest.approx(ref.score(held.double().numpy()), abs=1e-4)


def test_large_k_defaults_torch_em_kmeanspp_and_tol_1e2():
    x = torch.from_numpy(_vae_like_codes(25, 12, seed=2))  # 300 distinct codes
    large, small = GaussianMixtureSampler(100).fit(x), GaussianMixtureSampler(4).fit(x)
    assert (large.backend_, large.init_params_, large.tol_) == ("torch", "k-means++", 1e-2)
    assert (small.backend_, small.init_params_, small.tol_) == ("sklearn", "kmeans", 1e-3)
    diag = GaussianMixtureSampler(100, covariance_type="diag", tol=1e-3).fit(x)
    assert (diag.backend_, diag.init_params_, diag.tol_) == ("sklearn", "k-means++", 1e-3)
    with pytest.raises(ValueError, match="full covariances only"):
        GaussianMixtureSampler(4, covariance_type="diag", backend="torch").fit(x)
    with pytest.raises(ValueError, match="init_params"):
        GaussianMixtureSampler(4, init_params="random").fit(x)


@pytest.mark.parametrize("backend,k", [("sklearn", 6), ("torch", 6)])
def test_gmm_fit_does_not_depend_on_the_codes_scale(backend, k):
    """Ground truth: the maximum-likelihood mixture of s x is s times the one of x, so held-out
    log q(s z) = log q(z) - L log s. With an absolute reg_covar (1e-6) codes of scale 1e-3 (an
    encoder with small means) were squeezed; reg_covar is now relative to the codes' variance.
    s is a power of 2, so every step of the fit scales exactly."""
    x = torch.from_numpy(_vae_like_codes(6, 80, seed=4))
    held = torch.from_numpy(_vae_like_codes(6, 30, seed=5))
    base = GaussianMixtureSampler(k, backend=backend).fit(x)
    for s in (2.0**-10, 2.0**10):
        fit = GaussianMixtureSampler(k, backend=backend).fit(x * s)
        assert fit.n_iter_ == base.n_iter_
        assert fit.score(held * s) + x.shape[1] * math.log(s) == pytest.approx(base.score(held), abs=1e-4)
        assert fit.reg_covar_ == pytest.approx(base.reg_covar_ * s * s)


@pytest.mark.parametrize("backend", ["sklearn", "torch"])
def test_gmm_fit_on_duplicated_collapsed_codes_recovers_the_points(backend):
    """40 distinct codes, each repeated 5 times, 3 of 8 dimensions collapsed (std 1e-5): K = 40
    fits without failing and puts one component of weight 1/40 on each distinct code."""
    distinct = _vae_like_codes(40, 1, seed=6)  # (40, 8)
    x = torch.from_numpy(np.repeat(distinct, 5, axis=0))
    s = GaussianMixtureSampler(40, backend=backend, init_params="k-means++").fit(x)
    order = np.lexsort(s.means_.numpy().T[::-1])
    truth = distinct[np.lexsort(distinct.T[::-1].astype(np.float64))]
    np.testing.assert_allclose(s.means_.numpy()[order], truth, rtol=0, atol=1e-6)
    np.testing.assert_allclose(s.weights_.numpy(), 1 / 40, atol=1e-9)
    assert torch.isfinite(s.log_prob(x)).all()


@pytest.mark.parametrize("backend", ["sklearn", "torch"])
def test_gmm_fit_without_regularisation_on_duplicates_repairs_instead_of_failing(backend, monkeypatch, caplog):
    """reg_covar=0 on duplicated codes: every covariance is exactly 0. scikit-learn fails and the
    fit retries from 0 with more regularisation (before: 0 x 10 = 0, forever); torch EM adds a
    little to the failing diagonals and says so."""
    real_fit, calls = GaussianMixture.fit, []

    def counted(self, X, y=None):
        calls.append(self.reg_covar)
        if len(calls) > 20:
            raise RuntimeError("the reg_covar retries do not end")
        return real_fit(self, X, y)

    monkeypatch.setattr(GaussianMixture, "fit", counted)
    x = torch.from_numpy(np.repeat(_vae_like_codes(10, 1, seed=7), 6, axis=0))
    with caplog.at_level("WARNING", logger="balanced_vae.samplers"):
        s = GaussianMixtureSampler(10, backend=backend, reg_covar=0.0).fit(x)
    assert torch.isfinite(s.log_prob(x)).all() and s.reg_covar_ >= 0
    assert "reg_covar" in caplog.text
    if backend == "sklearn":
        assert calls[0] == 0 and 0 < s.reg_covar_ <= 1e-2 * x.double().numpy().var(0).mean()


def test_gmm_fit_refuses_degenerate_codes_with_the_fix():
    x = _vae_like_codes(30, 4, seed=8)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite.*fix"):
        GaussianMixtureSampler(100).fit(torch.from_numpy(bad))
    dup = np.repeat(x[:50], 3, axis=0)  # 150 codes, 50 distinct
    with pytest.raises(ValueError, match="only 50 distinct points.*K=100.*fix: lower n_components"):
        GaussianMixtureSampler(100).fit(torch.from_numpy(dup))
    mu, logvar = torch.from_numpy(x), torch.full(x.shape, 2000.0)  # exp(1000) overflows
    with pytest.raises(ValueError, match="not finite.*fix"):
        GaussianMixtureSampler(4, fit_on="sample").fit(mu, logvar)
    with pytest.raises(ValueError, match="reg_covar"):
        GaussianMixtureSampler(4, reg_covar=-1.0).fit(torch.from_numpy(x))


def test_cholesky_repair_gives_up_with_a_clear_error():
    from balanced_vae.samplers.em import cholesky_or_jitter

    cov = torch.stack([torch.eye(3, dtype=torch.float64), -torch.eye(3, dtype=torch.float64)])
    with pytest.raises(ValueError, match="component 1 of K=2 is not positive definite.*fix"):
        cholesky_or_jitter(cov, 1e-6, 1.0, 2)
    jitter = {}
    cov[1] = torch.zeros(3, 3, dtype=torch.float64)
    fixed, chol = cholesky_or_jitter(cov, 0.0, 1.0, 2, jitter)
    assert jitter["count"] == 1 and 0 < jitter["max"] <= 1e-8
    torch.testing.assert_close(chol @ chol.transpose(1, 2), fixed)


def test_torch_fit_saves_and_loads_its_settings(tmp_path):
    x = torch.from_numpy(_vae_like_codes(25, 12, seed=9))
    s = GaussianMixtureSampler(100, init_params="k-means++").fit(x)
    back = GaussianMixtureSampler.load(s.save(tmp_path / "g"))
    assert (back.backend_, back.init_params, back.n_iter_) == ("torch", "k-means++", s.n_iter_)
    assert back.reg_covar_ == s.reg_covar_
    torch.testing.assert_close(back.log_prob(x), s.log_prob(x))
