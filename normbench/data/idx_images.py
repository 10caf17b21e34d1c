"""Data sets shipped as four MNIST-format idx files (MNIST, Fashion-MNIST): one piece of code finds,
downloads (torchvision), checks (integrity.py, cached) and loads them as normalized tensors on the
device.

A data set is described by an `IdxSet`; its module (mnist.py, fashion_mnist.py) builds it from its
module-level constants each time it is used, so those constants can be pointed elsewhere (tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from normbench.data import integrity
from normbench.data.idx import read_idx
from normbench.data.prep import cfg_bool, cfg_get, check_labels, torchvision_download
from normbench.data.source import TensorData
from normbench.data.tensor_set import load_image_set
from normbench.errors import UserError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_SIZE = 28
IN_CHANNELS = 1


@dataclass(frozen=True)
class IdxSet:
    name: str  # registry name, e.g. "mnist"
    title: str  # for messages, e.g. "MNIST"
    # torchvision.datasets class; it keeps the files in ROOT/<class>/raw
    torchvision_class: str
    counts: dict[str, int]  # images per split
    num_classes: int
    # a system-wide copy looked at when data.root is null (Debian's package)
    system_dir: Path | None
    download_root: Path  # where data.download=true puts the files when data.root is null
    not_found: str  # the one-line error when data.root is null and no copy is found
    offline_fix: str  # how to get the files without the network, for the download error


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


def _in(root: Path, spec: IdxSet) -> dict[str, Path] | None:
    """The files in `root` itself or in torchvision's `root/<class>/raw`."""
    for folder in (root, root / spec.torchvision_class / "raw"):
        found = find_files(folder)
        if found is not None:
            return found
    return None


def download(root: Path, spec: IdxSet) -> dict[str, Path]:
    """Fetch the raw files with torchvision into root/<class>/raw."""
    splits = (True, False)
    torchvision_download(spec.title, spec.torchvision_class, root, splits, spec.offline_fix)
    raw = root / spec.torchvision_class / "raw"
    found = find_files(raw)
    if found is None:
        raise UserError(
            f"torchvision downloaded {spec.title} but {raw} lacks the idx files: "
            "delete that folder and retry"
        )
    return found


def locate(cfg: Any, spec: IdxSet) -> dict[str, Path]:
    """The four idx files: in data.root if set (else the system copy, then the download folder), or
    downloaded by torchvision when data.download=true."""
    root = cfg_get(cfg, "root")
    want_download = cfg_bool(cfg, "download", False)
    if root is not None:
        root = Path(str(root)).expanduser()
        found = _in(root, spec)
        if found is not None:
            return found
        if not want_download:
            names = ", ".join(f"{n}[.gz]" for n in FILES.values())
            raise UserError(
                f"{spec.title} not found in data.root={root} (nor "
                f"{root}/{spec.torchvision_class}/raw): "
                f"put {names} there, or set data.download=true"
                + (", or data.root=null to use the system copy" if spec.system_dir else "")
            )
        return download(root, spec)
    for folder in ([spec.system_dir] if spec.system_dir else []) + [
        spec.download_root.expanduser()
    ]:
        found = _in(folder, spec)
        if found is not None:
            return found
    if want_download:
        return download(spec.download_root.expanduser(), spec)
    raise UserError(spec.not_found)


def read_split(
    files: dict[str, Path], split: str, num_classes: int, spec: IdxSet
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, 28, 28) and int64 labels (N,) of one split, checked."""
    images_path, labels_path = files[f"{split}_images"], files[f"{split}_labels"]
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1).to(torch.int64)
    expected = spec.counts[split]
    fix = "reinstall or re-download it"
    if images.shape[0] != expected:
        raise UserError(
            f"{images_path}: {images.shape[0]} images where {spec.title} has {expected}: {fix}"
        )
    if tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise UserError(f"{images_path}: images are {tuple(images.shape[1:])}, not 28x28: {fix}")
    if labels.shape[0] != expected:
        raise UserError(
            f"{labels_path}: {labels.shape[0]} labels where {spec.title} has {expected}: {fix}"
        )
    check_labels(
        labels, num_classes, labels_path, f"set data.num_classes={spec.num_classes} or {fix}"
    )
    return images.unsqueeze(1), labels


def load(cfg: Any, device: torch.device, spec: IdxSet) -> TensorData:
    """Load the data set per `cfg` (keys of configs/data/<name>.yaml) onto `device`."""

    def find() -> tuple[Any, str]:
        files = locate(cfg, spec)
        integrity.check_files(files, spec)  # on first use; cached while the files are unchanged
        return files, str(files["train_images"].parent)

    return load_image_set(cfg, device, spec, IN_CHANNELS, IMAGE_SIZE, find, read_split)
