"""The fast-path keys amp / channels_last / compile (normbench.fastpath): they run, are recorded,
name their own run, keep checkpoints loadable into a plain model, and bad values exit 2."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from normbench.backbones import build_model
from normbench.data import load_data
from normbench.fastpath import prepare_model
from normbench.norms import NORMS
from normbench.runs import load_checkpoint
from normbench.train import evaluate


def test_amp_and_channels_last_run_are_recorded_and_change_the_run_key(normbench, tmp_path):
    args = [arg for arg in TINY if not arg.startswith("log.progress")] + ["log.progress=plain"]
    plain = normbench("run", *args, out=tmp_path / "plain")
    fast = normbench("run", *args, "amp=true", "channels_last=true", out=tmp_path / "fast")
    assert plain.code == 0 and fast.code == 0, fast.err
    assert "fast path: cpu autocast to bf16, channels_last" in fast.out + fast.err
    assert "fast path" not in plain.out + plain.err
    record, reference = fast.record(), plain.record()
    assert record["status"] == "completed"
    assert (
        record["config"]["amp"],
        record["config"]["channels_last"],
        record["config"]["compile"],
    ) == (True, True, False)
    # part of the run's identity: the only non-default settings beyond the plain run's
    assert {
        k: v for k, v in record["non_default"].items() if k not in reference["non_default"]
    } == {"amp": True, "channels_last": True}
    assert record["run_key"] != reference["run_key"]
    # only the hash differs
    assert record["run_key"].split("-")[:-1] == reference["run_key"].split("-")[:-1]
    # bf16 matmuls: a slightly different loss, not a different training
    assert record["metrics"]["train_loss"] != reference["metrics"]["train_loss"]
    assert record["metrics"]["train_loss"] == pytest.approx(
        reference["metrics"]["train_loss"], rel=0.05
    )

    saved = load_checkpoint(next((fast.root / "runs").iterdir()) / "checkpoint.pt")
    plain_saved = load_checkpoint(next((plain.root / "runs").iterdir()) / "checkpoint.pt")
    # same names, loadable into a plain model
    assert list(saved["model"]) == list(plain_saved["model"])
    assert saved["model"]["conv1.weight"].is_contiguous(memory_format=torch.channels_last)
    assert plain_saved["model"]["conv1.weight"].is_contiguous()


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_every_norm_trains_under_bf16_autocast_and_channels_last(normbench, norm):
    result = normbench(
        "run",
        *TINY,
        f"norm={norm}",
        "batch=4",
        "data.train_size=32",
        "epochs=1",
        "amp=true",
        "channels_last=true",
    )
    assert result.code == 0, result.err
    record = result.record()
    assert (
        record["status"] == "completed"
        and record["metrics"]["train_loss"] == record["metrics"]["train_loss"]
    )


def test_autocast_gives_bf16_logits_and_a_float32_loss(cfg_of):
    cfg = cfg_of([*TINY, "amp=true"])
    model, _ = build_model(cfg)
    fast = prepare_model(model, cfg, torch.device("cpu"))
    assert fast.model is model  # nothing compiled: the same module
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    with fast.autocast():
        logits = fast.model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert model(x).dtype == torch.float32  # outside the context: fp32


@pytest.mark.parametrize(
    "override,message",
    [
        ("amp=1", "amp must be true or false, got 1"),
        ("channels_last=maybe", "channels_last must be true or false, got 'maybe'"),
        (
            "compile=fast",
            "compile must be false, true, reduce-overhead or max-autotune, got 'fast'",
        ),
        ("compile=2", "compile must be false, true, reduce-overhead or max-autotune, got 2"),
    ],
)
def test_bad_fast_path_values_exit_2(normbench, override, message):
    result = normbench("run", *TINY, override)
    assert result.code == 2 and result.err.startswith("error: ") and message in result.err
    assert not (result.root / "runs").exists()


@pytest.mark.slow
def test_compiled_run_saves_a_plain_checkpoint(normbench, cfg_of):
    """torch.compile on CPU takes ~30-60 s here (inductor builds C++ kernels for training and for
    eval)."""
    args = [arg for arg in TINY if not arg.startswith("log.progress")] + [
        "log.progress=plain",
        "epochs=1",
        "compile=true",
    ]
    result = normbench("run", *args)
    assert result.code == 0, result.err
    assert "torch.compile (mode default" in result.out + result.err
    record = result.record()
    assert record["status"] == "completed" and record["config"]["compile"] is True
    saved = load_checkpoint(next((result.root / "runs").iterdir()) / "checkpoint.pt")
    assert not any(key.startswith("_orig_mod.") for key in saved["model"])
    # the plain model loads it strictly and evaluates to the recorded test metrics (eager vs
    # compiled kernels)
    cfg = cfg_of(args)
    model, _ = build_model(cfg)
    model.load_state_dict(saved["model"])
    test_loss, test_acc = evaluate(model, load_data(cfg.data, torch.device("cpu")).test_batches(64))
    assert test_acc == record["metrics"]["test_acc"]
    assert test_loss == pytest.approx(record["metrics"]["test_loss"], rel=1e-4)
