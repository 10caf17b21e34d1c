"""`normbench run|sweep --dry-run` (and Hydra's `--cfg job`): prints the config or the cells with
run key, SGD batch, lr, steps, state and a time estimate; writes nothing."""

from __future__ import annotations

import json

import pytest
from conftest import TINY

from normbench import __version__
from normbench.dry_run import duration, run_state, split_sizes
from normbench.records import RunRecord, Status
from normbench.runs import CHECKPOINT

# TINY trains 128 images in SGD batches of 16 with lr 1.6 at reference batch 256
TINY_KEY = "synthetic-lenet-bn-b16x1-s0"


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def line(text, start):
    return next(row for row in text.splitlines() if row.startswith(f"{start} "))


@pytest.mark.parametrize("flag", [["--dry-run"], ["--cfg", "job"]])
def test_run_dry_run_prints_the_plan_and_writes_nothing(normbench, tmp_path, flag):
    before = files_under(tmp_path)
    result = normbench("run", *flag, *TINY)
    assert result.code == 0, result.err
    assert files_under(tmp_path) == before, "a dry run must write nothing"
    out = result.out
    assert "batch: 16" in out and "lr_scaling: linear" in out  # the resolved config
    key = line(out, "run key").split()[-1]
    assert key.startswith(f"{TINY_KEY}-")  # TINY's data sizes and lr add a hash
    assert line(out, "run dir").endswith(f"{key}: not started")
    assert line(out, "SGD batch").startswith("SGD batch  16 (batch 16 x devices 1 x accum 1")
    assert line(out, "lr").startswith("lr         0.1 ")  # 1.6 * 16 / 256
    assert "8 per epoch (128 training images / SGD batch 16" in line(out, "steps")
    assert line(out, "estimate").startswith("estimate   ~") and "(probe)" in out


def test_sgd_batch_and_lr_follow_devices_and_scaling(normbench):
    result = normbench("run", "--dry-run", *TINY, "sgd_batch=64", "lr_scaling=sqrt")
    assert result.code == 0, result.err
    assert line(result.out, "SGD batch").startswith("SGD batch  64 (batch 16 x devices 4 x")
    assert line(result.out, "lr").startswith("lr         0.8 ")  # 1.6 * sqrt(64 / 256)
    assert "2 per epoch" in line(result.out, "steps")


def test_dry_run_after_a_run_says_completed_and_estimates_from_it(normbench):
    trained = normbench("run", *TINY)
    assert trained.code == 0
    assert trained.record()["env"]["normbench"] == __version__  # every record has the version
    done = normbench("run", "--dry-run", *TINY)
    assert "completed (test_error" in line(done.out, "run dir") and "skipped" in done.out
    assert line(done.out, "estimate") == "estimate   nothing to train"
    forced = normbench("run", "--dry-run", "--force", *TINY)
    assert "trains again (--force)" in line(forced.out, "run dir")
    other_seed = normbench("run", "--dry-run", *TINY, "seed=1")
    assert "(1 run)" in line(other_seed.out, "estimate"), other_seed.out
    assert "images/s" in line(other_seed.out, "estimate")


def test_sweep_dry_run_prints_every_cell_and_writes_nothing(normbench, tmp_path):
    out = tmp_path / "outputs"
    assert normbench("run", *TINY, "norm=gn", out=out).code == 0
    before = files_under(tmp_path)
    result = normbench("sweep", "--dry-run", *TINY, "norm=bn,gn", "seed=0,1", f"out={out}")
    assert result.code == 0, result.err
    assert files_under(tmp_path) == before, "a dry run must write nothing"
    rows = {row.split("  ")[0]: row for row in result.out.splitlines() if row.startswith("norm=")}
    assert list(rows) == ["norm=bn seed=0", "norm=bn seed=1", "norm=gn seed=0", "norm=gn seed=1"]
    assert "synthetic-lenet-bn-b16x1-s1" in rows["norm=bn seed=1"]
    assert "completed (test_error" in rows["norm=gn seed=0"]
    assert "nothing to train" in rows["norm=gn seed=0"]
    assert "not started" in rows["norm=bn seed=0"] and "~" in rows["norm=bn seed=0"]
    assert "(1 run)" in rows["norm=gn seed=1"]  # timed by the completed gn run
    assert result.out.splitlines()[0].startswith("sweep norm-bn,gn_seed-0,1: 4 cells -> ")
    assert "3 of 4 cells to train: ~" in result.out


def test_hydra_cfg_other_than_job_is_one_line(normbench):
    result = normbench("run", "--cfg", "hydra", *TINY)
    assert result.code == 2 and result.err.startswith("error: --cfg hydra")
    assert "--cfg job" in result.err


def test_run_state_reads_an_interrupted_run(tmp_path):
    run_dir = tmp_path / "run"
    assert run_state(run_dir, 4, force=False) == ("not started", 4)
    record = RunRecord(Status.INTERRUPTED, config={"epochs": 4})
    record.metrics["epochs_done"] = 1
    record.save(run_dir)
    assert run_state(run_dir, 4, force=False) == ("interrupted after epoch 1/4: starts over", 4)
    (run_dir / CHECKPOINT).write_bytes(b"")
    assert run_state(run_dir, 4, force=False) == (
        "interrupted after epoch 1/4: resumes from its checkpoint",
        3,
    )
    assert json.loads((run_dir / "record.json").read_text())["status"] == "interrupted"


def test_split_sizes_without_reading_data(cfg_of):
    assert split_sizes(cfg_of([]).data) == (60000, 10000)
    held_out = cfg_of(["data.val_size=5000", "data.test_size=1000"]).data
    assert split_sizes(held_out) == (55000, 6000)
    assert split_sizes(cfg_of(["data=cifar10", "data.train_size=2000"]).data) == (2000, 10000)
    assert split_sizes(cfg_of(["data=synthetic", "data.val_size=64"]).data) == (512, 320)


def test_duration():
    assert [duration(s) for s in (0.2, 45, 600, 7200)] == ["1 s", "45 s", "10.0 min", "2.0 h"]
