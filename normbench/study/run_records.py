"""Run records on disk, as tables, figures, `--where` and `prune` read them: every `record.json`
under a folder (searched recursively), or the cells a sweep folder's sweep.yaml lists.

Torch-free, like normbench.records.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import ADDED_KEYS
from ..errors import UserError
from ..records import RECORD_FILE, NotARunRecord, RunRecord, Status

SWEEP_FILE = "sweep.yaml"


@dataclass
class Run:
    """One run record found on disk."""

    path: Path  # the record.json
    record: RunRecord

    @property
    def status(self) -> Status:
        return self.record.status

    def get(self, key: str) -> Any:
        value = config_value(self.record.config, key)
        return ADDED_KEYS.get(key) if value is None else value  # an older record lacks the key


def config_value(config: dict[str, Any], key: str) -> Any:
    """`batch`, `norm.groups`, or a group name (`norm` -> `norm.name`); None when the record lacks
    it."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, dict):
        return node.get("name")
    return node


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _cell_record(sweep_dir: Path, cell: dict) -> Path:
    """A sweep cell's record: in the runs folder beside the sweep (<out>/sweeps/<name> ->
    <out>/runs/<key>), so that an out folder moved or copied elsewhere (e.g. committed results)
    still reads; else where it was run."""
    beside = sweep_dir.parent.parent / "runs" / str(cell["run_key"]) / RECORD_FILE
    return beside if beside.is_file() else Path(cell["run_dir"]) / RECORD_FILE


def read_sweep_file(folder: Path) -> dict[str, Any]:
    """A sweep folder's sweep.yaml (name, overrides, cells with their run keys); an unreadable one
    is a UserError naming it."""
    sweep_file = folder / SWEEP_FILE
    try:
        summary = yaml.safe_load(sweep_file.read_text())
        if not isinstance(summary, dict) or not isinstance(summary.get("cells", []), list):
            raise TypeError("not a mapping with a list of cells")
        return summary
    except (OSError, ValueError, TypeError, yaml.YAMLError) as error:
        raise UserError(
            f"{sweep_file} is unreadable ({type(error).__name__}); point at the sweep's out "
            "folder instead (e.g. <out>/runs), or remove the sweep folder"
        ) from None


def _record_files(root: Path) -> list[Path]:
    """A sweep folder (with sweep.yaml) names its cells' run dirs; any other folder is searched
    recursively."""
    if root.is_dir() and (root / SWEEP_FILE).is_file():
        cells = read_sweep_file(root).get("cells", [])
        try:
            return [_cell_record(root, cell) for cell in cells]
        except (KeyError, TypeError) as error:
            raise UserError(
                f"{root / SWEEP_FILE} is unreadable ({type(error).__name__}); point at the "
                "sweep's out folder instead (e.g. <out>/runs)"
            ) from None
    if root.is_file() and root.name == RECORD_FILE:
        return [root]
    return sorted(root.rglob(RECORD_FILE))


def load_runs(path: Path | str) -> list[Run]:
    """Every readable record.json under PATH (searched recursively), or of the cells a sweep
    folder's sweep.yaml lists; unreadable ones are skipped with one warning line each. No records at
    all -> UserError."""
    root = Path(path)
    if not root.exists():
        raise UserError(
            f"{root} does not exist; give a sweep folder or any folder containing run dirs"
        )
    runs = [run for run in map(_read_run, _record_files(root)) if run is not None]
    if not runs:
        raise UserError(
            f"no readable run records ({RECORD_FILE}) under {root}; run `normbench run` or "
            f"`normbench sweep` first, or point at their out folder"
        )
    return runs


def _read_run(file: Path) -> Run | None:
    """The run of one record.json, or None after one warning line saying why it is skipped."""
    try:
        return Run(file, RunRecord.read(file))
    except NotARunRecord:
        warn(f"skipping {file}: not a run record (no status or config)")
    except (OSError, ValueError) as error:  # missing, truncated or not JSON
        warn(
            f"skipping unreadable {file}: {type(error).__name__}: "
            f"{str(error).splitlines()[0][:120]}"
        )
    return None
