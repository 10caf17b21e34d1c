"""Simulated data-parallel devices for a batch-dependent norm (plumbing; no paper): one forward of
`devices * batch` images in which every device's `batch` images get their own statistics and their
own state, as on `devices` GPUs. See docs/norms.md#simulated-devices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._common import NormConfigError, eval_affine

RUNNING_STATS = ("device0", "mean")  # eval.running_stats: whose running statistics eval uses


class PerDevice(nn.Module):
    """A per-channel norm run on `devices` simulated devices at once, with per-device state.

    A micro-batch interleaves the devices: image i * devices + d is device d's i-th image, so the
    training input (b * devices, C, ...) is, as a free view, (b, devices * C, ...) in which channel
    d * C + c is channel c of device d. A copy of the norm built for devices * C channels
    (`train_layer`) computes on that view, so every statistic and every buffer (running statistics,
    MABN's rings) is per device; the parameters are this module's (C,) tensors tiled over the
    devices (their gradients sum over devices, like DDP's all-reduce).
    Eval runs a C-channel copy (`eval_layer`) on device 0's buffers, or on their mean over the
    devices (`running_stats="mean"`).

    All state lives in this module, a leaf: its state_dict keys are the norm's own, each per-device
    buffer with devices * C entries along its last dim; the two copies hold none of their own.

    Args:
        build: makes the norm for a number of channels (the same options for both copies).
        num_channels: C.
        devices: simulated devices, >= 2.
        running_stats: "device0" or "mean" (eval only).
    """

    def __init__(
        self,
        build: Callable[[int], nn.Module],
        num_channels: int,
        devices: int,
        running_stats: str = "device0",
    ) -> None:
        super().__init__()
        if running_stats not in RUNNING_STATS:
            raise NormConfigError(
                f"eval.running_stats must be one of {', '.join(RUNNING_STATS)}, got "
                f"{running_stats!r}"
            )
        self.num_channels, self.devices, self.running_stats = num_channels, devices, running_stats
        eval_layer, train_layer = build(num_channels), build(num_channels * devices)
        for name, parameter in list(eval_layer._parameters.items()):  # None too (EvoNorm's v)
            self.register_parameter(name, parameter)  # a fresh C-channel layer's initial values
        for name, buffer in list(train_layer.named_buffers(recurse=False)):
            persistent = name not in train_layer._non_persistent_buffers_set
            self.register_buffer(name, buffer, persistent=persistent)
        for layer in (eval_layer, train_layer):
            _strip_state(layer)
        eval_layer.train(False)
        # plain attributes, not submodules: this module is the only owner of state
        self.__dict__["train_layer"], self.__dict__["eval_layer"] = train_layer, eval_layer
        # a norm whose state depends on the gradient (MABN's psi) keeps one device's loss scale
        if hasattr(train_layer, "loss_devices"):
            train_layer.loss_devices = devices
        # a norm with statistics across channels (SN's LN branch) takes each device's C apart
        if hasattr(train_layer, "folded_devices"):
            train_layer.folded_devices = devices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._eval_layer()(x)
        count, rest = x.shape[0], x.shape[2:]
        if count % self.devices:
            raise ValueError(
                f"{self.devices} simulated devices need a batch divisible by {self.devices}, got "
                f"input {tuple(x.shape)}"
            )
        # images i * devices + d, channel c -> image i, channel d * C + c (a view when x is
        # contiguous; channels_last input is copied)
        folded = x.reshape(count // self.devices, self.devices * self.num_channels, *rest)
        layer = self._train_layer()
        try:
            return layer(folded).reshape(x.shape)
        finally:  # the graph keeps the tiled tensors; the layer must not (deepcopy refuses them)
            for name in self._parameters:
                layer.__dict__.pop(name, None)

    def _train_layer(self) -> nn.Module:
        """train_layer pointed at this module's buffers and at the tiled parameters."""
        layer = self.train_layer
        layer._buffers.update(self._buffers)
        for name, parameter in self._parameters.items():
            layer.__dict__[name] = self._tiled(parameter)
        return layer

    def _tiled(self, parameter: torch.Tensor | None) -> torch.Tensor | None:
        """A (..., C) parameter repeated for every device along its last dim; others as they are."""
        if parameter is None or parameter.dim() == 0 or parameter.shape[-1] != self.num_channels:
            return parameter
        return parameter.repeat(*(1,) * (parameter.dim() - 1), self.devices)

    def _eval_layer(self) -> nn.Module:
        """eval_layer holding device 0's buffers (or their mean) and the parameters."""
        layer = self.eval_layer
        for name, buffer in self._buffers.items():
            layer._buffers[name] = self._one_device(buffer)
        layer.__dict__.update(self._parameters)
        return layer

    def _one_device(self, buffer: torch.Tensor | None) -> torch.Tensor | None:
        """A buffer as one device sees it: the channel slice of device 0, or the devices' mean;
        buffers without a devices * C last dim (counters) are shared by all devices."""
        if not self._per_device(buffer):
            return buffer
        per_device = buffer.unflatten(-1, (self.devices, self.num_channels))
        if self.running_stats == "mean" and buffer.is_floating_point():
            return per_device.mean(-2)
        return per_device.select(-2, 0)

    def _per_device(self, buffer: torch.Tensor | None) -> bool:
        """The buffer holds one entry per device and channel along its last dim."""
        channels = self.devices * self.num_channels
        return buffer is not None and buffer.dim() > 0 and buffer.shape[-1] == channels

    def device_state(self, device: int) -> dict[str, torch.Tensor]:
        """Device `device`'s persistent buffers as a C-channel layer of the norm would save them
        (tests compare them with a torchrun rank's)."""
        state = {}
        for name, buffer in self._buffers.items():
            if name in self._non_persistent_buffers_set or buffer is None:
                continue
            if self._per_device(buffer):
                buffer = buffer.unflatten(-1, (self.devices, self.num_channels)).select(-2, device)
            state[name] = buffer
        return state

    def eval_affine(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Eval output = scale * x + shift per channel, as the evaluated copy's (normbench.fuse)."""
        return eval_affine(self._eval_layer())

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        # the norm's own load hook restores what it mirrors on the host (MABN's counters)
        self._train_layer()._load_from_state_dict(state_dict, prefix, *_no_reports(args))

    def extra_repr(self) -> str:
        stats = "device 0's" if self.running_stats == "device0" else "the devices' mean"
        return (
            f"{self.devices} simulated devices, each: {self._eval_layer()!r}; eval with {stats} "
            "running statistics"
        )


def _strip_state(layer: nn.Module) -> None:
    """Remove a layer's parameters and buffers (PerDevice hands it its own before each use)."""
    for name in list(layer._parameters):
        del layer._parameters[name]
    for name in list(layer._buffers):
        del layer._buffers[name]


def _no_reports(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """_load_from_state_dict's (local_metadata, strict, missing, unexpected, errors) with throwaway
    lists: the second load (of the same tensors) must not report keys twice."""
    local_metadata, strict = args[0], args[1]
    return (local_metadata, strict, [], [], [])
