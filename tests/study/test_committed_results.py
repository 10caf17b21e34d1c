"""The published results (docs/results/) are exactly what their committed run records produce: every
sweep folder's table.md / table.tex / table.csv is regenerated from the records and compared, and
docs/results.md shows the same tables."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from normbench.study.formats import render
from normbench.study.metrics import sweep_metrics
from normbench.study.tables import build_table, load_runs, table_axes

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
SWEEPS = sorted(p.parent for p in RESULTS.glob("*/sweeps/*/sweep.yaml"))
FILES = {"md": "table.md", "latex": "table.tex", "csv": "table.csv"}


def test_there_are_published_results():
    assert SWEEPS, f"no sweep folders under {RESULTS}"


@pytest.mark.parametrize("folder", SWEEPS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_committed_tables_are_what_the_committed_records_give(folder):
    meta = yaml.safe_load((folder / "sweep.yaml").read_text())
    runs = load_runs(folder)
    assert len(runs) == len(meta["cells"])  # every cell's record is committed, beside the sweep
    assert all(str(run.path).startswith(str(RESULTS)) for run in runs)
    rows, cols = table_axes([key.lstrip("+~") for key in meta["swept"]])
    table = build_table(folder, sweep_metrics(runs), rows, cols, runs=runs)
    for fmt, name in FILES.items():
        assert render(table, fmt) == (folder / name).read_text(), f"{folder / name} is stale"
    assert (folder / "error_vs_batch.png").read_bytes()[:4] == b"\x89PNG"


def test_the_docs_show_the_committed_tables():
    """docs/results.md shows every committed table (the README shows the converged study's:
    test_committed_study.py)."""
    shown = (RESULTS.parent / "results.md").read_text()
    for folder in SWEEPS:
        body = [
            line for line in (folder / "table.md").read_text().splitlines() if line.startswith("|")
        ]
        assert "\n".join(body) in shown, f"docs/results.md does not show {folder / 'table.md'}"
