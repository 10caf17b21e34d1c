"""One `normbench run`: validate, pick the run dir, resume or start, train epoch by epoch, record
everything."""

from __future__ import annotations

import math
import resource
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from . import distributed
from .backbones import build_model, count_parameters
from .config import changes_results, flatten
from .data import load_data
from .errors import UserError
from .fastpath import prepare_model
from .files import atomic_write_bytes, claim_run, write_json
from .optim import LRSchedule, build_optimizer, scaled_lr
from .progress import RunProgress
from .runs import (
    CHECKPOINT,
    CONFIG,
    RECORD,
    environment,
    load_checkpoint,
    non_default_settings,
    read_record,
    run_key,
    save_checkpoint,
)
from .train import evaluate, train_epoch
from .validate import validate

# A run in one of these states is not trained again (unless --force): completed, or diverged
# (deterministic on a rerun, and resuming after a non-finite test loss would train on from a broken
# model).
FINAL_STATUSES = ("completed", "diverged")


@dataclass
class RunResult:
    run_dir: Path
    record: dict[str, Any]
    skipped: bool = False  # already completed or diverged: nothing was trained


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated by tensors, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def describe_norm_layers(model: torch.nn.Module, built: list[torch.nn.Module]) -> dict[str, str]:
    """{layer name in the model: the norm module's repr}, e.g. GN's groups per layer."""
    ids = {id(module) for module in built}
    return {name: repr(module) for name, module in model.named_modules() if id(module) in ids}


def summarize_norm_layers(layers: dict[str, str], listed: int = 6) -> str:
    """Every layer for small models; for big ones a count per module type (the full list is in
    record.json)."""
    if len(layers) <= listed:
        return "norm layers: " + (
            "; ".join(f"{name}: {text}" for name, text in layers.items()) or "none"
        )
    kinds = Counter(text.split("(")[0] for text in layers.values())
    return (
        f"norm layers: {len(layers)} "
        f"({', '.join(f'{n} x {kind}' for kind, n in kinds.items())}); "
        f"each layer's settings are in record.json under setup.norm_layers"
    )


def result_identity(cfg: DictConfig) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: every setting that can change results."""
    return {k: v for k, v in flatten(cfg).items() if changes_results(k)}


def run(
    cfg: DictConfig,
    choices: dict[str, str],
    overrides: list[str],
    user_config_dir: str | None = None,
    force: bool = False,
) -> RunResult:
    """One run; under torchrun, this process's part of a data-parallel run
    (normbench.distributed)."""
    validate(cfg)
    with distributed.session(resolve_device(cfg.device)) as device:
        return _run(cfg, choices, overrides, user_config_dir, force, device)


def _run(
    cfg: DictConfig,
    choices: dict[str, str],
    overrides: list[str],
    user_config_dir: str | None,
    force: bool,
    device: torch.device,
) -> RunResult:
    differ = non_default_settings(cfg, choices, user_config_dir)
    key = run_key(cfg, differ)
    run_dir = Path(cfg.out).expanduser() / "runs" / key
    previous = read_record(run_dir)
    if previous is not None and previous["status"] in FINAL_STATUSES and not force:
        return RunResult(run_dir, previous, skipped=True)

    # before any file is written: missing data leaves nothing behind
    data = load_data(cfg.data, device)
    torch.manual_seed(cfg.seed)
    model, norm_layer = build_model(cfg)
    # sync_bn=true: before DDP wraps the model
    distributed.convert_sync_bn(cfg, model, norm_layer.built)
    model.to(device)
    sgd_batch = cfg.batch * cfg.accum * distributed.world_size()
    # the last incomplete SGD batch of an epoch is dropped
    steps_per_epoch = data.train_size // sgd_batch
    if steps_per_epoch == 0:
        raise UserError(
            f"the training set has {data.train_size} images, fewer than one SGD batch "
            f"(batch*accum*world_size = {sgd_batch}): lower batch/accum or "
            "raise data.train_size"
        )
    lr = scaled_lr(cfg, sgd_batch)
    optimizer = build_optimizer(model, norm_layer.built, cfg, lr)
    lr_at = LRSchedule(cfg, lr, steps_per_epoch)
    generator = torch.Generator().manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # one live process trains a run: RunBusy (one line) while another one does
    claim = claim_run(run_dir)
    # again: the claim's last holder may have completed the run meanwhile
    previous = read_record(run_dir)
    if previous is not None and previous["status"] in FINAL_STATUSES and not force:
        claim.release()
        return RunResult(run_dir, previous, skipped=True)
    progress = (
        RunProgress(cfg.log.progress, cfg.epochs, steps_per_epoch)
        if distributed.is_main()
        else distributed.Silent()
    )  # torchrun: rank 0 prints
    state = {"epoch": 0, "history": [], "train_seconds": 0.0, "images": 0}
    checkpoint_path = run_dir / CHECKPOINT
    identity = result_identity(cfg)
    if previous is None and (run_dir / RECORD).exists():
        progress.notice(
            f"warning: {run_dir / RECORD} is unreadable (truncated or corrupt); rewriting it"
        )
    if checkpoint_path.exists() and not force:
        saved = load_checkpoint(checkpoint_path)
        if saved is None:
            progress.notice(
                f"warning: {checkpoint_path} is unreadable (truncated or corrupt); "
                "starting the run again"
            )
        # e.g. a config file's default changed: never overwrite its results
        elif saved["identity"] != identity:
            claim.release()
            progress.close()
            changed = sorted(
                k
                for k in {*saved["identity"], *identity}
                if saved["identity"].get(k) != identity.get(k)
            )
            raise UserError(
                f"{checkpoint_path} was written by a different config (differs in "
                f"{', '.join(changed[:4])})"
                f": delete {run_dir} or rerun with --force to start this run over"
            )
        else:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            generator.set_state(saved["generator"])
            torch.set_rng_state(saved["torch_rng"])
            state = saved["state"]
            progress.notice(f"resuming {key} after epoch {state['epoch']}")

    record: dict[str, Any] = {
        "status": "running",
        "run_key": key,
        "overrides": list(overrides),
        "non_default": differ,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "setup": {
            "sgd_batch": sgd_batch,
            **distributed.describe(model, cfg),
            "lr_scaled": lr,
            "steps_per_epoch": steps_per_epoch,
            "train_images": data.train_size,
            "test_images": data.test_size,
            "data_source": data.source,
            "data_pipeline": data.pipeline,
            "augment": data.augmentation != "none",
            "augmentation": data.augmentation,
            "parameters": count_parameters(model),
            "norm_layers": describe_norm_layers(model, norm_layer.built),
            "norm_groups": {
                name: module.num_groups
                for name, module in model.named_modules()
                if any(module is built for built in norm_layer.built)
                and hasattr(module, "num_groups")
            },
            "layers_without_norm": norm_layer.skipped,
        },
        "env": environment(device),
    }
    if distributed.is_main():  # torchrun: rank 0 writes the run's files
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / CONFIG, OmegaConf.to_yaml(cfg, resolve=True).encode())
    progress.line(
        f"run {key}: {cfg.backbone.name} + {cfg.norm.name}, batch {cfg.batch} x accum "
        f"{cfg.accum} "
        f"(SGD batch {sgd_batch}, lr {lr:.4g}), {data.train_size} train images "
        f"on {device}"
    )
    progress.line(
        f"data: {data.name} from {data.source} ({data.pipeline}); augmentation: {data.augmentation}"
    )
    progress.line(summarize_norm_layers(record["setup"]["norm_layers"]))
    for note in norm_layer.skipped:
        progress.line(f"note: {note}")

    from torch.utils.tensorboard import SummaryWriter

    # On resume, TensorBoard hides the killed attempt's steps after the checkpoint; the last step of
    # the last saved epoch (logged at epoch * steps_per_epoch) stays.
    purge_step = state["epoch"] * steps_per_epoch + 1 if state["epoch"] else None
    writer = (
        SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge_step)
        if distributed.is_main()
        else distributed.Silent()
    )
    try:
        _fill(record, state, device)
        write_json(run_dir / RECORD, record)
        _train_epochs(
            cfg,
            model,
            optimizer,
            lr_at,
            generator,
            data,
            state,
            record,
            run_dir,
            identity,
            writer,
            progress,
            steps_per_epoch,
        )
        if record["status"] == "completed":
            _log_hparams(writer, cfg, record["metrics"])
    except KeyboardInterrupt:
        record["status"] = "interrupted"
        write_json(run_dir / RECORD, record)
        raise
    except Exception as error:
        record["status"] = "failed"
        record["error"] = f"{type(error).__name__}: {error}"
        write_json(run_dir / RECORD, record)
        raise
    finally:
        writer.close()
        progress.close()
        data.close()
        claim.release()
    return RunResult(run_dir, record)


def _train_epochs(
    cfg,
    model,
    optimizer,
    lr_at,
    generator,
    data,
    state,
    record,
    run_dir,
    identity,
    writer,
    progress,
    steps_per_epoch,
) -> None:
    device = data.device
    # amp / channels_last / compile; `model` keeps the state_dict names
    fast = prepare_model(model, cfg, device)
    if fast.summary and state["epoch"] < cfg.epochs:
        progress.line(fast.summary)
    # the checkpoint has every epoch: only record.json was lost, rebuild it
    if state["epoch"] == cfg.epochs:
        record["status"] = (
            "completed" if math.isfinite(state["history"][-1]["test_loss"]) else "diverged"
        )
        write_json(run_dir / RECORD, record)
    while state["epoch"] < cfg.epochs:
        epoch = state["epoch"] + 1
        first_step = state["epoch"] * steps_per_epoch
        progress.start_epoch(epoch)

        def on_interval(
            done: int, loss: float, acc: float, lr: float, first_step: int = first_step
        ) -> None:
            writer.add_scalar("train/loss", loss, first_step + done)
            writer.add_scalar("train/acc", acc, first_step + done)
            writer.add_scalar("train/lr", lr, first_step + done)
            progress.status(f"loss {loss:.4f}")

        started = time.perf_counter()
        # draws this epoch's order (torchrun: the same in every process, each taking its shard)
        batches = distributed.train_batches(
            data, cfg.batch, steps_per_epoch * cfg.accum, cfg.accum, generator
        )
        stats = train_epoch(
            distributed.data_parallel(fast.model),
            optimizer,
            lr_at,
            first_step,
            batches,
            steps_per_epoch,
            cfg.accum,
            cfg.log.every_steps,
            on_interval,
            progress.advance,
            average=distributed.averager(),
            autocast=fast.autocast,
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        state["train_seconds"] += time.perf_counter() - started
        state["images"] += stats.images * distributed.world_size()  # over all processes
        if not stats.finite:
            record["status"] = "diverged"
            record["diverged_at"] = {"epoch": epoch, "step": stats.steps, "loss": str(stats.loss)}
            _fill(record, state, device)
            write_json(run_dir / RECORD, record)
            progress.notice(
                f"warning: loss became non-finite at epoch {epoch}, step "
                f"{stats.steps}; "
                f"run recorded as diverged in {run_dir / RECORD}"
            )
            return
        test_loss, test_acc = distributed.on_main(
            lambda: evaluate(fast.model, data.test_batches(cfg.log.eval_batch), fast.autocast)
        )
        entry = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_acc": stats.acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "test_error": 100.0 * (1.0 - test_acc),
            "lr": lr_at(epoch * steps_per_epoch - 1),
            "train_seconds": state["train_seconds"],
        }
        state["history"].append(entry)
        state["epoch"] = epoch
        for name in ("train_loss", "train_acc", "test_loss", "test_acc", "test_error"):
            writer.add_scalar(f"epoch/{name}", entry[name], epoch)
        writer.flush()
        if not math.isfinite(test_loss):
            record["status"] = "diverged"
            record["diverged_at"] = {
                "epoch": epoch,
                "step": stats.steps,
                "loss": f"test loss {test_loss}",
            }
        elif epoch == cfg.epochs:
            record["status"] = "completed"
        save_checkpoint(
            run_dir / CHECKPOINT,
            {
                "identity": identity,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "state": state,
            },
        )
        _fill(record, state, device)
        write_json(run_dir / RECORD, record)
        progress.line(
            f"epoch {epoch}/{cfg.epochs}  train_loss {stats.loss:.4f}  train_acc "
            f"{stats.acc:.4f}  "
            f"test_error {entry['test_error']:.2f}%  lr {entry['lr']:.4g}  "
            f"{state['train_seconds']:.1f}s"
        )
        if record["status"] == "diverged":
            progress.notice(
                f"warning: test loss is non-finite at epoch {epoch}; run recorded as diverged"
            )
            return


def _fill(record: dict[str, Any], state: dict[str, Any], device: torch.device) -> None:
    """Metrics, history and timing of the record from the run state so far."""
    history = state["history"]
    record["history"] = history
    if history:
        last = history[-1]
        errors = [entry["test_error"] for entry in history]
        record["metrics"] = {
            "test_error": last["test_error"],
            "test_acc": last["test_acc"],
            "best_test_error": min(errors),
            "median5_test_error": statistics.median(errors[-5:]),  # the GN paper reports this
            "train_loss": last["train_loss"],
            "train_acc": last["train_acc"],
            "test_loss": last["test_loss"],
            "epochs_done": last["epoch"],
        }
    else:
        record["metrics"] = {
            "test_error": None,
            "test_acc": None,
            "best_test_error": None,
            "median5_test_error": None,
            "train_loss": None,
            "train_acc": None,
            "test_loss": None,
            "epochs_done": 0,
        }
    seconds = state["train_seconds"]
    record["timing"] = {
        "train_seconds": seconds,
        "images_per_second": state["images"] / seconds if seconds else None,
        "peak_memory_mb": peak_memory_mb(device),
    }


def _log_hparams(writer, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """TensorBoard HPARAMS: flat config and final metrics, in the run's own folder
    (run_name=".")."""
    hparams = {
        k: (v if isinstance(v, (int, float, str, bool)) else str(v))
        for k, v in flatten(cfg).items()
    }
    finals = {f"hparam/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
    writer.add_hparams(hparams, finals, run_name=".")
