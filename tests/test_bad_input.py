"""Bad input, one table: every case prints one line that names the problem and the fix, exits 2,
shows no traceback and writes or changes no file. Then the security promises: checkpoints load with
weights_only=True, configs cannot instantiate classes, and nothing is written outside `out`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import QUICK_RUN

from normbench.data import fashion_mnist
from normbench.runs import load_checkpoint

GN_YAML = (Path(__file__).resolve().parents[1] / "configs" / "norm" / "gn.yaml").read_text()


# ---------------------------------------------------------------- setups: the world a case needs
# first


def _garbage_fashion_files(tmp: Path, *_):
    (tmp / "fm").mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (tmp / "fm" / name).write_bytes(b"not an idx file")


def _no_fashion_mnist(tmp: Path, normbench, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp / "nowhere")
    # a user's earlier download
    monkeypatch.setattr(fashion_mnist, "DEFAULT_DOWNLOAD_ROOT", tmp / "no-cache")


def _a_file(tmp: Path, *_):
    (tmp / "file").write_text("not a folder")


def _empty_folder(tmp: Path, *_):
    (tmp / "empty").mkdir()


def _one_record(tmp: Path, *_):
    run = tmp / "records" / "runs" / "one"
    run.mkdir(parents=True)
    (run / "record.json").write_text(
        json.dumps(
            {
                "status": "completed",
                "metrics": {"test_error": 12.5},
                "config": {"norm": {"name": "bn"}, "batch": 8, "seed": 0},
            }
        )
    )
    (tmp / "file").write_text("a file, so file/x.png cannot be created")


def _user_config_with_target(tmp: Path, *_):
    (tmp / "cfg" / "norm").mkdir(parents=True)
    (tmp / "cfg" / "norm" / "evil.yaml").write_text(
        "name: bn\n_target_: os.system\n_args_: ['touch pwned']\n"
    )


def _checkpoint_of_another_config(tmp: Path, normbench, _):
    """A run killed after its first epoch; then its config file's default changes (groups 2 -> 4):
    the run key stays (it names settings that differ from the defaults), the checkpoint no longer
    fits."""
    (tmp / "cfg" / "norm").mkdir(parents=True)
    (tmp / "cfg" / "norm" / "mygn.yaml").write_text(GN_YAML.replace("groups: 32", "groups: 2"))
    first = normbench("run", "--config-dir", str(tmp / "cfg"), "norm=mygn", *QUICK_RUN, "epochs=2")
    assert first.code == 0, first.err
    (record_file,) = first.root.glob("runs/*/record.json")
    record = json.loads(record_file.read_text())
    # as if killed before the end
    record_file.write_text(json.dumps(dict(record, status="running")))
    (tmp / "cfg" / "norm" / "mygn.yaml").write_text(GN_YAML.replace("groups: 32", "groups: 4"))


no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")

# (id, command line ({tmp}: the test's folder; `run` gets out={tmp}/outputs), words the line must
# hold, setup)
CASES = [
    (
        "unknown norm",
        ["run", *QUICK_RUN, "norm=gnn"],
        ["unknown norm 'gnn'", "did you mean 'gn'", "choose one of"],
        None,
    ),
    (
        "unknown backbone",
        ["run", *QUICK_RUN, "backbone=resnet21"],
        ["unknown backbone", "did you mean 'resnet20'"],
        None,
    ),
    (
        "unknown data",
        ["run", *QUICK_RUN, "data=fashion"],
        ["unknown data 'fashion'", "did you mean 'fashion_mnist'"],
        None,
    ),
    (
        "unknown experiment",
        ["run", *QUICK_RUN, "experiment=gn_papr"],
        ["unknown experiment 'gn_papr'", "did you mean 'gn_paper'"],
        None,
    ),
    (
        "unknown key",
        ["run", *QUICK_RUN, "epoch=3"],
        ["unknown config key 'epoch'", "did you mean 'epochs'"],
        None,
    ),
    (
        "unknown nested key",
        ["run", *QUICK_RUN, "optim.momentun=0.5"],
        ["did you mean 'optim.momentum'"],
        None,
    ),
    (
        "unknown option",
        ["run", *QUICK_RUN, "--bogus"],
        ["unknown option '--bogus'", "key=value"],
        None,
    ),
    (
        "malformed override",
        ["run", *QUICK_RUN, "batch=(2"],
        ["malformed override 'batch=(2'", "key=value"],
        None,
    ),
    ("override without value", ["run", *QUICK_RUN, "norm"], ["malformed override 'norm'"], None),
    (
        "batch=abc",
        ["run", *QUICK_RUN, "batch=abc"],
        ["batch must be an integer", "got 'abc'", "e.g. batch="],
        None,
    ),
    ("lr=fast", ["run", *QUICK_RUN, "lr=fast"], ["lr must be a number > 0", "got 'fast'"], None),
    ("batch=0", ["run", *QUICK_RUN, "batch=0"], ["batch must be an integer >= 1, got 0"], None),
    ("batch<0", ["run", *QUICK_RUN, "batch=-2"], ["batch must be an integer >= 1, got -2"], None),
    (
        "batch=1 with bn",
        ["run", *QUICK_RUN, "batch=1"],
        ["norm=bn normalizes with batch statistics", "batch>=2", "gn"],
        None,
    ),
    (
        "batch=1 with brn",
        ["run", *QUICK_RUN, "norm=brn", "batch=1"],
        ["norm=brn", "batch>=2"],
        None,
    ),
    (
        "gn groups strict",
        ["run", *QUICK_RUN, "norm=gn", "norm.groups=5", "norm.strict=true"],
        ["cannot build backbone=lenet with norm=gn", "groups"],
        None,
    ),
    ("accum=0", ["run", *QUICK_RUN, "accum=0"], ["accum must be an integer >= 1, got 0"], None),
    ("accum<0", ["run", *QUICK_RUN, "accum=-3"], ["accum must be an integer >= 1"], None),
    (
        "devices=0",
        ["run", *QUICK_RUN, "devices=0"],
        ["devices must be an integer >= 1, got 0"],
        None,
    ),
    (
        "devices=1.5",
        ["run", *QUICK_RUN, "devices=1.5"],
        ["devices must be an integer", "1.5"],
        None,
    ),
    (
        "devices=abc",
        ["run", *QUICK_RUN, "devices=abc"],
        ["devices must be an integer", "'abc'", "e.g. devices=8"],
        None,
    ),
    (
        "sgd_batch does not divide",
        ["run", *QUICK_RUN, "batch=4", "sgd_batch=30"],
        ["sgd_batch=30 is not a multiple of batch 4 * accum 1 = 4", "sgd_batch=28 or 32"],
        None,
    ),
    (
        "sgd_batch disagrees with devices",
        ["run", *QUICK_RUN, "batch=2", "devices=4", "sgd_batch=32"],
        ["sgd_batch=32 means devices=16", "devices=4 is set", "devices=16 or sgd_batch=8"],
        None,
    ),
    (
        "sgd_batch=0",
        ["run", *QUICK_RUN, "sgd_batch=0"],
        ["sgd_batch must be an integer >= 1"],
        None,
    ),
    (
        "eval.running_stats=median",
        ["run", *QUICK_RUN, "eval.running_stats=median"],
        ["eval.running_stats must be one of device0, mean", "'median'"],
        None,
    ),
    (
        "batch=1 with bn on 8 devices",
        ["run", *QUICK_RUN, "batch=1", "devices=8"],
        ["norm=bn normalizes with batch statistics per device", "batch>=2"],
        None,
    ),
    (
        "epochs<0",
        ["run", *QUICK_RUN, "epochs=-1"],
        ["epochs must be an integer >= 1, got -1"],
        None,
    ),
    ("lr=0", ["run", *QUICK_RUN, "lr=0"], ["lr must be a number > 0, got 0"], None),
    ("lr<0", ["run", *QUICK_RUN, "lr=-0.1"], ["lr must be a number > 0, got -0.1"], None),
    (
        "fashion-mnist missing",
        ["run", "log.progress=none", "epochs=1"],
        ["Fashion-MNIST not found", "apt-get install dataset-fashion-mnist", "data.root"],
        _no_fashion_mnist,
    ),
    (
        "cifar10 missing",
        ["run", "data=cifar10", "data.root={tmp}/empty", "epochs=1"],
        ["CIFAR-10 not found", "{tmp}/empty", "data.download=true"],
        _empty_folder,
    ),
    (
        "corrupt data files",
        ["run", "data.root={tmp}/fm", "epochs=1"],
        ["{tmp}/fm/train-images-idx3-ubyte", "truncated or corrupt", "re-download"],
        _garbage_fashion_files,
    ),
    (
        "data.path not a folder",
        ["run", "data=imagefolder", "data.path={tmp}/file"],
        ["data.path={tmp}/file is not a folder", "train/ and val/"],
        _a_file,
    ),
    (
        "data.path without train/",
        ["run", "data=imagefolder", "data.path={tmp}/empty"],
        ["{tmp}/empty/train is missing", "train/ and val/"],
        _empty_folder,
    ),
    (
        "device=cuda without gpu",
        ["run", *QUICK_RUN, "device=cuda"],
        ["no CUDA GPU", "device=cpu"],
        None,
    ),
    (
        "config dir missing",
        ["run", "--config-dir", "{tmp}/nope", *QUICK_RUN],
        ["config dir {tmp}/nope does not exist"],
        None,
    ),
    (
        "_target_ override",
        ["run", *QUICK_RUN, "+norm._target_=os.system"],
        ["norm._target_", "never instantiates"],
        None,
    ),
    (
        "_target_ in a user config",
        ["run", "--config-dir", "{tmp}/cfg", *QUICK_RUN, "norm=evil"],
        ["norm._target_", "never instantiates", "registered name"],
        _user_config_with_target,
    ),
    (
        "checkpoint of another config",
        ["run", "--config-dir", "{tmp}/cfg", "norm=mygn", *QUICK_RUN, "epochs=2"],
        [
            "checkpoint.pt was written by a different config (differs in norm.groups)",
            "--force",
            "delete",
        ],
        _checkpoint_of_another_config,
    ),
    (
        "sweep with a bad cell",
        ["sweep", *QUICK_RUN, "batch=16,0", "out={tmp}/outputs"],
        ["sweep cell batch=0", "batch must be an integer >= 1"],
        None,
    ),
    (
        "sweep of an unknown norm",
        ["sweep", *QUICK_RUN, "norm=bn,gnn", "out={tmp}/outputs"],
        ["norm=gnn", "did you mean 'gn'"],
        None,
    ),
    (
        "table of a folder without records",
        ["table", "{tmp}/empty"],
        ["no readable run records", "normbench sweep"],
        _empty_folder,
    ),
    (
        "table of a missing folder",
        ["table", "{tmp}/nowhere"],
        ["{tmp}/nowhere does not exist"],
        None,
    ),
    (
        "plot to an unwritable path",
        ["plot", "{tmp}/records", "--out", "{tmp}/file/x.png"],
        ["cannot write {tmp}/file/x.png"],
        _one_record,
    ),
]


def snapshot(root: Path) -> dict[str, tuple[int, bytes] | None]:
    """Every path under root, and each file's mtime and content: any file written, deleted or
    changed shows. (Folders' own mtimes are left out: a run's lock file, made and removed again,
    touches its folder's.)"""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) if p.is_file() else None
        for p in root.rglob("*")
    }


def test_the_table_covers_at_least_20_distinct_cases():
    assert len({name for name, *_ in CASES}) == len(CASES) >= 20


@pytest.mark.parametrize(
    "name, args, words, setup",
    [
        pytest.param(
            *case, id=case[0], marks=[no_gpu] if case[0] == "device=cuda without gpu" else []
        )
        for case in CASES
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    normbench, tmp_path, monkeypatch, name, args, words, setup
):
    if setup is not None:
        setup(tmp_path, normbench, monkeypatch)
    before = snapshot(tmp_path)
    result = normbench(*(arg.format(tmp=tmp_path) for arg in args))
    assert result.code == 2, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err + result.out
    for word in words:
        assert word.format(tmp=tmp_path) in lines[0], (word, lines[0])
    assert snapshot(tmp_path) == before, "a rejected command writes, deletes or changes no file"


# ---------------------------------------------------------------- security


class Payload:
    """Unpickling this calls open(path, "w"): a stand-in for any code a crafted checkpoint could
    run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_checkpoint_with_a_pickled_object_is_refused_and_its_code_never_runs(normbench, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"identity": {}, "model": {}, "payload": Payload(marker)}, evil)
    torch.load(evil, weights_only=False)  # the payload works: full unpickling runs it
    assert marker.exists()
    marker.unlink()
    assert load_checkpoint(evil) is None and not marker.exists()

    # the same file as the checkpoint of a killed run: reported as unreadable, the run starts over
    first = normbench("run", *QUICK_RUN, "epochs=2")
    (run_dir,) = (first.root / "runs").iterdir()
    record = json.loads((run_dir / "record.json").read_text())
    (run_dir / "record.json").write_text(json.dumps(dict(record, status="running")))
    (run_dir / "checkpoint.pt").write_bytes(evil.read_bytes())
    again = normbench("run", *QUICK_RUN, "epochs=2")
    assert again.code == 0 and f"{run_dir / 'checkpoint.pt'} is unreadable" in again.err
    assert again.record()["status"] == "completed" and not marker.exists()
    assert again.record()["history"] == [
        dict(h, train_seconds=g["train_seconds"])
        for h, g in zip(record["history"], again.record()["history"])
    ]


def test_checkpoints_hold_only_tensors_and_plain_python(normbench):
    """normbench never needs unsafe unpickling to resume: its own checkpoints load with
    weights_only=True."""
    result = normbench("run", *QUICK_RUN)
    (checkpoint,) = result.root.glob("runs/*/checkpoint.pt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert {"identity", "model", "optimizer", "generator", "torch_rng", "state"} <= set(state)
    assert load_checkpoint(checkpoint)["state"]["epoch"] == 1


@pytest.mark.slow
def test_a_sweep_writes_nothing_outside_out(tmp_path):
    """A fresh process with its own cwd, HOME and TMPDIR: normbench's files all land under `out`.
    Libraries' own caches are not normbench's writes and are allowed where they always go:
    matplotlib's font cache under HOME (made once, by the sweep's figure) and torch's empty
    `torchinductor_<user>` folder in TMPDIR (made when torch.optim imports torch._dynamo)."""
    cwd, home, tmp, out = (tmp_path / name for name in ("cwd", "home", "tmp", "out"))
    for folder in (cwd, home, tmp):
        folder.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR")
    }
    env.update(HOME=str(home), TMPDIR=str(tmp), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "normbench", "sweep", *QUICK_RUN, "norm=bn,gn", f"out={out}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert list(cwd.rglob("*")) == []
    library_caches = {".cache", ".cache/matplotlib", ".config", ".config/matplotlib"}
    assert {str(p.relative_to(home)) for p in home.rglob("*") if p.is_dir()} <= library_caches
    assert all(p.parent.name == "matplotlib" for p in home.rglob("*") if p.is_file())
    assert [p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor_")] == []
    assert not [p for p in tmp.rglob("*") if p.is_file()]
    assert {p.name for p in out.iterdir()} == {"runs", "sweeps"}
    assert len(list(out.glob("runs/*/record.json"))) == 2
