"""OOD detection: the detection metrics against scikit-learn and closed forms, and the scores of a
hand-built model whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from balanced_vae.config import TrainConfig
from balanced_vae.methods import build_model
from balanced_vae.ood import log_likelihoods, ood_markdown, ood_metrics, ood_scores, typicality_score


def test_auroc_and_fpr_match_the_closed_form_of_two_gaussians():
    # in ~ N(0, 1), out ~ N(d, 1): AUROC = Phi(d / sqrt 2); TPR 0.95 at t = d - z_0.95, FPR = 1 - Phi(t)
    rng = np.random.default_rng(0)
    d, n = 1.5, 40_000
    s_in, s_out = rng.normal(size=n), rng.normal(loc=d, size=n)
    m = ood_metrics(s_in, s_out)
    assert m["auroc"] == pytest.approx(norm.cdf(d / math.sqrt(2)), abs=0.005)
    assert m["fpr_at_95_tpr"] == pytest.approx(1 - norm.cdf(d - norm.ppf(0.95)), abs=0.01)
    y = np.r_[np.zeros(n), np.ones(n)]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, np.r_[s_in, s_out]), abs=1e-12)
    assert m["auprc"] == pytest.approx(average_precision_score(y, np.r_[s_in, s_out]), abs=1e-12)
    assert m["mean_out"] - m["mean_in"] == pytest.approx(d, abs=0.03)


def test_perfect_inverted_and_hand_checked_rankings():
    assert ood_metrics([0, 1, 2], [3, 4, 5]) == {
        "auroc": 1.0,
        "auprc": 1.0,
        "fpr_at_95_tpr": 0.0,
        "mean_in": 1.0,
        "mean_out": 4.0,
    }
    inv = ood_metrics([3, 4, 5], [0, 1, 2])
    assert inv["auroc"] == 0.0 and inv["fpr_at_95_tpr"] == 1.0
    # in 0, 2; out 1, 3: pairs (out > in): (1>0), (3>0), (3>2) of 4 -> 0.75; all OOD flagged at t=1: FPR 1/2
    m = ood_metrics(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 3.0]))
    assert m["auroc"] == 0.75 and m["fpr_at_95_tpr"] == 0.5
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics([0.0, float("nan")], [1.0])
    with pytest.raises(ValueError, match="non-empty"):
        ood_metrics([], [1.0])


def test_typicality_is_the_distance_to_the_mean_reference_log_likelihood():
    out = typicality_score(torch.tensor([-5.0, 0.0, 5.0]), torch.tensor([-1.0, 1.0, 0.0]))
    torch.testing.assert_close(out, torch.tensor([5.0, 0.0, 5.0]))


@pytest.fixture(scope="module")
def flat_model():
    """A VAE whose decoder mean is 0.5 everywhere and sigma^2 = 0.01: log p(x) falls with ||x - 0.5||^2."""
    torch.manual_seed(0)
    model = build_model(TrainConfig(dataset="digits", latent_dim=2, width=16), (1, 8, 8))
    last = [m for m in model.decoder.modules() if isinstance(m, (torch.nn.Linear, torch.nn.ConvTranspose2d))][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()  # sigmoid(0) = 0.5
        model.likelihood.log_sigma2.fill_(math.log(0.01))
    return model.eval()


def _images(seed, noise, n=200):
    g = torch.Generator().manual_seed(seed)
    return (0.5 + noise * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)


def test_known_answer_on_a_hand_built_model(flat_model):
    """Images near the decoder mean are in-distribution; every likelihood score separates noisy images
    perfectly, and in the reverse direction (OOD images *closer* to the mean, the Nalisnick et al. 2019
    situation) the likelihood scores are inverted while typicality still detects them."""
    near, far = _images(0, 0.05), _images(1, 0.3)
    ref = _images(2, 0.05)
    ll = {name: log_likelihoods(flat_model, x, k=4, seed=0) for name, x in (("near", near), ("far", far))}
    ll_ref = log_likelihoods(flat_model, ref, k=4, seed=0, estimates=("iwae_prior",))["iwae_prior"]
    assert set(ll["near"]) == {"elbo", "iwae_prior", "dequantised"}  # no GMM given
    s_near, s_far = ood_scores(ll["near"], ll_ref), ood_scores(ll["far"], ll_ref)
    for name in ("elbo", "iwae_prior", "dequantised", "typicality"):
        assert ood_metrics(s_near[name], s_far[name])["auroc"] == 1.0, name
    # reverse: trained "on" noisy images, tested on clean ones
    ref_far = log_likelihoods(flat_model, _images(3, 0.3), k=4, seed=0, estimates=("iwae_prior",))["iwae_prior"]
    r_in, r_out = ood_scores(ll["far"], ref_far), ood_scores(ll["near"], ref_far)
    assert ood_metrics(r_in["iwae_prior"], r_out["iwae_prior"])["auroc"] == 0.0
    assert ood_metrics(r_in["typicality"], r_out["typicality"])["auroc"] > 0.95


def test_gmm_prior_score_and_reproducibility(flat_model):
    from balanced_vae.samplers import GaussianMixtureSampler

    gmm = GaussianMixtureSampler.from_params([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [np.eye(2), np.eye(2)])
    x = _images(0, 0.05, n=20)
    a = log_likelihoods(flat_model, x, k=3, gmm=gmm, seed=5)
    b = log_likelihoods(flat_model, x, k=3, gmm=gmm, seed=5)
    assert set(a) == {"elbo", "iwae_prior", "iwae_gmm", "dequantised"}
    for name in a:
        torch.testing.assert_close(a[name], b[name])
        assert a[name].shape == (20,)


def test_markdown_puts_global_and_per_pixel_side_by_side():
    row = {"auroc": 0.3, "auprc": 0.4, "fpr_at_95_tpr": 0.9, "mean_in": 0.0, "mean_out": 0.0}
    model = {
        "checkpoint": "x.pt",
        "likelihood": "L",
        "metrics": {"elbo": row},
        "log_likelihood": {"in": {"elbo": 1.0}, "out": {"elbo": 2.0}},
        "reference_log_likelihood": 1.0,
    }
    doc = {
        "trained_on": "a",
        "in": "a",
        "out": "b",
        "models": {"global": model, "per_pixel": model},
        "protocol": {
            "n_in": 10,
            "n_out": 10,
            "k": 2,
            "seed": 0,
            "gmm": {"K": 3, "fit_on": "sample"},
            "reference": {"n": 5, "images": "val"},
            "command": "balanced-vae ood R --in a --out b",
        },
        "provenance": {"git_commit": "abc", "git_dirty": False},
    }
    md = ood_markdown(doc)
    assert "| global AUROC | global AUPRC | global FPR@95%TPR | per_pixel AUROC" in md
    assert "| 0.300 | 0.400 | 0.900 | 0.300 | 0.400 | 0.900 |" in md
    assert "inverted" in md and "balanced-vae ood R --in a --out b" in md
