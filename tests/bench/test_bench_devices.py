"""The devices section of `normbench bench`: its three setups really differ as named (per-device
norms on one forward of b*W images, one plain forward, W accumulated forwards) on the same images,
MABN is timed past its warm-up, and `--only devices` runs it alone. No timing assertions."""

from __future__ import annotations

import json

import torch
from torch import nn

from normbench.bench.devices import Cell, bench_devices, build_cell
from normbench.bench.norms import fast_forward
from normbench.bench.report import print_devices
from normbench.norms import PerDevice


def record_forwards(model: nn.Module, layer_type: type) -> tuple[list[torch.Tensor], list[int]]:
    """(the model's inputs, the batch size of every call of a `layer_type` layer), filled by
    hooks."""
    inputs: list[torch.Tensor] = []
    norm_batches: list[int] = []
    model.register_forward_pre_hook(lambda _, args: inputs.append(args[0].detach().clone()))
    for layer in model.modules():
        if isinstance(layer, layer_type):
            layer.register_forward_pre_hook(lambda _, args: norm_batches.append(args[0].shape[0]))
    return inputs, norm_batches


def test_the_three_setups_train_the_same_images_as_named():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 28, 28, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    steps, models = build_cell("lenet_relu", Cell("bn", 2, 4), x, y, [], torch.device("cpu"))
    per_device = [m for m in models["devices"].modules() if isinstance(m, PerDevice)]
    assert len(per_device) == 4 and all(m.devices == 4 for m in per_device)
    for setup in ("plain", "accum"):
        assert not any(isinstance(m, PerDevice) for m in models[setup].modules())
        assert any(isinstance(m, nn.BatchNorm2d) for m in models[setup].modules())
    seen = {
        "devices": record_forwards(models["devices"], PerDevice),
        "plain": record_forwards(models["plain"], nn.BatchNorm2d),
        "accum": record_forwards(models["accum"], nn.BatchNorm2d),
    }
    for step in steps.values():
        step()
    assert [len(t) for t in seen["devices"][0]] == [8] and seen["devices"][1] == [8] * 4
    assert [len(t) for t in seen["plain"][0]] == [8] and seen["plain"][1] == [8] * 2
    assert [len(t) for t in seen["accum"][0]] == [2] * 4 and seen["accum"][1] == [2] * 8
    for inputs, _ in seen.values():
        assert torch.equal(torch.cat(inputs), x)


def test_fast_forward_moves_per_device_mabn_past_its_warm_up():
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    steps, models = build_cell("lenet_relu", Cell("mabn", 2, 4), x, y, [], torch.device("cpu"))
    layers = [m for m in models["devices"].modules() if isinstance(m, PerDevice)]
    assert layers and all(int(layer.iters) == 1 for layer in layers)
    fast_forward(models["devices"])
    steps["devices"]()
    for layer in layers:
        mabn = layer.train_layer
        done = max(mabn.fixed_r_iters, mabn.buffer_size) + 2
        assert int(layer.iters) == int(layer.backward_iters) == done
        assert not mabn.uses_batch_stats(mabn.iteration)  # moving averages: the costly phase


def test_only_devices_runs_the_devices_section_alone(normbench, tmp_path):
    out = tmp_path / "devices.json"
    args = ["--device", "cpu", "--only", "devices", "--norms", "gn", "--repeats", "2"]
    result = normbench("bench", "--quick", *args, "--out", str(out))
    assert result.code == 0, result.err
    assert "== simulated devices" in result.out and "-- lenet_relu" in result.out
    assert "== train step per norm" not in result.out and "== loop overhead" not in result.out
    data = json.loads(out.read_text())
    assert "devices" in data and not {"loop", "norms", "fold"} & set(data)
    tables = data["devices"]["backbones"]
    assert [t["backbone"] for t in tables] == ["lenet_relu", "resnet20"]
    assert [(r["norm"], r["batch"], r["devices"]) for r in tables[1]["rows"]] == [
        ("gn", 2, 8),
        ("gn", 4, 4),
    ]
    for row in (row for table in tables for row in table["rows"]):
        for setup in ("devices", "plain", "accum"):
            assert len(row["all_ms"][setup]) == 2 and all(t > 0 for t in row["all_ms"][setup])
        # gn has no accum target; the plain target applies to every cell
        assert row["pass_over_accum"] is None
        assert row["pass_over_plain"] == (row["devices_over_plain"] >= 0.8)


def test_a_cell_that_cannot_run_is_reported_and_the_others_are_timed(monkeypatch):
    # e.g. a compiler error under --compile: the cell's row says so, the section goes on
    def broken(self, x):
        raise RuntimeError("InductorError: per-device fold\nmore")

    monkeypatch.setattr(PerDevice, "forward", broken)
    cpu = torch.device("cpu")
    result = bench_devices(cpu, ["lenet_relu"], ["bn", "gn"], [(2, 2)], repeats=1, fast=[])
    bn, gn = result["backbones"][0]["rows"]
    assert bn == {
        "norm": "bn",
        "batch": 2,
        "devices": 2,
        "error": "RuntimeError: InductorError: per-device fold",
        "pass": False,
    }
    assert gn["images_per_s"]["devices"] > 0 and "error" not in gn
    lines: list[str] = []
    print_devices(result, lines.append)
    assert any("failed" in line and "per-device fold" in line for line in lines)
    # every cell failing leaves nothing to time, and still no crash
    alone = bench_devices(cpu, ["lenet_relu"], ["bn"], [(2, 2)], repeats=1, fast=[])
    assert "error" in alone["backbones"][0]["rows"][0]
