"""The weights' moving average (``--ema``): its recurrence, its file, and that training never reads it."""

import math

import pytest
import torch
from torch import nn

from balanced_vae.checkpoint import load_checkpoint
from balanced_vae.cli import main
from balanced_vae.config import TrainConfig
from balanced_vae.data import load_dataset
from balanced_vae.data.splits import split_train
from balanced_vae.ema import make_ema, update
from balanced_vae.runs import load_run
from balanced_vae.train import closed_form_sigma2, train

CONFIG = TrainConfig(epochs=2, min_epochs=2, stages=2, n_train=300, n_test=100, batch_size=32, seed=3)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_the_average_is_the_closed_form_of_its_recurrence():
    """After steps with weights W1..W3 from W0: d^3 W0 + (1 - d)(d^2 W1 + d W2 + W3), buffers too."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    d = 0.9
    ema = make_ema(net, d, warmup=False)
    history = [{k: v.clone() for k, v in net.state_dict().items()}]
    update(ema, net)  # the first update copies W0
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(torch.randn(2))
        history.append({k: v.clone() for k, v in net.state_dict().items()})
        update(ema, net)
    for key in ("0.weight", "0.bias", "1.weight", "1.running_mean"):
        w = [h[key] for h in history]
        expected = d**3 * w[0] + (1 - d) * (d**2 * w[1] + d * w[2] + w[3])
        torch.testing.assert_close(ema.module.state_dict()[key], expected)


def test_the_warm_up_lowers_the_first_decays_to_tensorflows_schedule():
    """With the warm-up the n-th average (n weights averaged before it) uses min(d, (1 + n) / (10 + n)):
    2/11, 3/12, 4/13 for d = 0.9, so after three steps W0 keeps (9/11)(9/12)(9/13) of its weight, not 0.9^3."""
    torch.manual_seed(1)
    net = nn.Linear(2, 2)
    ema = make_ema(net, 0.9)
    weights = [net.weight.detach().clone()]
    update(ema, net)
    for _ in range(3):
        with torch.no_grad():
            net.weight.add_(torch.randn(2, 2))
        weights.append(net.weight.detach().clone())
        update(ema, net)
    expected = weights[0]
    for n, w in zip((1, 2, 3), weights[1:]):
        d_n = (1 + n) / (10 + n)
        expected = d_n * expected + (1 - d_n) * w
    torch.testing.assert_close(ema.module.weight, expected)
    assert (9 / 11) * (9 / 12) * (9 / 13) < 0.9**3 / 1.5  # the initial weights fade far faster
    before = ema.module.weight.detach().clone()
    ema.n_averaged.fill_(1000)  # long after the warm-up the decay is d itself
    with torch.no_grad():
        net.weight.add_(1.0)
    update(ema, net)
    torch.testing.assert_close(ema.module.weight, 0.9 * before + 0.1 * net.weight)


def test_a_saved_config_without_the_field_keeps_the_old_average():
    """Runs made before the warm-up re-create (and resume) with the plain decay (config.LEGACY)."""
    assert TrainConfig.from_dict({"ema": 0.999}).ema_warmup is False
    assert TrainConfig(ema=0.999).ema_warmup is True
    with pytest.raises(ValueError, match="ema_warmup"):
        TrainConfig(ema_warmup="yes")


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5, True])
def test_a_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(ValueError, match="TrainConfig.ema"):
        TrainConfig(ema=decay)


def test_the_command_line_refuses_a_bad_decay_before_writing(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), "--ema", "1"]) == 2
    assert "--ema" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_training_never_reads_the_average(digits, tmp_path):
    """The same run with and without --ema ends with bit-identical trained weights and log lines."""
    plain = train(CONFIG, tmp_path / "plain", data=digits, progress=False)
    averaged = train(TrainConfig(**{**CONFIG.__dict__, "ema": 0.95}), tmp_path / "ema", data=digits, progress=False)
    a, b = load_checkpoint(plain / "checkpoint.pt"), load_checkpoint(averaged / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["sigma2_star"] == b["sigma2_star"]
    ema = load_run(averaged, which="ema.pt")
    assert ema.stage == 2
    assert any(not torch.equal(ema.model.state_dict()[k], a["model"][k]) for k in a["model"])


def test_the_average_resumes_exactly_and_has_its_own_eq10_variance(digits, tmp_path):
    """Interrupted and resumed, ema.pt equals the uninterrupted run's; in stage 1 its sigma^2 is
    Eq. 10 of the averaged networks, not an average of the trained networks' sigma^2."""
    config = TrainConfig(**{**CONFIG.__dict__, "ema": 0.9, "stages": 1, "epochs": 3, "min_epochs": 3})
    straight = train(config, tmp_path / "a", data=digits, progress=False)
    part = train(config, tmp_path / "b", data=digits, progress=False, stop_after=1)
    train(config, part, data=digits, progress=False, resume=True)
    a, b = load_checkpoint(straight / "ema.pt"), load_checkpoint(part / "ema.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    run = load_run(straight, which="ema.pt")
    x_fit, _ = split_train(digits, run.config)
    expected = closed_form_sigma2(run.model, x_fit, seed=config.seed + 2)
    assert run.model.likelihood.sigma2 == pytest.approx(expected, rel=1e-5)
    trained = load_run(straight).model.likelihood.sigma2
    assert not math.isclose(run.model.likelihood.sigma2, trained, rel_tol=1e-3)
