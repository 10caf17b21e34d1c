"""Checkpoints inside an epoch: when to write one (checkpoint.every_minutes, checkpoint.every_steps,
or a stop request from normbench.preemption), and the epoch position a checkpoint holds so that a
resumed run continues the epoch exactly.

A mid-epoch checkpoint is the epoch checkpoint's file and format (normbench.epochs) with two
differences: `generator` is the generator's state at the epoch's start (the epoch's order and
augmentation are drawn from it again, then the micro-batches already trained on are skipped), and
`state.position` says how far the epoch got (steps done, every process's loss/accuracy sums, the
logging read's totals). Model (norm buffers of every simulated device included), optimizer and
torch RNG are their current states, as in every checkpoint.

Deciding costs no host sync: the clock and the signal flag are host values and a step count is
known. In a data-parallel run every process must stop at the same step and take part in the
checkpoint's all-gather, so the processes agree on "time is up" and "a signal came" with one small
all-reduce every log.every_steps steps (the steps of the logging read) and at each epoch's end;
checkpoint.every_steps needs no agreement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig

from .distributed import Session
from .preemption import StopRequest
from .train import EpochSums, StepDone


@dataclass
class MidEpochCheckpoints:
    """After each optimizer step: write a mid-epoch checkpoint now? stop after it?

    Args:
        every_seconds: seconds between checkpoints (epoch or mid-epoch); 0: never by time.
        every_steps: a checkpoint every this many steps of an epoch; 0: never by count.
        agree_every: steps between the agreement all-reduces of a data-parallel run.
        session: this process's part of the run.
        stop: set by SIGTERM/SIGUSR1.
    """

    every_seconds: float
    every_steps: int
    agree_every: int
    session: Session
    stop: StopRequest
    last_written: float = field(default_factory=time.monotonic)

    @classmethod
    def from_config(
        cls, cfg: DictConfig, session: Session, stop: StopRequest
    ) -> MidEpochCheckpoints:
        return cls(
            60.0 * float(cfg.checkpoint.every_minutes),
            int(cfg.checkpoint.every_steps),
            int(cfg.log.every_steps),
            session,
            stop,
        )

    def written(self) -> None:
        """A checkpoint was just written: the time interval starts again."""
        self.last_written = time.monotonic()

    def after_step(self, done: int, steps: int) -> tuple[bool, bool]:
        """(write a checkpoint now, then stop) after optimizer step `done` of an epoch of `steps`;
        never at the epoch's last step (the epoch checkpoint follows, then stop_now decides)."""
        if done >= steps:
            return False, False
        counted = self.every_steps > 0 and done % self.every_steps == 0
        if self.session.world_size > 1 and done % self.agree_every:
            return counted, False  # time and signals are agreed on at the next agreement step
        due, stop = self._agreed(self._due(), self.stop.requested)
        return counted or due or stop, stop

    def stop_now(self) -> bool:
        """After an epoch's checkpoint: whether a signal came to any process."""
        return self._agreed(False, self.stop.requested)[1]

    def _due(self) -> bool:
        return self.every_seconds > 0 and time.monotonic() - self.last_written >= self.every_seconds

    def _agreed(self, due: bool, stop: bool) -> tuple[bool, bool]:
        """(due, stop) of any process: one all-reduce in a data-parallel run."""
        if self.session.world_size == 1:
            return due, stop
        flags = torch.tensor([float(due), float(stop)], device=self.session.device)
        due_any, stop_any = (self.session.mean(flags) > 0).tolist()
        return bool(due_any), bool(stop_any)


def epoch_position(step: StepDone, session: Session) -> dict[str, Any]:
    """The checkpoint's `state.position` after `step`: the sums of every process (one device sync;
    one all-gather in a data-parallel run, where every process must call this)."""
    sums = step.sums()
    mine = torch.tensor(
        [sums.loss_sum, float(sums.correct)], dtype=torch.float64, device=session.device
    )
    by_rank = [part.tolist() for part in session.gather(mine)]  # float64: float32 and counts exact
    return {
        "done": sums.done,
        "images": sums.images,
        "seen": list(sums.seen),
        "loss_sums": [loss for loss, _ in by_rank],
        "corrects": [int(correct) for _, correct in by_rank],
    }


def resumed_sums(position: dict[str, Any] | None, rank: int) -> EpochSums:
    """Process `rank`'s EpochSums from a checkpoint's `state.position`; an empty one (the epoch
    from its start) when there is none."""
    if not position:
        return EpochSums()
    loss, correct, micro, images = position["seen"]
    return EpochSums(
        position["done"],
        position["loss_sums"][rank],
        position["corrects"][rank],
        position["images"],
        (loss, correct, micro, images),
    )
