"""Sweeps through Hydra's launchers (joblib for --jobs N, submitit_local standing in for SLURM) and
the grids that experiment presets hold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TINY

from normbench.config import compose
from normbench.study.grid import default_name, expand

GRID = ["norm=bn,gn", "batch=8,16"]


def _sweep(normbench, root: Path, *args: str):
    return normbench("sweep", *TINY, f"out={root}", *args)


def _records(root: Path) -> dict[str, dict]:
    return {
        p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("runs/*/record.json"))
    }


def _history(record: dict) -> list[float]:
    return [
        value
        for entry in record["history"]
        for key, value in sorted(entry.items())
        if key != "train_seconds"
    ]


# ---------------------------------------------------------------- presets hold a grid


def test_presets_compose_and_hold_their_grid():
    quick = expand(["experiment=quick"])
    assert quick.swept == [("norm", ["bn", "gn", "frn"]), ("batch", ["32", "8", "2"])]
    assert len(quick.cells) == 9 and quick.labels[0] == "norm=bn batch=32"
    assert default_name(quick) == "quick"
    paper = expand(["experiment=gn_paper"])
    assert paper.swept == [
        ("norm", ["bn", "ln", "in", "gn", "frn", "mabn"]),
        ("batch", ["32", "16", "8", "4", "2"]),
    ]
    cfg = compose(["experiment=gn_paper"])
    assert (cfg.devices, cfg.accum, cfg.lr, cfg.lr_scaling, cfg.lr_ref_batch) == (
        8,
        1,
        0.1,
        "linear",
        256,
    )
    assert (cfg.backbone.name, cfg.data.name, cfg.backbone.activation) == (
        "lenet",
        "fashion_mnist",
        "relu",
    )
    d2l = compose(["experiment=d2l_lenet_bn"])
    assert (d2l.backbone.activation, d2l.backbone.pool, d2l.backbone.init) == (
        "sigmoid",
        "avg",
        "xavier",
    )
    assert (d2l.norm.name, d2l.batch, d2l.epochs, d2l.lr, d2l.lr_scaling) == (
        "bn",
        256,
        10,
        1.0,
        "none",
    )
    assert (d2l.optim.momentum, d2l.optim.weight_decay, d2l.optim.schedule) == (
        0.0,
        0.0,
        "constant",
    )
    # the preset's LeNet settings live in backbone/lenet_relu.yaml, so another backbone gets no
    # stray keys
    assert "pool" not in compose(["experiment=gn_paper", "backbone=resnet20"]).backbone


def test_swept_values_keep_the_users_spelling():
    grid = expand(["lr=1e12,1.6", "batch=range(2,5)"])
    assert grid.swept == [("lr", ["1e12", "1.6"]), ("batch", ["2", "3", "4"])]
    assert grid.labels[0] == "lr=1e12 batch=2" and default_name(grid) == "lr-1e12,1.6_batch-2,3,4"
    assert compose(grid.cells[0]).lr == 1e12


def test_command_line_keys_replace_the_presets_sweep_of_that_key():
    grid = expand(["experiment=gn_paper", "norm=gn", "seed=0,1"])
    # norm fixed by the user, batch from the preset
    assert [key for key, _ in grid.swept] == ["seed", "batch"]
    assert all("norm=gn" in cell for cell in grid.cells) and len(grid.cells) == 10
    assert default_name(grid) == "gn_paper_norm=gn_seed-0,1"
    narrowed = expand(["experiment=quick", "batch=4,2"])
    assert narrowed.swept == [("batch", ["4", "2"]), ("norm", ["bn", "gn", "frn"])]


def test_unknown_preset_is_one_line_with_a_suggestion(normbench, tmp_path):
    result = normbench("sweep", "experiment=gn_papr", f"out={tmp_path}")
    assert result.code == 2
    assert "unknown experiment 'gn_papr' (did you mean 'gn_paper'?)" in result.err
    assert "Traceback" not in result.err and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- launchers


@pytest.mark.slow
def test_jobs_run_the_grid_in_worker_processes_like_a_sequential_sweep(normbench, tmp_path):
    parallel = _sweep(normbench, tmp_path / "par", *GRID, "--jobs", "2", "--name", "g")
    assert parallel.code == 0, parallel.err
    assert "through Hydra's joblib launcher, 2 at a time" in parallel.out
    assert (
        "4 cells: 4 completed, 0 skipped (already completed), 0 diverged, 0 failed" in parallel.out
    )
    # the table is printed, not only written
    # (a metric column when the runs hold test_error_batch too: study.metrics.sweep_metrics)
    assert "| 16 | 8 |" in parallel.out and "| norm \\ batch |" in parallel.out
    folder = tmp_path / "par" / "sweeps" / "g"
    assert {
        "sweep.yaml",
        "table.md",
        "table.tex",
        "table.csv",
        "error_vs_batch.png",
        "launcher",
    } == {p.name for p in folder.iterdir()}
    meta = yaml.safe_load((folder / "sweep.yaml").read_text())
    records = _records(tmp_path / "par")
    assert sorted(c["run_key"] for c in meta["cells"]) == sorted(records) and len(records) == 4
    assert all(r["status"] == "completed" for r in records.values())

    sequential = _sweep(normbench, tmp_path / "seq", *GRID, "--name", "g")
    assert sequential.code == 0, sequential.err
    # same cells, same run keys, same numbers: a worker process changes nothing but where the run
    # trains (workers use fewer torch threads; on this CPU LeNet's kernels give the same floats
    # either way)
    reference = _records(tmp_path / "seq")
    assert sorted(reference) == sorted(records)
    for key, record in records.items():
        assert _history(record) == pytest.approx(_history(reference[key]), rel=1e-5), key
    assert (folder / "table.md").read_text() == (
        tmp_path / "seq" / "sweeps" / "g" / "table.md"
    ).read_text()

    # a rerun launches only what is missing: one deleted run -> one Hydra job
    removed = sorted(records)[0]
    shutil.rmtree(tmp_path / "par" / "runs" / removed)
    again = _sweep(normbench, tmp_path / "par", *GRID, "--jobs", "2", "--name", "g")
    assert again.code == 0, again.err
    assert "4 cells (3 already done)" in again.out
    assert "4 cells: 1 completed, 3 skipped (already completed), 0 diverged, 0 failed" in again.out
    table = json.loads((folder / "launcher" / "cells.json").read_text())
    assert len(table["cells"]) == 1 and sorted(_records(tmp_path / "par")) == sorted(records)
    (cell,) = table["cells"].values()
    assert _history(_records(tmp_path / "par")[removed]) == pytest.approx(
        _history(reference[removed]), rel=1e-5
    )
    (swept_cell,) = [c for c in meta["cells"] if c["run_key"] == removed]

    def settings(overrides):  # what the job adds: an absolute out and no progress bar
        return [text for text in overrides if not text.startswith(("out=", "log."))]

    # the job trained exactly the validated cell
    assert settings(cell) == settings(swept_cell["overrides"])


@pytest.mark.slow
def test_a_failing_cell_in_a_worker_does_not_stop_the_launched_sweep(normbench, tmp_path):
    result = _sweep(normbench, tmp_path, "norm=none", "lr=1e12,1.6", "--jobs", "2")
    assert result.code == 0, result.err
    assert "2 cells: 1 completed, 0 skipped (already completed), 1 diverged, 0 failed" in result.out
    assert sorted(r["status"] for r in _records(tmp_path).values()) == ["completed", "diverged"]


@pytest.mark.slow
def test_submitit_local_launcher_runs_each_cell_as_a_job(normbench, tmp_path):
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher", reason="pip install 'normbench[slurm]'"
    )
    result = _sweep(
        normbench, tmp_path, "norm=bn,gn", "hydra/launcher=submitit_local", "--name", "s"
    )
    assert result.code == 0, result.err
    assert "through Hydra's submitit_local launcher" in result.out
    assert "2 cells: 2 completed, 0 skipped (already completed), 0 diverged, 0 failed" in result.out
    records = _records(tmp_path)
    assert len(records) == 2 and all(r["status"] == "completed" for r in records.values())
    # submitit kept each job's logs inside the sweep folder, not in the working directory
    logs = list((tmp_path / "sweeps" / "s" / "launcher").rglob("*_log.out"))
    assert len(logs) == 2, logs


def test_launcher_errors_are_one_line(normbench, tmp_path):
    missing = _sweep(normbench, tmp_path, *GRID, "hydra/launcher=nosuch")
    assert missing.code == 2 and "unknown hydra/launcher 'nosuch'" in missing.err
    stray = _sweep(normbench, tmp_path, *GRID, "hydra.launcher.n_jobs=3")
    assert stray.code == 2 and "Hydra settings apply to launched sweeps only" in stray.err
    bad_jobs = _sweep(normbench, tmp_path, *GRID, "--jobs", "0")
    assert bad_jobs.code == 2 and "--jobs 0" in bad_jobs.err
    for result in (missing, stray, bad_jobs):
        assert "Traceback" not in result.err and not (tmp_path / "runs").exists()
