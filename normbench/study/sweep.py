"""`normbench sweep`: the Cartesian grid of Hydra sweep overrides, every cell planned before any
trains, then run cell by cell in this process or through a Hydra launcher (study.launch).

The runner skips completed runs, so rerunning a sweep only does what is missing. At the end the
sweep's table (md, LaTeX, CSV) and error-vs-batch figure are written to `<out>/sweeps/<name>/` next
to a `sweep.yaml` listing the cells. The table shows test_error and, one sub-row each, those of
test_error_at_best_val, test_error_precise and test_error_batch that every completed run holds
(`--metric` chooses others); the figure draws its first metric.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from ..distributed import is_main, launched, planned_world_size
from ..errors import UserError
from .cells import Outcome, PlannedRun, prepare, train_here
from .formats import render, write_text
from .gpus import check_jobs_per_gpu
from .grid import Grid, bare_key, expand, sanitize, sweep_name
from .launch import (
    check_launcher,
    is_hydra_override,
    job_processes,
    launcher_name,
    named_launcher,
    run_launched,
)
from .metrics import check_known, parse_metrics, sweep_metrics
from .run_records import SWEEP_FILE, read_sweep_file
from .tables import build_table, load_runs, table_axes

LOG = logging.getLogger(__name__)
TABLE_FILES = {"md": "table.md", "latex": "table.tex", "csv": "table.csv"}
COUNTED = (Outcome.COMPLETED, Outcome.SKIPPED, Outcome.DIVERGED, Outcome.FAILED, Outcome.BUSY)


@dataclass
class SweepResult:
    name: str
    sweep_dir: Path
    cells: list[PlannedRun]
    metrics: list[str] | None = None  # the table's metrics; None: the default (sweep_metrics)
    counts: dict[Outcome, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        c = {outcome: self.counts.get(outcome, 0) for outcome in COUNTED}
        busy = f", {c[Outcome.BUSY]} busy (another process trains them)" if c[Outcome.BUSY] else ""
        return (
            f"{len(self.cells)} cells: {c[Outcome.COMPLETED]} completed, "
            f"{c[Outcome.SKIPPED]} skipped (already completed), {c[Outcome.DIVERGED]} diverged, "
            f"{c[Outcome.FAILED]} failed{busy}"
        )


def run_sweep(
    overrides: list[str],
    name: str | None = None,
    user_config_dir: str | None = None,
    jobs: int = 1,
    metric: str | None = None,
    jobs_per_gpu: int = 1,
) -> SweepResult:
    """Plan the whole grid, run each cell (skipping completed ones), then write the sweep folder.

    Cells run one after another in this process, or through a Hydra launcher: joblib with `jobs` >
    1, or the one named by a `hydra/launcher=...` override (submitit_slurm, submitit_local).
    KeyboardInterrupt propagates (completed cells stay done; rerunning resumes). Under torchrun
    every rank trains each cell; rank 0 reports (normbench.log) and writes the sweep folder.
    `metric`: the table's metric(s), a comma list (default: sweep_metrics). `jobs_per_gpu`: how
    many of the `jobs` local jobs may share a GPU (study.gpus).
    """
    metrics = _checked_options(overrides, jobs, metric)
    hydra_overrides = [text for text in overrides if is_hydra_override(text)]
    grid = expand([text for text in overrides if not is_hydra_override(text)], user_config_dir)
    launcher = launcher_name(hydra_overrides, jobs)
    check_jobs_per_gpu(jobs_per_gpu, launcher)
    # a submitit job of W tasks trains its cell as one W-process run, named -w<W>
    with planned_world_size(job_processes(hydra_overrides, grid.cells[0], user_config_dir)):
        cells = prepare(grid, user_config_dir)
    out = Path(cells[0].cfg.out).expanduser()
    name = folder_name(name, grid, cells, out / "sweeps")
    result = SweepResult(name, out / "sweeps" / name, cells, metrics)
    if launcher is None:
        if hydra_overrides:
            raise UserError(
                f"{hydra_overrides[0]!r}: Hydra settings apply to launched sweeps only; add "
                f"--jobs N or hydra/launcher=submitit_slurm, or drop it"
            )
        store_grid(result, grid, user_config_dir)
        _run_here(cells)
    else:
        if named_launcher(hydra_overrides) is None:  # --jobs N alone: Hydra's joblib launcher
            hydra_overrides.append(f"hydra/launcher={launcher}")
        check_launcher(launcher, hydra_overrides, cells[0].overrides, user_config_dir)
        store_grid(result, grid, user_config_dir)
        run_launched(
            cells,
            grid.overrides,
            hydra_overrides,
            launcher,
            jobs,
            result.sweep_dir,
            user_config_dir,
            jobs_per_gpu,
        )
    for cell in cells:
        result.counts[cell.outcome] = result.counts.get(cell.outcome, 0) + 1
    if is_main():  # torchrun: rank 0 writes the sweep folder
        write_outputs(result, grid, user_config_dir)
    return result


def _checked_options(overrides: list[str], jobs: int, metric: str | None) -> list[str] | None:
    """The table's metrics (None: the default), once --jobs and --metric are checked."""
    if launched() and (jobs > 1 or named_launcher(overrides)):
        raise UserError(
            "under torchrun every process trains every cell together (DDP); --jobs and Hydra "
            "launchers start separate runs: use one or the other"
        )
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: give the number of cells to train at once, 1 or more")
    metrics = None if metric is None else parse_metrics(metric)
    if metrics is not None:  # the runs are written by this version: they hold known metrics only
        check_known(metrics)
    return metrics


def folder_name(name: str | None, grid: Grid, cells: list[PlannedRun], sweeps: Path) -> str:
    """The sweep folder's name (choose_folder), said on the terminal."""
    chosen, left_out = choose_folder(name, grid, cells, sweeps)
    omitted = f" (not in the name: {', '.join(left_out)})" if left_out else ""
    LOG.info(f"sweep {chosen}{omitted}: {len(cells)} cells -> {sweeps / chosen}")
    return chosen


def choose_folder(
    name: str | None, grid: Grid, cells: list[PlannedRun], sweeps: Path
) -> tuple[str, tuple[str, ...]]:
    """The sweep folder's name and the overrides the name leaves out. A folder of that name that
    holds another grid (other run keys) is never reused: a --name is a UserError; an automatic name
    gets a hash of this grid's run keys added (the same on every rerun, which then resumes)."""
    keys = {cell.run_key for cell in cells}
    if name:
        chosen, left_out = sanitize(name), ()
        other = _other_grid(sweeps / chosen, keys)
        if other is not None:
            raise UserError(
                f"--name {name}: {sweeps / chosen} holds another sweep ({other}); give another "
                "--name, or remove that folder first"
            )
    else:
        automatic = sweep_name(grid)
        chosen, left_out = automatic.name, automatic.left_out
        if _other_grid(sweeps / chosen, keys) is not None:
            digest = hashlib.sha1(" ".join(sorted(keys)).encode()).hexdigest()[:8]
            chosen = f"{chosen}_{digest}"
            if _other_grid(sweeps / chosen, keys) is not None:
                raise UserError(f"{sweeps / chosen} holds another sweep; give --name NAME")
    return chosen, tuple(left_out)


def _other_grid(folder: Path, keys: set[str]) -> str | None:
    """The overrides of the sweep stored in `folder` when its run keys are not `keys`; None when
    the folder holds no sweep yet, or this one."""
    if not (folder / SWEEP_FILE).is_file():
        return None
    stored = read_sweep_file(folder)
    cells = stored.get("cells") or []
    if {str(cell.get("run_key")) for cell in cells if isinstance(cell, dict)} == keys:
        return None
    return " ".join(map(str, stored.get("overrides") or [])) or "another grid"


def store_grid(result: SweepResult, grid: Grid, user_config_dir: str | None) -> None:
    """Write sweep.yaml (every cell pending) before anything trains, unless it is there already: an
    interrupted sweep's folder then says which grid it holds. Under torchrun rank 0 writes."""
    if is_main() and not (result.sweep_dir / SWEEP_FILE).is_file():
        _write_summary(result, grid, user_config_dir)


def _run_here(cells: list[PlannedRun]) -> None:
    """Every cell in turn in this process; a failed or diverged cell is reported and the next one
    runs."""
    for index, cell in enumerate(cells, 1):
        LOG.info(f"[{index}/{len(cells)}] {cell.label}  ->  {cell.run_dir}")
        train_here(cell)


def write_outputs(result: SweepResult, grid: Grid, user_config_dir: str | None) -> None:
    """sweep.yaml, table.{md,tex,csv} and error_vs_batch.png in the sweep folder, from exactly this
    sweep's run records. A table or figure that cannot be made (e.g. a non-numeric column) is noted,
    not fatal."""
    folder = result.sweep_dir
    _write_summary(result, grid, user_config_dir)
    try:
        # exactly the cells sweep.yaml lists, as `normbench table <folder>` reads them
        runs = load_runs(folder)
    except UserError:
        result.notes.append("no run records to tabulate")
        return
    rows, cols = table_axes([bare_key(k) for k in grid.keys])
    try:
        metrics = result.metrics or sweep_metrics(runs)
        table = build_table(folder, metrics, rows, cols, runs=runs)
    except UserError as error:
        result.notes.append(f"no table: {error}")
        return
    for fmt, filename in TABLE_FILES.items():
        write_text(folder / filename, render(table, fmt))
    # matplotlib is deferred: it takes about a second to import, and only the figure needs it
    from .figures import DEFAULT_NAME, make_figure, save_png

    try:
        figure = make_figure(table)
    except UserError as error:
        result.notes.append(f"no figure: {error}")
        return
    save_png(figure, folder / DEFAULT_NAME)


def _write_summary(result: SweepResult, grid: Grid, user_config_dir: str | None) -> None:
    summary = _summary(result, grid, user_config_dir)
    write_text(
        result.sweep_dir / SWEEP_FILE,
        yaml.safe_dump(summary, sort_keys=False, allow_unicode=True),
    )


def _summary(result: SweepResult, grid: Grid, user_config_dir: str | None) -> dict:
    """The contents of sweep.yaml."""
    return {
        "name": result.name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "overrides": list(grid.overrides),
        "config_dir": user_config_dir,
        "swept": {key: values for key, values in grid.swept},
        "counts": {outcome.value: result.counts.get(outcome, 0) for outcome in COUNTED},
        "cells": [
            {
                "overrides": cell.overrides,
                "run_key": cell.run_key,
                "run_dir": str(cell.run_dir),
                "outcome": cell.outcome.value,
                **({"error": cell.error} if cell.error else {}),
            }
            for cell in result.cells
        ],
    }


def report(result: SweepResult) -> None:
    """The closing lines: the table, summary, notes, where the outputs are."""
    table = result.sweep_dir / TABLE_FILES["md"]
    lines = [table.read_text().rstrip(), ""] if table.is_file() else []
    lines += [result.summary(), *(f"note: {note}" for note in result.notes)]
    lines.append(
        f"wrote {result.sweep_dir}/ "
        f"({', '.join(sorted(p.name for p in result.sweep_dir.iterdir()))})"
        if result.sweep_dir.is_dir()
        else f"nothing written to {result.sweep_dir}"
    )
    for line in lines:
        LOG.info(line)
