"""Fashion-MNIST from idx files: data.root, then Debian's package, then the download folder; a
torchvision download when data.download=true. The work is done by idx_images (shared with MNIST)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from normbench.data import idx_images
from normbench.data.source import TensorData

DESCRIPTION = "Fashion-MNIST (Xiao et al. 2017): 60k/10k 28x28 grey clothing images, 10 classes"

FILES = idx_images.FILES
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
DEFAULT_DOWNLOAD_ROOT = Path("~/.cache/normbench/data")
EXPECTED_COUNTS = {"train": 60000, "test": 10000}  # images per split
IMAGE_SIZE = idx_images.IMAGE_SIZE
IN_CHANNELS = idx_images.IN_CHANNELS

NOT_FOUND = (
    "Fashion-MNIST not found: install it with `sudo apt-get install dataset-fashion-mnist`, "
    "or set data.root=DIR holding the four idx files, or data.download=true"
)

find_files = idx_images.find_files


def spec() -> idx_images.IdxSet:
    """Read from the module's constants at each call, so they can be pointed elsewhere."""
    return idx_images.IdxSet(
        name="fashion_mnist",
        title="Fashion-MNIST",
        torchvision_class="FashionMNIST",
        counts=EXPECTED_COUNTS,
        num_classes=10,
        system_dir=DEBIAN_DIR,
        download_root=DEFAULT_DOWNLOAD_ROOT,
        not_found=NOT_FOUND,
        offline_fix="`sudo apt-get install dataset-fashion-mnist`",
    )


def locate(cfg: Any) -> dict[str, Path]:
    return idx_images.locate(cfg, spec())


def load(cfg: Any, device: torch.device) -> TensorData:
    """Load Fashion-MNIST per `cfg` (keys of configs/data/fashion_mnist.yaml) onto `device`."""
    return idx_images.load(cfg, device, spec())
