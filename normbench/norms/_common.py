"""Argument checks shared by the norm factories (plumbing; no paper)."""

from __future__ import annotations

import math
from numbers import Real

import torch

from normbench.errors import UserError


class NormConfigError(UserError, ValueError):
    """A bad norm name, option or layer shape; a ValueError that the CLI shows as one line."""


def check_layer(norm: str, num_channels: int, dim: int) -> None:
    """Validate the (num_channels, dim) every factory receives."""
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
        raise NormConfigError(
            f"norm {norm!r}: num_channels must be an integer >= 1, got {num_channels!r}"
        )
    if isinstance(dim, bool) or dim not in (1, 2):
        raise NormConfigError(
            f"norm {norm!r}: dim must be 2 (NCHW feature maps) or 1 ((N, C) features), got {dim!r}"
        )


def check_eps(norm: str, eps: object, option: str = "eps") -> float:
    """eps must be a finite real number > 0 (0 would divide by zero on a constant input)."""
    if isinstance(eps, bool) or not isinstance(eps, Real) or not math.isfinite(eps) or eps <= 0:
        raise NormConfigError(f"norm {norm!r}: {option} must be a finite number > 0, got {eps!r}")
    return float(eps)


def check_int(norm: str, option: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise NormConfigError(
            f"norm {norm!r}: {option} must be an integer >= {minimum}, got {value!r}"
        )
    return value


def parse_flag(norm: str, option: str, value: object, extra: tuple[str, ...] = ()) -> bool | str:
    """A bool, or one of the strings "true"/"false" (any case) or `extra` (returned lower-cased)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "false"):
            return word == "true"
        if word in extra:
            return word
    allowed = ", ".join(["true", "false", *extra])
    raise NormConfigError(f"norm {norm!r}: {option} must be one of {allowed}, got {value!r}")


def check_input(module: torch.nn.Module, x: torch.Tensor, dim: int, num_channels: int) -> None:
    """Fail loudly when a layer built for dim=2 gets (N, C) features or vice versa."""
    ndim = {2: 4, 1: 2}[dim]  # dim=2: (N, C, H, W); dim=1: (N, C)
    if x.dim() != ndim or x.shape[1] != num_channels:
        want = f"(N, {num_channels}, H, W)" if dim == 2 else f"(N, {num_channels})"
        raise ValueError(
            f"{type(module).__name__} built for dim={dim} expects input {want}, got "
            f"{tuple(x.shape)}"
        )


def check_momentum(norm: str, momentum: object, allow_none: bool = False) -> float | None:
    """A running-statistics momentum in [0, 1] (torch convention: new = (1 - m) * old + m * batch);
    None (torch's cumulative average) only where `allow_none`."""
    if momentum is None and allow_none:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, Real) or not 0.0 <= momentum <= 1.0:
        also = " (or null)" if allow_none else ""
        raise NormConfigError(
            f"norm {norm!r}: momentum must be a number in [0, 1]{also}, got {momentum!r}"
        )
    return float(momentum)


@torch.no_grad()
def running_stats_affine(
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) in float64 with BN's eval output = scale * x + shift per channel: what
    normbench.fuse folds into the preceding conv/linear for every norm that evaluates with running
    statistics."""
    scale = torch.rsqrt(running_var.double() + eps)
    if weight is not None:
        scale = scale * weight.double()
    shift = -running_mean.double() * scale
    if bias is not None:
        shift = shift + bias.double()
    return scale, shift


def add_affine(
    module: torch.nn.Module, num_channels: int, act_param: str, act_init: float, act: bool
) -> None:
    """The per-channel gamma (`weight`, ones) and beta (`bias`, zeros) of a norm with its own
    nonlinearity, and that nonlinearity's per-channel parameter (FRN's tau, EvoNorm's v) --
    registered as None in the activation-free form (act=False), so state dicts say which form a
    layer is."""
    module.weight = torch.nn.Parameter(torch.ones(num_channels))
    module.bias = torch.nn.Parameter(torch.zeros(num_channels))
    if act:
        module.register_parameter(
            act_param, torch.nn.Parameter(torch.full((num_channels,), float(act_init)))
        )
    else:
        module.register_parameter(act_param, None)
