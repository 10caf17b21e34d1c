"""`normbench run` end to end on tiny synthetic data: the record, resume, skip, divergence,
TensorBoard."""

from __future__ import annotations

import json

import pytest
from conftest import TINY
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from normbench import epochs
from normbench.norms import NORMS

SPEC_METRICS = {"test_error", "test_acc", "best_test_error", "train_loss", "train_acc"}
SPEC_TIMING = {"train_seconds", "images_per_second", "peak_memory_mb"}


def test_record_holds_every_spec_field(normbench):
    result = normbench("run", *TINY)
    assert result.code == 0, result.err
    run_dir = next((result.root / "runs").iterdir())
    assert run_dir.name.startswith("synthetic-lenet-bn-b16x1-s0")
    assert {p.name for p in run_dir.iterdir()} == {
        "config.yaml",
        "record.json",
        "tb",
        "checkpoint.pt",
    }
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "completed"
    assert SPEC_METRICS <= set(record["metrics"])
    assert SPEC_TIMING <= set(record["timing"]) and all(
        record["timing"][k] > 0 for k in SPEC_TIMING
    )
    assert {"torch", "device", "device_name"} <= set(record["env"])
    assert record["config"]["norm"]["name"] == "bn" and record["config"]["batch"] == 16
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    last = record["history"][-1]
    assert record["metrics"]["test_error"] == pytest.approx(100 * (1 - last["test_acc"]))
    assert record["metrics"]["best_test_error"] == min(h["test_error"] for h in record["history"])
    assert record["setup"]["sgd_batch"] == 16 and record["setup"]["steps_per_epoch"] == 128 // 16
    assert record["setup"]["lr_scaled"] == pytest.approx(1.6 * 16 / 256)  # linear scaling
    assert len(record["setup"]["norm_layers"]) == 4  # 2 conv + 2 hidden fc
    assert not list(run_dir.glob(".*.tmp")), "atomic writes leave no temporary files"


def test_run_key_is_deterministic_and_hashes_non_default_settings(normbench):
    normbench("run", *TINY)
    normbench("run", *TINY, "lr=0.05")
    names = sorted(p.name for p in (normbench("list").root / "runs").iterdir())
    assert len(names) == 2 and names[0].startswith("synthetic-lenet-bn-b16x1-s0-")
    assert names[0].rsplit("-", 1)[-1] != names[1].rsplit("-", 1)[-1]


def test_training_learns_and_is_reproducible(normbench, tmp_path):
    first = normbench("run", *TINY, "epochs=3", out=tmp_path / "a").record()
    second = normbench("run", *TINY, "epochs=3", out=tmp_path / "b").record()
    assert first["history"] == [
        dict(h, train_seconds=g["train_seconds"])
        for h, g in zip(second["history"], first["history"])
    ]
    assert first["metrics"]["test_acc"] > 0.3  # 10 classes: chance is 0.1
    other_seed = normbench("run", *TINY, "epochs=3", "seed=1", out=tmp_path / "c").record()
    assert other_seed["metrics"]["train_loss"] != first["metrics"]["train_loss"]


def test_completed_run_is_skipped_unless_forced(normbench):
    assert normbench("run", *TINY).code == 0
    again = normbench("run", *TINY)
    assert again.code == 0 and "already completed" in again.out
    forced = normbench("run", "--force", *TINY)
    assert forced.code == 0 and "completed:" in forced.out and "already" not in forced.out


def test_interrupted_run_resumes_to_the_uninterrupted_result(normbench, monkeypatch, tmp_path):
    args = [*TINY, "epochs=3"]
    reference = normbench("run", *args, out=tmp_path / "ref").record()

    calls = {"n": 0}
    real_evaluate = epochs.evaluate

    def evaluate_then_interrupt(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # during epoch 2, after epoch 1's checkpoint was written
            raise KeyboardInterrupt
        return real_evaluate(*a, **k)

    monkeypatch.setattr(epochs, "evaluate", evaluate_then_interrupt)
    stopped = normbench("run", *args, out=tmp_path / "cut")
    assert stopped.code == 130 and "resume" in stopped.err
    assert stopped.record()["status"] == "interrupted"
    assert [h["epoch"] for h in stopped.record()["history"]] == [1]

    monkeypatch.setattr(epochs, "evaluate", real_evaluate)
    resumed = normbench("run", *args, out=tmp_path / "cut")
    assert "resuming" in resumed.err + resumed.out
    record = resumed.record()
    assert record["status"] == "completed"
    for mine, ref in zip(record["history"], reference["history"], strict=True):
        assert {k: v for k, v in mine.items() if k != "train_seconds"} == {
            k: v for k, v in ref.items() if k != "train_seconds"
        }


def test_corrupt_checkpoint_restarts_with_a_warning(normbench):
    first = normbench("run", *TINY)
    run_dir = next((first.root / "runs").iterdir())
    record = json.loads((run_dir / "record.json").read_text())
    record["status"] = "running"  # as if killed before the end
    (run_dir / "record.json").write_text(json.dumps(record))
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    again = normbench("run", *TINY, "log.progress=plain")
    assert again.code == 0 and "unreadable" in again.err
    assert again.record()["status"] == "completed" and len(again.record()["history"]) == 2


def test_non_finite_loss_is_recorded_as_diverged(normbench):
    result = normbench("run", *TINY, "lr=1e12", "norm=none", "log.every_steps=1")
    assert result.code == 0
    assert "diverged" in result.out and "non-finite" in result.err
    record = result.record()
    assert record["status"] == "diverged"
    assert record["diverged_at"]["epoch"] == 1


def test_tensorboard_scalars_and_hparams_live_in_the_run_folder(normbench):
    result = normbench("run", *TINY, "log.every_steps=2")
    tb = next((result.root / "runs").iterdir()) / "tb"
    assert not [p for p in tb.iterdir() if p.is_dir()], "hparams must not create a stray subfolder"
    events = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "train/lr", "epoch/test_error", "epoch/train_loss"} <= tags
    assert [e.step for e in events.Scalars("epoch/test_error")] == [1, 2]
    assert len(events.Scalars("train/loss")) == 2 * (128 // 16) // 2
    assert "hparam/test_error" in tags  # add_hparams wrote the final metrics next to the scalars


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_every_norm_trains_at_batch_2(normbench, norm):
    result = normbench("run", *TINY, f"norm={norm}", "batch=2", "data.train_size=32", "epochs=1")
    assert result.code == 0, result.err
    record = result.record()
    assert record["status"] == "completed" and record["metrics"]["test_error"] is not None
    layers = record["setup"]["norm_layers"]
    if norm == "none":
        assert list(layers.values()) == ["Identity()"] * 4
    # no 1-D form (in, evonorm_b0): the hidden fc layers go without a norm
    elif not NORMS[norm].supports_1d:
        assert len(layers) == 2 and len(record["setup"]["layers_without_norm"]) == 2
    else:
        assert len(layers) == 4


def test_gn_records_the_groups_each_layer_got(normbench):
    record = normbench("run", *TINY, "norm=gn", "epochs=1").record()
    # 6, 16, 120, 84 channels
    assert list(record["setup"]["norm_groups"].values()) == [3, 8, 30, 28]
    assert all("groups=" in text for text in record["setup"]["norm_layers"].values())


def test_accum_gives_each_micro_batch_its_own_statistics(normbench, tmp_path):
    """accum=2 x batch 8 is one SGD step of 16 images whose BN sees two batches of 8: it differs
    from batch 16."""
    record = normbench("run", *TINY, "batch=8", "accum=2", "epochs=1", out=tmp_path / "a").record()
    assert record["setup"]["sgd_batch"] == 16 and record["setup"]["steps_per_epoch"] == 8
    assert record["setup"]["lr_scaled"] == pytest.approx(1.6 * 16 / 256)
    plain = normbench("run", *TINY, "batch=16", "epochs=1", out=tmp_path / "b").record()
    assert record["history"][0]["train_loss"] != plain["history"][0]["train_loss"]
    gn_accum = normbench(
        "run", *TINY, "norm=gn", "batch=8", "accum=2", "epochs=1", out=tmp_path / "c"
    ).record()
    gn_plain = normbench(
        "run", *TINY, "norm=gn", "batch=16", "epochs=1", out=tmp_path / "d"
    ).record()
    # GN is batch-independent: the same SGD batch gives the same training up to float summation
    # order
    assert gn_accum["history"][0]["train_loss"] == pytest.approx(
        gn_plain["history"][0]["train_loss"], rel=1e-4
    )
