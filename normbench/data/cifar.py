"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from the python pickle batches that torchvision
downloads (`cifar-10-batches-py/`, `cifar-100-python/`), read once into normalized tensors on the
device.

Looked up in data.root (and data.root/<folder>), else in ~/.cache/normbench/data; downloaded there
by torchvision when data.download=true.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normbench.data.prep import cfg_bool, cfg_get, check_labels, torchvision_download
from normbench.data.source import TensorData
from normbench.data.tensor_set import load_image_set
from normbench.errors import UserError

# data.root=null: look here; data.download=true puts it here
DEFAULT_ROOT = Path("~/.cache/normbench/data")
EXPECTED_COUNTS = {"train": 50000, "test": 10000}  # images per split, both data sets
IMAGE_SIZE = 32
IN_CHANNELS = 3


@dataclass(frozen=True)
class CifarSet:
    name: str
    title: str
    description: str
    folder: str  # what the torchvision archive unpacks to, inside data.root
    files: dict[str, tuple[str, ...]]  # split -> pickle files
    label_key: str  # CIFAR-100: the 100 fine labels, not the 20 coarse ones
    num_classes: int
    torchvision_class: str


CIFAR10 = CifarSet(
    "cifar10",
    "CIFAR-10",
    "CIFAR-10 (Krizhevsky 2009): 50k/10k 32x32 colour images, 10 classes",
    "cifar-10-batches-py",
    {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    "labels",
    10,
    "CIFAR10",
)
CIFAR100 = CifarSet(
    "cifar100",
    "CIFAR-100",
    "CIFAR-100 (Krizhevsky 2009): 50k/10k 32x32 colour images, 100 fine classes",
    "cifar-100-python",
    {"train": ("train",), "test": ("test",)},
    "fine_labels",
    100,
    "CIFAR100",
)


class _ArrayUnpickler(pickle.Unpickler):
    """torchvision itself reads these files with plain pickle.load (they come from its checksummed
    download). We only let through what a batch holds -- a dict of numpy arrays, lists and strings
    -- so a file dropped into data.root cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (n, 3072), int64 (n,)) of one pickle batch, checked."""
    fix = "delete it and re-download (data.download=true)"
    try:
        with open(path, "rb") as handle:
            # latin1: the files are Python 2 pickles
            entry = _ArrayUnpickler(handle, encoding="latin1").load()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror}): check its permissions") from None
    except Exception as e:  # truncated, not a pickle, unexpected content
        raise UserError(
            f"{path}: not a CIFAR python batch ({type(e).__name__}: {e}): {fix}"
        ) from None
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        keys = sorted(map(str, entry)) if isinstance(entry, dict) else type(entry).__name__
        raise UserError(
            f"{path}: expected a dict with 'data' and '{label_key}', found {keys}: {fix}"
        )
    data = np.asarray(entry["data"])
    labels = np.asarray(entry[label_key])
    if (
        data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != IN_CHANNELS * IMAGE_SIZE * IMAGE_SIZE
    ):
        raise UserError(f"{path}: 'data' is {data.dtype} {data.shape}, not uint8 (n, 3072): {fix}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: {labels.shape} '{label_key}' for {data.shape[0]} images: {fix}")
    return data, labels.astype(np.int64)


def find_folder(root: Path, spec: CifarSet) -> Path | None:
    """The folder holding all of the set's batch files: root/<folder>, or root itself."""
    names = [name for split in spec.files.values() for name in split]
    for folder in (root / spec.folder, root):
        if all((folder / name).is_file() for name in names):
            return folder
    return None


def download(root: Path, spec: CifarSet) -> Path:
    fix = f"put {spec.folder}/ (from another machine) in data.root=DIR"
    # train=True only: one archive holds both splits
    torchvision_download(spec.title, spec.torchvision_class, root, (True,), fix)
    folder = find_folder(root, spec)
    if folder is None:
        raise UserError(
            f"torchvision downloaded {spec.title} but {root / spec.folder} lacks its batch "
            "files: delete that folder and retry"
        )
    return folder


def locate(cfg: Any, spec: CifarSet) -> Path:
    given = cfg_get(cfg, "root")
    root = Path(str(given)).expanduser() if given is not None else DEFAULT_ROOT.expanduser()
    folder = find_folder(root, spec)
    if folder is not None:
        return folder
    if cfg_bool(cfg, "download", False):
        return download(root, spec)
    names = ", ".join(name for split in spec.files.values() for name in split)
    where = f"data.root={root}" if given is not None else f"{root} (or set data.root=DIR)"
    raise UserError(
        f"{spec.title} not found: put {spec.folder}/ ({names}) in {where}, "
        f"or set data.download=true to fetch it with torchvision"
    )


def read_split(
    folder: Path, split: str, num_classes: int, spec: CifarSet
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, 32, 32) and int64 labels (N,) of one split, checked."""
    batches = [read_batch(folder / name, spec.label_key) for name in spec.files[split]]
    data = np.concatenate([d for d, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    expected = EXPECTED_COUNTS[split]
    if data.shape[0] != expected:
        raise UserError(
            f"{folder}: {data.shape[0]} {split} images where {spec.title} has {expected}: delete "
            "the folder and re-download it (data.download=true)"
        )
    # rows: 1024 R, 1024 G, 1024 B
    images = torch.from_numpy(data).view(-1, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    labels = torch.from_numpy(labels)
    check_labels(
        labels,
        num_classes,
        folder / spec.files[split][0],
        f"set data.num_classes={spec.num_classes} or delete the folder and re-download it",
    )
    return images, labels


def load(cfg: Any, device: torch.device, spec: CifarSet) -> TensorData:
    """Load the set per `cfg` (keys of configs/data/cifar10.yaml / cifar100.yaml) onto `device`."""

    def find() -> tuple[Any, str]:
        folder = locate(cfg, spec)
        return folder, str(folder)

    return load_image_set(cfg, device, spec, IN_CHANNELS, IMAGE_SIZE, find, read_split)


def load_cifar10(cfg: Any, device: torch.device) -> TensorData:
    return load(cfg, device, CIFAR10)


def load_cifar100(cfg: Any, device: torch.device) -> TensorData:
    return load(cfg, device, CIFAR100)
