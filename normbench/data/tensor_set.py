"""The loading path shared by the tensor-resident image sets (MNIST, Fashion-MNIST, CIFAR-10/100):
config options, stratified subsets, normalization on the device and augmentation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import torch

from normbench.data import augment
from normbench.data.prep import (
    black,
    cfg_int,
    cfg_mean_std,
    cfg_val_size,
    check_fixed_shape,
    normalize,
    split_train_val,
    take_subset,
)
from normbench.data.source import TensorData


class ImageSetSpec(Protocol):
    """What load_image_set reads from a data set's spec (CifarSet, IdxSet)."""

    @property
    def name(self) -> str: ...

    @property
    def title(self) -> str: ...

    @property
    def num_classes(self) -> int: ...


SpecT = TypeVar("SpecT", bound=ImageSetSpec)


def load_image_set(
    cfg: Any,
    device: torch.device,
    spec: SpecT,
    in_channels: int,
    image_size: int,
    locate: Callable[[], tuple[Any, str]],
    read_split: Callable[[Any, str, int, SpecT], tuple[torch.Tensor, torch.Tensor]],
) -> TensorData:
    """`locate()` finds the files (-> (handle, source path)); `read_split(handle, "train"|"test",
    num_classes, spec)` returns uint8 images (N, C, H, W) and int64 labels, checked. The
    validation images (data.val_size) are held out of the training split (`split_train_val`)."""
    num_classes = cfg_int(cfg, "num_classes", spec.num_classes, minimum=2)
    check_fixed_shape(cfg, spec.title, in_channels, image_size)
    mean, std = cfg_mean_std(cfg, in_channels)
    augmentation = augment.from_config(cfg, black(mean, std), image_size)
    train_size = cfg_int(cfg, "train_size", None, minimum=1)
    test_size = cfg_int(cfg, "test_size", None, minimum=1)
    val_size = cfg_val_size(cfg, num_classes)
    seed = cfg_int(cfg, "subset_seed", 0)

    handle, source = locate()
    images, labels = read_split(handle, "train", num_classes, spec)
    train, val = split_train_val(labels, train_size, val_size, seed)
    test_images, test_y = take_subset(
        *read_split(handle, "test", num_classes, spec), test_size, seed
    )
    return TensorData(
        name=spec.name,
        train_x=normalize(images[train], mean, std, device),
        train_y=labels[train].to(device),
        test_x=normalize(test_images, mean, std, device),
        test_y=test_y.to(device),
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        source=source,
        augment=augmentation,
        val_x=normalize(images[val], mean, std, device) if val_size else None,
        val_y=labels[val].to(device) if val_size else None,
    )
