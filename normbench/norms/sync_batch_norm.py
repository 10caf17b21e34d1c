"""Synchronized (cross-GPU) Batch Normalization (Peng et al., "MegDet", CVPR 2018), via torch's
nn.SyncBatchNorm."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from ._common import check_eps, check_input, check_layer, check_momentum


def _layer_world_size(layer: nn.SyncBatchNorm) -> int:
    """How many processes `layer` averages its training statistics over: 1 outside a process
    group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(layer.process_group or dist.group.WORLD)


def sync_world_size(module: nn.Module) -> int:
    """The number of processes whose batches the SyncBN layers in `module` share statistics over.

    1 means nothing is synchronised (no process group, or a group of one): the layers are then
    exactly BN over this process's batch. If layers disagree (different process groups) the smallest
    is returned, i.e. the weakest synchronisation in the model. Raises ValueError when `module`
    contains no nn.SyncBatchNorm. Statistics are only ever synchronised in training mode (eval uses
    the running statistics). torch's kernel synchronises CUDA/XPU/HPU/PrivateUse1 tensors; CPU
    tensors (gloo) are synchronised by `_cpu_sync_forward` below.
    """
    layers = [m for m in module.modules() if isinstance(m, nn.SyncBatchNorm)]
    if not layers:
        raise ValueError(f"{type(module).__name__} contains no SyncBatchNorm layer")
    return min(_layer_world_size(layer) for layer in layers)


class SyncBatchNorm(nn.SyncBatchNorm):
    """nn.SyncBatchNorm that checks its input layout, works in a single process, and says whether it
    syncs.

    With more than one process in its group it is torch's SyncBatchNorm: the training statistics are
    the mean and biased variance over the batches of all processes. With one process (no process
    group, or a group of one) it is exactly nn.BatchNorm1d/2d, including on the CPU, where torch's
    own SyncBatchNorm raises inside a process group even of size one. `world_size` (and
    `sync_world_size(model)`) tell which case a layer is in; the repr shows it, so run records do.
    """

    def __init__(
        self, num_channels: int, eps: float = 1e-5, momentum: float | None = 0.1, dim: int = 2
    ) -> None:
        super().__init__(num_channels, eps=eps, momentum=momentum)
        self.dim = dim

    @property
    def world_size(self) -> int:
        return _layer_world_size(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, self.dim, self.num_features)
        if self.training and self.world_size > 1:
            # torch's SyncBatchNorm kernel is GPU-only; gloo groups sync CPU tensors
            if x.device.type == "cpu":
                return _cpu_sync_forward(self, x)
            return super().forward(x)
        # one process: plain BN (torch's SyncBatchNorm would take this path too, except that it
        # first rejects CPU tensors whenever a process group exists)
        return nn.modules.batchnorm._BatchNorm.forward(self, x)

    def extra_repr(self) -> str:
        size = self.world_size
        sync = (
            f"synchronised over {size} processes"
            if size > 1
            else ("world_size=1: not synchronised, same as BN")
        )
        return f"{super().extra_repr()}, dim={self.dim}, {sync}"


class _AllReduceSum(torch.autograd.Function):
    """The sum of a tensor over the processes of a group, differentiable: the gradient of a sum over
    processes (its adjoint) is the sum of every process's incoming gradient.

    Plain `dist.all_reduce` inside an autograd Function, as torch.distributed.nn.functional's
    all_reduce (deprecated in torch 2.14) did: the same clone and collective, so the same numbers.
    That one made two-process gloo runs abort (SIGABRT) after destroy_process_group (issue 17).
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        summed = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=group)
        return summed

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        # through apply, not a bare collective: the backward stays differentiable itself
        return _AllReduceSum.apply(grad, ctx.group), None


def all_reduce_sum(tensor: torch.Tensor, group: Any) -> torch.Tensor:
    """`tensor` summed over the processes of `group`, with the gradient of that sum."""
    return _AllReduceSum.apply(tensor, group)


def _cpu_sync_forward(layer: SyncBatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Training-mode SyncBN on CPU tensors: per-channel sums over every process's batch via a
    differentiable all-reduce (`all_reduce_sum`), whose backward sums the statistics' gradients
    over processes as torch's GPU kernel does. Two passes (mean, then centred squares) rather than
    E[x^2] - E[x]^2, which cancels badly; running statistics are updated as BN does (unbiased
    variance over all images)."""
    group = layer.process_group or dist.group.WORLD
    reduce_dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    count = x.new_tensor([x.numel() / x.shape[1]])
    # count rides along: one collective
    sums = all_reduce_sum(torch.cat([x.sum(reduce_dims), count]), group)
    n = sums[-1].detach()
    mean = sums[:-1] / n
    centred = x - mean.view(shape)
    var = all_reduce_sum((centred * centred).sum(reduce_dims), group) / n
    if layer.track_running_stats:
        with torch.no_grad():
            layer.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(layer.num_batches_tracked) if layer.momentum is None else layer.momentum
            )
            layer.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
            layer.running_var.mul_(1 - factor).add_(var.detach() * (n / (n - 1)), alpha=factor)
    out = centred * torch.rsqrt(var + layer.eps).view(shape)
    if layer.affine:
        out = out * layer.weight.view(shape) + layer.bias.view(shape)
    return out


def convert_sync_bn(model: nn.Module, built: list[nn.Module]) -> list[nn.Module]:
    """Replace in `model` every BatchNorm1d/2d layer listed in `built` by a SyncBatchNorm with the
    same options and state (before the model is wrapped for data parallelism, sync_bn=true); returns
    `built` with the new layers in place of the replaced ones (`built` itself is left as it is).

    In one process the converted layers compute exactly BN (their repr in the record says "not
    synchronised"); with W processes they normalise over all W per-device batches."""
    listed = {id(module) for module in built}
    replaced: dict[int, nn.Module] = {}
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            # exactly BN (a subclass may compute something else), and built by the norm
            if type(child) not in (nn.BatchNorm1d, nn.BatchNorm2d) or id(child) not in listed:
                continue
            assert isinstance(child, nn.modules.batchnorm._BatchNorm)  # narrows for mypy
            synced = SyncBatchNorm(
                child.num_features,
                eps=child.eps,
                momentum=child.momentum,
                dim=1 if type(child) is nn.BatchNorm1d else 2,
            )
            synced.load_state_dict(child.state_dict())
            synced.train(child.training)
            setattr(parent, child_name, synced)
            replaced[id(child)] = synced
    return [replaced.get(id(module), module) for module in built]


def sync_batch_norm(
    num_channels: int, dim: int = 2, *, eps: float = 1e-5, momentum: float | None = 0.1
) -> nn.Module:
    """SyncBN over (N, H, W) per channel (dim=2) or over N per feature (dim=1), N = all processes'
    images.

    Options as `bn`: biased batch variance for normalizing, running_var updated with the unbiased
    one, ``momentum=None`` for torch's cumulative average. The process group is the default (WORLD);
    check `sync_world_size(model)` to know whether statistics really are synchronised.
    """
    check_layer("syncbn", num_channels, dim)
    eps = check_eps("syncbn", eps)
    momentum = check_momentum("syncbn", momentum, allow_none=True)
    return SyncBatchNorm(num_channels, eps=eps, momentum=momentum, dim=dim)
