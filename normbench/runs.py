"""What a run is before it trains: its plan (the deterministic run key, run dir, SGD batch, lr), and
the files of its run dir (config, checkpoint; the record is normbench.records)."""

from __future__ import annotations

import copy
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from . import distributed
from .config import (
    IDENTITY_KEYS,
    changes_results,
    flat_config,
    flatten,
    group_defaults,
    with_added_keys,
)
from .files import atomic_write_bytes
from .values import is_int

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"


@dataclass(frozen=True)
class RunPlan:
    """One run, decided from its config alone (normbench.runner.plan_run): nothing loaded or
    written yet.

    Args:
        cfg: the validated, composed config.
        overrides: the command-line overrides it was composed from (for the record).
        non_default: settings that differ from the chosen configs' defaults (the key's hash).
        key: the run key, the run dir's name.
        run_dir: `<out>/runs/<key>`.
        sgd_batch: images per optimizer step: batch * devices * accum * world_size.
        lr: the base lr scaled to the SGD batch.
        identity: what a checkpoint must match to be resumed (result_identity).
    """

    cfg: DictConfig
    overrides: list[str]
    non_default: dict[str, Any]
    key: str
    run_dir: Path
    sgd_batch: int
    lr: float
    identity: dict[str, Any]


def non_default_settings(
    cfg: DictConfig, choices: dict[str, str], user_config_dir: str | None = None
) -> dict[str, Any]:
    """Settings that differ from the defaults of the chosen backbone/norm/data/optim configs,
    leaving out the keys already in the run key and those that never change results (out, device,
    log)."""
    # a group left at its default is not named: the default run's baseline is the default config,
    # composed once per process for validation anyway
    defaults = group_defaults(user_config_dir)
    picked = [
        f"{group}={option}" for group, option in choices.items() if defaults.get(group) != option
    ]
    baseline = flat_config(picked, user_config_dir)
    skip = set(IDENTITY_KEYS)
    non_default = {}
    for key, value in flatten(cfg).items():
        if key in skip or not changes_results(key):
            continue
        if key not in baseline or baseline[key] != value:
            non_default[key] = value
    return non_default


def resolve_devices(cfg: DictConfig, world_size: int) -> DictConfig:
    """`cfg` with `sgd_batch` turned into `devices`: a copy with devices = sgd_batch / (batch *
    accum * world_size) and sgd_batch null, so `sgd_batch=32 batch=2` is the run `devices=16
    batch=2` (same key, same identity). `cfg` itself when sgd_batch is null, or when its values do
    not resolve (not integers, not dividing, or a devices setting that disagrees): validation
    reports those."""
    sgd_batch, batch, accum, devices = (
        cfg.get(k) for k in ("sgd_batch", "batch", "accum", "devices")
    )
    if not all(is_int(v) and v >= 1 for v in (sgd_batch, batch, accum, devices)):
        return cfg
    per_device = batch * accum * world_size
    if sgd_batch % per_device or devices not in (1, sgd_batch // per_device):
        return cfg
    resolved = copy.deepcopy(cfg)
    resolved.devices, resolved.sgd_batch = sgd_batch // per_device, None
    return resolved


def run_key(cfg: DictConfig, non_default: dict[str, Any]) -> str:
    """`<data>-<backbone>-<norm>-b<batch>x<accum>-s<seed>` (`b<batch>d<devices>x<accum>` with
    devices > 1), `-w<world_size>` for a torchrun run of more than one process (a different
    experiment: its SGD batch is batch * devices * accum * world_size), plus a short hash of the
    non-default settings."""
    devices = f"d{cfg.devices}" if cfg.devices > 1 else ""
    key = (
        f"{cfg.data.name}-{cfg.backbone.name}-{cfg.norm.name}-"
        f"b{cfg.batch}{devices}x{cfg.accum}-s{cfg.seed}"
    )
    if distributed.world_size() > 1:
        key += f"-w{distributed.world_size()}"
    if non_default:
        digest = hashlib.sha1(
            json.dumps(non_default, sort_keys=True, default=str).encode()
        ).hexdigest()[:8]
        key += f"-{digest}"
    return key


def result_identity(cfg: DictConfig) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: every setting that can change results."""
    return {k: v for k, v in flatten(cfg).items() if changes_results(k)}


def identity_changes(saved: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """The settings in which a checkpoint's identity differs from this run's, sorted; a checkpoint
    written before a key was added (config.ADDED_KEYS, e.g. `devices`) has its old value."""
    saved = with_added_keys(saved)
    return sorted(key for key in {*saved, *ours} if saved.get(key) != ours.get(key))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint's state (tensors and plain Python only: weights_only=True), or None if
    unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # a truncated or foreign file (or one holding arbitrary pickled objects): restart, say so
    except Exception:
        return None
    return state if isinstance(state, dict) and isinstance(state.get("identity"), dict) else None
