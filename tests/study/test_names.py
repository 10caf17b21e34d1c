"""Sweep folder names: never a value cut in two, whole keys dropped with a hash, said when the sweep
starts; a name is never reused for another grid."""

from __future__ import annotations

import yaml
from conftest import TINY

from normbench import runner
from normbench.study.grid import NAME_MAX, expand, sweep_name

PRESET = [
    "experiment=gn_paper",
    "backbone=resnet20",
    "data=fashion_mnist",
    "data.train_size=1000",
    "epochs=5",
    "seed=0,1,2",
]


def test_a_long_name_drops_whole_overrides_never_part_of_a_value():
    name = sweep_name(expand(PRESET))
    assert len(name.name) <= NAME_MAX
    # the preset, epochs and the swept seeds stay; data.train_size is dropped whole, not cut
    kept = "gn_paper_backbone=resnet20_data=fashion_mnist_epochs=5_seed-0,1,2_"
    assert name.name.startswith(kept) and name.left_out == ("data.train_size=1000",)
    digest = name.name[len(kept) :]
    assert len(digest) == 8 and int(digest, 16) >= 0  # the hash stands for what is left out
    # another value of the dropped key: another hash, so another folder
    other = sweep_name(expand([*PRESET[:3], "data.train_size=2000", *PRESET[4:]]))
    assert other.name != name.name and other.name[:-8] == name.name[:-8]


def test_epochs_is_dropped_after_the_other_fixed_overrides():
    # typed last, so it would go first were it not epochs
    overrides = ["experiment=gn_paper", "data.root=/" + "a" * 30, "backbone=resnet20", "epochs=5"]
    name = sweep_name(expand([*overrides, "seed=0,1"]))
    assert name.name.startswith("gn_paper_data.root=-" + "a" * 30 + "_epochs=5_seed-0,1_")
    assert name.left_out == ("backbone=resnet20",) and len(name.name) <= NAME_MAX


def test_swept_keys_are_named_with_their_values_or_their_count_never_cut():
    short = sweep_name(expand(["norm=bn,gn", "batch=2,4,8"]))
    assert short.name == "norm-bn,gn_batch-2,4,8" and short.left_out == ()
    many = sweep_name(expand(["norm=" + ",".join(f"n{i}" for i in range(40)), "batch=2,4"]))
    assert many.name.startswith("norm-40values_batch-2,4_") and len(many.name) <= NAME_MAX
    values = [f"{v:.4f}" for v in (0.0125 * i for i in range(1, 12))]
    wide = sweep_name(expand(["lr=" + ",".join(values), "batch=2,4,8,16", "seed=0,1,2"]))
    for part in wide.name.split("_")[:-1]:  # every value shown is whole
        key, _, shown = part.partition("-")
        typed = {"lr": values, "batch": ["2", "4", "8", "16"], "seed": ["0", "1", "2"]}[key]
        assert shown.endswith("values") or shown.split(",") == typed


def _sweep(normbench, root, *args):
    return normbench("sweep", *TINY, *args, f"out={root}")


def _interrupt(monkeypatch):
    """Every cell stops at once, as Ctrl-C before the first epoch: nothing trains."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_planned", interrupted)


def test_the_name_is_printed_when_the_sweep_starts(normbench, tmp_path, monkeypatch):
    _interrupt(monkeypatch)
    result = _sweep(normbench, tmp_path, "norm=bn,gn")
    assert result.code == 130
    assert f"sweep norm-bn,gn: 2 cells -> {tmp_path / 'sweeps' / 'norm-bn,gn'}" in result.out


def test_a_name_reused_for_another_grid_is_one_line_exit_2(normbench, tmp_path, monkeypatch):
    _interrupt(monkeypatch)
    first = _sweep(normbench, tmp_path, "norm=bn,gn", "--name", "mine")
    assert first.code == 130  # stopped before any cell trained: the grid is stored already
    stored = (tmp_path / "sweeps" / "mine" / "sweep.yaml").read_text()
    other = _sweep(normbench, tmp_path, "norm=bn,ln", "--name", "mine")
    assert other.code == 2 and other.err.count("\n") == 1, other.err
    assert "--name mine" in other.err and "holds another sweep" in other.err
    assert "norm=bn,gn" in other.err and "Traceback" not in other.err
    assert (tmp_path / "sweeps" / "mine" / "sweep.yaml").read_text() == stored  # untouched
    # the same grid (even typed in another order) resumes in the same folder
    same = _sweep(normbench, tmp_path, "norm=gn,bn", "--name", "mine")
    assert same.code == 130 and "sweep mine: 2 cells" in same.out


def test_an_automatic_name_taken_by_another_grid_gets_a_hash(normbench, tmp_path, monkeypatch):
    _interrupt(monkeypatch)
    assert _sweep(normbench, tmp_path, "norm=bn,gn", "epochs=1").code == 130
    second = _sweep(normbench, tmp_path, "norm=bn,gn", "epochs=3")
    assert second.code == 130
    folders = sorted(p.name for p in (tmp_path / "sweeps").iterdir())
    assert len(folders) == 2 and folders[0] == "norm-bn,gn"
    assert folders[1].startswith("norm-bn,gn_") and len(folders[1]) == len("norm-bn,gn_") + 8
    assert f"sweep {folders[1]}: 2 cells" in second.out
    meta = yaml.safe_load((tmp_path / "sweeps" / folders[1] / "sweep.yaml").read_text())
    assert "epochs=3" in meta["overrides"]
    # the rerun of the second sweep finds its own folder again
    again = _sweep(normbench, tmp_path, "norm=bn,gn", "epochs=3")
    assert f"sweep {folders[1]}: 2 cells" in again.out
    assert len(list((tmp_path / "sweeps").iterdir())) == 2
