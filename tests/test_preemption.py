"""SIGTERM / SIGUSR1 / SIGUSR2 (SLURM's warning before preemption or the time limit): the run
finishes its step, writes a checkpoint there, records `interrupted_at` and exits with
PREEMPTED_EXIT; the rerun resumes at that step and ends bit-identical. Handlers installed before
normbench's (submitit's) are called after the checkpoint and restored after the run. The soak test:
a sweep hit by random SIGKILLs and SIGTERMs ends exactly like an uninterrupted one."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from test_faults import (
    Child,
    assert_same_sweep,
    in_process,
    leftovers,
    one_thread,  # noqa: F401  (autouse: one torch thread here and in forked children)
    only_record,
    results,
    run_child,
    wait_until,
)

from normbench import runner
from normbench.config import compose
from normbench.epochs import EpochLoop
from normbench.midepoch import MidEpochCheckpoints
from normbench.preemption import PREEMPTED_EXIT, Preempted
from normbench.records import RunRecord, Status
from normbench.runs import load_checkpoint

# 2,048 images of batch 16: 128 steps (about half a second) per epoch, to be signalled in one
RUN = [
    "data=synthetic",
    "data.noise=4",
    "data.train_size=2048",
    "data.test_size=64",
    "epochs=2",
    "batch=16",
    "lr=1.6",
    "log.progress=plain",
]
# in-process runs: 16 steps per epoch
SMALL = [*RUN[:2], "data.train_size=256", *RUN[3:]]


def train_here(overrides: list[str], out) -> dict:
    cfg, choices = compose([*overrides, f"out={out}"], with_choices=True)
    return runner.run(cfg, choices, overrides).record.to_dict()


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, dict]:
    """The uninterrupted records of RUN and SMALL."""
    return {
        name: train_here(overrides, tmp_path_factory.mktemp(name))
        for name, overrides in (("run", RUN), ("small", SMALL))
    }


def checkpoint_place(run_dir) -> tuple[int, int]:
    """(epoch, optimizer steps done in it) of the run's checkpoint, as interrupted_at says it."""
    state = load_checkpoint(run_dir / "checkpoint.pt")["state"]
    if state["position"]:
        return state["epoch"] + 1, state["position"]["done"]
    return state["epoch"], RunRecord.load(run_dir).setup["steps_per_epoch"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_mid_epoch_checkpoints_that_step_exits_75_and_the_rerun_resumes_there(
    tmp_path, references, signum
):
    out, logs = tmp_path / "out", tmp_path / "logs"
    command = ["run", *RUN, f"out={out}"]
    child = Child(command, logs)
    wait_until(lambda: (only_record(out) or {}).get("status") == "running", child)
    time.sleep(random.Random(signum).uniform(0.3, 0.8))  # into epoch 1 or 2
    child.signal(signum)
    signalled = time.monotonic()
    code, _, stderr = child.finish()
    assert code == PREEMPTED_EXIT, stderr
    assert time.monotonic() - signalled < 5, "it stops after the current step"
    record = only_record(out)
    run_dir = out / "runs" / record["run_key"]
    epoch, step = checkpoint_place(run_dir)
    assert record["status"] == "interrupted"
    assert record["interrupted_at"] == {
        "epoch": epoch,
        "step": step,
        "signal": signal.Signals(signum).name,
    }
    assert stderr.strip().splitlines()[-1] == (
        f"stopped by {signal.Signals(signum).name} after step {step} of epoch {epoch}: "
        f"checkpoint written (exit 75); rerun the same command to resume there"
    )
    assert "Traceback" not in stderr and leftovers(out) == []

    code, _, stderr = run_child(command, logs)
    assert code == 0, stderr
    record = only_record(out)
    assert record["status"] == "completed" and "interrupted_at" not in record
    assert record["resumed_from"] == {"epoch": epoch, "step": step}
    reference = references["run"]
    assert results(record["history"]) == results(reference["history"])
    assert record["metrics"] == reference["metrics"]


def signal_at(monkeypatch, epoch: int, done: int, signum: int) -> None:
    """This process sends itself `signum` after optimizer step `done` of `epoch`, before the
    checkpoint decision reads the flag (os.kill runs the handler before it returns)."""
    real = MidEpochCheckpoints.after_step
    epochs = {"seen": 0}

    def after_step(self, step: int, steps: int):
        epochs["seen"] += step == 1
        if epochs["seen"] == epoch and step == done and not self.stop.requested:
            os.kill(os.getpid(), signum)
        return real(self, step, steps)

    monkeypatch.setattr(MidEpochCheckpoints, "after_step", after_step)


@pytest.fixture
def previous_handlers():
    """Fake handlers installed before normbench's (as submitit installs its own), recording what
    the run's files said when they were called."""
    calls = []
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}

    def handler(signum, frame):
        assert frame is None
        (run_dir,) = handler.out.glob("runs/*")
        calls.append((signum, RunRecord.load(run_dir).status, checkpoint_place(run_dir)))

    for signum in saved:
        signal.signal(signum, handler)
    handler.calls = calls
    yield handler
    for signum, old in saved.items():
        signal.signal(signum, old)


@pytest.mark.parametrize("done", [5, 16])  # mid-epoch; the epoch's last step
def test_the_previous_handler_is_called_after_the_checkpoint_and_restored_after_the_run(
    tmp_path, monkeypatch, references, previous_handlers, done
):
    out = previous_handlers.out = tmp_path / "out"
    signal_at(monkeypatch, 1, done, signal.SIGUSR1)
    real_save = EpochLoop._save_checkpoint

    def save_while_signalled_again(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal while the checkpoint is written
        real_save(self, *args, **kwargs)

    monkeypatch.setattr(EpochLoop, "_save_checkpoint", save_while_signalled_again)
    with pytest.raises(Preempted) as stopped:
        train_here(SMALL, out)
    assert stopped.value.where() == {"epoch": 1, "step": done, "signal": "SIGUSR1"}
    # called once, for the signal that stopped the run, after its checkpoint and record
    assert previous_handlers.calls == [(signal.SIGUSR1, Status.INTERRUPTED, (1, done))]
    assert signal.getsignal(signal.SIGUSR1) is previous_handlers
    assert signal.getsignal(signal.SIGTERM) is previous_handlers

    monkeypatch.undo()
    record = train_here(SMALL, out)
    assert record["resumed_from"] == {"epoch": 1, "step": done}
    assert results(record["history"]) == results(references["small"]["history"])


def test_a_previous_handler_that_exits_ends_the_process_like_submitits_requeue(
    tmp_path, monkeypatch
):
    def requeue_and_exit(signum, frame):
        raise SystemExit(-1)  # what submitit's checkpoint_and_try_requeue ends with

    saved = signal.signal(signal.SIGUSR1, requeue_and_exit)
    try:
        signal_at(monkeypatch, 2, 3, signal.SIGUSR1)
        with pytest.raises(SystemExit):
            train_here(SMALL, tmp_path)
        assert signal.getsignal(signal.SIGUSR1) is requeue_and_exit
    finally:
        signal.signal(signal.SIGUSR1, saved)
    (run_dir,) = tmp_path.glob("runs/*")
    assert checkpoint_place(run_dir) == (2, 3)
    assert RunRecord.load(run_dir).interrupted_at == {"epoch": 2, "step": 3, "signal": "SIGUSR1"}


def test_a_signal_after_the_last_step_completes_the_run_then_stops(tmp_path, monkeypatch):
    real_finish = EpochLoop._finish

    def finish_while_signalled(self, fast):
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. during the final evaluation
        real_finish(self, fast)

    monkeypatch.setattr(EpochLoop, "_finish", finish_while_signalled)
    with pytest.raises(Preempted) as stopped:
        train_here(SMALL, tmp_path)
    assert stopped.value.epoch is None
    (run_dir,) = tmp_path.glob("runs/*")
    assert RunRecord.load(run_dir).status is Status.COMPLETED


# ---------------------------------------------------------------- soak

# 20 cells of 2 epochs of 8 steps, a checkpoint every 3 steps
SOAK = [
    "norm=bn,gn",
    "batch=8,16",
    "seed=0,1,2,3,4",
    "data=synthetic",
    "data.noise=4",
    "data.train_size=128",
    "data.test_size=32",
    "epochs=2",
    "lr=1.6",
    "log.progress=plain",
    "checkpoint.every_steps=3",
    "--name",
    "grid",
]
SOAK_SEED = int(os.environ.get("NORMBENCH_SOAK_SEED", "17"))  # replay a failure with its seed


@pytest.mark.slow
def test_soak_a_sweep_hit_by_random_sigkills_and_sigterms_ends_as_the_uninterrupted_one(
    tmp_path,
):
    reference = tmp_path / "reference"
    in_process("sweep", *SOAK, f"out={reference}")
    records = {
        p.parent.name: RunRecord.read(p).to_dict() for p in reference.glob("runs/*/record.json")
    }
    assert len(records) == 20

    rng = random.Random(SOAK_SEED)
    out, logs = tmp_path / "out", tmp_path / "logs"
    args = ["sweep", *SOAK, f"out={out}"]
    hits: list[tuple[str, float, int | None]] = []
    while len(hits) < 10:
        started = time.time_ns()
        child = Child(args, logs)
        # once it trains (planning 20 cells takes a while), at a random moment of the next second
        while child.poll() is None and not any(
            p.stat().st_mtime_ns > started for p in out.glob("runs/*/*")
        ):
            time.sleep(0.005)
        delay, signum = rng.uniform(0.0, 1.0), rng.choice([signal.SIGKILL, signal.SIGTERM])
        time.sleep(delay)
        if child.poll() is not None:
            pytest.fail(f"the sweep ended before hit {len(hits) + 1}: {child.finish()}")
        child.signal(signum)
        code, _, stderr = child.finish()
        # SIGTERM: stopped at a checkpoint (75), or outside a run by the default action
        assert code in (-signal.SIGKILL, -signal.SIGTERM, PREEMPTED_EXIT), (code, stderr)
        assert "Traceback" not in stderr, stderr
        hits.append((signal.Signals(signum).name, round(delay, 3), code))
    print(f"soak seed {SOAK_SEED}: (signal, delay s, exit) {hits}")  # shown with -s
    code, stdout, stderr = run_child(args, logs)
    assert code == 0, stderr
    assert "20 cells:" in stdout
    assert sum(code == PREEMPTED_EXIT for _, _, code in hits) >= 1, hits
    assert_same_sweep(out, (reference, records))
