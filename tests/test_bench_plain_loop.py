"""bench/plain_loop.py: its loss is the negative ELBO (torch.distributions), its sigma^2 a running mean,
and a resumed loop equals an uninterrupted one."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from balanced_vae.checkpoint import load_checkpoint
from balanced_vae.config import TrainConfig
from balanced_vae.data import load_dataset
from balanced_vae.methods import build_model


@pytest.fixture(scope="module")
def pl(bench_script):
    return bench_script("plain_loop")


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    config = TrainConfig(dataset="digits", stages=1, optimiser="adam", n_val=0)
    return data, config.resolved(tuple(data.shape), len(data.x_train), world=1)


def test_the_loss_is_the_negative_elbo_less_its_constant_and_sigma2_a_running_mean(pl, digits):
    data, config = digits
    torch.manual_seed(0)
    model = build_model(config, tuple(data.shape)).train()
    xb = data.x_train[:32]
    torch.manual_seed(1)
    loss, s2 = pl.plain_loss(model, xb, None, 0.9)
    torch.manual_seed(1)
    mu, logvar = model.encode(xb)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    mean = model.decode_mean(z)
    assert s2 == pytest.approx(float((xb - mean).detach().pow(2).mean()), rel=1e-6)  # the first batch's own
    dims = xb[0].numel()
    log_px = Normal(mean, s2.sqrt()).log_prob(xb).flatten(1).sum(1)
    kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    neg_elbo = (-log_px + kl).mean()
    assert float(loss.detach()) == pytest.approx(
        float(neg_elbo.detach()) - dims / 2 * math.log(2 * math.pi * float(s2)), rel=1e-5
    )
    torch.manual_seed(1)
    _, again = pl.plain_loss(model, xb, torch.tensor(0.5), 0.9)
    assert float(again) == pytest.approx(0.9 * 0.5 + 0.1 * float(s2), rel=1e-6)


def test_a_resumed_loop_equals_an_uninterrupted_one_and_writes_a_run(pl, digits, tmp_path):
    data, config = digits
    straight = pl.train_plain(config, data, tmp_path / "a", 1e9, 0.99, max_epochs=2)
    pl.train_plain(config, data, tmp_path / "b", 1e9, 0.99, max_epochs=1)
    resumed = pl.train_plain(config, data, tmp_path / "b", 1e9, 0.99, max_epochs=2)
    assert straight["epochs"] == resumed["epochs"] == 2
    assert straight["losses"] == resumed["losses"]
    a, b = (load_checkpoint(tmp_path / w / "run" / "checkpoint.pt") for w in "ab")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["sigma2_star"] == pytest.approx(straight["sigma2_star"]) and 0 < a["sigma2_star"] < 0.1
    assert straight["losses"][1] < straight["losses"][0]
