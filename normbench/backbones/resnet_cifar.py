"""The CIFAR ResNets of He et al. (CVPR 2016, section 4.2): resnet20, resnet32, resnet44, resnet56,
resnet110...

6n + 2 layers on 16/32/64 channels; the shortcut where a block changes shape is the paper's option A
(subsample and zero-pad, no parameters) by default, or option B (1x1 projection conv + norm). Norm
placement and names follow resnet.py; see docs/norms.md#cifar-resnets.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .norm_choice import NormChoice, make_activation
from .resnet import (
    BasicBranch,
    check_final_size,
    he_conv,
    norm_and_act,
    zero_init_last_norms,
    zero_init_residual,
)

SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Option A: identity subsampled by `stride`, new channels filled with zeros (no parameters)."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


class CifarBasicBlock(BasicBranch):
    """conv3x3 -> norm -> act -> conv3x3 -> norm, + shortcut, -> act."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        norm_layer: NormChoice,
        activation: str,
        shortcut: str,
    ) -> None:
        super().__init__(in_planes, planes, stride, norm_layer, activation)
        if stride == 1 and in_planes == planes:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(stride, planes - in_planes)
        else:
            self.shortcut = nn.Sequential(
                he_conv(in_planes, planes, 1, stride=stride, bias=norm_layer.conv_bias),
                norm_layer.norm_only(planes),
            )
        self.act_out = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_out(self.branch(x) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images; any input channels and square size >= 5 px (32 px in the
    paper)."""

    def __init__(
        self,
        depth: int,
        norm_layer: NormChoice,
        num_classes: int = 10,
        in_channels: int = 3,
        activation: str = "relu",
        shortcut: str = "A",
    ) -> None:
        super().__init__()
        blocks_per_stage = check_depth(depth)
        if shortcut not in SHORTCUTS:
            raise ValueError(
                f"unknown CIFAR ResNet shortcut {shortcut!r}; choose A (zero-padding identity, "
                "the paper's CIFAR choice) or B (1x1 projection conv + norm)"
            )
        self.depth = depth
        self.conv1 = he_conv(in_channels, 16, 3, padding=1, bias=norm_layer.conv_bias)
        self.bn1, self.act1 = norm_and_act(norm_layer, 16, activation)
        in_planes = 16
        for index, planes in enumerate((16, 32, 64), start=1):
            blocks = []
            for i in range(blocks_per_stage):
                stride = 2 if (i == 0 and index > 1) else 1
                blocks.append(
                    CifarBasicBlock(in_planes, planes, stride, norm_layer, activation, shortcut)
                )
                in_planes = planes
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def check_depth(depth: Any) -> int:
    """n blocks per stage for depth 6n + 2 (20, 32, 44, 56, 110, ...)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth!r}"
        )
    return (depth - 2) // 6


def build_cifar_resnet(
    default_depth: int,
    options: dict[str, Any],
    norm_layer: NormChoice,
    num_classes: int,
    in_channels: int,
    image_size: int,
) -> CifarResNet:
    """Backbone builder for resnet20/resnet56 (options: depth, shortcut, activation,
    zero_init_residual)."""
    depth = options.get("depth", default_depth)
    name = options.get("name", f"resnet{default_depth}")
    check_depth(depth)
    check_final_size(name, image_size, 4)
    model = CifarResNet(
        depth,
        norm_layer,
        num_classes,
        in_channels,
        activation=options.get("activation", "relu"),
        shortcut=str(options.get("shortcut", "A")).upper(),
    )
    if zero_init_residual(name, options):
        zero_init_last_norms(
            name, (m for m in model.modules() if isinstance(m, CifarBasicBlock)), norm_layer
        )
    return model
