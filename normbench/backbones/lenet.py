"""LeNet-5 as in d2l ("Dive into Deep Learning", LeCun et al. 1998), with a norm after every conv and hidden fc."""

from __future__ import annotations

from torch import nn

from .norm_choice import NormChoice

POOLS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


class LeNet(nn.Sequential):
    """conv6@5x5 (pad 2) -> pool -> conv16@5x5 -> pool -> fc120 -> fc84 -> fc`num_classes`.

    Each hidden layer is followed by the norm and then the activation (or by the norm alone when it
    carries its own activation, e.g. FRN+TLU). Works for any square input of at least 12 px.
    """

    def __init__(
        self,
        norm_layer: NormChoice,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        activation: str = "sigmoid",
        pool: str = "avg",
    ) -> None:
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose one of {sorted(POOLS)}")
        if image_size < 12:
            raise ValueError(f"LeNet needs images of at least 12 px, got {image_size}")
        pooled = ((image_size // 2) - 4) // 2  # spatial size after conv1(pad 2), pool, conv2, pool
        bias = norm_layer.conv_bias
        pool_layer = POOLS[pool]
        super().__init__(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2, bias=bias),
            *norm_layer.norm_act(6, activation),
            pool_layer(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5, bias=bias),
            *norm_layer.norm_act(16, activation),
            pool_layer(kernel_size=2, stride=2),
            nn.Flatten(),
            nn.Linear(16 * pooled * pooled, 120, bias=bias),
            *norm_layer.norm_act(120, activation, dim=1),
            nn.Linear(120, 84, bias=bias),
            *norm_layer.norm_act(84, activation, dim=1),
            nn.Linear(84, num_classes),
        )
