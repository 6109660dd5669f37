"""Tests for balanced_vae.data: embedded digits, real IDX files, image folders, npz."""

from __future__ import annotations

import gzip
import io
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from balanced_vae.data import (
    DATASETS,
    DataError,
    Dataset,
    idx,
    load_dataset,
    read_idx,
    resolve_data_dir,
    validate_images,
)

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
IDX_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt that a test did not mock fails loudly."""

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"test tried to reach the network: {url}")

    monkeypatch.setattr(idx, "urlopen", refuse)


@pytest.fixture(scope="module")
def mnist(data_dir) -> Dataset:
    return load_dataset("mnist", data_dir=data_dir, download=False)


@pytest.fixture
def mnist_copy(tmp_path, data_dir) -> Path:
    """A writable data dir holding a copy of the official MNIST gzip files."""
    shutil.copytree(data_dir / "mnist", tmp_path / "mnist")
    for f in (tmp_path / "mnist").iterdir():
        f.chmod(0o644)
    return tmp_path


def _check_images(x: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert tuple(x.shape) == shape
    assert x.dtype == torch.float32 and x.is_contiguous()
    assert 0.0 <= x.min().item() and x.max().item() <= 1.0


def _write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> Path:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(header + payload)
    return path


# --------------------------------------------------------------------------- digits


def test_digits_shapes_range_and_labels():
    ds = load_dataset("digits")
    _check_images(ds.x_train, (1497, 1, 8, 8))
    _check_images(ds.x_test, (300, 1, 8, 8))
    assert ds.shape == (1, 8, 8)
    assert ds.y_train.dtype == torch.int64 and ds.y_train.shape == (1497,)
    assert set(ds.y_test.tolist()) <= set(range(10))
    assert ds.x_train.max().item() == 1.0  # 16 / 16


def test_digits_split_is_seeded():
    a, b, c = (load_dataset("digits", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_test, c.x_test)
    # The split is a partition of the 1,797 images.
    all_a = torch.cat([a.x_train, a.x_test]).flatten(1)
    all_c = torch.cat([c.x_train, c.x_test]).flatten(1)
    assert torch.allclose(all_a.sum(0), all_c.sum(0))


def test_digits_image_size_resizes():
    ds = load_dataset("digits", image_size=16)
    _check_images(ds.x_train, (1497, 1, 16, 16))


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError) as err:
        load_dataset("cifar10")
    for name in DATASETS + ("folder:PATH", "npz:PATH"):
        assert name in str(err.value)
    assert issubclass(DataError, ValueError)


@pytest.mark.parametrize("size", [0, -3, 2.5])
def test_bad_image_size(size):
    with pytest.raises(DataError, match="image_size"):
        load_dataset("digits", image_size=size)


# --------------------------------------------------------------------------- data dir


def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("BALANCED_VAE_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("BALANCED_VAE_DATA")
    assert resolve_data_dir() == tmp_path / "xdg" / "balanced-vae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "balanced-vae"
    assert resolve_data_dir("~/d") == tmp_path / "home" / "d"


def test_resolve_data_dir_rejects_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        resolve_data_dir(f)


def test_nonexistent_data_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", data_dir=tmp_path / "nope")


# --------------------------------------------------------------------------- real MNIST


def test_mnist_real(mnist):
    _check_images(mnist.x_train, (60000, 1, 28, 28))
    _check_images(mnist.x_test, (10000, 1, 28, 28))
    assert torch.bincount(mnist.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(mnist.y_test).tolist() == MNIST_TEST_COUNTS
    assert mnist.x_train.mean().item() == pytest.approx(0.1307, abs=1e-3)
    assert mnist.x_train.std().item() == pytest.approx(0.3081, abs=1e-3)


def test_fashion_mnist_real(data_dir, real_dataset):
    real_dataset("fashion-mnist")
    ds = load_dataset("fashion-mnist", data_dir=data_dir, download=False)
    _check_images(ds.x_train, (60000, 1, 28, 28))
    _check_images(ds.x_test, (10000, 1, 28, 28))
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10


def test_mnist_image_size_via_env(data_dir, monkeypatch):
    monkeypatch.setenv("BALANCED_VAE_DATA", str(data_dir))
    ds = load_dataset("MNIST", image_size=14)
    _check_images(ds.x_test, (10000, 1, 14, 14))


def test_read_idx_real_files(data_dir):
    labels = read_idx(data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz")
    images = read_idx(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz")
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == MNIST_TEST_COUNTS


def test_raw_idx_files_accepted(mnist_copy, mnist):
    folder = mnist_copy / "mnist"
    for base in IDX_FILES:
        gz = folder / f"{base}.gz"
        (folder / base).write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    ds = load_dataset("mnist", data_dir=mnist_copy, download=False)
    assert torch.equal(ds.x_train, mnist.x_train) and torch.equal(ds.y_test, mnist.y_test)


# --------------------------------------------------------------------------- IDX errors


def test_read_idx_generic_and_wrong_magic(tmp_path):
    good = _write_idx(tmp_path / "ok", 0x0803, (2, 3, 4), bytes(range(24)))
    assert read_idx(good).shape == (2, 3, 4)
    ints = _write_idx(tmp_path / "ints", 0x0C01, (3,), np.array([1, -2, 3], ">i4").tobytes())
    assert read_idx(ints).tolist() == [1, -2, 3]
    bad = _write_idx(tmp_path / "bad", 0x1234, (2,), b"\0\0")
    with pytest.raises(DataError, match="magic") as err:
        read_idx(bad)
    assert str(bad) in str(err.value) and "2051" in str(err.value)


def test_read_idx_truncated_and_trailing(tmp_path):
    short = _write_idx(tmp_path / "short", 2051, (2, 28, 28), bytes(2 * 784 - 5))
    with pytest.raises(DataError, match="truncated") as err:
        read_idx(short)
    assert str(short) in str(err.value)
    long = _write_idx(tmp_path / "long", 2049, (3,), bytes(4))
    with pytest.raises(DataError, match="trailing"):
        read_idx(long)


def test_read_idx_corrupt_gzip(tmp_path, data_dir):
    raw = bytearray((data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    flipped = tmp_path / "flipped.gz"
    flipped.write_bytes(bytes(raw))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(bytes(raw[: len(raw) // 2]))
    for path in (flipped, cut):
        with pytest.raises(DataError, match="gzip") as err:
            read_idx(path)
        assert str(path) in str(err.value)


def test_checksum_mismatch(mnist_copy):
    path = mnist_copy / "mnist" / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # still a valid label, so only the checksum catches it
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="SHA-256") as err:
        load_dataset("mnist", data_dir=mnist_copy, download=False)
    assert str(path) in str(err.value) and "re-download" in str(err.value)


def test_swapped_files_wrong_magic(mnist_copy):
    folder = mnist_copy / "mnist"
    shutil.copy(folder / "t10k-labels-idx1-ubyte.gz", folder / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="expected 2051") as err:
        load_dataset("mnist", data_dir=mnist_copy, download=False)
    assert "t10k-images-idx3-ubyte.gz" in str(err.value)


def test_missing_files_without_download(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    msg = str(err.value)
    assert str(tmp_path / "fashion-mnist") in msg
    for base in IDX_FILES:
        assert base in msg
    assert "--data-dir" in msg and "BALANCED_VAE_DATA" in msg


def test_download_failure_is_data_error(tmp_path, monkeypatch):
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise OSError("network unreachable")

    monkeypatch.setattr(idx, "urlopen", offline)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", data_dir=tmp_path, download=True)
    msg = str(err.value)
    assert len(calls) == 1  # fails at once, no retry storm
    assert calls[0].startswith("https://ossci-datasets.s3.amazonaws.com/mnist/")
    assert "network unreachable" in msg and str(tmp_path / "mnist") in msg
    assert "--data-dir" in msg and "BALANCED_VAE_DATA" in msg
    assert list((tmp_path / "mnist").iterdir()) == []  # no temp file left behind


def test_download_fetches_only_missing_and_verifies(mnist_copy, monkeypatch, data_dir, mnist):
    folder = mnist_copy / "mnist"
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    served = []

    def fake_urlopen(url, timeout=None):
        assert timeout is not None and timeout <= 30
        served.append(url.rsplit("/", 1)[-1])
        return io.BytesIO((data_dir / "mnist" / served[-1]).read_bytes())

    monkeypatch.setattr(idx, "urlopen", fake_urlopen)
    ds = load_dataset("mnist", data_dir=mnist_copy)
    assert served == ["t10k-labels-idx1-ubyte.gz"]
    assert (folder / "t10k-labels-idx1-ubyte.gz").is_file()
    assert torch.equal(ds.y_test, mnist.y_test)


def test_download_with_wrong_content_leaves_no_file(tmp_path, monkeypatch):
    def junk(url, timeout=None):
        return io.BytesIO(gzip.compress(b"<html>not found</html>"))

    monkeypatch.setattr(idx, "urlopen", junk)
    with pytest.raises(DataError, match="SHA-256"):
        load_dataset("mnist", data_dir=tmp_path)
    assert list((tmp_path / "mnist").iterdir()) == []


# --------------------------------------------------------------------------- CelebA


def _write_faces(img_dir: Path, n: int, seed: int = 0) -> list[int]:
    """n 178x218 JPEGs: noise outside the centre 140x140 box, a flat grey inside."""
    rng = np.random.default_rng(seed)
    img_dir.mkdir(parents=True, exist_ok=True)
    levels = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(218, 178, 3), dtype=np.uint8)
        level = int(rng.integers(30, 226))
        arr[39:179, 19:159] = level
        PIL.Image.fromarray(arr).save(img_dir / f"{i + 1:06d}.jpg", quality=95)
        levels.append(level)
    return levels


def test_celeba_official_split_and_cache(tmp_path, monkeypatch):
    levels = _write_faces(tmp_path / "celeba" / "img_align_celeba", 12)
    parts = [0] * 8 + [1] * 2 + [2] * 2
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text(
        "".join(f"{i + 1:06d}.jpg {p}\n" for i, p in enumerate(parts))
    )
    ds = load_dataset("celeba", data_dir=tmp_path, image_size=32)
    _check_images(ds.x_train, (8, 3, 32, 32))
    _check_images(ds.x_test, (2, 3, 32, 32))
    assert ds.y_train is None
    # Centre crop: only the flat inner box survives, not the noise around it.
    expected = torch.tensor(levels[:8], dtype=torch.float32)[:, None, None, None] / 255
    assert (ds.x_train - expected).abs().mean().item() < 0.02
    assert (tmp_path / "celeba" / "celeba_32.npz").is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("JPEG decoded despite the cache")

    monkeypatch.setattr(PIL.Image, "open", no_decoding)
    again = load_dataset("celeba", data_dir=tmp_path, image_size=32)
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.x_test, ds.x_test)


def test_celeba_seeded_split_default_size_and_direct_dir(tmp_path):
    _write_faces(tmp_path / "img_align_celeba", 12)
    ds = load_dataset("celeba", data_dir=tmp_path, seed=3)  # folder holds img_align_celeba
    _check_images(ds.x_train, (11, 3, 64, 64))
    _check_images(ds.x_test, (1, 3, 64, 64))
    assert (tmp_path / "celeba_64.npz").is_file()
    same = load_dataset("celeba", data_dir=tmp_path, seed=3)
    assert torch.equal(same.x_test, ds.x_test)


def test_celeba_stale_cache_is_rebuilt(tmp_path):
    img_dir = tmp_path / "celeba" / "img_align_celeba"
    _write_faces(img_dir, 12)
    assert len(load_dataset("celeba", data_dir=tmp_path, image_size=16).x_train) == 11
    _write_faces(img_dir, 20, seed=1)  # 8 new files, 12 rewritten
    ds = load_dataset("celeba", data_dir=tmp_path, image_size=16)
    assert len(ds.x_train) + len(ds.x_test) == 20


def test_celeba_missing(tmp_path):
    with pytest.raises(DataError, match="img_align_celeba") as err:
        load_dataset("celeba", data_dir=tmp_path)
    assert "--data-dir" in str(err.value)


# --------------------------------------------------------------------------- folders


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(arr).save(path)


def test_folder_rgb_recursive(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(10):
        _save(tmp_path / f"sub{i % 2}" / f"{i}.png", rng.integers(0, 256, (40, 30, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset(f"folder:{tmp_path}", image_size=16)
    _check_images(ds.x_train, (9, 3, 16, 16))
    _check_images(ds.x_test, (1, 3, 16, 16))
    assert ds.name == f"folder:{tmp_path.resolve()}"
    assert torch.equal(load_dataset(f"folder:{tmp_path}", image_size=16).x_test, ds.x_test)


def test_folder_greyscale(tmp_path):
    for i in range(5):
        _save(tmp_path / f"{i}.jpg", np.full((20, 20), 40 * i, np.uint8))
    ds = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert ds.shape == (1, 8, 8)
    assert len(ds.x_train) == 4 and len(ds.x_test) == 1


def test_folder_mixed_is_rgb(tmp_path):
    _save(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    _save(tmp_path / "b.bmp", np.zeros((8, 8, 3), np.uint8))
    assert load_dataset(f"folder:{tmp_path}").shape == (3, 8, 8)  # their own size (issue 28)


def test_folder_empty(tmp_path):
    (tmp_path / "readme.txt").write_text("no images")
    with pytest.raises(DataError) as err:
        load_dataset(f"folder:{tmp_path}")
    assert str(tmp_path) in str(err.value)


def test_folder_unreadable_image(tmp_path):
    _save(tmp_path / "good.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError) as err:
        load_dataset(f"folder:{tmp_path}")
    assert str(tmp_path / "broken.png") in str(err.value)


def test_folder_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'absent'}")


# --------------------------------------------------------------------------- npz


def test_npz_uint8_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (20, 12, 12), np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x_train, x_test=x_train[:5], y_train=np.arange(20), y_test=np.arange(5))
    ds = load_dataset(f"npz:{path}")
    _check_images(ds.x_train, (20, 1, 12, 12))
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(x_train).float() / 255)
    assert ds.y_test.dtype == torch.int64 and ds.y_test.tolist() == list(range(5))


def test_npz_float_nhwc(tmp_path):
    x = np.random.default_rng(0).random((6, 10, 10, 3)).astype(np.float64)
    path = tmp_path / "f.npz"
    np.savez(path, x_train=x, x_test=x[:2])
    ds = load_dataset(f"npz:{path}", image_size=5)
    _check_images(ds.x_train, (6, 3, 5, 5))
    assert ds.y_train is None
    full = load_dataset(f"npz:{path}")
    assert torch.allclose(full.x_train, torch.from_numpy(x.transpose(0, 3, 1, 2)).float())


@pytest.mark.parametrize(
    "x_train, pattern",
    [
        (np.full((4, 8, 8), np.nan, np.float32), "NaN"),
        (np.full((4, 8, 8), 1.5, np.float32), r"outside \[0, 1\]"),
        (np.zeros((4,), np.float32), r"shape \(4,\)"),  # (N, D) is a table now: tests/test_table.py
        (np.zeros((4, 8, 8, 5), np.float32), r"shape \(4, 8, 8, 5\)"),
        (np.zeros((4, 8, 8), np.int64), "dtype int64"),
    ],
    ids=["nan", "range", "ndim", "channels", "dtype"],
)
def test_npz_bad_images(tmp_path, x_train, pattern):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=x_train, x_test=np.zeros((2, 8, 8), np.float32))
    with pytest.raises(DataError, match=pattern) as err:
        load_dataset(f"npz:{path}")
    assert str(path) in str(err.value) and "x_train" in str(err.value)
    assert "fix" in str(err.value)


def test_npz_missing_key_and_bad_labels(tmp_path):
    path = tmp_path / "k.npz"
    np.savez(path, x_train=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(DataError, match="x_test"):
        load_dataset(f"npz:{path}")
    np.savez(
        path, x_train=np.zeros((3, 4, 4), np.uint8), x_test=np.zeros((1, 4, 4), np.uint8), y_train=np.zeros(2, np.int64)
    )
    with pytest.raises(DataError, match="y_train"):
        load_dataset(f"npz:{path}")


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'none.npz'}")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "x, pattern",
    [
        (torch.zeros(3, 8, 8), "4-D"),
        (torch.zeros(0, 1, 8, 8), "empty"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "dtype"),
        (torch.full((2, 1, 4, 4), float("nan")), "NaN"),
        (torch.full((2, 1, 4, 4), float("inf")), "outside"),
        (torch.full((2, 1, 4, 4), -0.5), "outside"),
    ],
)
def test_validate_images_errors(x, pattern):
    with pytest.raises(DataError, match=pattern) as err:
        validate_images(x, "my-source")
    assert "my-source" in str(err.value)


def test_validate_images_returns_input_and_dataset_checks():
    x = torch.rand(4, 1, 8, 8)
    assert validate_images(x, "ok") is x
    with pytest.raises(DataError, match="same"):
        Dataset("t", x, torch.rand(2, 3, 8, 8), None, None)
    with pytest.raises(DataError, match="y_train"):
        Dataset("t", x, x, torch.zeros(3, dtype=torch.int64), None)
    assert "n_train=4" in repr(Dataset("t", x, x, None, None))


def test_datasets_know_their_quantisation_levels(data_dir, tmp_path):
    """Issue 15.7: bits/dim need the number of levels; resized or float data have none."""
    import numpy as np

    assert load_dataset("mnist", data_dir=data_dir).levels == 256
    assert load_dataset("digits").levels == 17
    assert load_dataset("digits", image_size=16).levels is None
    np.savez(tmp_path / "u8.npz", x_train=np.zeros((4, 8, 8), np.uint8), x_test=np.ones((2, 8, 8), np.uint8))
    np.savez(tmp_path / "f.npz", x_train=np.full((4, 8, 8), 0.3, np.float32), x_test=np.zeros((2, 8, 8), np.float32))
    assert load_dataset(f"npz:{tmp_path / 'u8.npz'}").levels == 256
    assert load_dataset(f"npz:{tmp_path / 'f.npz'}").levels is None
