"""BalancedVAE, the scikit-learn estimator: scikit-learn's own checks, composition, and log p(x)
against torch.distributions and the change of variables of the standardisation."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator
from torch.distributions import Normal

from balanced_vae import BalancedVAE


def _table(n: int = 120, d: int = 5, seed: int = 0) -> np.ndarray:
    """Correlated features on a scale far from [0, 1] (mean 100, spread ~10)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)) @ rng.normal(size=(2, d)) * 10 + 100 + rng.normal(size=(n, d))


@pytest.fixture(scope="module")
def fitted() -> tuple[BalancedVAE, np.ndarray]:
    x = _table()
    return BalancedVAE(epochs=5, latent_dim=2, width=32, k=8, random_state=0).fit(x), x


def test_check_estimator():
    check_estimator(BalancedVAE(epochs=3, width=16))


def test_fitted_attributes_and_shapes(fitted):
    model, x = fitted
    assert model.n_features_in_ == 5 and model.stage_ == 2 and model.sigma2_ > 0
    np.testing.assert_allclose(model.mean_, x.mean(0))
    np.testing.assert_allclose(model.scale_, x.std(0))
    assert model.transform(x[:7]).shape == (7, 2)
    assert model.inverse_transform(model.transform(x[:7])).shape == (7, 5)
    assert model.predict_uncertainty(x[:7]).shape == (7, 5)
    assert model.sample(11, random_state=0).shape == (11, 5)
    assert model.gmm_.n_components == 10
    assert list(model.get_feature_names_out()) == ["balancedvae0", "balancedvae1"]


@torch.no_grad()
def test_score_samples_is_iwae_k1_by_torch_distributions(fitted):
    """k = 1: log p(x|z) + log p(z) - log q(z|x) - sum_d log s_d, with the noise the estimator draws."""
    model, x = fitted
    got = model.score_samples(x[:4], k=1)
    vae = model.model_
    for i in range(4):
        xs = torch.from_numpy(((x[i] - model.mean_) / model.scale_).astype(np.float32))  # (D,)
        mu, logvar = vae.encode(xs.reshape(1, -1, 1, 1))  # (1, L)
        eps = torch.randn((1, 1, 2), generator=torch.Generator().manual_seed(model._seed + 1))
        z = (mu + (0.5 * logvar).exp() * eps).reshape(1, -1)  # (1, L)
        mean, x_logvar = vae.decode(z)  # (1, D, 1, 1)
        log_px_z = Normal(mean.flatten(), (0.5 * x_logvar).exp().expand_as(mean).flatten()).log_prob(xs).sum()
        log_pz = Normal(0.0, 1.0).log_prob(z).sum()
        log_qz = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum()
        want = float(log_px_z + log_pz - log_qz) - np.log(model.scale_).sum()
        assert got[i] == pytest.approx(want, abs=1e-4)


def test_score_samples_includes_the_jacobian(fitted):
    """x -> c x + b moves log p(x) by -D log c: the model of the scaled data (its standardisation
    scaled along) gives the same standardised rows, so only the Jacobian differs."""
    model, x = fitted
    c, b = 7.5, -3.0
    scaled = pickle.loads(pickle.dumps(model))
    scaled.mean_, scaled.scale_ = model.mean_ * c + b, model.scale_ * c
    np.testing.assert_allclose(
        scaled.score_samples(x * c + b), model.score_samples(x) - 5 * math.log(c), rtol=0, atol=1e-4
    )
    np.testing.assert_allclose(scaled.predict_uncertainty(x * c + b), c * model.predict_uncertainty(x), rtol=1e-6)


def test_refit_on_scaled_data_moves_score_by_the_jacobian():
    """Fitting on c x gives (to float32 rounding of the standardised rows) the same network, so the
    scores differ by D log c."""
    x = _table(60, 3)
    kw = dict(epochs=3, latent_dim=2, width=16, k=4, random_state=1)
    a = BalancedVAE(**kw).fit(x).score_samples(x)
    b = BalancedVAE(**kw).fit(x * 1000.0).score_samples(x * 1000.0)
    np.testing.assert_allclose(b, a - 3 * math.log(1000.0), atol=0.05)


def test_scores_do_not_depend_on_other_rows_or_order(fitted):
    model, x = fitted
    full = model.score_samples(x[:20])
    np.testing.assert_array_equal(model.score_samples(x[:20][::-1]), full[::-1])
    np.testing.assert_array_equal(model.score_samples(x[5:6]), full[5:6])


def test_sample_is_seeded_and_in_original_units(fitted):
    model, x = fitted
    np.testing.assert_array_equal(model.sample(50, random_state=3), model.sample(50, random_state=3))
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    np.testing.assert_array_equal(model.sample(5, generator=g1), model.sample(5, generator=g2))
    s = model.sample(2000, random_state=0)
    assert np.all(np.abs(s.mean(0) - x.mean(0)) < x.std(0))  # original units: around 100, not 0


def test_fixed_variance_method_has_one_stage():
    x = _table(60, 3)
    model = BalancedVAE(sigma2=0.5, epochs=2, width=16, random_state=0).fit(x)
    assert model.stage_ == 1 and model.sigma2_ == pytest.approx(0.5) and model.config_.method == "fixed"
    np.testing.assert_allclose(
        model.predict_uncertainty(x[:3]), np.sqrt(0.5) * np.tile(model.scale_, (3, 1)), rtol=1e-6
    )
    for bad, why in (("nope", "sigma2='nope'"), (0.0, "finite number > 0"), (float("nan"), "finite number > 0")):
        with pytest.raises(ValueError, match=why):
            BalancedVAE(sigma2=bad).fit(x)


def test_fit_leaves_the_global_torch_rng_alone():
    x = _table(40, 3)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    BalancedVAE(epochs=1, width=8, random_state=0).fit(x)
    assert torch.equal(torch.get_rng_state(), before)


def test_clone_pipeline_gridsearch_pickle():
    x = _table(90, 4)
    est = BalancedVAE(epochs=2, width=16, k=4, random_state=0)
    c = clone(est)
    assert c.get_params() == est.get_params() and not hasattr(c, "model_")
    pipe = make_pipeline(StandardScaler(), BalancedVAE(epochs=2, width=16, k=4, random_state=0)).fit(x)
    assert pipe.transform(x).shape == (90, 8) and np.isfinite(pipe.score(x))
    grid = GridSearchCV(est, {"latent_dim": [1, 3]}, cv=2).fit(x)
    assert grid.best_params_["latent_dim"] in (1, 3) and np.isfinite(grid.best_score_)
    fitted = est.fit(x)
    back = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(back.score_samples(x), fitted.score_samples(x))
    np.testing.assert_array_equal(back.transform(x), fitted.transform(x))
    np.testing.assert_array_equal(back.sample(5, random_state=1), fitted.sample(5, random_state=1))


def test_bad_input_errors():
    est = BalancedVAE(epochs=1)
    with pytest.raises(ValueError, match="1 sample"):
        est.fit(np.ones((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        est.fit(np.array([[1.0, np.nan], [2.0, 3.0]]))
    fitted = BalancedVAE(epochs=1, width=8, latent_dim=2, random_state=0).fit(_table(30, 3))
    with pytest.raises(ValueError, match="expecting 3 features"):
        fitted.transform(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"\(n_samples, 2\)"):
        fitted.inverse_transform(np.ones((2, 3)))


def test_anomaly_example_runs():
    """examples/anomaly_detection.py end to end, on a few epochs."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import balanced_vae

    example = Path(__file__).resolve().parents[1] / "examples" / "anomaly_detection.py"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONPATH": os.pathsep.join([str(Path(balanced_vae.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, str(example), "--epochs", "5"], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout[out.stdout.index("{") :])
    assert 0.5 < doc["BalancedVAE"]["auroc"] <= 1.0 and "least certain features" in out.stdout
