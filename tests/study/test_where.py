"""`table --where key=value` (and the parser `plot` shares): filters parsed like overrides, unknown
keys named with close ones, no match explained."""

from __future__ import annotations

import pytest
from test_table import grid, md_rows, write_record

from normbench.errors import UserError
from normbench.study.formats import to_markdown
from normbench.study.run_records import load_runs
from normbench.study.tables import build_table
from normbench.study.where import parse_where, select


def test_values_are_parsed_like_overrides():
    (batch, norms, amp, size) = parse_where(
        ["batch=2", "norm=bn,gn", "amp=true", "data.train_size=1e3"]
    )
    assert (batch.key, batch.values) == ("batch", (2,))
    assert norms.values == ("bn", "gn") and amp.values == (True,) and size.values == (1000.0,)


@pytest.mark.parametrize("text", ["batch", "=2", "batch=", "+batch=2", "lr=interval(0,1)"])
def test_malformed_filters_are_one_line_errors(text):
    with pytest.raises(UserError, match="--where") as error:
        parse_where([text])
    assert "\n" not in str(error.value)


def test_select_keeps_the_runs_every_filter_holds_for(tmp_path):
    grid(tmp_path)
    write_record(tmp_path, "ln", 2, 0, 30.0, amp=True)
    runs = load_runs(tmp_path)
    picked = select(runs, parse_where(["batch=2", "norm=gn,ln"]))
    assert sorted((r.get("norm"), r.get("seed")) for r in picked) == [
        ("gn", 0),
        ("gn", 1),
        ("ln", 0),
    ]
    # a bool matches a bool only; a key an older record lacks reads as its added default
    assert [r.get("norm") for r in select(runs, parse_where(["amp=true"]))] == ["ln"]
    assert len(select(runs, parse_where(["devices=1"]))) == len(runs)
    assert select(runs, []) == runs


def test_a_bool_filter_does_not_match_the_number_one(tmp_path):
    write_record(tmp_path, "bn", 2, 0, 30.0, amp=True)
    write_record(tmp_path, "gn", 2, 0, 30.0, accum=1)
    runs = load_runs(tmp_path)
    with pytest.raises(UserError, match="no run record matches"):
        select(runs, parse_where(["amp=1"]))
    assert [r.get("norm") for r in select(runs, parse_where(["accum=1"]))] == ["bn", "gn"]


def test_unknown_key_names_close_keys_and_no_match_names_the_values(tmp_path):
    runs = load_runs(grid(tmp_path))
    with pytest.raises(UserError, match=r"'bach' \(close keys: batch") as error:
        select(runs, parse_where(["bach=2"]))
    assert "\n" not in str(error.value)
    with pytest.raises(
        UserError, match=r"matches --where batch=8; the records have batch in \{2, 32\}"
    ):
        select(runs, parse_where(["batch=8"]))


def test_table_where_filters_and_says_so(tmp_path, normbench):
    grid(tmp_path)
    table = build_table(tmp_path, where=parse_where(["batch=2"]))
    assert table.cols == [2] and table.n_runs == 4
    text = to_markdown(table)
    assert "4 run records where batch=2;" in text.splitlines()[0]
    result = normbench("table", str(tmp_path), "--where", "norm=gn", "--where", "batch=32")
    assert result.code == 0, result.err
    rows = md_rows(result.out)
    assert list(rows) == ["norm \\ batch", "---", "gn"] and rows["norm \\ batch"] == ["32"]
    bad = normbench("table", str(tmp_path), "--where", "nrom=gn")
    assert bad.code == 2 and bad.err.count("\n") == 1 and "close keys: norm" in bad.err
