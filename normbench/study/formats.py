"""Tables as text: Markdown, LaTeX (booktabs) and CSV, as the GroupNorm paper's Table 2 reads."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import atomic_write_bytes
from ..records import CHANCE_MARGIN, MIN_SGD_STEPS
from .metrics import metric_info
from .tables import BASELINE, DIVERGED, FAILED, MISSING, Table, TableCell

FORMATS = ("md", "latex", "csv")
FLAG = "‡"  # a cell with a suspect run (records.sanity_warnings); † already marks divergence
FLAG_NOTE = (
    f"{FLAG} some run of this cell is suspect: a final test error within {CHANCE_MARGIN:g} points "
    f"of chance, or fewer than {MIN_SGD_STEPS} SGD steps (the run says which at its end); never "
    "bold"
)


@dataclass(frozen=True)
class Style:
    """How one text format writes the marks of a table."""

    bold: Callable[[str], str]
    pm: str
    dagger: str
    flag: str
    delta: str
    missing: str
    escape: Callable[[str], str]  # for row labels and metric names


def _num(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def cell_text(
    table: Table,
    cell: TableCell,
    pm: str = "±",
    dagger: str = "†",
    flag: str = FLAG,
    metric: str | None = None,
) -> str:
    """ "24.10 ± 0.30", "24.10" (one seed), "24.10 ± 0.30 (n=2)" (uneven seeds), "23.40† (1 div)",
    "31.20‡" (a suspect run), "div" (all diverged), "failed", "–" (nothing usable)."""
    digits = metric_info(metric or table.metric).digits
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
    if cell.flagged:
        text += flag
    notes = []
    if table.uneven(metric):
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


def _labels(table: Table, label: str, metric: str, style: Style) -> list[str]:
    """The leading cells of a (sub-)row: its label (empty below the first sub-row), then the
    metric's name when the table shows several."""
    return [label] + ([style.escape(metric)] if len(table.metrics) > 1 else [])


def _grid(
    table: Table, cost: bool, style: Style
) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(header, body rows, Δ rows) as text cells, shared by Markdown and LaTeX: one sub-row per
    metric of each row."""
    header = [f"{table.rows_key} \\ {table.cols_key}"]
    header += (["metric"] if len(table.metrics) > 1 else []) + list(map(str, table.cols))
    if cost:
        header += cost_header(table)
    body = []
    for row in table.rows:
        for index, metric in enumerate(table.metrics):
            line = _labels(table, "" if index else style.escape(str(row)), metric, style)
            for col in table.cols:
                cell = table.cell(row, col, metric)
                text = cell_text(table, cell, style.pm, style.dagger, style.flag, metric)
                text = text.replace(MISSING, style.missing)
                # a flagged cell is never best (Table.best leaves it out), even at an equal mean
                if (
                    not cell.flagged
                    and cell.mean is not None
                    and cell.mean == table.best(col, metric)
                ):
                    text = style.bold(text)
                line.append(text)
            if cost:
                line += cost_cells(table, row, style.missing) if index == 0 else _blank_cost(table)
            body.append(line)
    return header, body, _delta_rows(table, cost, style)


def cost_header(table: Table) -> list[str]:
    """The cost columns, per cell: images/s of each column value, then peak MB of each."""
    return [
        f"{what} ({table.cols_key}={col})" for what in ("images/s", "peak MB") for col in table.cols
    ]


def cost_cells(table: Table, row: Any, missing: str) -> list[str]:
    """A row's cost cells, in cost_header's order; a peak memory measured in another way than the
    table's other cells (see _memory_note) says how."""
    costs = [table.cost_of(row, col) for col in table.cols]
    kinds = _memory_kinds(table)
    ips = [missing if c.images_per_second is None else f"{c.images_per_second:.0f}" for c in costs]
    mem = [
        missing
        if c.peak_memory_mb is None
        else f"{c.peak_memory_mb:.0f}"
        + (f" ({c.peak_memory_kind})" if len(kinds) > 1 and c.peak_memory_kind else "")
        for c in costs
    ]
    return ips + mem


def _blank_cost(table: Table) -> list[str]:
    return [""] * (2 * len(table.cols))


def _memory_kinds(table: Table) -> list[str]:
    return sorted({c.peak_memory_kind for c in table.cost.values() if c.peak_memory_kind})


def _delta_rows(table: Table, cost: bool, style: Style) -> list[list[str]]:
    """The Δ-vs-BN rows, one sub-row per metric of each non-BN row."""
    by_metric = {metric: dict(table.deltas(metric)) for metric in table.metrics}
    lines = []
    for row, _ in table.deltas():
        for index, metric in enumerate(table.metrics):
            digits = metric_info(metric).digits
            label = "" if index else f"{style.delta} {style.escape(str(row))}−{BASELINE}"
            line = _labels(table, label, metric, style) + [
                _delta_text(d, digits).replace(MISSING, style.missing)
                for d in by_metric[metric][row]
            ]
            lines.append(line + (_blank_cost(table) if cost else []))
    return lines


def _notes(table: Table, cost: bool = False) -> list[str]:
    lines = []
    if cost:
        kinds = _memory_kinds(table)
        lines.append(
            "cost per cell: mean images/s of its averaged runs, their largest peak memory (MB)"
            + (f", measured as {' / '.join(kinds)}" if kinds else "")
        )
    cells = [c for by_cell in table.cells_by_metric.values() for c in by_cell.values()]
    if any(c.diverged and c.n for c in cells):
        lines.append("† some seeds diverged; the mean is over the completed ones")
    if table.flagged:
        lines.append(FLAG_NOTE)
    for file, status in table.not_counted:
        lines.append(f"not counted ({status}): {file}")
    return lines


def caption(table: Table) -> str:
    """What the table shows: the metric(s) with units (and how test_error_at_best_val was selected),
    over what, and how it is laid out."""
    labels = "; ".join(metric_info(metric).label for metric in table.metrics)
    several = len(table.metrics) > 1
    unfinished = len(table.not_counted)
    ignored = f" ({unfinished} unfinished, ignored)" if unfinished else ""
    where = f" {table.where}" if table.where else ""
    return (
        f"{labels}{' (one sub-row each)' if several else ''}, mean ± sample std over seeds, "
        f"{table.n_runs} run records{where}{ignored}; best per column"
        f"{' and metric' if several else ''} in bold; rows {table.rows_key}, columns "
        f"{table.cols_key}"
    )


MARKDOWN = Style(lambda t: f"**{t}**", "±", "†", FLAG, "Δ", MISSING, lambda t: t)


def to_markdown(table: Table, cost: bool = False) -> str:
    header, body, deltas = _grid(table, cost, MARKDOWN)
    lines = [caption(table), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(line) + " |" for line in body + deltas]
    notes = _notes(table, cost)
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


LATEX = Style(
    lambda t: f"\\textbf{{{t}}}",
    "$\\pm$",
    "$^\\dagger$",
    "$^\\ddagger$",
    "$\\Delta$",
    "--",
    _latex_escape,
)


def to_latex(table: Table, cost: bool = False) -> str:
    header, body, deltas = _grid(table, cost, LATEX)
    labels = 2 if len(table.metrics) > 1 else 1  # row label, then the metric's name
    head = [f"{_latex_escape(table.rows_key)} $\\backslash$ {_latex_escape(table.cols_key)}"]
    head += [_latex_escape(h) for h in header[1:]]

    def row_tex(line: list[str]) -> str:
        return " & ".join(line).replace("−", "$-$") + r" \\"

    lines = [
        f"% {caption(table)}",
        r"\begin{tabular}{" + "l" * labels + "r" * (len(header) - labels) + "}",
        r"\toprule",
        row_tex(head),
        r"\midrule",
    ]
    lines += [row_tex(line) for line in body]
    if deltas:
        lines.append(r"\midrule")
        lines += [row_tex(line) for line in deltas]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% {note}" for note in _notes(table, cost)]
    return "\n".join(lines) + "\n"


def to_csv(table: Table, cost: bool = False) -> str:
    """Raw numbers: per column value `<cols>=<v> mean`, `std`, `n`, `div`, and `flagged` (runs with
    a sanity warning) when the table has any; empty where there is none. Several metrics: a `metric`
    column after the row key and one line per (row, metric), the long form pandas pivots
    (`df.pivot(index=..., columns="metric")`). With cost: `<cols>=<v> images_per_second`,
    `peak_memory_mb` and `peak_memory_kind` per column value. No Δ row (it is a difference of the
    means already here)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    several = len(table.metrics) > 1
    parts = ("mean", "std", "n", "div") + (("flagged",) if table.flagged else ())
    header = [table.rows_key] + (["metric"] if several else [])
    for col in table.cols:
        header += [f"{table.cols_key}={col} {part}" for part in parts]
    if cost:
        header += [
            f"{table.cols_key}={col} {what}"
            for what in ("images_per_second", "peak_memory_mb", "peak_memory_kind")
            for col in table.cols
        ]
    writer.writerow(header)
    for row in table.rows:
        for metric in table.metrics:
            line: list[Any] = [row] + ([metric] if several else [])
            for col in table.cols:
                cell = table.cell(row, col, metric)
                line += [
                    _raw(cell.mean),
                    _raw(cell.std),
                    cell.n,
                    cell.diverged,
                ] + ([cell.flagged] if table.flagged else [])
            if cost:
                costs = [table.cost_of(row, col) for col in table.cols]
                line += [_raw(c.images_per_second) for c in costs]
                line += [_raw(c.peak_memory_mb) for c in costs]
                line += [c.peak_memory_kind or "" for c in costs]
            writer.writerow(line)
    return buffer.getvalue()


def _raw(value: float | None) -> str:
    return "" if value is None else repr(value)


def render(table: Table, fmt: str = "md", cost: bool = False) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return {"md": to_markdown, "latex": to_latex, "csv": to_csv}[fmt](table, cost)


def write_text(path: Path | str, text: str) -> Path:
    """Write an output file; an unwritable place is a UserError naming it."""
    path = Path(path)
    try:
        # a kill mid-write leaves the old file or the new, never half
        atomic_write_bytes(path, text.encode())
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None
    return path
