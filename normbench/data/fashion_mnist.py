"""Fashion-MNIST from idx files: data.root, then Debian's package, then a torchvision download."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from normbench.data import TensorData, cfg_floats, cfg_get, cfg_int, stratified_subset
from normbench.data.idx import read_idx
from normbench.errors import UserError

DESCRIPTION = "Fashion-MNIST (Xiao et al. 2017): 60k/10k 28x28 grey clothing images, 10 classes"

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
DEFAULT_DOWNLOAD_ROOT = Path("~/.cache/normbench/data")
EXPECTED_COUNTS = {"train": 60000, "test": 10000}  # images per split
IMAGE_SIZE = 28
IN_CHANNELS = 1

NOT_FOUND = (
    "Fashion-MNIST not found: install it with `sudo apt-get install dataset-fashion-mnist`, "
    "or set data.root=DIR holding the four idx files, or data.download=true"
)


def find_files(folder: Path) -> dict[str, Path] | None:
    """The four idx files in `folder` (plain preferred over .gz), or None if any is missing."""
    found = {}
    for key, name in FILES.items():
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _download(root: Path) -> dict[str, Path]:
    """Fetch the raw files with torchvision into root/FashionMNIST/raw."""
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(root=str(root), train=True, download=True)
        FashionMNIST(root=str(root), train=False, download=True)
    except Exception as e:  # network, disk, checksum: all fixable by the user
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"downloading Fashion-MNIST into {root} failed ({message}): "
            "check the network, or `sudo apt-get install dataset-fashion-mnist`"
        ) from None
    found = find_files(root / "FashionMNIST" / "raw")
    if found is None:
        raise UserError(f"torchvision downloaded Fashion-MNIST but {root}/FashionMNIST/raw lacks the idx files: "
                        "delete that folder and retry")
    return found


def locate(cfg: Any) -> dict[str, Path]:
    """The four idx files, looked up in data.root, Debian's folder, then downloaded if allowed."""
    root = cfg_get(cfg, "root")
    download = bool(cfg_get(cfg, "download", False))
    if root is not None:
        root = Path(str(root)).expanduser()
        for folder in (root, root / "FashionMNIST" / "raw"):
            found = find_files(folder)
            if found is not None:
                return found
        if not download:
            names = ", ".join(f"{n}[.gz]" for n in FILES.values())
            raise UserError(
                f"Fashion-MNIST not found in data.root={root} (nor {root}/FashionMNIST/raw): "
                f"put {names} there, or set data.download=true, or data.root=null to use the system copy"
            )
    else:
        found = find_files(DEBIAN_DIR)
        if found is not None:
            return found
    if download:
        return _download(root if root is not None else DEFAULT_DOWNLOAD_ROOT.expanduser())
    raise UserError(NOT_FOUND)


def _read_split(files: dict[str, Path], split: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 28, 28) and int64 labels (N,) of one split, checked."""
    images_path, labels_path = files[f"{split}_images"], files[f"{split}_labels"]
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1).to(torch.int64)
    expected = EXPECTED_COUNTS[split]
    fix = "reinstall or re-download it"
    if images.shape[0] != expected:
        raise UserError(f"{images_path}: {images.shape[0]} images where Fashion-MNIST has {expected}: {fix}")
    if tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise UserError(f"{images_path}: images are {tuple(images.shape[1:])}, not 28x28: {fix}")
    if labels.shape[0] != expected:
        raise UserError(f"{labels_path}: {labels.shape[0]} labels where Fashion-MNIST has {expected}: {fix}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise UserError(f"{labels_path}: labels span [{low}, {high}], outside [0, {num_classes}): "
                        f"set data.num_classes=10 or {fix}")
    return images, labels


def _subset(images: torch.Tensor, labels: torch.Tensor, size: int | None, seed: int):
    if size is None or size == labels.numel():
        return images, labels
    index = stratified_subset(labels, size, seed)
    return images[index], labels[index]


def _normalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H, W), scaled to [0, 1] then (x - mean) / std."""
    x = images.unsqueeze(1).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def load(cfg: Any, device: torch.device) -> TensorData:
    """Load Fashion-MNIST per `cfg` (keys of configs/data/fashion_mnist.yaml) onto `device`."""
    num_classes = cfg_int(cfg, "num_classes", 10, minimum=2)
    if cfg_int(cfg, "in_channels", IN_CHANNELS) != IN_CHANNELS:
        raise UserError("Fashion-MNIST images have 1 channel: set data.in_channels=1")
    if cfg_int(cfg, "image_size", IMAGE_SIZE) != IMAGE_SIZE:
        raise UserError("Fashion-MNIST images are 28x28: set data.image_size=28")
    mean = cfg_floats(cfg, "mean", IN_CHANNELS)
    std = cfg_floats(cfg, "std", IN_CHANNELS)
    if any(s <= 0 for s in std):
        raise UserError(f"data.std={std} must be positive")
    train_size = cfg_int(cfg, "train_size", None, minimum=1)
    test_size = cfg_int(cfg, "test_size", None, minimum=1)
    seed = cfg_int(cfg, "subset_seed", 0)

    files = locate(cfg)
    train_images, train_y = _subset(*_read_split(files, "train", num_classes), train_size, seed)
    test_images, test_y = _subset(*_read_split(files, "test", num_classes), test_size, seed)
    return TensorData(
        name="fashion_mnist",
        train_x=_normalize(train_images, mean, std).to(device),
        train_y=train_y.to(device),
        test_x=_normalize(test_images, mean, std).to(device),
        test_y=test_y.to(device),
        num_classes=num_classes,
        in_channels=IN_CHANNELS,
        image_size=IMAGE_SIZE,
        source=str(files["train_images"].parent),
    )
