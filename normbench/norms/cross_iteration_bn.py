"""Cross-Iteration Batch Normalization (Yao et al., "Cross-Iteration Batch Normalization", CVPR
2021): BN statistics averaged over the last `window` iterations, each past iteration's compensated
to the current weights of the preceding conv by a first-order Taylor term."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
    NormConfigError,
    RunningStatsNorm,
    check_eps,
    check_input,
    check_int,
    check_layer,
    check_momentum,
)
from .devices import PerDevice
from .reference import ref_bn_eval, ref_bn_train

_WINDOW_BUFFERS = ("window_mu_offset", "window_nu_offset", "window_dmu", "window_dnu")


class CrossIterationBatchNorm(RunningStatsNorm):
    """CBN: BN whose mean and E[x^2] are averaged over this and the previous `window - 1`
    iterations, the past ones Taylor-compensated to the current weights of the layer that feeds it.

    Iterations t <= `burnin` are BN (and fill no window). The layer needs the conv/linear before it
    (`bind_cross_iteration`); the window lives in buffers registered when it is bound (checkpoints
    keep it). Eval, and training forwards without gradients (precise statistics, batch-statistics
    evaluation), are BN's. See docs/norms.md#cbn.

    Args:
        window: k, the iterations averaged (this one included); 1 is BN.
        burnin: iterations of plain BN before the window starts filling.
    """

    window_mu_offset: torch.Tensor  # registered by bind_cross_iteration; declared for type checkers
    window_nu_offset: torch.Tensor
    window_dmu: torch.Tensor
    window_dnu: torch.Tensor

    def __init__(
        self,
        num_channels: int,
        dim: int = 2,
        eps: float = 1e-5,
        momentum: float = 0.1,
        window: int = 8,
        burnin: int = 500,
    ) -> None:
        super().__init__(num_channels, dim, eps, momentum)
        self.window, self.burnin = window, burnin
        self._iters = 0  # host mirror of num_batches_tracked (iterations so far), no sync per step
        # the layer feeding this one (bind_cross_iteration); not a module, so no submodule here
        self.source: _Source | None = None

    @property
    def iteration(self) -> int:
        """Training iterations (forwards with gradients) done so far."""
        return self._iters

    def reset_running_stats(self) -> None:
        """A fresh layer's statistics, schedule and (empty) window; parameters untouched."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()
        self._iters = 0

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._iters = int(self.num_batches_tracked)  # load time, not a training step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.dim, self.num_channels)
        if not self.training:
            return self.eval_forward(x)
        if not torch.is_grad_enabled():  # not a training step: BN, nothing counted or stored
            return self._batch_norm(x)
        self._iters += 1
        self.num_batches_tracked.add_(1)
        if self._iters <= self.burnin:
            return self._batch_norm(x)
        return self._cross_iteration(x, self._iters - self.burnin - 1)

    def _batch_norm(self, x: torch.Tensor) -> torch.Tensor:
        """BN's training forward, running statistics updated as nn.BatchNorm's."""
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum,
            self.eps,
        )  # fmt: skip

    def _cross_iteration(self, x: torch.Tensor, entry: int) -> torch.Tensor:
        """Iteration `entry` (0-based) after burn-in: normalize with the window's statistics, then
        store this iteration's statistics and their gradients w.r.t. the feeding layer's weight."""
        source = self.source
        if source is None:
            raise RuntimeError(
                "cbn past its burn-in needs the conv/linear that feeds it: build the model with "
                "normbench.backbones.build_model or call bind_cross_iteration(model)"
            )
        layer_input = source.take_input()
        x = x.to(self.weight.dtype)  # e.g. under autocast: the statistics in the parameters' dtype
        axes = (0, 2, 3) if self.dim == 2 else (0,)
        mu_now, nu_now = x.mean(axes), x.square().mean(axes)
        weight_now = source.flat_weight().to(x.dtype)
        filled = min(entry, self.window - 1)
        mu, nu = mu_now, nu_now
        if filled:
            mu_past, nu_past = self._compensated(weight_now, filled)
            mu = (mu_now + mu_past.sum(0)) / (filled + 1)
            nu = (nu_now + nu_past.sum(0)) / (filled + 1)
        scale = torch.rsqrt((nu - mu.square()).clamp(min=0) + self.eps) * self.weight
        shape = (1, -1, 1, 1) if self.dim == 2 else (1, -1)
        out = (x - mu.view(shape)) * scale.view(shape) + self.bias.view(shape)
        with torch.no_grad():
            if self.window > 1:
                slot = entry % (self.window - 1)
                self._store(source, slot, layer_input, x.detach(), weight_now, mu_now, nu_now)
            self.running_mean.lerp_(mu_now.detach(), self.momentum)
            self.running_var.lerp_(x.detach().var(axes), self.momentum)  # unbiased, as BN's
        return out

    def _compensated(self, weight: torch.Tensor, filled: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, nu) of the `filled` stored iterations at the current `weight`, (filled, C) each:
        offset + <d stat / d W, W> (the first-order Taylor term), nu raised to at least mu^2."""
        mu = self.window_mu_offset[:filled] + torch.einsum(
            "fjc,cj->fc", self.window_dmu[:filled], weight
        )
        nu = self.window_nu_offset[:filled] + torch.einsum(
            "fjc,cj->fc", self.window_dnu[:filled], weight
        )
        return mu, torch.maximum(nu, mu.square())

    def _store(
        self,
        source: _Source,
        slot: int,
        layer_input: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
        mu: torch.Tensor,
        nu: torch.Tensor,
    ) -> None:
        """Write this iteration into window row `slot`: d mu / d W and d nu / d W, and the offsets
        stat - <d stat / d W, W> so that a later W' gives stat + <d stat / d W, W' - W>."""
        dmu, dnu = source.statistic_gradients(layer_input, y)
        self.window_dmu[slot].copy_(dmu.t())
        self.window_dnu[slot].copy_(dnu.t())
        self.window_mu_offset[slot].copy_(mu - (dmu * weight).sum(1))
        self.window_nu_offset[slot].copy_(nu - (dnu * weight).sum(1))

    def extra_repr(self) -> str:
        if self.source is not None:
            bound = f", after {type(self.source.layer).__name__}"
        else:  # an eval-only copy (PerDevice's) normalizes with running statistics: no conv needed
            bound = ", unbound" if self.training else ""
        return (
            f"{self.num_channels}, eps={self.eps}, momentum={self.momentum}, "
            f"window={self.window}, burnin={self.burnin}, dim={self.dim}{bound}"
        )


@dataclass(eq=False)
class _Source:
    """The conv/linear that feeds a CBN layer, as the layer sees it: `devices` simulated devices
    (PerDevice) make the layer's channels devices * C, device d's images folded into channels
    d * C ... (d + 1) * C - 1, so the feeding layer's input and weight are folded the same way."""

    layer: nn.Conv2d | nn.Linear
    devices: int
    owner: nn.Module  # the module in the model: the CBN layer or its PerDevice
    norm: CrossIterationBatchNorm
    pending: torch.Tensor | None = None

    def remember_input(self, _layer: nn.Module, args: tuple[Any, ...], _output: Any) -> None:
        """Forward hook of the feeding layer: keep its input for the CBN forward that follows, when
        that forward is a training step past burn-in (else nothing is held)."""
        stepping = self.owner.training and torch.is_grad_enabled()
        self.pending = args[0] if stepping and self.norm.iteration >= self.norm.burnin else None

    def take_input(self) -> torch.Tensor:
        layer_input, self.pending = self.pending, None
        if layer_input is None:
            raise RuntimeError(
                f"cbn: its {type(self.layer).__name__} did not run right before it in this step; "
                "cbn must directly follow the conv/linear it was bound to"
            )
        return layer_input

    def flat_weight(self) -> torch.Tensor:
        """The feeding layer's weight as (devices * C, J), detached (past statistics carry no
        gradient)."""
        weight = getattr(self.layer, "effective_weight", lambda: self.layer.weight)()
        return weight.detach().reshape(weight.shape[0], -1).repeat(self.devices, 1)

    def statistic_gradients(
        self, layer_input: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(d mu / d W, d nu / d W), each (devices * C, J), of y = layer(layer_input) as the CBN
        sees it (folded): per output channel c, d mu_c / d W_c = mean of the unfolded input and
        d nu_c / d W_c = 2 mean(y_c * unfolded input), i.e. the conv's weight gradient for the
        output gradients 1 / M and 2 y / M (M values per channel), one grouped conv backward each;
        the simulated devices are groups of that conv."""
        conv = self.layer
        if isinstance(conv, nn.Linear):
            geometry: tuple[Any, ...] = ((1, 1), (1, 1), (0, 0), (1, 1), 1)
            layer_input, y = layer_input[..., None, None], y[..., None, None]
        else:
            geometry = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups)
        kernel, stride, padding, dilation, groups = geometry
        folded = layer_input.reshape(y.shape[0], -1, *layer_input.shape[2:]).to(y.dtype)
        groups *= self.devices
        per_group = folded.shape[1] // groups
        count = y.numel() // y.shape[1]
        dnu_shape = (y.shape[1], per_group, *kernel)
        dnu = _weight_gradient(y * (2.0 / count), folded, dnu_shape, geometry)
        ones = y.new_full((y.shape[0], groups, *y.shape[2:]), 1.0 / count)
        dmu = _weight_gradient(ones, folded, (groups, per_group, *kernel), geometry)
        dmu = dmu.repeat_interleave(y.shape[1] // groups, dim=0)
        return dmu.flatten(1), dnu.flatten(1)


def _weight_gradient(
    grad_output: torch.Tensor,
    conv_input: torch.Tensor,
    weight_shape: tuple[int, ...],
    geometry: tuple[Any, ...],
) -> torch.Tensor:
    """The gradient w.r.t. a weight of `weight_shape` of a conv with the stride, padding and
    dilation of `geometry` (its groups follow from the shapes) for `grad_output`."""
    _, stride, padding, dilation, _ = geometry
    groups = conv_input.shape[1] // weight_shape[1]
    shape_only = grad_output.new_zeros(()).expand(weight_shape)
    return torch.ops.aten.convolution_backward(
        grad_output, conv_input, shape_only, None, list(stride), list(padding), list(dilation),
        False, [0, 0], groups, [False, True, False],
    )[1]  # fmt: skip


def _cbn_of(module: nn.Module) -> tuple[CrossIterationBatchNorm | None, int]:
    """(the CBN layer computing in `module`, its simulated devices), or (None, 0)."""
    if isinstance(module, CrossIterationBatchNorm):
        return module, 1
    if isinstance(module, PerDevice) and isinstance(module.train_layer, CrossIterationBatchNorm):
        return module.train_layer, module.devices
    return None, 0


def bind_cross_iteration(model: nn.Module) -> int:
    """Bind every CBN layer of `model` to the conv/linear right before it in module order (its
    output channels must be the norm's), register each layer's window buffers, and return how many
    were bound; models without CBN are left untouched.

    Raises NormConfigError when a CBN layer has no such layer before it."""
    feeding: tuple[str, nn.Module] | None = None
    bound = 0
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            feeding = (name, module)
            continue
        norm, devices = _cbn_of(module)
        if norm is None:
            continue
        _bind(name, module, norm, devices, feeding)
        feeding = None  # one conv feeds one norm
        bound += 1
    return bound


def _bind(
    name: str,
    owner: nn.Module,
    norm: CrossIterationBatchNorm,
    devices: int,
    feeding: tuple[str, nn.Module] | None,
) -> None:
    """Pair one CBN layer (in `owner`) with `feeding`; register its window buffers on `owner`."""
    layer = feeding[1] if feeding is not None else None
    channels = getattr(layer, "out_channels", getattr(layer, "out_features", None))
    if layer is None or channels != owner.num_channels:
        raise NormConfigError(
            f"norm 'cbn' at {name!r} needs the conv or linear layer with {owner.num_channels} "
            "outputs right before it (it compensates that layer's weights); use another norm with "
            "this backbone"
        )
    if isinstance(layer, nn.Conv2d) and (
        layer.padding_mode != "zeros" or isinstance(layer.padding, str)
    ):
        raise NormConfigError(
            f"norm 'cbn' at {name!r}: its conv pads with {layer.padding_mode!r}/{layer.padding!r}; "
            "cbn supports zero padding given as numbers only"
        )
    assert isinstance(layer, (nn.Conv2d, nn.Linear))  # for type checkers: checked above
    source = _Source(layer, devices, owner, norm)
    layer.register_forward_hook(source.remember_input)
    norm.source = source
    like = owner.get_buffer("running_var")
    rows, width = norm.window - 1, norm.num_channels
    taps = layer.weight.shape[1:].numel()
    for buffer, shape in zip(
        _WINDOW_BUFFERS, ((rows, width), (rows, width), (rows, taps, width), (rows, taps, width))
    ):
        owner.register_buffer(buffer, like.new_zeros(shape))


def cross_iteration_batch_norm(
    num_channels: int,
    dim: int = 2,
    *,
    eps: float = 1e-5,
    momentum: float = 0.1,
    window: int = 8,
    burnin: int = 500,
) -> nn.Module:
    """CBN with the paper's window (see docs/norms.md#cbn).

    Args:
        window: k, the iterations whose statistics are averaged, this one included (1: BN).
        burnin: the first `burnin` training iterations are plain BN.
    """
    check_layer("cbn", num_channels, dim)
    return CrossIterationBatchNorm(
        num_channels,
        dim,
        eps=check_eps("cbn", eps),
        momentum=check_momentum("cbn", momentum),  # type: ignore[arg-type]
        window=check_int("cbn", "window", window, minimum=1),
        burnin=check_int("cbn", "burnin", burnin, minimum=0),
    )


def reference(
    module: nn.Module, train: bool, act: bool
) -> Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]:
    """`normbench check`'s formula: a fresh layer's first training step is BN's (the window is
    empty); eval is BN's with the running statistics."""
    eps = module.eps
    if train:
        return lambda x, p: ref_bn_train(x, p, eps)
    return lambda x, p: ref_bn_eval(x, p, eps, module.running_mean, module.running_var)
