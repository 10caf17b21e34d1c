"""Configs: found from any working directory, user config dirs, help text in sync with
configs/config.yaml."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from normbench.cli import RUN_HELP
from normbench.config import compose, config_dir, flatten
from normbench.norms import NORMS

REPO = Path(__file__).resolve().parents[1]


def test_default_config_is_lenet_bn_fashion_mnist():
    cfg = compose()
    assert (cfg.backbone.name, cfg.norm.name, cfg.data.name) == ("lenet", "bn", "fashion_mnist")
    assert cfg.batch == 256 and cfg.accum == 1 and cfg.lr_scaling == "linear"


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_every_registered_norm_has_a_config_naming_it(norm):
    assert compose([f"norm={norm}"]).norm.name == norm


def test_overrides_and_choices():
    cfg, choices = compose(["norm=gn", "norm.groups=8", "batch=4"], with_choices=True)
    assert cfg.norm.groups == 8 and cfg.batch == 4
    assert choices == {"backbone": "lenet", "norm": "gn", "data": "fashion_mnist", "optim": "sgd"}


def test_user_config_dir_adds_options(tmp_path):
    (tmp_path / "norm").mkdir()
    (tmp_path / "norm" / "gn8.yaml").write_text(
        "name: gn\ngroups: 8\nmin_channels_per_group: 2\nstrict: false\neps: 1.0e-5\n"
    )
    cfg = compose(["norm=gn8"], user_config_dir=tmp_path)
    assert cfg.norm.name == "gn" and cfg.norm.groups == 8


def test_run_help_lists_every_top_level_key_and_group_option():
    for key in flatten(compose()):
        if not key.startswith(("backbone.", "norm.", "data.", "optim.")):
            assert re.search(rf"^\s+{re.escape(key)}=", RUN_HELP, re.MULTILINE), key
    for group in ("backbone", "norm", "data", "optim"):
        for option in (config_dir() / group).glob("*.yaml"):
            assert option.stem in RUN_HELP


def test_installed_cli_finds_its_configs_from_any_directory(tmp_path):
    """The console script, run from a folder that is not the repo, lists norms and composes
    configs."""
    script = Path(sys.executable).parent / "normbench"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "normbench"]
    listed = subprocess.run(
        [*command, "list", "norms"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list(NORMS)
    helped = subprocess.run(
        [*command, "run", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert helped.returncode == 0 and "lr_scaling=linear" in helped.stdout


def test_wheel_ships_the_configs(tmp_path):
    """A non-editable install gets configs/ inside the package (hatch force-include)."""
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if build.returncode != 0 and "hatchling" in build.stderr:
        pytest.skip(
            "hatchling is not installed in this environment (only pip's isolated build has it)"
        )
    assert build.returncode == 0, build.stderr
    import zipfile

    wheel = next(tmp_path.glob("normbench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "normbench/configs/config.yaml" in names
    assert "normbench/configs/norm/gn.yaml" in names
