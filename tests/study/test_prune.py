"""`normbench prune DIR`: lists unfinished, failed and orphan folders, removes them only with --yes,
never touches completed or diverged runs nor a run a live process holds."""

from __future__ import annotations

import os

from test_table import write_record

from normbench.files import claim_run
from normbench.study.prune import NO_RECORD, NO_SWEEP_FILE, find_prunable, remove


def _tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def _out_folder(root):
    """One folder of each kind under root/runs and root/sweeps; returns the names by kind."""
    runs = {
        "completed": write_record(root, "bn", 8, 0, 24.0),
        "diverged": write_record(root, "bn", 8, 1, None, status="diverged"),
        "failed": write_record(root, "bn", 8, 2, 50.0, status="failed"),
        "interrupted": write_record(root, "bn", 8, 3, 50.0, status="interrupted"),
        "running": write_record(root, "bn", 8, 4, 50.0, status="running"),  # killed: no lock
        "busy": write_record(root, "bn", 8, 5, 50.0, status="running"),
    }
    orphan = root / "runs" / "killed-before-its-record"
    orphan.mkdir()
    (orphan / "config.yaml").write_text("batch: 8\n")
    unreadable = root / "runs" / "truncated"
    unreadable.mkdir()
    (unreadable / "record.json").write_text('{"status": "comp')
    (root / "sweeps" / "done").mkdir(parents=True)
    (root / "sweeps" / "done" / "sweep.yaml").write_text("cells: []\n")
    (root / "sweeps" / "stopped" / "launcher").mkdir(parents=True)
    return runs, orphan, unreadable


def test_lists_what_holds_no_result_and_writes_nothing(tmp_path):
    runs, orphan, unreadable = _out_folder(tmp_path)
    claim = claim_run(runs["busy"])  # a live process trains it
    try:
        before = _tree(tmp_path)
        found = find_prunable(tmp_path)
        assert _tree(tmp_path) == before
    finally:
        claim.release()
    assert {(item.folder, item.why) for item in found.removable} == {
        (runs["failed"], "failed"),
        (runs["interrupted"], "interrupted"),
        (runs["running"], "running"),
        (orphan, NO_RECORD),
        (unreadable, NO_RECORD),
        (tmp_path / "sweeps" / "stopped", NO_SWEEP_FILE),
    }
    assert found.busy == [runs["busy"]] and found.kept == 3  # completed, diverged, sweeps/done


def test_remove_checks_each_folder_again_under_its_claim(tmp_path):
    runs, orphan, _ = _out_folder(tmp_path)
    busy = claim_run(runs["busy"])
    found = find_prunable(tmp_path)
    # between the listing and --yes: one run is resumed by another process, one completes
    resumed = claim_run(runs["interrupted"])
    write_record(tmp_path / "tmp", "bn", 8, 2, 24.0)
    os.replace(
        tmp_path / "tmp" / "runs" / "bn-b8-s2" / "record.json", runs["failed"] / "record.json"
    )
    try:
        removed, kept = remove(found.removable)
    finally:
        resumed.release()
        busy.release()
    assert sorted(kept) == sorted([runs["interrupted"], runs["failed"]])
    assert runs["running"] in removed and orphan in removed
    for name in ("completed", "diverged", "busy", "interrupted", "failed"):
        assert (runs[name] / "record.json").is_file(), name
    assert not runs["running"].exists() and not orphan.exists()
    assert not (tmp_path / "sweeps" / "stopped").exists()
    assert (tmp_path / "sweeps" / "done" / "sweep.yaml").is_file()


def test_cli_lists_then_removes_with_yes(tmp_path, normbench):
    runs, orphan, _ = _out_folder(tmp_path)
    busy = claim_run(runs["busy"])
    try:
        listed = normbench("prune", str(tmp_path))
        removed = normbench("prune", str(tmp_path), "--yes")
    finally:
        busy.release()
    assert listed.code == 0, listed.err
    assert f"failed       {runs['failed']}  (" in listed.out
    assert f"no record    {orphan}  (" in listed.out
    assert "6 folder(s) to remove" in listed.out and "rerun with --yes" in listed.out
    assert f"busy         {runs['busy']}  (a live process trains it: kept)" in listed.out
    assert removed.code == 0 and "removed 6 folder(s)" in removed.out
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(
        runs[name].name for name in ("completed", "diverged", "busy")
    )
    # released: the busy run is a killed one now
    again = normbench("prune", str(tmp_path))
    assert "1 folder(s) to remove" in again.out and f"running      {runs['busy']}" in again.out


def test_cli_needs_an_out_folder(tmp_path, normbench):
    result = normbench("prune", str(tmp_path))
    assert result.code == 2 and result.err.count("\n") == 1
    assert "no runs/ or sweeps/ folder" in result.err
