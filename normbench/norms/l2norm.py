"""L2 normalization across channels with a learned per-channel scale (ParseNet, Liu et al., 2015;
the SSD detector's conv4_3 L2Normalization, Liu et al., ECCV 2016)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ._common import check_eps, check_input, check_layer, check_number
from .reference import ref_l2norm


class L2Norm(nn.Module):
    """y = weight * x / sqrt(sum_C(x^2) + eps) + bias at every position of every sample.

    The norm is taken over the C channels of one position (one (n, h, w); on (N, C) features over
    the C features of a sample), so the layer uses no batch statistics and is the same in train and
    eval. `weight` is ParseNet's learned scale gamma, initialized to `scale_init`; `bias` (zeros)
    is the shift every norm here carries instead of a conv bias (see l2norm). eps sits inside the
    square root as in ParseNet/SSD's Caffe Normalize layer, which keeps the gradient finite at an
    all-zero position (common after ReLU).
    """

    def __init__(
        self, num_channels: int, scale_init: float = 20.0, eps: float = 1e-10, dim: int = 2
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.scale_init = scale_init
        self.eps = eps
        self.dim = dim
        self.weight = nn.Parameter(torch.full((num_channels,), float(scale_init)))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.dim, self.num_channels)
        # e.g. bf16 under autocast: the sum of squares in the parameters' dtype
        if x.dtype != self.weight.dtype:
            x = x.to(self.weight.dtype)
        shape = (1, self.num_channels) + (1,) * (x.dim() - 2)  # broadcast (C,) over N (and H, W)
        inv_norm = torch.rsqrt((x * x).sum(dim=1, keepdim=True) + self.eps)
        return x * inv_norm * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, scale_init={self.scale_init}, eps={self.eps}, dim={self.dim}"


def l2norm(
    num_channels: int, dim: int = 2, *, scale_init: float = 20.0, eps: float = 1e-10
) -> nn.Module:
    """L2Norm: each position's C-vector scaled to unit L2 norm, times a learned per-channel scale.

    Defaults are SSD's: scale_init=20 (its conv4_3 layer, 512 channels: a unit vector times 20 has
    a per-channel RMS of 20/sqrt(512) ~ 0.9, about BN's 1; on LeNet's 6 channels it is ~8) and the
    Caffe layer's eps=1e-10. Unlike ParseNet/SSD, which put the layer after a ReLU, normbench puts
    every norm between a bias-free conv and its activation, so the layer adds a per-channel shift
    (`bias`, zeros) as every other norm here does (docs/norms.md#l2norm).
    """
    check_layer("l2norm", num_channels, dim)
    scale_init = check_number("l2norm", "scale_init", scale_init, 0)
    eps = check_eps("l2norm", eps)
    return L2Norm(num_channels, scale_init=scale_init, eps=eps, dim=dim)


def l2norm_reference(
    module: nn.Module, train: bool, act: bool
) -> Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]:
    """`normbench check`'s formula for l2norm: the same in train and eval (no state)."""
    eps = module.eps
    return lambda x, p: ref_l2norm(x, p, eps)
