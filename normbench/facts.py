"""The record a run starts with: what the config implies (SGD batch, scaled lr, norm layers, data,
data parallelism) and the machine it runs on. normbench.records owns the record's type; this module
fills it with facts that need torch."""

from __future__ import annotations

import os
import platform
from collections import Counter
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import __version__
from .backbones import count_parameters
from .distributed import Session
from .epochs import Training
from .norms import NORMS, sync_world_size
from .records import RunRecord, Status
from .runs import RunPlan


def new_record(plan: RunPlan, training: Training, session: Session) -> RunRecord:
    """The record of a run that starts (or resumes) training: status running, no epochs yet."""
    config = OmegaConf.to_container(plan.cfg, resolve=True)
    assert isinstance(config, dict)  # a DictConfig resolves to a dict
    return RunRecord(
        status=Status.RUNNING,
        run_key=plan.key,
        overrides=list(plan.overrides),
        non_default=plan.non_default,
        config={str(key): value for key, value in config.items()},
        setup=setup_facts(plan, training, session),
        env=environment(session.device),
    )


def setup_facts(plan: RunPlan, training: Training, session: Session) -> dict[str, Any]:
    """The record's `setup`: what the config implies for this run, in the order it is written."""
    data, model, built = training.data, training.model, training.norm_modules
    built_ids = {id(module) for module in built}
    return {
        "sgd_batch": plan.sgd_batch,
        **data_parallel_facts(model, plan.cfg, session.world_size),
        "lr_scaled": plan.lr,
        "steps_per_epoch": training.steps_per_epoch,
        "train_images": data.train_size,
        "test_images": data.test_size,
        "val_images": data.val_size,
        "val_split": (
            f"{data.val_size} training images held out, stratified by class and drawn with "
            f"data.subset_seed={plan.cfg.data.get('subset_seed', 0)} (not the run's seed) before "
            "the training subset, so disjoint from it; selection (best_val_epoch) uses them"
            if data.val_size
            else "none: nothing is selected on held-out data"
        ),
        "data_source": data.source,
        "data_pipeline": data.pipeline,
        "augment": data.augmentation != "none",
        "augmentation": data.augmentation,
        "parameters": count_parameters(model),
        "norm_layers": describe_norm_layers(model, built),
        # a plugin norm's module (normbench.plugins): its code is not part of the run key
        "norm_plugin": NORMS[plan.cfg.norm.name].plugin,
        "norm_groups": {
            name: module.num_groups
            for name, module in model.named_modules()
            if id(module) in built_ids and hasattr(module, "num_groups")
        },
        "layers_without_norm": training.layers_without_norm,
    }


def data_parallel_facts(model: nn.Module, cfg: DictConfig, world_size: int) -> dict[str, Any]:
    """world_size, simulated devices, accum, whether BN is synchronised, and over how many images a
    batch-dependent norm's training statistics are taken (`norm_batch`: batch per device, or
    batch * devices * synced processes for SyncBN; null for batch-independent norms)."""
    synced = any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    synced_over = cfg.devices * sync_world_size(model) if synced else 1
    batch_dependent = NORMS[cfg.norm.name].batch_dependent
    facts: dict[str, Any] = {
        "world_size": world_size,
        "devices": cfg.devices,
        "accum": cfg.accum,
        "sync_bn": synced,
        "norm_batch": cfg.batch * synced_over if batch_dependent else None,
    }
    if cfg.get("sync_bn", False) and not batch_dependent:
        facts["sync_bn_note"] = (
            f"norm={cfg.norm.name} uses no batch statistics: sync_bn changes nothing"
        )
    elif synced and synced_over == 1:
        facts["sync_bn_note"] = "one process: SyncBN computes exactly BN over this process's batch"
    elif synced and world_size == 1:
        facts["sync_bn_note"] = (
            f"one process: SyncBN computes exactly BN over the {cfg.devices} devices' batches"
        )
    return facts


def describe_norm_layers(model: nn.Module, built: list[nn.Module]) -> dict[str, str]:
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


def environment(device: torch.device) -> dict[str, Any]:
    """The record's `env`: versions and the device the run trains on."""
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
        # `device` cuda:<i> is the i-th GPU of this list when set (a sweep job's own GPU, SLURM's)
        env["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return env
