"""Weight Normalization (Salimans & Kingma, NeurIPS 2016): every conv and linear layer computes with
w = g * v / ||v|| (conv_weight.weight_normalize), the "norm" after it is only the layer's bias
(`wn`) or the paper's mean-only batch normalization (`wn_mobn`); and the paper's data-dependent
initialization. See docs/norms.md#weight-normalization."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from ._common import NormConfigError, check_input, check_layer, check_momentum
from .conv_weight import is_weight_normalized

INITS = ("default", "data")  # norm.init: the layers' own init, or the paper's data-dependent one


class ChannelBias(nn.Module):
    """y = x + bias per channel: the b of the paper's y = phi(w . x + b) for a WN layer whose conv
    or linear has no bias of its own (the backbones leave it out before a norm)."""

    def __init__(self, num_channels: int, dim: int = 2) -> None:
        super().__init__()
        self.num_channels, self.dim = num_channels, dim
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.dim, self.num_channels)
        return x + _per_channel(self.bias, x)

    @torch.no_grad()
    def eval_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), float64, with output = scale * x + shift (normbench.fuse)."""
        return torch.ones_like(self.bias, dtype=torch.float64), self.bias.double()

    def extra_repr(self) -> str:
        return f"{self.num_channels}, dim={self.dim}"


class MeanOnlyBatchNorm(nn.Module):
    """The paper's mean-only batch normalization (sec. 4): y = x - mean_B(x) + bias per channel,
    the mean over (N, H, W) of the batch, no division by a standard deviation (WN's g scales);
    eval subtracts `running_mean` (torch's momentum convention: new = (1 - m) * old + m * batch)."""

    running_mean: torch.Tensor

    def __init__(self, num_channels: int, dim: int = 2, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_channels, self.dim, self.momentum = num_channels, dim, momentum
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("running_mean", torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.dim, self.num_channels)
        if not self.training:
            return x + _per_channel(self.bias - self.running_mean, x)
        mean = x.mean(dim=_batch_axes(x))
        with torch.no_grad():
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
        return x + _per_channel(self.bias - mean, x)

    @torch.no_grad()
    def eval_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), float64, with eval output = scale * x + shift (normbench.fuse)."""
        shift = self.bias.double() - self.running_mean.double()
        return torch.ones_like(shift), shift

    def extra_repr(self) -> str:
        return f"{self.num_channels}, momentum={self.momentum}, dim={self.dim}"


def _batch_axes(x: torch.Tensor) -> tuple[int, ...]:
    """Every axis but the channels': (N, H, W), or (N,) on features."""
    return (0, *range(2, x.dim()))


def _per_channel(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (C,) tensor shaped to broadcast over x's channel axis, in x's dtype."""
    return values.to(x.dtype).view(1, -1, *(1,) * (x.dim() - 2))


def _check_init(norm: str, init: object) -> str:
    """norm.init must be one of INITS."""
    if init not in INITS:
        raise NormConfigError(
            f"norm {norm!r}: init must be one of {', '.join(INITS)}, got {init!r}"
        )
    return str(init)


def weight_norm_bias(num_channels: int, dim: int = 2, *, init: str = "default") -> nn.Module:
    """`wn`: the per-channel bias after each weight-normalized conv / linear (ChannelBias); the
    layers themselves are reparametrized by the registry's conv_weight="weight_norm". init="data":
    the runner sets every g and bias from one training batch (data_dependent_init)."""
    check_layer("wn", num_channels, dim)
    _check_init("wn", init)
    return ChannelBias(num_channels, dim)


def mean_only_batch_norm(
    num_channels: int, dim: int = 2, *, momentum: float = 0.1, init: str = "default"
) -> nn.Module:
    """`wn_mobn`: mean-only BN (MeanOnlyBatchNorm) after each weight-normalized conv / linear.
    init="data": every g is set from one training batch (data_dependent_init)."""
    check_layer("wn_mobn", num_channels, dim)
    checked = cast(float, check_momentum("wn_mobn", momentum))  # None is refused
    _check_init("wn_mobn", init)
    return MeanOnlyBatchNorm(num_channels, dim, checked)


def weight_norm_reference(module: nn.Module, train: bool, act: bool) -> Callable[..., torch.Tensor]:
    """The formula of `wn` / `wn_mobn`'s norm layer as f(x, params), for `normbench check`.

    ChannelBias: x + bias. Mean-only BN: x - mean_B(x) + bias in training, x - running_mean + bias
    in eval (the running mean as it is now)."""
    if not isinstance(module, MeanOnlyBatchNorm):
        return lambda x, p: x + _per_channel(p["bias"], x)
    running_mean = module.running_mean.detach().clone()

    def mean_only(x: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
        mean = x.mean(dim=_batch_axes(x), keepdim=True) if train else _per_channel(running_mean, x)
        return x - mean + _per_channel(p["bias"], x)

    return mean_only


def first_batch(data: Any, images: int, seed: int) -> torch.Tensor:
    """The inputs of one training batch of `images` images, for data_dependent_init.

    Drawn from a generator of its own seeded with `seed`: the training generator is not touched."""
    inputs, _ = next(iter(data.train_batches(images, 1, torch.Generator().manual_seed(seed))))
    return inputs


@torch.no_grad()
def data_dependent_init(model: nn.Module, inputs: torch.Tensor) -> int:
    """The paper's data-dependent initialization (sec. 3) of every WN layer on the batch `inputs`.

    One training-mode forward in which, layer by layer in order, each weight-normalized layer's
    pre-activations t get zero mean and unit (biased) variance per channel over the batch:
    g <- g / std(t) (= 1 / std of v . x / ||v||) and bias <- -mean(t) / std(t), in the layer's own
    bias or the ChannelBias that takes its output (a mean-only BN subtracts the mean itself). Later
    layers see the normalized values. Buffers (mean-only BN's running mean) and the model's mode are
    left as they were. Returns how many layers were initialized; see
    docs/norms.md#weight-normalization."""
    init = _DataInit()
    hooks = [
        module.register_forward_hook(init.layer_hook)
        for module in model.modules()
        if is_weight_normalized(module)
    ]
    hooks += [
        module.register_forward_pre_hook(init.bias_hook)
        for module in model.modules()
        if isinstance(module, ChannelBias)
    ]
    buffers = [(b, b.clone()) for b in model.buffers()]
    was_training = model.training
    try:
        model.train()(inputs)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
        for buffer, saved in buffers:
            buffer.copy_(saved)
    return init.layers


class _DataInit:
    """The hooks of one data_dependent_init pass."""

    def __init__(self) -> None:
        self.layers = 0
        # id(a WN layer's normalized output) -> (that output, kept so its id stays unique; the
        # shift -mean/std its ChannelBias takes)
        self.shifts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def layer_hook(self, layer: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        """After a WN layer: rescale g (t is linear in g), set or hand on the shift, and return the
        normalized output, on which the next layers initialize."""
        axes = _batch_axes(output)
        std, mean = output.std(dim=axes, correction=0), output.mean(dim=axes)
        # a channel constant over the batch (e.g. after dead ReLUs) keeps its scale
        inv_std = torch.where(std > 0, 1.0 / std, torch.ones_like(std))
        g = layer.get_parameter("parametrizations.weight.original0")
        g.mul_(inv_std.view(g.shape).to(g.dtype))
        self.layers += 1
        bias: torch.Tensor | None = getattr(layer, "bias", None)
        if bias is not None:
            bias.sub_(mean.to(bias.dtype)).mul_(inv_std.to(bias.dtype))
            return (output - _per_channel(mean, output)) * _per_channel(inv_std, output)
        scaled = output * _per_channel(inv_std, output)
        self.shifts[id(scaled)] = (scaled, -mean * inv_std)
        return scaled

    def bias_hook(self, norm: ChannelBias, args: tuple[torch.Tensor, ...]) -> None:
        """Before a ChannelBias: take the shift of the WN layer whose output it gets."""
        found = self.shifts.pop(id(args[0]), None)
        if found is not None:
            norm.bias.copy_(found[1])


__all__ = [
    "INITS",
    "ChannelBias",
    "MeanOnlyBatchNorm",
    "data_dependent_init",
    "first_batch",
    "mean_only_batch_norm",
    "weight_norm_reference",
    "weight_norm_bias",
]
