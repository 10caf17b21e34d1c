"""Every numeric metric in tables and figures, several metrics per table, the ‡ mark of suspect
runs, and the metrics of a sweep's own table; on hand-written record.json files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from normbench import runner
from normbench.errors import UserError
from normbench.records import RunRecord, history_metrics
from normbench.study.figures import make_figure
from normbench.study.formats import FLAG_NOTE, render, to_csv, to_latex, to_markdown
from normbench.study.metrics import KNOWN, metric_info
from normbench.study.tables import build_table, load_runs

CONFIG = {"backbone": {"name": "lenet"}, "data": {"name": "synthetic", "num_classes": 10}}
# every metric a record of this version holds, each with its own value (bn at batch 32, seed 0)
NEW = {
    "test_error": 20.0,
    "test_error_precise": 18.0,
    "test_error_batch": 30.0,
    "val_error": 21.0,
    "best_val_error": 19.5,
    "best_val_epoch": 7,
    "test_error_at_best_val": 19.0,
    "test_acc": 0.8,
    "best_test_error": 18.5,
    "median5_test_error": 20.5,
    "train_loss": 0.25,
    "train_acc": 0.9,
    "test_loss": 0.55,
    "epochs_done": 10,
}


def write_run(
    root: Path,
    norm: str,
    batch: int,
    seed: int,
    metrics: dict,
    status: str = "completed",
    steps_per_epoch: int = 50,
) -> Path:
    """A run record with a 10-class dataset and `steps_per_epoch` (sanity_warnings reads both)."""
    run_dir = root / "runs" / f"{norm}-b{batch}-s{seed}"
    run_dir.mkdir(parents=True)
    record = {
        "status": status,
        "config": {**CONFIG, "norm": {"name": norm}, "batch": batch, "seed": seed},
        "setup": {"steps_per_epoch": steps_per_epoch},
        "metrics": {"epochs_done": 10, **metrics},
        "timing": {"images_per_second": 100.0, "peak_memory_mb": 10.0},
    }
    (run_dir / "record.json").write_text(json.dumps(record))
    return run_dir


def shifted(offset: float) -> dict:
    """NEW with every metric but the counts moved by `offset` (accuracies the other way)."""
    return {
        name: value if name in ("best_val_epoch", "epochs_done") else value + offset
        for name, value in NEW.items()
    }


def md_rows(text: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|")
    ]


# ---------------------------------------------------------------- any metric a record holds


@pytest.mark.parametrize("metric", list(NEW))
def test_table_metric_shows_every_metric_of_a_record(tmp_path, normbench, metric):
    write_run(tmp_path, "bn", 32, 0, NEW)
    write_run(tmp_path, "bn", 32, 1, shifted(1.0))
    info = KNOWN[metric]  # a known metric: its own label and digits, not the generic ones
    table = build_table(tmp_path, metric)
    expected = (NEW[metric] + shifted(1.0)[metric]) / 2
    assert table.cell("bn", 32).mean == pytest.approx(expected)
    result = normbench("table", str(tmp_path), "--metric", metric)
    assert result.code == 0, result.err
    assert result.out.startswith(info.label + ",")
    body = md_rows(result.out)[2]
    assert body[0] == "bn" and body[1].strip("*").startswith(f"{expected:.{info.digits}f} ± ")


def test_an_unknown_numeric_metric_gets_a_generic_label(tmp_path):
    write_run(tmp_path, "bn", 32, 0, {**NEW, "ema_drift_error": 1.23456, "holdout_acc": 0.5})
    write_run(tmp_path, "gn", 32, 0, {**NEW, "ema_drift_error": 2.0, "holdout_acc": 0.7})
    text = to_markdown(build_table(tmp_path, "ema_drift_error"))
    assert text.startswith("ema drift error, mean ± sample std")
    assert md_rows(text)[2:4] == [["bn", "**1.23**"], ["gn", "2.00"]]
    # an accuracy by its name: higher is better
    assert md_rows(to_markdown(build_table(tmp_path, "holdout_acc")))[3] == ["gn", "**0.7000**"]
    assert metric_info("mystery").better == 0 and metric_info("x_loss").better == -1


def test_bold_follows_the_direction_of_the_metric(tmp_path):
    write_run(tmp_path, "bn", 32, 0, NEW)
    write_run(tmp_path, "gn", 32, 0, shifted(-0.05))  # lower error, lower accuracy, lower loss
    rows = md_rows(to_markdown(build_table(tmp_path, "test_acc,test_error,train_loss,epochs_done")))
    assert rows[0] == ["norm \\ batch", "metric", "32"]
    assert rows[2:6] == [
        ["bn", "test_acc", "**0.8000**"],  # accuracies: higher is better
        ["", "test_error", "20.00"],
        ["", "train_loss", "0.2500"],
        ["", "epochs_done", "10.0"],  # a count: never bold
    ]
    assert rows[6:10] == [
        ["gn", "test_acc", "0.7500"],
        ["", "test_error", "**19.95**"],
        ["", "train_loss", "**0.2000**"],
        ["", "epochs_done", "10.0"],
    ]


@pytest.mark.parametrize(
    "metric, message",
    [
        (
            "test_eror_precise",
            "unknown metric 'test_eror_precise' (did you mean 'test_error_precise'?)",
        ),
        ("val_error", "no run record under"),  # known, but these (older) records lack it
    ],
)
def test_a_metric_no_record_holds_is_one_line_listing_what_they_hold(
    tmp_path, normbench, metric, message
):
    old = {"test_error": 20.0, "test_acc": 0.8, "train_loss": 0.3, "best_test_error": None}
    write_run(tmp_path, "bn", 32, 0, {**old, "test_error_precise": 19.0})
    write_run(tmp_path, "gn", 32, 0, old)
    result = normbench("table", str(tmp_path), "--metric", f"test_error,{metric}")
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert message in result.err
    # the metrics with a number in some record, known ones first in their order
    assert "they hold: test_error, test_error_precise, test_acc, train_loss, epochs_done" in (
        result.err
    )
    assert normbench("table", str(tmp_path), "--metric", ",").code == 2


def test_older_records_lacking_a_metric_are_left_out_of_its_cell_not_counted_as_diverged(tmp_path):
    write_run(tmp_path, "bn", 32, 0, NEW)
    write_run(tmp_path, "bn", 32, 1, {"test_error": 22.0})  # an older record: no precise error
    write_run(tmp_path, "bn", 32, 2, {**NEW, "test_error_precise": float("nan")})
    table = build_table(tmp_path, "test_error,test_error_precise")
    assert table.cell("bn", 32).n == 3
    precise = table.cell("bn", 32, "test_error_precise")
    assert (precise.values, precise.diverged) == ([18.0], 1)  # NaN: diverged; absent: left out


# ---------------------------------------------------------------- several metrics per table


def two_norms(root: Path) -> Path:
    write_run(root, "bn", 32, 0, NEW)
    write_run(root, "bn", 2, 0, {**NEW, "test_error": 35.0, "test_error_batch": 34.0})
    write_run(root, "gn", 32, 0, shifted(2.0))
    write_run(root, "gn", 2, 0, shifted(3.0))
    return root


METRICS3 = "test_error,test_error_precise,test_error_batch"


def test_several_metrics_markdown_one_sub_row_each_best_per_column_and_metric(tmp_path):
    text = to_markdown(build_table(two_norms(tmp_path), METRICS3), cost=True)
    caption = text.splitlines()[0]
    assert caption.startswith(
        "top-1 test error (%); top-1 test error, population statistics (%); top-1 test error, "
        "batch statistics (%) (one sub-row each)"
    )
    assert "best per column and metric in bold" in caption
    cost_header = [f"{what} (batch={b})" for what in ("images/s", "peak MB") for b in (32, 2)]
    blank = [""] * 4
    assert md_rows(text) == [
        ["norm \\ batch", "metric", "32", "2", *cost_header],
        ["---"] * 8,
        ["bn", "test_error", "**20.00**", "35.00", "100", "100", "10", "10"],
        ["", "test_error_precise", "**18.00**", "**18.00**", *blank],
        ["", "test_error_batch", "**30.00**", "34.00", *blank],
        ["gn", "test_error", "22.00", "**23.00**", "100", "100", "10", "10"],
        ["", "test_error_precise", "20.00", "21.00", *blank],
        ["", "test_error_batch", "32.00", "**33.00**", *blank],
        ["Δ gn−bn", "test_error", "+2.00", "-12.00", *blank],
        ["", "test_error_precise", "+2.00", "+3.00", *blank],
        ["", "test_error_batch", "+2.00", "-1.00", *blank],
    ]


def test_several_metrics_latex(tmp_path):
    lines = to_latex(build_table(two_norms(tmp_path), METRICS3)).splitlines()
    assert r"\begin{tabular}{llrr}" in lines
    assert r"norm $\backslash$ batch & metric & 32 & 2 \\" in lines
    assert r"bn & test\_error & \textbf{20.00} & 35.00 \\" in lines
    assert r" & test\_error\_precise & \textbf{18.00} & \textbf{18.00} \\" in lines
    assert r"$\Delta$ gn$-$bn & test\_error & +2.00 & -12.00 \\" in lines
    assert r" & test\_error\_batch & +2.00 & -1.00 \\" in lines


def test_several_metrics_csv_one_line_per_row_and_metric(tmp_path):
    text = to_csv(build_table(two_norms(tmp_path), METRICS3))
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0])[:6] == [
        "norm",
        "metric",
        "batch=32 mean",
        "batch=32 std",
        "batch=32 n",
        "batch=32 div",
    ]
    assert [(row["norm"], row["metric"]) for row in parsed] == [
        (norm, metric) for norm in ("bn", "gn") for metric in METRICS3.split(",")
    ]
    assert float(parsed[2]["batch=2 mean"]) == 34.0 and float(parsed[4]["batch=32 mean"]) == 20.0
    assert "flagged" not in text  # no suspect run: no flagged columns


def test_one_metric_keeps_the_single_metric_layout(tmp_path):
    table = build_table(two_norms(tmp_path), "test_error_precise")
    assert md_rows(to_markdown(table))[0] == ["norm \\ batch", "32", "2"]
    assert list(csv.DictReader(io.StringIO(to_csv(table))))[0]["norm"] == "bn"


# ---------------------------------------------------------------- ‡: suspect runs


def suspect_grid(root: Path) -> Path:
    """bn at batch 32 is best but one of its seeds is at chance (89.5% of 10 classes); gn at batch
    2 is best but one seed took 10 epochs of 9 SGD steps."""
    write_run(root, "bn", 32, 0, {**NEW, "test_error": 10.0})
    write_run(root, "bn", 32, 1, {**NEW, "test_error": 89.5})
    write_run(root, "bn", 2, 0, {**NEW, "test_error": 40.0})
    write_run(root, "gn", 32, 0, {**NEW, "test_error": 60.0})
    write_run(root, "gn", 2, 0, {**NEW, "test_error": 30.0}, steps_per_epoch=9)
    write_run(root, "gn", 2, 1, {**NEW, "test_error": 32.0})
    return root


def test_a_suspect_run_marks_its_cell_which_is_never_bold(tmp_path):
    table = build_table(suspect_grid(tmp_path), "test_error,test_error_precise")
    assert (table.cell("bn", 32).flagged, table.cell("gn", 2).flagged) == (1, 1)
    text = to_markdown(table)
    rows = md_rows(text)
    assert rows[2] == ["bn", "test_error", "49.75 ± 56.21‡ (n=2)", "**40.00 (n=1)**"]
    assert rows[3] == ["", "test_error_precise", "18.00 ± 0.00‡ (n=2)", "**18.00 (n=1)**"]
    assert rows[4] == ["gn", "test_error", "**60.00 (n=1)**", "31.00 ± 1.41‡ (n=2)"]
    assert text.rstrip().endswith(FLAG_NOTE)
    assert "within 2 points of chance" in FLAG_NOTE and "fewer than 100 SGD steps" in FLAG_NOTE
    latex = to_latex(table)
    assert r"49.75 $\pm$ 56.21$^\ddagger$ (n=2)" in latex and f"% {FLAG_NOTE}" in latex
    parsed = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert [(r["batch=32 flagged"], r["batch=2 flagged"]) for r in parsed] == [
        ("1", "0"),
        ("1", "0"),
        ("0", "1"),
        ("0", "1"),
    ]


def test_no_suspect_run_no_mark_no_footnote(tmp_path):
    text = render(build_table(two_norms(tmp_path)), "md")
    assert "‡" not in text and FLAG_NOTE not in text


# ---------------------------------------------------------------- figures


def test_plot_a_new_metric(tmp_path, normbench):
    two_norms(tmp_path)
    ax = make_figure(build_table(tmp_path, "test_error_precise")).axes[0]
    assert ax.get_ylabel() == "top-1 test error, population statistics (%)"
    assert list(ax.containers[0].lines[0].get_ydata()) == [18.0, 18.0]
    target = tmp_path / "precise.png"
    result = normbench(
        "plot", str(tmp_path), "--metric", "test_error_precise", "--out", str(target)
    )
    assert result.code == 0, result.err
    assert target.read_bytes()[:4] == b"\x89PNG"
    several = normbench("plot", str(tmp_path), "--metric", METRICS3)
    assert several.code == 2 and "a figure draws one metric" in several.err


# ---------------------------------------------------------------- a sweep's own table


def fake_trainer(metrics: dict):
    """runner.run_planned that writes a completed record with `metrics` instead of training."""

    def run_planned(plan, force=False):
        record = RunRecord.from_dict(
            {
                "status": "completed",
                "run_key": plan.key,
                "config": {**CONFIG, "norm": {"name": plan.cfg.norm.name}, "batch": plan.cfg.batch},
                "setup": {"steps_per_epoch": 500},
                "metrics": {**metrics, "epochs_done": 10},
            }
        )
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        record.save(plan.run_dir)
        return runner.RunResult(plan.run_dir, record)

    return run_planned


def sweep_table(normbench, monkeypatch, root: Path, metrics: dict, *args: str) -> str:
    monkeypatch.setattr(runner, "run_planned", fake_trainer(metrics))
    result = normbench("sweep", "data=synthetic", "norm=bn,gn", f"out={root}", "--name", "s", *args)
    assert result.code == 0, result.err
    return (root / "sweeps" / "s" / "table.md").read_text()


def test_sweep_table_adds_the_new_test_errors_every_run_holds(tmp_path, normbench, monkeypatch):
    text = sweep_table(normbench, monkeypatch, tmp_path / "new", NEW)
    assert [row[:2] for row in md_rows(text)[2:6]] == [
        ["bn", "test_error"],
        ["", "test_error_at_best_val"],
        ["", "test_error_precise"],
        ["", "test_error_batch"],
    ]
    assert "epoch selected on validation" in text.splitlines()[0]
    # `normbench table <sweep folder>` shows the sweep's own metrics; another folder test_error
    assert normbench("table", str(tmp_path / "new" / "sweeps" / "s")).out == text
    assert len(md_rows(normbench("table", str(tmp_path / "new")).out)[0]) == 2  # no metric column
    csv_text = (tmp_path / "new" / "sweeps" / "s" / "table.csv").read_text()
    assert csv_text.startswith("norm,metric,")
    no_val = {k: v for k, v in NEW.items() if k != "test_error_at_best_val"}
    text = sweep_table(normbench, monkeypatch, tmp_path / "noval", no_val)
    assert [row[1] for row in md_rows(text)[2:5]] == [
        "test_error",
        "test_error_precise",
        "test_error_batch",
    ]
    chosen = sweep_table(normbench, monkeypatch, tmp_path / "chosen", NEW, "--metric", "test_acc")
    assert chosen.startswith("top-1 test accuracy (fraction),")


def test_sweep_of_old_records_writes_todays_single_metric_table(tmp_path, normbench, monkeypatch):
    old = {"test_error": 20.0, "test_acc": 0.8, "best_test_error": 19.0, "train_loss": 0.3}
    text = sweep_table(normbench, monkeypatch, tmp_path, old)
    folder = tmp_path / "sweeps" / "s"
    table = build_table(folder, "test_error", runs=load_runs(folder))
    assert text == render(table, "md") and len(md_rows(text)[0]) == 2  # no metric column
    assert (folder / "table.csv").read_text() == render(table, "csv")


def test_sweep_unknown_metric_fails_before_anything_trains(tmp_path, normbench):
    result = normbench(
        "sweep", "data=synthetic", "norm=bn,gn", f"out={tmp_path}", "--metric", "vall_error"
    )
    assert result.code == 2 and "did you mean 'val_error'" in result.err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sweeps").exists()
    with pytest.raises(UserError, match="names no metric"):
        build_table(tmp_path, " , ")


# ---------------------------------------------------------------- the convergence criterion


def _history(losses: list[float]) -> list[dict]:
    return [
        {"epoch": i + 1, "train_loss": loss, "train_acc": 0.9, "test_loss": 0.5, "test_acc": 0.8}
        | {"test_error": 20.0}
        for i, loss in enumerate(losses)
    ]


def test_train_loss_change3_is_the_relative_change_over_the_last_3_epochs():
    metrics = history_metrics(_history([2.0, 1.0, 0.5, 0.40, 0.39, 0.38]))
    assert metrics["train_loss_change3"] == pytest.approx(abs(0.38 - 0.5) / 0.5 * 100)
    assert "train_loss_change3" not in history_metrics(_history([2.0, 1.0, 0.5]))  # too short
    assert KNOWN["train_loss_change3"].better == 0  # a check, never bolded as "best"


def test_a_record_written_before_the_metric_gets_it_on_reading(tmp_path):
    run_dir = write_run(tmp_path, "bn", 32, 0, NEW)
    data = json.loads((run_dir / "record.json").read_text())
    data["history"] = _history([1.0, 0.5, 0.30, 0.29, 0.3])
    (run_dir / "record.json").write_text(json.dumps(data))
    record = RunRecord.read(run_dir)
    assert record.metrics["train_loss_change3"] == pytest.approx(40.0)  # 0.5 -> 0.3
    assert record.metrics["test_error"] == NEW["test_error"]  # what the record holds is kept
    data["history"] = [{"epoch": 1}]  # a partial history adds nothing and breaks no reading
    (run_dir / "record.json").write_text(json.dumps(data))
    assert "train_loss_change3" not in RunRecord.read(run_dir).metrics
