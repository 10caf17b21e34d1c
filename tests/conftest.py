"""Shared fixtures: compose configs with Hydra's compose API, run the CLI in-process, tiny synthetic
runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from normbench import cli
from normbench.config import compose
from normbench.data import integrity

# Small enough that a LeNet run takes about a second on 2 CPU cores.
TINY = [
    "data=synthetic",
    "data.train_size=128",
    "data.test_size=64",
    "epochs=2",
    "batch=16",
    "lr=1.6",
    "log.progress=none",
]  # lr 1.6 at reference batch 256 = 0.1 at batch 16


# The bad-input tests' run: quick to finish should a case wrongly be accepted.
QUICK_RUN = [
    "data=synthetic",
    "data.train_size=64",
    "data.test_size=32",
    "epochs=1",
    "batch=16",
    "log.progress=none",
]


@pytest.fixture
def cfg_of():
    """compose(overrides) as a function, for tests that build configs themselves."""
    return compose


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def record(self) -> dict:
        """The record.json of the single run under the output root (the test's tmp dir)."""
        records = list(self.root.glob("runs/*/record.json"))
        assert len(records) == 1, records
        return json.loads(records[0].read_text())


@pytest.fixture
def normbench(tmp_path, capsys, monkeypatch):
    """Runs `normbench ARGS...` in this process with out=<tmp>/outputs; returns code, stdout,
    stderr."""
    root = tmp_path / "outputs"

    def invoke(*args: str, out: Path | None = None) -> CliResult:
        argv = ["normbench", *args]
        if args and args[0] == "run" and not any(a.startswith("out=") for a in args):
            argv.append(f"out={out or root}")
        monkeypatch.setattr(sys, "argv", argv)
        capsys.readouterr()
        try:
            cli.main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        captured = capsys.readouterr()
        result = CliResult(code, captured.out, captured.err)
        result.root = out or root
        return result

    return invoke


@pytest.fixture(autouse=True)
def _private_data_check_cache(tmp_path_factory, monkeypatch):
    """Runs in tests record their data-integrity checks in a temporary file, not the user's
    ~/.cache (a session-wide one, so the real data set is checksummed once per test session)."""
    cache = tmp_path_factory.getbasetemp() / "data-checks.json"
    monkeypatch.setattr(integrity, "CACHE_FILE", cache)
