"""The drop-in loss (balanced_vae.loss) in a plain PyTorch loop equals the library's trainer."""

import json
import math

import pytest
import torch

from balanced_vae.config import TrainConfig
from balanced_vae.data import DataError, load_dataset
from balanced_vae.loss import BalancedLoss
from balanced_vae.methods import build_model
from balanced_vae.train import split_train, train


def _plain_loop(config, data, epochs):
    """Algorithm 1, stage 1, written by hand around BalancedLoss: same seed, batches and noise as train()."""
    x_fit, x_val = split_train(data, config)
    torch.manual_seed(config.seed)
    model = build_model(config, data.shape)  # the same initial weights as the trainer's
    enc, dec = model.encoder, model.decoder
    loss_fn = BalancedLoss()
    adam = torch.optim.RAdam if config.optimiser == "radam" else torch.optim.Adam  # the trainer's optimiser
    opt = adam([*enc.parameters(), *dec.parameters()], lr=config.lr)
    shuffle = torch.Generator().manual_seed(config.seed)
    rows = []
    for _ in range(epochs):
        perm = torch.randperm(len(x_fit), generator=shuffle)
        elbo_sum = 0.0
        for i in range(0, len(perm), config.batch_size):
            x = x_fit[perm[i : i + config.batch_size]]
            mu, logvar = enc(x).chunk(2, dim=1)
            z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape)
            t = loss_fn(x, torch.sigmoid(dec(z)), mu, logvar)
            opt.zero_grad()
            t["loss"].backward()
            opt.step()
            elbo_sum += float(t["elbo"].detach()) * len(x)
        epoch_average = loss_fn.end_epoch()
        # Eq. 10 on the final networks of the epoch, as the trainer reports it
        g = torch.Generator().manual_seed(config.seed + 2)
        with torch.no_grad():
            for i in range(0, len(x_fit), 1000):
                x = x_fit[i : i + 1000]
                mu, logvar = enc(x).chunk(2, dim=1)
                loss_fn.observe(x, torch.sigmoid(dec(mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=g))))
        sigma2 = loss_fn.end_epoch()
        loss_fn.eval()
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(config.seed + 1)
            mu, logvar = enc(x_val).chunk(2, dim=1)
            val = loss_fn(x_val, torch.sigmoid(dec(mu + (0.5 * logvar).exp() * torch.randn(mu.shape))), mu, logvar)
        loss_fn.train()
        rows.append(
            {
                "train_elbo_batch_sigma2": elbo_sum / len(x_fit),
                "sigma2": sigma2,
                "epoch_average_sigma2": epoch_average,
                "val_elbo": float(val["elbo"]),
            }
        )
    return rows


def test_dropin_loss_gives_the_trainers_elbo_and_sigma2(tmp_path):
    data = load_dataset("digits")
    config = TrainConfig(
        stages=1, epochs=3, min_epochs=3, n_train=800, n_val=200, n_test=100, batch_size=64, seed=4
    ).resolved(data.shape, len(data.x_train))
    run = train(config, tmp_path / "run", data=data, progress=False)
    trainer = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    plain = _plain_loop(config, data, epochs=3)
    for t, p in zip(trainer, plain, strict=True):
        assert p["train_elbo_batch_sigma2"] == pytest.approx(t["train_elbo_batch_sigma2"], rel=1e-5)
        assert p["sigma2"] == pytest.approx(t["sigma2"], rel=1e-5)
        assert p["val_elbo"] == pytest.approx(t["val_elbo"], rel=1e-5)
    assert plain[-1]["sigma2"] < plain[0]["sigma2"]  # learning moved sigma^2
    assert plain[0]["epoch_average_sigma2"] != plain[0]["sigma2"]  # the two estimates differ


def test_dropin_loss_terms_are_the_gaussian_elbo_for_any_shape():
    g = torch.Generator().manual_seed(0)
    x, mean = torch.rand(5, 7, generator=g), torch.rand(5, 7, generator=g)
    mu, logvar = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    loss = BalancedLoss().eval()  # eval: the stored sigma^2 (1.0 before any epoch)
    t = loss(x, mean, mu, logvar)
    rec = torch.distributions.Normal(mean, 1.0).log_prob(x).sum(1)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum(1)
    torch.testing.assert_close(t["elbo"], (rec - kl).mean())
    loss.train()
    t = loss(x, mean, mu, logvar)  # training: the batch's closed form (Eq. 10)
    s2 = float((x - mean).pow(2).mean())
    assert float(t["sigma2"]) == pytest.approx(s2, rel=1e-6)
    assert loss.end_epoch() == pytest.approx(s2, rel=1e-6)
    # the same numbers in image layout
    t4 = BalancedLoss()(x.reshape(5, 7, 1, 1), mean.reshape(5, 7, 1, 1), mu, logvar)
    torch.testing.assert_close(t4["elbo"], t["elbo"])


def test_dropin_stage_two_starts_at_sigma2_star_and_keeps_its_floor():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 6, 6)
    dec, head = torch.nn.Linear(3, 36), torch.nn.Linear(3, 36)
    loss = BalancedLoss()
    z = torch.randn(16, 3)
    mean = torch.sigmoid(dec(z)).reshape(16, 1, 6, 6)
    loss(x, mean, z, torch.zeros(16, 3))
    sigma2_star = loss.end_epoch()
    loss.to_pixel_variance(torch.nn.Sequential(head, torch.nn.Unflatten(1, (1, 6, 6))))
    assert loss.stage == 2 and loss.sigma2 == pytest.approx(sigma2_star)
    with pytest.raises(ValueError, match="needs the code z"):
        loss(x, mean, z, torch.zeros(16, 3))
    t = loss(x, mean.detach(), z, torch.zeros(16, 3), z=z)
    assert float(t["sigma2"]) == pytest.approx(1.01 * sigma2_star, rel=1e-5)  # every pixel: just above sigma*^2
    opt = torch.optim.Adam(loss.parameters(), lr=0.05)
    for _ in range(50):
        t = loss(x, mean.detach(), z, torch.zeros(16, 3), z=z)
        opt.zero_grad()
        t["loss"].backward()
        opt.step()
    lv = loss.likelihood.logvar(z, None).detach()
    assert float(lv.exp().min()) >= sigma2_star * (1 - 1e-5)  # the floor holds


def test_dropin_loss_refuses_bad_input():
    loss = BalancedLoss()
    mu = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"x has shape \(4, 5\) but the decoder mean has \(4, 6\)"):
        loss(torch.rand(4, 5), torch.rand(4, 6), mu, mu)
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        loss(torch.rand(4, 5) * 255, torch.rand(4, 5), mu, mu)
    with pytest.raises(ValueError, match="must both be"):
        loss(torch.rand(4, 5), torch.rand(4, 5), mu, torch.zeros(4, 3))
    assert math.isfinite(float(loss(torch.rand(4, 5), torch.rand(4, 5), mu, mu)["loss"]))
