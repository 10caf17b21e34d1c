"""What a run prints: a rich progress bar on a terminal, plain lines otherwise (one per epoch, and a
progress line whenever nothing was printed for PLAIN_EVERY seconds)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

MODES = ("auto", "bar", "plain", "none")  # log.progress; auto: bar on a terminal, else plain
PLAIN_EVERY = 30.0  # seconds: the longest a piped run stays silent while it trains
BAR_EVERY = 1.0  # seconds between the bar's reads of the running loss (each one a device sync)


class RunProgress:
    """The run's printer.

    Args:
        mode: a log.progress value (MODES).
        epochs, steps_per_epoch: the bar's sizes.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        mode: str,
        epochs: int,
        steps_per_epoch: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode
        self.console = Console(stderr=True)
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.clock = clock
        self.epoch = 0
        self._epoch_started = self._last_output = self._last_read = clock()
        self._bar: Progress | None = None
        if mode == "bar":
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._bar.add_task("", total=steps_per_epoch, status="")
            self._bar.start()

    def line(self, text: str) -> None:
        """A message that is always shown (except with log.progress=none)."""
        if self.mode == "none":
            return
        self._last_output = self.clock()
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)
        else:
            print(text, flush=True)

    def notice(self, text: str) -> None:
        """Warnings and resume notes: always shown, on stderr, whatever log.progress says."""
        self._last_output = self.clock()
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._epoch_started = self.clock()
        if self._bar is not None:
            self._bar.reset(self._task, description=f"epoch {epoch}/{self.epochs}", status="")

    def step(self, done: int, images: int, loss: Callable[[], float], exact: bool) -> None:
        """After each optimizer step: the bar advances and shows the epoch's mean train loss so
        far and images/s (read on the epoch's first step, at logging steps and every BAR_EVERY
        seconds); plain mode prints a progress line when it was silent for PLAIN_EVERY seconds.

        Args:
            done: optimizer steps done this epoch.
            images: images trained on this epoch, over all processes.
            loss: the epoch's mean train loss so far (the epoch line's train_loss at its end).
            exact: `loss` is the exact value over all processes and costs nothing to read
                (a logging step); otherwise it is this process's, read with one device sync.
        """
        now = self.clock()
        if self._bar is not None:
            self._bar.advance(self._task)
            if exact or done == 1 or now - self._last_read >= BAR_EVERY:
                self._last_read = now
                self._bar.update(self._task, status=self._status(loss(), images, now))
        elif self.mode == "plain" and now - self._last_output >= PLAIN_EVERY:
            self.line(
                f"epoch {self.epoch}/{self.epochs}  step {done}/{self.steps_per_epoch}  "
                + self._status(loss(), images, now)
            )

    def _status(self, loss: float, images: int, now: float) -> str:
        seconds = now - self._epoch_started
        speed = f"  {images / seconds:,.0f} img/s" if seconds > 0 else ""
        return f"loss {loss:.4f}{speed}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
