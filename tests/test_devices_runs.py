"""Simulated devices trained end to end: one process with `devices=W` against torchrun with W gloo
processes (final weights, and rank 0's buffers against device 0's), devices=W against accum=W for
norms without batch statistics, and a run killed mid-training with devices=4 resumed exactly."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from test_distributed import SMALL as DDP_SMALL
from test_distributed import single_process, torchrun_two
from test_faults import Child, epochs_done, only_record, results, run_child, wait_until

from normbench.backbones import build_model
from normbench.config import compose
from normbench.norms import NORMS

REPO = Path(__file__).resolve().parents[1]
# 16 SGD steps of 16 images: past MABN's warm-up and fixed-r phases and BRN's clip warm-up with the
# options below. Each step's gradients differ from DDP's by summation order only (measured: ~2e-6
# relative); lr 0.2 (0.0125 at SGD batch 16) and 16 steps keep the final weights within 1e-6.
SMALL = [
    *(o for o in DDP_SMALL if not o.startswith(("lr=", "epochs="))),
    "epochs=1",
    "lr=0.2",
    "batch=8",
    "data.val_size=32",
    "eval.precise_batches=4",
]
# norm -> overrides that take it through all its phases in 32 steps
NORM_RUNS = {
    "bn": ["norm=bn"],
    "brn": ["norm=brn", "norm.warmup_start=4", "norm.rmax_iters=12", "norm.dmax_iters=8"],
    "gbn": ["norm=gbn", "norm.ghost_batch=4"],
    "evonorm_b0": ["norm=evonorm_b0"],
    "mabn": ["norm=mabn", "norm.buffer_size=3", "norm.warmup_iters=4", "norm.renorm_iters=8"],
    "syncbn": ["norm=syncbn", "sync_bn=true"],
    "gn": ["norm=gn"],
}
# torchrun with 2 processes x devices=2 against one process with devices=4
TWO_BY_TWO = ["bn", "mabn"]


def launch_torchrun(out: Path, runs: list[list[str]]) -> None:
    """All `runs` in one `torchrun --nproc_per_node=2` launch (tests/torchrun_runs.py)."""
    script = str(REPO / "tests" / "torchrun_runs.py")
    torchrun_two(script, str(out), *(" ".join(run) for run in runs), timeout=600)


@pytest.fixture(scope="module")
def torchrun_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("torchrun")
    runs = [[*SMALL, *extra] for extra in NORM_RUNS.values()]
    runs += [[*SMALL, *NORM_RUNS[name], "devices=2"] for name in TWO_BY_TWO]
    launch_torchrun(out, runs)
    return out


def saved(run_dir: Path, model: str = "model") -> tuple[dict, dict]:
    checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    return checkpoint[model], json.loads((run_dir / "record.json").read_text())


def torchrun_dir(out: Path, name: str, devices: int) -> Path:
    """The torchrun run of norm `name` with `devices` per process (keys end in -w2[-hash])."""
    marker = f"-{name}-b8d{devices}x1-" if devices > 1 else f"-{name}-b8x1-"
    (run_dir,) = [p for p in (out / "runs").iterdir() if marker in p.name and "-w2" in p.name]
    return run_dir


def assert_same_training(ours: Path, theirs: Path, devices_each: int) -> None:
    """Final parameters within 1e-6; every buffer of rank 0 (`theirs`) equals the one-process run's
    slice for the devices rank 0 simulated (the first `devices_each` of them), to float rounding
    (rtol 1e-4: statistics of activations computed from weights that differ by ~1e-6 through
    summation order; a wrong device, chunk or momentum differs by orders more); same history."""
    mine, my_record = saved(ours)
    rank0, record = saved(theirs)
    assert mine.keys() == rank0.keys()
    assert my_record["setup"]["sgd_batch"] == record["setup"]["sgd_batch"] == 16 * devices_each
    parameters = {
        name for name, _ in build_model(compose(my_record["overrides"]))[0].named_parameters()
    }
    for name, value in rank0.items():
        tolerance = (
            {"rtol": 0, "atol": 1e-6} if name in parameters else {"rtol": 1e-4, "atol": 1e-5}
        )
        mine_value = mine[name]
        if value.dim() and mine_value.shape != value.shape:  # per-device buffer: rank 0's share
            assert name not in parameters
            mine_value = mine_value[..., : value.shape[-1]]
        torch.testing.assert_close(mine_value, value, **tolerance, msg=lambda m: f"{name}: {m}")
    for a, b in zip(my_record["history"], record["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    # the final evaluation: population statistics per device (rank 0's = device 0's; SyncBN's over
    # all), the test set in chunks normalized by their own statistics, the same images per device
    # (one image's prediction may flip with ~1e-6 weight differences: 64 test images)
    precise, rank0_precise = saved(ours, "model_precise")[0], saved(theirs, "model_precise")[0]
    for name, value in rank0_precise.items():
        mine_value = precise[name]
        if value.dim() and mine_value.shape != value.shape:
            mine_value = mine_value[..., : value.shape[-1]]
        torch.testing.assert_close(
            mine_value, value, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}"
        )
    for metric in ("test_error_precise", "test_error_batch", "val_error"):
        ours_value, theirs_value = my_record["metrics"][metric], record["metrics"][metric]
        assert ours_value == pytest.approx(theirs_value, abs=100 / 64 + 1e-9), metric


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NORM_RUNS))
def test_one_process_with_2_devices_equals_2_torchrun_processes(
    normbench, tmp_path, torchrun_out, name
):
    ours = single_process(normbench, tmp_path, *SMALL, *NORM_RUNS[name], "devices=2")
    record = json.loads((ours / "record.json").read_text())
    assert record["setup"]["devices"] == 2 and record["setup"]["world_size"] == 1
    assert_same_training(ours, torchrun_dir(torchrun_out, name, 1), devices_each=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", TWO_BY_TWO)
def test_two_processes_of_2_devices_equal_one_process_of_4(normbench, tmp_path, torchrun_out, name):
    ours = single_process(normbench, tmp_path, *SMALL, *NORM_RUNS[name], "devices=4")
    assert_same_training(ours, torchrun_dir(torchrun_out, name, 2), devices_each=2)


BATCH_FREE = sorted(n for n, spec in NORMS.items() if not spec.batch_dependent)


@pytest.mark.parametrize("name", BATCH_FREE)
def test_devices_equal_accum_for_norms_without_batch_statistics(name):
    """One forward of W*b images and W forwards of b images (loss / W each) give the same gradients
    at every step of a few SGD steps."""
    torch.manual_seed(0)
    models = []
    for overrides in (["devices=4"], ["accum=4"]):
        cfg = compose([f"norm={name}", *overrides])
        torch.manual_seed(0)
        models.append(build_model(cfg)[0])
    by_devices, by_accum = models
    by_accum.load_state_dict(by_devices.state_dict())
    for step in range(3):
        x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
        torch.nn.functional.cross_entropy(by_devices(x), y).backward()
        for chunk in range(4):
            part = slice(4 * chunk, 4 * chunk + 4)
            (torch.nn.functional.cross_entropy(by_accum(x[part]), y[part]) / 4).backward()
        for (key, a), b in zip(by_devices.named_parameters(), by_accum.parameters()):
            # equal to float rounding: the convs sum over 16 images at once or 4 x 4 (measured:
            # up to 4e-5 of the largest entry with 2 threads, 5.4e-4 for FRN's eps, a sum over
            # every position, with 1 thread); a wrong statistic would be off by far more
            scale = b.grad.abs().max().item()
            diff = (a.grad - b.grad).abs().max().item()
            assert diff <= 2e-3 * scale, f"step {step} {key}: {diff} of {scale}"
        with torch.no_grad():
            for model in models:
                for p in model.parameters():
                    p.sub_(0.1 * p.grad)
                    p.grad = None


@pytest.mark.slow
def test_devices_4_killed_mid_run_resumes_to_the_uninterrupted_history(tmp_path):
    """MABN (rings, counters, host mirrors) on 4 simulated devices, killed during epoch 2 or 3 and
    rerun: the same history as an uninterrupted run, bit for bit (one thread, forked processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # forked children inherit it
    try:
        _kill_and_resume(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _kill_and_resume(tmp_path: Path) -> None:
    run = [
        "run",
        "data=synthetic",
        "data.noise=4",
        "data.train_size=1024",
        "data.test_size=64",
        "epochs=3",
        "batch=4",
        "devices=4",
        "norm=mabn",
        "norm.warmup_iters=8",
        "norm.renorm_iters=40",
        "lr=1.6",
        "log.progress=plain",
        "data.val_size=64",
        "eval.precise_batches=8",
    ]
    logs = tmp_path / "logs"
    code, _, stderr = run_child([*run, f"out={tmp_path / 'reference'}"], logs)
    assert code == 0, stderr
    reference = only_record(tmp_path / "reference")
    out = tmp_path / "out"
    killed = Child([*run, f"out={out}"], logs)
    wait_until(lambda: epochs_done(out) >= 1, killed)
    killed.signal(signal.SIGKILL)
    assert killed.finish()[0] == -signal.SIGKILL
    code, _, stderr = run_child([*run, f"out={out}"], logs)
    assert code == 0 and "resuming" in stderr, stderr
    record = only_record(out)
    assert record["run_key"].split("-")[3] == "b4d4x1"
    assert results(record["history"]) == results(reference["history"])  # bit-identical on CPU
    assert record["metrics"] == reference["metrics"]  # val selection and final evaluation too
