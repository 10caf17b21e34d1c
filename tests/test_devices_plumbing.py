"""Simulated devices around the model (issue 13): the data order of `devices`, the run key and
`sgd_batch`, the plan, the record, the presets, and old records that predate the keys."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import TINY
from test_mnist_cifar_imagefolder import folder_config, write_image_folder

from normbench import distributed
from normbench.config import compose
from normbench.data import Shard, load_data, tensor_batches
from normbench.data.augment import Augment
from normbench.runner import plan_run
from normbench.runs import identity_changes, resolve_devices, run_key
from normbench.study.tables import build_table

# ---------------------------------------------------------------- data order


def device_positions(shard: Shard, count: int, batch: int) -> torch.Tensor:
    """(count, devices, batch): the positions of each simulated device in each micro-batch (whose
    image i * devices + d is device d's i-th)."""
    return shard.positions(count, batch).view(count, batch, shard.devices).transpose(1, 2)


def interleave(parts: list[torch.Tensor]) -> torch.Tensor:
    """One micro-batch from the devices' parts: image i * len(parts) + d is parts[d][i]."""
    return torch.stack(parts, dim=1).flatten(0, 1)


@pytest.mark.parametrize("world, devices", [(2, 2), (1, 4)])
@pytest.mark.parametrize("accum", [1, 2])
def test_each_simulated_device_takes_the_positions_of_its_global_process(world, devices, accum):
    """Device d of process r with `devices` per process = process r * devices + d of a run of
    world * devices processes with one device each, micro-batch by micro-batch."""
    batch, count = 3, 4 * accum
    processes = world * devices
    for rank in range(world):
        ours = device_positions(Shard(rank, world, accum, devices), count, batch)
        for d in range(devices):
            theirs = Shard(rank * devices + d, processes, accum).positions(count, batch)
            assert torch.equal(ours[:, d].reshape(-1), theirs), (rank, d)
    everything = torch.cat(
        [Shard(r, world, accum, devices).positions(count, batch) for r in range(world)]
    )
    assert sorted(everything.tolist()) == list(range(count * processes * batch))


def test_one_device_keeps_the_positions_of_before():
    """devices=1 (the default) is the old Shard: chunks of accum * batch, rank after rank; with
    devices, each device's chunk is spread over the step's micro-batches, devices interleaved."""
    assert Shard(1, 2, 2).positions(4, 2).tolist() == [4, 5, 6, 7, 12, 13, 14, 15]
    assert torch.equal(Shard(1, 2, 2, 1).positions(4, 2), Shard(1, 2, 2).positions(4, 2))
    # one process, accum=2, 2 devices: micro-batch a holds step-chunk a of devices 0 and 1
    # (positions 0, 1 and 4, 5 for a = 0), interleaved image by image
    assert Shard(0, 1, 2, 2).positions(2, 2).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def small_images() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(40 * 2 * 6 * 6, dtype=torch.float32).reshape(40, 2, 6, 6)
    return x, torch.arange(40)


@pytest.mark.parametrize("accum", [1, 2])
def test_one_process_with_two_devices_trains_on_the_two_ranks_micro_batches(accum):
    """tensor_batches: micro-batch j of devices=2 interleaves rank 0's and rank 1's micro-batch j of
    a 2-process run (images, targets, augmentation), and the generators move alike."""
    x, y = small_images()
    augment = Augment(2, True, (0.0, 1.0))
    batch, count = 3, 3 * accum
    one = torch.Generator().manual_seed(7)
    ours = list(tensor_batches(x, y, batch, count, one, augment, Shard(0, 1, accum, 2)))
    ranks = []
    for rank in range(2):
        generator = torch.Generator().manual_seed(7)
        ranks.append(
            list(tensor_batches(x, y, batch, count, generator, augment, Shard(rank, 2, accum)))
        )
        assert torch.equal(generator.get_state(), one.get_state())
    assert len(ours) == count
    for j, (inputs, targets) in enumerate(ours):
        assert inputs.shape[0] == 2 * batch
        assert torch.equal(inputs, interleave([ranks[0][j][0], ranks[1][j][0]]))
        assert torch.equal(targets, interleave([ranks[0][j][1], ranks[1][j][1]]))


def test_devices_regroup_the_micro_batches_of_accum():
    """With accum=1, devices=W micro-batch j interleaves micro-batches W*j .. W*j + W-1 of accum=W
    in one process (what makes devices=W and accum=W equal for batch-independent norms)."""
    x, y = small_images()
    batch, devices, steps = 2, 4, 3
    shard = Shard(0, 1, 1, devices)
    ours = list(tensor_batches(x, y, batch, steps, torch.Generator().manual_seed(1), None, shard))
    plain = list(tensor_batches(x, y, batch, steps * devices, torch.Generator().manual_seed(1)))
    for j, (inputs, _) in enumerate(ours):
        assert torch.equal(
            inputs, interleave([b for b, _ in plain[devices * j : devices * (j + 1)]])
        )


def test_image_folder_gives_one_micro_batch_of_all_devices(tmp_path):
    """The DataLoader path: devices=2 in one process reads each rank's images, with its crops."""
    data = load_data(folder_config(write_image_folder(tmp_path / "imgs")))  # 12 training images
    try:
        ours = [
            x
            for x, _ in data.train_batches(
                2, 3, torch.Generator().manual_seed(3), Shard(0, 1, 1, 2)
            )
        ]
        ranks = [
            [
                x
                for x, _ in data.train_batches(
                    2, 3, torch.Generator().manual_seed(3), Shard(r, 2, 1)
                )
            ]
            for r in range(2)
        ]
        assert len(ours) == 3
        for j, inputs in enumerate(ours):
            assert torch.equal(inputs, interleave([ranks[0][j], ranks[1][j]]))
    finally:
        data.close()


def test_the_session_shards_only_when_it_must():
    """One process with one device: the data's own order (shard=None, today's path); with devices
    it takes a Shard of one process."""
    calls = []

    class Recorder:
        def train_batches(self, batch, count, generator, shard=None):
            calls.append(shard)
            return iter(())

    generator = torch.Generator()
    distributed.Session(torch.device("cpu")).train_batches(Recorder(), 2, 4, 2, generator)
    distributed.Session(torch.device("cpu"), devices=3).train_batches(
        Recorder(), 2, 4, 2, generator
    )
    assert calls == [None, Shard(0, 1, 2, 3)]


# ---------------------------------------------------------------- keys, sgd_batch and the plan

SYNTHETIC = ["data=synthetic", "data.train_size=256", "data.test_size=32", "log.progress=none"]


def plan(*overrides: str):
    cfg, choices = compose([*SYNTHETIC, *overrides], with_choices=True)
    return plan_run(cfg, choices, list(overrides))


def test_run_key_names_devices_only_when_there_are_several():
    assert "-lenet-bn-b2d8x1-s0" in run_key(compose([*SYNTHETIC, "batch=2", "devices=8"]), {})
    assert "-lenet-bn-b2x8-s0" in run_key(compose([*SYNTHETIC, "batch=2", "accum=8"]), {})
    assert "-lenet-bn-b2d4x2-s0" in run_key(
        compose([*SYNTHETIC, "batch=2", "devices=4", "accum=2"]), {}
    )


def test_sgd_batch_is_the_run_with_the_devices_it_implies():
    by_devices = plan("batch=2", "devices=16")
    for overrides in (["batch=2", "sgd_batch=32"], ["batch=2", "devices=16", "sgd_batch=32"]):
        by_sgd_batch = plan(*overrides)
        assert (by_sgd_batch.key, by_sgd_batch.identity) == (by_devices.key, by_devices.identity)
        assert by_sgd_batch.cfg.devices == 16 and by_sgd_batch.cfg.sgd_batch is None
        assert by_sgd_batch.overrides == overrides  # the record shows what was typed
    assert "b2d16x1" in by_devices.key and by_devices.sgd_batch == 32
    assert by_devices.lr == pytest.approx(0.1 * 32 / 256)  # linear scaling by the SGD batch


def test_plan_counts_devices_accum_and_processes(monkeypatch):
    assert plan("batch=4", "devices=2", "accum=3").sgd_batch == 24
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    two = plan("batch=4", "devices=2", "accum=3")
    assert two.sgd_batch == 48 and two.key.split("-")[3:6] == ["b4d2x3", "s0", "w2"]
    assert plan("batch=2", "sgd_batch=32").cfg.devices == 8  # 32 / (2 * 1 * 2 processes)


def test_resolve_devices_leaves_what_does_not_resolve_to_validation():
    cfg = compose([*SYNTHETIC, "batch=2", "sgd_batch=32"])
    resolved = resolve_devices(cfg, 4)
    assert (resolved.devices, resolved.sgd_batch) == (4, None) and cfg.sgd_batch == 32
    for bad in (["sgd_batch=30", "batch=4"], ["sgd_batch=32", "devices=4"], ["sgd_batch=abc"]):
        unresolved = compose([*SYNTHETIC, "batch=2", *bad])
        assert resolve_devices(unresolved, 1) is unresolved
    plain = compose(SYNTHETIC)
    assert resolve_devices(plain, 1) is plain


def test_a_checkpoint_from_before_devices_still_resumes():
    ours = plan("batch=2").identity
    old = {k: v for k, v in ours.items() if k not in ("devices", "sgd_batch", "eval.running_stats")}
    assert identity_changes(old, ours) == []
    assert identity_changes(old, plan("batch=2", "devices=2").identity) == ["devices"]
    assert identity_changes(dict(old, lr=0.5), ours) == ["lr"]


# ---------------------------------------------------------------- the record of a real run


def test_record_states_devices_and_what_the_norm_saw(normbench, tmp_path):
    result = normbench(
        "run", *TINY, "epochs=1", "batch=8", "devices=2", "log.progress=plain", out=tmp_path / "bn"
    )
    assert result.code == 0, result.err
    record = result.record()
    assert "-b8d2x1-s0" in record["run_key"]
    setup = record["setup"]
    assert {k: setup[k] for k in ("world_size", "devices", "accum", "sgd_batch", "norm_batch")} == {
        "world_size": 1,
        "devices": 2,
        "accum": 1,
        "sgd_batch": 16,
        "norm_batch": 8,
    }
    assert setup["steps_per_epoch"] == 128 // 16
    assert "batch 8 x 2 devices x accum 1 (SGD batch 16," in result.out + result.err
    gn = normbench("run", *TINY, "epochs=1", "norm=gn", "devices=2", out=tmp_path / "gn").record()
    assert gn["setup"]["norm_batch"] is None and gn["setup"]["sgd_batch"] == 32
    synced = normbench(
        "run", *TINY, "epochs=1", "batch=8", "devices=2", "sync_bn=true", out=tmp_path / "sync"
    ).record()
    assert synced["setup"]["norm_batch"] == 16 and synced["setup"]["sync_bn"] is True


def test_old_records_without_devices_share_a_table_with_new_ones(normbench, tmp_path):
    """A record written before `devices` existed reads as devices=1: it averages with a new run
    of the same config, and --rows devices places it."""
    root = tmp_path / "runs"
    new = normbench("run", *TINY, "epochs=1", "seed=0", out=tmp_path).record()
    old = copy.deepcopy(new)
    for key in ("devices", "sgd_batch", "eval"):
        del old["config"][key]
    old["config"]["seed"] = 1
    for key in ("devices", "accum"):
        del old["setup"][key]
    (root / "old").mkdir()
    (root / "old" / "record.json").write_text(json.dumps(old))
    table = build_table(root)
    assert table.cell("bn", 16).n == 2
    by_devices = build_table(root, rows="devices", cols="seed")
    assert by_devices.rows == [1] and by_devices.cell(1, 1).n == 1


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", ["gn_paper", "quick"])
def test_presets_simulate_eight_devices_in_one_forward(preset):
    cfg = compose([f"experiment={preset}"])
    assert (cfg.devices, cfg.accum, cfg.sgd_batch) == (8, 1, None)
    assert "-b2d8x1-s0" in run_key(compose([f"experiment={preset}", "batch=2"]), {})
