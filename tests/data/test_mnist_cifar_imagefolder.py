"""MNIST, CIFAR-10/100 and image folders from small files written here in the real on-disk formats;
on-device augmentation against a slow per-sample reference; short `normbench run`s on each."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_data import write_tiny_idx_set

from normbench import epochs
from normbench.data import DATASETS, TensorData, cifar, idx_images, load_data, mnist, tensor_batches
from normbench.data.augment import Augment, from_config
from normbench.data.imagefolder import FolderData
from normbench.errors import UserError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"


def config(name: str, **overrides):
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def one_line_error(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)


def fake_torchvision(monkeypatch, **classes):
    module = types.ModuleType("torchvision.datasets")
    for name, cls in classes.items():
        setattr(module, name, cls)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", module)


# --- MNIST: the idx format and lookup shared with Fashion-MNIST ---

MNIST_TRAIN, MNIST_TEST = 40, 20


def tiny_mnist(folder: Path, gz: bool = True) -> dict[str, np.ndarray]:
    return write_tiny_idx_set(folder, MNIST_TRAIN, MNIST_TEST, 7, gz, shuffle_train_labels=False)


@pytest.fixture
def small_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "EXPECTED_COUNTS", {"train": MNIST_TRAIN, "test": MNIST_TEST})
    monkeypatch.setattr(mnist, "DEFAULT_ROOT", tmp_path / "cache")
    return tmp_path


def test_mnist_from_torchvision_layout(small_mnist):
    arrays = tiny_mnist(small_mnist / "root" / "MNIST" / "raw")
    cfg = config("mnist", root=str(small_mnist / "root"))
    data = load_data(cfg)
    assert isinstance(data, TensorData) and data.name == "mnist" and data.augment is None
    assert data.train_x.shape == (MNIST_TRAIN, 1, 28, 28) and data.test_x.shape == (
        MNIST_TEST,
        1,
        28,
        28,
    )
    assert data.source == str(small_mnist / "root" / "MNIST" / "raw")
    mean, std = cfg.mean[0], cfg.std[0]
    expected = (
        ((torch.from_numpy(arrays["train_images"]).double() / 255 - mean) / std)
        .float()
        .unsqueeze(1)
    )
    torch.testing.assert_close(data.train_x, expected)
    assert data.test_y.tolist() == arrays["test_labels"].tolist()
    small = load_data(config("mnist", root=str(small_mnist / "root"), train_size=20))
    assert torch.bincount(small.train_y).tolist() == [2] * 10


def test_mnist_default_folder_missing_and_checks(small_mnist):
    with pytest.raises(UserError) as err:
        load_data(config("mnist"))
    one_line_error(
        err,
        str(mnist.DEFAULT_ROOT / "MNIST" / "raw"),
        "train-images-idx3-ubyte",
        "data.download=true",
    )
    with pytest.raises(UserError) as err:
        load_data(config("mnist", root=str(small_mnist / "elsewhere")))
    one_line_error(err, "MNIST not found in data.root=", "data.download=true")
    # where a download puts it: found without root
    tiny_mnist(small_mnist / "cache" / "MNIST" / "raw", gz=False)
    assert load_data(config("mnist")).source == str(small_mnist / "cache" / "MNIST" / "raw")
    with pytest.raises(UserError, match="data.in_channels=1"):
        load_data(config("mnist", in_channels=3, mean=[0.1], std=[0.3]))
    with pytest.raises(UserError, match="outside"):
        load_data(config("mnist", num_classes=4))


def test_mnist_download_with_fake_torchvision(small_mnist, monkeypatch):
    calls = []

    class FakeMNIST:
        def __init__(self, root, train=True, download=False):
            calls.append((Path(root), train, download))
            raw = Path(root) / "MNIST" / "raw"
            if idx_images.find_files(raw) is None:
                tiny_mnist(raw, gz=False)

    fake_torchvision(monkeypatch, MNIST=FakeMNIST)
    data = load_data(config("mnist", download=True))
    assert data.source == str(small_mnist / "cache" / "MNIST" / "raw")
    assert calls == [(small_mnist / "cache", True, True), (small_mnist / "cache", False, True)]

    def offline(root, train=True, download=False):
        raise RuntimeError(
            "<urlopen error [Errno -3] Temporary failure in name resolution>\ndetail"
        )

    fake_torchvision(monkeypatch, MNIST=offline)
    with pytest.raises(UserError) as err:
        load_data(config("mnist", root=str(small_mnist / "offline"), download=True))
    one_line_error(err, "downloading MNIST", "failed", "check the network")


# --- CIFAR: torchvision's python pickle batches ---

C10_PER_BATCH, C10_TEST = 10, 20  # 5 train batches of 10 -> 50 images, 5 per class
C100_TRAIN, C100_TEST = 200, 100


def real_style_pickle(entry: dict) -> bytes:
    """Protocol 2 like the real (Python 2) files, which name numpy.core (numpy >= 2 writes
    numpy._core)."""
    return pickle.dumps(entry, protocol=2).replace(
        b"numpy._core.multiarray", b"numpy.core.multiarray"
    )


def cifar_images(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def write_cifar10(root: Path) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    train, train_labels = [], []
    for i in range(1, 6):
        data, labels = (
            cifar_images(rng, C10_PER_BATCH),
            [(j + i) % 10 for j in range(C10_PER_BATCH)],
        )
        (folder / f"data_batch_{i}").write_bytes(
            real_style_pickle(
                {
                    "batch_label": f"training batch {i} of 5",
                    "labels": labels,
                    "data": data,
                    "filenames": [f"img_{i}_{j}.png" for j in range(C10_PER_BATCH)],
                }
            )
        )
        train.append(data)
        train_labels += labels
    test, test_labels = cifar_images(rng, C10_TEST), [j % 10 for j in range(C10_TEST)]
    (folder / "test_batch").write_bytes(
        real_style_pickle(
            {
                "batch_label": "testing batch 1 of 1",
                "labels": test_labels,
                "data": test,
                "filenames": [f"t_{j}.png" for j in range(C10_TEST)],
            }
        )
    )
    (folder / "batches.meta").write_bytes(
        real_style_pickle(
            {
                "label_names": [
                    "airplane",
                    "automobile",
                    "bird",
                    "cat",
                    "deer",
                    "dog",
                    "frog",
                    "horse",
                    "ship",
                    "truck",
                ],
                "num_cases_per_batch": C10_PER_BATCH,
                "num_vis": 3072,
            }
        )
    )
    return {
        "train": np.concatenate(train),
        "train_labels": np.array(train_labels),
        "test": test,
        "test_labels": np.array(test_labels),
    }


def write_cifar100(root: Path) -> dict[str, np.ndarray]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(4)
    out = {}
    for split, n in (("train", C100_TRAIN), ("test", C100_TEST)):
        fine = [j % 100 for j in range(n)]
        data = cifar_images(rng, n)
        (folder / split).write_bytes(
            real_style_pickle(
                {
                    "filenames": [f"{split}_{j}.png" for j in range(n)],
                    "batch_label": f"{split} batch",
                    "fine_labels": fine,
                    "coarse_labels": [f // 5 for f in fine],
                    "data": data,
                }
            )
        )
        out[split], out[f"{split}_labels"] = data, np.array(fine)
    (folder / "meta").write_bytes(
        real_style_pickle(
            {
                "fine_label_names": [f"class{i}" for i in range(100)],
                "coarse_label_names": [f"super{i}" for i in range(20)],
            }
        )
    )
    return out


@pytest.fixture
def small_cifar(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "EXPECTED_COUNTS", {"train": 5 * C10_PER_BATCH, "test": C10_TEST})
    monkeypatch.setattr(cifar, "DEFAULT_ROOT", tmp_path / "cache")
    return tmp_path


def normalized(rows: np.ndarray, mean, std) -> torch.Tensor:
    """Reference: CHW from the row layout (1024 red, 1024 green, 1024 blue), /255, (x - mean) /
    std."""
    x = torch.from_numpy(rows).double().view(-1, 3, 32, 32) / 255
    return ((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)).float()


def test_cifar10_from_pickle_batches(small_cifar):
    arrays = write_cifar10(small_cifar / "root")
    cfg = config("cifar10", root=str(small_cifar / "root"))
    data = load_data(cfg)
    assert data.name == "cifar10" and data.source == str(
        small_cifar / "root" / "cifar-10-batches-py"
    )
    assert data.train_x.shape == (50, 3, 32, 32) and data.test_x.shape == (C10_TEST, 3, 32, 32)
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 3, 32)
    torch.testing.assert_close(data.train_x, normalized(arrays["train"], cfg.mean, cfg.std))
    torch.testing.assert_close(data.test_x, normalized(arrays["test"], cfg.mean, cfg.std))
    assert data.train_y.tolist() == arrays["train_labels"].tolist()
    assert data.augment == Augment(4, True, tuple(-m / s for m, s in zip(cfg.mean, cfg.std)))
    # data.root may also point at the batches folder itself; subsets are stratified
    small = load_data(config("cifar10", root=data.source, train_size=20, test_size=10))
    assert torch.bincount(small.train_y).tolist() == [2] * 10 and small.test_y.numel() == 10


def test_cifar100_uses_the_fine_labels(small_cifar, monkeypatch):
    monkeypatch.setattr(cifar, "EXPECTED_COUNTS", {"train": C100_TRAIN, "test": C100_TEST})
    arrays = write_cifar100(small_cifar / "cache")  # the default folder: no data.root needed
    cfg = config("cifar100")
    data = load_data(cfg)
    assert data.num_classes == 100 and data.train_x.shape == (C100_TRAIN, 3, 32, 32)
    assert (
        data.train_y.tolist() == arrays["train_labels"].tolist() and int(data.train_y.max()) == 99
    )
    torch.testing.assert_close(data.test_x, normalized(arrays["test"], cfg.mean, cfg.std))
    with pytest.raises(UserError, match="data.num_classes=100"):
        load_data(config("cifar100", num_classes=20))


def test_cifar_missing_and_bad_files(small_cifar):
    with pytest.raises(UserError) as err:
        load_data(config("cifar10"))
    one_line_error(
        err,
        "CIFAR-10 not found",
        "cifar-10-batches-py/",
        str(small_cifar / "cache"),
        "data.download=true",
    )
    with pytest.raises(UserError) as err:
        load_data(config("cifar100", root=str(small_cifar / "nowhere")))
    one_line_error(err, "cifar-100-python/", str(small_cifar / "nowhere"), "data.download=true")

    write_cifar10(small_cifar / "root")
    folder = small_cifar / "root" / "cifar-10-batches-py"
    wrong_shape = {"data": np.zeros((10, 100), np.uint8), "labels": [0] * 10}
    (folder / "data_batch_3").write_bytes(real_style_pickle(wrong_shape))
    with pytest.raises(UserError) as err:
        load_data(config("cifar10", root=str(small_cifar / "root")))
    one_line_error(err, "data_batch_3", "(n, 3072)")
    (folder / "data_batch_3").write_bytes(
        real_style_pickle({"data": np.zeros((10, 3072), np.uint8)})[:-30]
    )
    with pytest.raises(UserError, match="not a CIFAR python batch"):
        load_data(config("cifar10", root=str(small_cifar / "root")))

    class Evil:
        def __reduce__(self):
            return (Path.touch, (small_cifar / "pwned",))

    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": Evil(), "labels": []}, protocol=2))
    with pytest.raises(UserError, match="unexpected object"):
        load_data(config("cifar10", root=str(small_cifar / "root")))
    assert not (small_cifar / "pwned").exists()  # the restricted unpickler ran nothing


def test_cifar_download_with_fake_torchvision(small_cifar, monkeypatch):
    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            calls.append((Path(root), train, download))
            write_cifar10(Path(root))

    fake_torchvision(monkeypatch, CIFAR10=FakeCIFAR10)
    data = load_data(config("cifar10", download=True))
    assert calls == [(small_cifar / "cache", True, True)]
    assert data.source == str(small_cifar / "cache" / "cifar-10-batches-py")


# --- augmentation on the device ---


def reference_crop_flip(
    x: torch.Tensor, params: torch.Tensor, padding: int, fill: torch.Tensor
) -> torch.Tensor:
    """Slow per-image reference: pad with `fill`, cut the crop at (top, left), mirror it if
    asked."""
    out = []
    for image, (top, left, flip) in zip(x, params.tolist()):
        c, h, w = image.shape
        padded = fill.view(c, 1, 1).repeat(1, h + 2 * padding, w + 2 * padding)
        padded[:, padding : padding + h, padding : padding + w] = image
        crop = padded[:, top : top + h, left : left + w]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out)


def test_crop_flip_matches_the_per_sample_reference():
    x = torch.randn(64, 3, 12, 10)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    for padding, flip in ((4, True), (2, False), (0, True)):
        augment = Augment(padding, flip, tuple(fill.tolist()))
        params = augment.draw(64, torch.Generator().manual_seed(padding))
        out = augment.apply(x, params)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert torch.equal(out, reference_crop_flip(x, params, padding, fill))
        assert params[:, :2].min() >= 0 and params[:, :2].max() <= 2 * padding
        assert set(params[:, 2].tolist()) == ({0, 1} if flip else {0})


def test_every_output_is_a_crop_or_mirrored_crop_of_its_input():
    """Without using the parameters: each output image is one of the (2p+1)^2 x 2 candidates."""
    padding, fill = 2, torch.tensor([0.5])
    x = torch.randn(16, 1, 8, 8)
    augment = Augment(padding, True, (0.5,))
    out = augment.apply(x, augment.draw(16, torch.Generator().manual_seed(1)))
    for image, result in zip(x, out):
        candidates = [
            reference_crop_flip(image[None], torch.tensor([[t, l, f]]), padding, fill)[0]
            for t in range(2 * padding + 1)
            for l in range(2 * padding + 1)
            for f in (0, 1)
        ]
        assert any(torch.equal(result, c) for c in candidates)


def test_augmentation_draws_are_uniform_and_reproducible():
    augment = Augment(4, True, (0.0,))
    params = augment.draw(9000, torch.Generator().manual_seed(0))
    counts = torch.bincount(params[:, 0], minlength=9)
    assert counts.min() > 850 and counts.max() < 1150  # 1000 expected per offset
    assert 0.45 < params[:, 2].float().mean() < 0.55
    x = torch.randn(40, 1, 8, 8)
    y = torch.arange(40)
    first = list(tensor_batches(x, y, 8, 5, torch.Generator().manual_seed(5), augment))
    again = list(tensor_batches(x, y, 8, 5, torch.Generator().manual_seed(5), augment))
    other = list(tensor_batches(x, y, 8, 5, torch.Generator().manual_seed(6), augment))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_no_augmentation_is_a_no_op_and_draws_nothing_more():
    x, y = torch.randn(40, 1, 8, 8), torch.arange(40)
    generator = torch.Generator().manual_seed(3)
    batches = list(tensor_batches(x, y, 8, 5, generator))
    reference = torch.Generator().manual_seed(3)
    order = torch.randperm(40, generator=reference)
    assert torch.equal(torch.cat([b[0] for b in batches]), x[order])  # plain permutation slices
    # only the permutation was drawn
    assert torch.equal(generator.get_state(), reference.get_state())


def test_augment_config_keys():
    assert from_config(config("fashion_mnist"), [0.0], 28) is None  # off by default
    assert from_config(config("synthetic"), [0.0], 28) is None
    assert from_config(config("fashion_mnist", augment=True), [-1.0], 28) == Augment(
        4, True, (-1.0,)
    )
    assert from_config(config("mnist", augment=True), [-1.0], 28) == Augment(2, False, (-1.0,))
    # nothing left to do
    assert from_config(config("cifar10", flip=False, crop_padding=0), [0.0] * 3, 32) is None
    for key, value in (("augment", "yes"), ("crop_padding", -1), ("crop_padding", 32), ("flip", 1)):
        with pytest.raises(UserError, match=f"data.{key}"):
            from_config(config("cifar10", **{key: value}), [0.0] * 3, 32)


def test_synthetic_with_augmentation_trains_on_crops():
    data = load_data(config("synthetic", augment=True, train_size=64, image_size=16))
    assert data.augmentation.startswith("random crop (padding 4) + horizontal flip")
    inputs, _ = next(data.train_batches(64, 1, torch.Generator().manual_seed(0)))
    # zero padding shows up in some crops
    assert inputs.shape == (64, 1, 16, 16) and (inputs == 0).any()


# --- image folders ---


def write_image_folder(
    root: Path, train_per_class: int = 6, val_per_class: int = 3, size: int = 40
) -> Path:
    from PIL import Image

    rng = np.random.default_rng(11)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for label, name in enumerate(("n01440764", "n02102040")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 128, (size, size + 8, 3), dtype=np.uint8) + 100 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{name}_{i}.png")
    return root


def folder_config(path: Path, **overrides):
    return config(
        "imagefolder",
        **{"path": str(path), "image_size": 32, "num_classes": 2, "workers": 0, **overrides},
    )


def test_imagefolder_batches_are_normalized_on_the_device(tmp_path):
    from torchvision import datasets
    from torchvision import transforms as T

    root = write_image_folder(tmp_path / "imgs")
    cfg = folder_config(root)
    data = load_data(cfg)
    assert isinstance(data, FolderData) and (data.train_size, data.test_size) == (12, 6)
    assert (
        data.pipeline == "DataLoader, 0 workers"
        and "random-resized crop to 32 px" in data.augmentation
    )
    expected = datasets.ImageFolder(
        str(root / "val"),
        transform=T.Compose(
            [
                T.Resize(36),
                T.CenterCrop(32),
                T.ToTensor(),
                T.Normalize(list(cfg.mean), list(cfg.std)),
            ]
        ),
    )
    xs, ys = zip(*data.test_batches(4))
    assert [x.shape[0] for x in xs] == [4, 2]
    torch.testing.assert_close(
        torch.cat(xs), torch.stack([expected[i][0] for i in range(6)]), rtol=0, atol=1e-6
    )
    assert torch.cat(ys).tolist() == [0, 0, 0, 1, 1, 1]
    train = list(data.train_batches(4, 3, torch.Generator().manual_seed(0)))
    assert [tuple(x.shape) for x, _ in train] == [(4, 3, 32, 32)] * 3 and all(
        y.dtype == torch.int64 for _, y in train
    )
    again = list(data.train_batches(4, 3, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(train, again))
    data.close()


def test_imagefolder_errors_are_one_line(tmp_path):
    with pytest.raises(UserError) as err:
        load_data(config("imagefolder"))
    one_line_error(err, "data.path=DIR", "train/", "val/")
    with pytest.raises(UserError) as err:
        load_data(folder_config(tmp_path / "absent"))
    one_line_error(err, "is not a folder")
    root = write_image_folder(tmp_path / "imgs")
    with pytest.raises(UserError) as err:
        load_data(folder_config(root, num_classes=10))
    one_line_error(err, "2 class folders", "data.num_classes=2")
    (root / "val" / "n09999999").mkdir()
    with pytest.raises(UserError) as err:
        load_data(folder_config(root))
    one_line_error(err, str(root / "val"))
    (root / "val" / "n09999999").rmdir()
    for child in (root / "val").iterdir():
        for f in child.iterdir():
            f.unlink()
        child.rmdir()
    with pytest.raises(UserError) as err:
        load_data(folder_config(root))
    one_line_error(err, str(root / "val"), "one sub-folder of images per class")
    with pytest.raises(UserError, match="crop_scale"):
        load_data(folder_config(root, crop_scale=[0.5, 2.0]))


def test_imagefolder_run_records_and_workers_do_not_change_results(normbench, tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    args = [
        "run",
        "data=imagefolder",
        f"data.path={root}",
        "data.image_size=32",
        "data.num_classes=2",
        "backbone=lenet",
        "batch=4",
        "epochs=2",
        "lr=0.4",
        "log.progress=none",
    ]
    first = normbench(*args, "data.workers=0", out=tmp_path / "a")
    assert first.code == 0, first.err
    record = first.record()
    assert record["status"] == "completed" and len(record["history"]) == 2
    setup = record["setup"]
    assert (setup["train_images"], setup["test_images"], setup["steps_per_epoch"]) == (12, 6, 3)
    assert setup["data_source"] == str(root) and setup["augment"] is True
    assert (
        setup["data_pipeline"].startswith("DataLoader")
        and "random-resized crop" in setup["augmentation"]
    )
    second = normbench(*args, "data.workers=2", out=tmp_path / "b").record()
    strip = lambda history: [{k: v for k, v in h.items() if k != "train_seconds"} for h in history]  # noqa: E731
    assert strip(second["history"]) == strip(record["history"])


# --- normbench run on CIFAR-10 with augmentation: records, resumes exactly ---


def test_cifar10_run_with_augmentation_resumes_exactly(
    normbench, small_cifar, monkeypatch, tmp_path
):
    write_cifar10(small_cifar / "root")
    args = [
        "run",
        "data=cifar10",
        f"data.root={small_cifar / 'root'}",
        "backbone=lenet",
        "batch=10",
        "epochs=2",
        "lr=2.56",
        "log.progress=none",
    ]
    reference = normbench(*args, out=tmp_path / "ref")
    assert reference.code == 0, reference.err
    record = reference.record()
    assert record["status"] == "completed"
    assert (
        record["setup"]["augment"] is True and record["setup"]["data_pipeline"] == "tensors on cpu"
    )
    assert record["setup"]["augmentation"] == (
        "random crop (padding 4) + horizontal flip, on the device"
    )
    assert record["setup"]["data_source"].endswith("cifar-10-batches-py")

    real_evaluate, calls = epochs.evaluate, {"n": 0}

    def evaluate_then_interrupt(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*a, **k)

    monkeypatch.setattr(epochs, "evaluate", evaluate_then_interrupt)
    assert normbench(*args, out=tmp_path / "cut").code == 130
    monkeypatch.setattr(epochs, "evaluate", real_evaluate)
    resumed = normbench(*args, out=tmp_path / "cut").record()
    strip = lambda history: [{k: v for k, v in h.items() if k != "train_seconds"} for h in history]  # noqa: E731
    assert strip(resumed["history"]) == strip(record["history"])
    no_aug = normbench(*args, "data.augment=false", "epochs=1", out=tmp_path / "plain").record()
    assert no_aug["setup"]["augment"] is False
    assert no_aug["history"][0]["train_loss"] != record["history"][0]["train_loss"]


def test_new_data_sets_are_registered_and_listed(normbench):
    assert {"mnist", "cifar10", "cifar100", "imagefolder"} <= set(DATASETS)
    listed = normbench("list", "data")
    assert listed.code == 0
    assert {line.split()[0] for line in listed.out.splitlines()} >= {
        "mnist",
        "cifar10",
        "cifar100",
        "imagefolder",
    }
