"""``--channels-last``: NHWC training changes the layout, not the run (rounding only)."""

import json

import pytest
import torch

from balanced_vae.cli import main
from balanced_vae.config import TrainConfig
from balanced_vae.data import load_dataset
from balanced_vae.methods import build_objective
from balanced_vae.runs import load_run
from balanced_vae.train import train
from balanced_vae.trainer import Trainer

# digits at 28 x 28: the small family's conv layers (at 8 x 8 it is an MLP, where the layout is moot)
CONFIG = TrainConfig(image_size=28, epochs=2, min_epochs=2, stages=2, n_train=300, n_test=100, batch_size=32, seed=0)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=28)


def test_the_same_run_in_either_layout_agrees_to_rounding(digits, tmp_path):
    """Both stages of Algorithm 1: the same stops, sigma*^2 and test ELBO as the default layout, to 1e-4."""
    a = train(CONFIG, tmp_path / "nchw", data=digits, progress=False)
    b = train(TrainConfig(**{**CONFIG.__dict__, "channels_last": True}), tmp_path / "nhwc", data=digits, progress=False)
    fa, fb = (json.loads((r / "final.json").read_text()) for r in (a, b))
    assert fa["stage"] == fb["stage"] == 2
    assert fb["sigma2_star"] == pytest.approx(fa["sigma2_star"], rel=1e-4)
    assert fb["test"]["elbo"] == pytest.approx(fa["test"]["elbo"], rel=1e-4)
    run = load_run(b)  # read back into a model of the default layout
    assert all(p.is_contiguous() for p in run.model.parameters())


def test_the_trainer_keeps_conv_weights_nhwc_in_both_stages(digits, tmp_path):
    config = TrainConfig(**{**CONFIG.__dict__, "channels_last": True}).resolved(digits.shape, len(digits.x_train))
    trainer = Trainer(
        config, tmp_path / "run", digits, build_objective(config), device=torch.device("cpu"), progress=False
    )
    convs = [p for p in trainer.model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert any(not p.is_contiguous() for p in convs)  # NHWC strides, not the default's
    trainer.st.sigma2_star = 0.01
    trainer.add_pixel_head()
    heads = [p for p in trainer.model.likelihood.parameters() if p.dim() == 4]
    assert heads and all(p.is_contiguous(memory_format=torch.channels_last) for p in heads)


def test_the_command_line_option_reaches_the_config(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--channels-last", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["channels_last"] is True
    with pytest.raises(ValueError, match="channels_last"):
        TrainConfig(channels_last="yes")
