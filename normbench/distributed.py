"""Data-parallel runs over the processes torchrun starts (`torchrun --nproc_per_node=N -m normbench
run ...`), seen by a run through one explicit context: `session(device, devices)` yields a
`Session`.

Each process holds `devices` simulated devices (config key `devices`, 1 by default): `batch` stays
the per-device batch (what a batch-dependent norm sees), each forward takes batch * devices images,
the model is wrapped in DistributedDataParallel (gradients averaged over processes), and the SGD
batch becomes batch * devices * accum * world_size. Every process draws the same epoch permutation
from the seeded generator and takes its own shard of it (`normbench.data.Shard`), so that simulated
device d of process r sees exactly the images process r * devices + d of a run with
world_size * devices processes and devices=1 sees: W processes x D devices train like W * D
processes x 1 device, and like one process with devices = W * D (each process, and each simulated
device, keeps its own BN running statistics; rank 0's are evaluated and saved).

Rank 0 prints progress, writes TensorBoard and evaluates (the Session's factories give no-ops
elsewhere); the runner decides that rank 0 alone claims the run and writes its files. Metrics that
decide anything (the train loss behind the finite check, test results) are reduced or broadcast so
that every process takes the same branch and none waits forever in a collective.

The tasks of a SLURM job step (`srun --ntasks=W`, a submitit job with
`hydra.launcher.tasks_per_node=W`) are such processes too: outside torchrun, normbench.cluster reads
rank, local rank, world size and rank 0's address from the scheduler's environment and the group is
made from them, so each of them trains the run exactly as a torchrun process of that rank would.

Outside both (no RANK/WORLD_SIZE/LOCAL_RANK, no multi-task job step) the Session is a plain one:
world_size 1, rank 0, the model not wrapped. The plain functions `launched`, `world_size`, `rank`
and `is_main` read the same facts from the environment, for code outside a run (cli, sweep).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .cluster import cluster_tasks
from .data import Batch, DataSource, Shard
from .errors import UserError
from .norms import SyncBatchNorm
from .progress import RunProgress
from .tensorboard_log import RunBoard

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # what torchrun sets for each process it starts
_planned = [1]  # planned_world_size's stack (its blocks may nest); 1 outside them


def launched() -> bool:
    """True in a process started by torchrun (or any launcher that sets RANK, WORLD_SIZE and
    LOCAL_RANK) or as one of several tasks of a SLURM (or submitit local) job step."""
    return _torchrun() or cluster_tasks() is not None


def _torchrun() -> bool:
    return all(name in os.environ for name in LAUNCH_ENV)


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise UserError(
            f"environment variable {name}={os.environ[name]!r} is not an integer: "
            f"start normbench with torchrun, which sets it"
        ) from None


def _launch_env(name: str) -> int:
    """RANK, WORLD_SIZE or LOCAL_RANK of a launched process: torchrun's variable, else the job
    step's (normbench.cluster)."""
    if _torchrun():
        return _env_int(name)
    tasks = cluster_tasks()
    assert tasks is not None, "only called in a launched process"
    return {"RANK": tasks.rank, "WORLD_SIZE": tasks.world_size, "LOCAL_RANK": tasks.local_rank}[
        name
    ]


def world_size() -> int:
    """Processes training this run: from the process group, else from torchrun's or the job step's
    environment, else the planned world size (planned_world_size), else 1.

    Read from the environment before the group exists, so a run key computed early (e.g. by a
    sweep's validation) is the one the run uses."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _launch_env("WORLD_SIZE") if launched() else _planned[-1]


@contextmanager
def planned_world_size(processes: int) -> Iterator[None]:
    """Inside the block world_size() is `processes` in a process that is not itself launched: a
    sweep plans (validates and names) the runs its launched jobs will train with that many
    processes each (hydra.launcher.tasks_per_node x nodes)."""
    _planned.append(processes)
    try:
        yield
    finally:
        _planned.pop()


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _launch_env("RANK") if launched() else 0


def is_main() -> bool:
    """The process that writes files and prints: rank 0, or the only process."""
    return rank() == 0


def resolve_device(name: Any, option: str = "device") -> torch.device:
    """The torch.device for auto / cpu / cuda / cuda:N; one UserError line for anything else, or for
    cuda when torch sees no GPU.

    Args:
        option: how the user spells the setting, for the messages: "device" (a config key,
            `device=cuda`) or a command-line flag such as "--device" (`--device cuda`).
    """
    given = f"{option} " if option.startswith("-") else f"{option}="
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    index = name[len("cuda:") :] if isinstance(name, str) and name.startswith("cuda:") else ""
    if name != "cuda" and not index.isdigit():
        raise UserError(f"{option} must be auto, cpu or cuda (or cuda:N), got {name!r}")
    if not torch.cuda.is_available():
        raise UserError(
            f"{given}cuda but no CUDA GPU is visible to torch: use {given}cpu or {given}auto"
        )
    return torch.device(name)


def process_device(device: torch.device) -> torch.device:
    """The device this process trains on: `device` in one process; under torchrun with CUDA,
    cuda:LOCAL_RANK."""
    if world_size() == 1 or device.type != "cuda":
        return device
    if device.index is not None:
        raise UserError(
            f"device={device} names one GPU, but under torchrun each process takes GPU "
            "LOCAL_RANK: use device=cuda (or auto)"
        )
    local = _launch_env("LOCAL_RANK")
    if not _torchrun() and torch.cuda.device_count() == 1:
        # SLURM bound one GPU to each task (--gpus-per-task, --gpu-bind): it is cuda:0 there
        return torch.device("cuda", 0)
    if local >= torch.cuda.device_count():
        raise UserError(
            f"process LOCAL_RANK={local} has no GPU (this node shows "
            f"{torch.cuda.device_count()}): "
            f"start at most that many processes per node (torchrun --nproc_per_node)"
        )
    return torch.device("cuda", local)


class Silent:
    """Stands in for the TensorBoard writer and the progress printer in processes other than rank 0:
    every method call does nothing (errors still reach stderr as exceptions)."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


@dataclass
class Session:
    """This process's part of one run: who it is among the run's processes, and the few operations
    that differ between one process and several.

    Simulated devices (several devices inside one process) are the field `devices`: the shards
    count world_size * devices replicas and every micro-batch holds batch * devices images; the
    model (normbench.backbones.build_model) gives each simulated device's images their own batch
    statistics. The runner and the epoch loop keep asking this object only.

    Args:
        device: this process's device (cuda:LOCAL_RANK under torchrun with CUDA).
        rank: this process's rank, 0 in one process.
        world_size: processes training the run.
        devices: simulated data-parallel devices in this process.
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    devices: int = 1
    # the model last wrapped by `wrap`, and its DDP wrapper (made once per run, then reused)
    _model: nn.Module | None = field(default=None, repr=False)
    _wrapper: DistributedDataParallel | None = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        """The process that prints, evaluates and writes the run's files."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` wrapped in DistributedDataParallel, or `model` in one process.

        Buffers are synced once, at wrapping, then never again: each process keeps its own BN
        running statistics (per-device BN, as on W GPUs); rank 0's are the ones evaluated and saved.
        The wrapper shares `model`'s parameters, so the optimizer built on `model` and
        `model.state_dict()` (no "module." prefix) stay as in one process."""
        if self.world_size == 1:
            return model
        if self._model is not model or self._wrapper is None:
            # torch 2.14 renamed broadcast_buffers (now deprecated) to forward_sync_buffers
            no_buffer_sync: dict[str, Any] = (
                {"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else {"broadcast_buffers": False}
            )
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self._wrapper = _DataParallel(model, device_ids=device_ids, **no_buffer_sync)
            self._model = model
        return self._wrapper

    def train_batches(
        self, data: DataSource, batch: int, count: int, accum: int, generator: torch.Generator
    ) -> Iterator[Batch]:
        """`count` micro-batches of `batch * devices` images for this process: in one process with
        one device exactly `data.train_batches(batch, count, generator)`; otherwise this process's
        part of an epoch of W processes x D devices (see normbench.data.Shard), every process
        drawing the same randomness so their generators stay equal. Gradients are all-reduced only
        after the last micro-batch of each SGD step (what DDP's no_sync() does for the others)."""
        if self.world_size == 1 and self.devices == 1:
            return data.train_batches(batch, count, generator)
        shard = Shard(self.rank, self.world_size, accum, self.devices)
        mine = data.train_batches(batch, count, generator, shard=shard)  # draws now
        return mine if self.world_size == 1 else self._sync_last_micro_batch(mine, accum)

    def _sync_last_micro_batch(self, batches: Iterator[Batch], accum: int) -> Iterator[Batch]:
        # The flag is the one DistributedDataParallel.no_sync() clears; DDP reads it in the forward
        # that follows each yield, so micro-batches 0..accum-2 of a step only accumulate gradients
        # locally.
        for index, micro_batch in enumerate(batches):
            if self._wrapper is not None:
                self._wrapper.require_backward_grad_sync = index % accum == accum - 1
            yield micro_batch

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over processes of `tensor` (one all-reduce); `tensor` itself in one process."""
        if self.world_size == 1:
            return tensor
        reduced = tensor.detach().clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)  # gloo has no AVG
        return reduced / self.world_size

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """`tensor` of every process, by rank (one all-gather; same shape everywhere)."""
        if self.world_size == 1:
            return [tensor]
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return parts

    @property
    def average(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What train_epoch reduces its loss and accuracy sums with: None in one process (nothing
        to reduce), else `mean`. Every process then logs the loss over all processes' images and
        sees the same finite flag, so all stop at the same step."""
        return None if self.world_size == 1 else self.mean

    def on_main(self, compute: Callable[[], Any]) -> Any:
        """`compute()` run by rank 0 only, its (picklable) result sent to every process; in one
        process just `compute()`. Used for evaluation: rank 0's model, running statistics included,
        is the one recorded, and every process then decides divergence from the same numbers."""
        if self.world_size == 1:
            return compute()
        box = [compute() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def writer(self, log_dir: Path, purge_step: int | None = None) -> RunBoard | Silent:
        """The run's TensorBoard writer (normbench.tensorboard_log) on rank 0, a Silent stand-in
        elsewhere."""
        return RunBoard(log_dir, purge_step) if self.is_main else Silent()

    def progress(self, mode: str, epochs: int, steps_per_epoch: int) -> RunProgress | Silent:
        """The run's printer (RunProgress) on rank 0, a Silent stand-in elsewhere."""
        return RunProgress(mode, epochs, steps_per_epoch) if self.is_main else Silent()


@contextmanager
def session(device: torch.device, devices: int = 1) -> Iterator[Session]:
    """Join torchrun's process group for one run and leave it afterwards; yields the run's Session,
    with `devices` simulated devices in this process.

    gloo on the CPU, nccl on CUDA (one GPU per process, cuda:LOCAL_RANK). In one process nothing is
    set up. A group that already exists (made by the caller) is used as it is and left alone. On
    success all processes meet at a barrier before leaving, so rank 0's files are complete when any
    process returns."""
    device = process_device(device)
    if world_size() == 1:
        yield Session(device, devices=devices)
        return
    owns = not dist.is_initialized()  # False: the group was made by the caller, who destroys it
    if owns:
        _init_group(device)
    try:
        yield Session(device, rank(), world_size(), devices)
        dist.barrier()
    finally:
        if owns and dist.is_initialized():
            dist.destroy_process_group()


def _init_group(device: torch.device) -> None:
    """The process group: gloo on the CPU, nccl on CUDA; from torchrun's environment (env://), or
    from the job step's rank, world size and rank 0's address (normbench.cluster)."""
    backend: dict[str, Any] = {"backend": "gloo"}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = {"backend": "nccl", "device_id": device}
    tasks = None if _torchrun() else cluster_tasks()
    if tasks is not None:
        backend.update(init_method=tasks.init_method, rank=tasks.rank, world_size=tasks.world_size)
    dist.init_process_group(**backend)


class _DataParallel(DistributedDataParallel):
    """DDP that accepts normbench's SyncBatchNorm in a CPU model: torch's DDP refuses every
    nn.SyncBatchNorm on the CPU because torch's kernel is GPU-only, but
    normbench.norms.SyncBatchNorm synchronises CPU tensors itself (a gloo all-reduce). Other SyncBN
    layers on the CPU are still refused, with torch's message."""

    def _passing_sync_batchnorm_handle(self, module: nn.Module) -> None:
        foreign = [
            m
            for m in module.modules()
            if isinstance(m, nn.SyncBatchNorm) and not isinstance(m, SyncBatchNorm)
        ]
        if foreign and self.device_type == "cpu":
            raise ValueError("SyncBatchNorm layers only work with GPU modules")
