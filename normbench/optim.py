"""SGD with the norm-parameter weight-decay option, the lr scaling rule and the per-step lr
schedule."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

LR_SCALINGS = ("linear", "sqrt", "none")  # lr_scaling, see scaled_lr
SCHEDULES = ("cosine", "step", "constant")  # optim.schedule, see lr_factor


def scaled_lr(cfg: DictConfig, sgd_batch: int) -> float:
    """Base lr scaled with the SGD batch: linear (GN paper: lr * B / ref), sqrt, or none."""
    ratio = sgd_batch / cfg.lr_ref_batch
    return cfg.lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[cfg.lr_scaling]


def build_optimizer(
    model: nn.Module, norm_modules: list[nn.Module], cfg: DictConfig, lr: float
) -> torch.optim.SGD:
    """SGD; norm parameters (gamma, beta, FRN's tau...) get a group of their own when their weight
    decay differs.

    foreach=True: one multi-tensor update instead of a Python loop over parameters; on the CPU that
    is ~12 us instead of ~165 us per LeNet step, which matters at batch 2 (same arithmetic)."""
    optim = cfg.optim
    norm_decay = optim.weight_decay if optim.norm_weight_decay is None else optim.norm_weight_decay
    norm_ids = {id(p) for module in norm_modules for p in module.parameters()}
    norm_params = [p for p in model.parameters() if id(p) in norm_ids]
    if norm_decay == optim.weight_decay or not norm_params:
        groups = [{"params": list(model.parameters()), "weight_decay": optim.weight_decay}]
    else:
        groups = [
            {
                "params": [p for p in model.parameters() if id(p) not in norm_ids],
                "weight_decay": optim.weight_decay,
            },
            {"params": norm_params, "weight_decay": norm_decay},
        ]
    return torch.optim.SGD(
        groups, lr=lr, momentum=optim.momentum, nesterov=optim.nesterov, foreach=True
    )


def lr_factor(step: int, total_steps: int, warmup_steps: int, optim: DictConfig) -> float:
    """Multiplier of the scaled lr before optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if optim.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if optim.schedule == "step":
        passed = sum(1 for milestone in optim.milestones if step >= milestone * total_steps)
        return optim.gamma**passed
    return 1.0


class LRSchedule:
    """lr for optimizer step `step` (0-based, counted over the whole run). A plain function of the
    step, so resuming needs only the step count; setting it costs ~0.1 us where LambdaLR.step()
    costs ~37 us."""

    def __init__(self, cfg: DictConfig, lr: float, steps_per_epoch: int) -> None:
        self.lr = lr
        self.total = cfg.epochs * steps_per_epoch
        self.warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
        self.optim = cfg.optim

    def __call__(self, step: int) -> float:
        return self.lr * lr_factor(step, self.total, self.warmup, self.optim)
