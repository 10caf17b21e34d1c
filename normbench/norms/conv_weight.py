"""Conv weight reparametrizations that some norms come with: weight centralization (MABN, Yan et
al., ICLR 2020) and Weight Standardization (Qiao et al., 2019), applied to every conv of any
backbone."""

from __future__ import annotations

import torch
from torch import nn


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


CONV_WEIGHTS: dict[str, type[nn.Conv2d]] = {
    "center": CenteredConv2d,
    "standardize": StandardizedConv2d,
}


def convert_convs(model: nn.Module, mode: str) -> int:
    """Turn every plain nn.Conv2d of `model` into the conv class of `mode`, in place (same
    parameters, same state_dict keys); works on any backbone, torchvision's included. Returns how
    many were converted."""
    if mode not in CONV_WEIGHTS:
        raise ValueError(f"unknown conv weight mode {mode!r}; choose one of {sorted(CONV_WEIGHTS)}")
    converted = 0
    for module in model.modules():
        if type(module) is nn.Conv2d:
            # the subclasses add no state: a class swap is enough
            module.__class__ = CONV_WEIGHTS[mode]
            converted += 1
    return converted
