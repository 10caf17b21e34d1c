"""Run records -> paper-style tables like Table 2 of the GroupNorm paper (as text: study.formats).

Every number comes from a `record.json` found (recursively) under the folder given. Completed runs
are averaged over seeds; diverged runs are counted and shown as such; running/failed/interrupted
runs are never averaged (listed under the table). Unreadable records are skipped with a warning on
stderr.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..config import ADDED_KEYS, changes_results, flatten, with_added_keys
from ..errors import UserError
from ..records import RECORD_FILE, NotARunRecord, RunRecord, Status, sanity_warnings
from .metrics import HIGHER, NEITHER, check_held, metric_info, parse_metrics, sweep_metrics

GROUP_KEYS = ("norm", "backbone", "data", "optim")  # `norm` means `norm.name`, and so on
MISSING, DIVERGED, FAILED = "–", "div", "failed"
BASELINE = "bn"


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


@dataclass
class Table:
    """Rows x columns of runs, one TableCell per metric in each (`metrics`: one sub-row each)."""

    rows_key: str
    cols_key: str
    metrics: list[str]
    rows: list[Any]
    cols: list[Any]
    cells_by_metric: dict[str, dict[tuple[Any, Any], TableCell]]
    cost: dict[Any, tuple[float | None, float | None]]  # row -> (mean images/s, max peak memory MB)
    not_counted: list[tuple[Path, str]]  # running / failed / interrupted records
    n_runs: int

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

    @property
    def flagged(self) -> bool:
        """True when some cell holds a run with a sanity warning."""
        return any(c.flagged for cells in self.cells_by_metric.values() for c in cells.values())


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


def _record_files(root: Path) -> list[Path]:
    """A sweep folder (with sweep.yaml) names its cells' run dirs; any other folder is searched
    recursively."""
    sweep_file = root / "sweep.yaml"
    if root.is_dir() and sweep_file.is_file():
        try:
            cells = yaml.safe_load(sweep_file.read_text()).get("cells", [])
            return [_cell_record(root, cell) for cell in cells]
        except (OSError, ValueError, AttributeError, KeyError, TypeError, yaml.YAMLError) as error:
            raise UserError(
                f"{sweep_file} is unreadable ({type(error).__name__}); point at the sweep's out "
                "folder instead (e.g. <out>/runs)"
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
) -> Table:
    """The table of the runs under PATH (or `runs`): `metric` is one metric a record holds or a
    comma list of them (one sub-row each); None: those of a sweep's own table for a sweep folder
    (metrics.sweep_metrics), else test_error. Rows and columns are config keys."""
    metrics = None if metric is None else parse_metrics(metric)
    if rows == cols:
        raise UserError(f"--rows and --cols are both {rows!r}; choose two different config keys")
    runs = load_runs(path) if runs is None else runs
    if metrics is None:
        metrics = sweep_metrics(runs) if (Path(path) / "sweep.yaml").is_file() else ["test_error"]
    check_held(metrics, runs, path)
    groups = _group(runs, rows, cols, path)
    cells: dict[str, dict[tuple[Any, Any], TableCell]] = {name: {} for name in metrics}
    not_counted: list[tuple[Path, str]] = []
    cost_runs: dict[Any, list[Run]] = {}
    flagged = {
        run.path for run in runs if run.status is Status.COMPLETED and sanity_warnings(run.record)
    }
    for (r, c), members in groups.items():
        _check_cell(members, f"{rows}={r} {cols}={c}")
        members = sorted(members, key=lambda x: str(x.get("seed")))
        for name in metrics:
            cells[name][(r, c)] = _fill_cell(members, name, flagged)
        first = cells[metrics[0]][(r, c)]
        cost_runs.setdefault(r, []).extend(run for run in members if run.path in first.sources)
        not_counted += [(run.path, run.status.value) for run in members if not run.status.final]
    row_values = _order({r for r, _ in groups}, rows)
    cost = {r: _cost(cost_runs.get(r, [])) for r in row_values}
    return Table(
        rows,
        cols,
        metrics,
        row_values,
        _order({c for _, c in groups}, cols),
        cells,
        cost,
        sorted(not_counted),
        len(runs),
    )


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


def _cost(runs: list[Run]) -> tuple[float | None, float | None]:
    """(mean images/s, max peak memory MB) of a row's completed runs."""
    timing = [run.record.timing or {} for run in runs]
    ips = [
        float(t["images_per_second"])
        for t in timing
        if isinstance(t.get("images_per_second"), (int, float))
    ]
    mem = [
        float(t["peak_memory_mb"])
        for t in timing
        if isinstance(t.get("peak_memory_mb"), (int, float))
    ]
    return (sum(ips) / len(ips) if ips else None, max(mem) if mem else None)


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
