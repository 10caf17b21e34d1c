"""Tests for normbench.data: idx reader, Fashion-MNIST lookup, stratified subsets, synthetic
data."""

from __future__ import annotations

import gzip
import os
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from normbench.data import DATASETS, TensorData, load_data, stratified_subset
from normbench.data import fashion_mnist as fm
from normbench.data.idx import read_idx
from normbench.errors import UserError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"
REAL_FILE = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
N_TRAIN, N_TEST = 60, 20


def config(name: str, **overrides):
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


# --- writing idx files by hand (independent of the reader under test) ---


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding: 0x00 0x00, type 0x08 (uint8), ndim, big-endian int32 dims, raw data."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_tiny_idx_set(
    folder: Path, n_train: int, n_test: int, seed: int, gz: bool, shuffle_train_labels: bool
) -> dict[str, np.ndarray]:
    """Write the four idx files (MNIST and Fashion-MNIST names) of random 28x28 images, labels
    0..9 in turn (train labels shuffled if asked); returns the arrays by FILES key."""
    rng = np.random.default_rng(seed)
    train_labels = np.arange(n_train) % 10
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)}
    if shuffle_train_labels:
        train_labels = rng.permutation(train_labels)
    arrays["train_labels"] = train_labels.astype(np.uint8)
    arrays["test_images"] = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    arrays["test_labels"] = (np.arange(n_test) % 10).astype(np.uint8)
    for key, name in fm.FILES.items():
        write_idx(folder / name, arrays[key], gz=gz)
    return arrays


def tiny_fashion(folder: Path, gz: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the four Fashion-MNIST files with N_TRAIN / N_TEST images, labels 0..9 in turn."""
    return write_tiny_idx_set(folder, N_TRAIN, N_TEST, seed, gz, shuffle_train_labels=True)


@pytest.fixture
def no_system_copy(tmp_path, monkeypatch):
    """Tiny split sizes, and no Debian copy nor earlier download: empty folders stand in for
    them."""
    monkeypatch.setattr(fm, "EXPECTED_COUNTS", {"train": N_TRAIN, "test": N_TEST})
    empty = tmp_path / "debian-empty"
    empty.mkdir()
    monkeypatch.setattr(fm, "DEBIAN_DIR", empty)
    (tmp_path / "cache-empty").mkdir()
    monkeypatch.setattr(fm, "DEFAULT_DOWNLOAD_ROOT", tmp_path / "cache-empty")
    return empty


# --- idx reader ---


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    x = read_idx(write_idx(tmp_path / "images", images, gz=gz), ndim=3)
    y = read_idx(write_idx(tmp_path / "labels", labels, gz=gz), ndim=1)
    assert x.dtype == torch.uint8 and tuple(x.shape) == (7, 5, 3)
    assert torch.equal(x, torch.from_numpy(images))
    assert torch.equal(y, torch.from_numpy(labels))
    x[0, 0, 0] = 1  # writable, not a view of a read-only buffer


def test_idx_literal_bytes(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(b"\x00\x00\x08\x01" + b"\x00\x00\x00\x03" + b"\x02\x00\x09")
    assert read_idx(path).tolist() == [2, 0, 9]
    path.write_bytes(
        b"\x00\x00\x08\x03" + b"\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03" + bytes(range(6))
    )
    assert read_idx(path).tolist() == [[[0, 1, 2], [3, 4, 5]]]


def corrupt_files(tmp_path: Path) -> dict[str, Path]:
    good = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    files = {
        "truncated": good[:-10],
        "too_long": good + b"\x00",
        "header_cut": good[:9],
        "empty": b"",
        "wrong_magic": b"\x00\x00\x08\x02" + good[4:],
        "float_type": b"\x00\x00\x0d\x03" + good[4:],
        "gz_truncated": gzip.compress(good)[:-20],
        "gz_garbage": b"\x1f\x8b" + b"not gzip at all",
        "gz_of_truncated": gzip.compress(good[:-1]),
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}-idx3-ubyte"
        out[name].write_bytes(data)
    return out


@pytest.mark.parametrize(
    "case",
    [
        "truncated",
        "too_long",
        "header_cut",
        "empty",
        "wrong_magic",
        "float_type",
        "gz_truncated",
        "gz_garbage",
        "gz_of_truncated",
    ],
)
def test_idx_corrupt_raises_user_error(tmp_path, case):
    path = corrupt_files(tmp_path)[case]
    with pytest.raises(UserError) as err:
        read_idx(path)
    message = str(err.value)
    assert str(path) in message and "re-download" in message and "\n" not in message


def test_idx_wrong_ndim_and_missing(tmp_path):
    path = write_idx(tmp_path / "labels", np.arange(5, dtype=np.uint8))
    with pytest.raises(UserError, match="3-D"):
        read_idx(path, ndim=3)
    with pytest.raises(UserError, match="no such file"):
        read_idx(tmp_path / "absent")


# --- Fashion-MNIST from tiny files ---


def expected_x(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    return ((torch.from_numpy(images).double() / 255 - mean) / std).float().unsqueeze(1)


def test_fashion_from_root_normalized(tmp_path, no_system_copy):
    arrays = tiny_fashion(tmp_path / "fm")
    cfg = config("fashion_mnist", root=str(tmp_path / "fm"))
    data = load_data(cfg)
    assert isinstance(data, TensorData) and data.name == "fashion_mnist"
    assert data.train_x.shape == (N_TRAIN, 1, 28, 28) and data.test_x.shape == (N_TEST, 1, 28, 28)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, 28)
    assert data.source == str(tmp_path / "fm")
    mean, std = cfg.mean[0], cfg.std[0]
    torch.testing.assert_close(data.train_x, expected_x(arrays["train_images"], mean, std))
    torch.testing.assert_close(data.test_x, expected_x(arrays["test_images"], mean, std))
    assert data.train_y.tolist() == arrays["train_labels"].tolist()
    assert data.test_y.tolist() == arrays["test_labels"].tolist()
    # pixel 0 -> -mean/std and 255 -> (1-mean)/std, exactly
    assert data.train_x.min().item() == pytest.approx(-mean / std, abs=1e-6)
    assert data.train_x.max().item() == pytest.approx((1 - mean) / std, abs=1e-6)


def test_fashion_from_torchvision_layout_gz_plain_dict(tmp_path, no_system_copy):
    arrays = tiny_fashion(tmp_path / "root" / "FashionMNIST" / "raw", gz=True)
    cfg = OmegaConf.to_container(
        config("fashion_mnist", root=str(tmp_path / "root"), mean=[0.5], std=[0.25])
    )
    data = load_data(cfg)  # plain dict config
    assert data.source == str(tmp_path / "root" / "FashionMNIST" / "raw")
    torch.testing.assert_close(data.train_x, expected_x(arrays["train_images"], 0.5, 0.25))


def test_fashion_from_debian_dir(tmp_path, monkeypatch, no_system_copy):
    arrays = tiny_fashion(tmp_path / "debian", gz=True)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    data = load_data(config("fashion_mnist"))
    assert data.source == str(tmp_path / "debian")
    assert data.test_y.tolist() == arrays["test_labels"].tolist()


def test_fashion_missing_everywhere(no_system_copy):
    with pytest.raises(UserError) as err:
        load_data(config("fashion_mnist"))
    message = str(err.value)
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "data.root=DIR" in message and "data.download=true" in message and "\n" not in message


def test_fashion_root_missing_does_not_fall_back(tmp_path, monkeypatch, no_system_copy):
    tiny_fashion(tmp_path / "debian")
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    (tmp_path / "half").mkdir()
    write_idx(tmp_path / "half" / "train-images-idx3-ubyte", np.zeros((N_TRAIN, 28, 28), np.uint8))
    with pytest.raises(UserError, match="data.root="):
        load_data(config("fashion_mnist", root=str(tmp_path / "half")))


def test_fashion_checks_counts_and_labels(tmp_path, monkeypatch, no_system_copy):
    tiny_fashion(tmp_path / "fm")
    monkeypatch.setattr(fm, "EXPECTED_COUNTS", {"train": 60000, "test": 10000})
    with pytest.raises(UserError, match="60000"):
        load_data(config("fashion_mnist", root=str(tmp_path / "fm")))
    monkeypatch.setattr(fm, "EXPECTED_COUNTS", {"train": N_TRAIN, "test": N_TEST})
    with pytest.raises(UserError, match="outside"):
        load_data(config("fashion_mnist", root=str(tmp_path / "fm"), num_classes=5))
    with pytest.raises(UserError, match="image_size=28"):
        load_data(config("fashion_mnist", root=str(tmp_path / "fm"), image_size=32))
    with pytest.raises(UserError, match="in_channels"):
        load_data(config("fashion_mnist", root=str(tmp_path / "fm"), mean=[0.1, 0.2]))


def test_fashion_subsets(tmp_path, no_system_copy):
    tiny_fashion(tmp_path / "fm")
    root = str(tmp_path / "fm")
    data = load_data(config("fashion_mnist", root=root, train_size=30, test_size=10))
    assert torch.bincount(data.train_y, minlength=10).tolist() == [3] * 10
    assert torch.bincount(data.test_y, minlength=10).tolist() == [1] * 10
    again = load_data(config("fashion_mnist", root=root, train_size=30, test_size=10))
    assert torch.equal(data.train_x, again.train_x)
    for bad in (0, -5, N_TRAIN + 1, "many"):
        with pytest.raises(UserError, match="train_size|subset size"):
            load_data(config("fashion_mnist", root=root, train_size=bad))


class FakeFashionMNIST:
    """Stands in for torchvision's class: 'downloads' tiny files into root/FashionMNIST/raw."""

    calls: list = []

    def __init__(self, root, train=True, download=False):
        FakeFashionMNIST.calls.append((root, train, download))
        raw = Path(root) / "FashionMNIST" / "raw"
        if fm.find_files(raw) is None:
            tiny_fashion(raw, gz=False)


def fake_torchvision(monkeypatch, cls):
    module = types.ModuleType("torchvision.datasets")
    module.FashionMNIST = cls
    monkeypatch.setitem(sys.modules, "torchvision.datasets", module)


def test_fashion_download(tmp_path, monkeypatch, no_system_copy):
    FakeFashionMNIST.calls = []
    fake_torchvision(monkeypatch, FakeFashionMNIST)
    data = load_data(config("fashion_mnist", root=str(tmp_path / "dl"), download=True))
    assert data.train_x.shape == (N_TRAIN, 1, 28, 28)
    assert data.source == str(tmp_path / "dl" / "FashionMNIST" / "raw")
    assert FakeFashionMNIST.calls and all(call[2] for call in FakeFashionMNIST.calls)
    # without a root it downloads into the default cache folder
    monkeypatch.setattr(fm, "DEFAULT_DOWNLOAD_ROOT", tmp_path / "cache")
    data = load_data(config("fashion_mnist", download=True))
    assert data.source == str(tmp_path / "cache" / "FashionMNIST" / "raw")


def test_fashion_download_failure(tmp_path, monkeypatch, no_system_copy):
    def broken(root, train=True, download=False):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz\nmore detail")

    fake_torchvision(monkeypatch, broken)
    with pytest.raises(UserError, match="downloading Fashion-MNIST.*failed") as err:
        load_data(config("fashion_mnist", root=str(tmp_path / "dl"), download=True))
    assert "\n" not in str(err.value)


# --- registry ---


def test_registry_and_unknown_name():
    assert set(DATASETS) >= {"fashion_mnist", "synthetic"}
    for spec in DATASETS.values():
        assert callable(spec.loader) and spec.description and "\n" not in spec.description
    with pytest.raises(UserError, match="fashion_mnist.*synthetic"):
        load_data({"name": "cifar99"})


def test_device_move():
    data = load_data(config("synthetic"), device="meta")
    assert all(
        t.device.type == "meta" for t in (data.train_x, data.train_y, data.test_x, data.test_y)
    )


# --- stratified_subset ---


def test_stratified_balanced():
    labels = torch.arange(1000) % 10
    for size in (10, 37, 100, 999, 1000):
        index = stratified_subset(labels, size, seed=0)
        assert index.dtype == torch.int64 and index.numel() == size
        assert torch.equal(index, index.unique())  # sorted, no repeats
        counts = torch.bincount(labels[index], minlength=10)
        assert counts.max() - counts.min() <= 1 and counts.sum() == size


def test_stratified_imbalanced_within_one():
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([500, 300, 150, 40, 10])])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))]
    for size in (5, 17, 100, 333, 1000):
        counts = torch.bincount(labels[stratified_subset(labels, size, seed=1)], minlength=5)
        exact = torch.tensor([500, 300, 150, 40, 10]) * size / 1000
        assert counts.sum() == size and ((counts - exact).abs() < 1).all(), (size, counts)


def test_stratified_seeded_and_independent_of_global_rng():
    labels = torch.arange(600) % 6
    torch.manual_seed(1)
    a = stratified_subset(labels, 60, seed=5)
    state = torch.get_rng_state()
    torch.manual_seed(2)
    torch.rand(10)
    b = stratified_subset(labels, 60, seed=5)
    assert torch.equal(a, b)
    assert not torch.equal(a, stratified_subset(labels, 60, seed=6))
    torch.set_rng_state(state)
    stratified_subset(labels, 60, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # does not consume the global RNG


def test_stratified_errors():
    labels = torch.arange(100) % 10
    for size in (0, -1, 101, 5, 2.5, True):
        with pytest.raises(UserError):
            stratified_subset(labels, size, seed=0)


# --- synthetic ---


def nearest_mean_accuracy(data: TensorData) -> float:
    flat = data.train_x.flatten(1)
    means = torch.stack([flat[data.train_y == c].mean(0) for c in range(data.num_classes)])
    predicted = torch.cdist(data.test_x.flatten(1), means).argmin(1)
    return (predicted == data.test_y).double().mean().item()


def test_synthetic_shapes_balanced_deterministic():
    cfg = config("synthetic")
    data = load_data(cfg)
    assert data.train_x.shape == (cfg.train_size, cfg.in_channels, cfg.image_size, cfg.image_size)
    assert data.test_x.shape == (cfg.test_size, cfg.in_channels, cfg.image_size, cfg.image_size)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.source == "synthetic" and data.name == "synthetic"
    for y in (data.train_y, data.test_y):
        counts = torch.bincount(y, minlength=cfg.num_classes)
        assert counts.max() - counts.min() <= 1 and counts.min() > 0
    assert abs(data.train_x.mean().item()) < 0.05 and abs(data.train_x.std().item() - 1) < 0.05
    # train and test share the patterns but not the noise: no test image repeats a train image
    assert torch.cdist(data.test_x.flatten(1), data.train_x.flatten(1)).min() > 1.0
    torch.manual_seed(123)  # the global RNG must not matter
    again = load_data(cfg)
    assert torch.equal(data.train_x, again.train_x) and torch.equal(data.test_y, again.test_y)
    other = load_data(config("synthetic", subset_seed=1))
    assert not torch.equal(data.train_x, other.train_x)
    bigger = load_data(config("synthetic", train_size=1024))
    assert torch.equal(data.test_x, bigger.test_x)  # test set independent of train_size


def test_synthetic_learnable():
    data = load_data(config("synthetic", noise=1.0))
    assert nearest_mean_accuracy(data) > 0.9
    data = load_data(config("synthetic", in_channels=3, image_size=16, num_classes=4, noise=1.0))
    assert data.train_x.shape[1:] == (3, 16, 16) and nearest_mean_accuracy(data) > 0.9
    noise_only = load_data(config("synthetic", noise=1e6))
    assert nearest_mean_accuracy(noise_only) < 0.3  # the accuracy comes from the patterns


@pytest.mark.parametrize(
    "key,value",
    [
        ("train_size", 0),
        ("test_size", -1),
        ("train_size", 5),
        ("noise", -1.0),
        ("noise", "loud"),
        ("in_channels", 0),
    ],
)
def test_synthetic_invalid(key, value):
    with pytest.raises(UserError, match=key):
        load_data(config("synthetic", **{key: value}))


# --- the real data set ---


@pytest.mark.slow
def test_real_fashion_mnist():
    if not REAL_FILE.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{REAL_FILE} missing in CI: install dataset-fashion-mnist")
        pytest.skip(f"{REAL_FILE} not installed (apt-get install dataset-fashion-mnist)")
    data = load_data(config("fashion_mnist"))
    assert data.source == str(REAL_FILE.parent)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.train_y.shape == (60000,) and data.test_y.shape == (10000,)
    assert torch.bincount(data.train_y, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(data.test_y, minlength=10).tolist() == [1000] * 10
    assert abs(data.train_x.mean().item()) < 0.01 and abs(data.train_x.std().item() - 1) < 0.01
    small = load_data(config("fashion_mnist", train_size=1000, test_size=500))
    assert torch.bincount(small.train_y, minlength=10).tolist() == [100] * 10
    assert torch.bincount(small.test_y, minlength=10).tolist() == [50] * 10
    index = stratified_subset(data.train_y.cpu(), 1000, seed=0)
    assert torch.equal(small.train_x, data.train_x[index])
