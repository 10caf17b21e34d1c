"""Error vs batch size, like Figure 1 of the GroupNorm paper: one line per norm, log2 x axis, error
bars = sample std over seeds. Drawn with matplotlib's Agg canvas (no display needed)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import UserError
from .results import METRICS, Table, build_table

DEFAULT_NAME = "error_vs_batch.png"


def make_figure(table: Table) -> Figure:
    """The figure for a table (rows = lines, columns = x). Cells without a completed run are left
    out."""
    xs_all = table.cols
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in xs_all):
        raise UserError(f"plot needs a positive numeric swept key; {table.cols_key} has {xs_all}")
    fig = Figure(figsize=(6, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for row in table.rows:
        points = sorted(
            (x, table.cell(row, x)) for x in xs_all if table.cell(row, x).mean is not None
        )
        if not points:
            continue
        xs = [x for x, _ in points]
        ys = [c.mean for _, c in points]
        errs = [c.std or 0.0 for _, c in points]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=str(row))
    ax.set_xscale("log", base=2)
    ticks = sorted(xs_all)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.minorticks_off()
    if table.cols_key == "batch":
        # large batch on the left, shrinking to the right, as in the GN paper's Figure 1
        ax.invert_xaxis()
    ax.set_xlabel(
        f"{table.cols_key} (images per device)" if table.cols_key == "batch" else table.cols_key
    )
    ax.set_ylabel(METRICS[table.metric][0])
    ax.set_title(f"{METRICS[table.metric][0]} vs {table.cols_key} (mean ± std over seeds)")
    ax.grid(True, alpha=0.3)
    if ax.containers:
        ax.legend(title=table.rows_key)
    fig.tight_layout()
    return fig


def plot(
    path: Path | str,
    out: Path | str | None = None,
    metric: str = "test_error",
    rows: str = "norm",
    cols: str = "batch",
) -> Path:
    """Build the table under PATH and write the figure (default PATH/error_vs_batch.png)."""
    table = build_table(path, metric, rows, cols)
    return save_png(make_figure(table), Path(out) if out is not None else Path(path) / DEFAULT_NAME)


def save_png(fig: Figure, target: Path) -> Path:
    """Write a figure as PNG; an unwritable place is a UserError naming it."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, format="png", dpi=150)
    except OSError as error:
        raise UserError(f"cannot write {target}: {error.strerror or error}") from None
    return target
