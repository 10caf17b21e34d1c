"""Figures from run records, drawn with matplotlib's Agg canvas (no display needed), sized for a
paper (`--size column|page`) and written as PDF, SVG or PNG as the file name says.

Error vs batch size, like Figure 1 of the GroupNorm paper: one line per norm in its own colour,
marker and line style (study.style), log2 x axis, error bars = sample std over seeds. Training
curves from each run's TensorBoard events (`normbench plot PATH --curves`), like those of the GN
and MABN papers: one panel per value of the column key (batch by default, ordered as in the table),
one line per row value (norm) = mean over seeds with a light min..max band; train loss per logged
step on top, test error per epoch below, against epochs or images seen (`--x`; the number of steps
per epoch differs between batch sizes). Both carry a caption as their title: what was run, and
what the bars or bands mean. Runs are selected and grouped exactly as by `normbench table`
(`load_runs`, `--where`, `build_table`): only completed runs are drawn, and a sweep folder reads
its own cells.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter

from ..errors import UserError
from ..records import RunRecord
from .events import TEST_ERROR, TRAIN_LOSS, Band, RunCurves, run_curves, seed_band
from .events import event_files as event_files  # re-exported: the curves' API, as before
from .events import read_scalars as read_scalars
from .figure_parts import (
    add_legend,
    bars_pieces,
    describe_runs,
    figure_format,
    figure_height,
    legend_rows,
    save_figure,
    seed_range,
    set_fonts,
    wrap_caption,
)
from .metrics import HIGHER, LOWER, metric_info, parse_metrics
from .run_records import Run, load_runs, warn
from .style import GRAY, SIZES, LineStyle, Size, SizeStyle, XAxis, row_label, row_styles
from .tables import Table, build_table
from .where import parse_where

DEFAULT_NAME = "error_vs_batch.png"
CURVES_NAME = "curves.png"
save_png = save_figure  # the name study.sweep uses for a sweep's error_vs_batch.png
MANY_MARKERS = 12  # a test-error line with more epochs than this marks every n-th only


def chance_level(metric: str, runs: list[Run]) -> tuple[float, str]:
    """The metric's value for a classifier that guesses (from data.num_classes) and its legend
    label: 100·(1−1/classes) for an error in %, 1/classes for an accuracy fraction."""
    classes = {run.get("data.num_classes") for run in runs}
    found = next(iter(classes)) if len(classes) == 1 else None
    if not isinstance(found, int) or found < 2:
        raise UserError(
            "--chance needs the same data.num_classes in every drawn run; they have "
            f"{sorted(classes, key=str)} (draw one data set with --where data=...)"
        )
    info = metric_info(metric)
    if info.better == LOWER and info.label.endswith("(%)"):
        level = 100 * (1 - 1 / found)
        return level, f"chance ({level:.3g}%)"
    if info.better == HIGHER and "fraction" in info.label:
        return 1 / found, f"chance ({1 / found:.3g})"
    raise UserError(
        f"--chance: {metric} has no chance level (an error in % or an accuracy has); drop --chance"
    )


def _source_runs(table: Table, runs: list[Run] | None) -> list[Run]:
    """The completed runs the table's cells average (read again from disk if not given)."""
    by_path = {run.path: run for run in runs or ()}
    sources = [path for cell in table.cells.values() for path in cell.sources]
    return [by_path.get(path) or Run(path, RunRecord.read(path)) for path in sources]


def _draw_rows(ax: Any, table: Table, style: SizeStyle) -> None:
    """One error-bar line per table row that has a completed cell, in the row's own style."""
    styles = row_styles(table.rows_key, table.rows)
    for row in table.rows:
        cells = [(x, table.cell(row, x)) for x in table.cols]
        points = sorted((x, c.mean, c.std or 0.0) for x, c in cells if c.mean is not None)
        if not points:
            continue
        xs, ys, errs = zip(*points)
        ax.errorbar(
            list(xs),
            list(ys),
            yerr=list(errs),
            capsize=0.6 * style.marker,
            linewidth=style.line,
            elinewidth=0.7 * style.line,
            label=row_label(table.rows_key, row),
            **styles[row].kwargs(style.marker),
        )


def _batch_axis(ax: Any, table: Table, style: SizeStyle) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(table.cols)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.minorticks_off()
    if table.cols_key == "batch":
        # large batch on the left, shrinking to the right, as in the GN paper's Figure 1
        ax.invert_xaxis()
    key = table.cols_key
    ax.set_xlabel(f"{key} (images per device)" if key == "batch" else key)
    ax.set_ylabel(metric_info(table.metric).label)
    ax.grid(True, alpha=0.3, linewidth=0.5)
    set_fonts(ax, style)


def make_figure(
    table: Table,
    runs: list[Run] | None = None,
    size: Size | str = Size.column,
    chance: bool = False,
) -> Figure:
    """Error vs the column key: one line per row, error bars = sample std over seeds, the caption
    as the figure's title. Cells without a completed run are left out.

    Args:
        runs: the runs the table was built from (None: read from the cells' records).
        size: `--size`: column or page width (study.style.SIZES).
        chance: draw the metric's chance level (chance_level).
    """
    cols = table.cols
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in cols):
        raise UserError(f"plot needs a positive numeric swept key; {table.cols_key} has {cols}")
    style = SIZES[Size(size)]
    drawn = _source_runs(table, runs)
    seeds = {c.n for c in table.cells.values() if c.n}
    pieces = [*describe_runs(drawn), *([table.where] if table.where else []), *bars_pieces(seeds)]
    caption = wrap_caption(pieces, style.caption_chars)
    legend = legend_rows(style, len(table.rows) + chance)
    fig = Figure(
        figsize=(style.width, figure_height(style, style.axes_height, caption, legend)),
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _draw_rows(ax, table, style)
    if chance:
        level, label = chance_level(table.metric, drawn)
        ax.axhline(level, color=GRAY, linestyle=(0, (1, 1)), linewidth=style.line, label=label)
    _batch_axis(ax, table, style)
    fig.suptitle(caption, fontsize=style.font)
    handles, labels = ax.get_legend_handles_labels()
    # the lines first, then the chance level (a plain Line2D; each line is an errorbar container)
    order = sorted(range(len(handles)), key=lambda i: isinstance(handles[i], Line2D))
    title = None if table.rows_key == "norm" else table.rows_key
    add_legend(fig, [handles[i] for i in order], [labels[i] for i in order], title, style)
    return fig


def plot(
    path: Path | str,
    out: Path | str | None = None,
    metric: str = "test_error",
    rows: str = "norm",
    cols: str = "batch",
    *,
    size: Size | str = Size.column,
    chance: bool = False,
    where: list[str] | None = None,
) -> Path:
    """Build the table under PATH and write the figure of one metric (default
    PATH/error_vs_batch.png; the suffix of `out` chooses pdf, svg or png)."""
    target = Path(out) if out is not None else Path(path) / DEFAULT_NAME
    figure_format(target)
    if len(parse_metrics(metric)) > 1:
        raise UserError(
            f"--metric {metric!r}: a figure draws one metric; give one (a table shows several)"
        )
    runs = load_runs(path)
    table = build_table(path, metric, rows, cols, runs=runs, where=parse_where(where))
    return save_figure(make_figure(table, runs, size, chance), target)


def _draw_band(
    ax: Any, band: Band, label: str, line: LineStyle, style: SizeStyle, marked: bool
) -> None:
    """One line (mean over seeds) with its min..max band; markers when `marked` or when the line
    has a single point (a lone point without a marker draws nothing)."""
    drawn = line.kwargs(0.8 * style.marker)
    if not marked and len(band.x) > 1:
        drawn["marker"] = None
    ax.plot(
        band.x,
        band.mean,
        linewidth=style.line,
        markevery=max(1, len(band.x) // MANY_MARKERS),
        label=label,
        **drawn,
    )
    if band.seeds > 1:
        ax.fill_between(band.x, band.low, band.high, color=line.color, alpha=0.18, linewidth=0)


def _draw_panel(
    top: Any, bottom: Any, table: Table, col: Any, curves: dict[Path, RunCurves], style: SizeStyle
) -> list[Any]:
    """One column of panels (train loss over test error) of the table column `col`; returns the
    rows drawn."""
    top.set_title(f"{table.cols_key}={col}", fontsize=style.label)
    styles = row_styles(table.rows_key, table.rows)
    drawn = []
    for row in table.rows:
        members = [curves[p] for p in table.cell(row, col).sources if p in curves]
        if not members:
            continue
        drawn.append(row)
        for ax, band, marked in (
            (top, seed_band([m.train_loss for m in members]), False),
            (bottom, seed_band([m.test_error for m in members]), True),
        ):
            _draw_band(ax, band, str(row), styles[row], style, marked)
    if not top.lines:
        top.text(0.5, 0.5, "no curves", transform=top.transAxes, ha="center", color="gray")
    return drawn


def make_curves_figure(
    table: Table,
    curves: dict[Path, RunCurves],
    size: Size | str = Size.page,
    x: XAxis | str = XAxis.epochs,
) -> Figure:
    """Two rows of panels (train loss, test error) x one column per table column; the lines of a
    panel are the table's rows (the same style in every panel and figure), drawn from the cell's
    completed runs that have curves (`curves`, keyed by record path). Rows share y so that panels
    compare at a glance."""
    style = SIZES[Size(size)]
    # a cell's band averages the runs of the cell that have curves
    counts = [sum(p in curves for p in cell.sources) for cell in table.cells.values()]
    seeds = {n for n in counts if n}
    band = f"line = mean over {seed_range(seeds)} seed(s), band = min..max"
    pieces = ["train loss (per logged step) and test error (per epoch)"]
    pieces += describe_runs([c.run for c in curves.values()])
    pieces += [table.where] if table.where else []
    pieces.append("; " + (band if max(seeds, default=0) > 1 else "one seed per line"))
    caption = wrap_caption(pieces, style.caption_chars)
    height = figure_height(style, style.panels_height, caption, legend_rows(style, len(table.rows)))
    fig = Figure(figsize=(style.width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(table.cols), sharex=True, sharey="row", squeeze=False)
    drawn: list[Any] = []
    for j, col in enumerate(table.cols):
        rows = _draw_panel(axes[0][j], axes[1][j], table, col, curves, style)
        drawn += [row for row in rows if row not in drawn]
        axes[1][j].set_xlabel("epoch" if XAxis(x) is XAxis.epochs else "images seen")
        for ax in (axes[0][j], axes[1][j]):
            ax.grid(True, alpha=0.3, linewidth=0.5)
            set_fonts(ax, style)
    # the x axis is shared: one limit and formatter serve every panel; training starts at 0
    axes[1][0].set_xlim(left=0)
    if XAxis(x) is XAxis.images:  # 20k, 1.5M
        axes[1][0].xaxis.set_major_formatter(EngFormatter(sep=""))
    axes[0][0].set_ylabel("train loss", fontsize=style.label)
    axes[1][0].set_ylabel(metric_info("test_error").label, fontsize=style.label)
    fig.suptitle(caption, fontsize=style.font)
    styles = row_styles(table.rows_key, table.rows)
    handles = [
        Line2D([], [], linewidth=style.line, **styles[row].kwargs(0.8 * style.marker))
        for row in drawn
    ]
    labels = [row_label(table.rows_key, row) for row in drawn]
    title = None if table.rows_key == "norm" else table.rows_key
    add_legend(fig, handles, labels, title, style)
    return fig


def curves_figure(
    path: Path | str,
    rows: str = "norm",
    cols: str = "batch",
    *,
    size: Size | str = Size.page,
    x: XAxis | str = XAxis.epochs,
    where: list[str] | None = None,
) -> Figure:
    """The figure of the completed runs under PATH, grouped as by `normbench table PATH --rows
    --cols`. Runs without curves are skipped with one warning line naming them; none with curves ->
    UserError."""
    runs = load_runs(path)
    table = build_table(path, "test_error", rows, cols, runs=runs, where=parse_where(where))
    sources = [source for cell in table.cells.values() for source in cell.sources]
    if not sources:
        raise UserError(
            f"no completed run under {path} to draw curves of; finish the runs (rerun "
            f"`normbench run`/`sweep` to resume them) or point at another folder"
        )
    left_out = sum(c.diverged + c.failed + c.pending for c in table.cells.values())
    if left_out:
        warn(
            f"curves leave out {left_out} run(s) that did not complete (diverged, failed or "
            "unfinished), as the table does"
        )
    by_path = {run.path: run for run in runs}
    curves: dict[Path, RunCurves] = {}
    skipped = []
    for source in sources:
        result = run_curves(by_path[source], images=XAxis(x) is XAxis.images)
        if isinstance(result, str):
            skipped.append(f"{source.parent} ({result})")
        else:
            curves[source] = result
    if not curves:
        raise UserError(
            f"none of the {len(sources)} completed run(s) under {path} has TensorBoard curves "
            f"(tb/ with {TRAIN_LOSS} and {TEST_ERROR}); rerun them with `normbench run ... "
            "--force` to write tb/ again"
        )
    if skipped:
        warn(f"skipping {len(skipped)} run(s) without curves: {'; '.join(skipped)}")
    return make_curves_figure(table, curves, size, x)


def plot_curves(
    path: Path | str,
    out: Path | str | None = None,
    rows: str = "norm",
    cols: str = "batch",
    *,
    size: Size | str = Size.page,
    x: XAxis | str = XAxis.epochs,
    where: list[str] | None = None,
) -> Path:
    """Write the curves figure of PATH (default PATH/curves.png; the suffix of `out` chooses pdf,
    svg or png)."""
    target = Path(out) if out is not None else Path(path) / CURVES_NAME
    figure_format(target)
    figure = curves_figure(path, rows, cols, size=size, x=x, where=where)
    return save_figure(figure, target)
