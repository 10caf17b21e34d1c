"""Every bad input gives one line that names the fix, exit code 2, no traceback, and no run
folder."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import QUICK_RUN

from normbench.data import fashion_mnist

# (overrides after `run`, words the one line must contain)
BAD_RUNS = [
    (["norm=foo"], ["unknown norm 'foo'", "choose one of", "gn"]),
    (["norm=gm"], ["did you mean 'gn'"]),
    (["backbone=resnet9"], ["unknown backbone 'resnet9'"]),
    (["data=cifar"], ["unknown data 'cifar'"]),
    (["batch=="], ["malformed override"]),
    (["norm"], ["malformed override"]),
    (["foo=1"], ["unknown config key 'foo'"]),
    (["bach=2"], ["did you mean 'batch'"]),
    (["norm.groups=3"], ["unknown config key 'norm.groups'"]),
    (["+foo=1"], ["unknown config key 'foo'"]),
    (["batch=abc"], ["batch must be an integer", "got 'abc'"]),
    (["batch=2.5"], ["batch must be an integer"]),
    (["batch=0"], ["batch must be an integer >= 1"]),
    (["batch=-4"], ["batch must be an integer >= 1"]),
    (["batch=1"], ["batch statistics", "batch>=2"]),
    (["accum=0"], ["accum must be an integer >= 1"]),
    (["epochs=-1"], ["epochs must be an integer >= 1"]),
    (["lr=0"], ["lr must be a number > 0"]),
    (["lr=-0.1"], ["lr must be a number > 0"]),
    (["lr_scaling=cubic"], ["lr_scaling must be one of"]),
    (["device=tpu"], ["device must be auto, cpu or cuda"]),
    (["norm=gn", "norm.groups=5", "norm.strict=true"], ["cannot build", "groups"]),
    (["norm=frn", "norm.learned_eps=maybe"], ["norm=frn", "learned_eps"]),
    (["+norm._target_=os.system"], ["_target_"]),
    (["optim.schedule=linear"], ["optim.schedule must be one of"]),
    (["optim.momentum=1.5"], ["optim.momentum must be a number"]),
    (["backbone.activation=tanh"], ["backbone.activation must be one of"]),
    (["data.train_size=0"], ["train_size"]),
    (["data.train_size=12"], ["fewer than one SGD batch"]),
    (["--bogus"], ["unknown option '--bogus'"]),
    # suggestions come from the config composed (gn's keys), not the default one (bn's)
    (
        ["norm=gn", "norm.grups=8"],
        ["unknown config key 'norm.grups'", "did you mean 'norm.groups'"],
    ),
    (["norm=bn,gn"], ["'norm=bn,gn' is a sweep", "use `normbench sweep", "norm=bn,gn"]),
    (["experiment=gn_paper"], ["experiment=gn_paper holds a grid", "normbench sweep", "batch="]),
    (["-m"], ["Hydra's multirun flag", "normbench sweep"]),
    (["--cfg", "all"], ["--cfg all", "--cfg job"]),
]


def assert_one_line_error(result, words):
    assert result.code == 2, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.err + result.out
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("overrides,words", BAD_RUNS, ids=[" ".join(o) for o, _ in BAD_RUNS])
def test_bad_run_input_is_one_line_exit_2(normbench, overrides, words):
    result = normbench("run", *QUICK_RUN, *overrides)
    assert_one_line_error(result, words)
    assert not (result.root / "runs").exists(), "a rejected run must leave no files behind"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu(normbench):
    assert_one_line_error(
        normbench("run", *QUICK_RUN, "device=cuda"), ["no CUDA GPU", "device=cpu"]
    )


def test_missing_fashion_mnist_names_the_install_command(normbench, monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "nowhere")
    # a user's earlier download
    monkeypatch.setattr(fashion_mnist, "DEFAULT_DOWNLOAD_ROOT", tmp_path / "no-cache")
    result = normbench("run", "log.progress=none", "epochs=1")
    assert_one_line_error(result, ["apt-get install dataset-fashion-mnist", "data.root"])
    assert not (result.root / "runs").exists()


def test_data_root_without_files(normbench, tmp_path):
    assert_one_line_error(
        normbench("run", "log.progress=none", f"data.root={tmp_path}"), [str(tmp_path)]
    )


def test_user_config_dir_must_exist(normbench, tmp_path):
    assert_one_line_error(
        normbench("run", "--config-dir", str(tmp_path / "missing"), *QUICK_RUN), ["config dir"]
    )


def test_list_unknown_kind(normbench):
    assert_one_line_error(normbench("list", "norm"), ["did you mean 'norms'"])


def test_sweep_refuses_hydras_multirun_flag(normbench):
    assert_one_line_error(normbench("sweep", "-m", "norm=bn,gn"), ["Hydra's multirun flag"])


def test_batch_one_is_fine_for_batch_independent_norms(normbench):
    result = normbench("run", *QUICK_RUN, "batch=1", "data.train_size=20", "norm=gn")
    assert result.code == 0, result.err
    assert result.record()["status"] == "completed"


def test_installed_command_prints_one_line_without_traceback(tmp_path):
    """End to end through the console script (a fresh process, Hydra's own error handling
    included)."""
    proc = subprocess.run(
        [sys.executable, "-m", "normbench", "run", "norm=bnn", "log.progress=none"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown norm 'bnn'" in proc.stderr and "did you mean 'bn'" in proc.stderr
    assert not (tmp_path / "outputs").exists()
