"""The norm a backbone is built with: a `norm_layer(num_channels, dim)` callable plus its activation
rules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..norms import NORMS, NormConfigError, NormSpec, PerDevice, build_norm

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "relu": lambda: nn.ReLU(inplace=True),
}


@dataclass
class NormChoice:
    """Builds every norm layer of one model from one config entry and remembers what it built.

    Called like torchvision's `norm_layer`: `choice(num_channels)` for NCHW maps, `choice(c, dim=1)`
    for (N, C) features. Norms without a meaningful 1-D form (IN) give `nn.Identity` on features,
    and `skipped` says which layers went without a norm, so the run record shows it.

    With `devices` > 1 every norm with per-device statistics (NormSpec.per_device) is a PerDevice
    layer: a forward takes the images of `devices` devices, each device's normalized with its own
    statistics and state; `running_stats` says whose running statistics eval uses.

    Backbones place norms with `norm_act(c, activation)` where the original network has norm +
    activation and `norm_only(c)` where it has a norm and no activation; they differ only for a norm
    carrying its own activation (FRN+TLU, EvoNorm). See docs/norms.md#norm-placement.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    built: list[nn.Module] = field(default_factory=list, repr=False)
    skipped: list[str] = field(default_factory=list)
    devices: int = 1
    running_stats: str = "device0"

    @property
    def spec(self) -> NormSpec:
        return NORMS[self.name]

    def __post_init__(self) -> None:
        # build_norm would take it as its layer argument, not as an option
        if "act" in self.options:
            raise NormConfigError(
                f"norm {self.name!r} has no option act: whether a norm keeps its own activation "
                "is decided by the backbone at each position, not by the config"
            )

    def __call__(self, num_channels: int, dim: int = 2, *, act: bool = True) -> nn.Module:
        """The norm for one layer; act=False: without its own activation (see build_norm), for
        norm_only."""
        if dim == 1 and not self.spec.supports_1d:
            self.skipped.append(
                f"{self.name} has no 1-D form: no norm on a {num_channels}-feature layer"
            )
            return nn.Identity()

        def build(channels: int) -> nn.Module:
            return build_norm(self.name, channels, dim=dim, act=act, **self.options)

        if self.devices > 1 and self.spec.per_device:
            module: nn.Module = PerDevice(build, num_channels, self.devices, self.running_stats)
        else:
            module = build(num_channels)
        self.built.append(module)
        return module

    def norm_only(self, num_channels: int, dim: int = 2) -> nn.Module:
        """The norm at a position with no activation after it in the original network: a norm
        carrying its own activation comes without it (FRN without TLU, EvoNorm's linear form), so
        that position stays linear; any other norm is the same module as `self(num_channels,
        dim)`."""
        return self(num_channels, dim, act=False)

    def norm_act(self, num_channels: int, activation: str, dim: int = 2) -> list[nn.Module]:
        """Norm then activation, as a list of modules; a norm carrying its own activation (FRN+TLU)
        replaces both, as in its paper."""
        norm = self(num_channels, dim)
        if self.spec.includes_activation and not isinstance(norm, nn.Identity):
            return [norm]
        return [norm, make_activation(activation)]

    @property
    def conv_weight(self) -> str | None:
        """The conv reparametrization this norm comes with (MABN: "center", unless
        norm.center_weights=false)."""
        if not self.options.get("center_weights", True):
            return None
        return self.spec.conv_weight

    @property
    def conv_bias(self) -> bool:
        """A conv/linear followed by a norm with its own shift needs no bias (torchvision's
        convention)."""
        return self.name == "none"


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None
