"""The fast path of a run: bf16 autocast (`amp`), channels_last memory format and torch.compile
(`compile`), set up once around the model the run built.

The run keeps two handles on one set of parameters: `model`, the plain module whose state_dict,
optimizer and checkpoint names stay as without the fast path (a compiled module's state_dict would
prefix every key with `_orig_mod.`), and `FastPath.model`, what training and evaluation call (the
compiled wrapper, or the same module). All three keys change numerics a little (bf16 matmuls, other
kernels or summation orders), so they stay part of the run's identity.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from .errors import UserError

# bf16 keeps fp32's exponent range: no loss scaling (GradScaler) is needed
AMP_DTYPE = torch.bfloat16
COMPILE_MODES = {
    True: "default",
    "reduce-overhead": "reduce-overhead",
    "max-autotune": "max-autotune",
}


@dataclass
class FastPath:
    model: nn.Module  # what to call for training and evaluation
    # a fresh context per forward: bf16 autocast or nothing
    autocast: Callable[[], ContextManager[Any]]
    # one line for the run's output; "" when nothing is on
    summary: str


def check_keys(cfg: DictConfig) -> None:
    """UserError for a bad amp / channels_last / compile value (validate.py calls this)."""
    for key in ("amp", "channels_last"):
        value = cfg.get(key, False)
        if not isinstance(value, bool):
            raise UserError(f"{key} must be true or false, got {value!r}: e.g. {key}=true")
    value = cfg.get("compile", False)
    if not (isinstance(value, bool) or (isinstance(value, str) and value in COMPILE_MODES)):
        raise UserError(
            f"compile must be false, true, reduce-overhead or max-autotune, got {value!r}: e.g. "
            "compile=true"
        )


def autocast_factory(amp: bool, device: torch.device) -> Callable[[], ContextManager[Any]]:
    """bf16 autocast on the run's device (CUDA, or the CPU: torch supports bf16 autocast there too,
    so a config runs the same mixed precision wherever it runs; on CPUs without bf16 matrix units it
    is slower than fp32), or a no-op context."""
    if not amp:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=AMP_DTYPE)


def prepare_model(model: nn.Module, cfg: DictConfig, device: torch.device) -> FastPath:
    """Apply channels_last in place (parameters keep their names and values; only 4-D weights change
    strides, and convolutions then produce channels_last activations, so inputs need no conversion)
    and wrap the model in torch.compile when asked. Call after model.to(device)."""
    amp, channels_last, compile_ = (
        cfg.get("amp", False),
        cfg.get("channels_last", False),
        cfg.get("compile", False),
    )
    parts = []
    if amp:
        parts.append(f"{device.type} autocast to bf16")
    if channels_last:
        model.to(memory_format=torch.channels_last)
        parts.append("channels_last")
    call: nn.Module = model
    if compile_ is not False:
        mode = COMPILE_MODES[compile_]
        call = torch.compile(model, mode=None if mode == "default" else mode)
        parts.append(
            f"torch.compile (mode {mode}; the first steps of training and of evaluation compile)"
        )
    summary = f"fast path: {', '.join(parts)}" if parts else ""
    return FastPath(call, autocast_factory(amp, device), summary)
