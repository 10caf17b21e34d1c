"""The evaluation protocol end to end (`normbench run`): validation split and selection, the final
evaluation with precise and batch statistics, `model_precise` in the checkpoint, resume of an
interrupted final evaluation, the sanity warning."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from normbench.backbones import build_model
from normbench.config import compose
from normbench.records import RunRecord, sanity_warnings

EVAL = ["data.val_size=32", "eval.precise_batches=6", "epochs=3"]


def run_dir_of(result):
    (run_dir,) = (result.root / "runs").iterdir()
    return run_dir


def checkpoint_of(run_dir):
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)


def test_bn_run_records_every_evaluation_and_keeps_the_precise_model(normbench):
    result = normbench("run", *TINY, *EVAL)
    assert result.code == 0, result.err
    run_dir = run_dir_of(result)
    record = json.loads((run_dir / "record.json").read_text())
    metrics, history = record["metrics"], record["history"]
    assert all("val_error" in entry and "val_loss" in entry for entry in history)
    best = min(history, key=lambda entry: entry["val_error"])
    assert metrics["best_val_epoch"] == best["epoch"]
    assert metrics["test_error_at_best_val"] == best["test_error"]
    assert metrics["val_error"] == history[-1]["val_error"]
    for name in ("test_error_precise", "test_error_batch"):
        assert 0 <= metrics[name] <= 100
    assert record["setup"]["val_images"] == 32 and record["setup"]["train_images"] == 128
    assert record["diagnostics"]["precise"]["layers"] == 4  # 2 conv + 2 fc BN layers
    drift = record["diagnostics"]["running_stats_drift"]
    assert len(drift) == 4 and all(value >= 0 for value in drift.values())
    assert record["timing"]["final_eval_seconds"] > 0
    saved = checkpoint_of(run_dir)
    ema, precise = saved["model"], saved["model_precise"]
    assert ema.keys() == precise.keys()
    parameters = {
        name for name, _ in build_model(compose(record["overrides"]))[0].named_parameters()
    }
    for name in ema:
        if name in parameters:
            assert torch.equal(ema[name], precise[name]), name  # weights untouched
    moved = [
        name
        for name in ema
        if name.endswith("running_var") and not torch.equal(ema[name], precise[name])
    ]
    assert len(moved) == 4
    assert "test_error_precise" in result.out and "test_error_batch" in result.out


def test_tensorboard_has_the_validation_and_final_scalars(normbench):
    run_dir = run_dir_of(normbench("run", *TINY, *EVAL))
    events = EventAccumulator(str(run_dir / "tb")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "epoch/val_error",
        "epoch/val_loss",
        "final/test_error_precise",
        "final/test_error_batch",
    } <= tags


@pytest.mark.parametrize("norm", ["gn", "ln", "frn"])
def test_norms_without_running_or_batch_statistics_report_the_plain_error(normbench, norm):
    record = normbench("run", *TINY, *EVAL, f"norm={norm}").record()
    metrics = record["metrics"]
    assert metrics["test_error_precise"] == metrics["test_error"]
    assert metrics["test_error_batch"] == metrics["test_error"]
    assert record["diagnostics"]["precise"]["layers"] == 0


def test_batch_statistics_differ_from_running_statistics_for_bn_at_batch_2(normbench):
    """At 2 images per device BN's batch-statistics error is not its EMA error: the evaluation
    really normalizes each chunk by itself."""
    record = normbench("run", *TINY, *EVAL, "batch=2", "devices=4").record()
    metrics = record["metrics"]
    assert metrics["test_error_batch"] != metrics["test_error"]
    assert record["diagnostics"]["precise"]["layers"] == 4


def test_precise_statistics_are_per_simulated_device(normbench):
    run_dir = run_dir_of(normbench("run", *TINY, *EVAL, "batch=4", "devices=4"))
    precise = checkpoint_of(run_dir)["model_precise"]
    running_var = next(v for k, v in precise.items() if k.endswith("running_var"))
    per_device = running_var.unflatten(-1, (4, -1))
    assert not torch.equal(per_device[0], per_device[1])  # each device's own batches


def test_an_interrupted_final_evaluation_is_redone_on_rerun(normbench, tmp_path):
    whole = normbench("run", *TINY, *EVAL, out=tmp_path / "whole").record()
    result = normbench("run", *TINY, *EVAL, out=tmp_path / "cut")
    run_dir = run_dir_of(result)
    # as if killed after the last epoch's checkpoint, before the final evaluation finished
    saved = checkpoint_of(run_dir)
    del saved["model_precise"]
    saved["state"]["final"] = {}
    torch.save(saved, run_dir / "checkpoint.pt")
    record = json.loads((run_dir / "record.json").read_text())
    record["status"] = "running"
    (run_dir / "record.json").write_text(json.dumps(record))
    again = normbench("run", *TINY, *EVAL, out=tmp_path / "cut")
    assert again.code == 0, again.err
    redone = again.record()
    assert redone["status"] == "completed"
    for name in ("test_error", "test_error_precise", "test_error_batch", "test_error_at_best_val"):
        assert redone["metrics"][name] == whole["metrics"][name], name
    assert "model_precise" in checkpoint_of(run_dir)


def test_a_run_of_few_steps_warns_at_its_end(normbench):
    result = normbench("run", *TINY)  # 2 epochs x 8 steps
    assert result.code == 0
    assert "warning: only 16 SGD steps (< 100)" in result.err
    record = RunRecord.read(run_dir_of(result))
    assert sanity_warnings(record)


def test_defaults_add_nothing_but_the_batch_statistics_error(normbench):
    record = normbench("run", *TINY).record()
    assert "test_error_precise" not in record["metrics"]
    assert "val_error" not in record["metrics"] and "val_error" not in record["history"][0]
    assert record["setup"]["val_images"] == 0


def test_switchable_norm_records_its_learned_importance_per_layer(normbench):
    record = normbench("run", *TINY, "norm=sn", "devices=2", "batch=8").record()
    importance = record["diagnostics"]["norm_importance"]
    assert set(importance) == set(record["setup"]["norm_layers"])  # every SN layer
    for weights in importance.values():
        for kind in ("mean", "var"):
            assert len(weights[kind]) == 3 and sum(weights[kind]) == pytest.approx(1.0)
    assert any(weights["mean"] != [1 / 3] * 3 for weights in importance.values())  # learned
