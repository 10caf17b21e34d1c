"""A run's TensorBoard folder (`<run_dir>/tb`, one TensorBoard run per normbench run).

Scalars, by x axis:
- `train/loss`, `train/acc`, `train/lr`: every log.every_steps optimizer steps, step = global step;
- `epoch/<name>` after each epoch, step = epoch; `final/<name>` after the final evaluation;
- `vs_images/<name>` (train_loss, train_acc, test_error, test_loss, val_*): step = training images
  seen (all devices and processes), so that runs of different batch sizes line up;
- `run/status`, `run/epochs_done`, `run/best_test_error`: the HPARAMS row's live columns;
- `hparam/<metric>`: the record's final metrics, once the run completed.

HPARAMS: the run's row (its hparams and a short trial id) is written when the run starts, so
running and interrupted runs appear too; `run/status` says where it stands (STATUS_CODES). Every
run writes the same experiment description (hparam names, domains and metrics): TensorBoard uses
the first one it finds for the whole folder. On a resumed run TensorBoard's Python loader
(`--load_fast=false`) drops the `vs_images/*` points logged before the resume (its purge step counts
optimizer steps); the default loader keeps them.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .backbones import BACKBONES
from .data import DATASETS
from .norms import NORMS

# run/status values; the HPARAMS table shows numbers only
STATUS_CODES = {"running": 0, "completed": 1, "diverged": -1, "interrupted": -2, "failed": -3}
STATUS_HELP = "1 completed, 0 running, -1 diverged, -2 interrupted, -3 failed"
# the columns TensorBoard shows by default (it shows five hparams, these first); the rest can be
# ticked in its left pane
SHOWN = ("norm", "batch", "devices", "sgd_batch", "lr")
HIDDEN = ("accum", "backbone", "data", "seed", "epochs", "sync_bn", "norm_options", "settings")
# keys that are hparams of their own, left out of `settings`
OWN_COLUMNS = ("lr", "epochs", "sync_bn", "sgd_batch")
# (tag, display name) of the metric columns, in the table's order (the first five shown)
METRICS = (
    ("epoch/test_error", "test error % (last epoch)"),
    ("run/best_test_error", "best test error %"),
    ("epoch/train_loss", "train loss (last epoch)"),
    ("run/epochs_done", "epochs done"),
    ("run/status", f"status ({STATUS_HELP})"),
    ("epoch/val_error", "val error % (last epoch)"),
    ("final/test_error_precise", "test error % (precise statistics)"),
    ("final/test_error_batch", "test error % (batch statistics)"),
)
VS_IMAGES = ("test_error", "test_loss", "val_error", "val_loss")  # epoch scalars also vs images


def trial_id(cfg: DictConfig, key: str) -> str:
    """A short readable name of the run for the HPARAMS table, e.g. `gn-b2x8-s0-3f2a`: norm,
    batch x devices (`a<accum>` if > 1), seed, and a hash of the run key that keeps it unique
    (TensorBoard merges the rows of equal trial ids)."""
    accum = f"a{cfg.accum}" if cfg.accum > 1 else ""
    digest = hashlib.sha1(key.encode()).hexdigest()[:4]
    return f"{cfg.norm.name}-b{cfg.batch}x{cfg.devices}{accum}-s{cfg.seed}-{digest}"


def _spelled(settings: dict[str, Any]) -> str:
    """`{"norm.groups": 8}` -> "groups=8" style text, "default" when empty."""
    text = ", ".join(
        f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in settings.items()
    )
    return text or "default"


def run_hparams(
    cfg: DictConfig, sgd_batch: int, lr: float, non_default: dict[str, Any]
) -> dict[str, bool | int | float | str]:
    """What identifies the run and what changes its results: the HPARAMS row.

    Args:
        cfg: the run's config.
        sgd_batch, lr: the SGD batch and the lr actually used (scaled to it).
        non_default: settings that differ from the chosen configs' defaults (RunPlan.non_default):
            the norm's own become `norm_options`, the others (bar own columns) `settings`.
    """
    norm_options = {
        k.removeprefix("norm."): v for k, v in sorted(non_default.items()) if k.startswith("norm.")
    }
    settings = {
        k: v
        for k, v in sorted(non_default.items())
        if not k.startswith("norm.") and k not in OWN_COLUMNS
    }
    return {
        "norm": str(cfg.norm.name),
        "batch": int(cfg.batch),
        "devices": int(cfg.devices),
        "sgd_batch": int(sgd_batch),
        "lr": float(lr),
        "accum": int(cfg.accum),
        "backbone": str(cfg.backbone.name),
        "data": str(cfg.data.name),
        "seed": int(cfg.seed),
        "epochs": int(cfg.epochs),
        "sync_bn": bool(cfg.get("sync_bn", False)),
        "norm_options": _spelled(norm_options),
        "settings": _spelled(settings),
    }


def _plugin_summary(tag: str, plugin_data: Any) -> Any:
    """A Summary holding HParams plugin data (what the hparams summary API builds internally)."""
    # deferred: tensorboard takes ~1 s to import and only a training run needs it
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata

    summary = summary_pb2.Summary()
    summary.value.add(
        tag=tag,
        metadata=metadata.create_summary_metadata(plugin_data),
        tensor=metadata.NULL_TENSOR,
    )
    return summary


def experiment_summary(hparams: dict[str, Any]) -> Any:
    """The experiment description (hparams_config): the columns, their types and domains.

    Names (norm, backbone, data) and booleans get Discrete domains of every known value (equal in
    every run); numbers are typed float64 without a domain (TensorBoard sorts them numerically,
    offers a min/max filter and draws their parallel-coordinates axes from the values seen): a
    Discrete domain of one run's values would make its filters drop other runs' values."""
    # deferred: see _plugin_summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp

    known = {
        "norm": sorted({*NORMS, hparams["norm"]}),
        "backbone": sorted({*BACKBONES, hparams["backbone"]}),
        "data": sorted({*DATASETS, hparams["data"]}),
        "sync_bn": [False, True],
    }
    infos = []
    for name in (*SHOWN, *HIDDEN):
        value = hparams[name]
        info = api_pb2.HParamInfo(name=name, display_name=name, differs=name in SHOWN)
        if name in known:
            hp.Discrete(known[name]).update_hparam_info(info)
        else:
            info.type = (
                api_pb2.DATA_TYPE_STRING if isinstance(value, str) else api_pb2.DATA_TYPE_FLOAT64
            )
        infos.append(info)
    metric_infos = [hp.Metric(tag, display_name=shown).as_proto() for tag, shown in METRICS]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos)
    return _plugin_summary(
        metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)
    )


class RunBoard:
    """The TensorBoard writer of one run (rank 0 only; normbench.distributed.Session.writer gives
    a no-op elsewhere): what the run logs, by meaning rather than by tag.

    Args:
        log_dir: the run's tb/ folder.
        purge_step: on resume, the first global step TensorBoard hides from the killed attempt.
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        # deferred: see _plugin_summary
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        self.best_test_error = float("inf")

    def start(self, hparams: dict[str, Any], trial: str, history: list[dict[str, Any]]) -> None:
        """The HPARAMS row of a starting (or resumed, with `history` so far) run: `running`."""
        # deferred: see _plugin_summary
        from tensorboard.plugins.hparams import summary_v2 as hp

        file_writer = self.writer._get_file_writer()  # what SummaryWriter.add_hparams writes to
        file_writer.add_summary(experiment_summary(hparams))
        file_writer.add_summary(hp.hparams_pb(hparams, trial_id=trial, start_time_secs=time.time()))
        self.best_test_error = min((h["test_error"] for h in history), default=float("inf"))
        self.status("running", len(history))

    def status(self, status: str, epochs_done: int) -> None:
        """`run/status` (STATUS_CODES) and `run/epochs_done`, at step = epochs done."""
        self.writer.add_scalar("run/status", STATUS_CODES[status], epochs_done)
        self.writer.add_scalar("run/epochs_done", epochs_done, epochs_done)
        self.writer.flush()

    def train_interval(self, step: int, images: int, loss: float, acc: float, lr: float) -> None:
        """The train loss and accuracy since the previous call, at global `step` and at `images`
        seen."""
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/acc", acc, step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.add_scalar("vs_images/train_loss", loss, images)
        self.writer.add_scalar("vs_images/train_acc", acc, images)

    def epoch(self, entry: dict[str, Any], images: int) -> None:
        """An epoch's history entry (normbench.epochs): `epoch/*` at the epoch, `vs_images/*` at
        the images seen, and the live HPARAMS columns."""
        epoch = entry["epoch"]
        for name in ("train_loss", "train_acc", "test_loss", "test_acc", "test_error"):
            self.writer.add_scalar(f"epoch/{name}", entry[name], epoch)
        for name in ("val_loss", "val_error"):
            if name in entry:
                self.writer.add_scalar(f"epoch/{name}", entry[name], epoch)
        for name in VS_IMAGES:
            if name in entry:
                self.writer.add_scalar(f"vs_images/{name}", entry[name], images)
        self.best_test_error = min(self.best_test_error, entry["test_error"])
        self.writer.add_scalar("run/best_test_error", self.best_test_error, epoch)
        self.status("running", epoch)

    def final(self, metrics: dict[str, float], epochs: int) -> None:
        """The final evaluation's metrics (`final/*`, at step `epochs`)."""
        for name, value in metrics.items():
            self.writer.add_scalar(f"final/{name}", value, epochs)
        self.writer.flush()

    def end(self, status: str, epochs_done: int, metrics: dict[str, Any]) -> None:
        """How the run ended; a completed run's record metrics also as `hparam/<name>`."""
        if status == "completed":
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"hparam/{name}", value, epochs_done)
        self.status(status, epochs_done)

    def close(self) -> None:
        self.writer.close()
