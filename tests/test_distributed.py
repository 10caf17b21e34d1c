"""Data-parallel runs (normbench.distributed): torchrun with 2 gloo processes on the CPU against the
single-process runs they must equal, plus the sharding, rank and SyncBN rules checked in this
process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from test_mnist_cifar_imagefolder import folder_config, write_image_folder

from normbench import distributed
from normbench.data import Shard, load_data, tensor_batches
from normbench.data.augment import Augment
from normbench.errors import UserError
from normbench.runs import run_key
from normbench.validate import validate

REPO = Path(__file__).resolve().parents[1]
# 8 SGD steps of 32 images per epoch: small enough for two torchrun processes on 2 CPU cores
SMALL = [
    "data=synthetic",
    "data.train_size=256",
    "data.test_size=64",
    "epochs=2",
    "lr=1.6",
    "log.every_steps=3",
    "log.progress=plain",
]


def torchrun(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m normbench run ...` (a free port, gloo on the
    CPU)."""
    return torchrun_two("-m", "normbench", "run", *overrides, f"out={out}")


def torchrun_two(*program: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 PROGRAM...` in the repo, one thread per process;
    asserts that it succeeded."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores: no oversubscription
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *program,
    ]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def only_run_dir(out: Path) -> Path:
    dirs = list((out / "runs").iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def saved_model(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


def single_process(normbench, out: Path, *overrides: str) -> Path:
    """The comparison run in this process, one torch thread like each torchrun process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = normbench("run", *overrides, out=out)
    finally:
        torch.set_num_threads(threads)
    assert result.code == 0, result.err
    return only_run_dir(out)


@pytest.mark.slow
def test_two_processes_equal_accum_two_in_one_process(normbench, tmp_path):
    """2 processes x batch 16 (norm=bn) == one process with accum=2 x batch 16: the same SGD batch
    of 32, the same 16 images behind each per-device BN statistic, DDP's gradient mean == accum's
    mean. Parameters are compared with atol 1e-6 (measured: bitwise equal; halving is exact in float
    and gloo adds two numbers either way). BN running statistics are NOT compared for equality: rank
    0 (whose buffers are saved) updated them on its own micro-batches only, half as often as the
    accum run, which updates them on every micro-batch."""
    out = tmp_path / "ddp"
    done = torchrun(out, *SMALL, "batch=16")
    run_dir = only_run_dir(out)
    assert re.fullmatch(r"synthetic-lenet-bn-b16x1-s0-w2-[0-9a-f]{8}", run_dir.name), run_dir.name
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "completed"
    assert record["config"]["batch"] == 16 and record["config"]["accum"] == 1
    setup = record["setup"]
    assert (
        setup["world_size"],
        setup["sgd_batch"],
        setup["norm_batch"],
        setup["steps_per_epoch"],
    ) == (2, 32, 16, 8)
    assert setup["lr_scaled"] == pytest.approx(1.6 * 32 / 256) and setup["sync_bn"] is False
    assert len(record["history"]) == 2 and (run_dir / "config.yaml").is_file()
    # only rank 0 wrote and printed: TensorBoard files of one process, one report line, one line per
    # epoch
    writers = {path.name.split(".")[-2] for path in (run_dir / "tb").iterdir()}
    assert len(writers) == 1, writers
    assert done.stdout.count("completed:") == 1 and done.stdout.count("epoch 2/2") == 1, done.stdout
    assert not list(run_dir.glob(".*.tmp"))

    single = single_process(normbench, tmp_path / "one", *SMALL, "batch=16", "accum=2")
    reference = json.loads((single / "record.json").read_text())
    assert reference["setup"]["sgd_batch"] == 32 and reference["setup"]["world_size"] == 1
    # train metrics: mean over both ranks
    for ours, theirs in zip(record["history"], reference["history"]):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
        assert ours["train_acc"] == pytest.approx(theirs["train_acc"], abs=1e-9)
    ddp, accum = saved_model(run_dir), saved_model(single)
    for name, value in accum.items():
        if "running_" in name or "num_batches" in name:
            continue
        torch.testing.assert_close(ddp[name], value, rtol=0, atol=1e-6, msg=name)
    # per-device running statistics: rank 0 saw 2 epochs x 8 of the 32 micro-batches, the accum run
    # all 32
    assert (
        int(ddp["norm1.num_batches_tracked"]) == 16
        and int(accum["norm1.num_batches_tracked"]) == 32
    )


@pytest.mark.slow
def test_sync_bn_over_two_processes_equals_bn_on_the_double_batch(normbench, tmp_path):
    """sync_bn=true, 2 processes x batch 16 == BN in one process with batch 32: every BN statistic
    is taken over the same 32 images, running statistics included, so everything is compared. atol
    1e-4: sums over the two processes are added in another order than over one batch (measured max
    difference 5e-6 after 16 steps)."""
    out = tmp_path / "sync"
    torchrun(out, *SMALL, "batch=16", "sync_bn=true")
    run_dir = only_run_dir(out)
    record = json.loads((run_dir / "record.json").read_text())
    setup = record["setup"]
    assert record["status"] == "completed" and setup["sync_bn"] is True
    assert (setup["world_size"], setup["sgd_batch"], setup["norm_batch"]) == (2, 32, 32)
    assert all(
        "SyncBatchNorm" in text and "synchronised over 2 processes" in text
        for text in setup["norm_layers"].values()
    ), setup["norm_layers"]

    single = single_process(normbench, tmp_path / "one", *SMALL, "batch=32")
    reference = json.loads((single / "record.json").read_text())
    for ours, theirs in zip(record["history"], reference["history"]):
        for key in ("train_loss", "test_loss"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4), key
        assert ours["test_error"] == theirs["test_error"]
    synced, bn = saved_model(run_dir), saved_model(single)
    assert synced.keys() == bn.keys()
    for name, value in bn.items():
        torch.testing.assert_close(synced[name], value, rtol=0, atol=1e-4, msg=name)


def test_shards_of_an_epoch_are_the_micro_batches_of_one_process():
    """W=2 processes with accum=2: step k of rank r holds micro-batches (k*W + r)*accum + m of the
    one-process run with accum*W micro-batches per step, augmentation included, and every generator
    ends in the same state."""
    world, accum, batch, steps = 2, 2, 3, 4
    count = steps * accum  # per process
    x = torch.arange(50 * 2 * 6 * 6, dtype=torch.float32).reshape(50, 2, 6, 6)  # 48 used
    y = torch.arange(50)
    augment = Augment(2, True, (0.0, 1.0))
    one = torch.Generator().manual_seed(5)
    reference = list(tensor_batches(x, y, batch, count * world, one, augment))
    for rank in range(world):
        mine = torch.Generator().manual_seed(5)
        shard = list(tensor_batches(x, y, batch, count, mine, augment, Shard(rank, world, accum)))
        assert len(shard) == count
        for step in range(steps):
            for m in range(accum):
                inputs, targets = shard[step * accum + m]
                ref_inputs, ref_targets = reference[(step * world + rank) * accum + m]
                assert torch.equal(targets, ref_targets) and torch.equal(inputs, ref_inputs)
        assert torch.equal(mine.get_state(), one.get_state())
    positions = [Shard(r, world, accum).positions(count, batch) for r in range(world)]
    # disjoint, whole epoch
    assert sorted(torch.cat(positions).tolist()) == list(range(count * world * batch))
    assert positions[1][: accum * batch].tolist() == list(range(accum * batch, 2 * accum * batch))
    with pytest.raises(ValueError, match="whole SGD steps"):
        Shard(0, world, accum).positions(3, batch)


def test_image_folder_shards_match_one_process(tmp_path):
    """The DataLoader path: each process reads only its own images, with the crops the one-process
    run makes."""
    data = load_data(folder_config(write_image_folder(tmp_path / "imgs")))  # 12 training images
    try:
        reference = [x for x, _ in data.train_batches(2, 6, torch.Generator().manual_seed(3))]
        for rank in range(2):
            shard = [
                x
                for x, _ in data.train_batches(
                    2, 3, torch.Generator().manual_seed(3), Shard(rank, 2, 1)
                )
            ]
            assert len(shard) == 3
            for step, inputs in enumerate(shard):
                assert torch.equal(inputs, reference[2 * step + rank])
        # shard reset
        assert len(list(data.train_batches(2, 6, torch.Generator().manual_seed(3)))) == 6
    finally:
        data.close()


def test_rank_and_world_size_come_from_torchrun_environment(cfg_of, monkeypatch):
    cfg = cfg_of(["data=synthetic", "batch=16"])
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert not run_key(cfg, {}).endswith("-w2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (2, 1, False)
    assert run_key(cfg, {}) == "synthetic-lenet-bn-b16x1-s0-w2"
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UserError, match="WORLD_SIZE"):
        distributed.world_size()


def test_off_rank_0_the_session_prints_logs_and_writes_nothing(
    cfg_of, tmp_path, capsys, monkeypatch
):
    """Replaces the old contract that atomic_write_bytes wrote nothing on rank != 0 (file writes no
    longer ask the rank, issue 12): the Session's writer and progress are no-ops off rank 0,
    on_main computes only on rank 0, and a rank-1 process's run writes no file at all."""
    from normbench import runner

    rank1 = distributed.Session(torch.device("cpu"), rank=1, world_size=1)
    assert not rank1.is_main and rank1.on_main(lambda: 7) == 7  # one process: computes
    writer = rank1.writer(tmp_path / "tb")
    writer.add_scalar("train/loss", 1.0, 1), writer.close()
    progress = rank1.progress("plain", 1, 8)
    progress.line("a line"), progress.notice("a notice"), progress.close()
    assert capsys.readouterr() == ("", "") and not (tmp_path / "tb").exists()

    @contextmanager
    def rank1_session(device, devices=1):
        yield distributed.Session(device, rank=1, world_size=1, devices=devices)

    monkeypatch.setattr(distributed, "session", rank1_session)
    out = tmp_path / "out"
    overrides = [*(o for o in SMALL if not o.startswith("epochs=")), "epochs=1", f"out={out}"]
    cfg, choices = cfg_of(overrides, with_choices=True)
    # trains, evaluates, checkpoints and records, claims nothing: rank 1 writes none of it
    result = runner.run(cfg, choices, overrides)
    assert result.record.status == "completed" and len(result.record.history) == 1
    assert not out.exists() and capsys.readouterr() == ("", "")


def test_sync_bn_refuses_norms_it_cannot_synchronise(cfg_of, normbench):
    for norm in ("brn", "gbn", "mabn", "evonorm_b0"):
        with pytest.raises(UserError, match=f"sync_bn=true cannot synchronise norm={norm}"):
            validate(cfg_of(["data=synthetic", f"norm={norm}", "sync_bn=true"]))
    with pytest.raises(UserError, match="sync_bn must be true or false"):
        validate(cfg_of(["data=synthetic", "sync_bn=3"]))
    result = normbench("run", "data=synthetic", "norm=mabn", "sync_bn=true")
    assert result.code == 2 and result.err.count("\n") == 1 and "norm=mabn" in result.err, (
        result.err
    )


def test_sync_bn_in_one_process_is_exactly_bn(normbench, tmp_path):
    from conftest import TINY

    plain = normbench("run", *TINY, out=tmp_path / "bn")
    synced = normbench("run", *TINY, "sync_bn=true", out=tmp_path / "sync")
    assert plain.code == 0 and synced.code == 0, synced.err
    bn, sync = plain.record(), synced.record()
    assert [h["train_loss"] for h in sync["history"]] == [h["train_loss"] for h in bn["history"]]
    assert sync["metrics"]["test_error"] == bn["metrics"]["test_error"]
    assert sync["setup"]["sync_bn"] is True and "one process" in sync["setup"]["sync_bn_note"]
    assert all(
        "not synchronised, same as BN" in text for text in sync["setup"]["norm_layers"].values()
    )
    assert bn["setup"]["sync_bn"] is False and "sync_bn_note" not in bn["setup"]


def test_sync_bn_converts_only_bn_and_says_when_it_changes_nothing(cfg_of):
    from normbench.backbones import build_model
    from normbench.facts import data_parallel_facts
    from normbench.norms import SyncBatchNorm
    from normbench.norms.sync_batch_norm import convert_sync_bn

    cfg = cfg_of(["data=synthetic", "sync_bn=true"])
    model, norm_layer = build_model(cfg)
    before = list(norm_layer.built)
    converted = convert_sync_bn(model, norm_layer.built)
    assert norm_layer.built == before, "the norm's own list is left as it is"
    assert sum(new is not old for new, old in zip(converted, before)) == 4 == len(before)
    assert all(isinstance(m, SyncBatchNorm) for m in converted)
    # LeNet: two conv layers, two fully connected
    assert [m.dim for m in converted] == [2, 2, 1, 1]
    assert [id(m) for m in converted] == [
        id(m) for m in model.modules() if isinstance(m, SyncBatchNorm)
    ]
    gn = cfg_of(["data=synthetic", "norm=gn", "sync_bn=true"])
    model, norm_layer = build_model(gn)
    converted = convert_sync_bn(model, norm_layer.built)
    assert sum(new is not old for new, old in zip(converted, norm_layer.built)) == 0
    assert "uses no batch statistics" in data_parallel_facts(model, gn, 1)["sync_bn_note"]


def test_train_epoch_stops_when_any_process_went_non_finite():
    """train_epoch reads the loss through `average` (the mean over processes): another process's NaN
    makes this one stop at the same step although its own loss is finite, so no process is left
    waiting in DDP."""
    from normbench.train import train_epoch

    def epoch(average):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        batches = [
            (torch.randn(8, 4, generator=torch.Generator().manual_seed(i)), torch.arange(8) % 3)
            for i in range(12)
        ]
        return train_epoch(model, optimizer, lambda step: 0.1, 0, batches, 6, 2, 2, average=average)

    alone = epoch(None)
    assert alone.finite and alone.steps == 6
    # two processes that saw the same: the same numbers
    same = epoch(lambda sums: (sums + sums) / 2)
    assert (
        same.finite and same.loss == pytest.approx(alone.loss, rel=1e-6) and same.acc == alone.acc
    )
    other_nan = epoch(lambda sums: (sums + torch.tensor([float("nan"), 0.0])) / 2)
    assert not other_nan.finite and other_nan.steps == 2  # the first read, after log_every=2 steps
