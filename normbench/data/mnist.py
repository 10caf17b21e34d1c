"""MNIST (LeCun et al. 1998) from idx files in data.root or the download folder, or downloaded by
torchvision when data.download=true. Same format and code as Fashion-MNIST (idx_images)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from normbench.data import idx_images
from normbench.data.source import TensorData

DESCRIPTION = "MNIST (LeCun et al. 1998): 60k/10k 28x28 grey handwritten digits, 10 classes"

# data.root=null: look here; data.download=true puts it here
DEFAULT_ROOT = Path("~/.cache/normbench/data")
EXPECTED_COUNTS = {"train": 60000, "test": 10000}


def not_found() -> str:
    names = ", ".join(f"{n}[.gz]" for n in idx_images.FILES.values())
    return (
        f"MNIST not found: put {names} in {DEFAULT_ROOT}/MNIST/raw (or in data.root=DIR), "
        "or set data.download=true to fetch it with torchvision"
    )


def spec() -> idx_images.IdxSet:
    """Read from the module's constants at each call, so they can be pointed elsewhere."""
    return idx_images.IdxSet(
        name="mnist",
        title="MNIST",
        torchvision_class="MNIST",
        counts=EXPECTED_COUNTS,
        num_classes=10,
        system_dir=None,
        download_root=DEFAULT_ROOT,
        not_found=not_found(),
        offline_fix="put the four idx files (from another machine) in data.root=DIR",
    )


def load(cfg: Any, device: torch.device) -> TensorData:
    """Load MNIST per `cfg` (keys of configs/data/mnist.yaml) onto `device`."""
    return idx_images.load(cfg, device, spec())
