"""Where batches come from: the DataSource protocol, a process's Shard of each epoch, and TensorData
(a whole data set as tensors on the device)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

# (inputs (B, C, H, W) float32 on the device, targets (B,) int64)
Batch = tuple[torch.Tensor, torch.Tensor]


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
