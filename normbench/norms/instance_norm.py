"""Instance Normalization (Ulyanov, Vedaldi & Lempitsky, 2016), via nn.InstanceNorm2d."""

from __future__ import annotations

import torch.nn as nn

from ._common import NormConfigError, check_eps, check_layer


def instance_norm(num_channels: int, dim: int = 2, *, eps: float = 1e-5) -> nn.Module:
    """IN: each (sample, channel) normalized over (H, W), per-channel affine, no running stats.

    Without running statistics eval mode computes exactly what training does. There is no dim=1
    form: a (N, C) feature has one value per (sample, channel), which IN would map to zero, so
    dim=1 raises instead (the backbones put no norm on fully connected layers for IN).
    """
    check_layer("in", num_channels, dim)
    eps = check_eps("in", eps)
    if dim == 1:
        raise NormConfigError(
            "norm 'in' has no dim=1 form: a fully connected feature has one value per "
            "(sample, channel), "
            "which instance normalization would set to 0; use no norm on fully connected layers"
        )
    return nn.InstanceNorm2d(num_channels, eps=eps, affine=True, track_running_stats=False)
