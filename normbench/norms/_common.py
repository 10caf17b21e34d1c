"""What the norms share (plumbing; no paper): argument checks on normbench.values, parameter and
buffer set-up, and the BN-style eval of the running-statistics variants."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from normbench.errors import UserError
from normbench.values import as_flag, as_int, as_number


class NormConfigError(UserError, ValueError):
    """A bad norm name, option or layer shape; a ValueError that the CLI shows as one line."""


def check_layer(norm: str, num_channels: int, dim: int) -> None:
    """Validate the (num_channels, dim) every factory receives."""
    check_int(norm, "num_channels", num_channels)
    if isinstance(dim, bool) or dim not in (1, 2):
        raise NormConfigError(
            f"norm {norm!r}: dim must be 2 (NCHW feature maps) or 1 ((N, C) features), got {dim!r}"
        )


def check_eps(norm: str, eps: object, option: str = "eps") -> float:
    """eps must be a finite real number > 0 (0 would divide by zero on a constant input)."""
    return as_number(eps, _name(norm, option), above=0, finite=True, error=NormConfigError)


def check_number(
    norm: str, option: str, value: object, minimum: int, maximum: int | None = None
) -> float:
    """A finite real option in [minimum, maximum] (no upper bound without `maximum`), as a float;
    the bounds are ints so that messages read ">= 1", not ">= 1.0"."""
    return as_number(
        value,
        _name(norm, option),
        minimum=minimum,
        maximum=maximum,
        finite=True,
        error=NormConfigError,
    )


def check_int(norm: str, option: str, value: object, minimum: int = 1) -> int:
    """An integer option of at least `minimum`."""
    return as_int(value, _name(norm, option), minimum=minimum, error=NormConfigError)


def parse_flag(norm: str, option: str, value: object, extra: tuple[str, ...] = ()) -> bool | str:
    """A bool, or one of the strings "true"/"false" (any case) or `extra` (returned lower-cased)."""
    return as_flag(value, _name(norm, option), extra=extra, error=NormConfigError)


def _name(norm: str, option: str) -> str:
    """How an error names a norm's option: "norm 'gn': groups"."""
    return f"norm {norm!r}: {option}"


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
    return as_number(
        momentum,
        _name(norm, "momentum"),
        minimum=0,
        maximum=1,
        allow_none=allow_none,
        error=NormConfigError,
    )


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


def eval_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) per channel such that norm(x) == scale * x + shift in eval mode, or None when
    the norm does not become affine at eval (it uses per-sample statistics: LN, IN, GN, FRN, ...).

    torch's BatchNorm classes (BN, SyncBN) use running statistics; our norms that become affine at
    eval (MABN, BRN, GBN) say so with an `eval_affine()` method."""
    if hasattr(norm, "eval_affine"):
        return norm.eval_affine()
    if isinstance(norm, _BatchNorm) and norm.track_running_stats and norm.running_var is not None:
        return running_stats_affine(
            norm.weight, norm.bias, norm.running_mean, norm.running_var, norm.eps
        )
    return None


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


def add_bn_state(
    module: nn.Module, num_channels: int, *, running_mean: bool = True, counter: bool = True
) -> None:
    """BN's per-channel `weight` (ones) and `bias` (zeros), and its buffers `running_mean` (zeros),
    `running_var` (ones) and `num_batches_tracked` (0), in nn.BatchNorm2d's order; `running_mean`
    and `num_batches_tracked` only where asked (MABN keeps neither)."""
    module.weight = nn.Parameter(torch.ones(num_channels))
    module.bias = nn.Parameter(torch.zeros(num_channels))
    if running_mean:
        module.register_buffer("running_mean", torch.zeros(num_channels))
    module.register_buffer("running_var", torch.ones(num_channels))
    if counter:
        module.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))


class RunningStatsNorm(nn.Module):
    """Base of the BN variants whose eval is exactly BN's with the running statistics (Batch Renorm,
    Ghost BN): BN's parameters and buffers (see add_bn_state), that eval forward and its
    eval_affine; a subclass adds its options, its training forward and its extra_repr."""

    # registered by add_bn_state; declared for type checkers
    weight: nn.Parameter
    bias: nn.Parameter
    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(self, num_channels: int, dim: int, eps: float, momentum: float) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.dim = dim
        self.eps = eps
        self.momentum = momentum
        add_bn_state(self, num_channels)

    def eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        """BN's eval: (x - running_mean) / sqrt(running_var + eps) * weight + bias."""
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    @torch.no_grad()
    def eval_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), float64, with eval output = scale * x + shift per channel (normbench.fuse
        folds it into the preceding conv/linear): eval is BN's with the running statistics."""
        return running_stats_affine(
            self.weight, self.bias, self.running_mean, self.running_var, self.eps
        )
