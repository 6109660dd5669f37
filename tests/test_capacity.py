"""Issue 27: network families by name, the KL warm-up, and the 'best' convergence rule."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from balanced_vae.cli import main
from balanced_vae.config import PAPER_LR_WARMUP, TrainConfig
from balanced_vae.data import load_dataset
from balanced_vae.likelihoods import FixedVariance
from balanced_vae.methods import build_model, build_objective
from balanced_vae.model import VAE
from balanced_vae.nets import NETS, NetSpec, count_macs, default_latent_dim, default_width, make_decoder, make_encoder
from balanced_vae.objectives import ELBO, WAEMMD, BetaVAE, KLWarmup, elbo_terms
from balanced_vae.train import train
from balanced_vae.train_state import TrainState, converged, warmup


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _layers(net: nn.Module, kind) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 64, 64)])
def test_every_family_maps_images_to_codes_and_back(net, shape):
    L, w = default_latent_dim(shape, net), 8
    spec = NetSpec(shape, L, w, net=net)
    enc, dec = make_encoder(spec), make_decoder(spec)
    assert enc(torch.rand(3, *shape)).shape == (3, 2 * L)
    assert dec(torch.randn(3, L)).shape == (3, *shape)


def test_the_paper_net_is_the_wae_rae_architecture():
    """28x28: zero-padded to 32, 4x4 stride-2 convs at 128-256-512-1024 with BatchNorm, a dense layer to
    2L; the decoder is dense to 8x8x1024, up-convs to 512 and 256, then one to a single channel."""
    spec = NetSpec((1, 28, 28), 16, default_width((1, 28, 28), "paper"), net="paper")
    enc, dec = make_encoder(spec), make_decoder(spec)
    convs = _layers(enc, nn.Conv2d)
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (128, (4, 4), (2, 2)),
        (256, (4, 4), (2, 2)),
        (512, (4, 4), (2, 2)),
        (1024, (4, 4), (2, 2)),
    ]
    assert len(_layers(enc, nn.BatchNorm2d)) == 4 and _layers(enc, nn.Linear)[-1].out_features == 32
    assert _layers(dec, nn.Linear)[0].out_features == 8 * 8 * 1024
    assert [u.out_channels for u in _layers(dec, nn.ConvTranspose2d)] == [512, 256]
    # CelebA (64x64): 5x5 kernels and a 64-dimensional latent space by default
    spec64 = NetSpec((3, 64, 64), default_latent_dim((3, 64, 64), "paper"), 128, net="paper")
    assert spec64.latent_dim == 64
    assert {c.kernel_size for c in _layers(make_encoder(spec64), nn.Conv2d)} == {(5, 5)}
    # MACs: the paper net costs hundreds of times the small one (why it is a GPU job)
    small = NetSpec((1, 28, 28), 16, 32)
    assert count_macs(dec, (16,)) > 100 * count_macs(make_decoder(small), (16,))


def test_the_network_family_is_recorded_and_reloaded(tmp_path):
    from balanced_vae.runs import load_run

    cfg = TrainConfig(dataset="mnist", net="res", width=4, epochs=1, stages=1, n_train=64, n_test=16)
    x = torch.rand(80, 1, 28, 28)
    from balanced_vae.sources import as_data

    run = train(cfg, tmp_path / "r", data=as_data(x[:64], x[64:]), progress=False)
    assert json.loads((run / "config.json").read_text())["net"] == "res"
    assert load_run(run).model.spec.net == "res"


def test_bad_families_and_warmups_are_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as e:
        main(["train", "--net", "huge", "--out", str(out)])
    assert e.value.code == 2 and "huge" in capsys.readouterr().err
    assert main(["train", "--kl-warmup", "5", "--epochs", "5", "--out", str(out)]) == 2
    assert "kl_warmup" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ValueError, match="--net small"):
        NetSpec((1, 8, 8), 4, 8, net="res")  # tiny images have the MLP only
    with pytest.raises(ValueError, match="--blocks 0"):
        NetSpec((1, 28, 28), 4, 8, blocks=1, net="paper")
    with pytest.raises(ValueError, match="no KL term"):
        KLWarmup(WAEMMD())


def _model(sigma2: float = 0.3) -> VAE:
    torch.manual_seed(0)
    return VAE(NetSpec((1, 8, 8), 3, 16), FixedVariance(sigma2))


@pytest.mark.parametrize("objective", [ELBO(), BetaVAE(beta=2.0)])
def test_the_warmup_weighs_the_kl_term_only(objective):
    """loss_w = loss - (1 - w) kl_coef KL: at w = 1 the objective itself, at w = 0 without the KL."""
    model, x = _model(), torch.rand(5, 1, 8, 8)
    warm = KLWarmup(objective)
    for w in (1.0, 0.25, 0.0):
        warm.weight = w
        torch.manual_seed(1)
        got = warm(model, x)
        torch.manual_seed(1)
        ref = objective(model, x)
        kl_coef = 1.0 if isinstance(objective, ELBO) else 2.0
        assert torch.allclose(got["loss"], ref["loss"] - (1 - w) * kl_coef * ref["kl"])
        if w == 1.0:
            assert torch.equal(got["loss"], ref["loss"])
    # ELBO at w = 0: minus the expected log-likelihood alone
    warm.weight = 0.0
    torch.manual_seed(1)
    got = KLWarmup(ELBO())
    got.weight = 0.0
    g = got(model, x)
    torch.manual_seed(1)
    t = elbo_terms(model, x)
    assert torch.allclose(g["loss"], -t["rec"].mean())


def test_the_warmups_rise_linearly_and_end_at_the_elbo_and_lr():
    """Over kl_warmup epochs of n steps the KL weight is (s + 1) / (kl_warmup n), over lr_warmup steps the
    learning rate is lr (s + 1) / lr_warmup; after them the weight is 1 and the rate lr, so the trainer's
    objective is the ELBO itself and Algorithm 1 converges to the same objective."""
    cfg = TrainConfig(kl_warmup=2, lr_warmup=6, epochs=5, lr=1e-3)
    warm, st, n = KLWarmup(ELBO()), TrainState(), 4
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    weights, lrs = [], []
    for epoch in range(4):
        st.epoch = epoch
        on_step = warmup(warm, opt, st, cfg, n)
        for b in range(n):
            if on_step:
                on_step(b)
            weights.append(warm.weight)
            lrs.append(opt.param_groups[0]["lr"])
    assert weights == [(i + 1) / 8 for i in range(8)] + [1.0] * 8
    assert lrs == pytest.approx([1e-3 * (i + 1) / 6 for i in range(6)] + [1e-3] * 10)
    st.stage, st.epoch = 2, 0  # stage 2 never warms up
    assert warmup(warm, opt, st, cfg, n) is None and warm.weight == 1.0


def test_a_warmed_up_run_logs_its_weights_and_converges_on_the_elbo(tmp_path, digits):
    cfg = TrainConfig(kl_warmup=2, epochs=4, min_epochs=4, stages=1, n_train=300, n_test=50, batch_size=64)
    run = train(cfg, tmp_path / "r", data=digits, progress=False)
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    n = 5  # steps per epoch: 270 fitted images (30 held out) in batches of 64
    ramp = [(s + 1) / (2 * n) for s in range(2 * n)]
    assert [r["kl_weight"] for r in rows] == pytest.approx([sum(ramp[:n]) / n, sum(ramp[n:]) / n, 1.0, 1.0])
    # the validation loss is always the full objective: the warm-up changes training steps only
    assert all(abs(r["val_loss"] + r["val_elbo"]) < 1e-3 for r in rows)


def test_warmups_that_cannot_apply_are_refused_before_anything_is_written(tmp_path, digits):
    with pytest.raises(ValueError, match="no KL term"):
        train(TrainConfig(method="wae-mmd", kl_warmup=1, epochs=3), tmp_path / "w", data=digits, progress=False)
    with pytest.raises(ValueError, match="lr_warmup"):
        train(TrainConfig(lr_warmup=10_000, epochs=3), tmp_path / "l", data=digits, progress=False)
    assert not (tmp_path / "w").exists() and not (tmp_path / "l").exists()


# validation ELBO of stage 1 of results/mnist-paper/runs/learned (epochs 14-23), which the
# endpoint rule stopped at epoch 23 although the trend still rose about 1 nat per epoch
MNIST_STAGE1 = [772.0, 773.3, 772.6, 778.7, 777.2, 777.8, 781.9, 786.0, 783.9, 782.5]


def test_the_best_rule_does_not_stop_on_a_noisy_rise_that_the_endpoint_rule_stops_on():
    best = TrainConfig(min_epochs=1, window=3, tol=1e-3)
    endpoints = TrainConfig(min_epochs=1, window=3, tol=1e-3, stopping="endpoints")
    assert converged(MNIST_STAGE1, endpoints, 784)  # |782.5 - 781.9| = 0.6 < 0.784 nats
    assert not converged(MNIST_STAGE1, best, 784)  # the best rose 786.0 - 781.9 = 4.1
    # a plateau stops both; a fall stops the best rule (nothing to gain from going on)
    plateau = MNIST_STAGE1 + [786.3, 785.9, 786.2]
    assert converged(plateau, best, 784)
    assert converged(MNIST_STAGE1 + [780.0, 779.0, 778.0], best, 784)
    # epochs before `since` (a KL warm-up, a learning-rate drop) are not compared
    assert not converged([0.0, 0.0, 0.0, 500.0, 600.0, 700.0, 700.1], best, 784, since=3)


def test_configs_saved_before_the_new_fields_re_create_their_runs():
    old = json.loads(TrainConfig().to_json())
    for k in ("stopping", "kl_warmup", "net"):
        old.pop(k)
    old.pop("lr_warmup")
    old.pop("optimiser")
    cfg = TrainConfig.from_dict(old)
    assert (cfg.stopping, cfg.kl_warmup, cfg.lr_warmup, cfg.net, cfg.optimiser) == ("endpoints", 0, 0, "small", "adam")
    assert (TrainConfig().stopping, TrainConfig().optimiser) == ("best", "radam")


def test_a_folder_run_saved_before_folders_kept_their_size_reads_as_64(tmp_path):
    d = {**json.loads(TrainConfig(dataset="folder:/data/imgs").to_json()), "image_size": None}
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert TrainConfig.load(tmp_path / "config.json").image_size == 64


def test_the_optimiser_is_radam_by_default_and_adam_on_request():
    from balanced_vae.train import make_optimiser

    model = _model()
    assert type(make_optimiser(model, TrainConfig())) is torch.optim.RAdam
    assert type(make_optimiser(model, TrainConfig(optimiser="adam"))) is torch.optim.Adam
    with pytest.raises(ValueError, match="TrainConfig.optimiser"):
        TrainConfig(optimiser="sgd")


def test_the_multi_tensor_radam_takes_the_steps_of_pytorchs_one_tensor_radam():
    """make_optimiser's RAdam steps every tensor at once (3.8x faster a step at width 64 on a CPU); its
    trajectory is PyTorch's reference one-tensor RAdam's up to rounding, warm-up steps included."""
    import copy

    from balanced_vae.train import make_optimiser

    model = _model()
    ref_model = copy.deepcopy(model)
    opt, ref = make_optimiser(model, TrainConfig()), torch.optim.RAdam(ref_model.parameters(), lr=1e-3, foreach=False)
    assert opt.param_groups[0]["foreach"] is True
    g = torch.Generator().manual_seed(3)
    for _ in range(30):
        grads = [torch.randn(prm.shape, generator=g) for prm in model.parameters()]
        for m in (model, ref_model):
            for prm, gr in zip(m.parameters(), grads):
                prm.grad = gr.clone()
        opt.step()
        ref.step()
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any((a - b).abs().max() > 0 for a, b in zip(model.parameters(), _model().parameters()))  # it moved


@pytest.mark.slow
def test_the_wide_deep_command_that_collapsed_now_uses_its_latent_code(data_dir, tmp_path):
    """Issue 27's probe: width 64 with two residual blocks per level, 2 epochs on 6,000 MNIST images. With
    plain Adam at lr 1e-3 its decoder saturated on the all-black image within 20 steps (validation KL
    1e-4 nats, sigma*^2 = E[x^2] = 0.112); with the default RAdam the code carries information."""
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                "mnist",
                "--data-dir",
                str(data_dir),
                "--width",
                "64",
                "--blocks",
                "2",
                "--n-train",
                "6000",
                "--n-test",
                "500",
                "--epochs",
                "2",
                "--min-epochs",
                "2",
                "--stages",
                "1",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["val_kl"] > 2.0
    assert last["sigma2"] < 0.08  # well below the all-black image's E[x^2] = 0.112


def test_the_paper_familys_warm_up_is_resolved_from_the_steps_and_kept_when_given():
    """``lr_warmup=None``: 1000 steps for --net paper (at most the epoch cap's steps), 0 for the others;
    a given value, and a config saved before the default (read through LEGACY), stay as they are."""
    full = TrainConfig(net="paper").resolved((1, 28, 28), 60_000)
    assert full.lr_warmup == PAPER_LR_WARMUP == 1000
    tiny = TrainConfig(net="paper", n_train=6000, epochs=2).resolved((1, 28, 28), 60_000)
    assert tiny.lr_warmup == 2 * 43  # 5,400 images to fit after the 600 held out: 43 batches of 128
    assert TrainConfig(net="paper", n_train=6000, epochs=2).resolved((1, 28, 28), 60_000, world=32).lr_warmup == 84
    assert TrainConfig(net="small").resolved((1, 28, 28), 60_000).lr_warmup == 0
    assert TrainConfig(net="res").resolved((1, 28, 28), 60_000).lr_warmup == 0
    assert TrainConfig(net="paper", lr_warmup=0).resolved((1, 28, 28), 60_000).lr_warmup == 0
    assert TrainConfig(net="paper", lr_warmup=5000).resolved((1, 28, 28), 60_000).lr_warmup == 5000
    assert TrainConfig.from_dict({"net": "paper"}).lr_warmup == 0  # saved before the field: trained without
    with pytest.raises(ValueError, match="TrainConfig.lr_warmup=-1"):
        TrainConfig(lr_warmup=-1)


@pytest.mark.slow
def test_the_paper_family_falls_onto_the_black_image_without_its_default_warm_up(data_dir, tmp_path):
    """``--net paper --width 16``, 2 epochs on 3,000 MNIST images (44 RAdam steps at lr 1e-3): with
    ``lr_warmup=0`` the decoder saturates on the all-black image (validation KL 0.2 nats, MSE 0.112 =
    E[x^2]); with the family's default (here the 44 steps) it uses its code (KL 3.3, MSE 0.089). On all
    60,000 images the same fall happened in the first epoch, and the 1000-step default learned (KL 52
    nats after 3 epochs)."""
    data = load_dataset("mnist", data_dir=data_dir)
    last = {}
    for name, warm in (("off", 0), ("default", None)):
        cfg = TrainConfig(
            dataset="mnist", net="paper", width=16, n_train=3000, n_test=200, epochs=2, min_epochs=2, stages=1
        )
        run = train(dataclasses.replace(cfg, lr_warmup=warm), tmp_path / name, data=data, progress=False, device="cpu")
        last[name] = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        last[name]["lr_warmup"] = json.loads((run / "config.json").read_text())["lr_warmup"]
    assert last["off"]["val_kl"] < 0.5 and last["off"]["val_mse"] > 0.105, last["off"]
    assert last["default"]["lr_warmup"] == 2 * 22  # 2,700 images to fit after the 300 held out: 22 batches
    assert last["default"]["val_kl"] > 2.0 and last["default"]["val_mse"] < 0.1, last["default"]


def test_every_method_trains_on_every_family():
    x = torch.rand(6, 1, 28, 28)
    for method in ("learned", "vae", "beta-vae", "wae-mmd", "dip-vae-i"):
        for net in NETS:
            cfg = TrainConfig(dataset="mnist", method=method, net=net, width=4).resolved((1, 28, 28), 6)
            torch.manual_seed(0)
            model, objective = build_model(cfg, (1, 28, 28)), build_objective(cfg)
            loss = objective(model, x)["loss"]
            loss.backward()
            assert torch.isfinite(loss)


def test_the_stage_switch_keeps_stage_1s_optimiser_moments(data_dir, tmp_path):
    """A fresh RAdam at the switch took momentum-SGD steps on gradients ~1/sigma*^2 and undid stage 1
    (this command: training MSE 0.063 -> 0.074, validation ELBO -34 -> -134). With stage 1's moments
    carried, stage 2's first epoch improves on stage 1's last; ``stage1.pt`` keeps them for a branch."""
    mnist = load_dataset("mnist", data_dir=data_dir)
    cfg = TrainConfig(method="learned", stages=2, epochs=8, min_epochs=8, n_train=2000, n_test=200, seed=0)
    run = train(cfg, tmp_path / "run", data=mnist, progress=False, stop_after=9)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last1, first2 = rows[7], rows[8]
    assert (last1["stage"], first2["stage"]) == (1, 2)
    assert first2["train_mse"] < last1["train_mse"] and first2["val_elbo"] > last1["val_elbo"]
    saved = torch.load(run / "stage1.pt", map_location="cpu", weights_only=True)["switch_moments"]
    per_epoch = {float(s["step"]) / 8 for s in saved.values()}  # one count: every parameter stepped each batch
    assert len(saved) > 4 and all("exp_avg_sq" in s for s in saved.values()) and len(per_epoch) == 1
    (n,) = per_epoch
    state2 = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["optimiser"]["state"]
    assert sorted({float(s["step"]) for s in state2.values()}) == [
        n,
        9 * n,
    ]  # the head's own count; stage 1's carried on


SWITCHED = TrainConfig(method="learned", stages=2, epochs=2, min_epochs=2, n_train=300, n_test=100, batch_size=32)


def _steps(run) -> list[float]:
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["optimiser"]["state"]
    return sorted({float(s["step"]) for s in state.values()})


def test_a_fresh_switch_is_the_old_one_and_old_configs_read_as_it(digits, tmp_path):
    """``switch="fresh"`` (runs made before the carry: config.LEGACY) starts stage 2 at step 0 for every
    parameter and keeps no moments in stage1.pt; a bad value is refused, naming the field."""
    assert TrainConfig.from_dict({}).switch == "fresh" and TrainConfig().switch == "carry"
    with pytest.raises(ValueError, match="TrainConfig.switch"):
        TrainConfig(switch="keep")
    fresh = train(dataclasses.replace(SWITCHED, switch="fresh"), tmp_path / "f", data=digits, progress=False)
    carry = train(SWITCHED, tmp_path / "c", data=digits, progress=False)
    n = _steps(fresh)[0]
    assert _steps(fresh) == [n] and _steps(carry) == [n, 2 * n]  # 2 epochs of stage 2; 2 of stage 1 carried on
    assert "switch_moments" not in torch.load(fresh / "stage1.pt", weights_only=True)
    assert "switch_moments" in torch.load(carry / "stage1.pt", weights_only=True)


def test_a_branch_from_a_switch_without_moments_warns_and_passes_none_on(digits, tmp_path, caplog):
    """A stage1.pt written before the carry holds no moments: its branch warns, starts stage 2 from zero
    moments, and keeps none in its own stage1.pt, so that a branch of the branch warns too."""
    source = train(dataclasses.replace(SWITCHED, stages=2), tmp_path / "src", data=digits, progress=False)
    old = torch.load(source / "stage1.pt", weights_only=True)
    del old["switch_moments"]
    torch.save(old, source / "stage1.pt")
    floor0 = dataclasses.replace(SWITCHED, pixel_floor=0.0)
    with caplog.at_level("WARNING"):
        branch = train(floor0, tmp_path / "b", data=digits, progress=False, branch_from=source)
    assert "holds no optimiser moments" in caplog.text
    assert "switch_moments" not in torch.load(branch / "stage1.pt", weights_only=True)
    assert _steps(branch) == [_steps(branch)[0]]
