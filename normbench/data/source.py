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
