"""Run records -> paper-style tables like Table 2 of the GroupNorm paper (as text: study.formats).

Every number comes from a `record.json` found (recursively) under the folder given (study.
run_records), optionally filtered with `--where` (study.where). Completed runs are averaged over
seeds; diverged runs are counted and shown as such; running/failed/interrupted runs are never
averaged and never make a cell "mixed" (listed under the table, counted in the caption).
Unreadable records are skipped with a warning on stderr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import changes_results, flatten, with_added_keys
from ..errors import UserError
from ..records import Status, sanity_warnings
from ..values import is_number
from .metrics import HIGHER, NEITHER, check_held, metric_info, parse_metrics, sweep_metrics
from .run_records import SWEEP_FILE, Run, load_runs, warn
from .where import Where, describe, select

MISSING, DIVERGED, FAILED = "–", "div", "failed"
BASELINE = "bn"


@dataclass
class TableCell:
    """The runs of one row x column of a table (not a sweep's planned run: study.cells)."""

    values: list[float] = field(default_factory=list)  # the metric of each completed run
    diverged: int = 0
    failed: int = 0
    pending: int = 0  # running or interrupted
    flagged: int = (
        0  # completed runs among `values` with a sanity warning (records.sanity_warnings)
    )
    sources: list[Path] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(pd.Series(self.values).mean()) if self.values else None

    @property
    def std(self) -> float | None:  # sample std (ddof 1); None for a single seed
        return float(pd.Series(self.values).std(ddof=1)) if self.n >= 2 else None


@dataclass(frozen=True)
class CellCost:
    """What the runs a cell averages cost: mean images/s, the largest peak memory (MB) and how it
    was measured (`timing.peak_memory_kind`, "/"-joined if the runs differ; None in older
    records)."""

    images_per_second: float | None = None
    peak_memory_mb: float | None = None
    peak_memory_kind: str | None = None

    @classmethod
    def of(cls, runs: list[Run]) -> CellCost:
        timing = [run.record.timing or {} for run in runs]
        ips = [
            float(t["images_per_second"]) for t in timing if is_number(t.get("images_per_second"))
        ]
        mem = [float(t["peak_memory_mb"]) for t in timing if is_number(t.get("peak_memory_mb"))]
        kinds = sorted({str(t["peak_memory_kind"]) for t in timing if t.get("peak_memory_kind")})
        return cls(
            sum(ips) / len(ips) if ips else None,
            max(mem) if mem else None,
            "/".join(kinds) or None,
        )


@dataclass
class Table:
    """Rows x columns of runs, one TableCell per metric in each (`metrics`: one sub-row each)."""

    rows_key: str
    cols_key: str
    metrics: list[str]
    rows: list[Any]
    cols: list[Any]
    cells_by_metric: dict[str, dict[tuple[Any, Any], TableCell]]
    cost: dict[tuple[Any, Any], CellCost]  # (row, col) -> the cell's cost (its averaged runs)
    not_counted: list[tuple[Path, str]]  # running / failed / interrupted records: never averaged
    n_runs: int
    where: str = ""  # the --where filters the runs were selected with, as a caption says them

    @property
    def metric(self) -> str:
        """The first (or only) metric."""
        return self.metrics[0]

    @property
    def cells(self) -> dict[tuple[Any, Any], TableCell]:
        """The first metric's cells."""
        return self.cells_by_metric[self.metric]

    def cell(self, row: Any, col: Any, metric: str | None = None) -> TableCell:
        return self.cells_by_metric[metric or self.metric].get((row, col), TableCell())

    def best(self, col: Any, metric: str | None = None) -> float | None:
        """The best mean of a column among cells without a sanity flag (lowest, or highest for
        accuracies); None for a metric that is better neither way."""
        better = metric_info(metric or self.metric).better
        cells = [self.cell(row, col, metric) for row in self.rows]
        means = [c.mean for c in cells if c.mean is not None and not c.flagged]
        if better == NEITHER or not means:
            return None
        return max(means) if better == HIGHER else min(means)

    def deltas(self, metric: str | None = None) -> list[tuple[Any, list[float | None]]]:
        """One "Δ vs BN" row per non-BN norm (row mean minus the bn row's mean, per column), like
        the "GN−BN" row of the GN paper's Table 2; empty unless rows are norms and a bn row
        exists."""
        if self.rows_key != "norm" or BASELINE not in self.rows:
            return []
        out = []
        for row in self.rows:
            if row == BASELINE:
                continue
            diffs = []
            for col in self.cols:
                a, b = self.cell(row, col, metric).mean, self.cell(BASELINE, col, metric).mean
                diffs.append(None if a is None or b is None else a - b)
            out.append((row, diffs))
        return out

    def uneven(self, metric: str | None = None) -> bool:
        """True when the number of completed seeds differs between the cells that have any."""
        cells = self.cells_by_metric[metric or self.metric].values()
        return len({c.n for c in cells if c.n}) > 1

    def cost_of(self, row: Any, col: Any) -> CellCost:
        return self.cost.get((row, col), CellCost())

    @property
    def flagged(self) -> bool:
        """True when some cell holds a run with a sanity warning."""
        return any(c.flagged for cells in self.cells_by_metric.values() for c in cells.values())


def _metric_of(run: Run, metric: str) -> float | None:
    value = (run.record.metrics or {}).get(metric)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _order(values: set[Any], key: str) -> list[Any]:
    """bn first for norms; batch descending like the GN paper (32 16 8 4 2); other keys
    ascending."""

    def sort_key(v: Any) -> tuple:
        return (isinstance(v, str), v if not isinstance(v, str) else 0, str(v))

    ordered = sorted(values, key=sort_key)
    if key == "batch":
        ordered.reverse()
    if key == "norm" and BASELINE in ordered:
        ordered.remove(BASELINE)
        ordered.insert(0, BASELINE)
    return ordered


def _identity(run: Run) -> dict[str, Any]:
    """The settings that change results, less the seed: runs in one cell must agree on all of
    them."""
    flat = with_added_keys(flatten(run.record.config or {}))
    return {k: v for k, v in flat.items() if changes_results(k) and k != "seed"}


def _check_cell(runs: list[Run], where: str) -> None:
    """A cell averages seeds of one config: other differing settings, or the same seed twice, would
    make its number silently wrong, so they are errors that name the runs."""
    first = _identity(runs[0])
    seeds: dict[Any, Path] = {}
    for run in runs:
        ident = _identity(run)
        differ = sorted(k for k in set(first) | set(ident) if first.get(k) != ident.get(k))
        if differ:
            raise UserError(
                f"cell {where} mixes runs that differ in {', '.join(differ[:5])} "
                f"({runs[0].path.parent} vs {run.path.parent}); point table at one sweep's "
                "folder or choose --rows/--cols"
            )
        seed = run.get("seed")
        if seed in seeds:
            raise UserError(
                f"cell {where} has seed {seed} twice ({seeds[seed].parent} and "
                f"{run.path.parent}); point table at one sweep's folder"
            )
        seeds[seed] = run.path


def build_table(
    path: Path | str,
    metric: str | list[str] | None = "test_error",
    rows: str = "norm",
    cols: str = "batch",
    runs: list[Run] | None = None,
    where: list[Where] | None = None,
) -> Table:
    """The table of the runs under PATH (or `runs`): `metric` is one metric a record holds or a
    comma list of them (one sub-row each); None: those of a sweep's own table for a sweep folder
    (metrics.sweep_metrics), else test_error. Rows and columns are config keys; `where`: only the
    runs these filters hold for (study.where)."""
    metrics = None if metric is None else parse_metrics(metric)
    if rows == cols:
        raise UserError(f"--rows and --cols are both {rows!r}; choose two different config keys")
    runs = select(load_runs(path) if runs is None else runs, where or [])
    if metrics is None:
        metrics = sweep_metrics(runs) if (Path(path) / SWEEP_FILE).is_file() else ["test_error"]
    check_held(metrics, runs, path)
    groups = _group(runs, rows, cols, path)
    cells: dict[str, dict[tuple[Any, Any], TableCell]] = {name: {} for name in metrics}
    cost: dict[tuple[Any, Any], CellCost] = {}
    flagged = {
        run.path for run in runs if run.status is Status.COMPLETED and sanity_warnings(run.record)
    }
    for (r, c), members in groups.items():
        members = _counted_members(members, f"{rows}={r} {cols}={c}")
        for name in metrics:
            cells[name][(r, c)] = _fill_cell(members, name, flagged)
        sources = set(cells[metrics[0]][(r, c)].sources)
        cost[(r, c)] = CellCost.of([run for run in members if run.path in sources])
    return Table(
        rows,
        cols,
        metrics,
        _order({r for r, _ in groups}, rows),
        _order({c for _, c in groups}, cols),
        cells,
        cost,
        sorted((run.path, run.status.value) for run in runs if not run.status.final),
        len(runs),
        describe(where or []),
    )


def _counted_members(members: list[Run], where: str) -> list[Run]:
    """The runs a cell counts, by seed: its final runs (completed, diverged), which must agree on
    every setting; and its unfinished ones (running, interrupted, failed) that agree with them.
    An unfinished run never enters the check: a leftover of another config (e.g. an interrupted run
    with another data.train_size) is only listed under the table, as every unfinished run is."""
    final = [run for run in members if run.status.final]
    if final:
        _check_cell(final, where)
        identity = _identity(final[0])
        members = final + [
            run for run in members if not run.status.final and _identity(run) == identity
        ]
    return sorted(members, key=lambda x: str(x.get("seed")))


def _group(runs: list[Run], rows: str, cols: str, path: Path | str) -> dict[tuple, list[Run]]:
    """The runs by (row value, column value); one without either key is skipped with a warning."""
    groups: dict[tuple[Any, Any], list[Run]] = {}
    for run in runs:
        r, c = run.get(rows), run.get(cols)
        if r is None or c is None:
            missing = rows if r is None else cols
            warn(f"skipping {run.path}: its config has no {missing!r}")
            continue
        groups.setdefault((r, c), []).append(run)
    if not groups:
        raise UserError(
            f"no run under {path} has both {rows!r} and {cols!r} in its config; "
            f"--rows/--cols take config keys such as norm, batch, accum, norm.groups"
        )
    return groups


def _fill_cell(members: list[Run], metric: str, flagged: set[Path]) -> TableCell:
    """One metric's cell of the runs of a row x column: completed runs with a finite value are
    averaged; a final run without one (diverged, or completed with NaN) counts as diverged; a
    completed run that lacks the metric (an older record) is left out; failed and unfinished runs
    are counted, never averaged. `flagged`: runs with a sanity warning."""
    cell = TableCell()
    for run in members:
        value = _metric_of(run, metric)
        if run.status is Status.COMPLETED and value is not None:
            cell.values.append(value)
            cell.sources.append(run.path)
            cell.flagged += run.path in flagged
        elif run.status is Status.COMPLETED and _lacks(run, metric):
            continue
        elif run.status.final:
            cell.diverged += 1
        elif run.status is Status.FAILED:
            cell.failed += 1
        else:  # running / interrupted: not finished, never averaged
            cell.pending += 1
    return cell


def _lacks(run: Run, metric: str) -> bool:
    """The record has no value for the metric (not even NaN), though it has a test error: it was
    written before the metric existed, or the metric does not apply (val without a val split)."""
    metrics = run.record.metrics or {}
    return metrics.get(metric) is None and _metric_of(run, "test_error") is not None


def table_axes(keys: list[str]) -> tuple[str, str]:
    """Rows and columns of a sweep's table: norm x batch like the GN paper when those are swept
    (or fixed); otherwise the swept keys themselves. Seeds are averaged, never an axis."""
    swept = [k for k in keys if k != "seed"]
    cols = (
        "batch"
        if "batch" in swept or not [k for k in swept if k != "norm"]
        else next(k for k in swept if k != "norm")
    )
    rest = [k for k in swept if k not in (cols,)]
    rows = "norm" if "norm" in rest or not rest else rest[0]
    return rows, cols
