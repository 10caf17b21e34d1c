"""`normbench sweep`: grid expansion with Hydra's override parser, no state leaking between cells,
resume, divergence and failures that do not stop the sweep, the sweep folder's files, and up-front
validation."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import yaml
from conftest import TINY
from omegaconf import OmegaConf

from normbench import runner
from normbench.errors import UserError
from normbench.study.cells import CellComposer
from normbench.study.grid import default_name, expand
from normbench.study.metrics import sweep_metrics
from normbench.study.tables import load_runs, table_axes


def _sweep(normbench, root, *args):
    return normbench("sweep", *TINY, *args, f"out={root}")


def _records(root):
    return {p.parent.name: json.loads(p.read_text()) for p in (root / "runs").glob("*/record.json")}


def _without_timing(history):
    return [{k: v for k, v in entry.items() if k != "train_seconds"} for entry in history]


# ---------------------------------------------------------------- grid expansion (no training)


def test_comma_lists_make_the_cartesian_grid_and_fixed_overrides_apply_to_every_cell():
    grid = expand(["epochs=2", "norm=bn,gn", "batch=2,4,8"])
    assert grid.swept == [("norm", ["bn", "gn"]), ("batch", ["2", "4", "8"])]
    assert len(grid.cells) == 6
    assert all(cell[0] == "epochs=2" for cell in grid.cells)
    assert grid.cells[0] == ["epochs=2", "norm=bn", "batch=2"]
    assert grid.cells[-1] == ["epochs=2", "norm=gn", "batch=8"]
    assert grid.labels[1] == "norm=bn batch=4"
    assert default_name(grid) == "norm-bn,gn_batch-2,4,8"


def test_range_and_choice_sweeps():
    grid = expand(["batch=range(2,9,2)", "seed=choice(0,1)"])
    assert grid.swept == [("batch", ["2", "4", "6", "8"]), ("seed", ["0", "1"])]
    assert len(grid.cells) == 8


def test_no_sweep_is_a_single_cell():
    grid = expand(["norm=gn", "batch=2"])
    assert grid.swept == [] and grid.cells == [["norm=gn", "batch=2"]]
    assert default_name(grid) == "norm=gn_batch=2"
    assert expand([]).cells == [[]] and default_name(expand([])) == "default"


def test_default_name_is_a_safe_path_part():
    name = default_name(
        expand(["data.root=/a/b c,/d", "norm=" + ",".join(f"n{i}" for i in range(40))])
    )
    assert "/" not in name and " " not in name and len(name) <= 80


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["norm=bn,"], "malformed override 'norm=bn,'"),
        (["out=a,b"], "out cannot be swept"),
        (["lr=interval(0,1)"], "only comma lists"),
        (["batch=2,4", "batch=8,16"], "swept twice"),
    ],
)
def test_bad_sweep_overrides_are_one_line_errors(overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")) as error:
        expand(overrides)
    assert "\n" not in str(error.value)


def test_cells_composed_from_a_shared_template_equal_hydras_compose_of_each_cell(cfg_of):
    grid = expand(["norm=bn,gn", "batch=2,4", "lr=1e12,0.1", "+norm.foo=1,2", "norm.eps=1e-3"])
    composer = CellComposer(grid, None)
    assert composer.value_keys == {"batch", "lr", "+norm.foo"}
    for cell in grid.cells:
        (expected, choices), (cfg, cell_choices) = (
            cfg_of(cell, with_choices=True),
            composer.compose(cell),
        )
        assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(expected) and cell_choices == choices
        assert OmegaConf.is_struct(cfg)
    with pytest.raises(UserError, match="unknown config key 'norm.nosuch'"):
        CellComposer(expand(["norm.nosuch=1,2"]), None).compose(["norm.nosuch=1"])


def test_table_axes_follow_the_swept_keys():
    assert table_axes(["norm", "batch", "seed"]) == ("norm", "batch")
    assert table_axes(["norm"]) == ("norm", "batch")
    assert table_axes(["lr"]) == ("norm", "lr")
    assert table_axes([]) == ("norm", "batch")


# ---------------------------------------------------------------- end to end on tiny synthetic runs


def test_a_run_inside_a_sweep_equals_the_same_run_alone(normbench, tmp_path):
    alone = normbench("run", *TINY, "norm=gn", out=tmp_path / "alone").record()
    # gn is the 2nd cell, after a bn run
    result = _sweep(normbench, tmp_path / "swept", "norm=bn,gn")
    assert result.code == 0, result.err
    swept = _records(tmp_path / "swept")
    (gn,) = [r for r in swept.values() if r["config"]["norm"]["name"] == "gn"]
    assert gn["status"] == alone["status"] == "completed"
    assert _without_timing(gn["history"]) == _without_timing(alone["history"])


def test_resume_trains_only_what_is_missing_and_writes_the_sweep_folder(
    normbench, tmp_path, monkeypatch
):
    root = tmp_path / "out"
    first = _sweep(normbench, root, "norm=bn,gn", "batch=8,16", "--name", "grid")
    assert first.code == 0, first.err
    assert "4 cells: 4 completed, 0 skipped (already completed), 0 diverged, 0 failed" in first.out

    folder = root / "sweeps" / "grid"
    assert {p.name for p in folder.iterdir()} == {
        "sweep.yaml",
        "table.md",
        "table.tex",
        "table.csv",
        "error_vs_batch.png",
    }
    assert (folder / "error_vs_batch.png").read_bytes()[:4] == b"\x89PNG"
    meta = yaml.safe_load((folder / "sweep.yaml").read_text())
    assert meta["name"] == "grid" and "date" in meta and "norm=bn,gn" in meta["overrides"]
    assert meta["swept"] == {"norm": ["bn", "gn"], "batch": ["8", "16"]}
    records = _records(root)
    assert sorted(cell["run_key"] for cell in meta["cells"]) == sorted(records)

    # every table cell is the record's metric (one seed: mean = the value), for each metric the
    # sweep's table shows: test_error, and a sub-row for each newer test error every run holds
    metrics = sweep_metrics(load_runs(folder))
    assert metrics[0] == "test_error"
    table = (folder / "table.md").read_text()
    cells, norm = {}, None
    for line in table.splitlines()[4:]:  # below the caption, a blank line, header and separator
        parts = [c.strip().strip("*") for c in line.split("|")[1:-1]]
        if not parts or parts[0].startswith("Δ"):
            break
        norm = parts[0] or norm  # a metric's sub-row leaves the row label empty
        cells[(norm, parts[1] if len(metrics) > 1 else "test_error")] = parts[-2:]
    assert set(cells) == {(n, m) for n in ("bn", "gn") for m in metrics}
    for record in records.values():
        # batch columns descend, as in the GN paper
        column = [16, 8].index(record["config"]["batch"])
        for metric in metrics:
            # tiny runs (under records.MIN_SGD_STEPS SGD steps) are marked ‡ and never bold
            assert (
                cells[(record["config"]["norm"]["name"], metric)][column]
                == f"{record['metrics'][metric]:.2f}‡"
            )
    with open(folder / "table.csv") as handle:
        csv_rows = {
            (row["norm"], row.get("metric", "test_error")): row for row in csv.DictReader(handle)
        }
    for record in records.values():
        for metric in metrics:
            value = float(
                csv_rows[(record["config"]["norm"]["name"], metric)][
                    f"batch={record['config']['batch']} mean"
                ]
            )
            assert value == pytest.approx(record["metrics"][metric])
    assert "\\toprule" in (folder / "table.tex").read_text()
    # `normbench table <sweep folder>` reads exactly the cells its sweep.yaml lists (a stray run
    # elsewhere under the out folder does not leak in) and prints what the sweep wrote
    assert (
        normbench(
            "run",
            "data=synthetic",
            "data.train_size=32",
            "data.test_size=16",
            "epochs=1",
            "batch=8",
            "norm=ln",
            "log.progress=none",
            out=root,
        ).code
        == 0
    )
    from_folder = normbench("table", str(folder))
    assert from_folder.code == 0 and from_folder.out.strip() == table.strip()

    # delete one run: the rerun trains that one only
    removed = next(iter(records))
    shutil.rmtree(root / "runs" / removed)
    trained = []
    real_run = runner.run_planned

    def counting(plan, *args, **kwargs):
        result = real_run(plan, *args, **kwargs)
        if not result.skipped:
            trained.append(result.run_dir.name)
        return result

    monkeypatch.setattr(runner, "run_planned", counting)
    second = _sweep(normbench, root, "norm=bn,gn", "batch=8,16", "--name", "grid")
    assert second.code == 0, second.err
    assert trained == [removed]
    assert "4 cells: 1 completed, 3 skipped (already completed), 0 diverged, 0 failed" in second.out


def test_a_diverged_or_failing_cell_does_not_stop_the_sweep(normbench, tmp_path, monkeypatch):
    root = tmp_path / "out"
    result = _sweep(normbench, root, "norm=none", "lr=1e12,1.6")  # the diverging cell comes first
    assert result.code == 0, result.err
    assert "2 cells: 1 completed, 0 skipped (already completed), 1 diverged, 0 failed" in result.out
    statuses = sorted(r["status"] for r in _records(root).values())
    assert statuses == ["completed", "diverged"]
    (folder,) = (root / "sweeps").iterdir()
    none_row = next(
        line
        for line in (folder / "table.md").read_text().splitlines()
        if line.startswith("| none ")
    )
    assert "div" in none_row

    # a diverged run is final, like a completed one: the rerun trains nothing and still counts it as
    # diverged
    stamps = {
        key: (root / "runs" / key / "record.json").stat().st_mtime_ns for key in _records(root)
    }
    rerun = _sweep(normbench, root, "norm=none", "lr=1e12,1.6")
    assert "2 cells: 0 completed, 1 skipped (already completed), 1 diverged, 0 failed" in rerun.out
    assert stamps == {
        key: (root / "runs" / key / "record.json").stat().st_mtime_ns for key in _records(root)
    }
    (diverged_key,) = [key for key, r in _records(root).items() if r["status"] == "diverged"]
    alone = normbench("run", *TINY, "norm=none", "lr=1e12", out=root)
    assert (
        alone.code == 0
        and f"already diverged: {root / 'runs' / diverged_key} (epoch 1" in alone.out
    )

    real_run = runner.run_planned

    def broken_for_gn(plan, *args, **kwargs):
        if plan.cfg.norm.name == "gn":
            raise RuntimeError("boom\nsecond line")
        return real_run(plan, *args, **kwargs)

    monkeypatch.setattr(runner, "run_planned", broken_for_gn)
    failed = _sweep(normbench, tmp_path / "other", "norm=gn,bn")
    assert failed.code == 0, failed.err
    assert "failed: norm=gn: RuntimeError: boom" in failed.err and "second line" not in failed.err
    assert "2 cells: 1 completed, 0 skipped (already completed), 0 diverged, 1 failed" in failed.out


def test_interrupt_stops_the_sweep_with_exit_130(normbench, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_planned", interrupted)
    result = _sweep(normbench, tmp_path / "out", "norm=bn,gn")
    assert result.code == 130
    assert "rerun the same sweep command to resume" in result.err
    # the grid was stored before the first cell (so a later sweep can tell it is another one)
    folder = tmp_path / "out" / "sweeps" / "norm-bn,gn"
    assert [p.name for p in folder.iterdir()] == ["sweep.yaml"]
    cells = yaml.safe_load((folder / "sweep.yaml").read_text())["cells"]
    assert [cell["outcome"] for cell in cells] == ["pending", "pending"]


def test_a_bad_value_in_the_grid_fails_up_front(normbench, tmp_path):
    root = tmp_path / "out"
    result = _sweep(normbench, root, "batch=2,0")
    assert result.code == 2
    assert result.err.strip().count("\n") == 0
    assert "batch=0" in result.err and "batch must be an integer >= 1" in result.err
    assert not root.exists()  # nothing trained, nothing written

    unknown = _sweep(normbench, root, "norm=bn,gnn")
    assert unknown.code == 2 and "norm=gnn" in unknown.err and "did you mean 'gn'" in unknown.err
    assert not root.exists()


def test_a_run_another_process_trains_is_busy_and_the_others_go_on(normbench, tmp_path):
    from normbench.files import claim_run

    root = tmp_path / "out"
    # learn the run dir of norm=gn's twin
    probe = _sweep(normbench, root, "norm=bn", "epochs=1", "--name", "probe")
    (bn_key,) = _records(root)
    gn_dir = root / "runs" / bn_key.replace("-bn-", "-gn-")
    claim = claim_run(gn_dir)  # as if a second sweep were training it right now
    try:
        result = _sweep(normbench, root, "norm=bn,gn", "epochs=1")
    finally:
        claim.release()
    assert probe.code == 0 and result.code == 0, result.err
    assert (
        "2 cells: 0 completed, 1 skipped (already completed), 0 diverged, 0 failed, 1 busy"
        in result.out
    )
    assert "busy: norm=gn: " in result.err and "being trained by another process" in result.err
    assert not (gn_dir / "record.json").exists()
    # once the claim is gone, the rerun trains it
    after = _sweep(normbench, root, "norm=bn,gn", "epochs=1")
    assert "2 cells: 1 completed, 1 skipped (already completed), 0 diverged, 0 failed" in after.out
