"""What the command line shows before anything trains: `run --help` (every group and key, every
norm's options), `--version`, choices and shell completion, `list backbones`, a grid given to
`run`, and what Ctrl-C says."""

from __future__ import annotations

import re

import pytest
from conftest import QUICK_RUN, TINY

from normbench import __version__, cli, runner
from normbench.config import check_single_run, compose, config_dir, flatten
from normbench.errors import UserError
from normbench.runs import CHECKPOINT, save_checkpoint


def listed_keys(help_text: str) -> set[str]:
    return set(re.findall(r"^\s+([\w.]+)=", help_text, re.MULTILINE))


def test_run_help_lists_every_group_key_and_norm_option(normbench):
    result = normbench("run", "--help")
    assert result.code == 0
    text = result.out
    for group in ("backbone", "norm", "data", "optim", "experiment"):
        options = sorted(path.stem for path in (config_dir() / group).glob("*.yaml"))
        assert re.search(rf"^\s+{group}\s+{', '.join(options)}", text, re.MULTILINE), group
    assert set(flatten(compose())) <= listed_keys(text)
    norm_lines = {m[0]: m[1] for m in re.findall(r"^\s+(\w+)\s+(\w+=.*)$", text, re.MULTILINE)}
    assert "groups=32" in norm_lines["gn"] and "channels_per_group=null" in norm_lines["gn"]
    assert norm_lines["frn"] == "eps=1.0e-6 learned_eps=auto"
    assert "buffer_size=16" in norm_lines["mabn"]


def test_run_help_shows_the_keys_of_the_chosen_norm(normbench):
    default = normbench("run", "--help").out
    gn = normbench("run", "norm=gn", "backbone=lenet_relu", "--help").out
    assert "norm.momentum" in listed_keys(default) and "norm.groups" not in listed_keys(default)
    assert re.search(r"^\s+norm\.groups=32\s+the paper's G", gn, re.MULTILINE)
    # lenet_relu's value, with the comment of the file it varies (lenet.yaml)
    assert re.search(r"^\s+backbone\.activation=relu\s+sigmoid \(d2l\)", gn, re.MULTILINE)
    assert "as composed for backbone=lenet_relu norm=gn" in gn
    broken = normbench("run", "norm=gx", "--help")
    assert broken.code == 0 and "cannot be shown for these overrides: unknown norm" in broken.out


def test_version(normbench):
    result = normbench("--version")
    assert result.code == 0 and result.out.strip() == f"normbench {__version__}"


def test_top_level_help_offers_completion(normbench):
    text = normbench("--help").out
    assert "--version" in text and "--install-completion" in text


@pytest.mark.parametrize("words,expected", [("list b", "backbones"), ("list ex", "experiments")])
def test_shell_completion_completes_choices(monkeypatch, capsys, words, expected):
    monkeypatch.setenv("_NORMBENCH_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", f"normbench {words}")
    monkeypatch.setenv("COMP_CWORD", "2")
    with pytest.raises(SystemExit) as exit_:
        cli.app(args=[], prog_name="normbench")
    assert exit_.value.code == 0
    assert capsys.readouterr().out.split() == [expected]


def test_list_and_table_help_show_their_choices(normbench):
    assert "<norms|backbones|data|experiments>" in normbench("list", "--help").out
    assert "--format <md|latex|csv>" in normbench("table", "--help").out


def test_a_bad_choice_is_one_line_with_a_suggestion(normbench, tmp_path):
    bad = normbench("table", str(tmp_path), "--format", "late")
    assert bad.code == 2 and bad.err.strip().splitlines() == [
        "error: unknown format 'late' (did you mean 'latex'?); choose one of: md, latex, csv"
    ]


def test_list_backbones_lists_every_backbone_config(normbench):
    listed = [line.split()[0] for line in normbench("list", "backbones").out.splitlines()]
    shipped = sorted(path.stem for path in (config_dir() / "backbone").glob("*.yaml"))
    assert sorted(listed) == shipped and "lenet_relu" in listed
    assert listed.index("lenet_relu") == listed.index("lenet") + 1


def test_run_refuses_a_grid_but_runs_a_preset_with_every_swept_key_given():
    with pytest.raises(UserError, match=r"holds a grid .*batch=32,16,8,4,2.*normbench sweep"):
        check_single_run(["experiment=gn_paper", "norm=bn"])
    with pytest.raises(UserError, match=r"'seed=range\(0,2\)' is a sweep"):
        check_single_run(["seed=range(0,2)"])
    check_single_run(["experiment=gn_paper", "norm=bn", "batch=2"])  # one run: no error
    check_single_run(["norm=gn", "batch=2"])


def test_a_preset_with_every_swept_key_given_dry_runs(normbench):
    tiny = [text for text in TINY if not text.startswith("batch=")]
    result = normbench("run", "--dry-run", "experiment=gn_paper", "norm=bn", "batch=2", *tiny)
    assert result.code == 0, result.err
    assert "devices: 8" in result.out and "SGD batch  16 (batch 2 x devices 8" in result.out


def interrupt_after(epochs_saved: int | None, position: dict | None = None):
    """A stand-in for runner.run_planned: saves a checkpoint holding `epochs_saved` epochs (None:
    none), then stops as Ctrl-C does."""

    def run_planned(plan, force=False):
        if epochs_saved is not None:
            plan.run_dir.mkdir(parents=True)
            state = {"epoch": epochs_saved, "position": position}
            save_checkpoint(plan.run_dir / CHECKPOINT, {"identity": {}, "state": state})
        raise KeyboardInterrupt

    return run_planned


def test_ctrl_c_before_the_first_checkpoint_says_nothing_was_saved(normbench, monkeypatch):
    monkeypatch.setattr(runner, "run_planned", interrupt_after(None))
    result = normbench("run", *QUICK_RUN)
    assert result.code == 130
    assert "no training was saved" in result.err and "starts the run over" in result.err
    assert "resume" not in result.err


def test_ctrl_c_after_a_checkpoint_names_the_epoch_it_resumes_after(normbench, monkeypatch):
    monkeypatch.setattr(runner, "run_planned", interrupt_after(1))
    result = normbench("run", *QUICK_RUN, "epochs=3")
    assert result.code == 130
    assert "holds epoch 1 of 3; rerun the same command to resume after epoch 1" in result.err
    forced = normbench("run", "--force", *QUICK_RUN, "epochs=3", out=result.root / "again")
    assert "rerun without --force to resume after epoch 1" in forced.err


def test_ctrl_c_after_a_mid_epoch_checkpoint_names_the_step(normbench, monkeypatch):
    monkeypatch.setattr(runner, "run_planned", interrupt_after(1, {"done": 7}))
    result = normbench("run", *QUICK_RUN, "epochs=3")
    assert result.code == 130
    assert "holds epoch 2 of 3 up to step 7; rerun the same command to resume at that step" in (
        result.err
    )
