"""Parallel and cluster sweeps through Hydra's own launcher plugins, not a home-made scheduler.

`normbench sweep --jobs N` and `normbench sweep hydra/launcher=submitit_slurm ...` hand the cells
that are not done yet to Hydra's multirun (`hydra.main`, driven by rewriting `sys.argv`, the only
entry that launchers plug into): the joblib launcher runs them in N local worker processes, the
submitit launchers run each as a SLURM job (or as a local subprocess with `submitit_local`). Hydra
sweeps a single key, the cell's index in a table of the validated cells' overrides that the sweep
writes to its launcher folder; each job composes its cell from that table and trains through
`normbench.runner`, so completed runs are skipped and interrupted ones resume, as in a sequential
sweep. A job never raises (Hydra would abort the whole multirun); its outcome lands in the run's
record.json, which the sweep reads afterwards (study.cells.settle).

With --jobs N on a machine with GPUs each job claims its own GPU (study.gpus). A submitit job with
hydra.launcher.tasks_per_node=W (x nodes) trains its cell as a W-process DDP run
(normbench.cluster); the sweep plans such cells with that world size (job_processes), so it reads
their records where the jobs write them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import hydra
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .. import log, runner
from ..config import compose, compose_with_hydra, config_dir, search_path_overrides
from ..errors import UserError
from ..files import atomic_write_bytes
from ..plugins import load_worker_plugins, worker_plugins
from ..records import RunRecord, Status
from .cells import Outcome, PlannedRun, release_memory, reset_state, settle
from .gpus import GpuSlots, claimed_gpu, plan_gpu_slots
from .grid import bare_key, key_of

LOG = logging.getLogger(__name__)
HYDRA_PREFIXES = ("hydra.", "hydra/", "+hydra.", "+hydra/", "~hydra.")
LAUNCHER_EXTRA = {
    "submitit": "pip install 'normbench[slurm]' (hydra-submitit-launcher)",
    "joblib": "pip install hydra-joblib-launcher",
}
# the one key Hydra sweeps: the index of a cell in the sweep's cell table
CELL_KEY = "normbench_cell"
TABLE_KEY = "normbench_cells"  # the path of that table (cells.json in the launcher folder)


def is_hydra_override(text: str) -> bool:
    """`hydra/launcher=submitit_slurm`, `hydra.launcher.timeout_min=60`: settings of the launch, not
    of a run."""
    return text.startswith(HYDRA_PREFIXES)


def named_launcher(overrides: list[str]) -> str | None:
    """The launcher a `hydra/launcher=NAME` override names, if any."""
    named = [
        text.split("=", 1)[1]
        for text in overrides
        if text.lstrip("+").startswith("hydra/launcher=")
    ]
    return named[-1] if named else None


def launcher_name(hydra_overrides: list[str], jobs: int) -> str | None:
    """The launcher a sweep uses: the one named by `hydra/launcher=...`, joblib for --jobs > 1, else
    None (cells run one after another in this process)."""
    return named_launcher(hydra_overrides) or ("joblib" if jobs > 1 else None)


def quoted(value: object) -> str:
    """A value for a Hydra override, quoted so that commas or brackets in paths are not read as a
    sweep."""
    text = str(value)
    if "'" in text:
        raise UserError(
            f"{text}: a path given to Hydra's launcher cannot contain a single quote; rename it"
        )
    return f"'{text}'"


def launcher_settings(name: str, jobs: int, sweep_dir: Path) -> list[str]:
    """Hydra overrides that set up the launcher and keep Hydra's own files inside the sweep
    folder."""
    settings = [
        f"hydra.sweep.dir={quoted(sweep_dir / 'launcher')}",
        "hydra.sweep.subdir=${hydra.job.num}",
        "hydra.output_subdir=null",  # the run dir already holds config.yaml and record.json
        "hydra.job.chdir=false",
        "hydra/job_logging=disabled",  # normbench prints its own lines; no <job>.log per cell
        "hydra/hydra_logging=disabled",
    ]
    if name == "joblib":
        settings += [f"hydra.launcher.n_jobs={max(jobs, 1)}", "hydra.launcher.batch_size=1"]
    return settings


def check_launcher(
    name: str, hydra_overrides: list[str], first_cell: list[str], user_config_dir: str | None
) -> DictConfig:
    """Compose once with the launcher settings so that a missing plugin or a bad launcher key is one
    clear line before anything starts; returns the composed `hydra.launcher` node."""
    try:
        return compose_with_hydra(first_cell + hydra_overrides, user_config_dir).hydra.launcher
    except UserError as error:
        message = str(error)
        hint = next((fix for key, fix in LAUNCHER_EXTRA.items() if key in name), None)
        if message.startswith("unknown hydra/launcher") and hint:
            message += f"; the {name} launcher needs: {hint}"
        raise UserError(message) from None


def job_processes(
    hydra_overrides: list[str], first_cell: list[str], user_config_dir: str | None
) -> int:
    """The processes each launched job trains its cell with: a submitit launcher's tasks_per_node x
    nodes (one DDP run over a job's tasks, normbench.cluster), else 1. The sweep plans its cells
    with it (distributed.planned_world_size), so their run keys (`-w<W>`) are the jobs' own."""
    name = named_launcher(hydra_overrides)
    if name is None or "submitit" not in name:
        return 1
    launcher = check_launcher(name, hydra_overrides, first_cell, user_config_dir)
    return int(launcher.get("tasks_per_node") or 1) * int(launcher.get("nodes") or 1)


def run_launched(
    cells: list[PlannedRun],
    given: list[str],
    hydra_overrides: list[str],
    launcher: str,
    jobs: int,
    sweep_dir: Path,
    user_config_dir: str | None,
    jobs_per_gpu: int = 1,
) -> None:
    """The cells not done yet through Hydra's multirun and the chosen launcher, then every cell's
    outcome from its run record. `given`: the sweep's overrides as typed; `jobs_per_gpu`: how many
    local jobs may share a GPU (study.gpus)."""
    done_before = {cell.run_dir for cell in cells if _is_final(RunRecord.load(cell.run_dir))}
    todo = [index for index, cell in enumerate(cells) if cell.run_dir not in done_before]
    LOG.info(
        f"{len(cells)} cells ({len(done_before)} already done) through Hydra's {launcher} launcher"
        + (f", {jobs} at a time" if launcher == "joblib" else "")
        + f"; launcher files in {sweep_dir / 'launcher'}"
    )
    if todo:
        keys = {bare_key(key_of(text)) for text in given}
        # jobs may run elsewhere
        extra = [f"out={quoted(Path(cells[0].cfg.out).expanduser().resolve())}"]
        if not any(key == "log" or key.startswith("log.progress") for key in keys):
            # N interleaved progress bars are noise; each job prints its end
            extra.append("log.progress=none")
        gpus = None
        if launcher == "joblib":
            devices = [str(cells[index].cfg.device) for index in todo]
            gpus = plan_gpu_slots(devices, jobs, jobs_per_gpu, sweep_dir / "launcher" / "gpus")
        launch(
            {index: cells[index].overrides + extra for index in todo},
            hydra_overrides,
            launcher,
            jobs,
            sweep_dir,
            user_config_dir,
            gpus,
        )
    for cell in cells:
        settle(cell, RunRecord.load(cell.run_dir), cell.run_dir in done_before)


def _is_final(record: RunRecord | None) -> bool:
    return record is not None and record.status.final


def launch(
    cells: dict[int, list[str]],
    hydra_overrides: list[str],
    name: str,
    jobs: int,
    sweep_dir: Path,
    user_config_dir: str | None,
    gpus: GpuSlots | None = None,
) -> None:
    """Run the cells {index: overrides} (those not done yet) as Hydra jobs with the chosen launcher;
    returns when every job ended. Hydra sweeps only `+normbench_cell=<i>,<j>,...`: each job composes
    its cell from the table written here with normbench's own compose, so a job trains exactly the
    config that `study.cells.prepare` validated, and completed cells never become jobs. `gpus`: the
    GPU slots each job claims one of (None: every job trains on its config's device)."""
    table = sweep_dir / "launcher" / "cells.json"
    payload = {
        "user_config_dir": user_config_dir,
        "plugins": worker_plugins(),  # a job registers the same plugin norms first
        "cells": {str(i): c for i, c in cells.items()},
        "gpus": asdict(gpus) if gpus else None,
    }
    atomic_write_bytes(table, json.dumps(payload, indent=1).encode())
    argv = [
        "normbench-sweep",
        "--multirun",
        f"+{CELL_KEY}={','.join(str(i) for i in cells)}",
        f"+{TABLE_KEY}={quoted(table.resolve())}",
        *hydra_overrides,
        *launcher_settings(name, jobs, sweep_dir),
        *search_path_overrides(user_config_dir),
    ]
    entry = hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(
        sweep_job
    )
    saved_argv = sys.argv
    GlobalHydra.instance().clear()
    sys.argv = argv
    try:
        entry()
    except SystemExit as stop:  # Hydra reports its own errors and exits; turn that into one line
        if stop.code not in (0, None):
            raise UserError(
                f"the {name} launcher failed (exit {stop.code}); its output is above and its files "
                f"are in {sweep_dir / 'launcher'}"
            ) from None
    finally:
        sys.argv = saved_argv
        GlobalHydra.instance().clear()
        log.configure()  # Hydra's logging config disabled normbench's loggers


def _job_threads(launcher: DictConfig) -> int | None:
    """Torch threads per job: the CPUs SLURM/submitit gives a task, or this machine's CPUs shared by
    n_jobs."""
    if launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    n_jobs = launcher.get("n_jobs")
    if n_jobs:
        return max(1, (os.cpu_count() or 1) // int(n_jobs))
    return None


def sweep_job(cfg: DictConfig) -> dict[str, Any]:
    """One cell inside a Hydra job (a joblib worker, a SLURM task, a submitit subprocess): compose
    the cell named by `normbench_cell` from the sweep's cell table and train it. Never raises: Hydra
    would stop the whole multirun at the first failed job. Every line goes to the job's stdout."""
    log.configure()  # a worker process did not run the CLI's main
    threads = _job_threads(HydraConfig.get().launcher)  # before compose resets Hydra's globals
    label = f"cell {cfg[CELL_KEY]}"
    try:
        table = json.loads(Path(cfg[TABLE_KEY]).read_text())
        overrides = table["cells"][str(cfg[CELL_KEY])]
        label = " ".join(overrides)
        load_worker_plugins(table.get("plugins"))
        composed = compose(overrides, table["user_config_dir"], with_choices=True)
        cell, choices = cast(tuple[DictConfig, dict[str, str]], composed)
        if threads:
            torch.set_num_threads(threads)
        gpus = GpuSlots(**table["gpus"]) if table.get("gpus") else None
        result = _train_cell(cell, choices, overrides, table["user_config_dir"], gpus)
    except UserError as error:
        LOG.info(f"failed: {label}: {error}")
        return {"status": Status.FAILED.value, "error": str(error)}
    except Exception as error:  # the runner recorded it as failed in record.json
        LOG.info(f"failed: {label}: {type(error).__name__}: {error}")
        return {"status": Status.FAILED.value, "error": f"{type(error).__name__}: {error}"}
    status = Outcome.SKIPPED.value if result.skipped else result.record.status.value
    test_error = result.record.metrics.get("test_error")
    LOG.info(
        f"{status}: {result.run_dir.name}"
        + (f"  test_error {test_error:.2f}%" if isinstance(test_error, float) else "")
    )
    return {"status": status, "run_dir": str(result.run_dir)}


def _train_cell(
    cell: DictConfig,
    choices: dict[str, str],
    overrides: list[str],
    user_config_dir: str | None,
    gpus: GpuSlots | None,
) -> runner.RunResult:
    """Train one composed cell, on a GPU of its own when the sweep shares the GPUs (`gpus`): the
    config's device becomes cuda:<g> (recorded as the run's device) and torch's current device too,
    so nothing of this job lands on cuda:0 by default."""
    reset_state(int(cell.seed))
    with ExitStack() as held:
        if gpus is not None:
            gpu = held.enter_context(claimed_gpu(gpus))
            cell.device = f"cuda:{gpu}"
            torch.cuda.set_device(gpu)
        try:
            return runner.run(cell, choices, overrides, user_config_dir)
        finally:  # a worker process may train the next job
            release_memory()
