"""Batch Renormalization (Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence",
NeurIPS 2017)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ._common import (
    RunningStatsNorm,
    check_eps,
    check_input,
    check_int,
    check_layer,
    check_momentum,
    check_number,
)
from ._fused import biased_var_mean


class BatchRenorm(RunningStatsNorm):
    """Batch Renormalization (the paper's Algorithm 1), with the paper's warm-up of the clip bounds.

    Training: BN with the batch statistics corrected by r and d (clipped, no gradient) towards the
    running statistics, which move as torch's BN's do; eval is exactly BN's eval. The bounds grow
    from a BN start with training forwards counted in `num_batches_tracked`, by tensor ops (no
    host-device synchronisation). See docs/norms.md#batch-renormalization.

    Args:
        momentum: torch's BN convention, new = (1 - momentum) * old + momentum * batch.
        r_max, d_max: the final clip bounds of r and d.
        warmup_start: up to this many iterations r_max(t) = 1 and d_max(t) = 0 (the layer is BN).
        rmax_iters, dmax_iters: r_max(t) and d_max(t) reach r_max and d_max linearly at these
            iterations (an end equal to the start is a step).
    """

    def __init__(
        self,
        num_channels: int,
        dim: int = 2,
        eps: float = 1e-5,
        momentum: float = 0.1,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_start: int = 500,
        rmax_iters: int = 4000,
        dmax_iters: int = 2500,
    ) -> None:
        super().__init__(num_channels, dim, eps, momentum)
        self.r_max, self.d_max = r_max, d_max
        self.warmup_start, self.rmax_iters, self.dmax_iters = warmup_start, rmax_iters, dmax_iters

    def _ramp(self, t: torch.Tensor, end: int) -> torch.Tensor:
        """0 until warmup_start, then linear, 1 from `end` on."""
        if end == self.warmup_start:
            return (t >= end).to(t.dtype)
        return ((t - self.warmup_start) / (end - self.warmup_start)).clamp(0.0, 1.0)

    def limits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_max(t), d_max(t)) for the next training step, as 0-d tensors on the buffers'
        device."""
        t = self.num_batches_tracked.to(self.running_var.dtype)
        rmax = 1.0 + (self.r_max - 1.0) * self._ramp(t, self.rmax_iters)
        dmax = self.d_max * self._ramp(t, self.dmax_iters)
        return rmax, dmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.dim, self.num_channels)
        shape = (1, self.num_channels) + (1,) * (x.dim() - 2)
        if not self.training:
            return self.eval_forward(x)

        axes = (0,) + tuple(range(2, x.dim()))
        n = x.numel() // self.num_channels
        if n < 2:
            raise ValueError(
                f"BatchRenorm needs more than 1 value per channel when training, "
                f"got input {tuple(x.shape)}"
            )
        # e.g. bf16 under autocast: statistics in the parameters' dtype
        if x.dtype != self.weight.dtype:
            x = x.to(self.weight.dtype)
        # fast two-pass form (see _fused)
        var_b, mean_b = (t.view(-1) for t in biased_var_mean(x, axes))
        std_b = torch.sqrt(var_b + self.eps)
        with torch.no_grad():
            std = torch.sqrt(self.running_var + self.eps)
            rmax, dmax = self.limits()
            r = torch.clamp(std_b / std, min=1.0 / rmax, max=rmax)
            d = torch.clamp((mean_b - self.running_mean) / std, min=-dmax, max=dmax)
            self.running_mean.lerp_(mean_b, self.momentum)
            self.running_var.lerp_(var_b * (n / (n - 1)), self.momentum)
            self.num_batches_tracked.add_(1)
        # weight * ((x - mu_B) / sigma_B * r + d) + bias as one per-channel scale and shift
        scale = self.weight * r / std_b
        shift = self.bias + self.weight * d - mean_b * scale
        return x * scale.view(shape) + shift.view(shape)

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, eps={self.eps}, momentum={self.momentum}, r_max={self.r_max} "
            f"(from 1 at step {self.warmup_start} to step {self.rmax_iters}), d_max={self.d_max} "
            f"(from 0 at step {self.warmup_start} to step {self.dmax_iters}), dim={self.dim}"
        )


def batch_renorm(
    num_channels: int,
    dim: int = 2,
    *,
    eps: float = 1e-5,
    momentum: float = 0.1,
    r_max: float = 3.0,
    d_max: float = 5.0,
    warmup_start: int = 500,
    rmax_iters: int = 4000,
    dmax_iters: int = 2500,
) -> nn.Module:
    """Batch Renorm. Bounds r_max=3, d_max=5 as in the paper; the paper keeps BN (r_max=1, d_max=0)
    for 5k steps and relaxes to d_max at 25k and r_max at 40k steps; the defaults here are those
    step counts divided by 10 (500, 2500, 4000), so short runs get past the warm-up (a 10-epoch
    FashionMNIST run has 2,350 steps at batch 256, 18,750 at batch 32). Steps are training forward
    passes of the layer: with accum > 1, micro-batches. r_max=1, d_max=0 gives BN exactly."""
    check_layer("brn", num_channels, dim)
    eps = check_eps("brn", eps)
    momentum = check_momentum("brn", momentum)
    r_max = check_number("brn", "r_max", r_max, 1)
    d_max = check_number("brn", "d_max", d_max, 0)
    warmup_start = check_int("brn", "warmup_start", warmup_start, minimum=0)
    rmax_iters = check_int("brn", "rmax_iters", rmax_iters, minimum=warmup_start)
    dmax_iters = check_int("brn", "dmax_iters", dmax_iters, minimum=warmup_start)
    return BatchRenorm(
        num_channels,
        dim,
        eps=eps,
        momentum=momentum,
        r_max=r_max,
        d_max=d_max,
        warmup_start=warmup_start,
        rmax_iters=rmax_iters,
        dmax_iters=dmax_iters,
    )
