"""Closed forms of the Gaussian ELBO: Eq. 8-10 against torch.distributions and numerical optima."""

import math

import pytest
import torch
from scipy.optimize import minimize_scalar
from torch.distributions import Normal, kl_divergence

from balanced_vae.likelihoods import PASS_BATCH, FixedVariance, GlobalVariance, PixelVariance, closed_form_sigma2
from balanced_vae.model import VAE
from balanced_vae.nets import NetSpec, make_decoder
from balanced_vae.objectives import elbo_terms, gaussian_log_prob, kl_standard_normal


def _model(likelihood, seed=0):
    torch.manual_seed(seed)
    return VAE(NetSpec((1, 8, 8), 4, 32), likelihood)


def test_gaussian_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    x, mean = torch.rand(5, 2, 3, 4, generator=g), torch.rand(5, 2, 3, 4, generator=g)
    logvar = torch.randn(5, 2, 3, 4, generator=g)
    expected = Normal(mean, (0.5 * logvar).exp()).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(gaussian_log_prob(x, mean, logvar), expected)
    # a scalar (global) log-variance broadcasts over all D dimensions
    lv = torch.tensor(-2.0).expand(1, 1, 1, 1)
    expected = Normal(mean, math.exp(-1.0)).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(gaussian_log_prob(x, mean, lv), expected)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl_standard_normal(mu, logvar), expected)


def test_elbo_terms_agree_with_distributions_given_the_same_noise():
    model = _model(FixedVariance(0.3)).eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    t = elbo_terms(model, x, generator=torch.Generator().manual_seed(3))
    mu, logvar = model.encode(x)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(3))
    z = mu + (0.5 * logvar).exp() * eps
    q = Normal(mu, (0.5 * logvar).exp())
    rec = Normal(model.decode_mean(z), math.sqrt(0.3)).log_prob(x).sum((1, 2, 3))
    kl = kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(t["rec"], rec)
    torch.testing.assert_close(t["kl"], kl)
    torch.testing.assert_close(t["elbo"], rec - kl)


def _fixed_residuals(model, x, seed=5):
    """Squared residuals of one z ~ q(z|x) per image, with fixed noise: (N, D) -> sum, count."""
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = model.reparameterise(mu, logvar, torch.Generator().manual_seed(seed))
        r2 = (x - model.decode_mean(z)).pow(2)
        kl = kl_standard_normal(mu, logvar)
    return r2, kl


def test_closed_form_sigma2_is_the_numerical_argmax_of_the_elbo():
    """Eq. 10: for a fixed model, sigma*^2 = mean squared residual maximises Eq. 9."""
    model = _model(FixedVariance(1.0))
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    r2, kl = _fixed_residuals(model, x)
    n, d = x.shape[0], x[0].numel()

    def neg_elbo(log_s2):
        s2 = math.exp(log_s2)
        return -(-d / 2 * math.log(2 * math.pi * s2) - float(r2.sum()) / n / (2 * s2) - float(kl.mean()))

    best = minimize_scalar(neg_elbo, bounds=(-12, 3), method="bounded", options={"xatol": 1e-10})
    closed = float(r2.sum()) / (n * d)
    assert math.exp(best.x) == pytest.approx(closed, rel=1e-4)
    # the ELBO is worse on either side of sigma*^2
    assert neg_elbo(math.log(closed)) < neg_elbo(math.log(closed * 1.1))
    assert neg_elbo(math.log(closed)) < neg_elbo(math.log(closed / 1.1))


def test_the_eq10_pass_is_the_mean_squared_residual_whatever_its_batch():
    """The pass draws one z per image from one seeded stream, so its batch size (PASS_BATCH each epoch,
    1000 before) changes only the order of the sums: every batching gives the one-shot residual mean.
    (PyTorch's CPU normal sampler keeps one stream across calls while each draws a multiple of 16
    numbers: batch x latent_dim; the latent sizes 16 and 64 of the image runs always do.)"""
    model = _model(FixedVariance(1.0)).eval()
    x = torch.rand(700, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    r2, _ = _fixed_residuals(model, x, seed=5)  # all 700 images in one batch
    expected = float(r2.double().mean())
    got = {b: closed_form_sigma2(model, x, seed=5, batch_size=b) for b in (PASS_BATCH, 1000, 64)}
    assert PASS_BATCH < len(x) < 1000  # the default pass takes several batches here, the old one took one
    for b, sigma2 in got.items():
        assert sigma2 == pytest.approx(expected, rel=1e-6), b


def test_global_variance_closed_form_epoch_update_is_the_mean_squared_residual():
    likelihood = GlobalVariance("closed_form")
    model = _model(likelihood).train()
    x = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    torch.manual_seed(7)
    total, count = 0.0, 0
    for batch in x.split(32):
        t = elbo_terms(model, batch)  # training mode: accumulates residuals
        total += float(t["mse"].detach().sum()) * batch[0].numel()
        count += batch.numel()
    likelihood.end_epoch()
    assert likelihood.sigma2 == pytest.approx(total / count, rel=1e-6)
    assert likelihood.count.item() == 0  # sums reset for the next epoch


def test_closed_form_training_step_uses_the_batch_maximiser():
    model = _model(GlobalVariance("closed_form")).train()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    t = elbo_terms(model, x, generator=torch.Generator().manual_seed(9))
    assert float(t["x_logvar"].exp()) == pytest.approx(float(t["mse"].detach().mean()), rel=1e-5)


def test_gradient_sigma2_converges_to_the_closed_form():
    """Learning log sigma^2 by gradient on a frozen model reaches Eq. 10's value."""
    likelihood = GlobalVariance("gradient", init_sigma2=1.0)
    model = _model(likelihood)
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(10))
    r2, _ = _fixed_residuals(model, x)
    opt = torch.optim.Adam([likelihood.log_sigma2], lr=0.05)
    for _ in range(2000):
        lv = likelihood.logvar(None, None)
        loss = -(-0.5 * (math.log(2 * math.pi) + lv + r2 * torch.exp(-lv))).sum((1, 2, 3)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert likelihood.sigma2 == pytest.approx(float(r2.mean()), rel=1e-3)


@pytest.mark.parametrize("floor", [0.0, 0.02])
def test_pixel_variance_respects_its_floor(floor):
    spec = NetSpec((1, 8, 8), 4, 16)
    torch.manual_seed(11)
    head = make_decoder(spec)
    lik = PixelVariance(head, floor=floor)
    z = torch.randn(9, 4) * 10
    for p in head.parameters():  # push the head's output far down
        p.data.fill_(-20.0)
    with torch.no_grad():
        lv = lik.logvar(z, None)
    assert lv.shape == (9, 1, 8, 8)
    assert torch.isfinite(lv).all()
    assert (lv.exp() >= floor).all()
    if floor > 0:
        assert float(lv.exp().min()) == pytest.approx(floor, rel=1e-3)


def test_stage_two_starts_where_stage_one_ended():
    model = _model(GlobalVariance("closed_form"))
    model.with_pixel_variance(0.03, init_sigma2=0.03)
    lv = model.likelihood.logvar(torch.randn(4, 4), None)
    assert torch.allclose(lv.exp(), torch.full_like(lv, 0.03 * 1.01), rtol=1e-4)


def test_bad_variance_values_are_refused():
    with pytest.raises(ValueError, match="sigma2 must be > 0"):
        FixedVariance(0.0)
    with pytest.raises(ValueError, match="floor must be >= 0"):
        PixelVariance(torch.nn.Identity(), floor=-1.0)
    with pytest.raises(ValueError, match="closed_form"):
        GlobalVariance("other")
