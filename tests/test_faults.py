"""Nothing lost, nothing confusing: runs and sweeps killed (SIGKILL, also in the middle of writing a
record or a checkpoint), interrupted (SIGINT), run twice at once on one out folder, left with
corrupt files or a full disk, or diverging — afterwards every run exists once, completed, with the
numbers of an uninterrupted run.

Killed runs are real processes (`python -m normbench ...`). Every process trains with one thread (as
does this one, for the in-process references): on CPU the results are then bit-identical across
processes, so resumed runs are compared with uninterrupted ones by exact equality. (Thread count
changes float summation order, and 2 threads on this shared 2-core machine are also ~15x slower.)
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch

from normbench import cli, files, runner
from normbench.config import compose
from normbench.files import RunBusy, claim_run
from normbench.runs import load_checkpoint

# 1,024 images of batch 16: 64 steps (about 0.2 s) per epoch, long enough to be killed in the middle
# of one.
RUN = [
    "data=synthetic",
    "data.noise=4",
    "data.train_size=1024",
    "data.test_size=64",
    "epochs=4",
    "batch=16",
    "lr=1.6",
    "log.progress=plain",
]
# 4 cells of 2 epochs for the sweep tests.
GRID = [
    "norm=bn,gn",
    "batch=8,16",
    "data=synthetic",
    "data.noise=4",
    "data.train_size=256",
    "data.test_size=64",
    "epochs=2",
    "lr=1.6",
    "log.progress=plain",
    "--name",
    "grid",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop(files.FAULT_ENV, None)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # forked children inherit it
    yield
    torch.set_num_threads(threads)


class Child:
    """`normbench ARGS` in a process forked from this one: the same `cli.main()` the console script
    runs, in a process of its own that can be killed, without ~3 s of imports per process (these
    tests start about 15). stdout/stderr go to files; `fault` sets NORMBENCH_FAULT
    (normbench.files._fault_point) in the child only."""

    count = 0

    def __init__(self, args: list[str], logs: Path, fault: str | None = None) -> None:
        Child.count += 1
        logs.mkdir(parents=True, exist_ok=True)
        self.out_file, self.err_file = logs / f"{Child.count}.out", logs / f"{Child.count}.err"
        self.code: int | None = None
        sys.stdout.flush(), sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            self._child(args, fault)

    def _child(self, args: list[str], fault: str | None) -> None:
        code = 70
        try:
            for fd, path in ((1, self.out_file), (2, self.err_file)):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            # Ctrl-C raises KeyboardInterrupt
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.environ.pop(files.FAULT_ENV, None)
            if fault:
                os.environ[files.FAULT_ENV] = fault
            sys.argv = ["normbench", *args]
            try:
                cli.main()
                code = 0
            except SystemExit as exit_:
                code = (
                    exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                )
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)

    def poll(self) -> int | None:
        if self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)  # -9: killed by SIGKILL
        return self.code

    def signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def finish(self, timeout: float = 240) -> tuple[int, str, str]:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.signal(signal.SIGKILL)
                pytest.fail(f"normbench did not end in {timeout} s: {self.err_file.read_text()}")
            time.sleep(0.005)
        return self.code, self.out_file.read_text(), self.err_file.read_text()


def run_child(args: list[str], logs: Path, fault: str | None = None) -> tuple[int, str, str]:
    return Child(args, logs, fault).finish()


def wait_until(condition, child: Child, timeout: float = 120) -> None:
    """Poll `condition()` every 5 ms while `child` runs; fail with its output if it ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if child.poll() is not None:
            pytest.fail(f"process ended first: {child.finish()}")
        if time.monotonic() > deadline:
            child.signal(signal.SIGKILL)
            pytest.fail("condition not reached in time")
        time.sleep(0.005)


def only_record(out: Path) -> dict | None:
    files = list(out.glob("runs/*/record.json"))
    assert len(files) <= 1, files
    try:
        return json.loads(files[0].read_text()) if files else None
    except ValueError:  # never: records are written atomically
        pytest.fail(f"half-written record {files[0]}")


def epochs_done(out: Path) -> int:
    record = only_record(out)
    return record["metrics"]["epochs_done"] if record else 0


def results(history: list[dict]) -> list[dict]:
    """Everything of each epoch but the wall-clock time."""
    return [{k: v for k, v in entry.items() if k != "train_seconds"} for entry in history]


def leftovers(out: Path) -> list[Path]:
    """Temporary files and run locks: none may outlive the process that finishes a run."""
    return [*out.rglob(".*.tmp"), *out.rglob(files.LOCK)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    """The uninterrupted run's record (in this process, one thread)."""
    out = tmp_path_factory.mktemp("reference")
    cfg, choices = compose([*RUN, f"out={out}"], with_choices=True)
    record = runner.run(cfg, choices, RUN).record.to_dict()
    assert record["status"] == "completed"
    return record


# ---------------------------------------------------------------- one run killed or interrupted


@pytest.mark.slow
def test_sigkill_mid_epoch_then_ctrl_c_then_rerun_ends_as_the_uninterrupted_run(
    tmp_path, reference
):
    out, logs = tmp_path / "out", tmp_path / "logs"
    command = ["run", *RUN, f"out={out}"]
    killed = Child(command, logs)
    wait_until(lambda: epochs_done(out) >= 1, killed)
    killed.signal(signal.SIGKILL)
    assert killed.finish()[0] == -signal.SIGKILL
    record = only_record(out)
    assert record["status"] == "running" and 1 <= record["metrics"]["epochs_done"] < 4
    (run_dir,) = (out / "runs").iterdir()
    saved = load_checkpoint(run_dir / "checkpoint.pt")["state"]["epoch"]  # the last whole epoch

    started = time.time_ns()  # the same command again, then Ctrl-C once it trains
    interrupted = Child(command, logs)
    wait_until(lambda: (run_dir / "record.json").stat().st_mtime_ns > started, interrupted)
    time.sleep(0.02)
    interrupted.signal(signal.SIGINT)
    code, _, stderr = interrupted.finish()
    assert code == 130, stderr
    assert f"resuming {run_dir.name} after epoch {saved}" in stderr
    assert "Traceback" not in stderr
    assert only_record(out)["status"] == "interrupted"
    assert leftovers(out) == [], "a Ctrl-C'd run leaves no temporary file and no lock"
    saved = load_checkpoint(run_dir / "checkpoint.pt")["state"]["epoch"]
    assert saved < 4
    assert stderr.strip().splitlines()[-1] == (  # names the epoch the rerun resumes after
        f"interrupted: {run_dir / 'checkpoint.pt'} holds epoch {saved} of 4; rerun the same "
        f"command to resume after epoch {saved}"
    )

    code, _, stderr = run_child(command, logs)
    assert code == 0 and f"resuming {run_dir.name} after epoch {saved}" in stderr, stderr
    record = only_record(out)
    assert record["status"] == "completed"
    assert results(record["history"]) == results(reference["history"])  # bit-identical on CPU
    assert record["metrics"] == reference["metrics"]
    assert leftovers(out) == []


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_or_record_keeps_the_old_file_and_rerun_resumes(
    tmp_path, reference
):
    out, logs = tmp_path / "out", tmp_path / "logs"
    command = ["run", *RUN, f"out={out}"]
    # (fault, checkpoint epoch and record epochs_done left behind); each process resumes where the
    # last died
    for fault, checkpoint_epoch, record_epoch in [
        ("checkpoint.pt:2", 1, 1),  # killed while writing epoch 2's checkpoint: epoch 1's is whole
        # resumed, killed while writing epoch 2's record (its checkpoint is written)
        ("record.json:2", 2, 1),
        # resumed, killed while writing the final record: every epoch is checkpointed
        ("record.json:3", 4, 3),
    ]:
        code, _, stderr = run_child(command, logs, fault=fault)
        assert code == -signal.SIGKILL, stderr
        (run_dir,) = (out / "runs").iterdir()
        # the whole temporary file that never got renamed (older ones: deleted)
        (half,) = run_dir.glob(".*.tmp")
        assert half.name.startswith(f".{fault.split(':')[0]}.")
        assert load_checkpoint(run_dir / "checkpoint.pt")["state"]["epoch"] == checkpoint_epoch
        record = json.loads((run_dir / "record.json").read_text())
        assert record["status"] == "running" and record["metrics"]["epochs_done"] == record_epoch

    # nothing left to train: the record is rebuilt from the checkpoint
    code, _, stderr = run_child(command, logs)
    assert code == 0 and "after epoch 4" in stderr, stderr
    record = only_record(out)
    assert record["status"] == "completed"
    assert results(record["history"]) == results(reference["history"])
    assert leftovers(out) == [], "the rerun deletes what the killed writers left half-done"


# ---------------------------------------------------------------- sweeps


def in_process(*args: str) -> None:
    """`normbench ARGS` in this process, for module-scoped references (the `normbench` fixture is
    per test)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["normbench", *args])
        try:
            cli.main()
        except SystemExit as exit_:
            assert exit_.code in (0, None), exit_.code


@pytest.fixture(scope="module")
def sweep_reference(tmp_path_factory, one_thread) -> tuple[Path, dict[str, dict]]:
    """The uninterrupted sweep: its out folder and {run key: record}."""
    root = tmp_path_factory.mktemp("sweep_reference")
    in_process("sweep", *GRID, f"out={root}")
    return root, {
        p.parent.name: json.loads(p.read_text()) for p in (root / "runs").glob("*/record.json")
    }


def assert_same_sweep(
    out: Path, sweep_reference: tuple[Path, dict[str, dict]], tables: bool = True
) -> None:
    """Every run exactly once (the same run dirs), completed with the reference's numbers, nothing
    left over, and the sweep's tables byte-identical to the uninterrupted sweep's."""
    root, reference = sweep_reference
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(reference)
    for key, ref in reference.items():
        record = json.loads((out / "runs" / key / "record.json").read_text())
        assert record["status"] == "completed", key
        assert results(record["history"]) == results(ref["history"]), key
    for table in ("table.md", "table.csv", "table.tex") if tables else ():
        assert (out / "sweeps/grid" / table).read_text() == (
            root / "sweeps/grid" / table
        ).read_text()
    assert leftovers(out) == []


@pytest.mark.slow
def test_sweep_killed_again_and_again_ends_equal_to_the_uninterrupted_sweep(
    tmp_path, sweep_reference
):
    out, logs = tmp_path / "out", tmp_path / "logs"
    args = ["sweep", *GRID, f"out={out}"]
    # killed while writing cell 2's first checkpoint, then at a random time, then while writing a
    # record
    code, _, stderr = run_child(args, logs, fault="checkpoint.pt:3")
    assert code == -signal.SIGKILL, stderr
    started = time.time_ns()
    child = Child(args, logs)
    while child.poll() is None and not any(
        p.stat().st_mtime_ns > started for p in out.glob("runs/*/record.json")
    ):
        # until this process writes its first record (or ends: nothing left to do)
        time.sleep(0.005)
    time.sleep(random.Random(7).uniform(0.0, 0.5))
    child.signal(signal.SIGKILL)
    child.finish()
    # killed, or done already if the random kill came late
    run_child(args, logs, fault="record.json:2")
    code, stdout, stderr = run_child(args, logs)
    assert code == 0, stderr
    assert "4 cells:" in stdout
    assert_same_sweep(out, sweep_reference)


@pytest.mark.slow
def test_two_sweeps_at_once_on_one_folder_train_each_run_once(normbench, tmp_path, sweep_reference):
    out = tmp_path / "out"
    # started together
    sweeps = [Child(["sweep", *GRID, f"out={out}"], tmp_path / "logs") for _ in range(2)]
    trained = Counter()
    for code, stdout, stderr in (sweep.finish() for sweep in sweeps):
        assert "Traceback" not in stderr, stderr
        # a sweep finishes (0) or, meeting a run that the other sweep holds, says so in one line
        assert code == 0 or (
            code == 2 and "another process" in stderr and stderr.count("\n") == 1
        ), (code, stderr)
        trained.update(re.findall(r"^run (\S+): ", stdout, flags=re.MULTILINE))
    assert trained == Counter(list(sweep_reference[1])), (
        "every run trained by exactly one of the two sweeps, once"
    )
    # records: whichever sweep ended last wrote the tables
    assert_same_sweep(out, sweep_reference, tables=False)
    table = normbench("table", str(out / "sweeps/grid"))
    assert (
        table.code == 0 and table.out == (sweep_reference[0] / "sweeps/grid/table.md").read_text()
    )


def test_a_run_claimed_by_a_live_process_is_skipped_and_freed_when_that_process_dies(
    normbench, tmp_path
):
    args = [*RUN, "epochs=1", "data.train_size=64"]
    first = normbench("run", *args, out=tmp_path / "probe")  # finds the run key
    (probe,) = (tmp_path / "probe" / "runs").iterdir()
    run_dir = tmp_path / "out" / "runs" / probe.name
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from normbench.files import claim_run; "
            "claim = claim_run(Path(sys.argv[1])); print('held', flush=True); time.sleep(120)",
            str(run_dir),
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = normbench("run", *args, out=tmp_path / "out")
        assert busy.code == 2 and busy.err.count("\n") == 1, busy.err
        assert f"being trained by another process (pid {holder.pid})" in busy.err
        assert not (run_dir / "record.json").exists(), "a busy run's files are not touched"
        with pytest.raises(RunBusy):
            claim_run(run_dir)
        swept = normbench("sweep", *args, "norm=bn,gn", f"out={tmp_path / 'out'}")
        assert swept.code == 0 and "Traceback" not in swept.err and "another process" in swept.err
        assert (
            "2 cells: 1 completed, 0 skipped (already completed), 0 diverged, 0 failed, 1 busy"
            in swept.out
        )
        # the busy cell is left alone, the other one trained
        assert not (run_dir / "record.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # a killed holder leaves its lock file, but the kernel freed the lock
    assert (run_dir / files.LOCK).exists()
    result = normbench("run", *args, out=tmp_path / "out")
    assert result.code == 0, result.err
    assert results(json.loads((run_dir / "record.json").read_text())["history"]) == results(
        first.record()["history"]
    )
    assert leftovers(tmp_path / "out") == []


def test_claims_exclude_each_other_and_release_removes_the_lock(tmp_path):
    claim = claim_run(tmp_path / "run")
    assert (tmp_path / "run" / files.LOCK).read_text() == f"{os.getpid()}\n"
    # a second open file description conflicts too
    with pytest.raises(RunBusy, match=f"pid {os.getpid()}"):
        claim_run(tmp_path / "run")
    claim.release()
    assert not (tmp_path / "run" / files.LOCK).exists()
    again = claim_run(tmp_path / "run")
    again.release()


# ---------------------------------------------------------------- corrupt files, full disk,
# divergence


def _md_cell(table: str, norm: str, column: int) -> str:
    line = next(line for line in table.splitlines() if line.startswith(f"| {norm} "))
    # a table of several metrics has a metric column after the row label (test_error's sub-row)
    return line.split("|")[(3 if "| metric |" in table else 2) + column].strip()


def test_corrupt_records_and_checkpoints_are_reported_and_redone_by_the_sweep(
    normbench, tmp_path, sweep_reference
):
    out = tmp_path / "out"
    # a finished sweep (records name the reference's out: no matter)
    shutil.copytree(sweep_reference[0], out)
    reference = sweep_reference[1]
    dirs = {
        (r["config"]["norm"]["name"], r["config"]["batch"]): out / "runs" / key
        for key, r in reference.items()
    }
    # bn@16: record cut in half (full disk) after the run completed
    record = dirs["bn", 16] / "record.json"
    record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])
    # gn@16: killed mid-run with a truncated checkpoint
    killed = json.loads((dirs["gn", 16] / "record.json").read_text())
    killed.update(status="running")
    (dirs["gn", 16] / "record.json").write_text(json.dumps(killed))
    checkpoint = dirs["gn", 16] / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    # gn@8: record overwritten with garbage, no checkpoint
    (dirs["gn", 8] / "record.json").write_bytes(b"\x00" * 64)
    (dirs["gn", 8] / "checkpoint.pt").unlink()

    # before the rerun: warned about, never a wrong number
    table = normbench("table", str(out / "runs"))
    assert table.code == 0
    warnings = table.err.strip().splitlines()
    assert len(warnings) == 2 and all(
        w.startswith("warning: skipping unreadable") for w in warnings
    )
    # batch 16: unfinished, lost
    assert _md_cell(table.out, "bn", 0) == "–" and _md_cell(table.out, "gn", 0) == "–"
    assert _md_cell(table.out, "gn", 1) == "–"
    assert "not counted (running)" in table.out

    result = normbench("sweep", *GRID, f"out={out}")
    assert result.code == 0, result.err
    assert "4 cells: 3 completed, 1 skipped" in result.out
    lines = result.err.strip().splitlines()
    assert sum(f"{dirs['bn', 16] / 'record.json'} is unreadable" in line for line in lines) == 1
    assert sum(f"{dirs['gn', 8] / 'record.json'} is unreadable" in line for line in lines) == 1
    assert sum(f"{checkpoint} is unreadable" in line for line in lines) == 1
    assert_same_sweep(out, sweep_reference)


def test_a_full_disk_fails_one_cell_and_the_rerun_redoes_it(
    normbench, tmp_path, monkeypatch, sweep_reference
):
    out = tmp_path / "out"
    real_fsync = os.fsync
    failures = []

    def full_disk_for_gn_at_8(fd: int) -> None:
        """ENOSPC for every write into the gn batch-8 run dir after its config.yaml and first
        record."""
        target = os.readlink(f"/proc/self/fd/{fd}")
        if "-gn-b8x1-" in target:
            failures.append(target)
            if len(failures) > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    # two of the reference's cells, the full disk hitting the first
    grid = ["norm=gn,bn", "batch=8", *GRID[2:]]
    monkeypatch.setattr(os, "fsync", full_disk_for_gn_at_8)
    result = normbench("sweep", *grid, f"out={out}")
    assert result.code == 0, result.err
    assert "2 cells: 1 completed, 0 skipped (already completed), 0 diverged, 1 failed" in result.out
    assert "failed: norm=gn: OSError: [Errno 28] No space left on device" in result.err
    (gn8,) = (out / "runs").glob("*-gn-b8x1-*")
    # the last record that fit
    assert json.loads((gn8 / "record.json").read_text())["status"] == "running"
    assert list(gn8.glob(".*.tmp")) == [], "a failed write removes its temporary file"
    table = (out / "sweeps/grid/table.md").read_text()
    assert _md_cell(table, "gn", 0) == "–" and "not counted (running)" in table  # never a number

    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed
    again = normbench("sweep", *grid, f"out={out}")
    assert again.code == 0 and "2 cells: 1 completed, 1 skipped" in again.out, again.out
    for run_dir in (out / "runs").iterdir():
        record = json.loads((run_dir / "record.json").read_text())
        assert record["status"] == "completed"
        assert results(record["history"]) == results(sweep_reference[1][run_dir.name]["history"])
    assert leftovers(out) == []


def test_nan_loss_ends_the_run_as_diverged_at_its_epoch_and_the_sweep_goes_on(normbench, tmp_path):
    """lr x 1e12 from the middle of training (step schedule, milestone 0.5 of 2 epochs): diverges in
    epoch 2."""
    out = tmp_path / "out"
    result = normbench(
        "sweep",
        "optim.gamma=1e12,0.1",
        "optim.schedule=step",
        "optim.milestones=[0.5]",
        # GRID without the norm/batch sweep
        *GRID[2:-2],
        "norm=none",
        "batch=16",
        f"out={out}",
    )
    assert result.code == 0, result.err
    assert "2 cells: 1 completed, 0 skipped (already completed), 1 diverged, 0 failed" in result.out
    assert "non-finite at epoch 2" in result.err
    records = {
        r["config"]["optim"]["gamma"]: r
        for r in (json.loads(p.read_text()) for p in (out / "runs").glob("*/record.json"))
    }
    diverged, fine = records[1e12], records[0.1]
    assert diverged["status"] == "diverged" and diverged["diverged_at"]["epoch"] == 2
    assert [h["epoch"] for h in diverged["history"]] == [1]
    assert fine["status"] == "completed" and len(fine["history"]) == 2
    (folder,) = (out / "sweeps").iterdir()
    row = next(
        line
        for line in (folder / "table.md").read_text().splitlines()
        if line.startswith("| none ")
    )
    cells = [c.strip().strip("*") for c in row.split("|")[2:-1]]
    # columns: gamma 0.1, 1e12 (after a metric column when the runs hold test_error_batch too);
    # a run of under 100 SGD steps is marked ‡
    assert cells[-2:] == [f"{fine['metrics']['test_error']:.2f}‡", "div"]
