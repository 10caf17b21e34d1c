"""`normbench sweep`: the Cartesian grid of Hydra sweep overrides, run cell by cell in this process.

Hydra's compose API does not multirun, so the grid is expanded here with Hydra's own override parser
(comma lists, `range(...)`, `choice(...)`) and each cell is composed on its own. Every cell is
composed and validated before any trains; cells then run sequentially through
`normbench.runner.run`, which skips completed runs (so rerunning a sweep only does what is missing).
At the end the sweep's table (md, LaTeX, CSV) and error-vs-batch figure are written to
`<out>/sweeps/<name>/` next to a `sweep.yaml` listing the cells.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig

from .config import compose, explain_hydra_error, preset_sweep
from .errors import UserError

SWEEP_FILE = "sweep.yaml"
TABLE_FILES = {"md": "table.md", "latex": "table.tex", "csv": "table.csv"}
NAME_MAX = 80


@dataclass
class Grid:
    overrides: list[str]  # as the user typed them
    # (key, values) of each sweep override, in the order given
    swept: list[tuple[str, list[str]]]
    cells: list[list[str]]  # one full override list per cell
    labels: list[str]  # the swept part of each cell, e.g. "norm=gn batch=2"

    @property
    def keys(self) -> list[str]:
        return [key for key, _ in self.swept]


@dataclass
class Cell:
    overrides: list[str]
    label: str  # the swept part, e.g. "norm=gn batch=2"
    cfg: DictConfig
    choices: dict[str, str]
    run_key: str
    run_dir: Path
    outcome: str = "pending"  # completed / skipped / diverged / failed / busy
    error: str | None = None


@dataclass
class SweepResult:
    name: str
    sweep_dir: Path
    cells: list[Cell]
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        c = self.counts
        busy = f", {c['busy']} busy (another process trains them)" if c.get("busy") else ""
        return (
            f"{len(self.cells)} cells: {c.get('completed', 0)} completed, "
            f"{c.get('skipped', 0)} skipped "
            f"(already completed), {c.get('diverged', 0)} diverged, "
            f"{c.get('failed', 0)} failed{busy}"
        )


def _bare_key(key: str) -> str:
    return key.lstrip("+~")


def _parse(text: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:  # one at a time, so that the error names the bad one
        return OverridesParser.create().parse_overrides([text])[0]
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(explain_hydra_error(error, [text])) from error


def experiment_of(overrides: list[str]) -> str | None:
    """The `experiment=NAME` preset among the overrides, if any."""
    names = [
        text.split("=", 1)[1]
        for text in overrides
        if _bare_key(text.split("=", 1)[0]) == "experiment"
    ]
    return names[-1] if names else None


def expand(overrides: list[str], user_config_dir: str | None = None) -> Grid:
    """Hydra sweep overrides -> the grid. Non-sweep overrides apply to every cell; each cell keeps
    the user's order of overrides with each sweep replaced by one of its values. An `experiment=`
    preset may hold a grid in `hydra.sweeper.params`; as in Hydra's multirun, a key given on the
    command line replaces the preset's sweep of that key."""
    overrides = list(overrides)
    texts = list(overrides)
    if experiment_of(overrides) is not None:
        given = {_bare_key(_parse(text).get_key_element()) for text in overrides}
        fixed = [text for text in overrides if not _parse(text).is_sweep_override()]
        texts += [
            f"{key}={values}"
            for key, values in preset_sweep(fixed, user_config_dir).items()
            if _bare_key(key) not in given
        ]
    slots: list[list[str]] = []
    swept_slots: list[int] = []
    swept: list[tuple[str, list[str]]] = []
    for text in texts:
        override = _parse(text)
        if not override.is_sweep_override():
            slots.append([text])
            continue
        key = override.get_key_element()
        if not override.is_discrete_sweep():
            raise UserError(
                f"{text!r}: only comma lists, range(...) and choice(...) can be swept "
                f"(interval sweeps need an optimizer), e.g. lr=0.05,0.1"
            )
        if _bare_key(key) == "out":
            raise UserError(
                f"{text!r}: out cannot be swept (a sweep writes under one output "
                "root); "
                f"give one out=DIR"
            )
        if _bare_key(key) in [_bare_key(k) for k, _ in swept]:
            raise UserError(
                f"{text!r}: {_bare_key(key)} is swept twice; give all its values in one list"
            )
        values = _as_typed(text, list(override.sweep_string_iterator()))
        if not values:
            raise UserError(f"{text!r} sweeps over no values; give at least one, e.g. batch=2,4")
        swept.append((key, values))
        swept_slots.append(len(slots))
        slots.append([f"{key}={value}" for value in values])
    cells = [list(choice) for choice in itertools.product(*slots)]
    labels = [
        " ".join(cell[i] for i in swept_slots) or " ".join(cell) or "(defaults)" for cell in cells
    ]
    return Grid(overrides, swept, cells, labels)


def _as_typed(text: str, values: list[str]) -> list[str]:
    """The values of a plain comma list as the user wrote them (Hydra prints `lr=1e12` as
    1000000000000.0), so that names, labels and sweep.yaml read like the command; anything fancier
    keeps Hydra's strings."""
    raw = text.split("=", 1)[1]
    if any(mark in raw for mark in "()[]{}'\"\\"):
        return values
    typed = [part.strip() for part in raw.split(",")]
    return typed if len(typed) == len(values) else values


def default_name(grid: Grid) -> str:
    """`norm-bn,gn_batch-2,4` from the swept keys and values; a single cell is named after its
    overrides. With a preset: its name, then the other overrides as typed
    (`gn_paper_backbone=resnet20_seed-0,1,2`)."""
    experiment = experiment_of(grid.overrides)
    if experiment is not None:
        typed = dict(grid.swept)
        parts = [experiment] + [
            f"{_bare_key(text.split('=', 1)[0])}-{','.join(typed[text.split('=', 1)[0]])}"
            if text.split("=", 1)[0] in typed
            else text
            for text in grid.overrides
            if _bare_key(text.split("=", 1)[0]) != "experiment"
        ]
        return sanitize("_".join(parts))
    if grid.swept:
        raw = "_".join(f"{_bare_key(key)}-{','.join(values)}" for key, values in grid.swept)
    else:
        raw = "_".join(grid.overrides) or "default"
    return sanitize(raw)


def sanitize(raw: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._,=+-]+", "-", raw).strip("-.") or "sweep"
    if len(name) > NAME_MAX:
        digest = hashlib.sha1(raw.encode()).hexdigest()[:8]
        name = f"{name[: NAME_MAX - 9].rstrip('-.')}-{digest}"
    return name


def prepare(grid: Grid, user_config_dir: str | None) -> list[Cell]:
    """Compose and validate every cell and find its run dir, before anything trains; a bad value is
    one UserError line that names the cell."""
    from .runs import non_default_settings, run_key
    from .validate import validate

    cells: list[Cell] = []
    seen: set[Path] = set()
    for overrides, label in zip(grid.cells, grid.labels):
        try:
            cfg, choices = compose(overrides, user_config_dir, with_choices=True)
            validate(cfg)
        except UserError as error:
            where = f"sweep cell {label}: " if len(grid.cells) > 1 else ""
            raise UserError(f"{where}{error}") from error
        key = run_key(cfg, non_default_settings(cfg, choices, user_config_dir))
        run_dir = Path(cfg.out).expanduser() / "runs" / key
        if run_dir in seen:  # e.g. batch=2,2: the same run twice
            continue
        seen.add(run_dir)
        cells.append(Cell(overrides, label, cfg, choices, key, run_dir))
    return cells


def reset_state(seed: int) -> None:
    """Nothing of one run may reach the next: reseed every global RNG and release cached memory.
    (The runner seeds torch itself; python's and numpy's RNGs are reseeded too in case a library
    uses them.)"""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_sweep(
    overrides: list[str],
    name: str | None = None,
    user_config_dir: str | None = None,
    echo: Callable[[str], None] = print,
    echo_err: Callable[[str], None] | None = None,
    jobs: int = 1,
) -> SweepResult:
    """Validate the whole grid, run each cell (skipping completed ones), then write the sweep
    folder. Cells run one after another in this process, or through a Hydra launcher: joblib with
    `jobs` > 1, or the one named by a `hydra/launcher=...` override (submitit_slurm,
    submitit_local). KeyboardInterrupt propagates (completed cells stay done; rerunning resumes)."""
    from .distributed import is_main, launched
    from .launch import check_launcher, is_hydra_override, launcher_name, named_launcher

    if launched() and (jobs > 1 or named_launcher(overrides)):
        raise UserError(
            "under torchrun every process trains every cell together (DDP); --jobs "
            "and Hydra "
            "launchers start separate runs: use one or the other"
        )
    # torchrun: every rank trains each cell, rank 0 reports and writes the sweep folder
    if not is_main():
        echo = echo_err = lambda line: None
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: give the number of cells to train at once, 1 or more")
    echo_err = echo_err or echo
    hydra_overrides = [text for text in overrides if is_hydra_override(text)]
    grid = expand([text for text in overrides if not is_hydra_override(text)], user_config_dir)
    name = sanitize(name) if name else default_name(grid)
    cells = prepare(grid, user_config_dir)
    out = Path(cells[0].cfg.out).expanduser()
    result = SweepResult(name, out / "sweeps" / name, cells)
    launcher = launcher_name(hydra_overrides, jobs)
    if launcher is None:
        if hydra_overrides:
            raise UserError(
                f"{hydra_overrides[0]!r}: Hydra settings apply to launched sweeps "
                "only; add "
                f"--jobs N or hydra/launcher=submitit_slurm, or drop it"
            )
        _run_here(cells, user_config_dir, echo, echo_err)
    else:
        if named_launcher(hydra_overrides) is None:
            # --jobs N alone: Hydra's joblib launcher
            hydra_overrides.append(f"hydra/launcher={launcher}")
        check_launcher(launcher, hydra_overrides, cells[0].overrides, user_config_dir)
        _run_launched(
            cells,
            grid,
            hydra_overrides,
            launcher,
            jobs,
            result.sweep_dir,
            user_config_dir,
            echo,
            echo_err,
        )
    for cell in cells:
        result.counts[cell.outcome] = result.counts.get(cell.outcome, 0) + 1
    if is_main():
        write_outputs(result, grid, user_config_dir)
    return result


def _run_here(
    cells: list[Cell],
    user_config_dir: str | None,
    echo: Callable[[str], None],
    echo_err: Callable[[str], None],
) -> None:
    """Every cell in turn in this process; a failed or diverged cell is reported and the next one
    runs."""
    from .files import RunBusy
    from .runner import run as run_one

    total = len(cells)
    for index, cell in enumerate(cells, 1):
        echo(f"[{index}/{total}] {cell.label}  ->  {cell.run_dir}")
        reset_state(int(cell.cfg.seed))
        try:
            run = run_one(cell.cfg, cell.choices, cell.overrides, user_config_dir)
        except RunBusy as error:  # another process (e.g. a second sweep) trains this run right now
            cell.outcome, cell.error = "busy", str(error)
            echo_err(f"busy: {cell.label}: {error}")
            continue
        # e.g. data missing: stop, naming the cell; finished cells stay done
        except UserError as error:
            raise UserError(f"sweep cell {cell.label}: {error}") from error
        except KeyboardInterrupt:
            raise
        except Exception as error:  # the runner recorded it as failed; the other cells still run
            cell.outcome = "failed"
            cell.error = (
                f"{type(error).__name__}: "
                f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            )
            echo_err(f"failed: {cell.label}: {cell.error} (record in {cell.run_dir})")
            continue
        _settle(cell, run.record, run.skipped, echo_err)


def _settle(
    cell: Cell, record: dict | None, skipped: bool, echo_err: Callable[[str], None]
) -> None:
    """The cell's outcome from its run record."""
    status = (record or {}).get("status")
    # diverged before: final, not retrained (normbench run --force does)
    if skipped and status == "diverged":
        cell.outcome = "diverged"
    elif skipped:
        cell.outcome = "skipped"
    elif status == "completed":
        cell.outcome = "completed"
    elif status == "diverged":
        cell.outcome = "diverged"
        echo_err(f"diverged: {cell.label} ({cell.run_dir / 'record.json'})")
    elif status == "running" and _claimed_elsewhere(cell.run_dir):
        cell.outcome, cell.error = "busy", "being trained by another process"
        echo_err(
            f"busy: {cell.label}: {cell.run_dir} is being trained by another process; rerun "
            "the sweep later"
        )
    else:
        cell.outcome = "failed"
        cell.error = (record or {}).get("error") or (
            f"run ended with status {status}"
            if status
            else "the job wrote no record (see the launcher's files)"
        )
        echo_err(f"failed: {cell.label}: {cell.error}")


def _claimed_elsewhere(run_dir: Path) -> bool:
    """True while another live process holds the run's claim (a launched job found it busy and left
    it)."""
    from .files import RunBusy, claim_run

    try:
        claim_run(run_dir).release()
    except RunBusy:
        return True
    return False


def _run_launched(
    cells: list[Cell],
    grid: Grid,
    hydra_overrides: list[str],
    launcher: str,
    jobs: int,
    sweep_dir: Path,
    user_config_dir: str | None,
    echo: Callable[[str], None],
    echo_err: Callable[[str], None],
) -> None:
    """The cells not done yet through Hydra's multirun and the chosen launcher; outcomes are read
    from the run records."""
    from .launch import launch, quoted
    from .runner import FINAL_STATUSES
    from .runs import read_record

    done_before = {
        cell.run_dir
        for cell in cells
        if (read_record(cell.run_dir) or {}).get("status") in FINAL_STATUSES
    }
    todo = [index for index, cell in enumerate(cells) if cell.run_dir not in done_before]
    echo(
        f"{len(cells)} cells ({len(done_before)} already done) through Hydra's {launcher} launcher"
        + (f", {jobs} at a time" if launcher == "joblib" else "")
        + "; launcher files in "
        f"{sweep_dir / 'launcher'}"
    )
    if todo:
        given = {_bare_key(text.split("=", 1)[0]) for text in grid.overrides}
        # jobs may run elsewhere
        extra = [f"out={quoted(Path(cells[0].cfg.out).expanduser().resolve())}"]
        if not any(key == "log" or key.startswith("log.progress") for key in given):
            # N interleaved progress bars are noise; each job prints its end
            extra.append("log.progress=none")
        launch(
            {index: cells[index].overrides + extra for index in todo},
            hydra_overrides,
            launcher,
            jobs,
            sweep_dir,
            user_config_dir,
        )
    for cell in cells:
        _settle(cell, read_record(cell.run_dir), cell.run_dir in done_before, echo_err)


def table_axes(keys: list[str]) -> tuple[str, str]:
    """Rows and columns of the sweep's table: norm x batch like the GN paper when those are swept
    (or fixed); otherwise the swept keys themselves. Seeds are averaged, never an axis."""
    swept = [k for k in keys if k != "seed"]
    cols = (
        "batch"
        if "batch" in swept or not [k for k in swept if k != "norm"]
        else next(k for k in swept if k != "norm")
    )
    rest = [k for k in swept if k not in (cols,)]
    rows = "norm" if "norm" in rest or not rest else rest[0]
    return rows, cols


def write_outputs(result: SweepResult, grid: Grid, user_config_dir: str | None) -> None:
    """sweep.yaml, table.{md,tex,csv} and error_vs_batch.png in the sweep folder, from exactly this
    sweep's run records. A table or figure that cannot be made (e.g. a non-numeric column) is noted,
    not fatal."""
    import yaml

    from .plots import DEFAULT_NAME, make_figure
    from .results import build_table, load_runs, render, write_text

    folder = result.sweep_dir
    summary = {
        "name": result.name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "overrides": list(grid.overrides),
        "config_dir": user_config_dir,
        "swept": {key: values for key, values in grid.swept},
        "counts": {
            k: result.counts.get(k, 0)
            for k in ("completed", "skipped", "diverged", "failed", "busy")
        },
        "cells": [
            {
                "overrides": cell.overrides,
                "run_key": cell.run_key,
                "run_dir": str(cell.run_dir),
                "outcome": cell.outcome,
                **({"error": cell.error} if cell.error else {}),
            }
            for cell in result.cells
        ],
    }
    write_text(folder / SWEEP_FILE, yaml.safe_dump(summary, sort_keys=False, allow_unicode=True))

    try:
        # exactly the cells sweep.yaml lists, as `normbench table <folder>` reads them
        runs = load_runs(folder)
    except UserError:
        result.notes.append("no run records to tabulate")
        return
    rows, cols = table_axes([_bare_key(k) for k in grid.keys])
    try:
        table = build_table(folder, "test_error", rows, cols, runs=runs)
    except UserError as error:
        result.notes.append(f"no table: {error}")
        return
    for fmt, filename in TABLE_FILES.items():
        write_text(folder / filename, render(table, fmt))
    try:
        figure = make_figure(table)
        folder.mkdir(parents=True, exist_ok=True)
        figure.savefig(folder / DEFAULT_NAME, format="png", dpi=150)
    except UserError as error:
        result.notes.append(f"no figure: {error}")
    except OSError as error:
        raise UserError(
            f"cannot write {folder / DEFAULT_NAME}: {error.strerror or error}"
        ) from None


def describe(result: SweepResult) -> list[str]:
    """The closing lines: summary, notes, where the outputs are."""
    table = result.sweep_dir / TABLE_FILES["md"]
    lines = [table.read_text().rstrip(), ""] if table.is_file() else []
    lines += [result.summary(), *(f"note: {note}" for note in result.notes)]
    lines.append(
        f"wrote {result.sweep_dir}/ "
        f"({', '.join(sorted(p.name for p in result.sweep_dir.iterdir()))})"
        if result.sweep_dir.is_dir()
        else f"nothing written to {result.sweep_dir}"
    )
    return lines
