"""Checks a composed config before anything is built or written; each problem is one UserError
line."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .backbones import BACKBONES, INITS, build_model
from .config import flat_config
from .data import DATASETS
from .distributed import resolve_device, world_size
from .errors import UserError
from .fastpath import check_keys as check_fastpath_keys
from .norms import NORMS, RUNNING_STATS
from .optim import LR_SCALINGS, SCHEDULES
from .precise import ESTIMATORS as PRECISE_ESTIMATORS
from .progress import MODES as PROGRESS_MODES
from .values import as_bool, as_choice, as_fractions, as_int, as_number, did_you_mean


def validate(cfg: DictConfig) -> None:
    """Raises UserError naming the first bad value and how to fix it."""
    check_no_targets(cfg)
    check_known_keys(cfg)
    _registered("backbone", cfg.backbone.name, BACKBONES, "backbones")
    _registered("norm", cfg.norm.name, NORMS, "norms")
    _registered("data", cfg.data.name, DATASETS, "data")
    check_training(cfg)
    check_devices(cfg)
    check_optimizer(cfg)
    check_backbone_choices(cfg)
    check_logging(cfg)
    check_sync_bn(cfg)
    check_fastpath_keys(cfg)
    check_batch_statistics(cfg)
    check_model_builds(cfg)


def check_no_targets(cfg: DictConfig) -> None:
    """normbench builds only registered names: a `_target_` anywhere in the config is refused."""
    target = find_target(OmegaConf.to_container(cfg, resolve=False))
    if target:
        raise UserError(
            f"{target}: normbench never instantiates `_target_` classes from configs; "
            f"pick a registered name instead (normbench list)"
        )


def check_known_keys(cfg: DictConfig) -> None:
    """Every top-level key is one of the default config's (or `experiment`)."""
    allowed = {key.split(".")[0] for key in flat_config()}
    for key in cfg.keys():
        if key not in allowed and key != "experiment":
            raise UserError(
                f"unknown config key {key!r}{did_you_mean(str(key), allowed)}; "
                f"`normbench run --help` lists the keys"
            )


def _registered(kind: str, name: Any, registry: dict, listing: str) -> None:
    if name not in registry:
        raise UserError(
            f"unknown {kind} {name!r}{did_you_mean(str(name), registry)}; choose one of: "
            f"{', '.join(registry)} (normbench list {listing})"
        )


def _example(key: str, value: str) -> str:
    """The hint after a bad value: ": e.g. batch=32"."""
    return f": e.g. {key}={value}"


def _select(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key)


def _integers(cfg: DictConfig, minimum_and_example: dict[str, tuple[int, str]]) -> None:
    for key, (minimum, example) in minimum_and_example.items():
        as_int(_select(cfg, key), key, minimum=minimum, hint=_example(key, example))


def check_training(cfg: DictConfig) -> None:
    """Batch, accumulation, epochs, seed, the lr and its scaling, the device."""
    _integers(
        cfg,
        {
            "batch": (1, "32"),
            "devices": (1, "8"),
            "accum": (1, "8"),
            "epochs": (1, "10"),
            "seed": (0, "0"),
            "lr_ref_batch": (1, "256"),
        },
    )
    as_number(_select(cfg, "lr"), "lr", above=0, hint=_example("lr", "0.1"))
    as_choice(_select(cfg, "lr_scaling"), "lr_scaling", LR_SCALINGS)
    resolve_device(cfg.device)


def check_devices(cfg: DictConfig) -> None:
    """sgd_batch (null, or the SGD batch that devices is derived from: it must divide and agree
    with a devices setting; normbench.runs.resolve_devices derives it) and eval.running_stats."""
    as_choice(_select(cfg, "eval.running_stats"), "eval.running_stats", RUNNING_STATS)
    check_evaluation(cfg)
    sgd_batch = _select(cfg, "sgd_batch")
    if sgd_batch is None:
        return
    as_int(sgd_batch, "sgd_batch", minimum=1, hint=" (or null): e.g. sgd_batch=32")
    world = world_size()
    processes = f" * processes {world}" if world > 1 else ""
    per_device = cfg.batch * cfg.accum * world
    product = f"batch {cfg.batch} * accum {cfg.accum}{processes} = {per_device}"
    if sgd_batch % per_device:
        lower, higher = (
            sgd_batch // per_device * per_device,
            -(-sgd_batch // per_device) * per_device,
        )
        suggestion = f"sgd_batch={lower} or {higher}" if lower else f"sgd_batch={higher}"
        raise UserError(
            f"sgd_batch={sgd_batch} is not a multiple of {product}: use {suggestion} "
            "(or change batch/accum)"
        )
    derived = sgd_batch // per_device
    if cfg.devices in (1, derived):  # normbench.runs.resolve_devices makes it devices=derived
        return
    raise UserError(
        f"sgd_batch={sgd_batch} means devices={derived} ({sgd_batch} / ({product})), but "
        f"devices={cfg.devices} is set: give only one of them (devices={derived} or "
        f"sgd_batch={cfg.devices * per_device})"
    )


def check_evaluation(cfg: DictConfig) -> None:
    """eval.precise_batches (an int >= 0) and eval.precise_estimator."""
    as_int(
        _select(cfg, "eval.precise_batches"),
        "eval.precise_batches",
        minimum=0,
        hint=": e.g. eval.precise_batches=200 (0 = off)",
    )
    as_choice(_select(cfg, "eval.precise_estimator"), "eval.precise_estimator", PRECISE_ESTIMATORS)


def check_optimizer(cfg: DictConfig) -> None:
    """optim.*: the schedule, SGD's settings and the step schedule's milestones."""
    as_choice(_select(cfg, "optim.schedule"), "optim.schedule", SCHEDULES)
    numbers = {  # key -> (example, bounds)
        "optim.momentum": ("0.9", {"minimum": 0, "below": 1.0}),
        "optim.weight_decay": ("5e-4", {"minimum": 0}),
        "optim.norm_weight_decay": ("0", {"minimum": 0}),
        "optim.warmup_epochs": ("1", {"minimum": 0}),
        "optim.gamma": ("0.1", {"above": 0}),
    }
    for key, (example, bounds) in numbers.items():
        value = _select(cfg, key)
        if key == "optim.norm_weight_decay" and value is None:
            continue  # null: the norm parameters decay like the others
        as_number(value, key, **bounds, hint=_example(key, example))
    as_fractions(
        cfg.optim.milestones, "optim.milestones", hint=_example("optim.milestones", "[0.5,0.75]")
    )


def check_backbone_choices(cfg: DictConfig) -> None:
    """The choices the backbone's spec declares (e.g. LeNet's activation and pool), and the init."""
    for key, choices in BACKBONES[cfg.backbone.name].choices.items():
        as_choice(_select(cfg, f"backbone.{key}"), f"backbone.{key}", choices)
    if "fc_norm" in cfg.backbone:  # LeNet: norms after the hidden fc layers too, or convs only
        as_bool(_select(cfg, "backbone.fc_norm"), "backbone.fc_norm")
    as_choice(_select(cfg, "backbone.init"), "backbone.init", INITS)


def check_logging(cfg: DictConfig) -> None:
    as_choice(_select(cfg, "log.progress"), "log.progress", PROGRESS_MODES)
    _integers(cfg, {"log.every_steps": (1, "50"), "log.eval_batch": (1, "1000")})
    _integers(cfg, {"checkpoint.every_steps": (0, "500")})
    as_number(
        _select(cfg, "checkpoint.every_minutes"),
        "checkpoint.every_minutes",
        minimum=0,
        finite=True,
        hint=_example("checkpoint.every_minutes", "10"),
    )


def check_sync_bn(cfg: Any) -> None:
    """sync_bn must be true/false; true applies to the syncable norms (bn is converted to SyncBN,
    syncbn is already synced).

    Batch-independent norms have no batch statistics, so it changes nothing for them (the record
    says so). The other batch-dependent norms (brn, gbn, mabn, evonorm_b0) compute statistics in
    their own layers, which have no cross-process form: asking to synchronise them is an error
    rather than a silent no-op."""
    sync = as_bool(cfg.get("sync_bn", False), "sync_bn", hint=_example("sync_bn", "true"))
    name = cfg.norm.name
    spec = NORMS.get(name)
    if sync and spec is not None and spec.batch_dependent and not spec.syncable:
        raise UserError(
            f"sync_bn=true cannot synchronise norm={name}: its batch statistics are computed by "
            "its own layer, which has no cross-process form; use norm=bn (or syncbn) or "
            "sync_bn=false"
        )


def check_batch_statistics(cfg: DictConfig) -> None:
    """batch=1 leaves a batch-dependent norm no batch statistics on each device (however many
    devices there are)."""
    if cfg.batch == 1 and NORMS[cfg.norm.name].batch_dependent:
        batch_free = ", ".join(
            name for name, spec in NORMS.items() if not spec.batch_dependent and name != "none"
        )
        raise UserError(
            f"norm={cfg.norm.name} normalizes with batch statistics per device, which batch=1 "
            f"(images per device) does not have: use batch>=2 or a batch-independent norm "
            f"({batch_free})"
        )


def check_model_builds(cfg: DictConfig) -> None:
    """Builds the model once, shapes only, so a bad norm or backbone option (e.g. GN groups that do
    not divide a layer's width with norm.strict=true) fails here, as one line, before any file is
    written.

    The build runs on the meta device (no memory, no random init), so the run's real build is the
    only one that costs time; a layer that cannot be made on meta is built on the CPU instead."""
    try:
        try:
            with torch.device("meta"):
                build_model(cfg)
        except (NotImplementedError, RuntimeError):
            build_model(cfg)
    except (TypeError, ValueError) as error:
        raise UserError(
            f"cannot build backbone={cfg.backbone.name} with norm={cfg.norm.name}: {error}"
        ) from None


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
