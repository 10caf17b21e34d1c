"""EvoNorm-B0 and EvoNorm-S0 (Liu, Brock, Simonyan & Le, "Evolving Normalization-Activation Layers",
NeurIPS 2020)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ._common import (
    NormConfigError,
    add_affine,
    check_eps,
    check_input,
    check_int,
    check_layer,
    check_momentum,
)
from ._fused import biased_var_mean, channel_maximum
from .group_norm import describe_groups, resolve_groups

# Every variance in this file is BIASED (mean of squared deviations), as in the authors' code, and
# act=False normalizes where the authors' code applies an affine only: see docs/norms.md#evonorm.


class EvoNormB0(nn.Module):
    """EvoNorm-B0: y = x / max(sqrt(s2_b + eps), v * x + sqrt(s2_i + eps)) * weight + bias.

    s2_b: batch variance per channel over (N, H, W) in training, `running_var` in eval; s2_i:
    instance variance per (sample, channel) over (H, W). Replaces norm + activation. NCHW only.
    See docs/norms.md#evonorm-b0.

    Args:
        momentum: torch's convention, new = (1 - momentum) * old + momentum * s2_b.
        act: False for the activation-free form y = x / sqrt(s2_b + eps) * weight + bias (no `v`,
            no instance term; a fixed per-channel affine in eval, see `eval_affine`).
    """

    def __init__(
        self, num_channels: int, eps: float = 1e-5, momentum: float = 0.1, act: bool = True
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.momentum = momentum
        self.act = act
        add_affine(self, num_channels, "v", 1.0, act)
        self.register_buffer("running_var", torch.ones(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, 2, self.num_channels)
        # e.g. bf16 under autocast: statistics in the parameters' dtype
        if x.dtype != self.weight.dtype:
            x = x.to(self.weight.dtype)
        shape = (1, self.num_channels, 1, 1)
        instance_var = instance_mean = None
        if self.v is not None:
            instance_var, instance_mean = biased_var_mean(x, (2, 3))  # (N, C, 1, 1)
        if not self.training:
            batch_var = self.running_var.view(shape)
        elif instance_var is None:
            batch_var = biased_var_mean(x, (0, 2, 3))[0]
        else:  # law of total variance over the equal-sized (H, W) cells: no further pass over x
            batch_mean = instance_mean.mean(0, keepdim=True)
            batch_var = instance_var.mean(0, keepdim=True) + (
                instance_mean - batch_mean
            ).square().mean(0, keepdim=True)
        if self.training:
            with torch.no_grad():
                self.running_var.lerp_(batch_var.view(-1), self.momentum)
        batch_std = torch.sqrt(batch_var + self.eps)
        if self.v is None:  # act=False: one per-channel factor, one pass
            return x * (self.weight.view(shape) / batch_std) + self.bias.view(shape)
        den = channel_maximum(
            x * self.v.view(shape) + torch.sqrt(instance_var + self.eps), batch_std
        )
        return x / den * self.weight.view(shape) + self.bias.view(shape)

    def eval_affine(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(scale, shift), float64, with eval output = scale * x + shift per channel, for act=False
        (normbench.fuse folds it into the preceding conv); None with the activation (per-sample
        instance std and max)."""
        if self.act:
            return None
        return self.weight.double() * torch.rsqrt(
            self.running_var.double() + self.eps
        ), self.bias.double()

    def extra_repr(self) -> str:
        act = "" if self.act else ", act=False (x / batch std, affine)"
        return f"{self.num_channels}, eps={self.eps}, momentum={self.momentum}{act}"


class EvoNormS0(nn.Module):
    """EvoNorm-S0: y = x * sigmoid(v * x) / sqrt(s2_g + eps) * weight + bias.

    s2_g: variance per sample over each group of C/G consecutive channels and (H, W), as GN groups
    them; train and eval are the same. See docs/norms.md#evonorm-s0.

    Args:
        num_groups: the groups G used on this layer.
        requested_groups: the configured G (default: num_groups).
        act: False for the activation-free form y = x / sqrt(s2_g + eps) * weight + bias (no `v`,
            no sigmoid).
    """

    def __init__(
        self,
        num_channels: int,
        num_groups: int,
        eps: float = 1e-5,
        dim: int = 2,
        requested_groups: int | None = None,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.num_groups = num_groups
        self.requested_groups = num_groups if requested_groups is None else requested_groups
        self.eps = eps
        self.dim = dim
        self.act = act
        add_affine(self, num_channels, "v", 1.0, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.dim, self.num_channels)
        # e.g. bf16 under autocast: statistics in the parameters' dtype
        if x.dtype != self.weight.dtype:
            x = x.to(self.weight.dtype)
        n, c = x.shape[:2]
        shape = (1, c) + (1,) * (x.dim() - 2)
        # (N, G, 1)
        inv_std = torch.rsqrt(
            biased_var_mean(x.reshape(n, self.num_groups, -1), (2,))[0] + self.eps
        )
        # weight / group std as one factor per (sample, channel), applied in one pass with the bias
        scale = inv_std.expand(n, self.num_groups, c // self.num_groups).reshape(n, c, *shape[2:])
        # v is None: act=False
        num = x if self.v is None else x * torch.sigmoid(self.v.view(shape) * x)
        return num * (scale * self.weight.view(shape)) + self.bias.view(shape)

    def extra_repr(self) -> str:
        groups = describe_groups(self.num_groups, self.requested_groups)
        act = "" if self.act else ", act=False (x / group std, affine)"
        return f"{self.num_channels}, {groups}, eps={self.eps}, dim={self.dim}{act}"


def evonorm_b0(
    num_channels: int, dim: int = 2, act: bool = True, *, eps: float = 1e-5, momentum: float = 0.1
) -> nn.Module:
    """EvoNorm-B0 with the authors' eps 1e-5 and moving-average decay 0.9 (momentum 0.1).

    No dim=1 form (raises): on (N, C) features the instance variance is 0 and the layer would no
    longer be the paper's; backbones leave fully connected layers without a norm, as for IN. See
    docs/norms.md#evonorm-b0.

    Args:
        act: False for its form without the nonlinearity; a layer argument set by the backbone
            (build_norm's act), not a config option.
    """
    check_layer("evonorm_b0", num_channels, dim)
    eps = check_eps("evonorm_b0", eps)
    momentum = check_momentum("evonorm_b0", momentum)
    if dim == 1:
        raise NormConfigError(
            "norm 'evonorm_b0' has no dim=1 form: its instance variance over (H, W) is 0 on a "
            "fully connected feature (one value per sample and channel); use no norm on fully "
            "connected layers"
        )
    return EvoNormB0(num_channels, eps=eps, momentum=momentum, act=act)


def evonorm_s0(
    num_channels: int,
    dim: int = 2,
    act: bool = True,
    *,
    groups: int = 32,
    min_channels_per_group: int = 2,
    eps: float = 1e-5,
) -> nn.Module:
    """EvoNorm-S0 with GN's groups, `resolve_groups(num_channels, groups, min_channels_per_group)`.

    See docs/norms.md#evonorm-s0 for why GN's minimum of 2 channels per group is kept.

    Args:
        act: False for its form without the nonlinearity; a layer argument, not a config option.
    """
    check_layer("evonorm_s0", num_channels, dim)
    eps = check_eps("evonorm_s0", eps)
    groups = check_int("evonorm_s0", "groups", groups)
    min_channels_per_group = check_int(
        "evonorm_s0", "min_channels_per_group", min_channels_per_group
    )
    used = resolve_groups(num_channels, groups, min_channels_per_group)
    return EvoNormS0(num_channels, used, eps=eps, dim=dim, requested_groups=groups, act=act)
