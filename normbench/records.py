"""A run's `record.json`: its status, what it trained, its results so far; one type for all readers.

Torch-free: tables, sweeps and the CLI read records without importing torch.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeGuard

from .files import write_json

RECORD_FILE = "record.json"
# A finished run is suspect when its final test error is this close (points) to chance, or when it
# took fewer SGD steps than this: it prints a warning and tables mark it instead of bolding it.
CHANCE_MARGIN = 2.0
MIN_SGD_STEPS = 100
# The converged study's criterion (experiment=gn_study): a run's training loss is flat when it
# changed by less than this (%) over its last FLAT_EPOCHS epochs (metric train_loss_change3).
FLAT_LOSS_CHANGE = 3.0
FLAT_EPOCHS = 3


def history_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics the epochs done so far give: the last epoch's, the best and the median of the
    last 5 test errors, how much the training loss changed over the last FLAT_EPOCHS epochs (%),
    and with a validation split the epoch of the lowest validation error (the earliest on ties)
    and the test error at it."""
    if not history:
        return {}
    last = history[-1]
    errors = [entry["test_error"] for entry in history]
    metrics = {
        "test_error": last["test_error"],
        "test_acc": last["test_acc"],
        "best_test_error": min(errors),
        "median5_test_error": statistics.median(errors[-5:]),
        "train_loss": last["train_loss"],
        "train_acc": last["train_acc"],
        "test_loss": last["test_loss"],
        "epochs_done": last["epoch"],
    }
    if len(history) > FLAT_EPOCHS:
        before = history[-1 - FLAT_EPOCHS]["train_loss"]
        change = abs(last["train_loss"] - before) / before * 100 if before else math.inf
        metrics[f"train_loss_change{FLAT_EPOCHS}"] = change
    validated = [entry for entry in history if entry.get("val_error") is not None]
    if validated:
        best = min(validated, key=lambda entry: entry["val_error"])  # min keeps the earliest
        metrics.update(
            val_error=last.get("val_error"),
            best_val_error=best["val_error"],
            best_val_epoch=best["epoch"],
            test_error_at_best_val=best["test_error"],
        )
    return metrics


class Status(str, Enum):
    """Where a run stands. A final run (completed, diverged) is never trained again without --force:
    divergence is deterministic on a rerun, and resuming after a non-finite test loss would train
    on from a broken model."""

    RUNNING = "running"
    COMPLETED = "completed"
    DIVERGED = "diverged"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    @property
    def final(self) -> bool:
        return self in (Status.COMPLETED, Status.DIVERGED)

    def __str__(self) -> str:
        return self.value


class NotARunRecord(ValueError):
    """A record.json that parses but is not a run record (no known status, or no config)."""


def empty_metrics() -> dict[str, Any]:
    names = ("test_error", "test_acc", "best_test_error", "median5_test_error")
    return {
        **dict.fromkeys(names),
        **dict.fromkeys(("train_loss", "train_acc", "test_loss")),
        "epochs_done": 0,
    }


@dataclass
class RunRecord:
    """The fields of record.json, in the order they are written.

    Args:
        status: see Status.
        run_key: the run dir's name (normbench.runs.run_key).
        overrides: the command-line overrides of the run.
        non_default: settings that differ from the chosen configs' defaults (the key's hash).
        config: the resolved config.
        setup: facts the config implies (SGD batch, scaled lr, norm layers, data, world size).
        env: versions and device.
        history: one entry per finished epoch.
        metrics, timing: from the history (update_from_history).
        diagnostics: what the evaluation after training found besides metrics (e.g. per layer
            how far the EMA running statistics are from the precise ones).
        diverged_at: epoch, step and loss where a run diverged.
        interrupted_at: epoch, step (optimizer steps done in that epoch) and signal where
            SIGTERM/SIGUSR1 stopped a run at a checkpoint (normbench.preemption).
        resumed_from: epoch and step of the checkpoint this attempt resumed from.
        error: why a failed run failed.
        extra: keys this version does not know (a newer record), written back unchanged.
    """

    status: Status
    run_key: str = ""
    overrides: list[str] = field(default_factory=list)
    non_default: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=empty_metrics)
    timing: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    diverged_at: dict[str, Any] | None = None
    interrupted_at: dict[str, Any] | None = None
    resumed_from: dict[str, Any] | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """A record from parsed JSON; ValueError when it has no valid status."""
        known = {name for name in cls.__dataclass_fields__ if name != "extra"}
        fields = {key: value for key, value in data.items() if key in known}
        fields["status"] = Status(data["status"])  # ValueError for an unknown one
        _add_derived_metrics(fields)
        return cls(**fields, extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        """The record in `path` (a run dir or its record.json). OSError or ValueError (JSON, text
        encoding) when it cannot be read; NotARunRecord when it parses but is no run record."""
        path = Path(path)
        if path.is_dir() or path.name != RECORD_FILE:
            path = path / RECORD_FILE
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise NotARunRecord(f"{path}: no status or config")
        try:
            return cls.from_dict(data)
        except (KeyError, ValueError) as error:  # no status, or one this version does not know
            raise NotARunRecord(f"{path}: no status or config") from error

    @classmethod
    def load(cls, path: Path) -> RunRecord | None:
        """`read`, or None when there is no readable run record (e.g. one cut short by a full
        disk)."""
        try:
            return cls.read(path)
        except (OSError, ValueError):
            return None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": self.status.value,
            "run_key": self.run_key,
            "overrides": self.overrides,
            "non_default": self.non_default,
            "config": self.config,
            "setup": self.setup,
            "env": self.env,
            "history": self.history,
            "metrics": self.metrics,
            "timing": self.timing,
        }
        if self.diagnostics:
            data["diagnostics"] = self.diagnostics
        if self.diverged_at is not None:
            data["diverged_at"] = self.diverged_at
        if self.interrupted_at is not None:
            data["interrupted_at"] = self.interrupted_at
        if self.resumed_from is not None:
            data["resumed_from"] = self.resumed_from
        if self.error is not None:
            data["error"] = self.error
        return {**data, **self.extra}

    def save(self, run_dir: Path) -> None:
        """Atomically (re)write `run_dir/record.json`."""
        write_json(Path(run_dir) / RECORD_FILE, self.to_dict())

    def update_from_history(
        self,
        history: list[dict[str, Any]],
        train_seconds: float,
        images: int,
        peak_memory_mb: float | None,
        final: dict[str, Any] | None = None,
    ) -> None:
        """Metrics (last epoch, best, the GN paper's median of the last 5, the epoch selected on
        validation) and timing from the epochs done so far; `final`: what the evaluation after the
        last epoch measured (normbench.final_eval: metrics, diagnostics and its seconds)."""
        self.history = history
        self.metrics = {**empty_metrics(), **history_metrics(history)}
        final = final or {}
        self.metrics.update(final.get("metrics", {}))
        if final.get("diagnostics"):
            self.diagnostics = final["diagnostics"]
        self.timing = {
            "train_seconds": train_seconds,
            "images_per_second": images / train_seconds if train_seconds else None,
            "peak_memory_mb": peak_memory_mb,
        }
        if "seconds" in final:
            self.timing["final_eval_seconds"] = final["seconds"]

    def mark_diverged(self, epoch: int, step: int, loss: str) -> None:
        self.status = Status.DIVERGED
        self.diverged_at = {"epoch": epoch, "step": step, "loss": loss}

    def mark_failed(self, error: BaseException) -> None:
        self.status = Status.FAILED
        self.error = f"{type(error).__name__}: {error}"


def sanity_warnings(record: RunRecord) -> list[str]:
    """Why a run's final numbers say little: a test error within CHANCE_MARGIN points of chance
    (100 - 100 / classes %), or fewer than MIN_SGD_STEPS SGD steps; empty when neither (or when the
    record lacks what the checks need)."""
    warnings = []
    classes = (record.config.get("data") or {}).get("num_classes")
    error = (record.metrics or {}).get("test_error")
    if _is_number(classes) and classes >= 2 and _is_number(error) and math.isfinite(error):
        chance = 100.0 - 100.0 / classes
        if error >= chance - CHANCE_MARGIN:
            warnings.append(
                f"final test error {error:.2f}% is within {CHANCE_MARGIN:g} points of chance "
                f"({chance:.4g}% for {classes} classes)"
            )
    per_epoch, epochs = (
        record.setup.get("steps_per_epoch"),
        (record.metrics or {}).get("epochs_done"),
    )
    if _is_number(per_epoch) and _is_number(epochs) and epochs > 0:
        steps = int(per_epoch * epochs)
        if steps < MIN_SGD_STEPS:
            warnings.append(
                f"only {steps} SGD steps (< {MIN_SGD_STEPS}): raise epochs or data.train_size, "
                "or lower batch/devices"
            )
    return warnings


def _add_derived_metrics(fields: dict[str, Any]) -> None:
    """A record written before a history-derived metric existed gets it on reading (appended after
    the metrics it has, which are kept as they are)."""
    metrics, history = fields.get("metrics"), fields.get("history")
    if not isinstance(metrics, dict) or not isinstance(history, list):
        return
    try:
        derived = history_metrics(history)
    except (KeyError, TypeError, IndexError):  # a hand-made or partial history: nothing to add
        return
    metrics.update({key: value for key, value in derived.items() if key not in metrics})


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
