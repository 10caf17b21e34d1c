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
    check_fixed_shape,
    normalize,
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
    num_classes, spec)` returns uint8 images (N, C, H, W) and int64 labels, checked."""
    num_classes = cfg_int(cfg, "num_classes", spec.num_classes, minimum=2)
    check_fixed_shape(cfg, spec.title, in_channels, image_size)
    mean, std = cfg_mean_std(cfg, in_channels)
    augmentation = augment.from_config(cfg, black(mean, std), image_size)
    train_size = cfg_int(cfg, "train_size", None, minimum=1)
    test_size = cfg_int(cfg, "test_size", None, minimum=1)
    seed = cfg_int(cfg, "subset_seed", 0)

    handle, source = locate()

    def subset(split: str, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        return take_subset(*read_split(handle, split, num_classes, spec), size, seed)

    train_images, train_y = subset("train", train_size)
    test_images, test_y = subset("test", test_size)
    return TensorData(
        name=spec.name,
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
