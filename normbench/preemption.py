"""SIGTERM, SIGUSR1 and SIGUSR2 (what SLURM sends before it preempts a job or ends it at its time
limit: `--signal=USR1@90`; submitit >= 1.5 asks for USR2, or $SUBMITIT_PREEMPT_SIGNAL): the run
finishes its optimizer step, writes a checkpoint, records where it stopped and the process exits
with PREEMPTED_EXIT.

The handler only sets a flag (StopRequest); the epoch loop reads it after each step (normbench.
midepoch), so a second signal while the checkpoint is written changes nothing, and every file is
written atomically. Handlers installed before ours are chained: once the run has stopped and its
files are written and released, the previous handler of the signal that stopped it is called if it
is a Python callable (submitit's SIGUSR2 handler requeues the job and exits; its SIGTERM handler
only logs); if it returns, Preempted goes on up and the CLI exits with PREEMPTED_EXIT. Torch-free:
the CLI imports it at start.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

# EX_TEMPFAIL (sysexits.h): "temporary failure, retry later": rerun the command to resume
PREEMPTED_EXIT = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Preempted(BaseException):
    """A signal stopped the run after its checkpoint was written. A BaseException, like
    KeyboardInterrupt: code that turns a cell's Exception into a failed cell lets it pass.

    Args:
        signum: the signal, or None when another process of a data-parallel run got it.
        epoch, step: where training stopped: after `step` optimizer steps of epoch `epoch` (all
            of them: at the epoch's end); epoch None when the run had already completed.
    """

    def __init__(self, signum: int | None, epoch: int | None = None, step: int = 0) -> None:
        super().__init__(signum, epoch, step)
        self.signum, self.epoch, self.step = signum, epoch, step

    @property
    def signal_name(self) -> str:
        return "a signal to another process" if self.signum is None else signal_name(self.signum)

    def where(self) -> dict[str, Any]:
        """The record's `interrupted_at`."""
        return {"epoch": self.epoch, "step": self.step, "signal": self.signal_name}


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopRequest:
    """Set by SIGTERM/SIGUSR1/SIGUSR2 while a run trains (watch_signals); read by the epoch loop."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: remembers the first signal, nothing else (async-signal safe)."""
        if self.signum is None:
            self.signum = signum


Handler = Callable[[int, FrameType | None], Any] | int | None


@contextmanager
def watch_signals() -> Iterator[StopRequest]:
    """SIGTERM, SIGUSR1 and SIGUSR2 set the yielded StopRequest while the block runs; the previous
    handlers come back when it ends (a sweep trains many runs in one process).

    When Preempted leaves the block (the run is stopped, its files written and released), the
    previous handler of its signal is called if it is a Python callable (submitit requeues the job
    and exits there); then Preempted goes on. A block that ends normally with a signal pending (it
    came after the last step) raises Preempted too, so that the process stops. Outside the main
    thread (where Python allows no handlers) nothing is installed."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous: dict[int, Handler] = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, request.handle)
    try:
        yield request
    except Preempted as stop:
        _restore(previous)
        _chain(previous, stop.signum)
        raise
    finally:
        _restore(previous)
    if request.signum is not None:  # the run completed; the signal still asks the process to end
        _chain(previous, request.signum)
        raise Preempted(request.signum)


def _restore(previous: dict[int, Handler]) -> None:
    for signum, handler in previous.items():
        # None: installed from C, not restorable from Python; the default is the safe choice
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _chain(previous: dict[int, Handler], signum: int | None) -> None:
    """Call the handler that was installed before ours for `signum`, if it is a Python callable
    (SIG_DFL / SIG_IGN are not: then the caller exits with PREEMPTED_EXIT)."""
    if signum is None:  # another process of the run got the signal: its handler is its own
        return
    handler = previous.get(signum)
    if callable(handler):
        handler(signum, None)


def stopped_message(stop: Preempted) -> str:
    """The CLI's last line after Preempted."""
    if stop.epoch is None:
        return (
            f"stopped by {stop.signal_name} after the run completed (exit {PREEMPTED_EXIT}); "
            "rerun the same command to go on"
        )
    return (
        f"stopped by {stop.signal_name} after step {stop.step} of epoch {stop.epoch}: "
        f"checkpoint written (exit {PREEMPTED_EXIT}); rerun the same command to resume there"
    )
