"""Training-image augmentation on the device, vectorized over the batch: random crop with padding
and horizontal flip (the CIFAR recipe of He et al. 2016), with no per-sample Python.

The random parameters of a whole epoch are drawn at once from the run's CPU torch.Generator (the one
that also draws the shuffling permutation and that the runner checkpoints), so augmentation is the
same on any device, reproducible per seed and resumed exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from normbench.data.prep import cfg_bool, cfg_int
from normbench.errors import UserError


@dataclass(frozen=True)
class Augment:
    """Random crop of the image padded by `padding` pixels of `fill` (one value per channel), then a
    horizontal flip with probability 1/2 when `flip`."""

    padding: int
    flip: bool
    fill: tuple[float, ...]

    def describe(self) -> str:
        parts = [f"random crop (padding {self.padding})"] if self.padding else []
        parts += ["horizontal flip"] if self.flip else []
        return " + ".join(parts)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 3) int64 on the CPU: per image the crop's top row and left column in the padded image
        (0..2*padding) and 1 to flip."""
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator)
        flips = (
            torch.randint(0, 2, (n, 1), generator=generator)
            if self.flip
            else torch.zeros(n, 1, dtype=torch.int64)
        )
        return torch.cat([offsets, flips], dim=1)

    def fill_like(self, x: torch.Tensor) -> torch.Tensor:
        """The fill values as a (C,) tensor of x's dtype on x's device."""
        return torch.tensor(self.fill, dtype=x.dtype, device=x.device)

    def apply(
        self, x: torch.Tensor, params: torch.Tensor, fill: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, C, H, W) -> the crops of the padded images at params' offsets, flipped where params
        say. Pass `fill_like(x)` made once when calling this in a loop on a GPU."""
        return crop_flip(x, params, self.padding, self.fill_like(x) if fill is None else fill)


def crop_flip(
    x: torch.Tensor, params: torch.Tensor, padding: int, fill: torch.Tensor
) -> torch.Tensor:
    """Output pixel (i, j) of image b is padded[b, :, top_b + i, left_b + j'], j' = W-1-j if flipped
    else j: one gather over the flattened padded batch."""
    n, c, h, w = x.shape
    if padding:
        size = (n, c, h + 2 * padding, w + 2 * padding)
        padded = fill.view(1, c, 1, 1).expand(size).clone(memory_format=torch.contiguous_format)
        padded[:, :, padding : padding + h, padding : padding + w] = x
    else:
        padded = x
    top, left, flip = params[:, 0:1], params[:, 1:2], params[:, 2:3].bool()
    rows = top + torch.arange(h, device=x.device)  # (B, H)
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flip, w - 1 - cols, cols) + left  # (B, W)
    # (B, H, W) into the padded H'*W'
    index = rows.unsqueeze(2) * (w + 2 * padding) + cols.unsqueeze(1)
    return padded.flatten(2).gather(2, index.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)


def from_config(cfg: Any, fill: list[float], image_size: int) -> Augment | None:
    """The augmentation data.augment / data.crop_padding / data.flip ask for, or None (nothing to
    do)."""
    enabled = cfg_bool(cfg, "augment", False)
    padding = cfg_int(cfg, "crop_padding", 0, minimum=0)
    flip = cfg_bool(cfg, "flip", False)
    if padding >= image_size:
        raise UserError(
            f"data.crop_padding={padding} is not smaller than the {image_size}-px images: use "
            "e.g. data.crop_padding=4"
        )
    if not enabled or (padding == 0 and not flip):
        return None
    return Augment(padding, flip, tuple(float(v) for v in fill))
