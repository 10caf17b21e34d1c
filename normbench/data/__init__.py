"""Data sets: registry, `load_data`, the two batch sources (tensors on the device; a DataLoader) and
the helpers the loaders share (config values, stratified subsets, normalization)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from normbench.errors import UserError

__all__ = [
    "DATASETS",
    "DataSource",
    "DataSpec",
    "Shard",
    "TensorData",
    "load_data",
    "stratified_subset",
    "tensor_batches",
]

# (inputs (B, C, H, W) float32 on the device, targets (B,) int64)
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Shard:
    """This process's part of each epoch in a data-parallel run of `world` processes
    (normbench.distributed).

    Every process draws the same epoch order; it is cut into consecutive chunks of `accum * batch`
    images, one chunk per process per SGD step, and process `rank` takes chunks rank, rank + world,
    ... So at SGD step k the processes together train on the images one process with accum * world
    micro-batches takes at step k, and each micro-batch here is exactly one of its micro-batches
    (same images, same order)."""

    rank: int
    world: int
    accum: int

    def positions(self, count: int, batch: int) -> torch.Tensor:
        """Positions in the epoch order (int64, ascending) of this process's `count` micro-batches
        of `batch` images, `count` a multiple of `accum`; the epoch uses the first count * world *
        batch positions."""
        if count % self.accum:
            raise ValueError(
                f"{count} micro-batches do not make whole SGD steps of accum={self.accum}"
            )
        chunk, steps = self.accum * batch, count // self.accum
        return (
            torch.arange(steps * self.world * chunk)
            .view(steps, self.world, chunk)[:, self.rank]
            .reshape(-1)
        )


class DataSource(Protocol):
    """What training and evaluation need from a data set, whichever way its batches are made."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    source: str  # where the data was read from

    @property
    def train_size(self) -> int: ...
    @property
    def test_size(self) -> int: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def augmentation(self) -> str: ...  # "none", or what is done to training images
    @property
    def pipeline(self) -> str: ...  # how batches are made, for the record

    def train_batches(
        self, batch: int, count: int, generator: torch.Generator, shard: Shard | None = None
    ) -> Iterator[Batch]:
        """`count` training micro-batches of exactly `batch` images in a fresh random order. All
        randomness (order, augmentation) comes from `generator`, drawn when this is called (not
        lazily). With `shard`, the order is drawn for all shard.world processes and this process's
        micro-batches are taken from it."""

    def test_batches(self, eval_batch: int) -> Iterator[Batch]:
        """The whole test set in a fixed order, in chunks of at most `eval_batch` images."""

    def close(self) -> None:
        """Release worker processes, if any."""


def tensor_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int,
    count: int,
    generator: torch.Generator,
    augment: Any = None,
    shard: Shard | None = None,
) -> Iterator[Batch]:
    """Micro-batches as slices of one permutation of (x, y), augmented on x's device when `augment`
    is set.

    The permutation (and the augmentation parameters of every position in it) are drawn now from the
    CPU `generator`, so the order is the same on any device; with `augment=None` nothing else is
    drawn. With `shard`, both are drawn for the whole epoch of all processes (so every process's
    generator moves alike) and this process's positions are kept.
    """
    order = torch.randperm(x.shape[0], generator=generator)
    mine = None if shard is None else shard.positions(count, batch)
    if mine is not None:
        order = order[mine]
    order = order.to(x.device)
    if augment is not None:
        params = augment.draw(count * batch * (1 if shard is None else shard.world), generator)
        params = (params if mine is None else params[mine]).to(x.device)
        fill = augment.fill_like(x)  # made once: a host-to-device copy per batch would sync

    def batches() -> Iterator[Batch]:
        for start in range(0, count * batch, batch):
            index = order[start : start + batch]
            inputs = x[index]
            if augment is not None:
                inputs = augment.apply(inputs, params[start : start + batch], fill)
            yield inputs, y[index]

    return batches()


@dataclass
class TensorData:
    """A whole data set as tensors on one device; images already normalized. Training batches are
    slices of a permutation, augmented on the device (`augment`, an `augment.Augment` or None)."""

    name: str
    train_x: torch.Tensor  # (N, C, H, W) float32
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int
    source: str  # path the data was read from, or "synthetic"
    augment: Any = None  # normbench.data.augment.Augment | None

    @property
    def train_size(self) -> int:
        return self.train_x.shape[0]

    @property
    def test_size(self) -> int:
        return self.test_x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    @property
    def augmentation(self) -> str:
        return "none" if self.augment is None else f"{self.augment.describe()}, on the device"

    @property
    def pipeline(self) -> str:
        return f"tensors on {self.device.type}"

    def train_batches(
        self, batch: int, count: int, generator: torch.Generator, shard: Shard | None = None
    ) -> Iterator[Batch]:
        return tensor_batches(
            self.train_x, self.train_y, batch, count, generator, self.augment, shard
        )

    def test_batches(self, eval_batch: int) -> Iterator[Batch]:
        for start in range(0, self.test_size, eval_batch):
            yield self.test_x[start : start + eval_batch], self.test_y[start : start + eval_batch]

    def close(self) -> None:
        """Nothing to release: the tensors go with the object (FolderData stops its loader workers
        here)."""


@dataclass(frozen=True)
class DataSpec:
    """A registered data set: `loader(cfg, device) -> DataSource` and a one-line description."""

    loader: Callable[[Any, torch.device], DataSource]
    description: str


# --- config helpers shared by the loaders (cfg is an OmegaConf DictConfig or a plain dict) ---


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """`cfg[key]`, or `default` when the key is absent or null."""
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def cfg_int(
    cfg: Any, key: str, default: int | None = None, minimum: int | None = None
) -> int | None:
    """An integer config value (None stays None) at least `minimum`, else UserError naming the
    key."""
    value = cfg_get(cfg, key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(
            f"data.{key} must be an integer, got {value!r}: set e.g. data.{key}={default or 1}"
        )
    if minimum is not None and value < minimum:
        raise UserError(f"data.{key}={value} is too small: use data.{key}>={minimum}")
    return value


def cfg_bool(cfg: Any, key: str, default: bool = False) -> bool:
    """A true/false config value, else UserError naming the key."""
    value = cfg_get(cfg, key, default)
    if not isinstance(value, bool):
        raise UserError(
            f"data.{key} must be true or false, got {value!r}: e.g. "
            f"data.{key}={str(default).lower()}"
        )
    return value


def cfg_floats(cfg: Any, key: str, length: int) -> list[float]:
    """A per-channel list of floats (a scalar is broadcast) of exactly `length` entries."""
    value = cfg_get(cfg, key)
    if value is None:
        raise UserError(f"data.{key} is not set: give one value per channel, e.g. data.{key}=[0.5]")
    values = [value] if isinstance(value, (int, float)) else list(value)
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(f"data.{key} must be numbers, got {value!r}") from None
    if len(floats) == 1 and length > 1:
        floats = floats * length
    if len(floats) != length:
        raise UserError(
            f"data.{key} has {len(floats)} values but data.in_channels={length}: give "
            "one per channel"
        )
    return floats


def cfg_mean_std(cfg: Any, channels: int) -> tuple[list[float], list[float]]:
    """data.mean and data.std, one per channel, std positive."""
    mean, std = cfg_floats(cfg, "mean", channels), cfg_floats(cfg, "std", channels)
    if any(s <= 0 for s in std):
        raise UserError(f"data.std={std} must be positive")
    return mean, std


def check_fixed_shape(cfg: Any, title: str, in_channels: int, image_size: int) -> None:
    """A data set whose images have one shape: data.in_channels and data.image_size must say so."""
    if cfg_int(cfg, "in_channels", in_channels) != in_channels:
        raise UserError(
            f"{title} images have {in_channels} channel{'s' * (in_channels > 1)}: "
            f"set data.in_channels={in_channels}"
        )
    if cfg_int(cfg, "image_size", image_size) != image_size:
        raise UserError(
            f"{title} images are {image_size}x{image_size}: set data.image_size={image_size}"
        )


def check_labels(labels: torch.Tensor, num_classes: int, where: Any, fix: str) -> None:
    """Every label in [0, num_classes), else UserError `where: ...: fix`."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise UserError(f"{where}: labels span [{low}, {high}], outside [0, {num_classes}): {fix}")


def normalize(
    images: torch.Tensor, mean: list[float], std: list[float], device: torch.device
) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 on `device` (moved as uint8: 4x less to copy), scaled to [0, 1]
    then (x - mean) / std per channel: the same operations, in the same order, as ToTensor +
    Normalize."""
    x = images.to(device).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def black(mean: list[float], std: list[float]) -> list[float]:
    """The normalized value of a black pixel per channel: what crop padding fills in (torchvision's
    RandomCrop(padding=p) pads the raw image with 0, before normalization)."""
    return [-m / s for m, s in zip(mean, std)]


def take_subset(images: torch.Tensor, labels: torch.Tensor, size: int | None, seed: int):
    """(images, labels) restricted to a stratified subset of `size` (None: all)."""
    if size is None or size == labels.numel():
        return images, labels
    index = stratified_subset(labels, size, seed)
    return images[index], labels[index]


def stratified_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices (ascending, int64, on labels' device) of a class-stratified subset of `size` samples.

    Rule: class c with n_c of the N samples gets floor(size * n_c / N) samples; the samples still
    missing go one each to the classes with the largest remainder (size * n_c mod N), ties to the
    smaller label. Every class is thus within one sample of its exact share (balanced data gives
    equal counts up to one). Within a class the samples kept are the first ones of a permutation
    drawn from `torch.Generator().manual_seed(seed)`, so the subset depends only on `labels`,
    `size` and `seed`, never on torch's global RNG state. 1 <= size <= N and size >= the number
    of classes present, else UserError.
    """
    lab = torch.as_tensor(labels).reshape(-1).to("cpu", torch.int64)
    n = lab.numel()
    if isinstance(size, bool) or not isinstance(size, int):
        raise UserError(f"subset size must be an integer, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"data.subset_seed must be an integer, got {seed!r}")
    if size <= 0:
        raise UserError(
            f"subset size {size} must be positive: use null for the whole set or a size >= 1"
        )
    if size > n:
        raise UserError(
            f"subset size {size} exceeds the {n} samples available: use at most {n}, "
            "or null for all"
        )
    classes, counts = torch.unique(lab, sorted=True, return_counts=True)
    if size < len(classes):
        raise UserError(
            f"subset size {size} is smaller than the {len(classes)} classes: use at "
            f"least {len(classes)}"
        )
    quota = counts * size // n
    remainder = counts * size - quota * n
    short = size - int(quota.sum())
    quota[torch.argsort(-remainder, stable=True)[:short]] += 1

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    by_class = torch.argsort(lab[perm], stable=True)
    index = perm[by_class]  # grouped by class, random order within each class
    cls = torch.searchsorted(classes, lab[index])
    rank = torch.arange(n) - (torch.cumsum(counts, 0) - counts)[cls]
    keep = index[rank < quota[cls]]
    return keep.sort().values.to(torch.as_tensor(labels).device)


def load_data(cfg: Any, device: torch.device | str = "cpu") -> DataSource:
    """Load the data set named by `cfg["name"]` for training on `device`."""
    name = cfg_get(cfg, "name")
    if name not in DATASETS:
        known = ", ".join(sorted(DATASETS))
        raise UserError(f"unknown data set {name!r}: choose data=<name> with one of {known}")
    return DATASETS[name].loader(cfg, torch.device(device))


# Imported last: the loaders import TensorData and the helpers above from this module.
from normbench.data import cifar, fashion_mnist, imagefolder, mnist, synthetic  # noqa: E402

DATASETS: dict[str, DataSpec] = {
    "fashion_mnist": DataSpec(fashion_mnist.load, fashion_mnist.DESCRIPTION),
    "mnist": DataSpec(mnist.load, mnist.DESCRIPTION),
    "cifar10": DataSpec(cifar.load_cifar10, cifar.CIFAR10.description),
    "cifar100": DataSpec(cifar.load_cifar100, cifar.CIFAR100.description),
    "imagefolder": DataSpec(imagefolder.load, imagefolder.DESCRIPTION),
    "synthetic": DataSpec(synthetic.load, synthetic.DESCRIPTION),
}
