"""Figures from run records, drawn with matplotlib's Agg canvas (no display needed).

Error vs batch size, like Figure 1 of the GroupNorm paper: one line per norm, log2 x axis, error
bars = sample std over seeds. Training curves from each run's TensorBoard events (`normbench plot
PATH --curves`), like those of the GN and MABN papers: one panel per value of the column key (batch
by default, ordered as in the table), one line per row value (norm) = mean over seeds with a light
min..max band; train loss per logged step on top, test error per epoch below. Both use epochs on the
x axis, since the number of steps per epoch differs between batch sizes. Runs are selected and
grouped exactly as by `normbench table` (`load_runs` + `build_table`): only completed runs are
drawn, and a sweep folder reads its own cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..errors import UserError
from .metrics import metric_info, parse_metrics
from .tables import Run, Table, build_table, load_runs, warn

DEFAULT_NAME = "error_vs_batch.png"
CURVES_NAME = "curves.png"
TRAIN_LOSS, TEST_ERROR = "train/loss", "epoch/test_error"  # tags written by normbench.epochs
EVENTS_GLOB = "events.out.tfevents.*"


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
    label = metric_info(table.metric).label
    ax.set_ylabel(label)
    title = f"{label} vs {table.cols_key} (mean ± std over seeds)"
    # a long metric label on a line of its own, so that the 6 in wide figure shows the title whole
    ax.set_title(title if len(title) <= 64 else title.replace(" vs ", "\nvs ", 1))
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
    """Build the table under PATH and write the figure of one metric (default
    PATH/error_vs_batch.png)."""
    if len(parse_metrics(metric)) > 1:
        raise UserError(
            f"--metric {metric!r}: a figure draws one metric; give one (a table shows several)"
        )
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


def event_files(tb_dir: Path) -> list[Path]:
    """The event files of one run folder's tb/ (add_hparams writes into the same folder,
    run_name=".")."""
    return sorted(p for p in tb_dir.glob(EVENTS_GLOB) if p.is_file()) if tb_dir.is_dir() else []


def _read_file(file: Path) -> tuple[float, dict[str, dict[int, float]]] | None:
    """(wall time of the file's first event, {tag: {step: value}}), or None for a file without
    events (a writer killed before its first flush)."""
    # deferred: tensorboard is a heavy import that only --curves needs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # 0 = keep every point, not a sample
    events = EventAccumulator(str(file), size_guidance={"scalars": 0})
    events.Reload()
    try:
        first = events.FirstEventTimestamp()
    except ValueError:
        return None
    return first, {
        tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]
    }


def read_scalars(tb_dir: Path | str) -> dict[str, pd.Series]:
    """Every scalar tag of one run's tb/ as a Series indexed by step, sorted, each step once.

    A resumed run has one event file per attempt, and the killed attempt may have logged steps that
    the resumed one logs again. Each file is read on its own and the files are taken in the order
    they were started (wall time of their first event); for every tag, a later file's points replace
    all earlier points at or after the first step it logged for that tag. TensorBoard's own purge
    (directory reading + the resumed writer's purge_step) is not enough here: it orders files by
    name, whose time field has a 1 s resolution; it drops steps >= purge_step, which with purge_step
    = epochs done * steps per epoch also hides the last point logged in the last completed epoch;
    and it cannot apply to the epoch/* tags, whose x is the epoch rather than the step (one flushed
    just before a kill would stay twice)."""
    loaded = [read for read in map(_read_file, event_files(Path(tb_dir))) if read is not None]
    merged: dict[str, dict[int, float]] = {}
    for _, scalars in sorted(loaded, key=lambda item: item[0]):
        for tag, points in scalars.items():
            if not points:
                continue
            first = min(points)
            kept = {step: value for step, value in merged.get(tag, {}).items() if step < first}
            kept.update(points)
            merged[tag] = kept
    return {tag: pd.Series(points, dtype=float).sort_index() for tag, points in merged.items()}


@dataclass
class RunCurves:
    run: Run
    # index: epochs (step / steps per epoch), one point per log.every_steps steps
    train_loss: pd.Series
    test_error: pd.Series  # index: epoch 1, 2, ...; top-1 error in %


def run_curves(run: Run) -> RunCurves | str:
    """The curves of one run, or why it has none (a short reason for the warning line)."""
    run_dir = run.path.parent
    if not event_files(run_dir / "tb"):
        return "no TensorBoard events in tb/"
    steps_per_epoch = (run.record.setup or {}).get("steps_per_epoch")
    if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
        return "no setup.steps_per_epoch in record.json"
    scalars = read_scalars(run_dir / "tb")
    if TRAIN_LOSS not in scalars or TEST_ERROR not in scalars:
        return f"no {TRAIN_LOSS} or {TEST_ERROR} scalars in tb/"
    loss = scalars[TRAIN_LOSS]
    loss.index = loss.index / steps_per_epoch
    return RunCurves(run, loss, scalars[TEST_ERROR])


@dataclass
class Band:
    x: list[float]
    mean: list[float]
    low: list[float]  # min over seeds
    high: list[float]  # max over seeds
    seeds: int


def seed_band(series: list[pd.Series]) -> Band:
    """Mean and min..max over seeds at the x values every seed has (seeds of one cell share a
    config, so they log the same steps)."""
    frame = pd.concat(series, axis=1, join="inner")
    return Band(
        list(frame.index),
        list(frame.mean(axis=1)),
        list(frame.min(axis=1)),
        list(frame.max(axis=1)),
        frame.shape[1],
    )


def _colors(n: int) -> list[Any]:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _draw_band(
    ax: Any, band: Band, label: str, color: Any, width: float, marker: str | None
) -> None:
    """One line (mean over seeds) with its min..max band; a wide line is drawn underneath."""
    ax.plot(
        band.x,
        band.mean,
        color=color,
        marker=marker,
        markersize=3,
        linewidth=width,
        zorder=1.9 if width > 2 else 2,
        label=label,
    )
    if band.seeds > 1:
        ax.fill_between(band.x, band.low, band.high, color=color, alpha=0.18, linewidth=0)


def make_curves_figure(table: Table, curves: dict[Path, RunCurves]) -> Figure:
    """Two rows of panels (train loss, test error) x one column per table column; the lines of a
    panel are the table's rows (same colour in every panel), drawn from the cell's completed runs
    that have curves (`curves`, keyed by record path). Rows share y so that panels compare at a
    glance."""
    ncols = len(table.cols)
    # at least as wide as the title's first line and the legend, however few panels
    fig = Figure(figsize=(max(0.8 + 3.0 * ncols, 7.0), 6.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, ncols, sharex=True, sharey="row", squeeze=False)
    colors = dict(zip(table.rows, _colors(len(table.rows))))
    # the first row (bn, the baseline, when rows are norms) is drawn wider and underneath, so that a
    # line on top of it (e.g. BRN, which starts as BN) leaves it visible
    widths = {row: 2.6 if i == 0 else 1.3 for i, row in enumerate(table.rows)}
    drawn: list[Any] = []
    seed_counts: set[int] = set()
    for j, col in enumerate(table.cols):
        top, bottom = axes[0][j], axes[1][j]
        top.set_title(f"{table.cols_key}={col}")
        for row in table.rows:
            members = [curves[p] for p in table.cell(row, col).sources if p in curves]
            if not members:
                continue
            if row not in drawn:
                drawn.append(row)
            for ax, band, marker in (
                (top, seed_band([m.train_loss for m in members]), None),
                (bottom, seed_band([m.test_error for m in members]), "o"),
            ):
                _draw_band(ax, band, str(row), colors[row], widths[row], marker)
                seed_counts.add(band.seeds)
        if not top.lines:
            top.text(
                0.5,
                0.5,
                "no curves",
                transform=top.transAxes,
                ha="center",
                va="center",
                color="gray",
            )
        bottom.set_xlabel("epoch")
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("train loss")
    axes[1][0].set_ylabel(metric_info("test_error").label)
    handles = [Line2D([], [], color=colors[row], linewidth=widths[row]) for row in drawn]
    fig.legend(
        handles, [str(row) for row in drawn], title=table.rows_key, loc="outside right upper"
    )
    seeds = (
        f"{min(seed_counts)}–{max(seed_counts)}"
        if len(seed_counts) > 1
        else str(min(seed_counts, default=0))
    )
    fig.suptitle(
        "train loss (per logged step) and test error (per epoch) vs epoch\n"
        f"line = mean over {seeds} seed(s), band = min..max"
    )
    return fig


def curves_figure(path: Path | str, rows: str = "norm", cols: str = "batch") -> Figure:
    """The figure of the completed runs under PATH, grouped as by `normbench table PATH --rows
    --cols`. Runs without curves are skipped with one warning line naming them; none with curves ->
    UserError."""
    runs = load_runs(path)
    table = build_table(path, "test_error", rows, cols, runs=runs)
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
        result = run_curves(by_path[source])
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
    return make_curves_figure(table, curves)


def plot_curves(
    path: Path | str, out: Path | str | None = None, rows: str = "norm", cols: str = "batch"
) -> Path:
    """Write the curves figure of PATH (default PATH/curves.png)."""
    return save_png(
        curves_figure(path, rows, cols), Path(out) if out is not None else Path(path) / CURVES_NAME
    )
