"""What a run is before it trains: its plan (the deterministic run key, run dir, SGD batch, lr), and
the files of its run dir (config, checkpoint; the record is normbench.records)."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from . import distributed
from .config import IDENTITY_KEYS, changes_results, flat_config, flatten, group_defaults
from .files import atomic_write_bytes

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
        sgd_batch: images per optimizer step: batch * accum * world_size.
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


def run_key(cfg: DictConfig, non_default: dict[str, Any]) -> str:
    """`<data>-<backbone>-<norm>-b<batch>x<accum>-s<seed>`, `-w<world_size>` for a torchrun run of
    more than one process (a different experiment: its SGD batch is batch * accum * world_size),
    plus a short hash of the non-default settings."""
    key = (
        f"{cfg.data.name}-{cfg.backbone.name}-{cfg.norm.name}-b{cfg.batch}x{cfg.accum}-s{cfg.seed}"
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
