"""Run records -> paper-style tables (Markdown, LaTeX, CSV), like Table 2 of the GroupNorm paper.

Every number comes from a `record.json` found (recursively) under the folder given. Completed runs
are averaged over seeds; diverged runs are counted and shown as such; running/failed/interrupted
runs are never averaged (listed under the table). Unreadable records are skipped with a warning on
stderr.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .config import changes_results, flatten
from .errors import UserError

# same name as normbench.runs.RECORD (not imported: that module pulls in torch)
RECORD = "record.json"
METRICS = {  # metric -> (label with units, digits shown); lower is better for all of them
    "test_error": ("top-1 test error (%)", 2),
    "best_test_error": ("best top-1 test error (%)", 2),
    "train_loss": ("train loss", 4),
}
FORMATS = ("md", "latex", "csv")
GROUP_KEYS = ("norm", "backbone", "data", "optim")  # `norm` means `norm.name`, and so on
MISSING, DIVERGED, FAILED = "–", "div", "failed"
BASELINE = "bn"


@dataclass
class Run:
    path: Path  # the record.json
    record: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.record.get("status"))

    def get(self, key: str) -> Any:
        return config_value(self.record.get("config") or {}, key)


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)  # the metric of each completed run
    diverged: int = 0
    failed: int = 0
    pending: int = 0  # running or interrupted
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
    rows_key: str
    cols_key: str
    metric: str
    rows: list[Any]
    cols: list[Any]
    cells: dict[tuple[Any, Any], Cell]
    cost: dict[Any, tuple[float | None, float | None]]  # row -> (mean images/s, max peak memory MB)
    not_counted: list[tuple[Path, str]]  # running / failed / interrupted records
    n_runs: int

    def cell(self, row: Any, col: Any) -> Cell:
        return self.cells.get((row, col), Cell())

    def best(self, col: Any) -> float | None:
        means = [self.cell(r, col).mean for r in self.rows if self.cell(r, col).mean is not None]
        return min(means) if means else None

    def deltas(self) -> list[tuple[Any, list[float | None]]]:
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
                a, b = self.cell(row, col).mean, self.cell(BASELINE, col).mean
                diffs.append(None if a is None or b is None else a - b)
            out.append((row, diffs))
        return out

    @property
    def uneven(self) -> bool:
        """True when the number of completed seeds differs between the cells that have any."""
        return len({c.n for c in self.cells.values() if c.n}) > 1


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
    beside = sweep_dir.parent.parent / "runs" / str(cell["run_key"]) / RECORD
    return beside if beside.is_file() else Path(cell["run_dir"]) / RECORD


def _record_files(root: Path) -> list[Path]:
    """A sweep folder (with sweep.yaml) names its cells' run dirs; any other folder is searched
    recursively."""
    sweep_file = root / "sweep.yaml"
    if root.is_dir() and sweep_file.is_file():
        import yaml

        try:
            cells = yaml.safe_load(sweep_file.read_text()).get("cells", [])
            return [_cell_record(root, cell) for cell in cells]
        except (OSError, ValueError, AttributeError, KeyError, TypeError, yaml.YAMLError) as error:
            raise UserError(
                f"{sweep_file} is unreadable ({type(error).__name__}); point at the "
                "sweep's "
                f"out folder instead (e.g. <out>/runs)"
            ) from None
    return [root] if root.is_file() and root.name == RECORD else sorted(root.rglob(RECORD))


def load_runs(path: Path | str) -> list[Run]:
    """Every readable record.json under PATH (searched recursively), or of the cells a sweep
    folder's sweep.yaml lists; unreadable ones are skipped with one warning line each. No records at
    all -> UserError."""
    root = Path(path)
    if not root.exists():
        raise UserError(
            f"{root} does not exist; give a sweep folder or any folder containing run dirs"
        )
    files = _record_files(root)
    runs = []
    for file in files:
        try:
            record = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:  # missing, truncated or not JSON
            warn(
                f"skipping unreadable {file}: {type(error).__name__}: "
                f"{str(error).splitlines()[0][:120]}"
            )
            continue
        if (
            not isinstance(record, dict)
            or "status" not in record
            or not isinstance(record.get("config"), dict)
        ):
            warn(f"skipping {file}: not a run record (no status or config)")
            continue
        runs.append(Run(file, record))
    if not runs:
        raise UserError(
            f"no readable run records ({RECORD}) under {root}; run `normbench run` or "
            f"`normbench sweep` first, or point at their out folder"
        )
    return runs


def _metric_of(run: Run, metric: str) -> float | None:
    value = (run.record.get("metrics") or {}).get(metric)
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
    flat = flatten(run.record.get("config") or {})
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
                f"({runs[0].path.parent} vs {run.path.parent}); point table "
                "at one sweep's folder "
                f"or choose --rows/--cols"
            )
        seed = run.get("seed")
        if seed in seeds:
            raise UserError(
                f"cell {where} has seed {seed} twice ({seeds[seed].parent} and "
                f"{run.path.parent}); "
                f"point table at one sweep's folder"
            )
        seeds[seed] = run.path


def build_table(
    path: Path | str,
    metric: str = "test_error",
    rows: str = "norm",
    cols: str = "batch",
    runs: list[Run] | None = None,
) -> Table:
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    if rows == cols:
        raise UserError(f"--rows and --cols are both {rows!r}; choose two different config keys")
    runs = load_runs(path) if runs is None else runs
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
    cells: dict[tuple[Any, Any], Cell] = {}
    not_counted: list[tuple[Path, str]] = []
    cost_runs: dict[Any, list[Run]] = {}
    for (r, c), members in groups.items():
        _check_cell(members, f"{rows}={r} {cols}={c}")
        cell = cells[(r, c)] = Cell()
        for run in sorted(members, key=lambda x: str(x.get("seed"))):
            value = _metric_of(run, metric)
            if run.status == "completed" and value is not None:
                cell.values.append(value)
                cell.sources.append(run.path)
                cost_runs.setdefault(r, []).append(run)
            # completed with a NaN metric: diverged
            elif run.status == "diverged" or run.status == "completed":
                cell.diverged += 1
            elif run.status == "failed":
                cell.failed += 1
                not_counted.append((run.path, run.status))
            else:  # running / interrupted / anything else: not finished, never averaged
                cell.pending += 1
                not_counted.append((run.path, run.status))
    row_values = _order({r for r, _ in groups}, rows)
    cost = {}
    for r in row_values:
        timing = [run.record.get("timing") or {} for run in cost_runs.get(r, [])]
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
        cost[r] = (sum(ips) / len(ips) if ips else None, max(mem) if mem else None)
    return Table(
        rows,
        cols,
        metric,
        row_values,
        _order({c for _, c in groups}, cols),
        cells,
        cost,
        sorted(not_counted),
        len(runs),
    )


# ---------------------------------------------------------------- rendering


def _num(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def cell_text(table: Table, cell: Cell, pm: str = "±", dagger: str = "†") -> str:
    """ "24.10 ± 0.30", "24.10" (one seed), "24.10 ± 0.30 (n=2)" (uneven seeds), "23.40† (1 div)",
    "div" (all diverged), "failed", "–" (nothing usable)."""
    digits = METRICS[table.metric][1]
    if cell.n == 0:
        if cell.diverged:
            others = [
                f"{k} {what}"
                for k, what in ((cell.failed, "failed"), (cell.pending, "unfinished"))
                if k
            ]
            return DIVERGED + (f" ({', '.join(others)})" if others else "")
        return FAILED if cell.failed else MISSING
    text = _num(cell.mean, digits)
    if cell.std is not None:
        text += f" {pm} {_num(cell.std, digits)}"
    if cell.diverged:
        text += dagger
    notes = []
    if table.uneven:
        notes.append(f"n={cell.n}")
    if cell.diverged:
        notes.append(f"{cell.diverged} div")
    if cell.failed:
        notes.append(f"{cell.failed} failed")
    if cell.pending:
        notes.append(f"{cell.pending} unfinished")
    return text + (f" ({', '.join(notes)})" if notes else "")


def _delta_text(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:+.{digits}f}"


def _grid(
    table: Table,
    cost: bool,
    bold: Callable[[str], str],
    pm: str,
    dagger: str,
    delta: str,
    missing: str,
) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(header, body rows, Δ rows) as text cells, shared by Markdown and LaTeX."""
    digits = METRICS[table.metric][1]
    header = [f"{table.rows_key} \\ {table.cols_key}", *map(str, table.cols)]
    if cost:
        header += ["images/s", "peak MB"]
    body = []
    for row in table.rows:
        line = [str(row)]
        for col in table.cols:
            cell = table.cell(row, col)
            text = cell_text(table, cell, pm, dagger).replace(MISSING, missing)
            if cell.mean is not None and cell.mean == table.best(col):
                text = bold(text)
            line.append(text)
        if cost:
            ips, mem = table.cost[row]
            line += [
                missing if ips is None else f"{ips:.0f}",
                missing if mem is None else f"{mem:.0f}",
            ]
        body.append(line)
    deltas = []
    for row, diffs in table.deltas():
        line = [
            f"{delta} {row}−{BASELINE}",
            *(_delta_text(d, digits).replace(MISSING, missing) for d in diffs),
        ]
        deltas.append(line + ([""] * 2 if cost else []))
    return header, body, deltas


def _notes(table: Table) -> list[str]:
    lines = []
    if any(c.diverged and c.n for c in table.cells.values()):
        lines.append("† some seeds diverged; the mean is over the completed ones")
    for file, status in table.not_counted:
        lines.append(f"not counted ({status}): {file}")
    return lines


def caption(table: Table) -> str:
    label = METRICS[table.metric][0]
    return (
        f"{label}, mean ± sample std over seeds, {table.n_runs} run records; best per column "
        "in bold; "
        f"rows {table.rows_key}, columns {table.cols_key}"
    )


def to_markdown(table: Table, cost: bool = False) -> str:
    header, body, deltas = _grid(table, cost, lambda t: f"**{t}**", "±", "†", "Δ", MISSING)
    lines = [caption(table), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(line) + " |" for line in body + deltas]
    notes = _notes(table)
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _latex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
    ):
        text = text.replace(a, b)
    return text


def to_latex(table: Table, cost: bool = False) -> str:
    header, body, deltas = _grid(
        table, cost, lambda t: f"\\textbf{{{t}}}", "$\\pm$", "$^\\dagger$", "$\\Delta$", "--"
    )
    header = [_latex_escape(table.rows_key)] + [_latex_escape(h) for h in header[1:]]

    def row_tex(line: list[str], first_escaped: bool = False) -> str:
        cells = [c if first_escaped else _latex_escape(c) for c in line[:1]] + line[1:]
        return " & ".join(cells).replace("−", "$-$") + r" \\"

    lines = [
        f"% {caption(table)}",
        r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
        r"\toprule",
        f"{_latex_escape(table.rows_key)} $\\backslash$ {_latex_escape(table.cols_key)} & "
        + " & ".join(header[1:])
        + r" \\",
        r"\midrule",
    ]
    lines += [row_tex(line) for line in body]
    if deltas:
        lines.append(r"\midrule")
        lines += [row_tex(line, first_escaped=True) for line in deltas]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% {note}" for note in _notes(table)]
    return "\n".join(lines) + "\n"


def to_csv(table: Table, cost: bool = False) -> str:
    """Raw numbers: per column value `<cols>=<v> mean`, `std`, `n`, `div`; empty where there is
    none. No Δ row (it is a difference of the means already here)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = [table.rows_key]
    for col in table.cols:
        header += [f"{table.cols_key}={col} {part}" for part in ("mean", "std", "n", "div")]
    if cost:
        header += ["images_per_second", "peak_memory_mb"]
    writer.writerow(header)
    for row in table.rows:
        line: list[Any] = [row]
        for col in table.cols:
            cell = table.cell(row, col)
            line += [
                repr(cell.mean) if cell.mean is not None else "",
                repr(cell.std) if cell.std is not None else "",
                cell.n,
                cell.diverged,
            ]
        if cost:
            line += [repr(v) if v is not None else "" for v in table.cost[row]]
        writer.writerow(line)
    return buffer.getvalue()


def render(table: Table, fmt: str = "md", cost: bool = False) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return {"md": to_markdown, "latex": to_latex, "csv": to_csv}[fmt](table, cost)


def write_text(path: Path | str, text: str) -> Path:
    """Write an output file; an unwritable place is a UserError naming it."""
    from .files import atomic_write_bytes

    path = Path(path)
    try:
        # a kill mid-write leaves the old file or the new, never half
        atomic_write_bytes(path, text.encode())
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None
    return path
