"""A DDP run per SLURM job step (normbench.cluster, normbench.distributed): the tasks' environment
read without scontrol, two processes started with SLURM's variables against a torchrun run of the
same cell, and a sweep whose submitit jobs have two tasks each."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_distributed import SMALL, only_run_dir, saved_model, torchrun

from normbench import distributed
from normbench.cluster import PORT_BASE, PORT_SPAN, cluster_tasks, first_host, job_port
from normbench.errors import UserError
from normbench.runs import run_key
from normbench.study.launch import job_processes

REPO = Path(__file__).resolve().parents[1]
# what srun gives task 1 of a two-task step (the batch script lacks SLURM_STEP_NUM_TASKS)
SRUN_TASK_1 = {
    "SLURM_NTASKS": "2",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NODELIST": "gpu[07-08],login1",
}
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.mark.parametrize(
    ("node_list", "host"),
    [
        ("node[01-03],gpu7", "node01"),
        ("gpu7,node[1-2]", "gpu7"),
        ("node[07,01-03]", "node07"),
        ("rack[1-2]-gpu[03-04]", "rack1-gpu03"),
        ("node[3-4]-ib,other", "node3-ib"),
        ("a-b-c", "a-b-c"),
        ("localhost", "localhost"),
    ],
)
def test_the_first_host_of_a_compact_node_list(node_list, host):
    assert first_host(node_list) == host


def test_a_node_list_it_cannot_read_names_the_fix():
    with pytest.raises(UserError, match="set MASTER_ADDR"):
        first_host("node[01-03")


def test_the_port_comes_from_the_job_id():
    assert job_port("4242") == job_port("4242") == PORT_BASE + 4242
    assert job_port("4243") != job_port("4242")
    assert all(PORT_BASE <= job_port(str(i)) < PORT_BASE + PORT_SPAN for i in (0, 10**9 + 7))


def test_srun_tasks_are_the_processes_of_one_run():
    tasks = cluster_tasks(SRUN_TASK_1)
    assert tasks is not None
    assert (tasks.rank, tasks.local_rank, tasks.world_size) == (1, 1, 2)
    assert tasks.init_method == f"tcp://gpu07:{PORT_BASE + 4242}" and tasks.scheduler == "slurm"
    # MASTER_ADDR and MASTER_PORT, when set, win
    given = cluster_tasks({**SRUN_TASK_1, "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29400"})
    assert given is not None and given.init_method == "tcp://10.0.0.5:29400"
    # SLURM_STEP_NODELIST (the step's own nodes) comes before the job's
    step = cluster_tasks({**SRUN_TASK_1, "SLURM_STEP_NODELIST": "gpu[08]"})
    assert step is not None and step.master_addr == "gpu08"


def test_one_task_or_the_batch_script_is_not_a_multi_process_run():
    batch_script = {k: v for k, v in SRUN_TASK_1.items() if k != "SLURM_STEP_NUM_TASKS"}
    assert cluster_tasks(batch_script) is None
    assert cluster_tasks({**SRUN_TASK_1, "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"}) is None
    assert cluster_tasks({}) is None


def test_submitit_local_tasks_are_read_too():
    tasks = cluster_tasks(
        {
            "SUBMITIT_LOCAL_NTASKS": "2",
            "SUBMITIT_LOCAL_GLOBALID": "0",
            "SUBMITIT_LOCAL_LOCALID": "0",
            "SUBMITIT_LOCAL_JOB_ID": "31337",
        }
    )
    assert tasks is not None and (tasks.rank, tasks.world_size) == (0, 2)
    assert tasks.init_method == f"tcp://127.0.0.1:{job_port('31337')}"
    assert cluster_tasks({"SUBMITIT_LOCAL_NTASKS": "1"}) is None


def test_bad_slurm_variables_are_one_line_naming_the_variable():
    with pytest.raises(UserError, match="SLURM_PROCID='x' is not an integer"):
        cluster_tasks({**SRUN_TASK_1, "SLURM_PROCID": "x"})
    without_nodes = {k: v for k, v in SRUN_TASK_1.items() if k != "SLURM_JOB_NODELIST"}
    with pytest.raises(UserError, match="set MASTER_ADDR"):
        cluster_tasks(without_nodes)


def test_rank_and_world_size_come_from_the_slurm_environment(cfg_of, monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in SRUN_TASK_1.items():
        monkeypatch.setenv(name, value)
    assert distributed.launched()
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (2, 1, False)
    assert run_key(cfg_of(["data=synthetic", "batch=16"]), {}).endswith("-w2")
    # each task bound to its own GPU (it sees one): cuda:0 there, whatever its local rank
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert distributed.process_device(torch.device("cuda")) == torch.device("cuda", 0)
    # torchrun's variables win over SLURM's
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert (distributed.world_size(), distributed.rank()) == (3, 0)


def test_a_sweep_plans_the_world_size_of_its_jobs(cfg_of):
    assert distributed.world_size() == 1
    with distributed.planned_world_size(4):
        assert distributed.world_size() == 4
        assert run_key(cfg_of(["data=synthetic", "batch=16"]), {}).endswith("-w4")
    assert distributed.world_size() == 1
    assert job_processes(["hydra/launcher=joblib"], ["data=synthetic"], None) == 1
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher", reason="pip install 'normbench[slurm]'"
    )
    cell = ["data=synthetic"]
    local = ["hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2"]
    assert job_processes(local, cell, None) == 2
    slurm = [
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.tasks_per_node=4",
        "hydra.launcher.nodes=2",
    ]
    assert job_processes(slurm, cell, None) == 8
    assert job_processes(["hydra/launcher=submitit_slurm"], cell, None) == 1


def _free_job_id() -> str:
    """A SLURM_JOB_ID whose derived port is free here now (as torchrun --standalone picks one)."""
    for offset in range(1000, PORT_SPAN, 997):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", PORT_BASE + offset))
            except OSError:
                continue
        return str(offset)
    raise AssertionError("no free port")


def slurm_tasks(out: Path, *overrides: str, tasks: int = 2) -> None:
    """`normbench run` in `tasks` processes with the variables srun gives each task of a one-node
    step (gloo on the CPU, rank 0 on localhost, the port derived from the job id)."""
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    job = {
        "SLURM_NTASKS": str(tasks),
        "SLURM_STEP_NUM_TASKS": str(tasks),
        "SLURM_JOB_ID": _free_job_id(),
        "SLURM_JOB_NODELIST": "localhost",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "normbench", "run", *overrides, f"out={out}"]
    processes = [
        subprocess.Popen(
            command,
            cwd=REPO,
            env={**base, **job, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(tasks)
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    assert sum(output.count("completed:") for output in outputs) == 1, outputs  # rank 0 reports


@pytest.mark.slow
def test_slurm_tasks_train_the_cell_exactly_as_torchrun(tmp_path):
    """Two processes with SLURM's variables == `torchrun --nproc_per_node=2` of the same cell: the
    same run key (-w2), world_size 2 in the record, the same history and bitwise the same final
    weights (the same ranks, shards and gloo reductions)."""
    cell = [*SMALL, "batch=16"]
    slurm_tasks(tmp_path / "slurm", *cell)
    torchrun(tmp_path / "torchrun", *cell)
    ours, theirs = only_run_dir(tmp_path / "slurm"), only_run_dir(tmp_path / "torchrun")
    assert ours.name == theirs.name
    record = json.loads((ours / "record.json").read_text())
    reference = json.loads((theirs / "record.json").read_text())
    assert record["status"] == "completed" and record["setup"]["world_size"] == 2
    assert [h["train_loss"] for h in record["history"]] == [
        h["train_loss"] for h in reference["history"]
    ]
    weights, expected = saved_model(ours), saved_model(theirs)
    assert weights.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(weights[name], value), name


@pytest.mark.slow
def test_a_submitit_job_with_two_tasks_is_one_ddp_run(normbench, tmp_path):
    """hydra.launcher.tasks_per_node=2 under submitit's local executor (the variables differ from
    SLURM's, the protocol is the same): the sweep plans the cell as a -w2 run, the job's two tasks
    train it together, rank 0 writes, and the sweep reads its record."""
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher", reason="pip install 'normbench[slurm]'"
    )
    result = normbench(
        "sweep",
        *SMALL,
        "batch=16",
        "epochs=1",
        f"out={tmp_path}",
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        "--name",
        "ddp",
    )
    assert result.code == 0, result.err
    assert "1 cells: 1 completed" in result.out, result.out
    run_dir = only_run_dir(tmp_path)
    assert run_dir.name.startswith("synthetic-lenet-bn-b16x1-s0-w2-"), run_dir.name
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "completed" and record["setup"]["world_size"] == 2
    assert record["setup"]["sgd_batch"] == 32
