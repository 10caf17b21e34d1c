"""SGD with the norm-parameter weight-decay option, the lr scaling rule and the per-step lr schedule."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn


def scaled_lr(cfg: DictConfig, sgd_batch: int) -> float:
    """Base lr scaled with the SGD batch: linear (GN paper: lr * B / ref), sqrt, or none."""
    ratio = sgd_batch / cfg.lr_ref_batch
    return cfg.lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[cfg.lr_scaling]


def build_optimizer(model: nn.Module, norm_modules: list[nn.Module], cfg: DictConfig, lr: float) -> torch.optim.SGD:
    """Two parameter groups so norm parameters (gamma, beta, FRN's tau...) can get their own weight decay."""
    optim = cfg.optim
    norm_ids = {id(p) for module in norm_modules for p in module.parameters()}
    norm_params = [p for p in model.parameters() if id(p) in norm_ids]
    other_params = [p for p in model.parameters() if id(p) not in norm_ids]
    norm_decay = optim.weight_decay if optim.norm_weight_decay is None else optim.norm_weight_decay
    groups = [{"params": other_params, "weight_decay": optim.weight_decay, "name": "weights"}]
    if norm_params:
        groups.append({"params": norm_params, "weight_decay": norm_decay, "name": "norm"})
    return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum, nesterov=optim.nesterov)


def lr_factor(step: int, total_steps: int, warmup_steps: int, optim: DictConfig) -> float:
    """Multiplier of the scaled lr before optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if optim.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if optim.schedule == "step":
        passed = sum(1 for milestone in optim.milestones if step >= milestone * total_steps)
        return optim.gamma ** passed
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, cfg.optim))
