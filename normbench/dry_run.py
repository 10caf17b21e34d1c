"""`normbench run --dry-run` and `normbench sweep --dry-run` (also Hydra's `--cfg job`): what would
train (the resolved config, or every cell of the grid), its run key, SGD batch, the lr used, steps
per epoch, whether its run folder is done already, and about how long it takes. Writes nothing.

The time comes from the completed runs under <out>/runs that train the same network the same way on
the same kind of device (their images/s), else from a short timed probe: the model is built and a
few SGD steps are timed on random tensors of the data's shape, then extrapolated to the run's steps
and evaluations. Neither counts loading the data.
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .backbones import build_model
from .config import compose, flatten, with_added_keys
from .data import cifar, fashion_mnist, mnist
from .distributed import resolve_device
from .errors import UserError
from .fastpath import prepare_model
from .optim import build_optimizer
from .records import RunRecord, Status
from .runner import plan_run
from .runs import CHECKPOINT, RunPlan
from .study.cells import prepare
from .study.grid import expand
from .study.launch import is_hydra_override
from .study.sweep import choose_folder
from .train import evaluate, train_epoch

HYDRA_CFG_MODES = ("job",)  # Hydra's --cfg job|hydra|all: normbench shows the job's config
PROBE_STEPS = 5  # a probe times at most this many SGD steps ...
PROBE_SECONDS = 1.0  # ... and stops earlier once they took this long (at least one step)
EVAL_PROBE_IMAGES = 256  # images of the timed evaluation forward (at most log.eval_batch)
# images per split of the data sets read from files, when data.train_size / test_size are null
FULL_SPLITS = {
    "fashion_mnist": fashion_mnist.EXPECTED_COUNTS,
    "mnist": mnist.EXPECTED_COUNTS,
    "cifar10": cifar.EXPECTED_COUNTS,
    "cifar100": cifar.EXPECTED_COUNTS,
}
# What sets the time of an SGD step: runs that agree on these (and the device type) train at the
# same images/s. A key is a config key or a group (all its keys).
SPEED_KEYS = (
    *("backbone", "norm", "batch", "devices", "accum", "sync_bn"),
    *("amp", "channels_last", "compile", "data.name", "data.image_size", "data.in_channels"),
    "data.augment",
)


@dataclass(frozen=True)
class Estimate:
    seconds: float
    source: str  # short: "probe", "3 runs"
    detail: str  # how it was made


@dataclass
class RunView:
    """What the dry run says about one planned run.

    Args:
        state: what its run folder holds and what training would do with it.
        epochs_left: epochs that training would still run (0: done, skipped).
        train_images: training images per epoch (None: only reading the data would tell).
        steps_per_epoch: SGD steps per epoch (None as train_images).
        estimated: the time of what is left (None: nothing left, or unknown).
    """

    state: str
    epochs_left: int
    train_images: int | None
    steps_per_epoch: int | None
    estimated: Estimate | None = None

    @property
    def estimate(self) -> str:
        """`~12 min (probe)`, or why there is none."""
        if self.epochs_left == 0:
            return "nothing to train"
        if self.estimated is None:
            return "unknown"
        return f"~{duration(self.estimated.seconds)} ({self.estimated.source})"


SOURCES = (
    "probe: SGD steps timed on random data, plus evaluation, data loading not included; "
    "N runs: the median images/s of N completed runs like it on this kind of device"
)


def check_hydra_cfg(mode: str | None) -> None:
    """`--cfg MODE` is Hydra's way to look before running: normbench takes `--cfg job`."""
    if mode is not None and mode not in HYDRA_CFG_MODES:
        raise UserError(
            f"--cfg {mode}: normbench shows the job's config only: use --cfg job (or --dry-run)"
        )


def run_lines(
    overrides: list[str], user_config_dir: str | None, force: bool, hydra_cfg: str | None
) -> list[str]:
    """`normbench run --dry-run`: the resolved config, then the run's plan and time estimate."""
    check_hydra_cfg(hydra_cfg)
    cfg, choices = compose(overrides, user_config_dir, with_choices=True)
    plan = plan_run(cfg, choices, overrides, user_config_dir)
    view = describe(plan, Estimator(), force)
    steps = "unknown until the data is read"
    if view.steps_per_epoch is not None:
        steps = (
            f"{view.steps_per_epoch} per epoch ({view.train_images} training images / SGD batch "
            f"{plan.sgd_batch}, the last partial batch dropped) x {cfg.epochs} epochs"
        )
    return [
        "# the resolved config (--dry-run: nothing is trained or written)",
        *OmegaConf.to_yaml(plan.cfg, resolve=True).splitlines(),
        "",
        f"run key    {plan.key}",
        f"run dir    {plan.run_dir}: {view.state}",
        f"SGD batch  {plan.sgd_batch} (batch {cfg.batch} x devices {plan.cfg.devices} x accum "
        f"{cfg.accum}{processes(plan)})",
        f"lr         {plan.lr:.4g} (lr {cfg.lr:g} at SGD batch {cfg.lr_ref_batch}, lr_scaling="
        f"{cfg.lr_scaling})",
        f"steps      {steps}",
        f"estimate   {view.estimate}" + (f": {view.estimated.detail}" if view.estimated else ""),
    ]


def sweep_lines(
    overrides: list[str], name: str | None, user_config_dir: str | None, hydra_cfg: str | None
) -> list[str]:
    """`normbench sweep --dry-run`: one line per cell (its overrides, run key, SGD batch, lr, steps
    per epoch, state, estimate) and the total time of the cells left to train."""
    check_hydra_cfg(hydra_cfg)
    grid = expand([text for text in overrides if not is_hydra_override(text)], user_config_dir)
    cells = prepare(grid, user_config_dir)
    estimator = Estimator()
    views = [describe(cell.plan, estimator, force=False) for cell in cells]
    sweeps = Path(cells[0].cfg.out).expanduser() / "sweeps"
    name, left_out = choose_folder(name, grid, cells, sweeps)  # the name the sweep would use
    folder = sweeps / name
    rows = [("cell", "run key", "SGD batch", "lr", "steps/epoch", "state", "estimate")]
    for cell, view in zip(cells, views):
        steps = "?" if view.steps_per_epoch is None else str(view.steps_per_epoch)
        rows.append(
            (cell.label, cell.run_key, str(cell.plan.sgd_batch), f"{cell.plan.lr:.4g}", steps)
            + (view.state, view.estimate)
        )
    left = [view for view in views if view.epochs_left]
    known = sum(view.estimated.seconds for view in left if view.estimated is not None)
    unknown = sum(view.estimated is None for view in left)
    total = f"~{duration(known)} one after another (--jobs N trains N at once)"
    return [
        f"sweep {name}: {len(cells)} cells -> {folder}/ (--dry-run: nothing is trained or written)"
        + (f"; not in the name: {', '.join(left_out)}" if left_out else ""),
        *aligned(rows),
        f"{len(left)} of {len(cells)} cells to train: {total}"
        + (f"; {unknown} cells of unknown length" if unknown else ""),
        f"estimates from {SOURCES}",
    ]


def aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows of text in columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(f"{v:<{w}}" for v, w in zip(row, widths)).rstrip() for row in rows]


def processes(plan: RunPlan) -> str:
    """ " x processes 4" for a torchrun run; "" in one process."""
    world = plan.sgd_batch // (plan.cfg.batch * plan.cfg.devices * plan.cfg.accum)
    return f" x processes {world}" if world > 1 else ""


def describe(plan: RunPlan, estimator: Estimator, force: bool) -> RunView:
    """The run folder's state, the steps per epoch and the time left of one planned run."""
    epochs = int(plan.cfg.epochs)
    state, epochs_left = run_state(plan.run_dir, epochs, force)
    train_images, eval_images = split_sizes(plan.cfg.data)
    steps = None if train_images is None else train_images // plan.sgd_batch
    view = RunView(state, epochs_left, train_images, steps)
    if epochs_left and steps is not None:
        view.estimated = estimator.estimate(plan, steps, epochs_left, eval_images)
    return view


def run_state(run_dir: Path, epochs: int, force: bool) -> tuple[str, int]:
    """What a run folder holds, read from its record, and the epochs training would still run."""
    record = RunRecord.load(run_dir)
    if record is None:
        return ("not started" if not run_dir.exists() else "no readable record"), epochs
    if record.status.final:
        done = final_state(record)
        return (f"{done}: trains again (--force)", epochs) if force else (f"{done}: skipped", 0)
    done_epochs = int(record.metrics.get("epochs_done") or 0)
    where = f"{record.status.value} after epoch {done_epochs}/{epochs}"
    if (run_dir / CHECKPOINT).is_file() and not force:
        return f"{where}: resumes from its checkpoint", epochs - done_epochs
    return f"{where}: starts over", epochs


def final_state(record: RunRecord) -> str:
    """ "completed (test_error 12.34%)" or "diverged (epoch 3)"."""
    if record.status is Status.DIVERGED:
        return f"diverged (epoch {(record.diverged_at or {}).get('epoch')})"
    error = record.metrics.get("test_error")
    return f"completed (test_error {error:.2f}%)" if isinstance(error, float) else "completed"


def split_sizes(data: DictConfig) -> tuple[int | None, int]:
    """(training images, images evaluated each epoch: test + validation) from the data config,
    without reading the data; training images None where only reading it would tell."""
    val = int(data.get("val_size") or 0)
    full = FULL_SPLITS.get(data.name, {})
    if data.name == "synthetic":  # made in memory, validation images in addition
        return int(data.train_size), int(data.test_size) + val
    if data.name == "imagefolder" and data.get("path"):
        full = {split: images_in(Path(data.path) / folder) for split, folder in IMAGE_FOLDERS}
    train, test = data.get("train_size"), data.get("test_size")
    if train is None and full.get("train") is not None:
        train = full["train"] - val  # the validation images are held out of the training split
    if test is None:
        test = full.get("test") or 0
    return train, int(test) + val


IMAGE_FOLDERS = (("train", "train"), ("test", "val"))  # the splits of data=imagefolder


def images_in(folder: Path) -> int | None:
    """Files in the class folders of an image folder split (None when it does not exist)."""
    if not folder.is_dir():
        return None
    return sum(1 for c in folder.iterdir() if c.is_dir() for f in c.iterdir() if f.is_file())


class Estimator:
    """The time a planned run still needs: from the images/s of completed runs like it under the
    same <out>/runs, else from a timed probe. Records are read once per runs folder and each kind of
    step is probed once (a sweep's seeds and lrs share one)."""

    def __init__(self) -> None:
        self.records: dict[Path, list[RunRecord]] = {}
        self.probes: dict[str, Probe] = {}

    def estimate(
        self, plan: RunPlan, steps_per_epoch: int, epochs: int, eval_images: int
    ) -> Estimate:
        """The time of `epochs` epochs of the plan (training, and evaluating `eval_images` after
        each) and of its final evaluation."""
        steps = steps_per_epoch * epochs
        cfg, device = plan.cfg, resolve_device(plan.cfg.device)
        key = speed_key(flatten(cfg))
        alike = [
            record
            for record in self.completed(plan.run_dir.parent)
            if str(record.env.get("device", "")).split(":")[0] == device.type
            and speed_key(flatten(record.config)) == key
            and record.timing.get("images_per_second")
        ]
        if alike:
            speed = statistics.median(record.timing["images_per_second"] for record in alike)
            final = statistics.median(r.timing.get("final_eval_seconds") or 0.0 for r in alike)
            return Estimate(
                steps * plan.sgd_batch / speed + final,
                f"{len(alike)} run{'s' if len(alike) > 1 else ''}",
                f"training at {speed:.0f} images/s, the median of {len(alike)} completed runs like "
                f"it on {device.type}, plus their final evaluation",
            )
        if key not in self.probes:
            self.probes[key] = probe(cfg, plan.lr)
        timed = self.probes[key]
        evaluation = timed.eval_image_seconds * eval_images * (epochs + 1)
        precise = int(cfg.eval.precise_batches) * timed.step_seconds / (3 * int(cfg.accum))
        return Estimate(
            timed.step_seconds * steps + evaluation + precise,
            "probe",
            f"{steps} SGD steps at {timed.step_seconds * 1000:.3g} ms (the median of {timed.steps} "
            f"timed on random data on {device.type}), plus evaluation; data loading not included",
        )

    def completed(self, runs_dir: Path) -> list[RunRecord]:
        """The completed run records in a runs folder (read once)."""
        if runs_dir not in self.records:
            loaded = (RunRecord.load(path) for path in sorted(runs_dir.glob("*/")))
            self.records[runs_dir] = [
                record
                for record in loaded
                if record is not None and record.status is Status.COMPLETED
            ]
        return self.records[runs_dir]


def speed_key(flat: dict[str, Any]) -> str:
    """The settings of a flat config that set the time of an SGD step (SPEED_KEYS), as text."""
    flat = with_added_keys(flat)
    picked = {
        key: value
        for key, value in flat.items()
        if any(key == k or key.startswith(f"{k}.") for k in SPEED_KEYS)
    }
    return repr(sorted(picked.items()))


@dataclass(frozen=True)
class Probe:
    step_seconds: float  # one SGD step: accum micro-batches of batch * devices images
    eval_image_seconds: float  # one image in eval mode
    steps: int  # SGD steps timed


def probe(cfg: DictConfig, lr: float) -> Probe:
    """Times SGD steps of the run's model and optimizer on random tensors of the data's shape on the
    run's device, after one warm-up step. Without torch.compile, whose compile time a short probe
    cannot amortize."""
    device = resolve_device(cfg.device)
    model, norm_layer = build_model(cfg)
    model.to(device)
    optimizer = build_optimizer(model, norm_layer.built, cfg, lr)
    fast = prepare_model(model, OmegaConf.merge(cfg, {"compile": False}), device)
    batch = random_batch(cfg.data, cfg.batch * cfg.devices, device)

    def step() -> float:
        started = time.perf_counter()
        # train_epoch reads the loss at its last step: the time includes the device's work
        batches = itertools.repeat(batch)
        train_epoch(
            fast.model, optimizer, lambda _: lr, 0, batches, 1, cfg.accum, autocast=fast.autocast
        )
        return time.perf_counter() - started

    step()  # warm-up: allocations, cuDNN's algorithm search
    times = [step()]
    while len(times) < PROBE_STEPS and sum(times) < PROBE_SECONDS:
        times.append(step())
    images = min(int(cfg.log.eval_batch), EVAL_PROBE_IMAGES)
    started = time.perf_counter()
    evaluate(fast.model, [random_batch(cfg.data, images, device)], fast.autocast)
    return Probe(statistics.median(times), (time.perf_counter() - started) / images, len(times))


def random_batch(data: DictConfig, images: int, device: torch.device) -> tuple[Any, Any]:
    """Random inputs and labels of the data's shape and classes."""
    shape = (images, data.in_channels, data.image_size, data.image_size)
    labels = torch.randint(data.num_classes, (images,), device=device)
    return torch.randn(shape, device=device), labels


def duration(seconds: float) -> str:
    """12 s, 3.5 min, 2.1 h."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
