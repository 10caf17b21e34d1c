"""What a run writes for TensorBoard (normbench.tensorboard_log), read back from its event files:
the HPARAMS row and its columns, the live status, the scalars against images seen."""

from __future__ import annotations

import pytest
from conftest import TINY
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from normbench.tensorboard_log import HIDDEN, SHOWN, STATUS_CODES, RunBoard


def events_of(tb) -> EventAccumulator:
    events = EventAccumulator(str(tb), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def hparams_plugin(events: EventAccumulator) -> dict[str, bytes]:
    return events.PluginTagToContent(metadata.PLUGIN_NAME)


def run_tb(result):
    return next((result.root / "runs").iterdir()) / "tb"


def test_hparams_row_holds_what_identifies_the_run_with_typed_values(normbench):
    result = normbench("run", *TINY, "norm=gn", "norm.groups=4", "devices=2", "batch=8")
    assert result.code == 0, result.err
    plugin = hparams_plugin(events_of(run_tb(result)))
    start = metadata.parse_session_start_info_plugin_data(plugin[metadata.SESSION_START_INFO_TAG])
    values = start.hparams
    assert set(values) == {*SHOWN, *HIDDEN}  # not the ~50 flattened config keys
    assert values["norm"].string_value == "gn" and values["data"].string_value == "synthetic"
    assert values["batch"].number_value == 8 and values["devices"].number_value == 2
    assert values["sgd_batch"].number_value == 16
    assert values["lr"].number_value == pytest.approx(1.6 * 16 / 256)  # the lr used, scaled
    assert values["sync_bn"].HasField("bool_value") and not values["sync_bn"].bool_value
    assert values["norm_options"].string_value == "groups=4"
    assert "data.train_size=128" in values["settings"].string_value
    assert start.group_name.startswith("gn-b8x2-s0-")  # the short trial id

    experiment = metadata.parse_experiment_plugin_data(plugin[metadata.EXPERIMENT_TAG])
    infos = {info.name: info for info in experiment.hparam_infos}
    assert [info.name for info in experiment.hparam_infos if info.differs] == list(SHOWN)
    assert {"bn", "gn", "frn"} <= {v.string_value for v in infos["norm"].domain_discrete.values}
    assert [v.bool_value for v in infos["sync_bn"].domain_discrete.values] == [False, True]
    tags = [m.name.tag for m in experiment.metric_infos]
    assert tags[:5] == [
        "epoch/test_error",
        "run/best_test_error",
        "epoch/train_loss",
        "run/epochs_done",
        "run/status",
    ]


def test_every_run_describes_the_same_columns(normbench, tmp_path):
    """TensorBoard takes the first experiment description it finds for the whole folder."""
    first = normbench("run", *TINY, "epochs=1", out=tmp_path / "a")
    second = normbench("run", *TINY, "epochs=1", "norm=frn", "batch=4", out=tmp_path / "b")
    described = [
        hparams_plugin(events_of(run_tb(result)))[metadata.EXPERIMENT_TAG]
        for result in (first, second)
    ]
    assert described[0] == described[1]


def test_status_and_live_columns_follow_the_run(normbench):
    result = normbench("run", *TINY)
    events = events_of(run_tb(result))
    status = [(e.step, e.value) for e in events.Scalars("run/status")]
    assert status[0] == (0, STATUS_CODES["running"])
    assert status[-1] == (2, STATUS_CODES["completed"])
    assert [e.value for e in events.Scalars("run/epochs_done")][-1] == 2
    best = events.Scalars("run/best_test_error")[-1].value
    assert best == pytest.approx(result.record()["metrics"]["best_test_error"])


def test_the_row_is_written_when_the_run_starts(tmp_path):
    """A run that is still running (or was interrupted) has its row and its status."""
    board = RunBoard(tmp_path / "tb")
    hparams = {name: 1 for name in SHOWN + HIDDEN} | {
        "norm": "bn",
        "backbone": "lenet",
        "data": "synthetic",
        "sync_bn": False,
        "norm_options": "default",
        "settings": "default",
    }
    board.start(hparams, "bn-b1x1-s1-abcdef", [])
    plugin = hparams_plugin(events_of(tmp_path / "tb"))
    assert metadata.SESSION_START_INFO_TAG in plugin
    assert events_of(tmp_path / "tb").Scalars("run/status")[-1].value == STATUS_CODES["running"]
    board.end("interrupted", 0, {})
    board.close()
    assert events_of(tmp_path / "tb").Scalars("run/status")[-1].value == -2


def test_scalars_against_images_seen_line_up_across_batch_sizes(normbench, tmp_path):
    small = normbench("run", *TINY, "log.every_steps=2", out=tmp_path / "a")
    large = normbench("run", *TINY, "batch=32", "log.every_steps=1", out=tmp_path / "b")
    small_events, large_events = events_of(run_tb(small)), events_of(run_tb(large))
    # 128 images per epoch: every 2 steps of 16 images, every step of 32
    assert [e.step for e in small_events.Scalars("vs_images/train_loss")] == list(
        range(32, 257, 32)
    )
    assert [e.step for e in large_events.Scalars("vs_images/train_loss")] == list(
        range(32, 257, 32)
    )
    for events in (small_events, large_events):
        assert [e.step for e in events.Scalars("vs_images/test_error")] == [128, 256]
        assert [e.step for e in events.Scalars("epoch/test_error")] == [1, 2]
