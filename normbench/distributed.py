"""Data-parallel runs over the processes torchrun starts (`torchrun --nproc_per_node=N -m normbench
run ...`).

Each process is one device: `batch` stays the per-device batch (what a batch-dependent norm sees),
the model is wrapped in DistributedDataParallel (gradients averaged over processes), and the SGD
batch becomes batch * accum * world_size. Every process draws the same epoch permutation from the
seeded generator and takes its own shard of it (`normbench.data.Shard`), so W processes x batch B
train on exactly the images, and with exactly the per-device batch statistics, of one process with
accum = W (BN running statistics aside: each process keeps its own, and rank 0's are evaluated and
saved).

Only rank 0 writes run files (`normbench.runs` asks `is_main()`), prints progress and evaluates;
metrics that decide anything (the train loss behind the finite check, test results) are reduced or
broadcast so that every process takes the same branch and none waits forever in a collective.

Outside torchrun (no RANK/WORLD_SIZE/LOCAL_RANK in the environment) everything here is a no-op:
world_size() is 1, is_main() is True, the model is not wrapped.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .errors import UserError

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # what torchrun sets for each process it starts
SYNCABLE = ("bn", "syncbn")  # norms whose statistics SyncBN can synchronise (see check_sync_bn)


def launched() -> bool:
    """True in a process started by torchrun (or any launcher that sets RANK, WORLD_SIZE and
    LOCAL_RANK)."""
    return all(name in os.environ for name in LAUNCH_ENV)


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise UserError(
            f"environment variable {name}={os.environ[name]!r} is not an integer: "
            f"start normbench with torchrun, which sets it"
        ) from None


def world_size() -> int:
    """Processes training this run: from the process group, else from torchrun's environment, else
    1.

    Read from the environment before the group exists, so a run key computed early (e.g. by a
    sweep's validation) is the one the run uses."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE") if launched() else 1


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK") if launched() else 0


def is_main() -> bool:
    """The process that writes files and prints: rank 0, or the only process."""
    return rank() == 0


@dataclass
class _Session:
    device: torch.device
    # False: the group was made by someone else, who also destroys it
    owns_group: bool
    model: nn.Module | None = None  # the model last wrapped by data_parallel, and its wrapper
    wrapper: nn.Module | None = None


_SESSION: _Session | None = None


def process_device(device: torch.device) -> torch.device:
    """The device this process trains on: `device` in one process; under torchrun with CUDA,
    cuda:LOCAL_RANK."""
    if world_size() == 1 or device.type != "cuda":
        return device
    if device.index is not None:
        raise UserError(
            f"device={device} names one GPU, but under torchrun each process takes "
            "GPU LOCAL_RANK: "
            f"use device=cuda (or auto)"
        )
    local = _env_int("LOCAL_RANK")
    if local >= torch.cuda.device_count():
        raise UserError(
            f"process LOCAL_RANK={local} has no GPU (this node shows "
            f"{torch.cuda.device_count()}): "
            f"start at most that many processes per node (torchrun --nproc_per_node)"
        )
    return torch.device("cuda", local)


@contextmanager
def session(device: torch.device) -> Iterator[torch.device]:
    """Join torchrun's process group for one run and leave it afterwards; yields this process's
    device.

    gloo on the CPU, nccl on CUDA (one GPU per process, cuda:LOCAL_RANK). In one process nothing is
    set up. A group that already exists (made by the caller) is used as it is and left alone. On
    success all processes meet at a barrier before leaving, so rank 0's files are complete when any
    process returns."""
    global _SESSION
    device = process_device(device)
    if world_size() == 1:
        yield device
        return
    owns = not dist.is_initialized()
    if owns:
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    _SESSION = _Session(device, owns)
    try:
        yield device
        dist.barrier()
    finally:
        _SESSION = None
        if owns and dist.is_initialized():
            dist.destroy_process_group()


def data_parallel(model: nn.Module) -> nn.Module:
    """`model` wrapped in DistributedDataParallel (made once per run and reused), or `model` in one
    process.

    Buffers are synced once, at wrapping, then never again: each process keeps its own BN running
    statistics (per-device BN, as on W GPUs); rank 0's are the ones evaluated and saved. The wrapper
    shares `model`'s parameters, so the optimizer built on `model` and `model.state_dict()` (no
    "module." prefix) stay as in one process."""
    if world_size() == 1 or _SESSION is None:
        return model
    if _SESSION.model is not model:
        device = _SESSION.device
        # torch 2.14 renamed broadcast_buffers (now deprecated) to forward_sync_buffers
        no_buffer_sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else {"broadcast_buffers": False}
        )
        _SESSION.wrapper = _DataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync
        )
        _SESSION.model = model
    return _SESSION.wrapper


class _DataParallel(DistributedDataParallel):
    """DDP that accepts normbench's SyncBatchNorm in a CPU model: torch's DDP refuses every
    nn.SyncBatchNorm on the CPU because torch's kernel is GPU-only, but
    normbench.norms.SyncBatchNorm synchronises CPU tensors itself (a gloo all-reduce). Other SyncBN
    layers on the CPU are still refused, with torch's message."""

    def _passing_sync_batchnorm_handle(self, module: nn.Module) -> None:
        from .norms import SyncBatchNorm

        foreign = [
            m
            for m in module.modules()
            if isinstance(m, nn.SyncBatchNorm) and not isinstance(m, SyncBatchNorm)
        ]
        if foreign and self.device_type == "cpu":
            raise ValueError("SyncBatchNorm layers only work with GPU modules")


def train_batches(
    data: Any, batch: int, count: int, accum: int, generator: torch.Generator
) -> Iterator[Any]:
    """`data.train_batches(batch, count, generator)` for this process: in one process exactly that;
    with W processes this process's `count` micro-batches out of the epoch's W * count (see
    normbench.data.Shard), every process drawing the same randomness so their generators stay equal.
    Gradients are all-reduced only after the last micro-batch of each SGD step (what DDP's no_sync()
    does for the others)."""
    if world_size() == 1:
        return data.train_batches(batch, count, generator)
    from .data import Shard

    # draws now
    mine = data.train_batches(batch, count, generator, shard=Shard(rank(), world_size(), accum))
    return _sync_last_micro_batch(mine, accum)


def _sync_last_micro_batch(batches: Iterator[Any], accum: int) -> Iterator[Any]:
    # The flag is the one DistributedDataParallel.no_sync() clears; DDP reads it in the forward that
    # follows each yield, so micro-batches 0..accum-2 of a step only accumulate gradients locally.
    for index, micro_batch in enumerate(batches):
        if _SESSION is not None and _SESSION.wrapper is not None:
            _SESSION.wrapper.require_backward_grad_sync = index % accum == accum - 1
        yield micro_batch


def averager() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """None in one process; else a function giving the mean over processes of a tensor (one
    all-reduce).

    train_epoch applies it to its loss and accuracy sums at each logging interval: every process
    then logs the loss over all processes' images and sees the same finite flag, so all stop at the
    same step."""
    if world_size() == 1:
        return None
    return mean_over_processes


def mean_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    reduced = tensor.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)  # gloo has no AVG
    return reduced / dist.get_world_size()


def on_main(compute: Callable[[], Any]) -> Any:
    """`compute()` run by rank 0 only, its (picklable) result sent to every process; in one process
    just `compute()`. Used for evaluation: rank 0's model, running statistics included, is the one
    recorded, and every process then decides divergence from the same numbers."""
    if world_size() == 1:
        return compute()
    box = [compute() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Silent:
    """Stands in for the TensorBoard writer and the progress printer in processes other than rank 0:
    every method call does nothing (errors still reach stderr as exceptions)."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def check_sync_bn(cfg: Any) -> None:
    """sync_bn must be true/false; true applies to bn (converted to SyncBN) and syncbn (already
    synced).

    Batch-independent norms have no batch statistics, so it changes nothing for them (the record
    says so). The other batch-dependent norms (brn, gbn, mabn, evonorm_b0) compute statistics in
    their own layers, which have no cross-process form: asking to synchronise them is an error
    rather than a silent no-op."""
    from .norms import NORMS

    value = cfg.get("sync_bn", False)
    if not isinstance(value, bool):
        raise UserError(f"sync_bn must be true or false, got {value!r}: e.g. sync_bn=true")
    name = cfg.norm.name
    if value and name in NORMS and NORMS[name].batch_dependent and name not in SYNCABLE:
        raise UserError(
            f"sync_bn=true cannot synchronise norm={name}: its batch statistics are "
            "computed by its "
            "own layer, which has no cross-process form; use norm=bn (or "
            "syncbn) or sync_bn=false"
        )


def convert_sync_bn(cfg: Any, model: nn.Module, built: list[nn.Module]) -> int:
    """With sync_bn=true, every BN layer the norm built (`built`, updated in place) becomes
    normbench's SyncBatchNorm with the same options and state, before the model is wrapped; returns
    how many.

    In one process the converted layers compute exactly BN (their repr in the record says
    "not synchronised"); with W processes they normalise over all W per-device batches."""
    if not cfg.get("sync_bn", False):
        return 0
    from .norms import SyncBatchNorm

    kinds = {nn.BatchNorm2d: 2, nn.BatchNorm1d: 1}
    replaced: dict[int, nn.Module] = {}
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) in kinds and any(child is module for module in built):
                synced = SyncBatchNorm(
                    child.num_features,
                    eps=child.eps,
                    momentum=child.momentum,
                    dim=kinds[type(child)],
                )
                synced.load_state_dict(child.state_dict())
                synced.train(child.training)
                setattr(parent, child_name, synced)
                replaced[id(child)] = synced
    built[:] = [replaced.get(id(module), module) for module in built]
    return len(replaced)


def describe(model: nn.Module, cfg: Any) -> dict[str, Any]:
    """The record's facts about data parallelism: world_size, and over how many images a BN-family
    layer's training statistics are taken (`norm_batch`: batch, or batch * world_size when
    synchronised)."""
    from .norms import NORMS, sync_world_size

    size = world_size()
    synced = any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    synced_over = sync_world_size(model) if synced else 1
    facts: dict[str, Any] = {"world_size": size, "sync_bn": synced}
    if NORMS[cfg.norm.name].batch_dependent:
        facts["norm_batch"] = cfg.batch * synced_over
    if cfg.get("sync_bn", False) and not NORMS[cfg.norm.name].batch_dependent:
        facts["sync_bn_note"] = (
            f"norm={cfg.norm.name} uses no batch statistics: sync_bn changes nothing"
        )
    elif synced and synced_over == 1:
        facts["sync_bn_note"] = "one process: SyncBN computes exactly BN over this process's batch"
    return facts
