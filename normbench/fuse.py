"""Folding eval-mode norms into the preceding conv / linear layer ("at test time BN is linear and
fuses into the conv"): for y = a * (W x + c) + b, use W' = a W and c' = a c + b."""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from .norms._common import eval_affine

__all__ = ["eval_affine", "fold_layer", "fold_norms"]


def _layer_weight(layer: nn.Module) -> torch.Tensor:
    """The weight the layer actually applies (centred / standardized convs reparametrize theirs; a
    parametrized layer's `weight` is computed, e.g. Weight Normalization's g * v / ||v||)."""
    return layer.effective_weight() if hasattr(layer, "effective_weight") else layer.weight


@torch.no_grad()
def fold_layer(layer: nn.Conv2d | nn.Linear, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
    """A plain nn.Conv2d / nn.Linear computing scale * layer(x) + shift (folded in float64)."""
    weight = _layer_weight(layer).double()
    bias = (
        layer.bias.double()
        if layer.bias is not None
        else torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
    )
    view = (-1,) + (1,) * (weight.dim() - 1)
    if isinstance(layer, nn.Conv2d):
        folded = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            bias=True,
            padding_mode=layer.padding_mode,
        )
    else:
        folded = nn.Linear(layer.in_features, layer.out_features, bias=True)
    folded = folded.to(device=weight.device, dtype=layer.weight.dtype)
    folded.weight.copy_(weight * scale.to(weight.device).view(view))
    folded.bias.copy_(bias * scale.to(weight.device) + shift.to(weight.device))
    return folded


class _ChildlessLeafTracer(fx.Tracer):
    """Treats every module without children (convs, norms, activations) as one graph node, so custom
    norms with Python checks in forward trace fine and can be matched by type; so is a parametrized
    layer (Weight Normalization), whose only children compute its weight."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return next(module.children(), None) is None or parametrize.is_parametrized(module)


def _foldable(layer: nn.Module) -> bool:
    """A conv (any nn.Conv2d) or a plain nn.Linear, parametrized ones included (Weight
    Normalization)."""
    # parametrize swaps a layer's class for a Parametrized<Class> subclass of it
    plain = type(layer).__bases__[0] if parametrize.is_parametrized(layer) else type(layer)
    return plain is nn.Linear or isinstance(layer, nn.Conv2d)


def fold_norms(model: nn.Module) -> tuple[fx.GraphModule, int]:
    """An eval-mode copy of `model` with every foldable norm merged into the conv/linear that feeds
    it (only where that layer's output goes nowhere else). Returns the folded model and how many
    were folded. The original model is not changed."""
    model = copy.deepcopy(model).eval()
    graph = _ChildlessLeafTracer().trace(model)
    folded_model = fx.GraphModule(model, graph)
    modules = dict(folded_model.named_modules())
    folded = 0
    for node in list(folded_model.graph.nodes):
        if node.op != "call_module":
            continue
        affine = eval_affine(modules[node.target])
        source = node.args[0] if node.args else None
        if (
            affine is None
            or not isinstance(source, fx.Node)
            or source.op != "call_module"
            or len(source.users) != 1
        ):
            continue
        layer = modules[source.target]
        if not _foldable(layer):
            continue
        _replace_submodule(folded_model, source.target, fold_layer(layer, *affine))
        node.replace_all_uses_with(source)
        folded_model.graph.erase_node(node)
        folded += 1
    folded_model.graph.lint()
    folded_model.delete_all_unused_submodules()
    folded_model.recompile()
    return folded_model.eval(), folded


def _replace_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, name, module)
