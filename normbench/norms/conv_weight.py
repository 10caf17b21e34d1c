"""Weight reparametrizations that some norms come with: weight centralization (MABN, Yan et al.,
ICLR 2020) and Weight Standardization (Qiao et al., 2019) of every conv, and Weight Normalization
(Salimans & Kingma, 2016) of every conv and linear layer, applied to any backbone."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize


class CenteredConv2d(nn.Conv2d):
    """Conv whose filters are re-centred on every forward: w - mean over (in, kh, kw) (MABN's
    CenConv2d)."""

    def effective_weight(self) -> torch.Tensor:
        return self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class StandardizedConv2d(nn.Conv2d):
    """Weight Standardization: (w - mean) / (std + 1e-5) per filter over (in, kh, kw), std unbiased
    as in the authors' code."""

    std_eps = 1e-5

    def effective_weight(self) -> torch.Tensor:
        centred = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        # unbiased std of the centred filter as sum of squares / (n - 1): torch.std's Welford pass
        # is several times slower on CPU (see _fused)
        n = centred[0].numel()
        std = centred.square().sum(dim=(1, 2, 3), keepdim=True).div_(n - 1).sqrt_()
        return centred * (1.0 / (std + self.std_eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


# modes that swap the class of every conv (same parameters, same state_dict keys)
CONV_WEIGHTS: dict[str, type[nn.Conv2d]] = {
    "center": CenteredConv2d,
    "standardize": StandardizedConv2d,
}
# Weight Normalization through torch's parametrization: every conv AND linear layer, new parameters
WEIGHT_NORM = "weight_norm"
# every value NormSpec.conv_weight may take
WEIGHT_MODES = (*CONV_WEIGHTS, WEIGHT_NORM)


def weight_normalize(model: nn.Module) -> int:
    """Reparametrize every plain nn.Conv2d and nn.Linear of `model` as w = g * v / ||v|| per output
    channel, in place, with torch.nn.utils.parametrizations.weight_norm (dim=0). At first w equals
    the layer's weight (g = ||v||, v = w); the state_dict holds `parametrizations.weight.original0`
    (g, shape (out, 1, ...)) and `...original1` (v) instead of `weight`. Returns how many layers."""
    layers = [m for m in model.modules() if type(m) in (nn.Conv2d, nn.Linear)]  # before it changes
    for layer in layers:
        parametrizations.weight_norm(layer, "weight", dim=0)
    return len(layers)


def is_weight_normalized(layer: nn.Module) -> bool:
    """The layer's weight is w = g * v / ||v|| (weight_normalize): its g is
    `layer.parametrizations.weight.original0`."""
    if not parametrize.is_parametrized(layer, "weight"):
        return False
    chain = layer.get_submodule("parametrizations.weight").children()
    return any(isinstance(p, parametrizations._WeightNorm) for p in chain)


def convert_convs(model: nn.Module, mode: str) -> int:
    """Give every plain conv of `model` the weight of `mode`, in place; works on any backbone,
    torchvision's included. The CONV_WEIGHTS modes swap the conv class (same parameters, same
    state_dict keys); WEIGHT_NORM reparametrizes every conv and linear (see weight_normalize).
    Returns how many layers were converted."""
    if mode == WEIGHT_NORM:
        return weight_normalize(model)
    if mode not in CONV_WEIGHTS:
        raise ValueError(f"unknown conv weight mode {mode!r}; choose one of {list(WEIGHT_MODES)}")
    converted = 0
    for module in model.modules():
        if type(module) is nn.Conv2d:
            # the subclasses add no state: a class swap is enough
            module.__class__ = CONV_WEIGHTS[mode]
            converted += 1
    return converted
