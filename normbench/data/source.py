"""Where batches come from: the DataSource protocol, a process's Shard of each epoch, seeded
fixed-size evaluation chunks, and TensorData (a whole data set as tensors on the device)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

# (inputs (B, C, H, W) float32 on the device, targets (B,) int64)
Batch = tuple[torch.Tensor, torch.Tensor]
EVAL_SPLITS = ("test", "val")  # what eval_chunks evaluates


@dataclass(frozen=True)
class Shard:
    """This process's part of each epoch in a data-parallel run of `world` processes
    (normbench.distributed), each simulating `devices` devices.

    Every process draws the same epoch order; it is cut into consecutive chunks of `accum * batch`
    images, one chunk per device per SGD step, and global device g = rank * devices + d takes
    chunks g, g + world * devices, ... Micro-batch j of this process holds the j-th `batch` images
    of each of its devices' chunks, interleaved: its image i * devices + d is device d's i-th (the
    layout normbench.norms.PerDevice folds without a copy). So device d here trains on exactly the
    images (same order) of process g of a run with world * devices processes and devices=1, and at
    SGD step k all processes together train on the images one process with accum * world * devices
    micro-batches takes at step k."""

    rank: int
    world: int
    accum: int
    devices: int = 1

    def positions(self, count: int, batch: int) -> torch.Tensor:
        """Positions in the epoch order (int64) of this process's `count` micro-batches of
        `batch * devices` images, micro-batch after micro-batch, `count` a multiple of `accum`
        (ascending when devices == 1); the epoch uses the first count * world * devices * batch
        positions."""
        if count % self.accum:
            raise ValueError(
                f"{count} micro-batches do not make whole SGD steps of accum={self.accum}"
            )
        steps = count // self.accum
        return (
            torch.arange(steps * self.world * self.devices * self.accum * batch)
            .view(steps, self.world, self.devices, self.accum, batch)[:, self.rank]
            .permute(0, 2, 3, 1)  # (steps, accum, batch, devices): devices interleaved
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
    def val_size(self) -> int: ...  # images held out of the training split (data.val_size)
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
        lazily). With `shard`, the order is drawn for all shard.world * shard.devices devices and
        this process's micro-batches, of `batch * shard.devices` images each, are taken from it."""

    def test_batches(self, eval_batch: int) -> Iterator[Batch]:
        """The whole test set in a fixed order, in chunks of at most `eval_batch` images."""

    def val_batches(self, eval_batch: int) -> Iterator[Batch]:
        """The whole validation set in a fixed order, in chunks of at most `eval_batch` images
        (none when val_size is 0)."""

    def eval_chunks(
        self, split: str, size: int, generator: torch.Generator
    ) -> Iterator[tuple[Batch, int]]:
        """Split "test" or "val" in a random order in chunks of exactly `size` images, each with
        how many of its leading images are new (to be scored): see `eval_chunk_order`. The order
        is drawn from the CPU `generator` when this is called (not lazily)."""

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
    drawn. With `shard`, both are drawn for the whole epoch of all devices of all processes (so
    every process's generator moves alike), this process's positions are kept and each micro-batch
    holds `batch * shard.devices` images.
    """
    order = torch.randperm(x.shape[0], generator=generator)
    mine = None if shard is None else shard.positions(count, batch)
    if mine is not None:
        order = order[mine]
    order = order.to(x.device)
    if augment is not None:
        replicas = 1 if shard is None else shard.world * shard.devices
        params = augment.draw(count * batch * replicas, generator)
        params = (params if mine is None else params[mine]).to(x.device)
        fill = augment.fill_like(x)  # made once: a host-to-device copy per batch would sync
    micro = batch if shard is None else batch * shard.devices

    def batches() -> Iterator[Batch]:
        for start in range(0, count * micro, micro):
            index = order[start : start + micro]
            inputs = x[index]
            if augment is not None:
                inputs = augment.apply(inputs, params[start : start + micro], fill)
            yield inputs, y[index]

    return batches()


def eval_chunk_order(
    n: int, size: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> list[tuple[torch.Tensor, int]]:
    """(indices (int64, on `device`), new) of each chunk of exactly `size` of a split's `n`
    images, in one random order drawn now from the CPU `generator` (nothing is drawn when n is 0:
    no chunks).

    Chunks are consecutive slices of the order; the last is filled up with images from the start
    of the order (repeated as often as needed when n < size), and `new` says how many leading
    indices of the chunk are scored, so every image is scored exactly once. The order is random
    because splits are stored sorted (ImageFolder sorts by class): a chunk normalized with its
    own statistics must not be all one class.
    """
    if size < 1:
        raise ValueError(f"evaluation chunks need at least one image, got size={size}")
    if n == 0:
        return []
    order = torch.randperm(n, generator=generator)
    count = math.ceil(n / size)
    # one copy to the device, not one per chunk
    padded = order.repeat(math.ceil(count * size / n))[: count * size].to(device)
    return [(padded[k * size : (k + 1) * size], min(size, n - k * size)) for k in range(count)]


def check_eval_split(split: str) -> None:
    """eval_chunks takes "test" or "val"."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"eval_chunks evaluates {' or '.join(EVAL_SPLITS)}, not {split!r}")


def fixed_batches(x: torch.Tensor, y: torch.Tensor, eval_batch: int) -> Iterator[Batch]:
    """(x, y) in their stored order, in slices of at most `eval_batch`."""
    for start in range(0, x.shape[0], eval_batch):
        yield x[start : start + eval_batch], y[start : start + eval_batch]


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
    # held out of the training split (data.val_size), normalized like the test set, never augmented
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None

    @property
    def train_size(self) -> int:
        return self.train_x.shape[0]

    @property
    def test_size(self) -> int:
        return self.test_x.shape[0]

    @property
    def val_size(self) -> int:
        return 0 if self.val_x is None else self.val_x.shape[0]

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

    def _split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of "test" or "val" (empty when there is no validation split)."""
        check_eval_split(split)
        if split == "test":
            return self.test_x, self.test_y
        if self.val_x is None or self.val_y is None:
            return self.test_x[:0], self.test_y[:0]
        return self.val_x, self.val_y

    def test_batches(self, eval_batch: int) -> Iterator[Batch]:
        return fixed_batches(self.test_x, self.test_y, eval_batch)

    def val_batches(self, eval_batch: int) -> Iterator[Batch]:
        return fixed_batches(*self._split("val"), eval_batch)

    def eval_chunks(
        self, split: str, size: int, generator: torch.Generator
    ) -> Iterator[tuple[Batch, int]]:
        x, y = self._split(split)
        chunks = eval_chunk_order(len(y), size, generator, x.device)
        return (((x[index], y[index]), new) for index, new in chunks)

    def close(self) -> None:
        """Nothing to release: the tensors go with the object (FolderData stops its loader workers
        here)."""
