"""The training step, read top to bottom: micro-batches from a batch source (slices of a permutation
of device tensors, or a DataLoader), `accum` micro-batches per SGD step (each its own forward, so a
batch-dependent norm sees `batch` images, like one of `accum` devices), loss and accuracy summed on
the device and read only every `log_every` steps."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager as ContextManager
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets) on the model's device


@dataclass
class EpochStats:
    loss: float  # mean cross-entropy over the images trained on (train mode)
    acc: float  # fraction of those images classified right (train mode)
    images: int
    steps: int  # optimizer steps taken
    finite: bool  # False: the loss went NaN/Inf and the epoch stopped at `steps`


@dataclass
class EpochSums:
    """This process's running sums of an epoch after `done` optimizer steps: what a mid-epoch
    checkpoint keeps so that train_epoch continues the epoch exactly (normbench.midepoch)."""

    done: int = 0  # optimizer steps done this epoch
    loss_sum: float = 0.0  # sum of micro-batch mean losses (a float32 value: restored exactly)
    correct: int = 0  # images classified right
    images: int = 0  # images this process trained on this epoch
    # (loss sum, correct, micro-batches, images) over all processes at the last logging read
    seen: tuple[float, int, int, int] = (0.0, 0, 0, 0)


# Called every `log_every` optimizer steps with (steps done this epoch, mean loss and accuracy since
# the previous call, current lr); the values are host floats read with one device sync.
IntervalHook = Callable[[int, float, float, float], None]


@dataclass
class StepDone:
    """Where an epoch stands after an optimizer step (for progress display; see train_epoch)."""

    done: int  # optimizer steps done this epoch
    images: int  # images this process trained on this epoch
    exact_loss: float | None  # at logging steps: the epoch's mean loss so far, over all processes
    loss_sum: torch.Tensor  # this process's sum of micro-batch mean losses so far (on the device)
    micro_batches: int
    correct: torch.Tensor  # this process's count of images classified right (on the device)
    seen: tuple[float, int, int, int]  # EpochSums.seen

    def sums(self) -> EpochSums:
        """Where the epoch stands, on the host (one device sync): for a mid-epoch checkpoint."""
        return EpochSums(
            self.done, self.loss_sum.item(), int(self.correct.item()), self.images, self.seen
        )

    def loss(self) -> float:
        """The epoch's mean train loss so far: exact at logging steps, else this process's (one
        device sync). At the epoch's last step it is EpochStats.loss."""
        if self.exact_loss is not None:
            return self.exact_loss
        return self.loss_sum.item() / self.micro_batches


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[int], float],
    first_step: int,
    batches: Iterable[Batch],
    steps: int,
    accum: int,
    log_every: int = 50,
    on_interval: IntervalHook | None = None,
    on_step: Callable[[StepDone], None] | None = None,
    average: Callable[[torch.Tensor], torch.Tensor] | None = None,
    autocast: Callable[[], ContextManager[Any]] = nullcontext,
    start: EpochSums | None = None,
) -> EpochStats:
    """`steps` SGD steps of `accum` micro-batches each, taken from `batches` (which must yield at
    least steps * accum, e.g. `data.train_batches(batch, steps * accum, generator)`).
    `lr_at(first_step + step)` sets the lr of each step. Micro-batches are on the model's device
    already. `average` (data-parallel runs, normbench.distributed.Session.average) gives the mean
    over processes of the loss/accuracy sums at each read, so the logged values cover every process
    and all of them see the same finite flag. `autocast` gives the context of each forward and loss
    (normbench.fastpath: bf16 autocast with amp=true); backward runs outside. `on_step` gets a
    StepDone after every step (after that step's logging read, if any). `start` continues an epoch
    from a mid-epoch checkpoint: its sums, then steps start.done..steps-1 (`batches` then yields
    the micro-batches from that step on)."""
    # long: the training step stays one piece that reads top to bottom (nanoGPT style); 22 of its
    # lines are the signature and docstring
    model.train()
    device = next(model.parameters()).device
    micro_batches = iter(batches)
    start = start or EpochSums()
    loss_sum = torch.full((), start.loss_sum, device=device)  # sum of micro-batch mean losses
    correct = torch.full((), start.correct, dtype=torch.long, device=device)
    # host count: shapes need no sync
    images = start.images
    seen_loss, seen_correct, seen_micro, seen_images = start.seen  # host copies at the last read
    for step in range(start.done, steps):
        lr = lr_at(first_step + step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(accum):
            inputs, targets = next(micro_batches)
            with autocast():
                logits = model(inputs)
                loss = F.cross_entropy(logits, targets)
            # gradient of the SGD batch's mean loss
            (loss / accum if accum > 1 else loss).backward()
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(dim=1) == targets).sum()
            images += targets.shape[0]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        exact_loss = None
        if done % log_every == 0 or done == steps:
            if average is None:
                # the only host sync of a step
                total_loss, total_correct = loss_sum.item(), int(correct.item())
            # equal counts in every process: mean over processes of the sums / our counts = mean
            # over all
            else:
                total_loss, total_correct = average(
                    torch.stack([loss_sum, correct.to(loss_sum.dtype)])
                ).tolist()
            micro = done * accum
            if not math.isfinite(total_loss):
                return EpochStats(total_loss, total_correct / images, images, done, False)
            if on_interval is not None:
                on_interval(
                    done,
                    (total_loss - seen_loss) / (micro - seen_micro),
                    (total_correct - seen_correct) / (images - seen_images),
                    lr,
                )
            seen_loss, seen_correct, seen_micro, seen_images = (
                total_loss,
                total_correct,
                micro,
                images,
            )
            exact_loss = total_loss / micro
        if on_step is not None:
            seen = (seen_loss, seen_correct, seen_micro, seen_images)
            on_step(StepDone(done, images, exact_loss, loss_sum, done * accum, correct, seen))
    if steps == 0:
        return EpochStats(float("nan"), 0.0, 0, 0, True)
    return EpochStats(seen_loss / (steps * accum), seen_correct / images, images, steps, True)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    autocast: Callable[[], ContextManager[Any]] = nullcontext,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over every image of `batches` (e.g.
    `data.test_batches(eval_batch)`) in eval mode; how the set is chunked does not change the
    results."""
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    images = 0
    for inputs, targets in batches:
        with autocast():
            logits = model(inputs)
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum")
        correct += (logits.argmax(dim=1) == targets).sum()
        images += targets.shape[0]
    return loss_sum.item() / images, int(correct.item()) / images
