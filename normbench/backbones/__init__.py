"""Backbone registry: name -> builder(cfg.backbone, norm_layer, num_classes, in_channels, image_size)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..norms import convert_convs
from .lenet import LeNet
from .norm_choice import NormChoice


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[..., nn.Module]
    description: str
    inputs: str  # what input it expects, for `normbench list backbones`


def _lenet(options: dict[str, Any], norm_layer: NormChoice, num_classes: int, in_channels: int,
           image_size: int) -> nn.Module:
    return LeNet(norm_layer, num_classes, in_channels, image_size,
                 activation=options["activation"], pool=options["pool"])


BACKBONES: dict[str, BackboneSpec] = {
    "lenet": BackboneSpec(_lenet, "LeNet-5 (d2l): 2 conv + 3 fc, norm after every hidden layer",
                          "any channels, square images >= 12 px (28 px as in d2l)"),
}

INITS = ("default", "xavier")


def build_backbone(options: dict[str, Any], norm_layer: NormChoice, num_classes: int, in_channels: int,
                   image_size: int) -> nn.Module:
    """Builds the backbone named by `options["name"]` and applies `options["init"]`."""
    name = options["name"]
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    model = BACKBONES[name].build(options, norm_layer, num_classes, in_channels, image_size)
    init = options.get("init", "default")
    if init == "xavier":  # d2l's training function: Xavier-uniform weights of every conv and linear layer
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
    elif init != "default":
        raise ValueError(f"unknown init {init!r}; choose one of {list(INITS)}")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())




def build_model(cfg: Any) -> tuple[nn.Module, NormChoice]:
    """The model a run config asks for (backbone, norm, data shape), and the NormChoice that built its norms."""
    from omegaconf import OmegaConf

    norm_options = OmegaConf.to_container(cfg.norm, resolve=True)
    norm_layer = NormChoice(norm_options.pop("name"), norm_options)
    backbone_options = OmegaConf.to_container(cfg.backbone, resolve=True)
    model = build_backbone(backbone_options, norm_layer, num_classes=cfg.data.num_classes,
                           in_channels=cfg.data.in_channels, image_size=cfg.data.image_size)
    if norm_layer.conv_weight is not None:
        convert_convs(model, norm_layer.conv_weight)
    return model, norm_layer


__all__ = ["BACKBONES", "BackboneSpec", "LeNet", "NormChoice", "build_backbone", "build_model", "count_parameters"]
