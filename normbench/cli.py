"""The `normbench` command line (Typer). Overrides after the command go to Hydra: `normbench run
norm=gn batch=2`."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, get_args

import typer

from . import __version__, log
from .cli_figures import plot
from .cli_study import register_study_commands
from .errors import UserError
from .help_text import (
    SWEEP_HELP,
    ConfigHelpCommand,
    backbone_lines,
    config_help,
    experiment_lines,
    norm_lines,
)
from .preemption import PREEMPTED_EXIT, Preempted, stopped_message
from .study.metrics import KNOWN, SWEEP_EXTRA
from .values import choice_parser, did_you_mean

EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}
# options `run` and `sweep` share: one object each, so their flags and help stay the same
CONFIG_DIR_OPTION = typer.Option(
    None,
    "--config-dir",
    help="Extra folder of config groups (e.g. DIR/norm/mine.yaml), searched before the "
    "shipped ones. Also NORMBENCH_CONFIG_DIR.",
)
DEBUG_OPTION = typer.Option(False, "--debug", help="Show full tracebacks.")
DRY_RUN_OPTION = typer.Option(
    False,
    "--dry-run",
    help="Train nothing, write nothing: print what would train (resolved config or the cells, run "
    "keys, SGD batch, lr used, steps per epoch, done or not) and a time estimate.",
)
HYDRA_CFG_OPTION = typer.Option(
    None, "--cfg", "-c", metavar="job", help="Hydra's --cfg job: the same as --dry-run."
)
PLUGIN_OPTION = typer.Option(  # run, sweep, check, list
    None,
    "--plugin",
    metavar="MODULE",
    help="Import MODULE, which registers norms with normbench.norms.register_norm (repeatable; "
    "also NORMBENCH_PLUGINS=mod1,mod2 and entry points normbench.norms; README: Your own norm).",
)
JOBS_PER_GPU_OPTION = typer.Option(  # sweep
    1,
    "--jobs-per-gpu",
    help="On a GPU machine each --jobs job gets a GPU of its own; K lets up to K jobs share one "
    "(N jobs use N/K GPUs). More jobs than GPUs x K share them evenly.",
)
KNOWN_METRICS = ", ".join(KNOWN)

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Compare normalization layers in CNNs as the per-device batch shrinks.",
)


def _show_version(show: bool) -> None:
    if show:
        typer.echo(f"normbench {__version__}")
        raise typer.Exit()


@app.callback()
def _app_options(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version."
    ),
) -> None:
    pass  # the options of `normbench` itself, before the command


RUN_HELP = f"""Train one config and write <out>/runs/<run_key>/ (config.yaml, record.json, tb/,
checkpoint.pt).

Examples: normbench run norm=gn batch=2 | normbench run norm=frn data.train_size=2000 epochs=2

A completed run is not redone (use --force); an interrupted one resumes from its checkpoint.

{config_help()}"""


@app.command(context_settings=EXTRA_ARGS, help=RUN_HELP, cls=ConfigHelpCommand)
def run(
    ctx: typer.Context,
    config_dir: Path | None = CONFIG_DIR_OPTION,
    force: bool = typer.Option(False, "--force", help="Train again even if the run completed."),
    dry_run: bool = DRY_RUN_OPTION,
    hydra_cfg: str | None = HYDRA_CFG_OPTION,
    plugin: list[str] | None = PLUGIN_OPTION,
    debug: bool = DEBUG_OPTION,
) -> None:
    # deferred, like every command that trains: torch takes seconds to import; --help does not
    from .config import check_single_run, compose
    from .plugins import load_plugins
    from .run_report import interrupted_message, outcome_lines
    from .runner import plan_run, run_planned

    overrides, user_dir = list(ctx.args), str(config_dir) if config_dir else None
    _reject_options(overrides)
    load_plugins(plugin or ())  # before composing: a plugin norm's config comes with it
    check_single_run(overrides, user_dir)
    if dry_run or hydra_cfg is not None:
        from .dry_run import run_lines

        _echo(run_lines(overrides, user_dir, force, hydra_cfg))
        return
    cfg, choices = compose(overrides, config_dir, with_choices=True)
    plan = plan_run(cfg, choices, overrides, user_dir)
    try:
        result = run_planned(plan, force)
    except KeyboardInterrupt:  # the record says "interrupted"; say what a rerun does
        typer.echo(interrupted_message(plan, force), err=True)
        raise typer.Exit(130) from None
    from .distributed import is_main  # already imported by the runner above

    if is_main():  # torchrun: rank 0 reports the run
        _echo(outcome_lines(result))


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
    jobs_per_gpu: int = JOBS_PER_GPU_OPTION,
    metric: str | None = typer.Option(
        None,
        "--metric",
        help="The sweep table's metric(s), a comma list for one sub-row each (default: "
        f"test_error, plus each of {', '.join(SWEEP_EXTRA)} that every completed run holds). "
        f"Known: {KNOWN_METRICS}.",
    ),
    dry_run: bool = DRY_RUN_OPTION,
    hydra_cfg: str | None = HYDRA_CFG_OPTION,
    plugin: list[str] | None = PLUGIN_OPTION,
    debug: bool = DEBUG_OPTION,
) -> None:
    # deferred, like every command that trains: torch takes seconds to import, `table` needs none
    from .plugins import load_plugins
    from .study.sweep import report, run_sweep

    overrides = list(ctx.args)
    _reject_options(overrides)
    load_plugins(plugin or ())  # before the cells are composed; launched jobs load them too
    if dry_run or hydra_cfg is not None:
        from .dry_run import sweep_lines

        _echo(sweep_lines(overrides, name, str(config_dir) if config_dir else None, hydra_cfg))
        return
    try:
        result = run_sweep(
            overrides,
            name,
            str(config_dir) if config_dir else None,
            jobs=jobs,
            metric=metric,
            jobs_per_gpu=jobs_per_gpu,
        )
    # the current run keeps its last checkpoint; completed cells are skipped next time
    except KeyboardInterrupt:
        typer.echo(
            "interrupted: rerun the same sweep command to resume (completed cells are skipped)",
            err=True,
        )
        raise typer.Exit(130) from None
    report(result)


Listable = Literal["norms", "backbones", "data", "experiments"]


@app.command("list")
def list_(
    what: Listable = typer.Argument(
        "norms", help="What to list.", parser=choice_parser("kind to list", get_args(Listable))
    ),
    plugin: list[str] | None = PLUGIN_OPTION,
) -> None:
    """What is available, one line each; a plugin norm says which module registered it."""
    # deferred here and below: the registries import torch
    if what == "norms":
        from .norms import NORMS
        from .plugins import load_plugins

        load_plugins(plugin or ())
        _echo(norm_lines(NORMS))
    elif what == "backbones":
        from .backbones import BACKBONES

        _echo(backbone_lines(BACKBONES))
    elif what == "data":
        from .data import DATASETS

        _echo(f"{name:<14} {spec.description}" for name, spec in DATASETS.items())
    else:
        _echo(experiment_lines())


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


register_study_commands(app)  # table, prune: normbench/cli_study.py
app.command()(plot)  # normbench/cli_figures.py


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
        if arg in ("-m", "--multirun"):
            raise UserError(
                f"{arg} is Hydra's multirun flag: `normbench sweep OVERRIDES` runs the grid "
                "without it (--dry-run lists the cells)"
            )
        if arg.startswith("-"):
            raise UserError(
                f"unknown option {arg!r}: overrides are key=value (e.g. norm=gn); see --help"
            )


def _echo(lines: Iterable[str]) -> None:
    for line in lines:
        typer.echo(line)


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
    except Preempted as stop:  # SIGTERM/SIGUSR1/SIGUSR2: checkpoint written, record says where
        typer.echo(stopped_message(stop), err=True)
        sys.exit(PREEMPTED_EXIT)
