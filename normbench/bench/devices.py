"""Simulated devices: images/s of one training step (forward + backward + SGD step) on the same
`b * W` images three ways, all steps interleaved in one process:

- devices: `batch=b devices=W`, one forward of b*W images, the batch-dependent norms computing
  their statistics per simulated device's b images (what W data-parallel devices with b images
  each do);
- plain: `batch=b*W devices=1`, one forward, one set of statistics: the arithmetic limit;
- accum: `batch=b accum=W`, W forwards and backwards of b images one after another, then one step
  (the way to give a norm b images per device before `devices`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .norms import build_trainable, error_line, fast_forward, make_step, synthetic_data
from .timing import Timings, interleaved, synchronizer

DEVICE_NORMS = ("bn", "gn", "mabn")  # the norms: two batch-dependent, one not
SHAPES = ((2, 8), (4, 4))  # (b images per device, W devices)
# backbone config name -> (input channels, px): LeNet on Fashion-MNIST-sized input as in the
# gn_paper preset, ResNet-20 on CIFAR-sized input
BACKBONES = {"lenet_relu": (1, 28), "resnet20": (3, 32)}
SETUPS = ("devices", "plain", "accum")
# the targets: devices >= 0.8x plain everywhere; >= 3x accum at b=2, W=8 for bn and mabn
MIN_OVER_PLAIN = 0.8
MIN_OVER_ACCUM = 3.0
ACCUM_TARGET_SHAPE = (2, 8)
ACCUM_TARGET_NORMS = ("bn", "mabn")


@dataclass(frozen=True)
class Cell:
    """One row of a backbone's table: a norm at b images per device on W devices."""

    norm: str
    batch: int
    devices: int

    @property
    def label(self) -> str:
        return f"{self.norm} b{self.batch} W{self.devices}"


def setup_overrides(setup: str, batch: int, devices: int) -> list[str]:
    """The config overrides of one setup for b=`batch`, W=`devices` (accum is done by the step:
    the model is the plain batch-b one)."""
    if setup == "devices":
        return [f"batch={batch}", f"devices={devices}"]
    if setup == "plain":
        return [f"batch={batch * devices}"]
    return [f"batch={batch}", f"accum={devices}"]


def build_cell(
    backbone: str,
    cell: Cell,
    x: torch.Tensor,
    y: torch.Tensor,
    fast: list[str],
    device: torch.device,
) -> tuple[dict[str, Callable[[], None]], dict[str, nn.Module]]:
    """(step, model) per setup of one cell, each step run once (a first compile happens here).

    Args:
        x, y: the b*W images and labels every setup trains on per step.
    """
    channels, size = BACKBONES[backbone]
    steps, models = {}, {}
    for setup in SETUPS:
        overrides = [f"backbone={backbone}", f"norm={cell.norm}", *synthetic_data(channels, size)]
        model, path, optimizer = build_trainable(
            overrides + setup_overrides(setup, cell.batch, cell.devices) + fast, device
        )
        accum = cell.devices if setup == "accum" else 1
        steps[setup] = make_step(path.model, optimizer, x, y, path.autocast, accum)
        steps[setup]()
        models[setup] = model
    return steps, models


def bench_devices(
    device: torch.device,
    backbones: list[str],
    norms: list[str],
    shapes: list[tuple[int, int]],
    repeats: int,
    fast: list[str],
    warmup: int = 1,
) -> dict[str, Any]:
    """Images/s of the three setups for every backbone x norm x (b, W), each backbone's steps
    interleaved; MABN is moved past its warm-up after the warm-up rounds (each step has run once
    more, when it was built), so its steady state is what is timed."""
    tables = []
    for backbone in backbones:
        tables.append(bench_backbone(device, backbone, norms, shapes, repeats, fast, warmup))
    return {
        "setups": list(SETUPS),
        "fast_path": fast,
        "repeats": repeats,
        "target_devices_over_plain": MIN_OVER_PLAIN,
        "target_devices_over_accum": MIN_OVER_ACCUM,
        "accum_target_at": {"batch": ACCUM_TARGET_SHAPE[0], "devices": ACCUM_TARGET_SHAPE[1]},
        "accum_target_norms": list(ACCUM_TARGET_NORMS),
        "judged_on": "cpu" if device.type == "cpu" else "wall",
        "backbones": tables,
    }


def bench_backbone(
    device: torch.device,
    backbone: str,
    norms: list[str],
    shapes: list[tuple[int, int]],
    repeats: int,
    fast: list[str],
    warmup: int,
) -> dict[str, Any]:
    """One backbone's table: every cell's three setups timed in one interleaved loop."""
    channels, size = BACKBONES[backbone]
    gen = torch.Generator().manual_seed(0)
    calls: dict[str, Callable[[], None]] = {}
    models: list[nn.Module] = []
    failed: dict[Cell, str] = {}
    cells = [Cell(norm, b, w) for norm in norms for b, w in shapes]
    for cell in cells:
        images = cell.batch * cell.devices
        x = torch.randn(images, channels, size, size, generator=gen).to(device)
        y = torch.randint(0, 10, (images,), generator=gen).to(device)
        # a cell the fast path cannot run is reported, not fatal (as in the norms section)
        try:
            steps, built = build_cell(backbone, cell, x, y, fast, device)
        except Exception as error:
            failed[cell] = error_line(error)
            continue
        calls.update({f"{cell.label} {setup}": step for setup, step in steps.items()})
        models.extend(built.values())

    def to_steady_state() -> None:
        for model in models:
            fast_forward(model)

    times = (
        interleaved(
            calls, repeats, synchronizer(device), warmup=warmup, after_warmup=to_steady_state
        )
        if calls
        else Timings()
    )
    rows = [
        {"norm": c.norm, "batch": c.batch, "devices": c.devices, "error": failed[c], "pass": False}
        if c in failed
        else cell_row(c, times, device)
        for c in cells
    ]
    return {"backbone": backbone, "input": f"{channels}x{size}x{size}", "rows": rows}


def cell_row(cell: Cell, times: Timings, device: torch.device) -> dict[str, Any]:
    """One cell's images/s per setup (wall and process CPU time) and its ratios with their
    targets, judged on CPU time on the CPU (see timing) and on wall time elsewhere."""
    images = cell.batch * cell.devices
    wall, cpu = times.median("wall"), times.median("cpu")
    per_s = {setup: images / wall[f"{cell.label} {setup}"] for setup in SETUPS}
    cpu_per_s = {setup: images / cpu[f"{cell.label} {setup}"] for setup in SETUPS}
    judged = cpu_per_s if device.type == "cpu" else per_s
    over_plain = judged["devices"] / judged["plain"]
    over_accum = judged["devices"] / judged["accum"]
    accum_target = (
        cell.norm in ACCUM_TARGET_NORMS and (cell.batch, cell.devices) == ACCUM_TARGET_SHAPE
    )
    return {
        "norm": cell.norm,
        "batch": cell.batch,
        "devices": cell.devices,
        "images_per_step": images,
        "images_per_s": per_s,
        "cpu_images_per_s": cpu_per_s,
        "all_ms": {s: [t * 1e3 for t in times.wall[f"{cell.label} {s}"]] for s in SETUPS},
        "devices_over_plain": over_plain,
        "devices_over_accum": over_accum,
        "devices_over_plain_wall": per_s["devices"] / per_s["plain"],
        "devices_over_accum_wall": per_s["devices"] / per_s["accum"],
        "pass_over_plain": over_plain >= MIN_OVER_PLAIN,
        "pass_over_accum": over_accum >= MIN_OVER_ACCUM if accum_target else None,
    }
