"""Parallel and cluster sweeps through Hydra's own launcher plugins, not a home-made scheduler.

`normbench sweep --jobs N` and `normbench sweep hydra/launcher=submitit_slurm ...` hand the cells
that are not done yet to Hydra's multirun (`hydra.main`, driven by rewriting `sys.argv`, the only
entry that launchers plug into): the joblib launcher runs them in N local worker processes, the
submitit launchers run each as a SLURM job (or as a local subprocess with `submitit_local`). Hydra
sweeps a single key, the cell's index in a table of the validated cells' overrides that the sweep
writes to its launcher folder; each job composes its cell from that table and trains through
`normbench.runner.run`, so completed runs are skipped and interrupted ones resume, as in a
sequential sweep. A job never raises (Hydra would abort the whole multirun); its outcome lands in
the run's record.json, which the sweep reads afterwards.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .errors import UserError

HYDRA_PREFIXES = ("hydra.", "hydra/", "+hydra.", "+hydra/", "~hydra.")
LAUNCHER_EXTRA = {
    "submitit": "pip install 'normbench[slurm]' (hydra-submitit-launcher)",
    "joblib": "pip install hydra-joblib-launcher",
}


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
) -> None:
    """Compose once with the launcher settings so that a missing plugin or a bad launcher key is one
    clear line before anything starts."""
    from .config import compose_with_hydra

    try:
        compose_with_hydra(first_cell + hydra_overrides, user_config_dir)
    except UserError as error:
        message = str(error)
        hint = next((fix for key, fix in LAUNCHER_EXTRA.items() if key in name), None)
        if message.startswith("unknown hydra/launcher") and hint:
            message += f"; the {name} launcher needs: {hint}"
        raise UserError(message) from None


# the one key Hydra sweeps: the index of a cell in the sweep's cell table
CELL_KEY = "normbench_cell"
TABLE_KEY = "normbench_cells"  # the path of that table (cells.json in the launcher folder)


def launch(
    cells: dict[int, list[str]],
    hydra_overrides: list[str],
    name: str,
    jobs: int,
    sweep_dir: Path,
    user_config_dir: str | None,
) -> None:
    """Run the cells {index: overrides} (those not done yet) as Hydra jobs with the chosen launcher;
    returns when every job ended. Hydra sweeps only `+normbench_cell=<i>,<j>,...`: each job composes
    its cell from the table written here with normbench's own compose, so a job trains exactly the
    config that `normbench.sweep.prepare` validated, and completed cells never become jobs."""
    import json

    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from .config import _search_path_overrides, config_dir
    from .files import atomic_write_bytes

    table = sweep_dir / "launcher" / "cells.json"
    atomic_write_bytes(
        table,
        json.dumps(
            {
                "user_config_dir": user_config_dir,
                "cells": {str(i): cell for i, cell in cells.items()},
            },
            indent=1,
        ).encode(),
    )
    argv = [
        "normbench-sweep",
        "--multirun",
        f"+{CELL_KEY}={','.join(str(i) for i in cells)}",
        f"+{TABLE_KEY}={quoted(table.resolve())}",
        *hydra_overrides,
        *launcher_settings(name, jobs, sweep_dir),
        *_search_path_overrides(user_config_dir),
    ]
    entry = hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(
        sweep_job
    )
    saved_argv = sys.argv
    GlobalHydra.instance().clear()
    sys.argv = argv
    try:
        entry()
    # Hydra reports its own errors and exits; turn that into our one line
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise UserError(
                f"the {name} launcher failed (exit {stop.code}); its output is above "
                "and its files "
                f"are in {sweep_dir / 'launcher'}"
            ) from None
    finally:
        sys.argv = saved_argv
        GlobalHydra.instance().clear()


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
    would stop the whole multirun at the first failed job."""
    import json

    import torch
    from hydra.core.hydra_config import HydraConfig

    from .config import compose
    from .runner import run as run_one
    from .sweep import reset_state

    # read before compose, which resets Hydra's globals
    threads = _job_threads(HydraConfig.get().launcher)

    def echo(line: str) -> None:
        print(line, flush=True)

    label = f"cell {cfg[CELL_KEY]}"
    try:
        table = json.loads(Path(cfg[TABLE_KEY]).read_text())
        overrides = table["cells"][str(cfg[CELL_KEY])]
        label = " ".join(overrides)
        user_config_dir = table["user_config_dir"]
        cell, choices = compose(overrides, user_config_dir, with_choices=True)
        if threads:
            torch.set_num_threads(threads)
        reset_state(int(cell.seed))
        result = run_one(cell, choices, overrides, user_config_dir)
    except UserError as error:
        echo(f"failed: {label}: {error}")
        return {"status": "failed", "error": str(error)}
    except Exception as error:  # the runner recorded it as failed in record.json
        echo(f"failed: {label}: {type(error).__name__}: {error}")
        return {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    status = "skipped" if result.skipped else result.record.get("status")
    metrics = result.record.get("metrics") or {}
    error = metrics.get("test_error")
    echo(
        f"{status}: {result.run_dir.name}"
        + (f"  test_error {error:.2f}%" if isinstance(error, float) else "")
    )
    return {"status": status, "run_dir": str(result.run_dir)}
