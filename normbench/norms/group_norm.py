"""Group Normalization (Wu & He, ECCV 2018), with per-layer choice of the number of groups, or a
fixed number of channels per group (the paper's Table 3, bottom half)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ._common import NormConfigError, check_eps, check_input, check_int, check_layer, parse_flag


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def resolve_groups(
    num_channels: int, groups: int = 32, min_channels_per_group: int = 2, strict: bool = False
) -> int:
    """The number of groups GN uses on a layer of `num_channels` channels.

    Not strict: the largest divisor of C that is <= `groups` and <= C // `min_channels_per_group`
    (at least 1), e.g. groups=32, min 2: C=6 -> 3, 16 -> 8, 84 -> 28, 120 -> 30, 256 -> 32.
    Strict: exactly `groups` (the paper's fixed G), a NormConfigError unless it divides C;
    `min_channels_per_group` is not applied.
    """
    check_int("gn", "num_channels", num_channels)
    check_int("gn", "groups", groups)
    check_int("gn", "min_channels_per_group", min_channels_per_group)
    if parse_flag("gn", "strict", strict):
        if num_channels % groups:
            raise NormConfigError(
                f"norm 'gn' (strict): groups={groups} does not divide the layer width "
                f"C={num_channels}; "
                f"divisors of {num_channels}: {', '.join(map(str, _divisors(num_channels)))} "
                f"(or set norm.strict=false to pick the largest divisor <= {groups} per layer)"
            )
        return groups
    cap = min(groups, num_channels // min_channels_per_group)
    return max([d for d in _divisors(num_channels) if d <= cap], default=1)


def groups_of_layer(
    norm: str,
    num_channels: int,
    groups: int | None,
    channels_per_group: int | None,
    min_channels_per_group: int = 2,
    strict: bool = False,
) -> int:
    """GN's groups on a layer of `num_channels` channels from exactly one of `groups` (see
    resolve_groups) and `channels_per_group` (C / channels_per_group, which must divide C; then
    `min_channels_per_group` and `strict` do not apply)."""
    if channels_per_group is None:
        if groups is None:
            raise NormConfigError(
                f"norm {norm!r}: groups and channels_per_group are both null: set norm.groups=G "
                "(G groups per layer) or norm.channels_per_group=N (N channels per group)"
            )
        return resolve_groups(num_channels, groups, min_channels_per_group, strict)
    if groups is not None:
        raise NormConfigError(
            f"norm {norm!r}: set exactly one of groups and channels_per_group, got groups={groups} "
            f"and channels_per_group={channels_per_group}: add norm.groups=null for "
            f"{channels_per_group} channels per group (or norm.channels_per_group=null)"
        )
    check_int(norm, "channels_per_group", channels_per_group)
    if num_channels % channels_per_group:
        raise NormConfigError(
            f"norm {norm!r}: channels_per_group={channels_per_group} does not divide the layer "
            f"width C={num_channels}; divisors of {num_channels}: "
            f"{', '.join(map(str, _divisors(num_channels)))} (or set norm.groups=G "
            "norm.channels_per_group=null to pick the groups per layer)"
        )
    return num_channels // channels_per_group


def describe_groups(num_groups: int, requested_groups: int) -> str:
    """How a repr names a layer's groups: "groups=G", and " (requested R)" where the configured R
    was not used."""
    groups = f"groups={num_groups}"
    if requested_groups != num_groups:
        groups += f" (requested {requested_groups})"
    return groups


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that checks its input layout and remembers the groups it was asked for.

    `num_groups` is the number of groups actually used; `requested_groups` the configured G, or
    `channels_per_group` the configured number of channels per group (then requested_groups is
    None). dim=2: input (N, C, H, W); dim=1: input (N, C), each group normalized over its C/G
    features.
    """

    def __init__(
        self,
        num_channels: int,
        num_groups: int,
        eps: float = 1e-5,
        dim: int = 2,
        requested_groups: int | None = None,
        channels_per_group: int | None = None,
    ) -> None:
        super().__init__(num_groups, num_channels, eps=eps, affine=True)
        self.dim = dim
        self.channels_per_group = channels_per_group
        if channels_per_group is None and requested_groups is None:
            requested_groups = num_groups
        self.requested_groups = requested_groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.dim, self.num_channels)
        return super().forward(x)

    def extra_repr(self) -> str:
        if self.requested_groups is None:
            groups = f"groups={self.num_groups} (channels_per_group={self.channels_per_group})"
        else:
            groups = describe_groups(self.num_groups, self.requested_groups)
        return f"{self.num_channels}, {groups}, eps={self.eps}, dim={self.dim}"


def group_norm(
    num_channels: int,
    dim: int = 2,
    *,
    groups: int | None = 32,
    channels_per_group: int | None = None,
    min_channels_per_group: int = 2,
    strict: bool = False,
    eps: float = 1e-5,
) -> nn.Module:
    """GN with `groups_of_layer(...)` groups: from `groups` by resolve_groups(num_channels, groups,
    min_channels_per_group, strict), or num_channels / `channels_per_group` (exactly one is set)."""
    return _build_group_norm(
        "gn", num_channels, dim, groups, channels_per_group, min_channels_per_group, strict, eps
    )


def gn_ws(
    num_channels: int,
    dim: int = 2,
    *,
    groups: int | None = 32,
    channels_per_group: int | None = None,
    min_channels_per_group: int = 2,
    strict: bool = False,
    eps: float = 1e-5,
) -> nn.Module:
    """GN + Weight Standardization (Qiao et al., 2019): the norm layer is exactly `group_norm`'s
    (same options); the WS half is not in this module but on the convs, which build_model turns into
    StandardizedConv2d because the registry gives gn_ws conv_weight="standardize". Linear layers are
    not standardized (the WS paper standardizes conv weights)."""
    return _build_group_norm(
        "gn_ws", num_channels, dim, groups, channels_per_group, min_channels_per_group, strict, eps
    )


def _build_group_norm(
    norm: str,
    num_channels: int,
    dim: int,
    groups: int | None,
    channels_per_group: int | None,
    min_channels_per_group: int,
    strict: bool,
    eps: float,
) -> GroupNorm:
    """The GroupNorm layer of gn and gn_ws; errors name `norm`."""
    check_layer(norm, num_channels, dim)
    eps = check_eps(norm, eps)
    used = groups_of_layer(
        norm, num_channels, groups, channels_per_group, min_channels_per_group, strict
    )
    return GroupNorm(
        num_channels,
        used,
        eps=eps,
        dim=dim,
        requested_groups=groups,
        channels_per_group=channels_per_group,
    )
