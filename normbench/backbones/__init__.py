"""Backbone registry: name -> builder(cfg.backbone, norm_layer, num_classes, in_channels,
image_size)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from omegaconf import OmegaConf
from torch import nn

from ..norms import convert_convs
from ..norms.cross_iteration_bn import bind_cross_iteration
from .lenet import CHOICES as LENET_CHOICES
from .lenet import LeNet
from .norm_choice import NormChoice
from .resnet import ResNet, build_resnet
from .resnet_cifar import CifarResNet, build_cifar_resnet
from .shufflenet import ShuffleNetV2, build_shufflenet_v2


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[..., nn.Module]
    description: str
    inputs: str  # what input it expects, for `normbench list backbones`
    # backbone.<key> -> its allowed values; validate.py checks them before anything is built
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _lenet(options: dict[str, Any], norm_layer: NormChoice, *shape: int) -> nn.Module:
    """LeNet with backbone.activation, backbone.pool and backbone.fc_norm; the builders' common
    signature."""
    num_classes, in_channels, image_size = shape
    activation, pool = options["activation"], options["pool"]
    fc_norm = options.get("fc_norm", True)
    return LeNet(norm_layer, num_classes, in_channels, image_size, activation, pool, fc_norm)


# Parameter counts in the descriptions are with norm=bn, 10 classes, 3-channel 32 px input (small
# stem) and the configs' defaults; tests/backbones/test_resnet_shufflenet.py checks every one
# against a built model.
BACKBONES: dict[str, BackboneSpec] = {
    "lenet": BackboneSpec(
        _lenet,
        "LeNet-5 (d2l): 2 conv + 3 fc, norm after every hidden layer",
        "any channels, square images >= 12 px (28 px as in d2l)",
        choices=LENET_CHOICES,
    ),
    "resnet20": BackboneSpec(
        partial(build_cifar_resnet, 20),
        "CIFAR ResNet-20 (He et al. 2016, sec. 4.2): 3 stages x 3 basic blocks, 16/32/64 "
        "channels, zero-padding shortcuts; 269,722 params (BN, 10 classes)",
        "any channels, images >= 5 px (32 in the paper); no stem downsampling",
    ),
    "resnet56": BackboneSpec(
        partial(build_cifar_resnet, 56),
        "CIFAR ResNet-56 (He et al. 2016, sec. 4.2): 3 stages x 9 basic blocks, 16/32/64 "
        "channels, zero-padding shortcuts; 853,018 params (BN, 10 classes)",
        "any channels, images >= 5 px (32 in the paper); no stem downsampling",
    ),
    "resnet18": BackboneSpec(
        partial(build_resnet, 18),
        "ResNet-18 (He et al. 2016), torchvision's layout; 11,173,962 params (BN, 10 classes; "
        "ImageNet stem: 11,181,642 = torchvision's)",
        "any channels; <= 64 px: 3x3/1 stem, no max-pool (>= 9 px); larger: 7x7/2 stem + max-pool",
    ),
    "resnet50": BackboneSpec(
        partial(build_resnet, 50),
        "ResNet-50 (He et al. 2016), torchvision's layout; 23,520,842 params (BN, 10 classes; "
        "ImageNet stem: 23,528,522 = torchvision's)",
        "any channels; <= 64 px: 3x3/1 stem, no max-pool (>= 9 px); larger: 7x7/2 stem + max-pool",
    ),
    "shufflenet_v2": BackboneSpec(
        build_shufflenet_v2,
        "ShuffleNet V2 (Ma et al. 2018), backbone.width 0.5/1.0/1.5/2.0: 352,042 / 1,263,854 / "
        "2,488,874 / 5,365,486 params (BN, 10 classes; = torchvision's)",
        "any channels; <= 64 px: 3x3/1 stem, no max-pool (>= 9 px); larger: 3x3/2 stem + max-pool",
    ),
}

INITS = ("default", "xavier")


def build_backbone(
    options: dict[str, Any],
    norm_layer: NormChoice,
    num_classes: int,
    in_channels: int,
    image_size: int,
) -> nn.Module:
    """Builds the backbone named by `options["name"]` and applies `options["init"]`."""
    name = options["name"]
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    model = BACKBONES[name].build(options, norm_layer, num_classes, in_channels, image_size)
    init = options.get("init", "default")
    # d2l's training function: Xavier-uniform weights of every conv and linear layer
    if init == "xavier":
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
    elif init != "default":
        raise ValueError(f"unknown init {init!r}; choose one of {list(INITS)}")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(cfg: Any) -> tuple[nn.Module, NormChoice]:
    """The model a run config asks for (backbone, norm, data shape, simulated devices), and the
    NormChoice that built its norms."""
    norm_options = OmegaConf.to_container(cfg.norm, resolve=True)
    norm_layer = NormChoice(
        norm_options.pop("name"),
        norm_options,
        # sync_bn=true: one set of statistics over every device, simulated or not
        devices=1 if cfg.get("sync_bn", False) else cfg.get("devices", 1),
        running_stats=OmegaConf.select(cfg, "eval.running_stats", default="device0"),
    )
    backbone_options = OmegaConf.to_container(cfg.backbone, resolve=True)
    model = build_backbone(
        backbone_options,
        norm_layer,
        num_classes=cfg.data.num_classes,
        in_channels=cfg.data.in_channels,
        image_size=cfg.data.image_size,
    )
    if norm_layer.conv_weight is not None:
        convert_convs(model, norm_layer.conv_weight)
    bind_cross_iteration(model)  # CBN: each norm learns the conv/linear that feeds it
    return model, norm_layer


__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "CifarResNet",
    "LeNet",
    "NormChoice",
    "ResNet",
    "ShuffleNetV2",
    "build_backbone",
    "build_model",
    "count_parameters",
]
