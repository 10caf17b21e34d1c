"""Ghost Batch Normalization (Hoffer, Hubara & Soudry, "Train longer, generalize better", NeurIPS
2017)."""

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
)
from ._fused import biased_var_mean


def ghost_sizes(batch: int, ghost_batch: int) -> list[int]:
    """Sizes of the virtual batches a batch of `batch` images is cut into, in order.

    k = max(1, batch // ghost_batch) virtual batches of near-equal size (the first batch % k get one
    image more): exactly `ghost_batch` each when it divides the batch, never one smaller than
    `ghost_batch` unless the whole batch is (then it is one virtual batch), e.g. ghost_batch=16:
    64 -> 4 x 16, 40 -> 20 + 20, 17 -> 17, 8 -> 8.
    """
    k = max(1, batch // ghost_batch)
    base, extra = divmod(batch, k)
    return [base + 1] * extra + [base] * (k - extra)


class GhostBatchNorm(RunningStatsNorm):
    """BN whose training statistics come from virtual ("ghost") batches of about `ghost_batch`
    images.

    Training: each virtual batch of `ghost_sizes` (consecutive images) is normalized with its own
    statistics, and the running statistics move once per virtual batch, in order, as if BN ran on
    each in turn (`num_batches_tracked` counts virtual batches). Eval: BN with the running stats.
    See docs/norms.md#ghost-batch-normalization.
    """

    def __init__(
        self,
        num_channels: int,
        ghost_batch: int = 16,
        eps: float = 1e-5,
        momentum: float = 0.1,
        dim: int = 2,
    ) -> None:
        super().__init__(num_channels, dim, eps, momentum)
        self.ghost_batch = ghost_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.dim, self.num_channels)
        if not self.training:
            return self.eval_forward(x)

        sizes = ghost_sizes(x.shape[0], self.ghost_batch)
        per_image = x[0].numel() // self.num_channels  # H * W (1 on features)
        if min(sizes) * per_image < 2:
            raise ValueError(
                "GhostBatchNorm needs more than 1 value per channel in every virtual batch, got "
                f"input {tuple(x.shape)} cut into {sizes}"
            )
        # e.g. bf16 under autocast: statistics in the parameters' dtype
        if x.dtype != self.weight.dtype:
            x = x.to(self.weight.dtype)
        parts, means, variances = [], [], []
        start = 0
        # (virtual batches, images, C, H, W)
        affine = (1, 1, self.num_channels) + (1,) * (x.dim() - 2)
        # one vectorized block per distinct size (at most 2)
        for size in sorted(set(sizes), reverse=True):
            count = sizes.count(size)
            block = x[start : start + size * count].reshape(count, size, *x.shape[1:])
            axes = (1,) + tuple(range(3, block.dim()))  # images of a virtual batch, and H, W
            var, mean = biased_var_mean(block, axes)  # fast two-pass form (see _fused)
            # (block - mean) / sqrt(var + eps) * weight + bias as one scale and shift per (virtual
            # batch, channel)
            scale = torch.rsqrt(var + self.eps) * self.weight.view(affine)
            parts.append(
                (block * scale + (self.bias.view(affine) - mean * scale)).reshape(
                    size * count, *x.shape[1:]
                )
            )
            n = size * per_image
            means.append(mean.reshape(count, self.num_channels))
            variances.append(var.reshape(count, self.num_channels) * (n / (n - 1)))
            start += size * count
        self._update_running(torch.cat(means), torch.cat(variances))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @torch.no_grad()
    def _update_running(self, means: torch.Tensor, variances: torch.Tensor) -> None:
        """k sequential EMA updates in closed form: new = (1-m)^k old + sum_i m (1-m)^(k-1-i)
        stat_i."""
        k, m = means.shape[0], self.momentum
        powers = torch.arange(k - 1, -1, -1, device=means.device, dtype=means.dtype)
        weights = (m * (1.0 - m) ** powers).unsqueeze(1)  # (k, 1); no host-to-device copy
        keep = (1.0 - m) ** k
        self.running_mean.mul_(keep).add_((weights * means).sum(0))
        self.running_var.mul_(keep).add_((weights * variances).sum(0))
        self.num_batches_tracked.add_(k)

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, ghost_batch={self.ghost_batch}, eps={self.eps}, "
            f"momentum={self.momentum}, dim={self.dim}"
        )


def ghost_batch_norm(
    num_channels: int,
    dim: int = 2,
    *,
    ghost_batch: int = 16,
    eps: float = 1e-5,
    momentum: float = 0.1,
) -> nn.Module:
    """Ghost BN with virtual batches of `ghost_batch` images (the paper's |B_S|, 128 there for
    batches of 4096; 16 here, for the batch sizes normbench compares). A batch of fewer than 2 *
    ghost_batch images is one virtual batch, i.e. plain BN; see `ghost_sizes`. ghost_batch >= 2, so
    that a virtual batch of fully connected features never has a single value per channel."""
    check_layer("gbn", num_channels, dim)
    ghost_batch = check_int("gbn", "ghost_batch", ghost_batch, minimum=2)
    eps = check_eps("gbn", eps)
    momentum = check_momentum("gbn", momentum)
    return GhostBatchNorm(
        num_channels, ghost_batch=ghost_batch, eps=eps, momentum=momentum, dim=dim
    )
