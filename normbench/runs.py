"""Run directories: the deterministic run key, atomic record/checkpoint writes, and environment
facts."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from . import __version__, distributed
from .config import IDENTITY_KEYS, changes_results, compose, flatten
from .files import atomic_write_bytes

RECORD = "record.json"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"


def non_default_settings(
    cfg: DictConfig, choices: dict[str, str], user_config_dir: str | None = None
) -> dict[str, Any]:
    """Settings that differ from the defaults of the chosen backbone/norm/data/optim configs,
    leaving out the keys already in the run key and those that never change results (out, device,
    log)."""
    baseline = flatten(
        compose([f"{group}={option}" for group, option in choices.items()], user_config_dir)
    )
    skip = set(IDENTITY_KEYS)
    differ = {}
    for key, value in flatten(cfg).items():
        if key in skip or not changes_results(key):
            continue
        if key not in baseline or baseline[key] != value:
            differ[key] = value
    return differ


def run_key(cfg: DictConfig, differ: dict[str, Any]) -> str:
    """`<data>-<backbone>-<norm>-b<batch>x<accum>-s<seed>`, `-w<world_size>` for a torchrun run of
    more than one process (a different experiment: its SGD batch is batch * accum * world_size),
    plus a short hash of the non-default settings."""
    key = (
        f"{cfg.data.name}-{cfg.backbone.name}-{cfg.norm.name}-b{cfg.batch}x{cfg.accum}-s{cfg.seed}"
    )
    if distributed.world_size() > 1:
        key += f"-w{distributed.world_size()}"
    if differ:
        digest = hashlib.sha1(json.dumps(differ, sort_keys=True, default=str).encode()).hexdigest()[
            :8
        ]
        key += f"-{digest}"
    return key


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's record, or None when there is none or it cannot be parsed (e.g. cut short by a full
    disk)."""
    try:
        record = json.loads((run_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "status" in record else None


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import io

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


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "normbench": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env
