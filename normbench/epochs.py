"""A run's epochs: train, evaluate, checkpoint and record after each one, stop at divergence;
inside an epoch, a checkpoint every checkpoint.every_minutes / every_steps and on SIGTERM/SIGUSR1
(normbench.midepoch, normbench.preemption).

`EpochLoop` holds everything the loop needs as attributes; the runner builds it (normbench.runner)
and this module only trains. Only the main process writes the checkpoint and the record.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from .data import DataSource
from .distributed import Session
from .fastpath import FastPath, prepare_model
from .final_eval import final_evaluation
from .midepoch import MidEpochCheckpoints, epoch_position, resumed_sums
from .norms import NORMS
from .optim import LRSchedule
from .preemption import Preempted, StopRequest
from .records import RECORD_FILE, RunRecord, Status, sanity_warnings
from .runs import CHECKPOINT, save_checkpoint
from .train import EpochStats, StepDone, evaluate, train_epoch


@dataclass
class Training:
    """What a run trains with, built once per run (normbench.runner.build).

    Args:
        data: the data set, on this process's device.
        model: the plain module (its state_dict names are the checkpoint's).
        norm_modules: the norm layers the norm built (after SyncBN conversion, if any).
        layers_without_norm: the notes of NormChoice.skipped.
        optimizer, lr_at: SGD and its per-step lr schedule.
        generator: draws every epoch's order and augmentation; checkpointed (mid-epoch: its state
            at the epoch's start).
        steps_per_epoch: SGD steps per epoch (the last incomplete SGD batch is dropped).
    """

    data: DataSource
    model: nn.Module
    norm_modules: list[nn.Module]
    layers_without_norm: list[str]
    optimizer: torch.optim.Optimizer
    lr_at: LRSchedule
    generator: torch.Generator
    steps_per_epoch: int


@dataclass
class TrainState:
    """How far a run got; saved in every checkpoint as a dict with these keys."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    images: int = 0  # trained on, over all processes
    final: dict[str, Any] = field(default_factory=dict)  # normbench.final_eval, once it has run
    # a mid-epoch checkpoint's place in epoch `epoch + 1` (normbench.midepoch.epoch_position)
    position: dict[str, Any] | None = None


PROC_STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")  # writing "5" resets VmHWM to the current VmRSS (Linux)


def _proc_status_kib(name: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM)."""
    for line in PROC_STATUS.read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise ValueError(f"{name} not in {PROC_STATUS}")


class PeakMemory:
    """One run's peak memory, measured from when the meter starts (timing.peak_memory_mb, its
    kind in timing.peak_memory_kind):

    - `cuda_max_allocated`: the peak CUDA memory allocated by tensors (normbench.runner.build
      resets it once the run's data and model are on the GPU, so they count);
    - `rss_run_peak` (CPU, Linux): the resident set's high-water mark since the meter started
      (the kernel's VmHWM, reset through /proc/self/clear_refs at the start): this run's own peak,
      not that of earlier runs of the same process (a sweep); it includes the interpreter, torch and
      the data, which a difference from the start would leave out but which could then read 0 MB
      when the allocator reuses memory an earlier run freed;
    - `rss_process_peak` (CPU elsewhere): the process's lifetime peak resident set.

    The high-water mark is the process's: one meter at a time (runs of a process are sequential).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.kind = "cuda_max_allocated"
            return
        try:
            _release_freed_memory()  # what an earlier run of this process freed is not this run's
            CLEAR_REFS.write_text("5")
            self.kind = "rss_run_peak"
        except (OSError, ValueError):  # not Linux, or /proc not writable
            self.kind = "rss_process_peak"

    def mb(self) -> float:
        if self.kind == "cuda_max_allocated":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.kind == "rss_run_peak":
            return _proc_status_kib("VmHWM") / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _release_freed_memory() -> None:
    """glibc's malloc_trim: hand freed heap memory back to the kernel (a no-op without glibc)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class EpochLoop:
    """Trains a run from `state` to cfg.epochs, one checkpoint and record write per epoch.

    Args:
        cfg: the run's config.
        run_dir: where the checkpoint and record go.
        training: what it trains with.
        session: this process's part of the run (normbench.distributed.Session).
        record: the run's record, refreshed from `state` after each epoch.
        state: where training stands (resumed from a checkpoint, or fresh).
        identity: saved with each checkpoint (normbench.runs.result_identity).
        progress: the printer (a no-op off rank 0).
        writer: the run's normbench.tensorboard_log.RunBoard (a no-op off rank 0).
        stop: set by SIGTERM/SIGUSR1 (normbench.preemption.watch_signals).
    """

    cfg: DictConfig
    run_dir: Path
    training: Training
    session: Session
    record: RunRecord
    state: TrainState
    identity: dict[str, Any]
    progress: Any
    writer: Any
    stop: StopRequest = field(default_factory=StopRequest)
    memory: PeakMemory = field(init=False)
    checkpoints: MidEpochCheckpoints = field(init=False)
    _timed_since: float = field(init=False, default=0.0)  # perf_counter of the training time so far

    def __post_init__(self) -> None:
        self.memory = PeakMemory(self.session.device)
        self.checkpoints = MidEpochCheckpoints.from_config(self.cfg, self.session, self.stop)

    def save_record(self) -> None:
        """Write the record as it is (the main process only)."""
        if self.session.is_main:
            self.record.save(self.run_dir)

    def refresh_record(self) -> None:
        """Metrics, history and timing from the state so far, then write the record."""
        state = self.state
        self.record.update_from_history(
            state.history, state.train_seconds, state.images, self.memory.mb(), state.final
        )
        self.record.timing["peak_memory_kind"] = self.memory.kind
        self.save_record()

    def run(self) -> None:
        """Train the epochs not done yet; return when all are done or the run diverged. Preempted
        after the checkpoint a signal asked for."""
        # amp / channels_last / compile; training.model keeps the state_dict names
        fast = prepare_model(self.training.model, self.cfg, self.session.device)
        if fast.summary and self.state.epoch < self.cfg.epochs:
            self.progress.line(fast.summary)
        # the checkpoint has every epoch: the final evaluation or only record.json was lost
        if self.state.epoch == self.cfg.epochs and not math.isfinite(
            self.state.history[-1]["test_loss"]
        ):
            self.record.status = Status.DIVERGED
            self.save_record()
            return
        while self.state.epoch < self.cfg.epochs:
            if not self._epoch(self.state.epoch + 1, fast):
                return
            if self.checkpoints.stop_now():
                steps = self.training.steps_per_epoch
                raise Preempted(self.stop.signum, self.state.epoch, steps)
        self._finish(fast)

    def _finish(self, fast: FastPath) -> None:
        """After the last epoch: the final evaluation (unless a checkpoint has it), the checkpoint
        with the precise model, the record marked completed, a warning if its numbers say little."""
        if not self.state.final:
            outcome = final_evaluation(
                self.training.model,
                fast.model,
                self.cfg,
                self.training.data,
                self.session,
                self.state.history[-1]["test_error"],
                NORMS[self.cfg.norm.name].batch_dependent,
                fast.autocast,
            )
            self.state.final = outcome.results
            self._save_checkpoint(outcome.precise_state)
            self.writer.final(outcome.results["metrics"], self.cfg.epochs)
            self.progress.line(
                "final: "
                + "  ".join(f"{k} {v:.2f}%" for k, v in outcome.results["metrics"].items())
                + f"  ({outcome.results['seconds']:.1f}s)"
            )
        self.record.status = Status.COMPLETED
        self.refresh_record()
        warnings = sanity_warnings(self.record)
        if warnings:
            self.progress.notice(f"warning: {'; '.join(warnings)}: this run's numbers say little")

    def _epoch(self, epoch: int, fast: FastPath) -> bool:
        """Train, evaluate, checkpoint and record one epoch; False once the run diverged."""
        stats = self._train(epoch, fast)
        if not stats.finite:
            self.record.mark_diverged(epoch, stats.steps, str(stats.loss))
            self.refresh_record()
            self.progress.notice(
                f"warning: loss became non-finite at epoch {epoch}, step {stats.steps}; "
                f"run recorded as diverged in {self.record_path}"
            )
            return False
        entry = self._evaluate(epoch, stats, fast)
        if not math.isfinite(entry["test_loss"]):
            self.record.mark_diverged(epoch, stats.steps, f"test loss {entry['test_loss']}")
        self._save_checkpoint()
        self.refresh_record()
        val = f"val_error {entry['val_error']:.2f}%  " if "val_error" in entry else ""
        self.progress.line(
            f"epoch {epoch}/{self.cfg.epochs}  train_loss {stats.loss:.4f}  train_acc "
            f"{stats.acc:.4f}  {val}test_error {entry['test_error']:.2f}%  lr {entry['lr']:.4g}  "
            f"{self.state.train_seconds:.1f}s"
        )
        if self.record.status is Status.DIVERGED:
            self.progress.notice(
                f"warning: test loss is non-finite at epoch {epoch}; run recorded as diverged"
            )
            return False
        return True

    @property
    def record_path(self) -> Path:
        return self.run_dir / RECORD_FILE

    def _train(self, epoch: int, fast: FastPath) -> EpochStats:
        """One epoch of SGD steps (from a mid-epoch checkpoint's step, if the state has one),
        logged to TensorBoard every cfg.log.every_steps steps, checkpointed inside when
        self.checkpoints says so."""
        cfg, training, session, state = self.cfg, self.training, self.session, self.state
        steps = training.steps_per_epoch
        first_step = state.epoch * steps
        start = resumed_sums(state.position, session.rank)
        self.progress.start_epoch(epoch)

        sgd_batch = cfg.batch * cfg.devices * cfg.accum * session.world_size
        images_before = state.images - start.images * session.world_size  # at the epoch's start
        # the epoch's order and augmentation are drawn from this state (train_batches below)
        epoch_generator = training.generator.get_state()
        self._timed_since = time.perf_counter()

        def on_interval(done: int, loss: float, acc: float, lr: float) -> None:
            images = images_before + done * sgd_batch
            self.writer.train_interval(first_step + done, images, loss, acc, lr)

        def on_step(step: StepDone) -> None:
            images = step.images * session.world_size
            self.progress.step(step.done, images, step.loss, step.exact_loss is not None)
            write, stop = self.checkpoints.after_step(step.done, steps)
            if write:
                state.images = images_before + images
                self._save_mid_epoch(step, epoch_generator)
            if stop:
                raise Preempted(self.stop.signum, epoch, step.done)

        # draws this epoch's order (torchrun: the same in every process, each taking its shard);
        # micro-batches of batch * devices images, `batch` per simulated device (interleaved)
        batches = session.train_batches(
            training.data, cfg.batch, steps * cfg.accum, cfg.accum, training.generator
        )
        # resumed mid-epoch: the micro-batches of the steps done are made again and skipped
        batches = itertools.islice(batches, start.done * cfg.accum, None)
        stats = train_epoch(
            session.wrap(fast.model),
            training.optimizer,
            training.lr_at,
            first_step,
            batches,
            steps,
            cfg.accum,
            cfg.log.every_steps,
            on_interval,
            on_step,
            average=session.average,
            autocast=fast.autocast,
            start=start,
        )
        if session.device.type == "cuda":
            torch.cuda.synchronize(session.device)
        self._add_train_seconds()
        state.images = images_before + stats.images * session.world_size  # all devices, processes
        state.position = None
        return stats

    def _add_train_seconds(self) -> None:
        """The training time since the epoch started or the last mid-epoch checkpoint, added."""
        now = time.perf_counter()
        self.state.train_seconds += now - self._timed_since
        self._timed_since = now

    def _save_mid_epoch(self, step: StepDone, epoch_generator: torch.Tensor) -> None:
        """A checkpoint after `step` of the epoch that `epoch_generator` (the generator's state at
        the epoch's start) draws; every process takes part (the sums' all-gather)."""
        self._add_train_seconds()
        self.state.position = epoch_position(step, self.session)
        self._save_checkpoint(generator=epoch_generator)

    def _evaluate(self, epoch: int, stats: EpochStats, fast: FastPath) -> dict[str, Any]:
        """Test (and validation) loss and accuracy of rank 0's model, appended to the history and
        TensorBoard."""
        data, eval_batch = self.training.data, self.cfg.log.eval_batch
        test_loss, test_acc = self.session.on_main(
            lambda: evaluate(fast.model, data.test_batches(eval_batch), fast.autocast)
        )
        entry = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_acc": stats.acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "test_error": 100.0 * (1.0 - test_acc),
            "lr": self.training.lr_at(epoch * self.training.steps_per_epoch - 1),
            "train_seconds": self.state.train_seconds,
        }
        if data.val_size:
            val_loss, val_acc = self.session.on_main(
                lambda: evaluate(fast.model, data.val_batches(eval_batch), fast.autocast)
            )
            entry.update(val_loss=val_loss, val_error=100.0 * (1.0 - val_acc))
        self.state.history.append(entry)
        self.state.epoch = epoch
        self.writer.epoch(entry, self.state.images)
        return entry

    def _save_checkpoint(
        self,
        precise_state: dict[str, torch.Tensor] | None = None,
        generator: torch.Tensor | None = None,
    ) -> None:
        """Everything a resumed run needs to continue bit for bit (the main process only); after
        the final evaluation also the model with precise statistics (`model_precise`).
        `generator`: a mid-epoch checkpoint's generator state at the epoch's start."""
        self.checkpoints.written()
        if not self.session.is_main:
            return
        training = self.training
        checkpoint = {
            "identity": self.identity,
            "model": training.model.state_dict(),
            "optimizer": training.optimizer.state_dict(),
            "generator": training.generator.get_state() if generator is None else generator,
            "torch_rng": torch.get_rng_state(),
            "state": asdict(self.state),
        }
        if self.session.device.type == "cuda":  # dropout-like draws on the GPU, if a model has any
            checkpoint["cuda_rng"] = torch.cuda.get_rng_state(self.session.device)
        if precise_state is not None:
            checkpoint["model_precise"] = precise_state
        save_checkpoint(self.run_dir / CHECKPOINT, checkpoint)
