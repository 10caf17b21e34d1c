"""The loading path shared by the tensor-resident image sets (MNIST, Fashion-MNIST, CIFAR-10/100):
config options, stratified subsets, normalization on the device and augmentation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from normbench.data import augment
from normbench.data.prep import (
    black,
    cfg_int,
    cfg_mean_std,
    check_fixed_shape,
    normalize,
    take_subset,
)
from normbench.data.source import TensorData


def load_image_set(
    cfg: Any,
    device: torch.device,
    *,
    name: str,
    title: str,
    default_classes: int,
    in_channels: int,
    image_size: int,
    locate: Callable[[], tuple[Any, str]],
    read_split: Callable[[Any, str, int], tuple[torch.Tensor, torch.Tensor]],
) -> TensorData:
    """`locate()` finds the files (-> (handle, source path)); `read_split(handle, "train"|"test",
    num_classes)` returns uint8 images (N, C, H, W) and int64 labels, checked."""
    num_classes = cfg_int(cfg, "num_classes", default_classes, minimum=2)
    check_fixed_shape(cfg, title, in_channels, image_size)
    mean, std = cfg_mean_std(cfg, in_channels)
    augmentation = augment.from_config(cfg, black(mean, std), image_size)
    train_size = cfg_int(cfg, "train_size", None, minimum=1)
    test_size = cfg_int(cfg, "test_size", None, minimum=1)
    seed = cfg_int(cfg, "subset_seed", 0)

    handle, source = locate()
    train_images, train_y = take_subset(*read_split(handle, "train", num_classes), train_size, seed)
    test_images, test_y = take_subset(*read_split(handle, "test", num_classes), test_size, seed)
    return TensorData(
        name=name,
        train_x=normalize(train_images, mean, std, device),
        train_y=train_y.to(device),
        test_x=normalize(test_images, mean, std, device),
        test_y=test_y.to(device),
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        source=source,
        augment=augmentation,
    )
