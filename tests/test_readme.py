"""README.md's quick commands run, and every relative link in README.md and docs/*.md resolves.

A quick block is the fenced code block right after a `<!-- test: quick -->` line. Each of its
lines (backslash continuations joined, `#` comments dropped) must be one `normbench ...` command,
optionally after `VAR=value` environment settings. All quick blocks run in README order, in this
process (through the `normbench` fixture, which calls the CLI's `main`), in one temporary working
directory, so a later command reads what an earlier one wrote under `outputs/`, as a shell would.

Tiny data: `run` and `sweep` commands get TINY_DATA, each of whose keys replaces the README's value
of that key (or is appended). The README's other keys and options (norm, batch, a preset and its
grid, `--jobs`, `--name`) stay as written, so the command itself is what is tested; only the data
and the epochs shrink. Any exit code but 0 fails the test, naming the README line.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from normbench.study.grid import default_name, expand

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKDOWN = [README, *sorted((ROOT / "docs").glob("*.md"))]
QUICK_MARK = "<!-- test: quick -->"
TINY_DATA = (
    "data=synthetic",
    "data.train_size=256",
    "data.test_size=64",
    "epochs=1",
    "log.progress=none",
)
TRAINING_COMMANDS = ("run", "sweep")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


# ---------------------------------------------------------------- quick commands


def quick_commands(text: str) -> list[str]:
    """The command lines of every quick block, in order (continuations joined, comments dropped)."""
    commands = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip() != QUICK_MARK:
            continue
        assert lines[index + 1].startswith("```"), (
            f"{QUICK_MARK} on line {index + 1} precedes no block"
        )
        end = lines.index("```", index + 2)
        block = "\n".join(lines[index + 2 : end]).replace("\\\n", " ")
        commands += [cmd.strip() for cmd in block.splitlines() if shlex.split(cmd, comments=True)]
    return commands


def parse(command: str) -> tuple[dict[str, str], list[str]]:
    """(environment settings, normbench's arguments) of one README command line."""
    words = shlex.split(command, comments=True)
    env = {}
    while re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    assert Path(words[0]).name == "normbench", (
        f"a quick block holds a non-normbench line: {command}"
    )
    return env, words[1:]


def with_tiny_data(args: list[str]) -> list[str]:
    """`run`/`sweep` arguments with TINY_DATA's keys replacing the README's values of them.

    A sweep without `--name` gets the name the README's own overrides give it, so that the commands
    after it find `outputs/sweeps/<name>` as they would in a reader's shell.
    """
    if not args or args[0] not in TRAINING_COMMANDS:
        return args
    tiny_keys = {override.split("=")[0] for override in TINY_DATA}
    kept = [a for a in args if a.startswith("-") or a.split("=")[0].lstrip("+~") not in tiny_keys]
    name = []
    if args[0] == "sweep" and "--name" not in args:
        overrides = [a for a in args[1:] if "=" in a and not a.startswith("-")]
        name = ["--name", default_name(expand(overrides))]
    return [*kept, *TINY_DATA, *name]


def test_the_quickstart_is_a_quick_block():
    commands = [parse(command)[1] for command in quick_commands(README.read_text())]
    assert commands[0][:2] == ["sweep", "experiment=quick"]
    assert ["table", "outputs/sweeps/quick"] in [args[:2] for args in commands]


def test_the_parser_finds_blocks_and_refuses_what_it_cannot_run():
    text = f"x\n{QUICK_MARK}\n```bash\nnormbench run \\\n  norm=gn   # a comment\n\n```\n"
    assert quick_commands(text) == ["normbench run    norm=gn   # a comment"]
    assert parse("OMP_NUM_THREADS=1 .venv/bin/normbench list norms") == (
        {"OMP_NUM_THREADS": "1"},
        ["list", "norms"],
    )
    with pytest.raises(AssertionError, match="non-normbench"):
        parse("bash scripts/setup.sh")
    with pytest.raises(AssertionError, match="precedes no block"):
        quick_commands(f"{QUICK_MARK}\nnormbench run\n")


def test_tiny_data_replaces_the_readmes_sizes_and_keeps_the_rest():
    args = ["run", "norm=gn", "data.train_size=5000", "epochs=3", "--force"]
    assert with_tiny_data(args) == ["run", "norm=gn", "--force", *TINY_DATA]
    sweep = ["sweep", "experiment=quick", "--jobs", "2"]
    assert with_tiny_data(sweep) == [*sweep, *TINY_DATA, "--name", "quick"]
    named = ["sweep", "norm=bn,gn", "--name", "mine"]
    assert with_tiny_data(named) == [*named, *TINY_DATA]
    assert with_tiny_data(["table", "outputs/runs"]) == ["table", "outputs/runs"]


def test_every_quick_readme_command_runs(tmp_path, monkeypatch, normbench):
    monkeypatch.chdir(tmp_path)  # the fixture's out=<tmp>/outputs is then the README's `outputs`
    for command in quick_commands(README.read_text()):
        env, args = parse(command)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        result = normbench(*with_tiny_data(args))
        assert result.code == 0, (
            f"README: `{command}` exited {result.code}:\n{result.out[-2000:]}{result.err}"
        )


# ---------------------------------------------------------------- links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (repeats get -1, -2, ... as on GitHub)."""
    found, repeats = set(), {}
    for line in FENCE.sub("", path.read_text()).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match.group(1))
            found.add(f"{base}-{repeats[base]}" if base in repeats else base)
            repeats[base] = repeats.get(base, 0) + 1
    return found


def broken_links(path: Path) -> list[str]:
    """The relative links (and in-page anchors) of a Markdown file that point nowhere."""
    broken = []
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto: — not ours to check offline
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(target)
    return broken


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    assert broken_links(path) == []


def test_the_link_check_finds_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A title, here\n")
    page.write_text(
        "# Top\n[ok](there.md#a-title-here) [gone](missing.md) [bad anchor](there.md#nope)\n"
        "[self](#top) [self bad](#bottom) [web](https://example.org/x)\n"
        "```\n[in code](nowhere.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md", "there.md#nope", "#bottom"]
