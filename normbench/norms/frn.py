"""Filter Response Normalization with a Thresholded Linear Unit (Singh & Krishnan, CVPR 2020)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ._common import add_affine, check_eps, check_input, check_layer, parse_flag
from ._fused import channel_maximum

EPS_L_INIT = 1e-4  # initial value of the learned part of eps (paper, section 3.1)


class FilterResponseNorm(nn.Module):
    """FRN + TLU: z = max(weight * x / sqrt(nu2 + eps) + bias, tau), nu2 = mean of x^2 over (H, W).

    Plain tensor ops (autograd gives the backward pass); `weight`, `bias`, `tau` have shape (C,).
    The TLU is the layer's activation: the backbone adds none after it. See docs/norms.md#frn.

    Args:
        learned_eps: eps + |eps_l| with a learnable per-channel `eps_l` (init EPS_L_INIT).
        dim: 2 for NCHW feature maps, 1 for (N, C) features (nu2 = x^2).
        act: False for FRN without the TLU (no `tau`), where the original network has a norm
            with no activation after it.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-6,
        learned_eps: bool = False,
        dim: int = 2,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.dim = dim
        self.act = act
        add_affine(self, num_channels, "tau", 0.0, act)
        if learned_eps:
            self.eps_l = nn.Parameter(torch.full((num_channels,), EPS_L_INIT))
        else:
            self.register_parameter("eps_l", None)

    @property
    def learned_eps(self) -> bool:
        return self.eps_l is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.dim, self.num_channels)
        # e.g. bf16 under autocast: statistics in the parameters' dtype
        if x.dtype != self.weight.dtype:
            x = x.to(self.weight.dtype)
        shape = (1, self.num_channels) + (1,) * (x.dim() - 2)  # broadcast (C,) over N (and H, W)
        nu2 = (x * x).mean(dim=(2, 3), keepdim=True) if self.dim == 2 else x * x
        eps = self.eps if self.eps_l is None else self.eps + self.eps_l.abs().view(shape)
        # weight * x / sqrt(nu2 + eps) + bias with the per-(sample, channel) factor formed first:
        # two passes over the activations instead of four (speed: see _fused)
        y = x * (torch.rsqrt(nu2 + eps) * self.weight.view(shape)) + self.bias.view(shape)
        return y if self.tau is None else channel_maximum(y, self.tau.view(shape))

    def extra_repr(self) -> str:
        learned = (
            "learned_eps=True (eps + |eps_l|, eps_l per channel)"
            if self.learned_eps
            else "learned_eps=False"
        )
        act = "" if self.act else ", act=False (no TLU)"
        return f"{self.num_channels}, eps={self.eps}, {learned}, dim={self.dim}{act}"


def filter_response_norm(
    num_channels: int,
    dim: int = 2,
    act: bool = True,
    *,
    eps: float = 1e-6,
    learned_eps: bool | str = "auto",
) -> nn.Module:
    """FRN + TLU (act=False: FRN alone, no TLU; see FilterResponseNorm). learned_eps: True, False,
    or "auto" = learned on dim=1 (fully connected) only.

    On fully connected layers nu2 = x^2, so with a fixed tiny eps x_hat is about sign(x); the
    paper learns eps there. Strings "true"/"false"/"auto" (any case) are accepted for configs.
    `act` is a layer argument set by the backbone (build_norm's act), not a config option.
    """
    check_layer("frn", num_channels, dim)
    eps = check_eps("frn", eps)
    flag = parse_flag("frn", "learned_eps", learned_eps, extra=("auto",))
    learned = (dim == 1) if flag == "auto" else flag
    return FilterResponseNorm(num_channels, eps=eps, learned_eps=learned, dim=dim, act=act)
