"""What a run shows as it trains (normbench.progress, train_epoch's on_step) and its per-run peak
memory (normbench.epochs.PeakMemory)."""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from normbench.epochs import PeakMemory, _proc_status_kib
from normbench.progress import PLAIN_EVERY, RunProgress
from normbench.train import StepDone, train_epoch


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_mode_prints_a_progress_line_after_30_silent_seconds(capsys):
    clock = FakeClock()
    progress = RunProgress("plain", 3, 100, clock=clock)
    progress.start_epoch(2)
    reads = []

    def loss() -> float:
        reads.append(1)
        return 0.5

    for done in range(1, 8):  # 10 s per step
        clock.now += 10
        progress.step(done, done * 64, loss, exact=False)
    lines = capsys.readouterr().out.splitlines()
    # silent 30 s after the epoch started at step 3, then again 30 s later at step 6
    assert lines == [
        "epoch 2/3  step 3/100  loss 0.5000  6 img/s",
        "epoch 2/3  step 6/100  loss 0.5000  6 img/s",
    ]
    assert len(reads) == 2  # the loss (a device sync) is read only for a line
    progress.line("epoch 2/3 ...")  # any line restarts the silence
    clock.now += PLAIN_EVERY - 1
    progress.step(8, 8 * 64, loss, exact=False)
    assert capsys.readouterr().out == "epoch 2/3 ...\n"


def test_bar_shows_loss_and_speed_from_the_first_step():
    clock = FakeClock()
    progress = RunProgress("bar", 1, 50, clock=clock)
    try:
        progress.start_epoch(1)
        clock.now += 2
        progress.step(1, 32, lambda: 2.25, exact=False)
        status = progress._bar.tasks[0].fields["status"]
        assert status == "loss 2.2500  16 img/s"
        clock.now += 0.1  # within BAR_EVERY: not read again, unless exact
        progress.step(2, 64, lambda: 9.0, exact=False)
        assert progress._bar.tasks[0].fields["status"] == status
        progress.step(3, 96, lambda: 1.5, exact=True)
        assert progress._bar.tasks[0].fields["status"].startswith("loss 1.5000")
    finally:
        progress.close()


def test_the_last_step_shows_the_epoch_train_loss_of_the_summary():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(4, 8), torch.randint(0, 3, (4,))) for _ in range(14)]
    seen: list[tuple[int, bool, float]] = []

    def on_step(step: StepDone) -> None:
        seen.append((step.done, step.exact_loss is not None, step.loss()))

    stats = train_epoch(model, optimizer, lambda s: 0.1, 0, data, 7, 2, 3, None, on_step)
    assert [(done, exact) for done, exact, _ in seen] == [
        (1, False),
        (2, False),
        (3, True),
        (4, False),
        (5, False),
        (6, True),
        (7, True),
    ]
    assert seen[-1][2] == stats.loss  # the bar's last value is the epoch line's train_loss
    assert all(loss > 0 for _, _, loss in seen)


def test_two_runs_in_one_process_each_get_their_own_peak_memory():
    """The CPU figure is the run's own resident-set peak, not the process's lifetime peak (which
    only grows along a sweep), and never 0 when an earlier run's memory is reused."""
    first = PeakMemory(torch.device("cpu"))
    assert first.kind == "rss_run_peak"
    resident = _proc_status_kib("VmRSS") / 1024
    big = torch.ones(300 * 2**20 // 4)  # 300 MiB, touched
    del big
    # glibc may keep freed memory resident (fragmented heaps late in a long test session): hand it
    # back so the second run starts below the first's peak, as a run after a finished one does
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    first_peak = first.mb()  # read when its run ends, before the next run starts
    assert first_peak >= resident + 250
    second = PeakMemory(torch.device("cpu"))
    small = torch.ones(10 * 2**20 // 4)
    assert resident * 0.5 < second.mb() < first_peak - 200
    del small
