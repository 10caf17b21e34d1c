"""The commands that read run folders without training: `table` and `prune` (registered on
`normbench.cli.app` by `register_study_commands`, so that this module does not import cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from .study.formats import FORMATS, render, write_text
from .study.metrics import KNOWN
from .study.prune import find_prunable, prune_lines, remove
from .study.tables import build_table
from .study.where import WHERE_HELP, parse_where
from .values import choice_parser

PATH_HELP = "A sweep folder or any folder containing run dirs (searched recursively)."


def table(
    path: Path = typer.Argument(..., help=PATH_HELP),
    fmt: Literal["md", "latex", "csv"] = typer.Option(  # FORMATS; Literal: --help shows them
        "md",
        "--format",
        help="md (printed Markdown), latex (booktabs) or csv (raw numbers).",
        parser=choice_parser("format", FORMATS),
    ),
    metric: str | None = typer.Option(
        None,
        "--metric",
        help="Any numeric metric the records hold, or a comma list for one sub-row each (CSV: a "
        "metric column, one line per row and metric). Default: test_error; for a sweep folder "
        f"the metrics of the sweep's own table. Known: {', '.join(KNOWN)}.",
    ),
    rows: str = typer.Option(
        "norm", "--rows", help="Config key for the rows (e.g. norm, backbone)."
    ),
    cols: str = typer.Option(
        "batch", "--cols", help="Config key for the columns (e.g. batch, accum, norm.groups)."
    ),
    cost: bool = typer.Option(
        False,
        "--cost",
        help="Add images/s and peak memory (MB) per cell: the mean and the largest over the runs "
        "a cell averages.",
    ),
    where: list[str] | None = typer.Option(None, "--where", metavar="KEY=VALUE", help=WHERE_HELP),
    out: Path | None = typer.Option(None, "--out", help="Write to this file instead of printing."),
) -> None:
    """Paper-style table from the run records under PATH: mean ± std over seeds, best per column in
    bold; ‡ marks a cell with a suspect run (near chance, or under 100 SGD steps), never bold.
    Unfinished runs (running, interrupted, failed) are never averaged: listed under the table."""
    text = render(build_table(path, metric, rows, cols, where=parse_where(where)), fmt, cost)
    if out is None:
        typer.echo(text, nl=False)
    else:
        typer.echo(f"wrote {write_text(out, text)}")


def prune(
    path: Path = typer.Argument(
        ..., help="An out folder (or any folder holding runs/ and sweeps/ folders)."
    ),
    yes: bool = typer.Option(False, "--yes", help="Remove what is listed (default: list only)."),
) -> None:
    """List the run folders that hold no result (unfinished, failed, or without a record) and sweep
    folders without a sweep.yaml; --yes removes them. Completed and diverged runs, and runs a live
    process is training, are never touched."""
    found = find_prunable(path)
    for line in prune_lines(found):
        typer.echo(line)
    if not found.removable:
        return
    if not yes:
        typer.echo("nothing removed: rerun with --yes to remove the folders listed above")
        return
    removed, busy = remove(found.removable)
    typer.echo(f"removed {len(removed)} folder(s)")
    for folder in busy:
        typer.echo(f"kept {folder}: it was resumed, finished or stored since the listing")


def register_study_commands(app: typer.Typer) -> None:
    """Add `table` and `prune` to the CLI."""
    app.command()(table)
    app.command()(prune)
