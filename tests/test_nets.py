"""The built-in networks' depth option (``blocks``): exact sizes, identity at start, and a run with it."""

import json

import pytest
import torch
from torch import nn

from balanced_vae.cli import main
from balanced_vae.config import TrainConfig
from balanced_vae.nets import NetSpec, _Residual, make_decoder, make_encoder
from balanced_vae.runs import load_run


def _n(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _res_params(c: int) -> int:
    return 2 * (9 * c * c + c)  # two 3x3 convs c -> c with biases


@pytest.mark.parametrize("blocks", [0, 2])
@pytest.mark.parametrize("w", [8, 32])
def test_conv28_parameter_counts_are_the_closed_form(w, blocks):
    """Conv28 at width w, latent L, C channels: every layer's weights and biases counted by hand."""
    c, L = 1, 16
    enc = (16 * c * w + w) + (16 * w * 2 * w + 2 * w) + (98 * w * 8 * w + 8 * w) + (8 * w * 2 * L + 2 * L)
    dec = (L * 8 * w + 8 * w) + (8 * w * 98 * w + 98 * w) + (16 * 2 * w * w + w) + (16 * w * c + c)
    res = blocks * (_res_params(w) + _res_params(2 * w))
    spec = NetSpec((c, 28, 28), L, w, blocks)
    assert _n(make_encoder(spec)) == enc + res
    assert _n(make_decoder(spec)) == dec + res


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 64, 64)])
def test_deeper_networks_start_as_the_shallow_function(shape):
    """With the shallow network's weights copied into the layers they share, a network with
    residual blocks computes the same function at initialisation (the blocks' last convs are 0)."""
    torch.manual_seed(0)
    for make in (make_encoder, make_decoder):
        shallow, deep = make(NetSpec(shape, 8, 8, 0)), make(NetSpec(shape, 8, 8, 2))
        shared = [m for m in deep if not isinstance(m, _Residual)]
        assert len(shared) == len(shallow) and len(deep) == len(shallow) + 4
        for a, b in zip(shallow, shared):
            b.load_state_dict(a.state_dict())
        x = torch.rand(3, *shape) if make is make_encoder else torch.randn(3, 8)
        out_shallow, out_deep = shallow(x), deep(x)
        assert out_deep.shape == out_shallow.shape
        assert torch.equal(out_deep, out_shallow)


def test_a_residual_block_learns_from_its_zero_start():
    """The zero-initialised conv gets a gradient, so one step makes the block more than the identity."""
    torch.manual_seed(0)
    block = _Residual(4)
    h = torch.randn(2, 4, 7, 7)
    assert torch.equal(block(h), h)
    block(h).pow(2).sum().backward()  # d/dW of the last conv is relu(conv(relu(h))) x 2 h: not zero
    assert block.f[3].weight.grad.abs().sum() > 0
    torch.optim.SGD(block.parameters(), lr=0.1).step()
    assert not torch.allclose(block(h), h)


def test_blocks_are_refused_where_they_cannot_apply():
    with pytest.raises(ValueError, match=r"--blocks 0"):
        NetSpec((1, 8, 8), 4, 32, 1)  # the MLP of tiny images
    with pytest.raises(ValueError, match=r"TrainConfig.blocks=-1"):
        TrainConfig(blocks=-1)
    with pytest.raises(ValueError, match=r"network_args"):
        TrainConfig(blocks=1, networks="mypkg.nets:make_networks")


def test_cli_trains_and_reloads_a_run_with_blocks(data_dir, tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                "mnist",
                "--data-dir",
                str(data_dir),
                "--blocks",
                "1",
                "--width",
                "8",
                "--n-train",
                "300",
                "--n-test",
                "50",
                "--epochs",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads((out / "config.json").read_text())["blocks"] == 1
    run = load_run(out)
    assert sum(isinstance(m, _Residual) for m in run.model.modules()) == 6  # 2 encoder, 2 decoder, 2 head
