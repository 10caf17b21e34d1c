"""Layer Normalization (Ba et al., 2016) in the form used by the GN paper (Wu & He, ECCV 2018)."""

from __future__ import annotations

import torch.nn as nn

from ._common import check_eps, check_layer
from .group_norm import GroupNorm


class LayerNorm(GroupNorm):
    """Each sample normalized over all of (C, H, W) (over C for dim=1), then a per-channel affine.

    Unlike nn.LayerNorm the affine is per channel (shape (C,)), not per element; this is GN with
    one group, so `num_groups` is 1.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, dim: int = 2) -> None:
        super().__init__(num_channels, 1, eps=eps, dim=dim)

    def extra_repr(self) -> str:
        over = "(C, H, W)" if self.dim == 2 else "C"
        return f"{self.num_channels}, eps={self.eps}, dim={self.dim}, over={over}"


def layer_norm(num_channels: int, dim: int = 2, *, eps: float = 1e-5) -> nn.Module:
    check_layer("ln", num_channels, dim)
    return LayerNorm(num_channels, eps=check_eps("ln", eps), dim=dim)
