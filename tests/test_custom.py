"""Your own networks and data: the VAE contract, sources, factory runs, and one clear error per mistake."""

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from balanced_vae.checkpoint import load_checkpoint
from balanced_vae.cli import main
from balanced_vae.config import TrainConfig
from balanced_vae.data import DataError
from balanced_vae.factories import FactoryError, factory_ref
from balanced_vae.likelihoods import GlobalVariance
from balanced_vae.model import VAE, NetworkError, encode_dataset
from balanced_vae.runs import load_run
from balanced_vae.samplers import GaussianMixtureSampler
from balanced_vae.sources import DatasetSource, TensorSource, as_data, canonical_shape
from balanced_vae.train import evaluate_elbo, train


def flat_networks(data_shape, latent_dim, hidden=32):
    """Flat vectors (D,): MLPs."""
    (d,) = data_shape
    enc = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))
    dec = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, d))
    return enc, dec


def conv_networks(data_shape, latent_dim):
    """RGB images of any size divisible by 2: one strided conv each way, (mu, logvar) as a pair."""
    c, h, w = data_shape

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, 4, 4, 2, 1), nn.ReLU(), nn.Flatten())
            self.mu, self.logvar = nn.Linear(4 * h * w // 4, latent_dim), nn.Linear(4 * h * w // 4, latent_dim)

        def forward(self, x):
            f = self.body(x)
            return self.mu(f), self.logvar(f)

    dec = nn.Sequential(
        nn.Linear(latent_dim, 4 * h * w // 4), nn.Unflatten(1, (4, h // 2, w // 2)), nn.ConvTranspose2d(4, c, 4, 2, 1)
    )
    return Enc(), dec


def odd_encoder(data_shape, latent_dim):
    enc, dec = flat_networks(data_shape, latent_dim)
    enc[-1] = nn.Linear(32, 2 * latent_dim + 1)
    return enc, dec


def wrong_decoder(data_shape, latent_dim):
    enc, dec = flat_networks(data_shape, latent_dim)
    dec[-1] = nn.Linear(32, data_shape[0] - 1)
    return enc, dec


def _cfg(factory, **kw):
    base = dict(networks=factory_ref(factory), latent_dim=3, stages=2, epochs=1, batch_size=32, n_val=40, seed=1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def vectors():
    """Flat vectors (N, 12) in [0, 1], two clusters."""
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(2, 12, generator=g)
    x = centres[torch.arange(300) % 2] + 0.05 * torch.randn(300, 12, generator=g)
    return x.clamp(0, 1)


def test_canonical_shape_covers_any_example_shape():
    assert canonical_shape((3, 5, 7)) == (3, 5, 7)
    assert canonical_shape((12,)) == (12, 1, 1)
    assert canonical_shape((5, 7)) == (1, 5, 7)
    assert canonical_shape((2, 3, 4, 5)) == (2, 12, 5)


def test_uint8_source_is_held_as_uint8_and_converted_per_batch():
    x = torch.randint(0, 256, (50, 3, 4, 6), dtype=torch.uint8)
    src = TensorSource(x)
    assert src.x.dtype == torch.uint8 and src.x.data_ptr() == x.data_ptr()  # no copy, no float
    view = src[10:40]
    assert len(view) == 30 and view.x.data_ptr() == x[10:].data_ptr()
    batch = view[torch.tensor([0, 5])]
    torch.testing.assert_close(batch, x[[10, 15]].float() / 255)
    assert batch.dtype == torch.float32


def test_flat_vectors_train_two_stages_and_reload(vectors, tmp_path):
    """Any networks on (N, D) vectors: both stages, checkpoint, load_run, the same ELBO after reload."""
    run = train(
        _cfg(flat_networks, network_args={"hidden": 16}),
        tmp_path / "run",
        data=as_data(vectors[:250], vectors[250:]),
        progress=False,
    )
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == [1, 2]
    loaded = load_run(run)
    assert loaded.stage == 2 and loaded.model.data_shape == (12,) and loaded.model.latent_dim == 3
    x = TensorSource(vectors[250:])
    final = json.loads((run / "final.json").read_text())
    assert final["test"]["elbo"] == pytest.approx(evaluate_elbo(loaded.model, x, seed=2)["elbo"])
    mean, sigma = loaded.model.generate(torch.zeros(4, 3))
    assert mean.shape == sigma.shape == (4, 12, 1, 1)  # the library layout of (12,)
    mu, logvar = encode_dataset(loaded.model, x)
    assert mu.shape == (50, 3)


def test_dataloader_of_dicts_images_of_any_size_and_resume(tmp_path):
    """uint8 RGB 6x10 images streamed from a DataLoader of dicts (key=); a resumed run equals an uninterrupted one."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (160, 3, 6, 10), dtype=torch.uint8, generator=g)

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return {"pixels": x[i], "label": i % 3}

    loader = DataLoader(Dicts(), batch_size=16)
    with pytest.raises(DataError, match="none of .*key='NAME'"):
        as_data(loader)
    cfg = _cfg(conv_networks, stages=1, epochs=2, min_epochs=2, n_val=32)
    straight = train(cfg, tmp_path / "a", data=as_data(loader, key="pixels"), progress=False)
    train(cfg, tmp_path / "b", data=as_data(loader, key="pixels"), progress=False, stop_after=1)
    resumed = train(cfg, tmp_path / "b", data=as_data(loader, key="pixels"), progress=False, resume=True)
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    # the same run from the tensor itself gives the same weights: one loop for every source
    c = load_checkpoint(train(cfg, tmp_path / "c", data=x, progress=False) / "checkpoint.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], c["model"][k], rtol=0, atol=0)
    assert load_run(straight).model.data_shape == (3, 6, 10)


def test_tuples_take_the_first_element_and_workers_stream_batches():
    x = torch.rand(40, 1, 4, 4)
    src = as_data(DataLoader(TensorDataset(x, torch.arange(40)), batch_size=8, num_workers=1)).x_train
    assert isinstance(src, DatasetSource) and src.shape == (1, 4, 4)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    got = torch.cat(list(src.batches(perm, 16)))
    torch.testing.assert_close(got, x[perm])
    with pytest.raises(DataError, match="key=5 must be a position"):
        as_data(TensorDataset(x, torch.arange(40)), key=5)


@pytest.mark.parametrize(
    "factory, message",
    [
        (odd_encoder, r"encoder output has shape \(2, 7\).*even width"),
        (wrong_decoder, r"decoder output has shape \(2, 11\).*expected x's shape \(2, 12\)"),
    ],
)
def test_networks_that_do_not_fit_fail_before_the_first_step(factory, message, vectors, tmp_path):
    with pytest.raises(NetworkError, match=message):
        train(_cfg(factory), tmp_path / "run", data=vectors, progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_data_outside_the_unit_interval_fails_before_anything_is_written(vectors, tmp_path):
    with pytest.raises(DataError, match=r"outside \[0, 1\].*divide 0..255"):
        train(_cfg(flat_networks), tmp_path / "run", data=vectors * 255, progress=False)
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        train(_cfg(flat_networks), tmp_path / "run2", data=TensorDataset(vectors * 2), progress=False)
    with pytest.raises(DataError, match="dtype torch.int64"):
        as_data(torch.zeros(10, 3, dtype=torch.int64))
    assert not (tmp_path / "run").exists() and not (tmp_path / "run2").exists()


def test_a_run_whose_factory_cannot_be_imported_names_it(vectors, tmp_path, capsys):
    run = train(_cfg(flat_networks, stages=1), tmp_path / "run", data=vectors, progress=False)
    cfg = json.loads((run / "config.json").read_text())
    cfg["networks"] = "no_such_module_xyz:make"
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FactoryError, match="'no_such_module_xyz:make' cannot be imported.*PYTHONPATH"):
        load_run(run)
    assert main(["evaluate", str(run), "--metrics", "elbo"]) == 2
    assert "no_such_module_xyz:make" in capsys.readouterr().err
    with pytest.raises(FactoryError, match="not a module-level function"):
        factory_ref(lambda s, l: None)


def test_vae_takes_any_modules_and_checks_them():
    enc, dec = flat_networks((12,), 3)
    model = VAE(enc, dec, GlobalVariance()).check(torch.rand(2, 12))
    assert model.latent_dim == 3
    mu, logvar = model.encode(torch.rand(5, 12))
    assert mu.shape == logvar.shape == (5, 3)
    model.with_pixel_variance(0.02, init_sigma2=0.05)  # default head: a fresh decoder copy
    lv = model.likelihood.logvar(torch.randn(5, 3), None)
    torch.testing.assert_close(lv.exp(), torch.full((5, 12, 1, 1), 0.05))  # library layout
    with pytest.raises(NetworkError, match="latent_dim = 4"):
        VAE(enc, dec, GlobalVariance(), latent_dim=4).check(torch.rand(2, 12))
    with pytest.raises(NetworkError, match="expected a torch.nn.Module"):
        VAE(lambda x: x, dec, GlobalVariance())


def test_gmm_fits_any_codes_and_samples_with_the_callers_generator():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-4.0, 0.0, 1.0], [4.0, 2.0, -1.0]])
    codes = centres[torch.arange(400) % 2] + 0.1 * torch.randn(400, 3, generator=g)
    gmm = GaussianMixtureSampler(2, random_state=0).fit(codes.numpy())  # arrays or tensors
    assert gmm.n_features_in_ == 3 and gmm.converged_
    order = gmm.means_[:, 0].argsort()
    torch.testing.assert_close(gmm.means_[order].float(), centres, atol=0.05, rtol=0)
    z1 = gmm.sample(100, generator=torch.Generator().manual_seed(1))
    z2 = gmm.sample(100, generator=torch.Generator().manual_seed(1))
    assert z1.shape == (100, 3) and torch.equal(z1, z2)
    assert float(gmm.log_prob(z1).mean()) > float(gmm.log_prob(z1 + 3).mean())
    assert np.isfinite(gmm.score(codes))
