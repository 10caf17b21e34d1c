"""Elementwise building blocks for the hand-written norms, chosen for speed in eager mode (plumbing;
no paper).

Measured on the project's CPU (torch 2.14, one thread, a 16x64x32x32 float32 tensor): torch.var /
var_mean (Welford) take ~20-30 ms where a mean and a mean of centred squares take ~1 ms;
masked_fill, torch.where and products with bool masks ~15 ms where a float-mask product takes ~1 ms;
torch.maximum's backward uses both (~30 ms a call). These helpers give the same values and gradients
with the fast kernels.
"""

from __future__ import annotations

import torch


def biased_var_mean(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(biased variance, mean) over `dims`, keepdim: two passes (mean, then mean of centred
    squares)."""
    mean = x.mean(dim=dims, keepdim=True)
    return (x - mean).square().mean(dim=dims, keepdim=True), mean


class _ChannelMaximum(torch.autograd.Function):
    """torch.maximum(y, t) with t broadcast over some dims of y (e.g. a per-channel threshold (1, C,
    1, 1)), with exactly torch.maximum's gradients -- the larger input gets the gradient, a tie
    sends half to each -- computed with float masks (torch's formula uses where and masked_fill)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(y, t)
        return torch.maximum(y, t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if torch.is_grad_enabled():
            raise RuntimeError("channel_maximum has no double backward (create_graph=True)")
        y, t = ctx.saved_tensors
        # share of the gradient going to y: 1 where y > t, 1/2 at a tie, 0 below; comparisons
        # written straight into float tensors (a bool result converted afterwards costs several
        # times more)
        share, tie = torch.empty_like(grad), torch.empty_like(grad)
        torch.gt(y, t, out=share)
        torch.eq(y, t, out=tie)
        grad_y = share.add_(tie, alpha=0.5).mul_(grad)
        del tie
        grad_t = None
        if ctx.needs_input_grad[1]:
            lead = grad.dim() - t.dim()  # broadcasting may also prepend dims to t
            dims = tuple(range(lead)) + tuple(
                lead + d for d in range(t.dim()) if t.shape[d] == 1 and grad.shape[lead + d] != 1
            )
            grad_t = (grad.sum(dims) - grad_y.sum(dims)).reshape(t.shape) if dims else grad - grad_y
        return grad_y, grad_t


def channel_maximum(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """torch.maximum(y, t) for a `t` that broadcasts to `y`'s shape, with a faster backward."""
    if not (y.requires_grad or t.requires_grad) or not torch.is_grad_enabled():
        return torch.maximum(y, t)
    return _ChannelMaximum.apply(y, t)
