"""`normbench plot`: the Typer command (cli.py registers it on the app); the figures themselves are
in normbench.study.figures."""

from __future__ import annotations

from pathlib import Path

import typer

from .errors import UserError
from .study.metrics import KNOWN
from .study.style import Size, XAxis
from .study.where import WHERE_HELP

# the options, declared here so that the command reads as what it does
OUT_OPTION = typer.Option(
    None,
    "--out",
    help="File to write; its suffix chooses the format: .pdf or .svg (vector, for a paper) or "
    ".png (300 dpi). Default PATH/error_vs_batch.png, with --curves PATH/curves.png.",
)
METRIC_OPTION = typer.Option(
    "test_error",
    "--metric",
    help="Any one numeric metric the records hold (error-vs-batch figure only). Known: "
    f"{', '.join(KNOWN)}.",
)
ROWS_OPTION = typer.Option("norm", "--rows", help="Config key for the lines (e.g. norm, backbone).")
COLS_OPTION = typer.Option(
    "batch",
    "--cols",
    help="Config key for the x axis, or for the panels with --curves (e.g. batch, accum, "
    "norm.groups).",
)
SIZE_OPTION = typer.Option(
    None,
    "--size",
    help="Width for a two-column paper: column (3.3 in) or page (6.9 in), fonts legible at that "
    "width. Default: column, with --curves page.",
)
CHANCE_OPTION = typer.Option(
    False,
    "--chance",
    help="Draw the chance level: 100·(1−1/classes) for an error in % (error-vs-batch only).",
)
CURVES_OPTION = typer.Option(
    False,
    "--curves",
    help="Training curves from the runs' TensorBoard events instead: one panel per --cols value, "
    "train loss and test error, one line per --rows value (mean over seeds, band = min..max).",
)
X_OPTION = typer.Option(
    XAxis.epochs,
    "--x",
    help="--curves' x axis: epochs, or images seen (epochs × the run's training images).",
)


def plot(
    path: Path = typer.Argument(
        ..., help="A sweep folder or any folder containing run dirs (searched recursively)."
    ),
    out: Path | None = OUT_OPTION,
    metric: str = METRIC_OPTION,
    rows: str = ROWS_OPTION,
    cols: str = COLS_OPTION,
    where: list[str] | None = typer.Option(None, "--where", metavar="KEY=VALUE", help=WHERE_HELP),
    size: Size | None = SIZE_OPTION,
    chance: bool = CHANCE_OPTION,
    curves: bool = CURVES_OPTION,
    x: XAxis = X_OPTION,
) -> None:
    """Error-vs-batch-size figure for a paper: one line style per norm, paper names, a caption,
    error bars = sample std over seeds; PDF, SVG or PNG (or --curves)."""
    # deferred: matplotlib takes about a second to import and only the figures need it
    from .study.figures import plot as draw
    from .study.figures import plot_curves

    if not curves:
        if x is not XAxis.epochs:
            raise UserError("--x chooses the x axis of --curves; add --curves or drop --x")
        written = draw(
            path, out, metric, rows, cols, size=size or Size.column, chance=chance, where=where
        )
        typer.echo(f"wrote {written}")
        return
    if metric != "test_error" or chance:
        raise UserError(
            f"{'--metric' if metric != 'test_error' else '--chance'} is for the error-vs-batch "
            "figure; --curves always draws train loss and test error: drop one of the two options"
        )
    written = plot_curves(path, out, rows, cols, size=size or Size.page, x=x, where=where)
    typer.echo(f"wrote {written}")
