"""Synchronized (cross-GPU) Batch Normalization (Peng et al., "MegDet", CVPR 2018), via torch's nn.SyncBatchNorm."""

from __future__ import annotations


import torch
import torch.distributed as dist
import torch.nn as nn

from ._common import check_eps, check_input, check_layer, check_momentum


def _layer_world_size(layer: nn.SyncBatchNorm) -> int:
    """How many processes `layer` averages its training statistics over: 1 outside a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(layer.process_group or dist.group.WORLD)


def sync_world_size(module: nn.Module) -> int:
    """The number of processes whose batches the SyncBN layers in `module` share statistics over.

    1 means nothing is synchronised (no process group, or a group of one): the layers are then exactly
    BN over this process's batch. If layers disagree (different process groups) the smallest is
    returned, i.e. the weakest synchronisation in the model. Raises ValueError when `module` contains
    no nn.SyncBatchNorm. Statistics are only ever synchronised in training mode (eval uses the
    running statistics), and torch synchronises only CUDA/XPU/HPU/PrivateUse1 tensors.
    """
    layers = [m for m in module.modules() if isinstance(m, nn.SyncBatchNorm)]
    if not layers:
        raise ValueError(f"{type(module).__name__} contains no SyncBatchNorm layer")
    return min(_layer_world_size(layer) for layer in layers)


class SyncBatchNorm(nn.SyncBatchNorm):
    """nn.SyncBatchNorm that checks its input layout, works in a single process, and says whether it syncs.

    With more than one process in its group it is torch's SyncBatchNorm: the training statistics are
    the mean and biased variance over the batches of all processes. With one process (no process group,
    or a group of one) it is exactly nn.BatchNorm1d/2d, including on the CPU, where torch's own
    SyncBatchNorm raises inside a process group even of size one. `world_size` (and
    `sync_world_size(model)`) tell which case a layer is in; the repr shows it, so run records do.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, momentum: float | None = 0.1, dim: int = 2) -> None:
        super().__init__(num_channels, eps=eps, momentum=momentum)
        self.dim = dim

    @property
    def world_size(self) -> int:
        return _layer_world_size(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.dim, self.num_features)
        if self.training and self.world_size > 1:
            return super().forward(x)
        # one process: plain BN (torch's SyncBatchNorm would take this path too, except that it first
        # rejects CPU tensors whenever a process group exists)
        return nn.modules.batchnorm._BatchNorm.forward(self, x)

    def extra_repr(self) -> str:
        size = self.world_size
        sync = f"synchronised over {size} processes" if size > 1 else "world_size=1: not synchronised, same as BN"
        return f"{super().extra_repr()}, dim={self.dim}, {sync}"


def sync_batch_norm(num_channels: int, dim: int = 2, *, eps: float = 1e-5, momentum: float | None = 0.1) -> nn.Module:
    """SyncBN over (N, H, W) per channel (dim=2) or over N per feature (dim=1), N = all processes' images.

    Options as `bn`: biased batch variance for normalizing, running_var updated with the unbiased
    one, ``momentum=None`` for torch's cumulative average. The process group is the default (WORLD);
    check `sync_world_size(model)` to know whether statistics really are synchronised.
    """
    check_layer("syncbn", num_channels, dim)
    eps = check_eps("syncbn", eps)
    momentum = check_momentum("syncbn", momentum, allow_none=True)
    return SyncBatchNorm(num_channels, eps=eps, momentum=momentum, dim=dim)
