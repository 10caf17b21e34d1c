"""Switchable Normalization (Luo, Ren, Peng, Zhang & Li, "Differentiable Learning-to-Normalize via
Switchable Normalization", ICLR 2019), and its formula reference."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ._common import (
    NormConfigError,
    add_bn_state,
    check_eps,
    check_input,
    check_layer,
    check_number,
)
from .devices import PerDevice

# the statistics SN mixes, in the order of its importance logits; the fc form (dim=1) has no IN
BRANCHES = {2: ("in", "ln", "bn"), 1: ("ln", "bn")}
# bn_average: how the BN branch's running statistics average the training batches
BN_AVERAGES = ("moving_average", "batch_average")

Params = dict[str, torch.Tensor]


class SwitchableNorm(nn.Module):
    """SN: (x - mean) / sqrt(var + eps) * weight + bias, where mean and var are softmax-weighted
    mixtures of the IN, LN and BN statistics (separate importance logits `mean_weight` and
    `var_weight`); eval takes the BN statistics from the running buffers. The fc form (dim=1)
    mixes LN and BN only. See docs/norms.md#switchable-normalization.

    Args:
        dim: 2 for NCHW feature maps, 1 for (N, C) features.
        momentum: the moving average's rate (torch's convention: new = (1 - m) * old + m * batch).
        bn_average: "moving_average" (the paper's default) or "batch_average" (the running
            statistics are the equal-weight average of every training batch since the last reset;
            momentum is then unused).
    """

    # registered by add_bn_state; declared for type checkers
    weight: nn.Parameter
    bias: nn.Parameter
    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(
        self,
        num_channels: int,
        dim: int = 2,
        eps: float = 1e-5,
        momentum: float = 0.1,
        bn_average: str = "moving_average",
    ) -> None:
        super().__init__()
        self.num_channels, self.dim = num_channels, dim
        self.eps, self.momentum, self.bn_average = eps, momentum, bn_average
        self.branches = BRANCHES[dim]
        # simulated devices whose channels PerDevice folded into this layer's (d * C + c): the LN
        # branch pools each device's C channels alone
        self.folded_devices = 1
        add_bn_state(self, num_channels)
        # one logit per branch, ones as in the authors' code: every branch starts at 1/3 (1/2)
        self.mean_weight = nn.Parameter(torch.ones(len(self.branches)))
        self.var_weight = nn.Parameter(torch.ones(len(self.branches)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.dim, self.num_channels)
        if x.dtype != self.weight.dtype:  # e.g. under autocast: SN computes in its parameters'
            x = x.to(self.weight.dtype)
        # (N, devices, C, H*W); H*W = 1 for dim=1; devices = 1 unless PerDevice folded them in
        grouped = x.reshape(x.shape[0], self.folded_devices, -1, x[0, 0].numel())
        mean_in = grouped.mean(-1, keepdim=True)
        var_in = (grouped - mean_in).square().mean(-1, keepdim=True)  # biased, as IN's
        stats = {
            "in": (mean_in, var_in),
            "ln": _pool(mean_in, var_in, 2),
            "bn": self._bn_statistics(mean_in, var_in, grouped.shape[0] * grouped.shape[3]),
        }
        mean_weights, var_weights = self.softmax()
        mean = _mix(mean_weights, [stats[branch][0] for branch in self.branches])
        var = _mix(var_weights, [stats[branch][1] for branch in self.branches])
        normalized = (grouped - mean) * torch.rsqrt(var + self.eps)
        weight, bias = self.weight.view(self._channels), self.bias.view(self._channels)
        return torch.addcmul(bias, normalized, weight).reshape(x.shape)

    @property
    def _channels(self) -> tuple[int, ...]:
        """The view of a per-channel tensor that broadcasts against (N, devices, C, H*W)."""
        return (1, self.folded_devices, -1, 1)

    def softmax(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The importance weights (softmax of the logits) of the mean and of the variance.

        Only the first len(branches) logits are read: under PerDevice a layer of C = len(branches)
        channels gets its logits tiled like a (C,) parameter; their first copy is the parameter
        itself, and the repeat's backward sums the copies' gradients, so this stays exact."""
        count = len(self.branches)
        return (
            torch.softmax(self.mean_weight[:count], 0),
            torch.softmax(self.var_weight[:count], 0),
        )

    def _bn_statistics(
        self, mean_in: torch.Tensor, var_in: torch.Tensor, count: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The BN branch's (mean, var), (1, devices, C, 1): the batch's in training (updating the
        running statistics), the running ones in eval."""
        if not self.training:
            return self.running_mean.view(self._channels), self.running_var.view(self._channels)
        if count < 2:  # as torch's BN: one value per channel has no variance
            raise ValueError(
                f"SwitchableNorm needs more than 1 value per channel in training, got input of "
                f"{mean_in.shape[0]} x {count // mean_in.shape[0]} values per channel"
            )
        mean_bn, var_bn = _pool(mean_in, var_in, 0)
        self._update_running(mean_bn.detach().flatten(), var_bn.detach().flatten(), count)
        return mean_bn, var_bn

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        """Move the running statistics towards the batch's mean and UNBIASED variance (as BN)."""
        self.num_batches_tracked.add_(1)
        unbiased = var * (count / (count - 1))
        if self.bn_average == "moving_average":
            rate: float | torch.Tensor = self.momentum
        else:  # 1 / batches seen: the mean of all batches so far, without a host read
            rate = self.num_batches_tracked.to(self.running_mean.dtype).reciprocal()
        self.running_mean.lerp_(mean, rate)
        self.running_var.lerp_(unbiased, rate)

    def reset_running_stats(self) -> None:
        """Back to a fresh layer's running statistics (parameters untouched)."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    @torch.no_grad()
    def importance(self) -> dict[str, list[float]]:
        """The importance weights {"mean": [w_in, w_ln, w_bn], "var": [...]} as floats; the fc form
        has no IN branch: its w_in is 0.0."""
        result = {}
        for key, weights in zip(("mean", "var"), self.softmax()):
            by_branch = dict(zip(self.branches, weights.double().tolist()))
            result[key] = [by_branch.get(branch, 0.0) for branch in BRANCHES[2]]
        return result

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, eps={self.eps}, momentum={self.momentum}, "
            f"bn_average={self.bn_average}, branches={'+'.join(self.branches)}, dim={self.dim}"
        )


def _pool(mean: torch.Tensor, var: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, biased variance) of the union of equal-sized groups along `dim`, each given by its
    mean and biased variance: the law of total variance (the authors' E[x^2] - mean^2, centred)."""
    pooled_mean = mean.mean(dim, keepdim=True)
    pooled_var = (var + (mean - pooled_mean).square()).mean(dim, keepdim=True)
    return pooled_mean, pooled_var


def _mix(weights: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
    """sum_i weights[i] * values[i], the values broadcasting against each other."""
    total = weights[0] * values[0]
    for weight, value in zip(weights[1:], values[1:]):
        total = total + weight * value
    return total


def importance_weights(module: nn.Module) -> dict[str, list[float]] | None:
    """SN's importance weights (SwitchableNorm.importance) of a built norm layer, also when it runs
    on simulated devices (PerDevice); None for a module that is not SN."""
    norm = module._eval_layer() if isinstance(module, PerDevice) else module
    return norm.importance() if isinstance(norm, SwitchableNorm) else None


def switchable_norm(
    num_channels: int,
    dim: int = 2,
    *,
    eps: float = 1e-5,
    momentum: float = 0.1,
    bn_average: str = "moving_average",
) -> nn.Module:
    """SN with the authors' defaults (see docs/norms.md#switchable-normalization).

    Args:
        momentum: the rate of the BN branch's moving average, torch's convention (the authors'
            SwitchNorm2d: 0.9 as the weight of the old value).
        bn_average: "moving_average" or "batch_average" (the authors' using_moving_average=False).
    """
    check_layer("sn", num_channels, dim)
    eps = check_eps("sn", eps)
    momentum = check_number("sn", "momentum", momentum, 0, 1)
    if bn_average not in BN_AVERAGES:
        raise NormConfigError(
            f"norm 'sn': bn_average must be one of {', '.join(BN_AVERAGES)}, got {bn_average!r}"
        )
    return SwitchableNorm(num_channels, dim, eps=eps, momentum=momentum, bn_average=bn_average)


def switchable_norm_reference(
    module: nn.Module, train: bool, act: bool = True
) -> Callable[..., torch.Tensor]:
    """SN by the paper's formulas in plain tensor math: f(x, params) for a SwitchableNorm's first
    training step (train=True, BN statistics of x) or its eval (the running statistics it holds
    now). Every statistic is computed straight over its axes with the biased variance; `act` is
    unused (SN has no activation of its own)."""
    assert isinstance(module, SwitchableNorm)
    eps, branches = module.eps, module.branches
    running = None if train else (module.running_mean.clone(), module.running_var.clone())

    def formula(x: torch.Tensor, p: Params) -> torch.Tensor:
        channel = (1, -1) + (1,) * (x.dim() - 2)
        stats = {"ln": _moments(x, tuple(range(1, x.dim())))}
        if x.dim() == 4:
            stats["in"] = _moments(x, (2, 3))
        if running is None:
            stats["bn"] = _moments(x, (0, *range(2, x.dim())))
        else:
            stats["bn"] = (running[0].view(channel), running[1].view(channel))
        mean_weights = torch.softmax(p["mean_weight"], 0)
        var_weights = torch.softmax(p["var_weight"], 0)
        mean = _mix(mean_weights, [stats[branch][0] for branch in branches])
        var = _mix(var_weights, [stats[branch][1] for branch in branches])
        normalized = (x - mean) / torch.sqrt(var + eps)
        return normalized * p["weight"].view(channel) + p["bias"].view(channel)

    return formula


def _moments(x: torch.Tensor, axes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(axes, keepdim=True)
    return mean, ((x - mean) ** 2).mean(axes, keepdim=True)
