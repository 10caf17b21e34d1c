"""Tables as text: Markdown, LaTeX (booktabs) and CSV, as the GroupNorm paper's Table 2 reads."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import atomic_write_bytes
from .tables import BASELINE, DIVERGED, FAILED, METRICS, MISSING, Table, TableCell

FORMATS = ("md", "latex", "csv")


def _num(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def cell_text(table: Table, cell: TableCell, pm: str = "±", dagger: str = "†") -> str:
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
        f"{label}, mean ± sample std over seeds, {table.n_runs} run records; best per column in "
        f"bold; rows {table.rows_key}, columns {table.cols_key}"
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
    path = Path(path)
    try:
        # a kill mid-write leaves the old file or the new, never half
        atomic_write_bytes(path, text.encode())
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None
    return path
