"""The data of `plot --curves`: a run's TensorBoard scalars read back from its tb/ folder (each step
once), on an x axis of epochs or images seen, and their mean and min..max over seeds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .run_records import Run

EVENTS_GLOB = "events.out.tfevents.*"
TRAIN_LOSS, TEST_ERROR = "train/loss", "epoch/test_error"  # tags written by normbench.epochs


def event_files(tb_dir: Path) -> list[Path]:
    """The event files of one run folder's tb/ (add_hparams writes into the same folder,
    run_name=".")."""
    return sorted(p for p in tb_dir.glob(EVENTS_GLOB) if p.is_file()) if tb_dir.is_dir() else []


def _read_file(file: Path) -> tuple[float, dict[str, dict[int, float]]] | None:
    """(wall time of the file's first event, {tag: {step: value}}), or None for a file without
    events (a writer killed before its first flush)."""
    # deferred: tensorboard is a heavy import that only --curves needs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # 0 = keep every point, not a sample
    events = EventAccumulator(str(file), size_guidance={"scalars": 0})
    events.Reload()
    try:
        first = events.FirstEventTimestamp()
    except ValueError:
        return None
    return first, {
        tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]
    }


def read_scalars(tb_dir: Path | str) -> dict[str, pd.Series]:
    """Every scalar tag of one run's tb/ as a Series indexed by step, sorted, each step once.

    A resumed run has one event file per attempt, and the killed attempt may have logged steps that
    the resumed one logs again. Each file is read on its own and the files are taken in the order
    they were started (wall time of their first event); for every tag, a later file's points replace
    all earlier points at or after the first step it logged for that tag. TensorBoard's own purge
    (directory reading + the resumed writer's purge_step) is not enough here: it orders files by
    name, whose time field has a 1 s resolution; it drops steps >= purge_step, which with purge_step
    = epochs done * steps per epoch also hides the last point logged in the last completed epoch;
    and it cannot apply to the epoch/* tags, whose x is the epoch rather than the step (one flushed
    just before a kill would stay twice)."""
    loaded = [read for read in map(_read_file, event_files(Path(tb_dir))) if read is not None]
    merged: dict[str, dict[int, float]] = {}
    for _, scalars in sorted(loaded, key=lambda item: item[0]):
        for tag, points in scalars.items():
            if not points:
                continue
            first = min(points)
            kept = {step: value for step, value in merged.get(tag, {}).items() if step < first}
            kept.update(points)
            merged[tag] = kept
    return {tag: pd.Series(points, dtype=float).sort_index() for tag, points in merged.items()}


@dataclass
class RunCurves:
    run: Run
    # index: epochs (step / steps per epoch) or images seen; one point per log.every_steps steps
    train_loss: pd.Series
    test_error: pd.Series  # index: epoch 1, 2, ... (or images seen); top-1 error in %


def run_curves(run: Run, images: bool = False) -> RunCurves | str:
    """The curves of one run against epochs (images: against images seen = epochs x
    setup.train_images), or why it has none (a short reason for the warning line)."""
    run_dir = run.path.parent
    if not event_files(run_dir / "tb"):
        return "no TensorBoard events in tb/"
    setup = run.record.setup or {}
    steps_per_epoch = setup.get("steps_per_epoch")
    if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
        return "no setup.steps_per_epoch in record.json"
    per_epoch = setup.get("train_images") if images else 1
    if not isinstance(per_epoch, int) or per_epoch <= 0:
        return "no setup.train_images in record.json, for --x images"
    scalars = read_scalars(run_dir / "tb")
    if TRAIN_LOSS not in scalars or TEST_ERROR not in scalars:
        return f"no {TRAIN_LOSS} or {TEST_ERROR} scalars in tb/"
    loss, error = scalars[TRAIN_LOSS], scalars[TEST_ERROR]
    loss.index = loss.index / steps_per_epoch * per_epoch
    error.index = error.index * per_epoch
    return RunCurves(run, loss, error)


@dataclass
class Band:
    x: list[float]
    mean: list[float]
    low: list[float]  # min over seeds
    high: list[float]  # max over seeds
    seeds: int


def seed_band(series: list[pd.Series]) -> Band:
    """Mean and min..max over seeds at the x values every seed has (seeds of one cell share a
    config, so they log the same steps)."""
    frame = pd.concat(series, axis=1, join="inner")
    return Band(
        list(frame.index),
        list(frame.mean(axis=1)),
        list(frame.min(axis=1)),
        list(frame.max(axis=1)),
        frame.shape[1],
    )
