"""The `normbench` command line (Typer). Overrides after the command go to Hydra: `normbench run
norm=gn batch=2`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from . import log
from .config import config_dir
from .errors import UserError
from .help_text import SWEEP_HELP, config_help, norm_lines
from .study.formats import render, write_text
from .study.metrics import KNOWN, SWEEP_EXTRA
from .study.tables import build_table
from .values import did_you_mean

EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}
# options `run` and `sweep` share: one object each, so their flags and help stay the same
CONFIG_DIR_OPTION = typer.Option(
    None,
    "--config-dir",
    help="Extra folder of config groups (e.g. DIR/norm/mine.yaml), searched before the "
    "shipped ones. Also NORMBENCH_CONFIG_DIR.",
)
DEBUG_OPTION = typer.Option(False, "--debug", help="Show full tracebacks.")
PLUGIN_OPTION = typer.Option(  # run, sweep, check, list
    None,
    "--plugin",
    metavar="MODULE",
    help="Import MODULE, which registers norms with normbench.norms.register_norm (repeatable; "
    "also NORMBENCH_PLUGINS=mod1,mod2 and entry points normbench.norms; README: Your own norm).",
)
KNOWN_METRICS = ", ".join(KNOWN)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Compare normalization layers in CNNs as the per-device batch shrinks.",
)


RUN_HELP = f"""Train one config and write <out>/runs/<run_key>/ (config.yaml, record.json, tb/,
checkpoint.pt).

Examples: normbench run norm=gn batch=2 | normbench run norm=frn data.train_size=2000 epochs=2

A completed run is not redone (use --force); an interrupted one resumes from its checkpoint.

{config_help()}"""


@app.command(context_settings=EXTRA_ARGS, help=RUN_HELP)
def run(
    ctx: typer.Context,
    config_dir: Path | None = CONFIG_DIR_OPTION,
    force: bool = typer.Option(False, "--force", help="Train again even if the run completed."),
    plugin: list[str] | None = PLUGIN_OPTION,
    debug: bool = DEBUG_OPTION,
) -> None:
    # deferred, like every command that trains: torch takes seconds to import; --help does not
    from .config import compose
    from .plugins import load_plugins
    from .runner import run as run_one

    overrides = list(ctx.args)
    _reject_options(overrides)
    load_plugins(plugin or ())  # before composing: a plugin norm's config comes with it
    cfg, choices = compose(overrides, config_dir, with_choices=True)
    try:
        result = run_one(
            cfg, choices, overrides, str(config_dir) if config_dir else None, force=force
        )
    except KeyboardInterrupt:  # the record says "interrupted" and the last checkpoint is kept
        typer.echo(
            "interrupted: rerun the same command to resume from the last checkpoint", err=True
        )
        raise typer.Exit(130) from None
    from .distributed import is_main  # already imported by the runner above
    from .records import Status

    if not is_main():  # torchrun: rank 0 reports the run
        return
    record = result.record
    metrics = record.metrics
    if result.skipped and record.status is Status.DIVERGED:
        where = record.diverged_at or {}
        typer.echo(
            f"already diverged: {result.run_dir} (epoch {where.get('epoch')}, step "
            f"{where.get('step')}); --force trains it again"
        )
    elif result.skipped:
        typer.echo(
            f"already completed: {result.run_dir} (test_error {metrics.get('test_error'):.2f}%); "
            "--force trains it again"
        )
    elif record.status is Status.COMPLETED:
        shown = ("test_error", "test_error_precise", "test_error_batch", "test_error_at_best_val")
        errors = "  ".join(
            f"{name} {metrics[name]:.2f}%" for name in shown if metrics.get(name) is not None
        )
        typer.echo(
            f"completed: {result.run_dir}  {errors}  test_acc {metrics['test_acc']:.4f}  "
            f"{record.timing['train_seconds']:.1f}s"
        )
    else:
        typer.echo(f"{record.status.value}: {result.run_dir}")


@app.command(context_settings=EXTRA_ARGS, help=SWEEP_HELP)
def sweep(
    ctx: typer.Context,
    name: str | None = typer.Option(
        None,
        "--name",
        help="Folder name under <out>/sweeps/ (default: from the swept keys and values, e.g. "
        "norm-bn,gn_batch-2,4).",
    ),
    config_dir: Path | None = CONFIG_DIR_OPTION,
    jobs: int = typer.Option(
        1,
        "--jobs",
        "-j",
        help="Cells trained at once in local worker processes (Hydra's joblib launcher); torch "
        "threads are split between them.",
    ),
    metric: str | None = typer.Option(
        None,
        "--metric",
        help="The sweep table's metric(s), a comma list for one sub-row each (default: "
        f"test_error, plus each of {', '.join(SWEEP_EXTRA)} that every completed run holds). "
        f"Known: {KNOWN_METRICS}.",
    ),
    plugin: list[str] | None = PLUGIN_OPTION,
    debug: bool = DEBUG_OPTION,
) -> None:
    # deferred, like every command that trains: torch takes seconds to import, `table` needs none
    from .plugins import load_plugins
    from .study.sweep import report, run_sweep

    overrides = list(ctx.args)
    _reject_options(overrides)
    load_plugins(plugin or ())  # before the cells are composed; launched jobs load them too
    try:
        result = run_sweep(
            overrides, name, str(config_dir) if config_dir else None, jobs=jobs, metric=metric
        )
    # the current run keeps its last checkpoint; completed cells are skipped next time
    except KeyboardInterrupt:
        typer.echo(
            "interrupted: rerun the same sweep command to resume (completed cells are skipped)",
            err=True,
        )
        raise typer.Exit(130) from None
    report(result)


LISTABLE = ("norms", "backbones", "data", "experiments")


@app.command("list")
def list_(
    what: str = typer.Argument("norms", help="norms, backbones, data or experiments"),
    plugin: list[str] | None = PLUGIN_OPTION,
) -> None:
    """What is available, one line each; a plugin norm says which module registered it."""
    if what not in LISTABLE:
        raise UserError(
            f"cannot list {what!r}{did_you_mean(what, LISTABLE)}; choose one of: "
            f"{', '.join(LISTABLE)}"
        )
    if what == "norms":
        from .norms import NORMS  # deferred here and below: the registries import torch
        from .plugins import load_plugins

        load_plugins(plugin or ())
        for line in norm_lines(NORMS):
            typer.echo(line)
    elif what == "backbones":
        from .backbones import BACKBONES

        for name, spec in BACKBONES.items():
            typer.echo(f"{name:<12} {spec.description}  [input: {spec.inputs}]")
    elif what == "data":
        from .data import DATASETS

        for name, spec in DATASETS.items():
            typer.echo(f"{name:<14} {spec.description}")
    else:
        presets = sorted((config_dir() / "experiment").glob("*.yaml"))
        for path in presets:
            first = next(
                (
                    line.lstrip("# ").strip()
                    for line in path.read_text().splitlines()
                    if line.startswith("#") and "@package" not in line
                ),
                "",
            )
            typer.echo(f"{path.stem:<14} {first}")
        if not presets:
            typer.echo("no experiment presets yet")


@app.command()
def check(
    norm: str | None = typer.Option(None, "--norm", help="Only the checks about this norm."),
    plugin: list[str] | None = PLUGIN_OPTION,
) -> None:
    """Numerical self-check of the norm layers: one PASS/FAIL line per check; exit 1 if any
    fails."""
    from .norms import NORMS  # deferred: imports torch
    from .plugins import load_plugins
    from .selfcheck import run_checks

    load_plugins(plugin or ())
    if norm is not None and norm not in NORMS:
        raise UserError(
            f"unknown norm {norm!r}{did_you_mean(norm, NORMS)}; choose one of: {', '.join(NORMS)}"
        )
    results = run_checks(norm)
    for check_, passed, detail in results:
        typer.echo(f"{'PASS' if passed else 'FAIL'}  {check_.name}: {detail}")
    failed = sum(not passed for _, passed, _ in results)
    typer.echo(f"{len(results) - failed} passed, {failed} failed")
    if failed:
        raise typer.Exit(1)


@app.command()
def table(
    path: Path = typer.Argument(
        ..., help="A sweep folder or any folder containing run dirs (searched recursively)."
    ),
    fmt: str = typer.Option(
        "md", "--format", help="md (printed Markdown), latex (booktabs) or csv (raw numbers)."
    ),
    metric: str | None = typer.Option(
        None,
        "--metric",
        help="Any numeric metric the records hold, or a comma list for one sub-row each (CSV: a "
        "metric column, one line per row and metric). Default: test_error; for a sweep folder "
        f"the metrics of the sweep's own table. Known: {KNOWN_METRICS}.",
    ),
    rows: str = typer.Option(
        "norm", "--rows", help="Config key for the rows (e.g. norm, backbone)."
    ),
    cols: str = typer.Option(
        "batch", "--cols", help="Config key for the columns (e.g. batch, accum, norm.groups)."
    ),
    cost: bool = typer.Option(
        False, "--cost", help="Add mean images/s and peak memory (MB) per row."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write to this file instead of printing."),
) -> None:
    """Paper-style table from the run records under PATH: mean ± std over seeds, best per column in
    bold; ‡ marks a cell with a suspect run (near chance, or under 100 SGD steps), never bold."""
    text = render(build_table(path, metric, rows, cols), fmt, cost)
    if out is None:
        typer.echo(text, nl=False)
    else:
        typer.echo(f"wrote {write_text(out, text)}")


@app.command()
def plot(
    path: Path = typer.Argument(
        ..., help="A sweep folder or any folder containing run dirs (searched recursively)."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="PNG to write (default PATH/error_vs_batch.png, with --curves PATH/curves.png).",
    ),
    metric: str = typer.Option(
        "test_error",
        "--metric",
        help="Any one numeric metric the records hold (error-vs-batch figure only). Known: "
        f"{KNOWN_METRICS}.",
    ),
    rows: str = typer.Option(
        "norm", "--rows", help="Config key for the lines (e.g. norm, backbone)."
    ),
    cols: str = typer.Option(
        "batch",
        "--cols",
        help="Config key for the x axis, or for the panels with --curves (e.g. batch, accum, "
        "norm.groups).",
    ),
    curves: bool = typer.Option(
        False,
        "--curves",
        help="Training curves from the runs' TensorBoard events instead: one panel per --cols "
        "value, train loss and test error vs epoch, one line per --rows value (mean over seeds, "
        "band = min..max).",
    ),
) -> None:
    """Error-vs-batch-size figure: one line per norm, log2 x axis, error bars = std over seeds (or
    --curves)."""
    # deferred: matplotlib takes about a second to import and only the figures need it
    from .study.figures import plot as draw
    from .study.figures import plot_curves

    if curves:
        if metric != "test_error":
            raise UserError(
                "--metric chooses the error-vs-batch figure's y; --curves always draws train "
                "loss and test error: drop one of the two options"
            )
        typer.echo(f"wrote {plot_curves(path, out, rows, cols)}")
        return
    typer.echo(f"wrote {draw(path, out, metric, rows, cols)}")


@app.command()
def bench(
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu or cuda."),
    quick: bool = typer.Option(
        False, "--quick", help="Small sizes, one or two repeats: seconds, rough ratios."
    ),
    only: str | None = typer.Option(
        None, "--only", help="Sections, comma list of loop, norms, fold, devices (default all)."
    ),
    norms: str | None = typer.Option(
        None,
        "--norms",
        help="Norms of the norms section (default every registered norm; bn is always measured, "
        "the reference) and of the devices section (default bn, gn, mabn), comma list.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Write every measurement as JSON to this file."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="torch intra-op threads (1 on a shared machine)."
    ),
    repeats: int | None = typer.Option(
        None, "--repeats", help="Repeats of every section (default 3, 9, 30 and 31)."
    ),
    norm_batch: int | None = typer.Option(
        None, "--norm-batch", help="Images per step, norms section (16)."
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", help="Input px, norms section (32)."
    ),
    amp: bool = typer.Option(False, "--amp", help="Norms and devices sections with amp=true."),
    channels_last: bool = typer.Option(
        False, "--channels-last", help="Norms and devices sections with channels_last=true."
    ),
    compile_mode: str | None = typer.Option(
        None,
        "--compile",
        help="Norms and devices sections with torch.compile: default, reduce-overhead or "
        "max-autotune.",
    ),
) -> None:
    """Loop overhead (normbench vs a minimal loop vs the DataLoader loop), train-step time and
    activation memory of every norm on ResNet-18 relative to BN, eval latency with BN folded, and
    images/s of simulated devices vs one plain batch vs accum; ratios with their targets."""
    from .bench import fast_overrides, run_bench  # deferred: imports torch

    run_bench(
        device,
        quick,
        only,
        norms,
        out,
        threads,
        repeats,
        norm_batch,
        image_size,
        fast_overrides(amp, channels_last, compile_mode),
        echo=typer.echo,
    )


def _reject_options(args: list[str]) -> None:
    """Unknown --options would otherwise reach Hydra as overrides and fail with a confusing
    message."""
    for arg in args:
        if arg.startswith("-"):
            raise UserError(
                f"unknown option {arg!r}: overrides are key=value (e.g. norm=gn); see --help"
            )


def main() -> None:
    debug = "--debug" in sys.argv or os.environ.get("HYDRA_FULL_ERROR") == "1"
    log.configure()
    try:
        app(standalone_mode=True)
    except UserError as error:
        if debug:
            raise
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
