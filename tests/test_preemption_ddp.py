"""Preemption under torchrun: SIGTERM reaches every process (torchrun forwards it), the processes
agree on one step, rank 0 writes the checkpoint there and every process exits; the rerun resumes
and its final weights equal an uninterrupted torchrun run's, bit for bit (gloo, CPU, 1 thread)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RUN = [
    "data=synthetic",
    "data.train_size=1024",
    "data.test_size=64",
    "epochs=12",
    "batch=8",
    "lr=0.8",
    "log.every_steps=4",
    "log.progress=plain",
    "checkpoint.every_steps=8",
]


def torchrun(out: Path) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node=2 -m normbench run RUN` in its own process group."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "normbench", "run", *RUN, f"out={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def record(out: Path) -> dict | None:
    files = list(out.glob("runs/*/record.json"))
    return json.loads(files[0].read_text()) if files else None


def results(record: dict) -> list[dict]:
    """The record's history without its timings."""
    return [{k: v for k, v in epoch.items() if k != "train_seconds"} for epoch in record["history"]]


def weights(out: Path) -> dict[str, torch.Tensor]:
    (run_dir,) = (out / "runs").iterdir()
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_every_process_at_one_step_and_the_rerun_ends_identical(
    tmp_path,
):
    reference = torchrun(tmp_path / "reference")
    assert reference.wait(timeout=600) == 0, reference.stdout.read()[-3000:]

    out = tmp_path / "preempted"
    launch = torchrun(out)
    deadline = time.monotonic() + 300
    while not ((now := record(out)) and now.get("history")):  # one epoch done, 11 to go
        assert launch.poll() is None, launch.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    launch.send_signal(signal.SIGTERM)
    code = launch.wait(timeout=120)
    log = launch.stdout.read()
    stopped = record(out)
    assert code != 0, log[-3000:]  # torchrun reports its workers' exit code 75 as a failure
    assert stopped["status"] == "interrupted", log[-3000:]
    assert stopped["interrupted_at"]["signal"] == "SIGTERM"
    assert stopped["interrupted_at"]["epoch"] < 12

    rerun = torchrun(out)
    assert rerun.wait(timeout=600) == 0, rerun.stdout.read()[-3000:]
    done = record(out)
    assert done["status"] == "completed" and done["resumed_from"] == {
        key: stopped["interrupted_at"][key] for key in ("epoch", "step")
    }
    assert results(done) == results(record(tmp_path / "reference"))
    ours, theirs = weights(out), weights(tmp_path / "reference")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
