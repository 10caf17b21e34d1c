"""A run's epochs: train, evaluate, checkpoint and record after each one, stop at divergence.

`EpochLoop` holds everything the loop needs as attributes; the runner builds it (normbench.runner)
and this module only trains. Only the main process writes the checkpoint and the record.
"""

from __future__ import annotations

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
from .norms import NORMS
from .optim import LRSchedule
from .records import RECORD_FILE, RunRecord, Status, sanity_warnings
from .runs import CHECKPOINT, save_checkpoint
from .train import EpochStats, evaluate, train_epoch


@dataclass
class Training:
    """What a run trains with, built once per run (normbench.runner.build).

    Args:
        data: the data set, on this process's device.
        model: the plain module (its state_dict names are the checkpoint's).
        norm_modules: the norm layers the norm built (after SyncBN conversion, if any).
        layers_without_norm: the notes of NormChoice.skipped.
        optimizer, lr_at: SGD and its per-step lr schedule.
        generator: draws every epoch's order and augmentation; checkpointed.
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


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated by tensors, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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
        writer: the TensorBoard writer (a no-op off rank 0).
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

    def save_record(self) -> None:
        """Write the record as it is (the main process only)."""
        if self.session.is_main:
            self.record.save(self.run_dir)

    def refresh_record(self) -> None:
        """Metrics, history and timing from the state so far, then write the record."""
        state = self.state
        memory = peak_memory_mb(self.session.device)
        self.record.update_from_history(
            state.history, state.train_seconds, state.images, memory, state.final
        )
        self.save_record()

    def run(self) -> None:
        """Train the epochs not done yet; return when all are done or the run diverged."""
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
            for name, value in outcome.results["metrics"].items():
                self.writer.add_scalar(f"final/{name}", value, self.cfg.epochs)
            self.writer.flush()
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
        """One epoch of SGD steps, logged to TensorBoard every cfg.log.every_steps steps."""
        cfg, training, session = self.cfg, self.training, self.session
        steps = training.steps_per_epoch
        first_step = self.state.epoch * steps
        self.progress.start_epoch(epoch)

        def on_interval(done: int, loss: float, acc: float, lr: float) -> None:
            self.writer.add_scalar("train/loss", loss, first_step + done)
            self.writer.add_scalar("train/acc", acc, first_step + done)
            self.writer.add_scalar("train/lr", lr, first_step + done)
            self.progress.status(f"loss {loss:.4f}")

        started = time.perf_counter()
        # draws this epoch's order (torchrun: the same in every process, each taking its shard);
        # micro-batches of batch * devices images, `batch` per simulated device (interleaved)
        batches = session.train_batches(
            training.data, cfg.batch, steps * cfg.accum, cfg.accum, training.generator
        )
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
            self.progress.advance,
            average=session.average,
            autocast=fast.autocast,
        )
        if session.device.type == "cuda":
            torch.cuda.synchronize(session.device)
        self.state.train_seconds += time.perf_counter() - started
        self.state.images += stats.images * session.world_size  # all devices of all processes
        return stats

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
        for name in ("train_loss", "train_acc", "test_loss", "test_acc", "test_error"):
            self.writer.add_scalar(f"epoch/{name}", entry[name], epoch)
        for name in ("val_loss", "val_error"):
            if name in entry:
                self.writer.add_scalar(f"epoch/{name}", entry[name], epoch)
        self.writer.flush()
        return entry

    def _save_checkpoint(self, precise_state: dict[str, torch.Tensor] | None = None) -> None:
        """Everything a resumed run needs to continue bit for bit (the main process only); after
        the final evaluation also the model with precise statistics (`model_precise`)."""
        if not self.session.is_main:
            return
        training = self.training
        checkpoint = {
            "identity": self.identity,
            "model": training.model.state_dict(),
            "optimizer": training.optimizer.state_dict(),
            "generator": training.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "state": asdict(self.state),
        }
        if precise_state is not None:
            checkpoint["model_precise"] = precise_state
        save_checkpoint(self.run_dir / CHECKPOINT, checkpoint)
