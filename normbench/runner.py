"""One `normbench run`, as a pipeline: plan (pure) -> build (data, model, optimizer) -> claim and
resume -> train epoch by epoch (normbench.epochs) -> the record says how it ended. SIGTERM and
SIGUSR1 stop it at a checkpoint while it trains (normbench.preemption).

Under torchrun every process runs this pipeline with its own Session (normbench.distributed); the
main process alone claims the run and writes its files.
"""

from __future__ import annotations

from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import torch
from omegaconf import DictConfig, OmegaConf

from . import distributed
from .backbones import build_model
from .data import load_data
from .distributed import Session
from .epochs import EpochLoop, Training, TrainState
from .errors import UserError
from .facts import new_record, summarize_norm_layers
from .files import atomic_write_bytes, claim_run
from .norms.sync_batch_norm import convert_sync_bn
from .norms.weight_norm import data_dependent_init, first_batch
from .optim import LRSchedule, build_optimizer, scaled_lr
from .preemption import Preempted, StopRequest, watch_signals
from .records import RECORD_FILE, RunRecord, Status
from .runs import (
    CHECKPOINT,
    CONFIG,
    RunPlan,
    identity_changes,
    load_checkpoint,
    non_default_settings,
    resolve_devices,
    result_identity,
    run_key,
)
from .tensorboard_log import run_hparams, trial_id
from .validate import validate


@dataclass
class RunResult:
    run_dir: Path
    record: RunRecord
    skipped: bool = False  # already completed or diverged: nothing was trained


def run(
    cfg: DictConfig,
    choices: dict[str, str],
    overrides: list[str],
    user_config_dir: str | None = None,
    force: bool = False,
) -> RunResult:
    """One run; under torchrun, this process's part of a data-parallel run."""
    return run_planned(plan_run(cfg, choices, overrides, user_config_dir), force)


def plan_run(
    cfg: DictConfig,
    choices: dict[str, str],
    overrides: list[str],
    user_config_dir: str | None = None,
) -> RunPlan:
    """Validate `cfg` (UserError naming the first bad value) and decide the run's key, dir, SGD
    batch and lr; reads no run file and writes nothing. An `sgd_batch` setting becomes the
    `devices` it implies first (normbench.runs.resolve_devices), so the plan's config has it.

    Args:
        cfg: the composed config.
        choices: {config group: option} it was composed with (the defaults the key hashes against).
        overrides: the command-line overrides, kept in the record.
        user_config_dir: the extra config folder, if any.
    """
    world_size = distributed.world_size()
    cfg = resolve_devices(cfg, world_size)
    validate(cfg)
    non_default = non_default_settings(cfg, choices, user_config_dir)
    key = run_key(cfg, non_default)
    sgd_batch = cfg.batch * cfg.devices * cfg.accum * world_size
    return RunPlan(
        cfg=cfg,
        overrides=list(overrides),
        non_default=non_default,
        key=key,
        run_dir=Path(cfg.out).expanduser() / "runs" / key,
        sgd_batch=sgd_batch,
        lr=scaled_lr(cfg, sgd_batch),
        identity=result_identity(cfg),
    )


def run_planned(plan: RunPlan, force: bool = False) -> RunResult:
    """Train the planned run, resuming its checkpoint; a final run is skipped unless `force`.
    Preempted when SIGTERM/SIGUSR1 stopped it (normbench.preemption.watch_signals)."""
    previous = RunRecord.load(plan.run_dir)
    if is_final(previous, force):
        return RunResult(plan.run_dir, previous, skipped=True)
    # outermost: a chained handler (submitit's requeue) runs once the run's files are released
    with watch_signals() as stop:
        return _train_planned(plan, force, stop)


def _train_planned(plan: RunPlan, force: bool, stop: StopRequest) -> RunResult:
    """run_planned's work inside the signal watch."""
    cfg = plan.cfg
    with (
        distributed.session(distributed.resolve_device(cfg.device), cfg.devices) as session,
        ExitStack() as on_exit,
    ):
        # before any file is written: missing data leaves nothing behind
        training = build(plan, session)
        on_exit.callback(training.data.close)
        if session.is_main:  # one live process trains a run (RunBusy otherwise); rank 0 for all
            on_exit.callback(claim_run(plan.run_dir).release)
        # again: the claim's last holder may have completed the run meanwhile
        previous = RunRecord.load(plan.run_dir)
        if is_final(previous, force):
            return RunResult(plan.run_dir, previous, skipped=True)
        steps = training.steps_per_epoch
        progress = on_exit.enter_context(
            closing(session.progress(cfg.log.progress, cfg.epochs, steps))
        )
        state = resume(plan, training, progress, force, previous)
        record = new_record(plan, training, session)
        if state.epoch or state.position:  # resumed from a checkpoint
            record.resumed_from = resumed_from(state, steps)
        if session.is_main:
            atomic_write_bytes(plan.run_dir / CONFIG, OmegaConf.to_yaml(cfg, resolve=True).encode())
        announce(plan, training, record, session, progress)
        # On resume, TensorBoard hides the killed attempt's steps after the checkpoint; the last
        # step of the last saved epoch (logged at epoch * steps_per_epoch) stays.
        done = state.epoch * steps + (state.position or {}).get("done", 0)
        purge_step = done + 1 if done else None
        writer = on_exit.enter_context(closing(session.writer(plan.run_dir / "tb", purge_step)))
        writer.start(
            run_hparams(cfg, plan.sgd_batch, plan.lr, plan.non_default),
            trial_id(cfg, plan.key),
            state.history,
        )
        loop = EpochLoop(
            cfg,
            plan.run_dir,
            training,
            session,
            record,
            state,
            plan.identity,
            progress,
            writer,
            stop,
        )
        train_and_record(loop)
    return RunResult(plan.run_dir, record)


def is_final(record: RunRecord | None, force: bool) -> TypeGuard[RunRecord]:
    """The run is done (completed or diverged) and not `force`d again."""
    return record is not None and record.status.final and not force


def build(plan: RunPlan, session: Session) -> Training:
    """Data, model (SyncBN-converted with sync_bn=true), optimizer and lr schedule of the run, on
    this process's device; writes nothing."""
    cfg, device = plan.cfg, session.device
    data = load_data(cfg.data, device)
    steps_per_epoch = data.train_size // plan.sgd_batch  # the last incomplete SGD batch is dropped
    if steps_per_epoch == 0:
        data.close()
        raise UserError(
            f"the training set has {data.train_size} images, fewer than one SGD batch "
            f"(batch*devices*accum*world_size = {plan.sgd_batch}): lower batch/devices/accum or "
            "raise data.train_size"
        )
    torch.manual_seed(cfg.seed)
    model, norm_layer = build_model(cfg)
    norm_modules = norm_layer.built
    if cfg.get("sync_bn", False):  # before the Session wraps the model
        norm_modules = convert_sync_bn(model, norm_modules)
    model.to(device)
    if cfg.norm.get("init") == "data":  # Weight Normalization's data-dependent init (norm=wn*)
        data_dependent_init(model, first_batch(data, cfg.batch * cfg.devices, cfg.seed))
    optimizer = build_optimizer(model, norm_modules, cfg, plan.lr)
    lr_at = LRSchedule(cfg, plan.lr, steps_per_epoch)
    generator = torch.Generator().manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return Training(
        data, model, norm_modules, norm_layer.skipped, optimizer, lr_at, generator, steps_per_epoch
    )


def resume(
    plan: RunPlan, training: Training, progress: Any, force: bool, previous: RunRecord | None
) -> TrainState:
    """Load the run's checkpoint into `training` and return where it stopped; a fresh state when
    there is none (or `force`). UserError when the checkpoint belongs to another config.
    `previous`: the run's record as read after claiming it (None: missing or unreadable)."""
    run_dir, checkpoint_path = plan.run_dir, plan.run_dir / CHECKPOINT
    if previous is None and (run_dir / RECORD_FILE).exists():
        progress.notice(
            f"warning: {run_dir / RECORD_FILE} is unreadable (truncated or corrupt); rewriting it"
        )
    if not checkpoint_path.exists() or force:
        return TrainState()
    saved = load_checkpoint(checkpoint_path)
    if saved is None:
        progress.notice(
            f"warning: {checkpoint_path} is unreadable (truncated or corrupt); "
            "starting the run again"
        )
        return TrainState()
    # e.g. a config file's default changed: never overwrite its results
    changed = identity_changes(saved["identity"], plan.identity)
    if changed:
        raise UserError(
            f"{checkpoint_path} was written by a different config (differs in "
            f"{', '.join(changed[:4])})"
            f": delete {run_dir} or rerun with --force to start this run over"
        )
    training.model.load_state_dict(saved["model"])
    training.optimizer.load_state_dict(saved["optimizer"])
    training.generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    if "cuda_rng" in saved and training.data.device.type == "cuda":
        torch.cuda.set_rng_state(saved["cuda_rng"], training.data.device)
    state = TrainState(**saved["state"])
    where = resumed_from(state, training.steps_per_epoch)
    if where["step"] == training.steps_per_epoch:
        progress.notice(f"resuming {plan.key} after epoch {state.epoch}")
    else:
        progress.notice(f"resuming {plan.key} in epoch {where['epoch']} after step {where['step']}")
    return state


def resumed_from(state: TrainState, steps_per_epoch: int) -> dict[str, int]:
    """The record's `resumed_from`: `step` optimizer steps done in epoch `epoch` (a whole epoch
    after an epoch checkpoint, as in `interrupted_at`)."""
    if state.position:
        return {"epoch": state.epoch + 1, "step": state.position["done"]}
    return {"epoch": state.epoch, "step": steps_per_epoch}


def announce(
    plan: RunPlan, training: Training, record: RunRecord, session: Session, progress: Any
) -> None:
    """The run's opening lines: what trains on what, the data, the norm layers."""
    cfg, data = plan.cfg, training.data
    devices = f" x {cfg.devices} devices" if cfg.devices > 1 else ""
    processes = f" x {session.world_size} processes" if session.world_size > 1 else ""
    progress.line(
        f"run {plan.key}: {cfg.backbone.name} + {cfg.norm.name}, batch {cfg.batch}{devices} x "
        f"accum {cfg.accum}{processes} (SGD batch {plan.sgd_batch}, lr {plan.lr:.4g}), "
        f"{data.train_size} train images on {session.device}"
    )
    progress.line(
        f"data: {data.name} from {data.source} ({data.pipeline}); augmentation: {data.augmentation}"
    )
    progress.line(summarize_norm_layers(record.setup["norm_layers"]))
    for note in training.layers_without_norm:
        progress.line(f"note: {note}")


def train_and_record(loop: EpochLoop) -> None:
    """Run the loop; the record (and TensorBoard's run/status) ends completed, diverged,
    interrupted (Ctrl-C; a signal, with `interrupted_at`) or failed."""
    try:
        loop.refresh_record()
        loop.run()
    except KeyboardInterrupt:
        loop.record.status = Status.INTERRUPTED
        loop.save_record()
        raise
    except Preempted as stop:
        loop.record.status = Status.INTERRUPTED
        loop.record.interrupted_at = stop.where()
        loop.refresh_record()
        raise
    except Exception as error:
        loop.record.mark_failed(error)
        loop.save_record()
        raise
    finally:
        loop.writer.end(str(loop.record.status), loop.state.epoch, loop.record.metrics)
