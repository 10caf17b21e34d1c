"""Batch Normalization (Ioffe & Szegedy, ICML 2015), via torch's own nn.BatchNorm1d/2d."""

from __future__ import annotations

import torch.nn as nn

from ._common import check_eps, check_layer, check_momentum


def batch_norm(
    num_channels: int, dim: int = 2, *, eps: float = 1e-5, momentum: float | None = 0.1
) -> nn.Module:
    """BN over (N, H, W) per channel (dim=2) or over N per feature (dim=1).

    Training normalizes with the biased batch variance and updates the buffers `running_mean`
    and `running_var` (the latter with the unbiased batch variance) as
    ``new = (1 - momentum) * old + momentum * batch``; eval uses the running statistics.
    ``momentum=None`` gives torch's cumulative average.
    """
    check_layer("bn", num_channels, dim)
    eps = check_eps("bn", eps)
    momentum = check_momentum("bn", momentum, allow_none=True)
    cls = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
    return cls(num_channels, eps=eps, momentum=None if momentum is None else float(momentum))
