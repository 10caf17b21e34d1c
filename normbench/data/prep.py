"""Helpers the loaders share: config values (cfg is an OmegaConf DictConfig or a plain dict),
label and shape checks, stratified subsets, normalization and torchvision downloads."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from normbench.errors import UserError
from normbench.values import as_bool, as_int


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
    as_int(value, f"data.{key}", hint=f": set e.g. data.{key}={default or 1}")
    if minimum is not None and value < minimum:
        raise UserError(f"data.{key}={value} is too small: use data.{key}>={minimum}")
    return value


def cfg_bool(cfg: Any, key: str, default: bool = False) -> bool:
    """A true/false config value, else UserError naming the key."""
    value = cfg_get(cfg, key, default)
    return as_bool(value, f"data.{key}", hint=f": e.g. data.{key}={str(default).lower()}")


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


def cfg_val_size(cfg: Any, num_classes: int) -> int:
    """data.val_size: 0 (no validation split) or at least one image per class, else UserError."""
    val_size = cfg_int(cfg, "val_size", 0, minimum=0)
    if 0 < val_size < num_classes:
        raise UserError(
            f"data.val_size={val_size} is fewer than the {num_classes} classes: use "
            f"data.val_size>={num_classes}, or 0 for no validation split"
        )
    return val_size


def split_train_val(
    labels: torch.Tensor, train_size: int | None, val_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, validation indices), ascending int64, of a training split's `labels`.

    The `val_size` validation images are held out first (`stratified_subset`, seeded by `seed`),
    so they depend only on the labels, `val_size` and `seed` (not on `train_size`); the training
    subset of `train_size` (None: all the rest) is then drawn the same way from the rest. With
    val_size=0 this is today's subset exactly (and no validation images).
    """
    n = labels.numel()
    if val_size == 0:
        everything = train_size is None or train_size == n
        train = torch.arange(n) if everything else stratified_subset(labels, train_size, seed)
        return train, torch.zeros(0, dtype=torch.int64)
    if train_size is None and val_size >= n:
        raise UserError(
            f"data.val_size={val_size} leaves none of the {n} images of the training split to "
            f"train on: use data.val_size<{n}"
        )
    if train_size is not None and val_size + train_size > n:
        raise UserError(
            f"data.val_size={val_size} + data.train_size={train_size} exceed the {n} images of "
            f"the training split: make them add up to at most {n}"
        )
    wanted = n - val_size if train_size is None else train_size
    val = stratified_subset(labels, val_size, seed).cpu()
    rest = torch.ones(n, dtype=torch.bool)
    rest[val] = False
    remaining = rest.nonzero().squeeze(1)
    if wanted == remaining.numel():
        return remaining, val
    lab = torch.as_tensor(labels).reshape(-1).cpu()
    return remaining[stratified_subset(lab[remaining], wanted, seed)], val


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
    as_int(size, "subset size")
    as_int(seed, "data.subset_seed")
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


def torchvision_download(
    title: str, class_name: str, root: Path, splits: tuple[bool, ...], offline_fix: str
) -> None:
    """Download torchvision.datasets.<class_name> into `root`, once per `train` flag in `splits`;
    any failure is a one-line UserError ending in `offline_fix`."""
    try:
        # import_module, not `from torchvision import datasets`: tests put a fake in sys.modules
        dataset_class = getattr(importlib.import_module("torchvision.datasets"), class_name)
        for train in splits:
            dataset_class(root=str(root), train=train, download=True)
    except Exception as e:  # network, disk, checksum: all fixable by the user
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"downloading {title} into {root} failed ({message}): check the network, or "
            f"{offline_fix}"
        ) from None
