"""A learnable data set made in memory: one smooth random pattern per class plus Gaussian noise."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from normbench.data import augment
from normbench.data.prep import cfg_get, cfg_int, cfg_val_size, split_train_val
from normbench.data.source import TensorData
from normbench.errors import UserError

DESCRIPTION = "per-class smooth random patterns plus Gaussian noise, made in memory (fast tests)"

PATTERN_CELL = 4  # pattern detail: one random value per 4x4 pixels, bilinearly upsampled


def _generator(seed: int, stream: int) -> torch.Generator:
    """Independent streams per seed: 0 patterns, 1 train, 2 test (changing train_size keeps the test
    set)."""
    return torch.Generator().manual_seed(3 * seed + stream)


def make_patterns(num_classes: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """(K, C, H, W) float32 patterns, spatially smooth, each zero-mean with unit std."""
    coarse = max(2, math.ceil(size / PATTERN_CELL))
    low = torch.randn(num_classes, channels, coarse, coarse, generator=_generator(seed, 0))
    pattern = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    flat = pattern.reshape(num_classes, -1)
    flat = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-6)
    return flat.reshape(num_classes, channels, size, size).contiguous()


def make_split(patterns: torch.Tensor, n: int, noise: float, generator: torch.Generator):
    """n images (pattern + noise * N(0, 1)) / sqrt(1 + noise^2), classes balanced (counts differ by
    <= 1)."""
    k = patterns.shape[0]
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=generator)]
    x = torch.randn(n, *patterns.shape[1:], generator=generator).mul_(noise).add_(patterns[labels])
    return x.div_(math.sqrt(1.0 + noise * noise)), labels


def load(cfg: Any, device: torch.device) -> TensorData:
    """Make the synthetic data set per `cfg` (keys of configs/data/synthetic.yaml) on `device`."""
    num_classes = cfg_int(cfg, "num_classes", 10, minimum=2)
    train_size = cfg_int(cfg, "train_size", 512, minimum=num_classes)
    test_size = cfg_int(cfg, "test_size", 256, minimum=num_classes)
    val_size = cfg_val_size(cfg, num_classes)
    in_channels = cfg_int(cfg, "in_channels", 1, minimum=1)
    image_size = cfg_int(cfg, "image_size", 28, minimum=1)
    seed = cfg_int(cfg, "subset_seed", 0)
    noise = cfg_get(cfg, "noise", 1.0)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise UserError(f"data.noise must be a number >= 0, got {noise!r}")
    noise = float(noise)
    # pads with the data's mean, 0
    augmentation = augment.from_config(cfg, [0.0] * in_channels, image_size)

    patterns = make_patterns(num_classes, in_channels, image_size, seed)
    # the validation images come from the train stream too, held out like a real set's
    images, labels = make_split(patterns, train_size + val_size, noise, _generator(seed, 1))
    train, val = split_train_val(labels, train_size, val_size, seed)
    test_x, test_y = make_split(patterns, test_size, noise, _generator(seed, 2))
    return TensorData(
        name="synthetic",
        train_x=images[train].to(device),
        train_y=labels[train].to(device),
        test_x=test_x.to(device),
        test_y=test_y.to(device),
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        source="synthetic",
        augment=augmentation,
        val_x=images[val].to(device) if val_size else None,
        val_y=labels[val].to(device) if val_size else None,
    )
