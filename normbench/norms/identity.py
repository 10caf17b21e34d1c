"""No normalization (identity): the baseline the BN, GN and FRN papers compare against."""

from __future__ import annotations

import torch.nn as nn

from ._common import check_layer


def identity(num_channels: int, dim: int = 2) -> nn.Module:
    """nn.Identity; takes no options (num_channels and dim are only validated)."""
    check_layer("none", num_channels, dim)
    return nn.Identity()
