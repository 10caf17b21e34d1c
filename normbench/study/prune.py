"""`normbench prune DIR`: find, and with --yes remove, the folders under an out folder that hold no
result.

What it looks at: every run folder (a folder directly inside a folder named `runs`, at or under DIR)
and every sweep folder (directly inside a folder named `sweeps`). Removable are:

- an unfinished run: its record.json says running, interrupted or failed (a killed, stopped or
  crashed run; an interrupted one could still be resumed by rerunning its command);
- an orphan run folder: no record.json, or one that is not a readable run record (a run killed
  before it wrote its first record, or a folder something else left in `runs/`);
- an orphan sweep folder: no sweep.yaml (a sweep stopped before it stored its grid; tables and
  figures read a sweep folder through its sweep.yaml only).

Never removed: completed and diverged runs (both are results), and a run folder whose claim
(`.lock`, normbench.files.claim_run) a live process holds, whatever its record says. Removal takes
the claim itself and reads the record again under it, so a run that started or finished since the
listing is kept.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..files import LOCK, RunBusy, claim_run
from ..records import RECORD_FILE, NotARunRecord, RunRecord
from .run_records import SWEEP_FILE

NO_RECORD = "no record"
NO_SWEEP_FILE = f"no {SWEEP_FILE}"


@dataclass(frozen=True)
class Prunable:
    """A folder prune would remove, and why (a run status, NO_RECORD or NO_SWEEP_FILE)."""

    folder: Path
    why: str
    size: int  # bytes

    @property
    def is_run(self) -> bool:
        return self.why != NO_SWEEP_FILE


@dataclass
class Found:
    """What prune found under a folder."""

    removable: list[Prunable] = field(default_factory=list)
    busy: list[Path] = field(default_factory=list)  # unfinished runs a live process trains
    kept: int = 0  # completed and diverged runs, and sweep folders with a sweep.yaml


def find_prunable(path: Path | str) -> Found:
    """Every removable folder under PATH (see the module's docstring); writes nothing."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give an out folder, e.g. outputs")
    runs, sweeps = _containers(root, "runs"), _containers(root, "sweeps")
    if not runs and not sweeps:
        raise UserError(
            f"no runs/ or sweeps/ folder at or under {root}; give an out folder (the `out` of "
            "your runs, e.g. outputs)"
        )
    found = Found()
    for folder in _children(runs):
        if held_elsewhere(folder):
            found.busy.append(folder)
            continue
        why = run_problem(folder)
        if why is None:
            found.kept += 1
        else:
            found.removable.append(Prunable(folder, why, folder_size(folder)))
    for folder in _children(sweeps):
        if (folder / SWEEP_FILE).is_file():
            found.kept += 1
        else:
            found.removable.append(Prunable(folder, NO_SWEEP_FILE, folder_size(folder)))
    return found


def _containers(root: Path, name: str) -> list[Path]:
    """The folders called `name` at or under root, outside run folders' own contents."""
    candidates = [root] if root.name == name else []
    candidates += sorted(p for p in root.rglob(name) if p.is_dir() and p.parent.name != "runs")
    return candidates


def _children(containers: list[Path]) -> list[Path]:
    return [child for folder in containers for child in sorted(folder.iterdir()) if child.is_dir()]


def run_problem(folder: Path) -> str | None:
    """Why a run folder holds no result (its unfinished status, or NO_RECORD); None for a completed
    or diverged run."""
    try:
        record = RunRecord.read(folder / RECORD_FILE)
    except (OSError, ValueError, NotARunRecord):  # missing, truncated, not JSON, not a run record
        return NO_RECORD
    return None if record.status.final else record.status.value


def held_elsewhere(folder: Path) -> bool:
    """True while a live process holds the run's claim. Probes the `.lock` without creating it: a
    run that trains always has one (files.claim_run), and the kernel drops the lock of a dead
    process."""
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock, if it got one
    return False


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def remove(removable: list[Prunable]) -> tuple[list[Path], list[Path]]:
    """Remove the folders found, each checked again first: (removed, kept because a process now
    trains or finished it)."""
    removed, kept = [], []
    for item in removable:
        if not item.is_run:  # a sweep that stored its grid since the listing is kept
            if (item.folder / SWEEP_FILE).is_file():
                kept.append(item.folder)
            else:
                shutil.rmtree(item.folder, ignore_errors=True)
                removed.append(item.folder)
            continue
        try:
            claim = claim_run(item.folder)
        except RunBusy:
            kept.append(item.folder)
            continue
        try:
            if run_problem(item.folder) is None:  # completed since the listing: a result now
                kept.append(item.folder)
                continue
            shutil.rmtree(item.folder)
            removed.append(item.folder)
        finally:
            claim.release()
    return removed, kept


def prune_lines(found: Found) -> list[str]:
    """What prune found, one line per folder, then a summary line."""
    lines = [f"{item.why:<12} {item.folder}  ({_megabytes(item.size)})" for item in found.removable]
    lines += [f"{'busy':<12} {folder}  (a live process trains it: kept)" for folder in found.busy]
    total = sum(item.size for item in found.removable)
    lines.append(
        f"{len(found.removable)} folder(s) to remove ({_megabytes(total)}); "
        f"{found.kept} kept (completed or diverged runs, sweeps with a {SWEEP_FILE})"
    )
    return lines


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"
