"""`normbench plot PATH --curves`: training curves read back from TensorBoard events equal what the
runs logged (and their record.json history), seeds are averaged with a min..max band, a resumed run
has each step once, runs without events are skipped with one warning, and none with events is a
one-line error."""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path

import matplotlib.image
import pytest
import yaml
from matplotlib.collections import PolyCollection
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from normbench import cli, epochs
from normbench.study.figures import (
    TEST_ERROR,
    TRAIN_LOSS,
    curves_figure,
    event_files,
    read_scalars,
    run_curves,
    seed_band,
)
from normbench.study.tables import load_runs

# 64 images: 4 steps per epoch at batch 16, 2 at batch 32; a train/loss point after every step.
SMALL = [
    "data=synthetic",
    "data.train_size=64",
    "data.test_size=32",
    "epochs=2",
    "lr=1.6",
    "log.progress=none",
    "log.every_steps=1",
]
# bn b16 has two seeds
CELLS = [("bn", 16, 0), ("bn", 16, 1), ("bn", 32, 0), ("gn", 16, 0), ("gn", 32, 0)]


def _norm_args(norm: str) -> list[str]:
    return ["norm=gn", "norm.groups=2"] if norm == "gn" else [f"norm={norm}"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """Five real tiny runs (2 norms x 2 batches, one cell with 2 seeds), trained once for this
    module."""
    root = tmp_path_factory.mktemp("curves") / "outputs"
    with pytest.MonkeyPatch.context() as patch:
        for norm, batch, seed in CELLS:
            patch.setattr(
                sys,
                "argv",
                [
                    "normbench",
                    "run",
                    *SMALL,
                    *_norm_args(norm),
                    f"batch={batch}",
                    f"seed={seed}",
                    f"out={root}",
                ],
            )
            try:
                cli.main()
            except SystemExit as exit_:
                assert exit_.code in (0, None)
    return root


def runs_by_cell(root: Path) -> dict[tuple[str, int, int], object]:
    return {(r.get("norm"), r.get("batch"), r.get("seed")): r for r in load_runs(root)}


def test_read_scalars_later_attempt_replaces_overlap_and_files_are_ordered_by_time(tmp_path):
    tb = tmp_path / "tb"
    first = SummaryWriter(str(tb))
    for step in range(1, 10):  # killed at step 9; the last checkpoint was at step 4
        first.add_scalar("train/x", float(step), step)
    first.add_scalar("epoch/e", 10.0, 1)
    first.add_scalar("epoch/e", 20.0, 2)  # flushed, then "killed" before the checkpoint of epoch 2
    first.close()
    resumed = SummaryWriter(str(tb), purge_step=4)
    for step in range(5, 9):
        resumed.add_scalar("train/x", 100.0 + step, step)
    resumed.add_scalar("epoch/e", 21.0, 2)
    resumed.add_scalar("epoch/e", 30.0, 3)
    resumed.close()
    files = event_files(tb)
    assert len(files) == 2
    # the resumed file's name now sorts first: the order must come from the events' wall times
    files[1].rename(tb / "events.out.tfevents.0000000000.host.1.0")
    # a writer killed before any flush
    (tb / "events.out.tfevents.0000000001.host.1.9").write_bytes(b"")
    scalars = read_scalars(tb)
    # steps 1-4 from the first attempt (before the resumed one's first step), 5-8 from the resumed
    # one, and the first attempt's step 9 is gone although nothing replaced it (the resumed run
    # stopped at 8)
    assert scalars["train/x"].to_dict() == {
        1: 1.0,
        2: 2.0,
        3: 3.0,
        4: 4.0,
        5: 105.0,
        6: 106.0,
        7: 107.0,
        8: 108.0,
    }
    assert scalars["epoch/e"].to_dict() == {1: 10.0, 2: 21.0, 3: 30.0}
    assert list(scalars["train/x"].index) == sorted(scalars["train/x"].index)


def test_curves_equal_what_each_run_logged(grid):
    runs = runs_by_cell(grid)
    assert len(runs) == len(CELLS)
    for (norm, batch, seed), run in runs.items():
        curves = run_curves(run)
        history = run.record.history
        steps_per_epoch = run.record.setup["steps_per_epoch"]
        assert steps_per_epoch == 64 // batch
        assert list(curves.test_error.index) == [h["epoch"] for h in history] == [1, 2]
        assert list(curves.test_error) == pytest.approx(
            [h["test_error"] for h in history], rel=1e-6
        )
        # one train/loss point per step, on an epoch axis: 1/spe, 2/spe, ..., 2.0
        assert list(curves.train_loss.index) == pytest.approx(
            [s / steps_per_epoch for s in range(1, 2 * steps_per_epoch + 1)]
        )
        for entry in history:  # the epoch's train loss is the mean of its per-step losses
            epoch = entry["epoch"]
            in_epoch = curves.train_loss[
                (curves.train_loss.index > epoch - 1) & (curves.train_loss.index <= epoch)
            ]
            assert len(in_epoch) == steps_per_epoch
            assert in_epoch.mean() == pytest.approx(entry["train_loss"], rel=1e-5)


def test_seed_mean_and_min_max_band_and_figure_lines(grid):
    runs = runs_by_cell(grid)
    pair = [run_curves(runs[("bn", 16, seed)]) for seed in (0, 1)]
    band = seed_band([c.test_error for c in pair])
    errors = [[h["test_error"] for h in runs[("bn", 16, seed)].record.history] for seed in (0, 1)]
    assert band.seeds == 2 and band.x == [1, 2]
    assert band.mean == pytest.approx([statistics.mean(v) for v in zip(*errors)], rel=1e-6)
    assert band.low == pytest.approx([min(v) for v in zip(*errors)], rel=1e-6)
    assert band.high == pytest.approx([max(v) for v in zip(*errors)], rel=1e-6)

    fig = curves_figure(grid)
    axes = fig.axes
    assert len(axes) == 4  # 2 rows (train loss, test error) x 2 batches
    top, bottom = axes[:2], axes[2:]
    # as the table: large batch first
    assert [ax.get_title() for ax in top] == ["batch=32", "batch=16"]
    assert [[line.get_label() for line in ax.lines] for ax in axes] == [["bn", "gn"]] * 4
    b16_test_bn = bottom[1].lines[0]
    assert list(b16_test_bn.get_ydata()) == pytest.approx(band.mean)
    loss_band = seed_band([c.train_loss for c in pair])
    assert list(top[1].lines[0].get_ydata()) == pytest.approx(loss_band.mean)
    assert all(lo <= m <= hi for lo, m, hi in zip(loss_band.low, loss_band.mean, loss_band.high))
    # a band only where there are two seeds: the bn line at batch 16 (one in each row)
    assert [sum(isinstance(c, PolyCollection) for c in ax.collections) for ax in axes] == [
        0,
        1,
        0,
        1,
    ]
    assert "train loss" in top[0].get_ylabel() and "(%)" in bottom[0].get_ylabel()
    assert bottom[0].get_xlabel() == "epoch"
    # the legend uses paper names (issue 16); the lines keep the table's row values as labels
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["BN", "GN"]
    assert "mean over 1–2 seed(s)" in fig.get_suptitle()  # uneven seed counts are said

    swapped = curves_figure(grid, rows="batch", cols="norm")  # panels per norm, lines per batch
    assert [ax.get_title() for ax in swapped.axes[:2]] == ["norm=bn", "norm=gn"]
    assert [line.get_label() for line in swapped.axes[0].lines] == ["32", "16"]


def test_cli_writes_curves_png(grid, normbench, tmp_path):
    result = normbench("plot", str(grid), "--curves")
    assert result.code == 0, result.err
    target = grid / "curves.png"
    assert result.out.strip() == f"wrote {target}" and result.err == ""
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 20_000
    pixels = matplotlib.image.imread(target)
    assert pixels.shape[0] > 600 and pixels.shape[1] > 900
    rgb = {tuple(p) for p in (pixels[..., :3] * 255).astype(int).reshape(-1, 3)[::7]}
    assert len(rgb) > 100  # lines, bands, text: not an empty canvas
    other = tmp_path / "figs" / "c.png"
    assert (
        normbench(
            "plot", str(grid), "--curves", "--rows", "batch", "--cols", "norm", "--out", str(other)
        ).code
        == 0
    )
    assert other.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = normbench("plot", str(grid), "--curves", "--metric", "train_loss")
    assert bad.code == 2 and bad.err.count("\n") == 1 and "--metric" in bad.err


def test_runs_without_events_are_skipped_then_an_error(grid, normbench, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(grid, root)
    run_dirs = sorted(p.parent for p in root.glob("runs/*/record.json"))
    for run_dir in run_dirs[:2]:
        shutil.rmtree(run_dir / "tb")
    result = normbench("plot", str(root), "--curves")
    assert result.code == 0, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: skipping 2 run(s)")
    assert all(str(run_dir) in lines[0] for run_dir in run_dirs[:2])
    assert not any(str(run_dir) in lines[0] for run_dir in run_dirs[2:])
    assert (root / "curves.png").exists()

    for run_dir in run_dirs[2:]:
        shutil.rmtree(run_dir / "tb")
    result = normbench("plot", str(root), "--curves")
    assert result.code == 2 and result.err.count("\n") == 1
    assert (
        result.err.startswith("error: none of the 5 completed run(s)") and "--force" in result.err
    )


def test_sweep_folder_draws_exactly_its_cells(grid, tmp_path):
    runs = runs_by_cell(grid)
    chosen = [runs[("bn", 16, 0)], runs[("gn", 32, 0)]]
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "sweep.yaml").write_text(
        yaml.safe_dump(
            {
                "cells": [
                    {"run_key": r.path.parent.name, "run_dir": str(r.path.parent)} for r in chosen
                ]
            }
        )
    )
    fig = curves_figure(folder)
    top = fig.axes[:2]
    assert [ax.get_title() for ax in top] == ["batch=32", "batch=16"]
    assert [[line.get_label() for line in ax.lines] for ax in top] == [["gn"], ["bn"]]
    assert list(top[1].lines[0].get_ydata()) == pytest.approx(
        list(run_curves(chosen[0]).train_loss)
    )


def test_resumed_run_curve_has_each_step_once(normbench, monkeypatch, tmp_path):
    args = [*SMALL, "batch=16"]
    assert normbench("run", *args, out=tmp_path / "ref").code == 0
    calls = {"n": 0}
    real_evaluate = epochs.evaluate

    def evaluate_then_interrupt(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2 trained and logged, then killed before its checkpoint
            raise KeyboardInterrupt
        return real_evaluate(*a, **k)

    monkeypatch.setattr(epochs, "evaluate", evaluate_then_interrupt)
    assert normbench("run", *args, out=tmp_path / "cut").code == 130
    monkeypatch.setattr(epochs, "evaluate", real_evaluate)
    resumed = normbench("run", *args, out=tmp_path / "cut")
    assert resumed.code == 0 and resumed.record()["status"] == "completed"

    tb = next((tmp_path / "cut" / "runs").iterdir()) / "tb"
    logged = []
    for file in event_files(tb):
        events = EventAccumulator(str(file), size_guidance={"scalars": 0})
        events.Reload()
        if TRAIN_LOSS in events.Tags()["scalars"]:
            logged += [e.step for e in events.Scalars(TRAIN_LOSS)]
    # both attempts logged epoch 2's steps: there is an overlap to remove
    assert len(logged) > len(set(logged))

    mine, ref = read_scalars(tb), read_scalars(next((tmp_path / "ref" / "runs").iterdir()) / "tb")
    assert list(mine[TRAIN_LOSS].index) == list(ref[TRAIN_LOSS].index) == list(range(1, 2 * 4 + 1))
    assert list(mine[TRAIN_LOSS]) == pytest.approx(list(ref[TRAIN_LOSS]), rel=1e-6)
    assert list(mine[TEST_ERROR].index) == [1, 2]
    assert list(mine[TEST_ERROR]) == pytest.approx(
        [h["test_error"] for h in resumed.record()["history"]], rel=1e-6
    )
