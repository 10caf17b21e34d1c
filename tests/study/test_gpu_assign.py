"""One GPU per local sweep job (normbench.study.gpus): the GPU count is faked, so these run on the
CPU; each job claims a slot when it starts and trains on that GPU."""

from __future__ import annotations

import threading
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
from conftest import TINY

from normbench import runner
from normbench.config import compose
from normbench.errors import UserError
from normbench.study import launch
from normbench.study.gpus import GpuSlots, check_jobs_per_gpu, claimed_gpu, plan_gpu_slots
from normbench.study.sweep import run_sweep


@pytest.fixture
def fake_gpus(monkeypatch):
    """A machine with `count` GPUs, as torch.cuda reports them."""

    def make(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return make


def claims(slots: GpuSlots, jobs: int) -> list[int]:
    """The GPUs of `jobs` jobs that run at once (each holds its claim)."""
    with ExitStack() as held:
        return [held.enter_context(claimed_gpu(slots)) for _ in range(jobs)]


def test_each_running_job_has_its_own_gpu(fake_gpus, tmp_path):
    fake_gpus(4)
    slots = plan_gpu_slots(["auto"] * 9, 4, 1, tmp_path)
    assert slots == GpuSlots(4, 1, str(tmp_path))
    assert claims(slots, 4) == [0, 1, 2, 3]
    # a job that ended frees its GPU for the next one, wherever the others are
    with claimed_gpu(slots) as first, claimed_gpu(slots) as second:
        with claimed_gpu(slots) as third:
            assert (first, second, third) == (0, 1, 2)
        with claimed_gpu(slots) as fourth, claimed_gpu(slots) as fifth:
            assert (fourth, fifth) == (2, 3)


def test_jobs_per_gpu_packs_jobs_on_fewer_gpus(fake_gpus, tmp_path):
    fake_gpus(8)
    slots = plan_gpu_slots(["cuda"] * 4, 4, 2, tmp_path)
    assert slots is not None and (slots.gpus, slots.per_gpu) == (2, 2)
    assert claims(slots, 4) == [0, 1, 0, 1]


def test_more_jobs_than_gpus_share_them_evenly(fake_gpus, tmp_path, caplog):
    fake_gpus(8)
    with caplog.at_level("INFO"):
        slots = plan_gpu_slots(["auto"] * 9, 9, 1, tmp_path)
    assert slots is not None and (slots.gpus, slots.per_gpu) == (8, 2)
    assert "up to 2 jobs share a GPU" in caplog.text
    assert claims(slots, 9) == [0, 1, 2, 3, 4, 5, 6, 7, 0]
    fake_gpus(1)  # many small jobs on one GPU, as before
    one = plan_gpu_slots(["auto"] * 10, 10, 1, tmp_path / "one")
    assert one is not None and claims(one, 10) == [0] * 10


def test_nothing_changes_without_gpus_or_with_a_device_chosen(fake_gpus, tmp_path):
    if not torch.cuda.is_available():
        assert plan_gpu_slots(["auto"] * 2, 2, 1, tmp_path) is None
    fake_gpus(4)
    assert plan_gpu_slots(["auto", "cpu"], 2, 1, tmp_path) is None
    assert plan_gpu_slots(["cuda:1", "auto"], 2, 1, tmp_path) is None
    assert plan_gpu_slots(["auto"] * 3, 1, 1, tmp_path) is None  # --jobs 1: cells run here


def test_jobs_per_gpu_is_checked():
    check_jobs_per_gpu(1, None)
    check_jobs_per_gpu(3, "joblib")
    with pytest.raises(UserError, match="--jobs-per-gpu 0"):
        check_jobs_per_gpu(0, "joblib")
    with pytest.raises(UserError, match="hydra.launcher.gpus_per_node"):
        check_jobs_per_gpu(2, "submitit_slurm")


def test_bad_jobs_per_gpu_is_one_line_and_writes_nothing(normbench, tmp_path):
    result = normbench("sweep", *TINY, f"out={tmp_path}", "norm=bn,gn", "--jobs-per-gpu", "0")
    assert result.code == 2 and result.err.count("\n") == 1 and "--jobs-per-gpu 0" in result.err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sweeps").exists()


def test_each_job_of_a_sweep_trains_on_the_gpu_it_claimed(fake_gpus, tmp_path, monkeypatch):
    """`sweep --jobs 2` on a 2-GPU machine: the cell table hands the jobs the slots, and two jobs
    running at once train on cuda:0 and cuda:1 (the config the runner gets says so; torch's current
    device is set too)."""
    fake_gpus(2)
    launched: dict = {}
    monkeypatch.setattr(
        launch, "launch", lambda cells, *args: launched.update(cells=cells, args=args)
    )
    run_sweep([*TINY, f"out={tmp_path}", "norm=bn,gn,ln"], "s", jobs=2)
    gpus = launched["args"][-1]
    assert gpus == GpuSlots(2, 1, str(tmp_path / "sweeps" / "s" / "launcher" / "gpus"))

    both_running = threading.Barrier(2, timeout=30)
    trained_on: dict[str, str] = {}
    current: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)

    def fake_run(cell, choices, overrides, user_config_dir):
        both_running.wait()  # each job holds its GPU while the other claims one
        trained_on[cell.norm.name] = cell.device

    monkeypatch.setattr(runner, "run", fake_run)

    jobs = [
        (*compose(overrides, with_choices=True), overrides, None, gpus)
        for overrides in list(launched["cells"].values())[:2]
    ]  # composed here: Hydra's compose is not for threads
    threads = [threading.Thread(target=launch._train_cell, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(trained_on.values()) == ["cuda:0", "cuda:1"] and sorted(current) == [0, 1]
    assert Path(gpus.folder).is_dir()
