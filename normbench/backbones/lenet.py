"""LeNet-5 as in d2l ("Dive into Deep Learning", LeCun et al. 1998), with a norm after every conv
and (unless fc_norm=False) every hidden fc."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .norm_choice import ACTIVATIONS, NormChoice

POOLS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}
# backbone.<key> -> its allowed values, checked by validate.py before anything is built
CHOICES = {"activation": tuple(ACTIVATIONS), "pool": tuple(POOLS)}


class LeNet(nn.Sequential):
    """conv1 6@5x5 (pad 2) -> pool1 -> conv2 16@5x5 -> pool2 -> fc1 120 -> fc2 84 -> fc3
    `num_classes`.

    Each hidden layer i is followed by `norm{i}` and then `act{i}` (or by the norm alone when it
    carries its own activation, e.g. FRN+TLU), so records name layers like "norm1". With
    `fc_norm=False` the hidden fc layers have a bias and the activation alone, so norms follow the
    convolutions only, as in the GN paper's ResNets (a 2-image BN over an fc feature maps it to ±1).
    Works for any square input of at least 12 px.
    """

    def __init__(
        self,
        norm_layer: NormChoice,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        activation: str = "sigmoid",
        pool: str = "avg",
        fc_norm: bool = True,
    ) -> None:
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose one of {sorted(POOLS)}")
        if image_size < 12:
            raise ValueError(f"LeNet needs images of at least 12 px, got {image_size}")
        pooled = ((image_size // 2) - 4) // 2  # spatial size after conv1(pad 2), pool, conv2, pool
        bias = norm_layer.conv_bias
        layers: OrderedDict[str, nn.Module] = OrderedDict()

        def hidden(index: int, name: str, layer: nn.Module, channels: int, dim: int) -> None:
            layers[name] = layer
            if dim == 1 and not fc_norm:
                layers[f"act{index}"] = ACTIVATIONS[activation]()
                return
            for kind, module in zip(
                ("norm", "act"), norm_layer.norm_act(channels, activation, dim)
            ):
                layers[f"{kind}{index}"] = module

        hidden(1, "conv1", nn.Conv2d(in_channels, 6, kernel_size=5, padding=2, bias=bias), 6, 2)
        layers["pool1"] = POOLS[pool](kernel_size=2, stride=2)
        hidden(2, "conv2", nn.Conv2d(6, 16, kernel_size=5, bias=bias), 16, 2)
        layers["pool2"] = POOLS[pool](kernel_size=2, stride=2)
        layers["flatten"] = nn.Flatten()
        fc_bias = bias or not fc_norm  # no norm after it: the fc keeps its bias
        hidden(3, "fc1", nn.Linear(16 * pooled * pooled, 120, bias=fc_bias), 120, 1)
        hidden(4, "fc2", nn.Linear(120, 84, bias=fc_bias), 84, 1)
        layers["fc3"] = nn.Linear(84, num_classes)
        super().__init__(layers)
