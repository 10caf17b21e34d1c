"""`normbench table` / `normbench plot`: tables built from hand-written record.json files, every
cell checked."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
from conftest import TINY

from normbench.errors import UserError
from normbench.study.figures import make_figure
from normbench.study.formats import to_csv, to_latex, to_markdown
from normbench.study.tables import CellCost, build_table

BASE_CONFIG = {"backbone": {"name": "lenet"}, "data": {"name": "synthetic"}, "accum": 1, "lr": 0.1}


def write_record(
    root: Path,
    norm: str,
    batch: int,
    seed: int,
    error: float | None = None,
    status: str = "completed",
    ips: float = 100.0,
    mem: float = 10.0,
    groups: int | None = None,
    **config,
) -> Path:
    run_dir = root / "runs" / f"{norm}-b{batch}-s{seed}"
    run_dir.mkdir(parents=True)
    cfg = {
        **BASE_CONFIG,
        "norm": {"name": norm, **({"groups": groups} if groups else {})},
        "batch": batch,
        "seed": seed,
        **config,
    }
    record = {
        "status": status,
        "config": cfg,
        "metrics": {
            "test_error": error,
            "best_test_error": None if error is None else error - 1,
            "train_loss": 0.5,
        },
        "timing": {"images_per_second": ips, "peak_memory_mb": mem},
    }
    (run_dir / "record.json").write_text(json.dumps(record))
    return run_dir


def grid(root: Path) -> Path:
    """bn and gn at batch 32 and 2, two seeds each (GN-paper-like numbers), plus lists the exact
    values."""
    write_record(root, "bn", 32, 0, 23.5, ips=200, mem=50)
    write_record(root, "bn", 32, 1, 23.7, ips=400, mem=70)
    write_record(root, "bn", 2, 0, 34.0, ips=20, mem=5)
    write_record(root, "bn", 2, 1, 35.0, ips=40, mem=6)
    write_record(root, "gn", 32, 0, 24.0, ips=100, mem=60)
    write_record(root, "gn", 32, 1, 24.2, ips=300, mem=80)
    write_record(root, "gn", 2, 0, 24.1, ips=10, mem=7)
    write_record(root, "gn", 2, 1, 24.3, ips=30, mem=8)
    return root


def std(*values: float) -> float:
    return statistics.stdev(values)


def md_rows(text: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("|")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_markdown_cells_bold_and_delta(tmp_path):
    table = build_table(grid(tmp_path))
    # bn first; batch descending like the paper
    assert table.rows == ["bn", "gn"] and table.cols == [32, 2]
    assert table.cell("bn", 32).mean == pytest.approx(23.6)
    assert table.cell("bn", 32).std == pytest.approx(std(23.5, 23.7))
    assert table.cell("gn", 2).n == 2
    rows = md_rows(to_markdown(table))
    assert rows["norm \\ batch"] == ["32", "2"]
    assert rows["bn"] == [f"**23.60 ± {std(23.5, 23.7):.2f}**", f"34.50 ± {std(34.0, 35.0):.2f}"]
    assert rows["gn"] == [f"24.10 ± {std(24.0, 24.2):.2f}", f"**24.20 ± {std(24.1, 24.3):.2f}**"]
    assert rows["Δ gn−bn"] == ["+0.50", "-10.30"]
    assert set(rows) == {"norm \\ batch", "---", "bn", "gn", "Δ gn−bn"}


def test_single_seed_uneven_n_missing_and_no_bn_delta(tmp_path):
    write_record(tmp_path, "gn", 8, 0, 24.0)
    write_record(tmp_path, "gn", 8, 1, 25.0)
    write_record(tmp_path, "ln", 8, 0, 26.0)
    write_record(tmp_path, "ln", 4, 0, 27.0)
    rows = md_rows(to_markdown(build_table(tmp_path)))
    assert rows["gn"] == [f"**24.50 ± {std(24.0, 25.0):.2f} (n=2)**", "–"]
    assert rows["ln"] == ["26.00 (n=1)", "**27.00 (n=1)**"]
    assert not any(key.startswith("Δ") for key in rows)  # no bn row: no Δ row


def test_diverged_failed_and_unfinished_are_never_averaged(tmp_path):
    write_record(tmp_path, "bn", 2, 0, None, status="diverged")
    write_record(tmp_path, "bn", 2, 1, float("nan"), status="diverged")
    write_record(tmp_path, "bn", 2, 2, 10.0, status="failed")
    write_record(tmp_path, "bn", 4, 0, 23.0)
    # a diverged run's metric is not used
    write_record(tmp_path, "bn", 4, 1, 99.0, status="diverged")
    write_record(tmp_path, "gn", 2, 0, 99.0, status="failed")
    write_record(tmp_path, "gn", 4, 0, 25.0)
    write_record(tmp_path, "gn", 4, 1, 50.0, status="running")
    write_record(tmp_path, "gn", 4, 2, 50.0, status="interrupted")
    table = build_table(tmp_path)
    text = to_markdown(table)
    rows = md_rows(text)
    assert table.cols == [4, 2]
    assert rows["bn"] == ["**23.00† (1 div)**", "div (1 failed)"]
    assert rows["gn"] == ["25.00 (2 unfinished)", "failed"]
    assert rows["Δ gn−bn"] == ["+2.00", "–"]
    assert "† some seeds diverged" in text
    for name in ("bn-b2-s2", "gn-b2-s0", "gn-b4-s1", "gn-b4-s2"):
        assert name in text  # listed as not counted, with their status
    assert "not counted (failed)" in text and "not counted (running)" in text


def test_cost_columns_per_cell(tmp_path):
    # per cell, not per row: a row's batch sizes differ, so their images/s must not be averaged
    table = build_table(grid(tmp_path))
    assert table.cost_of("bn", 32) == CellCost(300.0, 70.0)  # mean images/s, largest peak memory
    assert table.cost_of("bn", 2) == CellCost(30.0, 6.0)
    assert table.cost_of("gn", 2) == CellCost(20.0, 8.0)
    rows = md_rows(to_markdown(table, cost=True))
    assert rows["norm \\ batch"] == [
        "32",
        "2",
        "images/s (batch=32)",
        "images/s (batch=2)",
        "peak MB (batch=32)",
        "peak MB (batch=2)",
    ]
    assert rows["bn"][2:] == ["300", "30", "70", "6"] and rows["gn"][2:] == ["200", "20", "80", "8"]
    assert rows["Δ gn−bn"][2:] == [""] * 4


def test_cost_shows_how_peak_memory_was_measured(tmp_path):
    for seed, kind in ((0, "rss_run_peak"), (1, "rss_run_peak")):
        run_dir = write_record(tmp_path, "bn", 8, seed, 20.0 + seed, mem=30.0 + seed)
        record = json.loads((run_dir / "record.json").read_text())
        record["timing"]["peak_memory_kind"] = kind
        (run_dir / "record.json").write_text(json.dumps(record))
    write_record(tmp_path, "bn", 4, 0, 25.0, mem=12.0)  # an older record: no kind
    table = build_table(tmp_path)
    assert table.cost_of("bn", 8) == CellCost(100.0, 31.0, "rss_run_peak")
    text = to_markdown(table, cost=True)
    assert md_rows(text)["bn"][2:] == ["100", "100", "31", "12"]
    assert "largest peak memory (MB), measured as rss_run_peak" in text
    row = list(csv.DictReader(io.StringIO(to_csv(table, cost=True))))[0]
    assert (row["batch=8 peak_memory_kind"], row["batch=4 peak_memory_kind"]) == (
        "rss_run_peak",
        "",
    )


def test_latex_booktabs(tmp_path):
    text = to_latex(build_table(grid(tmp_path)))
    lines = text.splitlines()
    assert r"\begin{tabular}{lrr}" in lines
    assert [l for l in lines if l in (r"\toprule", r"\midrule", r"\bottomrule")] == [
        r"\toprule",
        r"\midrule",
        r"\midrule",
        r"\bottomrule",
    ]
    assert (
        f"bn & \\textbf{{23.60 $\\pm$ {std(23.5, 23.7):.2f}}} & 34.50 $\\pm$ "
        f"{std(34.0, 35.0):.2f} \\\\"
    ) in lines
    assert r"$\Delta$ gn$-$bn & +0.50 & -10.30 \\" in lines


def test_csv_raw_numbers(tmp_path):
    parsed = list(csv.DictReader(io.StringIO(to_csv(build_table(grid(tmp_path)), cost=True))))
    bn, gn = parsed
    assert bn["norm"] == "bn" and gn["norm"] == "gn"
    assert float(bn["batch=32 mean"]) == pytest.approx(23.6)
    assert float(bn["batch=32 std"]) == pytest.approx(std(23.5, 23.7))
    assert float(gn["batch=2 mean"]) == pytest.approx(24.2)
    assert (bn["batch=2 n"], bn["batch=2 div"]) == ("2", "0")
    assert (
        float(gn["batch=32 images_per_second"]) == pytest.approx(200.0)
        and float(gn["batch=2 peak_memory_mb"]) == 8.0
    )
    assert len(parsed) == 2  # no Δ row in the raw numbers


def test_other_metric_rows_cols_and_dotted_key(tmp_path):
    for groups, seed, err in ((16, 0, 24.0), (16, 1, 24.4), (32, 0, 25.0)):
        write_record(tmp_path / f"g{groups}", "gn", 8, seed, err, groups=groups)
    table = build_table(tmp_path, metric="best_test_error", rows="norm", cols="norm.groups")
    assert table.cols == [16, 32]
    assert table.cell("gn", 16).mean == pytest.approx(23.2)
    rows = md_rows(to_markdown(table))
    # one row: best in each column
    assert rows["gn"] == [f"**23.20 ± {std(23.0, 23.4):.2f} (n=2)**", "**24.00 (n=1)**"]


def test_cells_mixing_other_settings_are_an_error(tmp_path):
    write_record(tmp_path / "a", "bn", 8, 0, 24.0)
    write_record(tmp_path / "b", "bn", 8, 1, 25.0, lr=0.2)
    with pytest.raises(UserError, match="differ in lr"):
        build_table(tmp_path)
    write_record(tmp_path / "dup" / "c", "gn", 8, 0, 24.0)  # the same run copied into two folders
    write_record(tmp_path / "dup" / "d", "gn", 8, 0, 24.0)
    with pytest.raises(UserError, match="seed 0 twice"):
        build_table(tmp_path / "dup")


def test_cli_table_formats_and_out(tmp_path, normbench):
    grid(tmp_path / "sweep")
    result = normbench("table", str(tmp_path / "sweep"))
    assert result.code == 0, result.err
    assert md_rows(result.out)["Δ gn−bn"] == ["+0.50", "-10.30"]
    result = normbench("table", str(tmp_path / "sweep"), "--format", "latex", "--cost")
    assert result.code == 0 and r"\toprule" in result.out and "images/s" in result.out
    target = tmp_path / "t.csv"
    result = normbench("table", str(tmp_path / "sweep"), "--format", "csv", "--out", str(target))
    assert result.code == 0 and str(target) in result.out
    assert float(list(csv.DictReader(target.open()))[0]["batch=2 mean"]) == pytest.approx(34.5)
    result = normbench("table", str(tmp_path / "sweep"), "--metric", "train_loss")
    assert result.code == 0 and "0.5000" in result.out


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "no readable run records"),
        (("--format", "html"), "unknown format"),
        (("--metric", "accuracy"), "unknown metric"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path, normbench, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    if args:
        grid(empty)
    result = normbench("table", str(empty), *args)
    assert result.code == 2
    assert result.err.count("\n") == 1 and message in result.err and "Traceback" not in result.err


def test_corrupt_record_is_skipped_with_one_warning(tmp_path, normbench):
    grid(tmp_path)
    bad = tmp_path / "runs" / "bad"
    bad.mkdir()
    (bad / "record.json").write_text('{"status": "comp')
    (tmp_path / "runs" / "notarecord").mkdir()
    (tmp_path / "runs" / "notarecord" / "record.json").write_text("[1, 2]")
    result = normbench("table", str(tmp_path))
    assert result.code == 0
    warnings = result.err.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: skipping") for w in warnings)
    assert str(bad / "record.json") in result.err
    # the good records' numbers are intact
    assert md_rows(result.out)["Δ gn−bn"] == ["+0.50", "-10.30"]


def test_plot_figure_and_png(tmp_path, normbench):
    grid(tmp_path)
    write_record(tmp_path, "ln", 32, 0, 26.0)
    fig = make_figure(build_table(tmp_path))
    ax = fig.axes[0]
    assert len(ax.containers) == 3  # one errorbar line per norm
    # paper names, in a figure legend below the axes (issue 16)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["BN", "GN", "LN"]
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["2", "32"]
    assert ax.xaxis_inverted()  # batch shrinks left to right, as in the GN paper's Figure 1
    assert "(%)" in ax.get_ylabel() and "batch" in ax.get_xlabel()
    bn_line = ax.containers[0].lines[0]
    assert list(bn_line.get_xdata()) == [2, 32] and list(bn_line.get_ydata()) == pytest.approx(
        [34.5, 23.6]
    )
    result = normbench("plot", str(tmp_path))
    assert result.code == 0, result.err
    assert (tmp_path / "error_vs_batch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = normbench("plot", str(tmp_path), "--out", str(blocker / "x.png"))
    assert result.code == 2 and result.err.count("\n") == 1 and "cannot write" in result.err


def test_end_to_end_two_real_runs(tmp_path, normbench):
    out = tmp_path / "outputs"
    for norm in ("bn", "gn"):
        assert (
            normbench(
                "run", *TINY, f"norm={norm}", "norm.groups=2" if norm == "gn" else "seed=0", out=out
            ).code
            == 0
        )
    records = {p.parent.name: json.loads(p.read_text()) for p in out.glob("runs/*/record.json")}
    result = normbench("table", str(out))
    assert result.code == 0, result.err
    rows = md_rows(result.out)
    assert rows["norm \\ batch"] == ["16"]
    for key, record in records.items():
        # 2 epochs of 8 SGD steps, under records.MIN_SGD_STEPS: marked ‡ and never bold
        assert (
            rows[record["config"]["norm"]["name"]][0] == f"{record['metrics']['test_error']:.2f}‡"
        )
    assert rows["Δ gn−bn"][0] != "–"
