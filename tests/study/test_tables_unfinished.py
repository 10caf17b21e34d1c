"""A table ignores unfinished runs (running, interrupted, failed) when it checks a cell for mixed
settings, never averages them, and its caption says how many it ignored."""

from __future__ import annotations

import pytest
from test_table import grid, md_rows, write_record

from normbench.errors import UserError
from normbench.study.formats import caption, to_markdown
from normbench.study.tables import build_table


def _train_size(size):
    return {"data": {"name": "synthetic", "train_size": size}}


def test_a_leftover_interrupted_run_of_another_setting_does_not_break_the_table(
    tmp_path, normbench
):
    write_record(tmp_path / "a", "bn", 8, 0, 24.0, **_train_size(1000))
    write_record(tmp_path / "a", "bn", 8, 1, 26.0, **_train_size(1000))
    # the leftover: same norm and batch, another data.train_size, stopped with Ctrl-C
    leftover = write_record(
        tmp_path / "b", "bn", 8, 0, 90.0, status="interrupted", **_train_size(2000)
    )
    table = build_table(tmp_path)
    cell = table.cell("bn", 8)
    assert cell.values == [24.0, 26.0] and cell.pending == 0  # another config: not in this cell
    assert table.not_counted == [(leftover / "record.json", "interrupted")]
    assert "3 run records (1 unfinished, ignored)" in caption(table)
    result = normbench("table", str(tmp_path))
    assert result.code == 0, result.err
    assert md_rows(result.out)["bn"] == ["**25.00 ± 1.41**"]
    assert f"not counted (interrupted): {leftover / 'record.json'}" in result.out


def test_unfinished_runs_of_the_same_setting_are_counted_not_averaged(tmp_path):
    grid(tmp_path)
    write_record(tmp_path / "more", "gn", 2, 2, 80.0, status="failed")
    write_record(tmp_path / "more", "gn", 2, 3, 80.0, status="running")
    table = build_table(tmp_path)
    cell = table.cell("gn", 2)
    assert cell.values == [24.1, 24.3] and (cell.failed, cell.pending) == (1, 1)
    text = to_markdown(table)
    assert "10 run records (2 unfinished, ignored)" in text.splitlines()[0]
    assert md_rows(text)["gn"][1].endswith("(1 failed, 1 unfinished)**")


def test_completed_runs_that_differ_are_still_an_error(tmp_path):
    write_record(tmp_path / "a", "bn", 8, 0, 24.0, **_train_size(1000))
    write_record(tmp_path / "b", "bn", 8, 1, 25.0, **_train_size(2000))
    with pytest.raises(UserError, match="differ in data.train_size"):
        build_table(tmp_path)
    # a diverged run is a result: it must agree too
    write_record(tmp_path / "gn" / "c", "gn", 8, 0, None, status="diverged", **_train_size(2000))
    write_record(tmp_path / "gn" / "d", "gn", 8, 1, 25.0, **_train_size(1000))
    with pytest.raises(UserError, match="differ in data.train_size"):
        build_table(tmp_path / "gn")


def test_a_table_without_unfinished_runs_says_nothing_about_them(tmp_path):
    assert "unfinished" not in caption(build_table(grid(tmp_path)))
