"""Run directories: the deterministic run key, atomic record/checkpoint writes, and environment facts."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import secrets
import signal
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from . import __version__, distributed
from .config import IDENTITY_KEYS, changes_results, compose, flatten
from .errors import UserError

RECORD = "record.json"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
LOCK = ".lock"
FAULT_ENV = "NORMBENCH_FAULT"  # test-only fault injection, see _fault_point


def non_default_settings(cfg: DictConfig, choices: dict[str, str], user_config_dir: str | None = None) -> dict[str, Any]:
    """Settings that differ from the defaults of the chosen backbone/norm/data/optim configs, leaving out
    the keys already in the run key and those that never change results (out, device, log)."""
    baseline = flatten(compose([f"{group}={option}" for group, option in choices.items()], user_config_dir))
    skip = set(IDENTITY_KEYS)
    differ = {}
    for key, value in flatten(cfg).items():
        if key in skip or not changes_results(key):
            continue
        if key not in baseline or baseline[key] != value:
            differ[key] = value
    return differ


def run_key(cfg: DictConfig, differ: dict[str, Any]) -> str:
    """`<data>-<backbone>-<norm>-b<batch>x<accum>-s<seed>`, `-w<world_size>` for a torchrun run of more than
    one process (a different experiment: its SGD batch is batch * accum * world_size), plus a short hash of
    the non-default settings."""
    key = f"{cfg.data.name}-{cfg.backbone.name}-{cfg.norm.name}-b{cfg.batch}x{cfg.accum}-s{cfg.seed}"
    if distributed.world_size() > 1:
        key += f"-w{distributed.world_size()}"
    if differ:
        digest = hashlib.sha1(json.dumps(differ, sort_keys=True, default=str).encode()).hexdigest()[:8]
        key += f"-{digest}"
    return key


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers see old or new, never half.
    In a torchrun run only rank 0 writes (records, checkpoints); the other processes write nothing."""
    if not distributed.is_main():
        return
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
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's record, or None when there is none or it cannot be parsed (e.g. cut short by a full disk)."""
    try:
        record = json.loads((run_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "status" in record else None


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint's state (tensors and plain Python only: weights_only=True), or None if unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file (or one holding arbitrary pickled objects): restart, say so
        return None
    return state if isinstance(state, dict) and isinstance(state.get("identity"), dict) else None


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "normbench": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


class RunBusy(UserError):
    """Another live process is training this run (e.g. a second sweep on the same out folder)."""


class RunClaim:
    """This process's exclusive claim on a run dir: a non-blocking `flock` on `<run_dir>/.lock`, held while the
    run trains. The kernel drops the lock when the process dies, SIGKILL included, so a lock file left by a
    killed run never blocks the next one. `release` deletes the file, so a finished run dir holds no lock."""

    def __init__(self, path: Path | None = None, fd: int | None = None) -> None:
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # before unlocking: a waiter that opened this inode then sees it gone
        os.close(self.fd)
        self.fd = None

    def __del__(self) -> None:  # an exception between claim and the caller's `finally` still frees the run
        self.release()


def claim_run(run_dir: Path) -> RunClaim:
    """Claim `run_dir` for this process, or raise RunBusy naming the live process that holds it. In a torchrun
    run only rank 0 (the process that writes) claims; the others get an empty claim. Temporary files that a
    killed writer left behind (`.<name>.<pid>.<hex>.tmp`) are deleted once the claim is ours."""
    if not distributed.is_main():
        return RunClaim()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise RunBusy(f"{run_dir} is being trained by another process{f' (pid {holder})' if holder else ''}; "
                          f"skipped: let that one finish (rerunning afterwards skips or resumes the run)") from None
        try:  # the previous holder deletes the file on release: a lock on that orphaned inode claims nothing
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
    """Test-only fault injection (tests/test_faults.py): with NORMBENCH_FAULT=NAME:N this process SIGKILLs
    itself on its N-th write of a file called NAME, after the temporary file is complete and before the
    rename, as a power cut or OOM kill at the worst moment would. Unset (always, outside tests): does nothing."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, count = spec.rpartition(":")
    if name != path.name:
        return
    _fault_writes[name] = _fault_writes.get(name, 0) + 1
    if str(_fault_writes[name]) == count:
        os.kill(os.getpid(), signal.SIGKILL)
