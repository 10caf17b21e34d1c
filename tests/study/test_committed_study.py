"""The converged study (docs/results/study/): every committed record is a completed run of the
study's presets, every run of the protocol (runs/) has a training loss flat by its criterion, and
every table `regenerate.sh` lists and the comparison are exactly what the records give now."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from normbench.records import FLAT_EPOCHS, FLAT_LOSS_CHANGE, RunRecord, Status

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "docs" / "results" / "study"
RECORDS = sorted(STUDY.glob("runs/*/record.json"))  # the protocol's runs (and its lr variants)
# pilot/ (fewer epochs), epochs72/ (more); probes/ holds stopped runs (their own test)
CHECKS = sorted(p for check in ("pilot", "epochs72") for p in STUDY.glob(f"{check}/runs/*/*.json"))
# protocol runs that miss the flatness criterion, each named on docs/study.md (never grows silently)
NOT_FLAT = {"fashion_mnist-lenet-bn-b2d8x1-s0-c5cd4f8b"}  # lr 2x at batch 2 (lr fairness): 4.97 %
PRESETS = {"experiment=gn_study", "experiment=gn_study_fcnorm", "experiment=shufflenet_study"}


def _table_commands() -> list[list[str]]:
    lines = (STUDY / "regenerate.sh").read_text().splitlines()
    return [shlex.split(line) for line in lines if line.startswith("normbench table ")]


def test_the_study_has_records_and_tables():
    assert RECORDS, f"no run records under {STUDY}/runs"
    assert _table_commands(), f"{STUDY}/regenerate.sh lists no table"


@pytest.mark.parametrize("path", RECORDS + CHECKS, ids=lambda p: p.parent.name)
def test_every_study_record_is_a_completed_run_of_its_presets(path):
    record = RunRecord.read(path)
    assert record.status is Status.COMPLETED
    assert PRESETS & set(record.overrides), record.overrides
    assert record.run_key == path.parent.name
    assert record.metrics["epochs_done"] == record.config["epochs"]


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.parent.name)
def test_every_protocol_run_has_a_flat_training_loss(path):
    record = RunRecord.read(path)
    assert record.config["epochs"] == 36  # the protocol's; other epochs are checks, in CHECKS
    change = record.metrics[f"train_loss_change{FLAT_EPOCHS}"]
    if record.run_key in NOT_FLAT:
        assert change >= FLAT_LOSS_CHANGE, f"{record.run_key} is flat now: drop it from NOT_FLAT"
        assert record.run_key in (ROOT / "docs" / "study.md").read_text()
    else:
        assert change < FLAT_LOSS_CHANGE, f"train loss changed {change:.2f}% over the last epochs"


@pytest.mark.parametrize("argv", _table_commands(), ids=lambda argv: argv[argv.index("--out") + 1])
def test_committed_study_tables_are_what_the_records_give(argv, normbench, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the commands' paths are relative to the repository
    out = argv.index("--out") + 1
    committed, argv[out] = ROOT / argv[out], str(tmp_path / Path(argv[out]).name)
    result = normbench(*argv[1:])
    assert result.code == 0, result.err
    assert Path(argv[out]).read_text() == committed.read_text(), f"{committed} is stale"


def test_the_docs_show_the_main_table_and_figure():
    """docs/study.md shows every table regenerate.sh writes; the README the main one and its
    figure."""
    page, readme = (ROOT / "docs" / "study.md").read_text(), (ROOT / "README.md").read_text()
    for argv in _table_commands():
        written = ROOT / argv[argv.index("--out") + 1]
        if written.suffix != ".md":
            continue
        body = "\n".join(line for line in written.read_text().splitlines() if line.startswith("|"))
        assert body in page, f"docs/study.md does not show {written}"
        if written.name == "main.md":
            assert body in readme, f"README does not show {written}"
    assert "docs/results/study/main.png" in readme
    assert (STUDY / "main.png").read_bytes()[:4] == b"\x89PNG"


def test_the_comparison_is_what_compare_py_gives_and_the_page_shows_it():
    result = subprocess.run(
        [sys.executable, str(STUDY / "compare.py")], capture_output=True, text=True, check=True
    )
    committed = (STUDY / "comparison.md").read_text()
    assert result.stdout == committed, "docs/results/study/comparison.md is stale: rerun compare.py"
    assert committed.strip() in (ROOT / "docs" / "study.md").read_text()


def test_differences_quoted_in_the_prose_are_the_comparisons():
    """Every "x ± se" difference the README and docs/study.md quote outside the injected tables is
    a line of comparison.md (so the prose cannot keep a number the records no longer give)."""
    committed = (STUDY / "comparison.md").read_text()
    quoted = re.compile(r"[+−-]\d+\.\d\d ± \d+\.\d\d")
    for doc in (ROOT / "README.md", ROOT / "docs" / "study.md"):
        prose = re.sub(r"<!-- table: .*?<!-- /table -->", "", doc.read_text(), flags=re.S)
        for number in quoted.findall(prose):
            assert number.replace("−", "-") in committed, f"{doc.name} quotes {number}: stale?"


def test_the_mabn_probes_table_is_what_their_records_give():
    probes = STUDY / "probes"
    result = subprocess.run(
        [sys.executable, str(probes / "history.py")], capture_output=True, text=True, check=True
    )
    assert result.stdout == (probes / "history.md").read_text(), "rerun probes/history.py"
    records = [RunRecord.read(path) for path in probes.glob("runs/*/record.json")]
    assert len(records) == 7
    for record in records:  # stopped early on purpose: never read as a finished result
        assert "experiment=shufflenet_study" in record.overrides
        assert record.status is not Status.COMPLETED and len(record.history) < 36
