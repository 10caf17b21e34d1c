"""Batch Normalization (Ioffe & Szegedy, ICML 2015), via torch's own nn.BatchNorm1d/2d."""

from __future__ import annotations

from numbers import Real

import torch.nn as nn

from ._common import NormConfigError, check_eps, check_layer


def batch_norm(num_channels: int, dim: int = 2, *, eps: float = 1e-5, momentum: float | None = 0.1) -> nn.Module:
    """BN over (N, H, W) per channel (dim=2) or over N per feature (dim=1).

    Training normalizes with the biased batch variance and updates the buffers `running_mean`
    and `running_var` (the latter with the unbiased batch variance) as
    ``new = (1 - momentum) * old + momentum * batch``; eval uses the running statistics.
    ``momentum=None`` gives torch's cumulative average.
    """
    check_layer("bn", num_channels, dim)
    eps = check_eps("bn", eps)
    if momentum is not None and (
        isinstance(momentum, bool) or not isinstance(momentum, Real) or not 0.0 <= momentum <= 1.0
    ):
        raise NormConfigError(f"norm 'bn': momentum must be a number in [0, 1] (or null), got {momentum!r}")
    cls = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
    return cls(num_channels, eps=eps, momentum=None if momentum is None else float(momentum))
