"""Normalization layers compared by normbench: BN, LN, IN, GN (Wu & He, ECCV 2018), FRN, none."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn

from ._common import NormConfigError
from .batch_norm import batch_norm
from .conv_weight import CONV_WEIGHTS, convert_convs
from .frn import FilterResponseNorm, filter_response_norm
from .group_norm import GroupNorm, group_norm, resolve_groups
from .identity import identity
from .instance_norm import instance_norm
from .layer_norm import LayerNorm, layer_norm

__all__ = [
    "NORMS", "NormSpec", "build_norm", "norm_options", "resolve_groups", "NormConfigError",
    "GroupNorm", "LayerNorm", "FilterResponseNorm", "CONV_WEIGHTS", "convert_convs",
]


@dataclass(frozen=True)
class NormSpec:
    factory: Callable[..., nn.Module]  # factory(num_channels, dim, **options) -> nn.Module
    description: str                   # one line for `normbench list norms`, names the paper
    batch_dependent: bool              # uses batch statistics in training: batch=1 is an error
    includes_activation: bool          # carries its own activation (FRN's TLU): backbone adds none
    supports_1d: bool                  # has a meaningful form on (N, C) features
    conv_weight: str | None = None     # every conv of the model gets this weight reparametrization
                                       # (conv_weight.CONV_WEIGHTS: "center" for MABN, "standardize" for GN+WS)


NORMS: dict[str, NormSpec] = {
    "bn": NormSpec(batch_norm, "Batch Normalization (Ioffe & Szegedy, ICML 2015): per channel over (N, H, W) "
                   "of the batch, running statistics in eval", True, False, True),
    "ln": NormSpec(layer_norm, "Layer Normalization (Ba et al., 2016) as in the GN paper: each sample over "
                   "(C, H, W), per-channel affine", False, False, True),
    "in": NormSpec(instance_norm, "Instance Normalization (Ulyanov et al., 2016): each sample and channel over "
                   "(H, W); no norm on fully connected layers", False, False, False),
    "gn": NormSpec(group_norm, "Group Normalization (Wu & He, ECCV 2018): each sample over groups of C/G "
                   "channels and (H, W)", False, False, True),
    "frn": NormSpec(filter_response_norm, "Filter Response Normalization + TLU (Singh & Krishnan, CVPR 2020): "
                    "x / sqrt(mean_HW(x^2) + eps), affine, max(y, tau)", False, True, True),
    "none": NormSpec(identity, "No normalization (identity): the baseline", False, False, True),
}


def norm_options(name: str) -> dict[str, Any]:
    """The keyword options of a registered norm with their defaults (what configs/norm/<name>.yaml holds)."""
    factory = _spec(name).factory
    return {p.name: p.default for p in inspect.signature(factory).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _spec(name: str) -> NormSpec:
    spec = NORMS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise NormConfigError(f"unknown norm {name!r}; registered norms: {', '.join(NORMS)}")
    return spec


def build_norm(name: str, num_channels: int, dim: int = 2, **options: Any) -> nn.Module:
    """Build norm `name` for a layer of `num_channels` channels.

    dim=2: NCHW feature maps; dim=1: (N, C) features. Raises NormConfigError (a ValueError) for
    an unknown name, an option the norm does not take, a bad value, or an unsupported dim.
    """
    spec = _spec(name)
    valid = norm_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        takes = ", ".join(valid) if valid else "no options"
        raise NormConfigError(f"norm {name!r} has no option {', '.join(unknown)}; it takes: {takes}")
    return spec.factory(num_channels, dim, **options)
