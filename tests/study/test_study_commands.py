"""The study's commands (docs/results/study/commands.sh) reproduce its committed records: every
record under runs/ and epochs72/ is a cell of some phase's sweep, each finished phase has all of its
cells committed, and the per-batch start-up overrides end early in every run."""

from __future__ import annotations

import shlex
import subprocess
from functools import cache
from pathlib import Path

import pytest

from normbench.study.cells import PlannedRun, prepare
from normbench.study.grid import expand

pytestmark = pytest.mark.slow  # composes and plans ~200 cells (~30 s)

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "docs" / "results" / "study"
PHASES = {  # phase -> its command-line arguments to commands.sh
    "main 0": ["main", "0"],
    "main 1": ["main", "1"],
    "main 2": ["main", "2"],
    "lr": ["lr"],
    "epochs": ["epochs"],
    "fcnorm": ["fcnorm"],
    "shufflenet": ["shufflenet", "0,1,2"],
    "resnet20": ["resnet20"],
}
# phases whose every cell is committed; the others are still running (docs/study.md, Status)
FINISHED = {"main 0", "main 1", "epochs", "fcnorm"}
COMMITTED = {path.parent.name for path in STUDY.glob("runs/*/record.json")} | {
    path.parent.name for path in STUDY.glob("epochs72/runs/*/record.json")
}


@cache
def _cells(phase: str) -> tuple[PlannedRun, ...]:
    argv = ["bash", str(STUDY / "commands.sh"), *PHASES[phase]]
    lines = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()
    cells: list[PlannedRun] = []
    for line in lines:
        words = shlex.split(line)
        assert words[:2] == ["normbench", "sweep"], line
        overrides = [word for word in words[2:] if "=" in word and not word.startswith("-")]
        cells += prepare(expand(overrides), None)
    return tuple(cells)


def test_every_committed_record_is_a_cell_of_the_commands():
    planned = {cell.run_key for phase in PHASES for cell in _cells(phase)}
    assert COMMITTED and not COMMITTED - planned, sorted(COMMITTED - planned)


@pytest.mark.parametrize("phase", sorted(FINISHED))
def test_each_finished_phase_has_all_its_runs_committed(phase):
    missing = {cell.run_key for cell in _cells(phase)} - COMMITTED
    assert not missing, sorted(missing)


@pytest.mark.parametrize("phase", ["main 0", "lr", "shufflenet"])
def test_start_up_counted_in_iterations_ends_within_the_first_epochs(phase):
    """cbn, brn and mabn count their start-up in iterations; commands.sh gives it per batch so that
    it ends by epoch 4 of 36 (the defaults, 500 to 4,000 iterations, would not at batch 32)."""
    checked = 0
    for cell in _cells(phase):
        norm = cell.cfg.norm
        steps_per_epoch = cell.cfg.data.train_size // cell.plan.sgd_batch
        ends = {
            "cbn": ["burnin"],
            "brn": ["warmup_start", "dmax_iters", "rmax_iters"],
            "mabn": ["warmup_iters", "renorm_iters"],
        }.get(norm.name, [])
        for key in ends:
            assert 0 < norm[key] <= 4 * steps_per_epoch, (cell.label, key, norm[key])
            checked += 1
    assert checked, f"phase {phase} has no cbn, brn or mabn cell"
