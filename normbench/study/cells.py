"""A sweep's planned runs: compose and plan every cell up front, train one, settle its outcome.

Both ways of running a sweep (one cell after another here, or Hydra jobs in study.launch) plan a
cell with `runner.plan_run` and settle its outcome from its run record with `settle`.
"""

from __future__ import annotations

import gc
import logging
import random
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from .. import runner
from ..config import compose, config_dir, explain_hydra_error
from ..errors import UserError
from ..files import RunBusy, claim_run
from ..records import RECORD_FILE, RunRecord, Status
from ..runs import RunPlan
from .grid import Grid, bare_key, key_of, parse

LOG = logging.getLogger(__name__)


class Outcome(str, Enum):
    """What a sweep did with a cell (counted in the summary and sweep.yaml)."""

    PENDING = "pending"
    COMPLETED = "completed"
    SKIPPED = "skipped"  # already completed before this sweep
    DIVERGED = "diverged"
    FAILED = "failed"
    BUSY = "busy"  # another process trains it right now

    def __str__(self) -> str:
        return self.value


@dataclass
class PlannedRun:
    """One cell of the grid, planned (validated, run dir known) before anything trains.

    Args:
        label: the swept part of the cell, e.g. "norm=gn batch=2".
        plan: the runner's plan of the run.
        outcome: set once the cell ran (or was found done).
        error: why a failed or busy cell did not finish.
    """

    label: str
    plan: RunPlan
    outcome: Outcome = Outcome.PENDING
    error: str | None = None

    @property
    def overrides(self) -> list[str]:
        return self.plan.overrides

    @property
    def cfg(self) -> DictConfig:
        return self.plan.cfg

    @property
    def run_key(self) -> str:
        return self.plan.key

    @property
    def run_dir(self) -> Path:
        return self.plan.run_dir


def prepare(grid: Grid, user_config_dir: str | None) -> list[PlannedRun]:
    """Compose and plan (validate) every cell before anything trains; a bad value is one UserError
    line that names the cell. A cell with an earlier cell's run dir (e.g. batch=2,2) is dropped."""
    cells: list[PlannedRun] = []
    seen: set[Path] = set()
    composer = CellComposer(grid, user_config_dir)
    for overrides, label in zip(grid.cells, grid.labels):
        try:
            cfg, choices = composer.compose(overrides)
            plan = runner.plan_run(cfg, choices, overrides, user_config_dir)
        except UserError as error:
            where = f"sweep cell {label}: " if len(grid.cells) > 1 else ""
            raise UserError(f"{where}{error}") from error
        if plan.run_dir not in seen:
            seen.add(plan.run_dir)
            cells.append(PlannedRun(label, plan))
    return cells


class CellComposer:
    """The cells' configs with one Hydra compose per distinct rest of the overrides.

    Hydra's compose builds the config from the defaults list (config groups and presets), then
    applies the value overrides (`batch=8`, `lr=0.1`) to it. Cells that differ only in swept values
    share that first step: it is composed once (~0.3 s; gn_paper x 3 seeds: 6 composes, not 90) and
    each cell's swept values are applied to a copy by Hydra's own override step. A value that
    another override also sets (e.g. `batch=2 batch=4,8`) keeps the full compose, whose order of
    application it needs.
    """

    def __init__(self, grid: Grid, user_config_dir: str | None) -> None:
        self.user_config_dir = user_config_dir
        folders = [config_dir()] + ([Path(user_config_dir).expanduser()] if user_config_dir else [])
        groups = {path.name for folder in folders if folder.is_dir() for path in folder.iterdir()}
        self.value_keys = {
            key
            for key, _ in grid.swept
            if not any(mark in key for mark in "/@") and ("." in key or bare_key(key) not in groups)
        }

    def compose(self, overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
        values = [text for text in overrides if key_of(text) in self.value_keys]
        rest = tuple(text for text in overrides if key_of(text) not in self.value_keys)
        rest_keys = {bare_key(key_of(text)) for text in rest}
        if not values or any(_overlaps(bare_key(key_of(v)), rest_keys) for v in values):
            return compose(overrides, self.user_config_dir, with_choices=True)
        # compose keeps each distinct `rest` per process and hands out a fresh copy
        cfg, choices = compose(rest, self.user_config_dir, with_choices=True)
        try:
            ConfigLoaderImpl._apply_overrides_to_config([parse(text) for text in values], cfg)
        except (HydraException, OmegaConfBaseException) as error:
            raise UserError(explain_hydra_error(error, overrides)) from error
        return cfg, choices


def _overlaps(key: str, others: set[str]) -> bool:
    """True when `key` and one of `others` set the same node or one inside the other."""
    return any(key == o or key.startswith(f"{o}.") or o.startswith(f"{key}.") for o in others)


def reset_state(seed: int) -> None:
    """Nothing of one run may reach the next: reseed every global RNG before a cell. (The runner
    seeds torch itself; python's and numpy's RNGs are reseeded too in case a library uses them.)"""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def release_memory() -> None:
    """Free what a cell that trained left (its model, data, CUDA cache) before the next one. Only
    after training: a full collection takes ~0.5 s, most of a skipped cell's time."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_here(cell: PlannedRun) -> None:
    """Train (or skip) one cell in this process and settle its outcome. A failed run is reported
    and the sweep goes on; a UserError (e.g. data missing) stops it, naming the cell."""
    reset_state(int(cell.cfg.seed))
    try:
        result = runner.run_planned(cell.plan)
    except RunBusy as error:  # another process (e.g. a second sweep) trains this run right now
        cell.outcome, cell.error = Outcome.BUSY, str(error)
        LOG.warning(f"busy: {cell.label}: {error}")
        return
    except UserError as error:
        raise UserError(f"sweep cell {cell.label}: {error}") from error
    except Exception as error:  # the runner recorded it as failed; the other cells still run
        release_memory()
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        cell.outcome, cell.error = Outcome.FAILED, f"{type(error).__name__}: {first_line}"
        LOG.warning(f"failed: {cell.label}: {cell.error} (record in {cell.run_dir})")
        return
    if not result.skipped:
        release_memory()
    settle(cell, result.record, result.skipped)


def settle(cell: PlannedRun, record: RunRecord | None, done_before: bool) -> None:
    """The cell's outcome from its run record, after it ran here or as a Hydra job; problems are
    logged as warnings. `done_before`: the record was final before this sweep touched the run."""
    status = record.status if record is not None else None
    if status is Status.DIVERGED:
        # final, not retrained (normbench run --force does); reported when it diverged just now
        cell.outcome = Outcome.DIVERGED
        if not done_before:
            LOG.warning(f"diverged: {cell.label} ({cell.run_dir / RECORD_FILE})")
    elif done_before:
        cell.outcome = Outcome.SKIPPED
    elif status is Status.COMPLETED:
        cell.outcome = Outcome.COMPLETED
    elif status is Status.RUNNING and claimed_elsewhere(cell.run_dir):
        cell.outcome, cell.error = Outcome.BUSY, "being trained by another process"
        LOG.warning(
            f"busy: {cell.label}: {cell.run_dir} is being trained by another process; rerun "
            "the sweep later"
        )
    else:
        cell.outcome = Outcome.FAILED
        cell.error = (record.error if record is not None else None) or (
            f"run ended with status {status}"
            if status
            else "the job wrote no record (see the launcher's files)"
        )
        LOG.warning(f"failed: {cell.label}: {cell.error}")


def claimed_elsewhere(run_dir: Path) -> bool:
    """True while another live process holds the run's claim (a launched job found it busy and left
    it)."""
    try:
        claim_run(run_dir).release()
    except RunBusy:
        return True
    return False
