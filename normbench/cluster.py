"""The processes of one data-parallel run as a cluster scheduler starts them, read from the
environment it gives each process: the tasks of a SLURM job step (`srun --ntasks=W`, or a submitit
job with `hydra.launcher.tasks_per_node=W`) and the tasks of submitit's local executor.

SLURM: several tasks when SLURM_NTASKS > 1 inside a job step (SLURM_STEP_NUM_TASKS is set: srun
set it; the batch script of an `sbatch --ntasks=W` job also holds SLURM_NTASKS=W and SLURM_PROCID=0
but is one process). Rank SLURM_PROCID, local rank SLURM_LOCALID. Rank 0 listens on the first host
of the step's node list (SLURM's default block distribution puts rank 0 there), parsed from the
compact form (`node[01-03],gpu7`) without scontrol, at a port derived from SLURM_JOB_ID (every task
of a job derives the same one; jobs differ). MASTER_ADDR and MASTER_PORT, when set, win.
Torch-free: the sweep reads it before torch is needed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import UserError

# ports 10000-29999: below Linux's ephemeral range (32768-60999), so an outgoing connection's port
# rarely holds the one a job derives
PORT_BASE, PORT_SPAN = 10000, 20000
NODE_LISTS = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
# submitit's local executor (hydra/launcher=submitit_local): its own names for the same facts
LOCAL_TASKS = "SUBMITIT_LOCAL_NTASKS"


@dataclass(frozen=True)
class ClusterTasks:
    """This process among the tasks of one job step.

    Args:
        rank: this task's rank among all the step's tasks.
        local_rank: its rank on this node (its GPU when the node's GPUs are shared by the tasks).
        world_size: the step's tasks.
        master_addr: the host of rank 0.
        master_port: the port rank 0 listens on.
        scheduler: "slurm" or "submitit_local", for messages and the record.
    """

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    scheduler: str

    @property
    def init_method(self) -> str:
        """The `init_method` of torch.distributed.init_process_group."""
        return f"tcp://{self.master_addr}:{self.master_port}"


def cluster_tasks(environ: Mapping[str, str] | None = None) -> ClusterTasks | None:
    """This process's place among several tasks of a SLURM job step or a submitit local job; None
    for a single task or outside both."""
    env = os.environ if environ is None else environ
    if env.get(LOCAL_TASKS) and _int(env, LOCAL_TASKS) > 1:
        return ClusterTasks(
            rank=_int(env, "SUBMITIT_LOCAL_GLOBALID"),
            local_rank=_int(env, "SUBMITIT_LOCAL_LOCALID"),
            world_size=_int(env, LOCAL_TASKS),
            master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
            master_port=_port(env, "SUBMITIT_LOCAL_JOB_ID"),
            scheduler="submitit_local",
        )
    if "SLURM_STEP_NUM_TASKS" not in env or _int(env, "SLURM_NTASKS", "1") <= 1:
        return None
    node_list = next((env[name] for name in NODE_LISTS if env.get(name)), None)
    if node_list is None and not env.get("MASTER_ADDR"):
        raise UserError(
            "SLURM_NTASKS > 1 but no SLURM_JOB_NODELIST to find rank 0's host: start the tasks "
            "with srun, or set MASTER_ADDR"
        )
    return ClusterTasks(
        rank=_int(env, "SLURM_PROCID"),
        local_rank=_int(env, "SLURM_LOCALID"),
        world_size=_int(env, "SLURM_NTASKS"),
        master_addr=env.get("MASTER_ADDR") or first_host(node_list or ""),
        master_port=_port(env, "SLURM_JOB_ID"),
        scheduler="slurm",
    )


def first_host(node_list: str) -> str:
    """The first host of a SLURM node list in its compact form: `node[01-03,07],gpu7` -> node01,
    `rack[1-2]-gpu[3-4]` -> rack1-gpu3, `gpu7,node[1-2]` -> gpu7."""
    depth, end = 0, len(node_list)
    for index, char in enumerate(node_list):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = index
            break
    group = node_list[:end].strip()
    # each bracket holds ranges and single numbers: its first number, zero padding kept
    host = re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[-,]", m.group(1))[0].strip(), group)
    if not host or any(mark in host for mark in "[]"):
        raise UserError(
            f"cannot read the first host of the SLURM node list {node_list!r}: set MASTER_ADDR to "
            "rank 0's host"
        )
    return host


def job_port(job_id: str) -> int:
    """The port rank 0 of job `job_id` listens on: the same in every task of the job (and of its
    requeued runs), different for jobs whose ids differ by less than PORT_SPAN."""
    digits = re.sub(r"\D", "", job_id)
    return PORT_BASE + int(digits or 0) % PORT_SPAN


def _port(env: Mapping[str, str], job_id_name: str) -> int:
    if env.get("MASTER_PORT"):
        return _int(env, "MASTER_PORT")
    if job_id_name not in env:
        raise UserError(
            f"{job_id_name} is not set: set MASTER_PORT to a free port on rank 0's host"
        )
    return job_port(env[job_id_name])


def _int(env: Mapping[str, str], name: str, default: str | None = None) -> int:
    text = env.get(name, default)
    if text is None:
        raise UserError(
            f"environment variable {name} is not set: start the job's tasks with srun, which sets "
            "it"
        )
    try:
        return int(text)
    except ValueError:
        raise UserError(
            f"environment variable {name}={text!r} is not an integer: start the job's tasks with "
            "srun, which sets it"
        ) from None
