"""ResNet-18 and ResNet-50 (He et al., CVPR 2016) in torchvision's layout, with any norm.

torchvision's blocks hard-code a ReLU after each norm; these mirror their structure and module names
(with BN the state_dict, shapes and parameter count equal torchvision's and its weights load), but
place norms with `norm_layer.norm_act(...)` / `norm_layer.norm_only(...)` so a norm carrying its own
activation (FRN+TLU, EvoNorm) gets no second one. The helpers at the bottom (`norm_and_act`,
`zero_init_last_norms`, `resolve_stem`, `check_final_size`, `he_conv`) are shared by the CIFAR
ResNets and ShuffleNetV2. Placement rules, layer names and stems: docs/norms.md#resnet.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..values import as_bool
from .norm_choice import NormChoice, make_activation

# stem="auto": the small stem for images up to this size (CIFAR, Fashion-MNIST, Tiny ImageNet)
SMALL_IMAGE_MAX = 64
STEMS = ("auto", "small", "imagenet")


class BasicBranch(nn.Module):
    """conv3x3 (stride) -> norm -> act -> conv3x3 -> norm: the residual branch of a basic block,
    shared by BasicBlock and the CIFAR ResNets' block, which add the shortcut and `act_out`."""

    def __init__(
        self, in_planes: int, planes: int, stride: int, norm_layer: NormChoice, activation: str
    ) -> None:
        super().__init__()
        bias = norm_layer.conv_bias
        self.conv1 = he_conv(in_planes, planes, 3, stride=stride, padding=1, bias=bias)
        self.bn1, self.act1 = norm_and_act(norm_layer, planes, activation)
        self.conv2 = he_conv(planes, planes, 3, padding=1, bias=bias)
        self.bn2 = norm_layer.norm_only(planes)  # no activation before the addition

    @property
    def last_norm(self) -> nn.Module:
        return self.bn2

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))


class BasicBlock(BasicBranch):
    """Two 3x3 convs (stride on the first) + shortcut; torchvision's BasicBlock, expansion 1."""

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int, norm_layer: NormChoice, activation: str
    ) -> None:
        super().__init__(in_planes, planes, stride, norm_layer, activation)
        self.downsample = projection(in_planes, planes, stride, norm_layer)
        self.act_out = make_activation(activation)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.act_out(self.branch(x) + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here: torchvision's "ResNet v1.5"), 1x1 expand x4 + shortcut."""

    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int, norm_layer: NormChoice, activation: str
    ) -> None:
        super().__init__()
        bias = norm_layer.conv_bias
        out_planes = planes * self.expansion
        self.conv1 = he_conv(in_planes, planes, 1, bias=bias)
        self.bn1, self.act1 = norm_and_act(norm_layer, planes, activation)
        self.conv2 = he_conv(planes, planes, 3, stride=stride, padding=1, bias=bias)
        self.bn2, self.act2 = norm_and_act(norm_layer, planes, activation)
        self.conv3 = he_conv(planes, out_planes, 1, bias=bias)
        self.bn3 = norm_layer.norm_only(out_planes)  # no ReLU before the addition
        self.downsample = projection(in_planes, out_planes, stride, norm_layer)
        self.act_out = make_activation(activation)
        self.stride = stride

    @property
    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act_out(out + identity)


def projection(
    in_planes: int, out_planes: int, stride: int, norm_layer: NormChoice
) -> nn.Sequential | None:
    """torchvision's `downsample`: 1x1 conv + norm where the shape changes, else None (identity
    shortcut)."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(
        he_conv(in_planes, out_planes, 1, stride=stride, bias=norm_layer.conv_bias),
        norm_layer.norm_only(out_planes),
    )


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
DEPTHS = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3))}


class ResNet(nn.Module):
    """ResNet-18/50 as torchvision builds them (stages of 64/128/256/512 planes), for any norm and
    input."""

    def __init__(
        self,
        depth: int,
        norm_layer: NormChoice,
        num_classes: int = 1000,
        in_channels: int = 3,
        small_stem: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(
                f"ResNet depth {depth} is not built here; choose one of {sorted(DEPTHS)}"
            )
        block_name, counts = DEPTHS[depth]
        block = BLOCKS[block_name]
        bias = norm_layer.conv_bias
        self.small_stem = small_stem
        if small_stem:
            self.conv1 = he_conv(in_channels, 64, 3, stride=1, padding=1, bias=bias)
        else:
            self.conv1 = he_conv(in_channels, 64, 7, stride=2, padding=3, bias=bias)
        self.bn1, self.act1 = norm_and_act(norm_layer, 64, activation)
        self.maxpool = nn.Identity() if small_stem else nn.MaxPool2d(3, stride=2, padding=1)
        in_planes = 64
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), counts), start=1):
            blocks = []
            for i in range(count):
                stride = 2 if (i == 0 and index > 1) else 1
                blocks.append(block(in_planes, planes, stride, norm_layer, activation))
                in_planes = planes * block.expansion
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_resnet(
    depth: int,
    options: dict[str, Any],
    norm_layer: NormChoice,
    num_classes: int,
    in_channels: int,
    image_size: int,
) -> ResNet:
    """Backbone builder for resnet18/resnet50 (options: stem, activation, zero_init_residual)."""
    name = f"resnet{depth}"
    small = resolve_stem(name, options.get("stem", "auto"), image_size)
    check_final_size(name, image_size, 8 if small else 32, None if small else "backbone.stem=small")
    model = ResNet(
        depth,
        norm_layer,
        num_classes,
        in_channels,
        small_stem=small,
        activation=options.get("activation", "relu"),
    )
    if zero_init_residual(name, options):
        zero_init_last_norms(
            name,
            (m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))),
            norm_layer,
        )
    return model


# ---- helpers shared by the CNN backbones ----


def norm_and_act(
    norm_layer: NormChoice, channels: int, activation: str
) -> tuple[nn.Module, nn.Module]:
    """(norm, activation) for a norm+activation position; the activation is nn.Identity when the
    norm carries its own (FRN+TLU, EvoNorm), so module names and Sequential indices do not depend on
    the norm."""
    modules = norm_layer.norm_act(channels, activation)
    return modules[0], (modules[1] if len(modules) > 1 else nn.Identity())


def zero_init_last_norms(backbone: str, blocks: Iterable[nn.Module], norm_layer: NormChoice) -> int:
    """The GN paper's option (after Goyal et al. 2017): gamma = 0 in the last norm of every residual
    block, so each block starts as the identity. Raises ValueError when that norm has no learnable
    scale."""
    count = 0
    for block in blocks:
        weight = getattr(block.last_norm, "weight", None)
        if not isinstance(weight, nn.Parameter):
            raise ValueError(
                "backbone.zero_init_residual=true sets the scale (gamma, `weight`) of the last "
                f"norm in each residual block to 0, but norm={norm_layer.name} has no learnable "
                f"scale there ({type(block.last_norm).__name__}) in {backbone}: set "
                "backbone.zero_init_residual=false"
            )
        with torch.no_grad():
            weight.zero_()
        count += 1
    return count


def resolve_stem(backbone: str, stem: Any, image_size: int) -> bool:
    """True for the small-image stem: stem="small", or "auto" with images <= 64 px."""
    if stem not in STEMS:
        raise ValueError(
            f"unknown {backbone} stem {stem!r}; choose one of {', '.join(STEMS)} "
            f"(auto: small for images <= {SMALL_IMAGE_MAX} px, imagenet above)"
        )
    return stem == "small" or (stem == "auto" and image_size <= SMALL_IMAGE_MAX)


def final_size(image_size: int, total_stride: int) -> int:
    """Side of the last feature map: every stride-2 conv/pool here (3x3 pad 1, 7x7 pad 3) gives
    ceil(n/2)."""
    size = image_size
    while total_stride > 1:
        size, total_stride = -(-size // 2), total_stride // 2
    return size


def check_final_size(
    backbone: str, image_size: int, total_stride: int, alternative: str | None = None
) -> None:
    """The last stage must see at least 2x2 positions: on a 1x1 map instance-style norms (IN, GN
    with one channel per group) have a single value per channel to normalize."""
    side = final_size(max(image_size, 1), total_stride)
    if image_size < 1 or side < 2:
        hint = f" or {alternative}" if alternative else ""
        raise ValueError(
            f"{backbone} downsamples {total_stride}x: {image_size} px images leave a "
            f"{side}x{side} final feature map; use images of at least {total_stride + 1} px{hint}"
        )


def he_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    bias: bool = False,
) -> nn.Conv2d:
    """nn.Conv2d with He et al.'s (ICCV 2015) normal init (fan_out, ReLU gain), as in the ResNet
    paper and torchvision; the bias (norm=none only) starts at 0. Made with skip_init, so torch's
    default init (as costly as this one: 23M numbers for ResNet-50) is not drawn first only to be
    overwritten."""
    conv = nn.utils.skip_init(
        nn.Conv2d,
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=padding,
        bias=bias,
        device=torch.get_default_device(),  # skip_init ignores `with torch.device(...)` otherwise
    )
    if conv.weight.is_meta:  # validation's shape-only build: drawing on meta is slow and moot
        return conv
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def zero_init_residual(backbone: str, options: dict[str, Any]) -> bool:
    """backbone.zero_init_residual (default false), a bool or the string "true"/"false"."""
    return as_bool(
        options.get("zero_init_residual", False),
        "backbone.zero_init_residual",
        words=True,
        hint=f" ({backbone})",
        error=ValueError,
    )
