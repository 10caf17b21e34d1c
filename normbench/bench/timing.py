"""Timing helpers shared by the bench sections: interleaved repetitions, medians, device syncs.

Every call is timed twice: wall-clock seconds (what a user waits) and this process's CPU seconds
(time.process_time: all its threads, not its DataLoader workers). On a machine shared with other
processes the wall time of a step swings with their load while its CPU time does not, so on CPU the
bench judges a target on CPU time (with one intra-op thread both agree on an idle machine) and
prints the wall time next to it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch


@dataclass
class Timings:
    wall: dict[str, list[float]] = field(default_factory=dict)  # seconds per call, in timing order
    cpu: dict[str, list[float]] = field(default_factory=dict)  # process CPU seconds per call

    def median(self, clock: str) -> dict[str, float]:
        return {name: statistics.median(values) for name, values in getattr(self, clock).items()}


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What to call before reading the clock: CUDA work is asynchronous, so a timer must wait for
    it."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of `fn()`, the device's queued work included."""
    sync()
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - start, time.process_time() - start_cpu


def interleaved(
    calls: Mapping[str, Callable[[], object]],
    repeats: int,
    sync: Callable[[], None],
    warmup: int = 1,
    after_warmup: Callable[[], None] | None = None,
) -> Timings:
    """Times of each call over `repeats` rounds, every round running each call once in a rotating
    order, so drift in the machine's load (other processes, clocks) hits all of them alike. `warmup`
    untimed rounds first (allocator, kernel selection, lazy init), then `after_warmup()`, then one
    more untimed round."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    if after_warmup is not None:
        after_warmup()
        for name in names:
            calls[name]()
    times = Timings({name: [] for name in names}, {name: [] for name in names})
    for i in range(repeats):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            wall, cpu = timed(calls[name], sync)
            times.wall[name].append(wall)
            times.cpu[name].append(cpu)
    return times
