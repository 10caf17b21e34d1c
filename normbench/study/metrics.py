"""The metrics tables and figures show: any numeric metric a run record holds.

The metrics records are known to hold keep a label with units, their digits and which way is better;
any other numeric one gets a generic label from its name. `--metric` takes one or a comma list.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..records import Status
from ..values import did_you_mean

if TYPE_CHECKING:  # tables imports this module
    from .tables import Run

LOWER, HIGHER, NEITHER = -1, 1, 0  # which way a metric is better; NEITHER is never bolded
# the metrics a sweep's table adds to test_error when every completed record of the sweep holds them
SWEEP_EXTRA = ("test_error_at_best_val", "test_error_precise", "test_error_batch")


@dataclass(frozen=True)
class Metric:
    """How a table or figure shows one metric.

    Args:
        name: the key in record.json's metrics.
        label: what it is, with units (captions, axis labels).
        digits: decimals shown.
        better: LOWER or HIGHER is better, or NEITHER (a count: never bolded).
    """

    name: str
    label: str
    digits: int
    better: int


KNOWN = {
    metric.name: metric
    for metric in (
        Metric("test_error", "top-1 test error (%)", 2, LOWER),
        Metric("test_error_precise", "top-1 test error, population statistics (%)", 2, LOWER),
        Metric("test_error_batch", "top-1 test error, batch statistics (%)", 2, LOWER),
        Metric(
            "test_error_at_best_val", "top-1 test error, epoch selected on validation (%)", 2, LOWER
        ),
        Metric("val_error", "top-1 validation error (%)", 2, LOWER),
        Metric("best_val_error", "best top-1 validation error (%)", 2, LOWER),
        Metric("best_val_epoch", "epoch of the best validation error", 1, NEITHER),
        Metric("test_acc", "top-1 test accuracy (fraction)", 4, HIGHER),
        Metric(
            "best_test_error", "lowest top-1 test error over epochs (%, chosen on test)", 2, LOWER
        ),
        Metric("median5_test_error", "median top-1 test error of the last 5 epochs (%)", 2, LOWER),
        Metric("train_loss", "train loss", 4, LOWER),
        Metric(
            "train_loss_change3", "change of the train loss over the last 3 epochs (%)", 2, NEITHER
        ),
        Metric("train_acc", "train accuracy (fraction)", 4, HIGHER),
        Metric("test_loss", "test loss", 4, LOWER),
        Metric("epochs_done", "epochs done", 1, NEITHER),
    )
}


def metric_info(name: str) -> Metric:
    """A known metric's label, digits and direction; for any other name a generic one: `*_acc` and
    accuracies are better higher, errors and losses lower, anything else neither."""
    if name in KNOWN:
        return KNOWN[name]
    words = set(name.lower().split("_"))
    if words & {"acc", "accuracy"}:
        better = HIGHER
    elif words & {"error", "err", "loss"}:
        better = LOWER
    else:
        better = NEITHER
    return Metric(name, name.replace("_", " "), 2 if words & {"error", "err"} else 4, better)


def parse_metrics(text: str | Iterable[str]) -> list[str]:
    """`test_error,test_error_precise` (or a list) -> the names in order, each once."""
    names = text.split(",") if isinstance(text, str) else list(text)
    metrics = list(dict.fromkeys(name.strip() for name in names if name.strip()))
    if not metrics:
        raise UserError(
            f"--metric {text!r} names no metric; give one or a comma list, e.g. "
            "test_error,test_error_precise"
        )
    return metrics


def check_known(metrics: list[str]) -> None:
    """Only known metrics (a sweep's records are written by this version, which holds no other):
    an unknown one is a UserError before anything trains."""
    for name in metrics:
        if name not in KNOWN:
            raise UserError(
                f"unknown metric {name!r}{did_you_mean(name, KNOWN)}; choose from: "
                f"{', '.join(KNOWN)}"
            )


def is_number(value: Any) -> bool:
    """A numeric metric value (NaN too: a diverged run's); not None, bool or text."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def held_metrics(runs: list[Run]) -> list[str]:
    """The metrics with a numeric value in at least one record: the known ones in their order, then
    the others alphabetically."""
    held = {
        name
        for run in runs
        for name, value in (run.record.metrics or {}).items()
        if is_number(value)
    }
    return [name for name in KNOWN if name in held] + sorted(held - set(KNOWN))


def check_held(metrics: list[str], runs: list[Run], where: Any) -> None:
    """Every metric asked for is held by some record; else one UserError line with what they hold.

    A known metric passes when no run completed (their cells show div/failed/unfinished then)."""
    held = held_metrics(runs)
    completed = any(run.status is Status.COMPLETED for run in runs)
    for name in metrics:
        if name in held or (name in KNOWN and not completed):
            continue
        hold = f"they hold: {', '.join(held)}" if held else "they hold no numeric metric yet"
        if name in KNOWN:
            raise UserError(
                f"no run record under {where} holds metric {name!r} (older records lack the "
                f"newer metrics; val metrics need data.val_size > 0); {hold}"
            )
        raise UserError(
            f"unknown metric {name!r}{did_you_mean(name, held or KNOWN)}: no run record under "
            f"{where} holds it; {hold}"
        )


def sweep_metrics(runs: list[Run]) -> list[str]:
    """A sweep table's default metrics: test_error, plus each of SWEEP_EXTRA that every completed
    record holds (none of them for records older than those metrics)."""
    completed = [run for run in runs if run.status is Status.COMPLETED]
    extra = [
        name
        for name in SWEEP_EXTRA
        if completed and all(is_number((run.record.metrics or {}).get(name)) for run in completed)
    ]
    return ["test_error", *extra]
