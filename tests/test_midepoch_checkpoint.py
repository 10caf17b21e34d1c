"""Checkpoints inside an epoch (checkpoint.every_steps / every_minutes): writing them changes no
number, a run SIGKILLed between two of them (or while writing one) resumes at the last whole one's
step and ends bit-identical to the uninterrupted run (CPU, one thread), and the decision to write
one costs no collective in a data-parallel run except at agreement steps."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest
import test_faults as faults
import torch

from normbench import runner
from normbench.config import compose
from normbench.midepoch import MidEpochCheckpoints
from normbench.preemption import StopRequest
from normbench.runs import load_checkpoint

# 1,024 images of batch 16: 64 steps per epoch, a checkpoint every 8 of them
RUN = [
    "data=synthetic",
    "data.noise=4",
    "data.train_size=1024",
    "data.test_size=64",
    "epochs=2",
    "batch=16",
    "lr=1.6",
    "log.progress=plain",
]
EVERY_8 = "checkpoint.every_steps=8"
one_thread = faults.one_thread  # autouse: one torch thread here and in forked children
Child, results, only_record, leftovers = (
    faults.Child,
    faults.results,
    faults.only_record,
    faults.leftovers,
)


def train_here(out, *extra: str) -> dict:
    cfg, choices = compose([*RUN, *extra, f"out={out}"], with_choices=True)
    return runner.run(cfg, choices, [*RUN, *extra]).record.to_dict()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run's record, without mid-epoch checkpoints."""
    record = train_here(tmp_path_factory.mktemp("reference"))
    assert record["status"] == "completed"
    return record


def saved_position(run_dir) -> tuple[int, int | None]:
    """(epoch done, steps done in the next epoch or None) of the run's checkpoint."""
    state = load_checkpoint(run_dir / "checkpoint.pt")["state"]
    return state["epoch"], (state["position"] or {}).get("done")


def test_mid_epoch_checkpoints_change_no_number_and_keep_the_run_key(tmp_path, reference):
    record = train_here(tmp_path, EVERY_8, "checkpoint.every_minutes=0")
    assert record["run_key"] == reference["run_key"]  # checkpoint.* never changes results
    assert results(record["history"]) == results(reference["history"])
    assert record["metrics"] == reference["metrics"]


@pytest.mark.slow
def test_sigkill_between_two_mid_epoch_checkpoints_resumes_at_the_last_ones_step(
    tmp_path, reference
):
    out, logs = tmp_path / "out", tmp_path / "logs"
    command = ["run", *RUN, EVERY_8, f"out={out}"]
    killed = Child(command, logs)

    def past_a_mid_epoch_checkpoint_of_epoch_2() -> bool:
        record = only_record(out)
        if record is None or not (out / "runs" / record["run_key"] / "checkpoint.pt").exists():
            return False
        epoch, done = saved_position(out / "runs" / record["run_key"])
        return epoch == 1 and done is not None and done >= 16

    faults.wait_until(past_a_mid_epoch_checkpoint_of_epoch_2, killed)
    killed.signal(signal.SIGKILL)
    assert killed.finish()[0] == -signal.SIGKILL
    (run_dir,) = (out / "runs").iterdir()
    epoch, done = saved_position(run_dir)
    assert done is not None and done % 8 == 0, "the last mid-epoch checkpoint is whole"

    code, _, stderr = faults.run_child(command, logs)
    assert code == 0, stderr
    assert f"resuming {run_dir.name} in epoch {epoch + 1} after step {done}" in stderr
    record = only_record(out)
    assert record["status"] == "completed"
    assert record["resumed_from"] == {"epoch": epoch + 1, "step": done}
    assert results(record["history"]) == results(reference["history"])  # bit-identical
    assert record["metrics"] == reference["metrics"]
    assert saved_position(run_dir) == (2, None), "the last checkpoint is the last epoch's"
    assert leftovers(out) == []


@pytest.mark.slow
def test_sigkill_while_writing_a_mid_epoch_checkpoint_resumes_from_the_one_before(
    tmp_path, reference
):
    out, logs = tmp_path / "out", tmp_path / "logs"
    command = ["run", *RUN, EVERY_8, f"out={out}"]
    # epoch 1 writes 7 mid-epoch checkpoints (steps 8..56) and its epoch checkpoint (8th write);
    # the 11th write is epoch 2's at step 24: killed before its rename, step 16's is kept
    code, _, stderr = faults.run_child(command, logs, fault="checkpoint.pt:11")
    assert code == -signal.SIGKILL, stderr
    (run_dir,) = (out / "runs").iterdir()
    (half,) = run_dir.glob(".*.tmp")
    assert half.name.startswith(".checkpoint.pt.")
    assert saved_position(run_dir) == (1, 16)

    code, _, stderr = faults.run_child(command, logs)
    assert code == 0, stderr
    assert f"resuming {run_dir.name} in epoch 2 after step 16" in stderr
    record = only_record(out)
    assert results(record["history"]) == results(reference["history"])
    assert record["metrics"] == reference["metrics"]
    assert leftovers(out) == []


class CountingSession:
    """A two-process Session stand-in that counts its all-reduces."""

    world_size, device = 2, torch.device("cpu")

    def __init__(self) -> None:
        self.reductions = 0

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        self.reductions += 1
        return tensor / 2  # the other process: all flags clear


def test_a_data_parallel_run_agrees_on_time_and_signals_only_every_log_every_steps():
    session, stop = CountingSession(), StopRequest()
    cfg = SimpleNamespace(
        checkpoint=SimpleNamespace(every_minutes=0, every_steps=5),
        log=SimpleNamespace(every_steps=4),
    )
    checkpoints = MidEpochCheckpoints.from_config(cfg, session, stop)
    decisions = [checkpoints.after_step(done, 20) for done in range(1, 21)]
    assert [done for done, (write, _) in enumerate(decisions, 1) if write] == [5, 10, 15]
    assert session.reductions == 4, "steps 4, 8, 12, 16 (not 20: the epoch's end)"

    stop.handle(signal.SIGTERM, None)  # this process got the signal: stop at the next agreement
    assert checkpoints.after_step(6, 20) == (False, False)
    assert checkpoints.after_step(8, 20) == (True, True)
    assert checkpoints.stop_now()


def test_time_based_checkpoints_come_after_every_minutes(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("normbench.midepoch.time.monotonic", lambda: clock[0])
    session = SimpleNamespace(world_size=1)
    cfg = SimpleNamespace(
        checkpoint=SimpleNamespace(every_minutes=10, every_steps=0),
        log=SimpleNamespace(every_steps=50),
    )
    checkpoints = MidEpochCheckpoints.from_config(cfg, session, StopRequest())
    checkpoints.written()  # e.g. the run's start
    clock[0] += 599
    assert checkpoints.after_step(3, 100) == (False, False)
    clock[0] += 1
    assert checkpoints.after_step(4, 100) == (True, False)
    checkpoints.written()
    assert checkpoints.after_step(5, 100) == (False, False)
    clock[0] += 3600
    assert checkpoints.after_step(100, 100) == (False, False), "the epoch checkpoint follows"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("checkpoint.every_steps=-1", "checkpoint.every_steps"),
        ("checkpoint.every_minutes=-5", "checkpoint.every_minutes"),
        ("checkpoint.every_minutes=often", "checkpoint.every_minutes"),
    ],
)
def test_bad_checkpoint_settings_are_one_line_and_write_nothing(normbench, setting, message):
    result = normbench("run", *RUN, "epochs=1", setting)
    assert result.code == 2 and result.err.count("\n") == 1 and message in result.err, result.err
    assert not result.root.exists()
