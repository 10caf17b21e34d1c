"""ShuffleNet V2 (Ma et al., ECCV 2018) with any norm of normbench.

Our own module with torchvision's layout and module names (with BN the state_dict, shapes and
parameter count equal torchvision's `shufflenet_v2_x*` and its weights load), since torchvision's
hard-codes nn.BatchNorm2d; norms are placed with `norm_act` / `norm_only`. Small images get a
stride-1 conv1 and no max-pool. No `zero_init_residual`: the units have no residual addition.
Widths, stems and why: docs/norms.md#shufflenet-v2.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .norm_choice import NormChoice
from .resnet import check_final_size, norm_and_act, resolve_stem, zero_init_residual

STAGE_CHANNELS = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}
STAGE_UNITS = (4, 8, 4)
STEM_CHANNELS = 24


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """(N, g*k, H, W) -> channels reordered as k groups of g, so the two halves of a unit
    interleave."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """The ShuffleNet V2 unit (torchvision's `InvertedResidual`).

    stride 1: split the channels in two halves, keep the first, run branch2 on the second,
    concatenate; stride 2: branch1 (3x3 depthwise stride 2 -> norm -> 1x1 -> norm -> act) and
    branch2 both see the whole input, doubling the channels. branch2 = 1x1 -> norm -> act -> 3x3
    depthwise -> norm -> 1x1 -> norm -> act. Then a channel shuffle with 2 groups.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        norm_layer: NormChoice,
        activation: str,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleNet V2 unit stride must be 1 or 2, got {stride}")
        branch = out_channels // 2
        if stride == 1 and in_channels != 2 * branch:
            raise ValueError(
                f"a stride-1 ShuffleNet V2 unit keeps its width: {in_channels} != {out_channels}"
            )
        self.stride = stride
        bias = norm_layer.conv_bias
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(
                    in_channels,
                    in_channels,
                    3,
                    stride=stride,
                    padding=1,
                    groups=in_channels,
                    bias=bias,
                ),
                norm_layer.norm_only(in_channels),  # no ReLU after the depthwise conv
                nn.Conv2d(in_channels, branch, 1, bias=bias),
                *norm_and_act(norm_layer, branch, activation),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_channels if stride > 1 else branch, branch, 1, bias=bias),
            *norm_and_act(norm_layer, branch, activation),
            nn.Conv2d(branch, branch, 3, stride=stride, padding=1, groups=branch, bias=bias),
            norm_layer.norm_only(branch),  # no ReLU after the depthwise conv
            nn.Conv2d(branch, branch, 1, bias=bias),
            *norm_and_act(norm_layer, branch, activation),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, transformed = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(transformed)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(
        self,
        norm_layer: NormChoice,
        num_classes: int = 1000,
        in_channels: int = 3,
        width: float = 1.0,
        small_stem: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        width = check_width(width)
        *stage_channels, last_channels = STAGE_CHANNELS[width]
        bias = norm_layer.conv_bias
        self.width = width
        self.small_stem = small_stem
        self.conv1 = nn.Sequential(
            nn.Conv2d(
                in_channels, STEM_CHANNELS, 3, stride=1 if small_stem else 2, padding=1, bias=bias
            ),
            *norm_and_act(norm_layer, STEM_CHANNELS, activation),
        )
        self.maxpool = nn.Identity() if small_stem else nn.MaxPool2d(3, stride=2, padding=1)
        channels = STEM_CHANNELS
        for index, (out_channels, units) in enumerate(zip(stage_channels, STAGE_UNITS), start=2):
            stage = [ShuffleUnit(channels, out_channels, 2, norm_layer, activation)]
            stage += [
                ShuffleUnit(out_channels, out_channels, 1, norm_layer, activation)
                for _ in range(units - 1)
            ]
            setattr(self, f"stage{index}", nn.Sequential(*stage))
            channels = out_channels
        self.conv5 = nn.Sequential(
            nn.Conv2d(channels, last_channels, 1, bias=bias),
            *norm_and_act(norm_layer, last_channels, activation),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def check_width(width: Any) -> float:
    widths = ", ".join(str(w) for w in STAGE_CHANNELS)
    if (
        isinstance(width, bool)
        or not isinstance(width, (int, float))
        or float(width) not in STAGE_CHANNELS
    ):
        raise ValueError(
            f"unknown shufflenet_v2 width {width!r}; choose one of {widths} "
            f"(the ShuffleNet V2 paper's 0.5x/1x/1.5x/2x, Table 5)"
        )
    return float(width)


def build_shufflenet_v2(
    options: dict[str, Any],
    norm_layer: NormChoice,
    num_classes: int,
    in_channels: int,
    image_size: int,
) -> ShuffleNetV2:
    """Backbone builder for shufflenet_v2 (options: width, stem, activation,
    zero_init_residual=false)."""
    width = check_width(options.get("width", 1.0))
    if zero_init_residual("shufflenet_v2", options):
        raise ValueError(
            "backbone.zero_init_residual=true is for ResNets: shufflenet_v2 has no residual "
            "addition (its units concatenate), and a zero scale before its ReLUs would stop the "
            "branch from training; set backbone.zero_init_residual=false"
        )
    small = resolve_stem("shufflenet_v2", options.get("stem", "auto"), image_size)
    check_final_size(
        "shufflenet_v2", image_size, 8 if small else 32, None if small else "backbone.stem=small"
    )
    return ShuffleNetV2(
        norm_layer,
        num_classes,
        in_channels,
        width,
        small_stem=small,
        activation=options.get("activation", "relu"),
    )
