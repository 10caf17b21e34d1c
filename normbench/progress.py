"""What a run prints: a rich progress bar on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

MODES = ("auto", "bar", "plain", "none")  # log.progress; auto: bar on a terminal, else plain


class RunProgress:
    def __init__(self, mode: str, epochs: int, steps_per_epoch: int) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode
        self.console = Console(stderr=True)
        self.epochs = epochs
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
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)
        else:
            print(text, flush=True)

    def notice(self, text: str) -> None:
        """Warnings and resume notes: always shown, on stderr, whatever log.progress says."""
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def start_epoch(self, epoch: int) -> None:
        if self._bar is not None:
            self._bar.reset(self._task, description=f"epoch {epoch}/{self.epochs}", status="")

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def status(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, status=text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
