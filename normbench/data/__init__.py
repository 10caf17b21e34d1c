"""Data sets: the registry, `load_data`, and (re-exported) the batch sources and helpers the loaders
share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from normbench.data import cifar, fashion_mnist, imagefolder, mnist, synthetic
from normbench.data.prep import cfg_get, stratified_subset
from normbench.data.source import (
    Batch,
    DataSource,
    Shard,
    TensorData,
    eval_chunk_order,
    tensor_batches,
)
from normbench.errors import UserError

__all__ = [
    "DATASETS",
    "Batch",
    "DataSource",
    "DataSpec",
    "Shard",
    "TensorData",
    "eval_chunk_order",
    "load_data",
    "stratified_subset",
    "tensor_batches",
]


@dataclass(frozen=True)
class DataSpec:
    """A registered data set: `loader(cfg, device) -> DataSource` and a one-line description."""

    loader: Callable[[Any, torch.device], DataSource]
    description: str


DATASETS: dict[str, DataSpec] = {
    "fashion_mnist": DataSpec(fashion_mnist.load, fashion_mnist.DESCRIPTION),
    "mnist": DataSpec(mnist.load, mnist.DESCRIPTION),
    "cifar10": DataSpec(cifar.load_cifar10, cifar.CIFAR10.description),
    "cifar100": DataSpec(cifar.load_cifar100, cifar.CIFAR100.description),
    "imagefolder": DataSpec(imagefolder.load, imagefolder.DESCRIPTION),
    "synthetic": DataSpec(synthetic.load, synthetic.DESCRIPTION),
}


def load_data(cfg: Any, device: torch.device | str = "cpu") -> DataSource:
    """Load the data set named by `cfg["name"]` for training on `device`."""
    name = cfg_get(cfg, "name")
    if name not in DATASETS:
        known = ", ".join(sorted(DATASETS))
        raise UserError(f"unknown data set {name!r}: choose data=<name> with one of {known}")
    return DATASETS[name].loader(cfg, torch.device(device))
