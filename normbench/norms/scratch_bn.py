"""Batch Normalization written from scratch as in d2l's "Batch Normalization" chapter (Ioffe &
Szegedy 2015), for `normbench check` to hold torch's nn.BatchNorm2d against."""

from __future__ import annotations

import torch


def scratch_batch_norm(
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    moving_mean: torch.Tensor,
    moving_var: torch.Tensor,
    eps: float,
    momentum: float,
    training: bool,
    unbiased_moving_var: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (y, new moving_mean, new moving_var); x is (N, C) or (N, C, H, W), statistics shaped
    to broadcast.

    Training normalizes with the batch mean and the biased batch variance. The moving averages
    follow torch's convention new = (1 - momentum) * old + momentum * batch. d2l's printed code
    feeds the *biased* variance into moving_var; torch feeds the unbiased one (m / (m - 1) times
    larger, m = N*H*W), which is what `unbiased_moving_var=True` does. Eval normalizes with the
    moving statistics.
    """
    if not training:
        x_hat = (x - moving_mean) / torch.sqrt(moving_var + eps)
        return gamma * x_hat + beta, moving_mean, moving_var
    axes = (0,) if x.dim() == 2 else (0, 2, 3)
    mean = x.mean(dim=axes, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)
    x_hat = (x - mean) / torch.sqrt(var + eps)
    count = x.numel() // x.shape[1]
    batch_var = var * count / (count - 1) if unbiased_moving_var else var
    moving_mean = (1.0 - momentum) * moving_mean + momentum * mean.detach()
    moving_var = (1.0 - momentum) * moving_var + momentum * batch_var.detach()
    return gamma * x_hat + beta, moving_mean, moving_var
