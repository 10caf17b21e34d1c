"""Per-norm cost of a ResNet-18 training step (forward + backward + SGD step) relative to BN: median
step time with all models' steps interleaved in one process, and the memory the step needs for its
activations.

Memory, honestly named: `saved_mb` is the size of the distinct tensors autograd saves for the
backward pass (torch.autograd.graph.saved_tensors_hooks, storages counted once, parameters left out)
-- the activation memory a norm adds, measured the same way on any device. On CUDA `peak_mb` is also
reported: the peak of torch.cuda.max_memory_allocated during one step above what was allocated
before it (activations, the temporaries of every kernel, gradients being formed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import build_model
from ..config import compose
from ..fastpath import FastPath, prepare_model
from ..norms import PerDevice
from ..norms.cross_iteration_bn import CrossIterationBatchNorm
from ..norms.mabn import MovingAverageBatchNorm
from ..optim import build_optimizer
from .timing import Timings, interleaved, synchronizer

MAX_OVER_BN = 1.3  # the target for every norm's step on ResNet-18


def fast_forward(model: nn.Module) -> None:
    """Move every MABN layer (simulated devices' too) past its warm-up and fixed-r phases to its
    most expensive one (moving averages both ways, clipped r): the counters are set through
    load_state_dict, exactly as a resumed run continues; the rings keep the statistics of the steps
    already taken. CBN layers skip their burn-in (plain BN): every step compensates its window."""
    for layer in model.modules():
        # a PerDevice layer owns the state its train_layer (a plain attribute) computes with
        mabn = layer.train_layer if isinstance(layer, PerDevice) else layer
        if isinstance(mabn, CrossIterationBatchNorm):  # its cross-iteration path from step 1
            mabn.burnin = 0
        if isinstance(mabn, MovingAverageBatchNorm):
            state = layer.state_dict()
            done = max(mabn.fixed_r_iters, mabn.buffer_size) + 1
            state["iters"] = torch.tensor(done)
            state["backward_iters"] = torch.tensor(done)
            layer.load_state_dict(state)


def synthetic_data(channels: int, image_size: int) -> list[str]:
    """Config overrides for a model on `channels` x `image_size` px inputs (the bench feeds its own
    random tensors; the data set is never loaded)."""
    return [
        "data=synthetic",
        f"data.image_size={image_size}",
        f"data.in_channels={channels}",
        "log.progress=none",
    ]


def build_trainable(
    overrides: list[str], device: torch.device
) -> tuple[nn.Module, FastPath, torch.optim.Optimizer]:
    """(model in train mode, its fast path, SGD at lr 0.01) for a config; seed 0 before building, so
    every model of the same config starts from the same weights."""
    cfg = compose(overrides)
    torch.manual_seed(0)
    model, norm_layer = build_model(cfg)
    model.to(device).train()
    path = prepare_model(model, cfg, device)
    return model, path, build_optimizer(model, norm_layer.built, cfg, 0.01)


def make_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: Callable[[], Any],
    accum: int = 1,
) -> Callable[[], None]:
    """One training step as train_epoch takes it: `accum` forwards and backwards of consecutive
    chunks of `x` (each loss divided by `accum`), then one SGD step."""
    micro_batches = list(zip(x.chunk(accum), y.chunk(accum), strict=True))

    def step() -> None:
        for inputs, targets in micro_batches:
            with autocast():
                loss = F.cross_entropy(model(inputs), targets)
            (loss / accum if accum > 1 else loss).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def saved_bytes(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: Callable[[], Any]
) -> int:
    """Bytes of the distinct non-parameter tensors autograd keeps for backward in one training
    forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast():
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def peak_step_bytes(step: Callable[[], None], device: torch.device) -> int | None:
    """CUDA: peak allocated during one step above the allocation before it; None elsewhere."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def bench_norms(
    device: torch.device,
    names: list[str],
    batch: int,
    image_size: int,
    repeats: int,
    fast: list[str],
    warmup: int = 2,
) -> dict[str, Any]:
    """Every norm of `names` (BN first, the reference) on ResNet-18 (3-channel `image_size` px
    input, small stem, 10 classes) at `batch` images; `fast` are fast-path overrides (amp=true,
    channels_last=true, ...)."""
    names = ["bn"] + [name for name in names if name != "bn"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    steps, models, memory, failed = build_steps(names, x, y, image_size, fast, device)

    def to_expensive_phase() -> None:
        for model in models.values():
            fast_forward(model)

    sync = synchronizer(device)
    times = interleaved(steps, repeats, sync, warmup=warmup, after_warmup=to_expensive_phase)
    peaks = {name: peak_step_bytes(step, device) for name, step in steps.items()}
    rows = []
    for name in names:
        if name in failed:
            rows.append({"norm": name, "error": failed[name], "pass": False})
        else:
            rows.append(norm_row(name, times, memory, peaks, device))
    return {
        "model": f"ResNet-18 (small stem), 3x{image_size}x{image_size} input, batch {batch}",
        "fast_path": fast,
        "repeats": repeats,
        "target_over_bn": MAX_OVER_BN,
        "judged_on": "cpu" if device.type == "cpu" else "wall",
        "rows": rows,
    }


def build_steps(
    names: list[str],
    x: torch.Tensor,
    y: torch.Tensor,
    image_size: int,
    fast: list[str],
    device: torch.device,
) -> tuple[dict[str, Callable[[], None]], dict[str, nn.Module], dict[str, int], dict[str, str]]:
    """(steps, models, saved bytes, failures) by norm name: each norm's ResNet-18 with its training
    step run once; a norm whose first step raises (BN excepted) is reported in failures."""
    steps, models, memory = {}, {}, {}
    failed: dict[str, str] = {}
    for name in names:
        overrides = ["backbone=resnet18", f"norm={name}", *synthetic_data(3, image_size), *fast]
        model, path, optimizer = build_trainable(overrides, device)
        step = make_step(path.model, optimizer, x, y, path.autocast)
        # the first step compiles under compile=...: a norm the fast path cannot run is reported,
        # not fatal
        try:
            memory[name] = saved_bytes(model, x, y, path.autocast)  # eager, before any timing
            step()
        except Exception as error:
            if name == "bn":
                raise
            failed[name] = error_line(error)
            continue
        models[name], steps[name] = model, step
    return steps, models, memory, failed


def error_line(error: Exception) -> str:
    """An exception as one short line for a failed row: its type and its message's first line."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160] if text else ''}"


def norm_row(
    name: str,
    times: Timings,
    memory: dict[str, int],
    peaks: dict[str, int | None],
    device: torch.device,
) -> dict[str, Any]:
    """One norm's medians, memory and ratios to BN (the first row)."""
    med, cpu = times.median("wall"), times.median("cpu")
    # see timing: CPU time is immune to other processes' load
    judged = cpu if device.type == "cpu" else med
    ratio = judged[name] / judged["bn"]
    peak, peak_bn = peaks[name], peaks["bn"]
    return {
        "norm": name,
        "ms_per_step": med[name] * 1e3,
        "cpu_ms_per_step": cpu[name] * 1e3,
        "all_ms": [t * 1e3 for t in times.wall[name]],
        "over_bn": ratio,
        "over_bn_wall": med[name] / med["bn"],
        "over_bn_cpu": cpu[name] / cpu["bn"],
        "pass": ratio <= MAX_OVER_BN if name != "bn" else None,
        "saved_mb": memory[name] / 2**20,
        "saved_over_bn": memory[name] / memory["bn"],
        "peak_mb": None if peak is None else peak / 2**20,
        "peak_over_bn": None if peak is None or peak_bn is None else peak / peak_bn,
    }
