"""The training step, read top to bottom: permutation batches from device tensors, `accum` micro-batches per
SGD step (each its own forward, so a batch-dependent norm sees `batch` images, like one of `accum` devices),
loss and accuracy summed on the device and read only every `log_every` steps."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class EpochStats:
    loss: float        # mean cross-entropy over the images trained on (train mode)
    acc: float         # fraction of those images classified right (train mode)
    images: int
    steps: int         # optimizer steps taken
    finite: bool       # False: the loss went NaN/Inf and the epoch stopped at `steps`


# Called every `log_every` optimizer steps with (steps done this epoch, mean loss and accuracy since the
# previous call, current lr); the values are host floats read with one device sync.
IntervalHook = Callable[[int, float, float, float], None]


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, lr_at: Callable[[int], float], first_step: int,
                x: torch.Tensor, y: torch.Tensor, batch: int, accum: int, generator: torch.Generator,
                log_every: int = 50, on_interval: IntervalHook | None = None,
                on_step: Callable[[], None] | None = None) -> EpochStats:
    """One pass over (x, y) in a fresh permutation; the last incomplete SGD batch is dropped so every
    micro-batch holds exactly `batch` images. `lr_at(first_step + step)` sets the lr of each step."""
    model.train()
    steps = x.shape[0] // (batch * accum)
    order = torch.randperm(x.shape[0], generator=generator).to(x.device)  # CPU generator: same order on any device
    loss_sum = torch.zeros((), device=x.device)                    # sum of micro-batch mean losses
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    seen_loss, seen_correct, seen_micro = 0.0, 0, 0                 # host copies at the last read
    for step in range(steps):
        lr = lr_at(first_step + step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(accum):
            start = (step * accum + micro) * batch
            index = order[start:start + batch]
            inputs, targets = x[index], y[index]
            logits = model(inputs)
            loss = F.cross_entropy(logits, targets)
            (loss / accum if accum > 1 else loss).backward()        # gradient of the SGD batch's mean loss
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(dim=1) == targets).sum()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step()
        done = step + 1
        if done % log_every == 0 or done == steps:
            total_loss, total_correct = loss_sum.item(), int(correct.item())  # the only host sync of a step
            micro_batches = done * accum
            if not math.isfinite(total_loss):
                return EpochStats(total_loss, total_correct / (micro_batches * batch), micro_batches * batch, done, False)
            if on_interval is not None:
                new_micro = micro_batches - seen_micro
                on_interval(done, (total_loss - seen_loss) / new_micro,
                            (total_correct - seen_correct) / (new_micro * batch), lr)
            seen_loss, seen_correct, seen_micro = total_loss, total_correct, micro_batches
    micro_batches = steps * accum
    if micro_batches == 0:
        return EpochStats(float("nan"), 0.0, 0, 0, True)
    return EpochStats(seen_loss / micro_batches, seen_correct / (micro_batches * batch), micro_batches * batch,
                      steps, True)


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eval_batch: int) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over the whole set in eval mode; chunking does not change results."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], eval_batch):
        logits = model(x[start:start + eval_batch])
        targets = y[start:start + eval_batch]
        loss_sum += F.cross_entropy(logits, targets, reduction="sum")
        correct += (logits.argmax(dim=1) == targets).sum()
    return loss_sum.item() / x.shape[0], int(correct.item()) / x.shape[0]
