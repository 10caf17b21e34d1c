"""Trustworthy evaluation of the norms with running statistics (plumbing; no paper): population
("precise") statistics recomputed from training batches with the weights fixed, as in BN's
Algorithm 2 and fvcore's PreciseBN, and evaluation with each chunk's own batch statistics. See
docs/evaluation.md."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import UserError
from .norms import EvoNormB0, GhostBatchNorm, MovingAverageBatchNorm, PerDevice
from .norms._common import RunningStatsNorm
from .norms.ghost_batch_norm import ghost_sizes
from .norms.switchable_norm import SwitchableNorm
from .norms.weight_norm import MeanOnlyBatchNorm

ESTIMATORS = ("population", "paper")  # eval.precise_estimator; the first is the default
# all_gather of one tensor over the processes (torchrun), in rank order
Gather = Callable[[torch.Tensor], list[torch.Tensor]]
# ((inputs, targets), images scored: the leading count, or a bool mask over the chunk)
Chunk = tuple[tuple[torch.Tensor, torch.Tensor], int | torch.Tensor]


@dataclass(frozen=True)
class PreciseStats:
    """What precise_statistics found: the recomputed buffers by state_dict key (in each buffer's
    dtype and device), how far each layer's moving averages were from them
    (mean over channels of |ema - precise| / precise of its variance-like buffer), and how many
    layers have running statistics (0: nothing to recompute, the plain evaluation stands)."""

    buffers: dict[str, torch.Tensor]
    drift: dict[str, float]
    layers: int


@dataclass
class _Layer:
    """One norm layer with running statistics: its moments, one row per batch (the count of values
    per channel, then the per-channel means, then the per-channel biased variances, float64)."""

    name: str
    module: nn.Module
    second_moment: bool  # running_var holds E[x^2] (MABN), and there is no running_mean
    has_mean: bool
    devices: int  # simulated devices (PerDevice): statistics per device, devices * C channels
    ghost_batch: int | None  # GBN: each batch's moments are its virtual batches'
    synced: bool  # SyncBN: a batch's moments are those of every process's batch together
    has_var: bool = True  # False: a mean-only BN (wn_mobn) keeps only running_mean
    rows: list[torch.Tensor] = field(default_factory=list)

    def record(self, x: torch.Tensor) -> None:
        """Moments of one forward's input, cut as the layer's training forward cuts it."""
        x = x.detach().double()
        if self.devices > 1:  # image i * devices + d, channel c -> image i, channel d * C + c
            x = x.reshape(x.shape[0] // self.devices, self.devices * x.shape[1], *x.shape[2:])
        sizes = (
            [x.shape[0]] if self.ghost_batch is None else ghost_sizes(x.shape[0], self.ghost_batch)
        )
        for part in x.split(sizes):
            dims = (0, *range(2, part.dim()))
            mean = part.mean(dims, keepdim=True)
            variance = (part - mean).square().mean(dims)  # centred: no E[x^2] - E[x]^2
            count = mean.new_tensor([part.numel() // part.shape[1]])
            self.rows.append(torch.cat([count, mean.flatten(), variance]))

    def key(self, buffer: str) -> str:
        return f"{self.name}.{buffer}" if self.name else buffer


def _layer(name: str, module: nn.Module) -> _Layer | None:
    """The _Layer of a module whose running statistics can be recomputed, else None.

    A PerDevice module owns the buffers (devices * C entries) of the norm it runs per device."""
    norm, devices = (
        (module.train_layer, module.devices) if isinstance(module, PerDevice) else (module, 1)
    )
    if isinstance(norm, MeanOnlyBatchNorm):
        return _Layer(name, module, False, True, devices, None, False, has_var=False)
    running_var = getattr(module, "running_var", None)
    if not isinstance(running_var, torch.Tensor):  # e.g. BN with track_running_stats=False
        return None
    if isinstance(norm, MovingAverageBatchNorm):
        return _Layer(name, module, True, False, devices, None, False)
    if isinstance(norm, EvoNormB0):
        return _Layer(name, module, False, False, devices, None, False)
    if isinstance(norm, (_BatchNorm, RunningStatsNorm, SwitchableNorm)):  # SN: its BN branch's
        ghost = norm.ghost_batch if isinstance(norm, GhostBatchNorm) else None
        synced = isinstance(norm, nn.SyncBatchNorm)
        return _Layer(name, module, False, True, devices, ghost, synced)
    return None


@torch.no_grad()
def precise_statistics(
    model: nn.Module,
    batches: Iterable[Any],
    estimator: str = "population",
    gather: Gather | None = None,
    autocast: Callable[[], ContextManager[Any]] = nullcontext,
) -> PreciseStats:
    """Population statistics of every norm layer of `model` from `batches` (input tensors or
    (inputs, targets) pairs), the weights fixed; the model is left exactly as it was.

    The model runs in training mode, so each layer sees the inputs it sees in training; its own
    buffers move meanwhile and are restored afterwards. Apply the result with `apply_precise`.

    Args:
        estimator: "population" (pooled over all values seen) or "paper" (BN's Algorithm 2).
        gather: under torchrun, an all_gather every process calls in lockstep: SyncBN layers then
            pool each batch over the processes; None in one process.
        autocast: the context of each forward (normbench.fastpath), as in training.
    """
    if estimator not in ESTIMATORS:
        raise UserError(
            f"eval.precise_estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}"
        )
    layers = [layer for name, m in model.named_modules() if (layer := _layer(name, m)) is not None]
    if not layers:
        return PreciseStats({}, {}, 0)
    hooks = [
        layer.module.register_forward_hook(
            lambda _m, args, _out, layer=layer: layer.record(args[0])
        )
        for layer in layers
    ]
    try:
        with untouched(model):
            model.train()
            forwards = 0
            for batch in batches:
                with autocast():
                    model(batch[0] if isinstance(batch, (tuple, list)) else batch)
                forwards += 1
    finally:
        for hook in hooks:
            hook.remove()
    if forwards == 0:
        raise ValueError("precise_statistics got no batches")
    buffers, drift, recomputed = {}, {}, 0
    for layer in layers:
        if not layer.rows:  # not used by any forward (fvcore skips these too)
            continue
        precise = _estimate(layer, _moments(layer, gather), estimator)
        recomputed += 1
        if "running_var" in precise:  # drift is about variances; a mean-only BN has none
            ema = layer.module.get_buffer("running_var")
            drift[layer.name] = _drift(ema, precise["running_var"])
        for buffer, value in precise.items():
            like = layer.module.get_buffer(buffer)
            buffers[layer.key(buffer)] = value.to(dtype=like.dtype, device=like.device)
    return PreciseStats(buffers, drift, recomputed)


def _moments(
    layer: _Layer, gather: Gather | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(counts (K, 1), means (K, C), biased variances (K, C)) of the layer's K batches; a synced
    layer's under `gather` are those of each batch over all processes (law of total variance)."""
    rows = torch.stack(layer.rows)
    if layer.synced and gather is not None:
        per_process = torch.stack(list(gather(rows)))  # (processes, K, 1 + 2C)
        return _pool(*_split(per_process), dim=0)
    return _split(rows)


def _split(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(counts, means, variances) of moment rows (..., 1 + 2C), counts keeping a dim of 1."""
    channels = (rows.shape[-1] - 1) // 2
    return rows[..., :1], rows[..., 1 : 1 + channels], rows[..., 1 + channels :]


def _pool(
    counts: torch.Tensor, means: torch.Tensor, variances: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, mean, biased variance) of the union of groups along `dim`, each group given by its
    count, mean and biased variance: the law of total variance, exact."""
    total = counts.sum(dim)
    mean = (counts * means).sum(dim) / total
    deviation = means - mean.unsqueeze(dim)
    variance = (counts * (variances + deviation.square())).sum(dim) / total
    return total, mean, variance


def _estimate(
    layer: _Layer, moments: tuple[torch.Tensor, torch.Tensor, torch.Tensor], estimator: str
) -> dict[str, torch.Tensor]:
    """The layer's precise buffers (float64) from its batches' moments by `estimator`.

    population: the unbiased variance M / (M - 1) of all M values seen, pooled (fvcore omits the
    M / (M - 1); with it both estimators agree on a single batch). paper: BN's Algorithm 2, the
    mean of the batch means and of the batches' unbiased variances. MABN's second moment is the
    pooled E[x^2] under either."""
    counts, means, variances = moments
    if layer.second_moment:
        return {"running_var": (counts * (variances + means.square())).sum(0) / counts.sum()}
    if estimator == "paper":
        mean, variance = means.mean(0), (counts / (counts - 1) * variances).mean(0)
    else:
        total, mean, variance = _pool(counts, means, variances, dim=0)
        variance = variance * (total / (total - 1))
    if not layer.has_var:
        return {"running_mean": mean}
    return (
        {"running_mean": mean, "running_var": variance}
        if layer.has_mean
        else {"running_var": variance}
    )


def _drift(ema: torch.Tensor, precise: torch.Tensor) -> float:
    """Mean over channels of |ema - precise| / precise (a channel where both are 0 counts 0)."""
    difference = (ema.double() - precise).abs()
    relative = torch.where(difference == 0, torch.zeros_like(difference), difference / precise)
    return float(relative.mean())


@torch.no_grad()
def apply_precise(model: nn.Module, stats: PreciseStats) -> None:
    """Copy the precise buffers of `stats` into `model` (the model they were computed on, or a
    copy of it)."""
    for key, value in stats.buffers.items():
        model.get_buffer(key).copy_(value)


@torch.no_grad()
def evaluate_with_batch_stats(
    model: nn.Module,
    chunks: Iterable[Chunk],
    rank: int = 0,
    world: int = 1,
    average: Callable[[torch.Tensor], torch.Tensor] | None = None,
    autocast: Callable[[], ContextManager[Any]] = nullcontext,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over the scored images of `chunks`, every norm normalizing
    with the statistics of the chunk (training mode), every buffer left as it was.

    Args:
        chunks: ((inputs, targets), scored) of world * per-process images each; the first `scored`
            are new (the rest fill the chunk up to size), and only those count; `scored` may also
            be a bool mask over the chunk.
        rank, world: this process takes images [rank * k, (rank + 1) * k), k = chunk size / world.
        average: the mean over processes (normbench.distributed's Session.average); None in one.
        autocast: the context of each forward (normbench.fastpath).
    """
    sums = None  # (loss, correct, images), float64 on the targets' device
    with untouched(model):
        model.train()
        for (inputs, targets), scored in chunks:
            if inputs.shape[0] % world:
                raise ValueError(f"a chunk of {inputs.shape[0]} images does not split over {world}")
            k = inputs.shape[0] // world
            mine = slice(rank * k, (rank + 1) * k)
            with autocast():
                logits = model(inputs[mine])
            if isinstance(scored, torch.Tensor):  # a mask over the chunk
                counted = scored[mine].to(targets.device)
            else:
                counted = torch.arange(rank * k, (rank + 1) * k, device=targets.device) < scored
            # bf16 under autocast: the loss in float32 (float64 stays float64)
            logits = logits[counted].to(torch.promote_types(logits.dtype, torch.float32))
            labels = targets[mine][counted]
            take = labels.shape[0]
            chunk = torch.stack(
                [
                    F.cross_entropy(logits, labels, reduction="sum").double(),
                    (logits.argmax(dim=1) == labels).sum().double(),
                    torch.tensor(float(take), dtype=torch.float64, device=labels.device),
                ]
            )
            sums = chunk if sums is None else sums + chunk
    if sums is None:
        raise ValueError("evaluate_with_batch_stats got no chunks")
    if average is not None:  # a mean of sums: the ratios below are those of the sums
        sums = average(sums)
    loss, correct, images = sums.tolist()
    return loss / images, correct / images


@contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Restore, on leaving, every parameter and buffer of `model` (through load_state_dict, so that
    norms restore what they mirror on the host, e.g. MABN's counters), the buffers outside the
    state_dict, and each module's training flag."""
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    transient = {
        name: buffer.clone() for name, buffer in model.named_buffers() if name not in state
    }
    flags = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        model.load_state_dict(state)
        with torch.no_grad():
            for name, buffer in transient.items():
                model.get_buffer(name).copy_(buffer)
        for module, training in flags:
            module.training = training
