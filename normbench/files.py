"""Files that must never be half-written or written twice: atomic writes, and the per-run claim.

Torch-free, so tables and records can use it without importing torch.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
from pathlib import Path
from typing import Any

from .errors import UserError

LOCK = ".lock"
FAULT_ENV = "NORMBENCH_FAULT"  # test-only fault injection, see _fault_point


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers see old or new,
    never half. The caller decides who writes (under torchrun: rank 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, like open()
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _fault_point(path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_bytes(
        path, (json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n").encode()
    )


class RunBusy(UserError):
    """Another live process is training this run (e.g. a second sweep on the same out folder)."""


class RunClaim:
    """This process's exclusive claim on a run dir: a non-blocking `flock` on `<run_dir>/.lock`,
    held while the run trains. The kernel drops the lock when the process dies, SIGKILL included, so
    a lock file left by a killed run never blocks the next one. `release` deletes the file, so a
    finished run dir holds no lock."""

    def __init__(self, path: Path | None = None, fd: int | None = None) -> None:
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd is None:
            return
        # before unlocking: a waiter that opened this inode then sees it gone
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None

    # an exception between claim and the caller's `finally` still frees the run
    def __del__(self) -> None:
        self.release()


def claim_run(run_dir: Path) -> RunClaim:
    """Claim `run_dir` for this process, or raise RunBusy naming the live process that holds it. In
    a torchrun run only rank 0 (the process that writes) claims: the caller decides.
    Temporary files that a killed writer left behind (`.<name>.<pid>.<hex>.tmp`) are deleted once
    the claim is ours."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise RunBusy(
                f"{run_dir} is being trained by another "
                f"process{f' (pid {holder})' if holder else ''}; skipped: let that one finish "
                "(rerunning afterwards skips or resumes the run)"
            ) from None
        # the previous holder deletes the file on release: a lock on that orphaned inode claims
        # nothing
        try:
            current = os.stat(path)
            mine = os.fstat(fd)
            if (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    for stale in run_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    return RunClaim(path, fd)


_fault_writes: dict[str, int] = {}


def _fault_point(path: Path) -> None:
    """Test-only fault injection (tests/test_faults.py): with NORMBENCH_FAULT=NAME:N this process
    SIGKILLs itself on its N-th write of a file called NAME, after the temporary file is complete
    and before the rename, as a power cut or OOM kill at the worst moment would. Unset (always,
    outside tests): does nothing."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, count = spec.rpartition(":")
    if name != path.name:
        return
    _fault_writes[name] = _fault_writes.get(name, 0) + 1
    if str(_fault_writes[name]) == count:
        os.kill(os.getpid(), signal.SIGKILL)
