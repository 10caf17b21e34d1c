"""Checks a composed config before anything is built or written; each problem is one UserError
line."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import compose, did_you_mean
from .errors import UserError

LR_SCALINGS = ("linear", "sqrt", "none")
SCHEDULES = ("cosine", "step", "constant")
PROGRESS = ("auto", "bar", "plain", "none")
ACTIVATIONS = ("sigmoid", "relu")
POOLS = ("avg", "max")


def _int(cfg: DictConfig, key: str, minimum: int, example: str) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(
            f"{key} must be an integer >= {minimum}, got {value!r}: e.g. {key}={example}"
        )
    return value


def _number(
    cfg: DictConfig, key: str, example: str, *, positive: bool = False, below: float | None = None
) -> float:
    value = OmegaConf.select(cfg, key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > 0 if positive else value >= 0) and (below is None or value < below)
    if not ok:
        bound = "> 0" if positive else ">= 0"
        bound += f" and < {below}" if below is not None else ""
        raise UserError(f"{key} must be a number {bound}, got {value!r}: e.g. {key}={example}")
    return float(value)


def _choice(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> str:
    value = OmegaConf.select(cfg, key)
    if value not in choices:
        raise UserError(
            f"{key} must be one of {', '.join(choices)}, got "
            f"{value!r}{did_you_mean(str(value), choices)}"
        )
    return value


def _registered(kind: str, name: Any, registry: dict, listing: str) -> None:
    if name not in registry:
        raise UserError(
            f"unknown {kind} {name!r}{did_you_mean(str(name), registry)}; choose one "
            "of: "
            f"{', '.join(registry)} (normbench list {listing})"
        )


def find_target(node: Any, path: str = "") -> str | None:
    """Path of the first `_target_` key anywhere in the config, if any."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                return here
            found = find_target(value, here)
            if found:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found = find_target(value, f"{path}[{i}]")
            if found:
                return found
    return None


def validate(cfg: DictConfig) -> None:
    """Raises UserError naming the first bad value and how to fix it."""
    from .backbones import BACKBONES
    from .data import DATASETS
    from .distributed import check_sync_bn
    from .fastpath import check_keys as check_fastpath_keys
    from .norms import NORMS

    container = OmegaConf.to_container(cfg, resolve=False)
    target = find_target(container)
    if target:
        raise UserError(
            f"{target}: normbench never instantiates `_target_` classes from configs; "
            f"pick a registered name instead (normbench list)"
        )
    allowed = set(compose().keys())
    for key in cfg.keys():
        if key not in allowed and key != "experiment":
            raise UserError(
                f"unknown config key {key!r}{did_you_mean(str(key), allowed)}; "
                f"`normbench run --help` lists the keys"
            )

    _registered("backbone", cfg.backbone.name, BACKBONES, "backbones")
    _registered("norm", cfg.norm.name, NORMS, "norms")
    _registered("data", cfg.data.name, DATASETS, "data")

    batch = _int(cfg, "batch", 1, "32")
    _int(cfg, "accum", 1, "8")
    _int(cfg, "epochs", 1, "10")
    _int(cfg, "seed", 0, "0")
    _int(cfg, "lr_ref_batch", 1, "256")
    _number(cfg, "lr", "0.1", positive=True)
    _choice(cfg, "lr_scaling", LR_SCALINGS)
    _check_device(cfg.device)

    _choice(cfg, "optim.schedule", SCHEDULES)
    _number(cfg, "optim.momentum", "0.9", below=1.0)
    _number(cfg, "optim.weight_decay", "5e-4")
    if cfg.optim.norm_weight_decay is not None:
        _number(cfg, "optim.norm_weight_decay", "0")
    _number(cfg, "optim.warmup_epochs", "1")
    _number(cfg, "optim.gamma", "0.1", positive=True)
    milestones = cfg.optim.milestones
    if not all(isinstance(m, (int, float)) and 0 < m < 1 for m in milestones):
        raise UserError(
            "optim.milestones must be fractions of training in (0, 1), got "
            f"{list(milestones)}: "
            f"e.g. optim.milestones=[0.5,0.75]"
        )

    if cfg.backbone.name == "lenet":
        _choice(cfg, "backbone.activation", ACTIVATIONS)
        _choice(cfg, "backbone.pool", POOLS)
    _choice(cfg, "backbone.init", ("default", "xavier"))
    _choice(cfg, "log.progress", PROGRESS)
    _int(cfg, "log.every_steps", 1, "50")
    _int(cfg, "log.eval_batch", 1, "1000")

    check_sync_bn(cfg)
    check_fastpath_keys(cfg)
    if batch == 1 and NORMS[cfg.norm.name].batch_dependent:
        batch_free = ", ".join(
            name for name, spec in NORMS.items() if not spec.batch_dependent and name != "none"
        )
        raise UserError(
            f"norm={cfg.norm.name} normalizes with batch statistics, which batch=1 "
            "does not have: "
            f"use batch>=2 or a batch-independent norm ({batch_free})"
        )
    _check_model_builds(cfg)


def _check_model_builds(cfg: DictConfig) -> None:
    """Builds the model once on the CPU so a bad norm or backbone option (e.g. GN groups that do not
    divide a layer's width with norm.strict=true) fails here, as one line, before any file is
    written."""
    from .backbones import build_model

    try:
        build_model(cfg)
    except (TypeError, ValueError) as error:
        raise UserError(
            f"cannot build backbone={cfg.backbone.name} with norm={cfg.norm.name}: {error}"
        ) from None


def _check_device(device: Any) -> None:
    import torch

    if device in ("auto", "cpu"):
        return
    if not isinstance(device, str) or not (device == "cuda" or device.startswith("cuda:")):
        raise UserError(f"device must be auto, cpu or cuda (or cuda:N), got {device!r}")
    if not torch.cuda.is_available():
        raise UserError(
            "device=cuda but no CUDA GPU is visible to torch: use device=cpu or device=auto"
        )
