"""One GPU per local sweep job: `sweep --jobs N` on a machine with G GPUs spreads the jobs that run
at once over the GPUs (`--jobs-per-gpu K` packs K on each, using ceil(N / K) GPUs).

Each job claims a GPU when it starts, not when the sweep is planned: a job takes the first free
slot (GPU g, place k) by a non-blocking `flock` on `<launcher>/gpus/<g>.<k>.lock`, held until it
ends (the kernel drops it if the worker dies). So at most N jobs run at once and a GPU is never
given twice while another idles, however long the cells take and whichever of joblib's loky
worker processes runs them; a slot assigned by cell index instead (cell i on GPU i % G) would put a
new cell on a busy GPU whenever an earlier cell outlasts a later one. The job trains on
`device=cuda:<g>` and makes it torch's current device before anything touches CUDA: setting
CUDA_VISIBLE_DEVICES per job cannot work in a loky worker, which keeps its CUDA context (and so
the GPUs it saw) from one job to the next.

Beyond N > G * K the jobs share the GPUs evenly (ceil(N / G) per GPU) and the sweep says so: one
GPU shared by many small jobs is a use that worked before. On a machine without CUDA, and for cells
that name their device (device=cpu, device=cuda:1), nothing changes.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError

LOG = logging.getLogger(__name__)
SHARED_DEVICES = ("auto", "cuda")  # the device settings a job may narrow to one GPU


@dataclass(frozen=True)
class GpuSlots:
    """The GPUs a sweep's jobs share: `gpus` GPUs (cuda:0 ... cuda:gpus-1), at most `per_gpu` jobs
    on each, the lock files in `folder`."""

    gpus: int
    per_gpu: int
    folder: str

    def order(self) -> Iterator[tuple[int, int]]:
        """(gpu, place) in the order jobs take them: one job on every GPU before a second on any."""
        for place in range(self.per_gpu):
            for gpu in range(self.gpus):
                yield gpu, place


def check_jobs_per_gpu(jobs_per_gpu: int, launcher: str | None) -> None:
    """--jobs-per-gpu is a count, and only local worker processes (--jobs) share this machine's
    GPUs: SLURM gives each job its own (hydra.launcher.gpus_per_node)."""
    if jobs_per_gpu < 1:
        raise UserError(
            f"--jobs-per-gpu {jobs_per_gpu}: give how many jobs may share a GPU, 1 or more"
        )
    if jobs_per_gpu > 1 and launcher != "joblib":
        raise UserError(
            "--jobs-per-gpu packs the local jobs of --jobs N on this machine's GPUs; a submitit "
            "launcher gets each job its GPUs from SLURM (hydra.launcher.gpus_per_node): drop it"
        )


def plan_gpu_slots(
    devices: list[str], jobs: int, jobs_per_gpu: int, folder: Path
) -> GpuSlots | None:
    """How `jobs` local jobs share this machine's GPUs, or None when they do not (no CUDA, one job,
    or a cell that names its device: then every job trains where its config says, as before)."""
    if jobs < 2 or not torch.cuda.is_available() or any(d not in SHARED_DEVICES for d in devices):
        return None
    count = torch.cuda.device_count()
    used = min(count, math.ceil(jobs / jobs_per_gpu))
    per_gpu = math.ceil(jobs / used)
    if per_gpu > jobs_per_gpu:
        LOG.info(
            f"note: --jobs {jobs} on {count} GPU{'s' if count > 1 else ''}: up to {per_gpu} jobs "
            f"share a GPU (--jobs-per-gpu {jobs_per_gpu}); lower --jobs to give each its own"
        )
    else:
        LOG.info(f"{jobs} jobs on {used} of {count} GPUs, at most {per_gpu} per GPU")
    return GpuSlots(used, per_gpu, str(folder))


@contextmanager
def claimed_gpu(slots: GpuSlots) -> Iterator[int]:
    """The GPU of a slot that no other running job holds, held for the block. Every slot taken
    (only when more jobs run than the sweep planned, e.g. two sweeps of one name at once): a GPU
    picked by process id, unclaimed, rather than a wait."""
    folder = Path(slots.folder)
    folder.mkdir(parents=True, exist_ok=True)
    for gpu, place in slots.order():
        fd = os.open(folder / f"{gpu}.{place}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield gpu
        finally:
            os.close(fd)  # drops the lock
        return
    yield os.getpid() % slots.gpus
