"""The evaluation after the last epoch: the test error with population ("precise") statistics and
with batch statistics, beside the EMA one every epoch measures (docs/evaluation.md).

Every process of a torchrun run calls `final_evaluation` in lockstep (a synchronized norm's
train-mode forwards all-reduce); rank 0's model is the one evaluated and saved.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from .data import DataSource
from .distributed import Session
from .norms.switchable_norm import importance_weights
from .precise import (
    Chunk,
    apply_precise,
    evaluate_with_batch_stats,
    precise_statistics,
    untouched,
)
from .train import evaluate

# Seeds of the evaluation's own random streams (never the training generator's, so a resumed or
# re-evaluated run draws the same): the precise batches' order and the test set's chunk order.
PRECISE_SEED_OFFSET = 1_000_003
CHUNK_SEED_OFFSET = 2_000_003


@dataclass
class FinalEvaluation:
    """What `final_evaluation` measured; `results` goes into the checkpoint's train state and the
    record (normbench.records.RunRecord.update_from_history)."""

    results: dict[str, Any] = field(default_factory=dict)
    precise_state: dict[str, torch.Tensor] | None = None  # the model with precise statistics


def final_evaluation(
    model: nn.Module,
    evaluated: nn.Module,
    cfg: DictConfig,
    data: DataSource,
    session: Session,
    test_error: float,
    batch_dependent: bool,
    autocast: Callable[[], ContextManager[Any]],
) -> FinalEvaluation:
    """Precise statistics (eval.precise_batches > 0) and the batch-statistics test error.

    Args:
        model: the plain module (its state_dict names; hooks go on its norm layers).
        evaluated: what evaluates the test set in eval mode (the compiled model, if any), sharing
            model's parameters and buffers.
        test_error: the last epoch's test error with the EMA statistics: the precise and the
            batch-statistics errors of a norm without running or batch statistics equal it.
        batch_dependent: the norm normalizes with batch statistics in training.
    """
    started = time.perf_counter()
    metrics: dict[str, Any] = {}
    diagnostics: dict[str, Any] = {}
    outcome = FinalEvaluation()
    if cfg.eval.precise_batches > 0:
        precise_error, outcome.precise_state, precise = _precise(
            model, evaluated, cfg, data, session, autocast
        )
        metrics["test_error_precise"] = test_error if precise_error is None else precise_error
        diagnostics.update(precise)
    importance = learned_importance(model)
    if importance:
        diagnostics["norm_importance"] = importance
    if batch_dependent:
        metrics["test_error_batch"] = _batch_stats_error(model, cfg, data, session, autocast)
    else:
        metrics["test_error_batch"] = test_error
    outcome.results = {
        "metrics": metrics,
        "diagnostics": diagnostics,
        "seconds": time.perf_counter() - started,
    }
    return outcome


def _precise(
    model: nn.Module,
    evaluated: nn.Module,
    cfg: DictConfig,
    data: DataSource,
    session: Session,
    autocast: Callable[[], ContextManager[Any]],
) -> tuple[float | None, dict[str, torch.Tensor], dict[str, Any]]:
    """(test error with precise statistics, None when no layer has running statistics; the
    model's state with them; diagnostics). The model keeps its EMA statistics."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(cfg.seed + PRECISE_SEED_OFFSET)
    batches = precise_inputs(session, data, cfg.batch, cfg.eval.precise_batches, generator)
    gather = session.gather if session.world_size > 1 else None
    stats = precise_statistics(
        model, batches, cfg.eval.precise_estimator, gather=gather, autocast=autocast
    )
    diagnostics = {
        "precise": {
            "batches": cfg.eval.precise_batches,
            "images_per_device_batch": cfg.batch,
            "estimator": cfg.eval.precise_estimator,
            "layers": stats.layers,
        },
        "running_stats_drift": stats.drift,
    }
    error = None
    with untouched(model):  # the model keeps its EMA statistics
        if stats.layers:
            apply_precise(model, stats)
            _, accuracy = session.on_main(
                lambda: evaluate(evaluated, data.test_batches(cfg.log.eval_batch), autocast)
            )
            error = 100.0 * (1.0 - accuracy)
        precise_state = {
            name: value.detach().cpu().clone() for name, value in model.state_dict().items()
        }
    diagnostics["precise"]["seconds"] = time.perf_counter() - started
    return error, precise_state, diagnostics


def _batch_stats_error(
    model: nn.Module,
    cfg: DictConfig,
    data: DataSource,
    session: Session,
    autocast: Callable[[], ContextManager[Any]],
) -> float:
    """The test error with every chunk of batch * devices (* processes) images normalized by its
    own statistics, as in training; the model's buffers are left as they were."""
    generator = torch.Generator().manual_seed(cfg.seed + CHUNK_SEED_OFFSET)
    size = cfg.batch * cfg.devices * session.world_size
    chunks = data.eval_chunks("test", size, generator)
    if session.world_size > 1:  # in one process the reordering is the identity
        chunks = rank_major(chunks, session.world_size, cfg.devices)
    # a one-process Session of another rank (tests of rank-1 behaviour) still evaluates its chunks
    rank = session.rank if session.world_size > 1 else 0
    _, accuracy = evaluate_with_batch_stats(
        model, chunks, rank, session.world_size, session.average, autocast=autocast
    )
    return 100.0 * (1.0 - accuracy)


def rank_major(chunks: Iterable[Chunk], world: int, devices: int) -> Iterator[Chunk]:
    """Each chunk reordered so that process r's slice [r * k, (r + 1) * k) holds, interleaved, the
    images of its `devices` devices, with global device g = r * devices + d taking images
    i * world * devices + g: the devices of W processes then see exactly the images the
    world * devices devices of one process see (normbench.data.Shard's layout). `scored` becomes
    a mask, since the images to score no longer lead."""
    for (inputs, targets), scored in chunks:
        size = inputs.shape[0]
        order = torch.arange(size).view(-1, world, devices).transpose(0, 1).reshape(-1)
        counted = order < scored
        order = order.to(inputs.device)
        yield (inputs[order], targets[order]), counted


def precise_inputs(
    session: Session, data: DataSource, batch: int, count: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """`count` training micro-batches of `batch` images per simulated device (inputs only), as many
    epochs' orders drawn from `generator` as they need."""
    per_epoch = data.train_size // (batch * session.devices * session.world_size)
    while count > 0:
        take = min(count, per_epoch)
        for inputs, _ in session.train_batches(data, batch, take, 1, generator):
            yield inputs
        count -= take


def learned_importance(model: nn.Module) -> dict[str, Any]:
    """{layer name: its learned importance weights} of every Switchable Norm layer (the SN paper's
    analysis reads them), for the record; {} when there is none."""
    report = {}
    for name, module in model.named_modules():
        weights = importance_weights(module)
        if weights is not None:
            report[name] = weights
    return report
