"""The long help texts of the `normbench` command line: the config groups and keys with their
defaults (`run --help` adds the keys of the groups as the given overrides compose them), how a sweep
works, and the lines of `normbench list`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from typer import Context
from typer.core import TyperCommand

from .config import GROUPS, compose, config_dir, flatten
from .errors import UserError

PRESETS = "experiment"  # the config group of presets (`# @package _global_`)
# `key: value  # comment` in a YAML file; a key with no value opens a section (eval:, log:)
YAML_KEY = re.compile(r"^(\s*)(\w+):\s*([^#]*?)\s*(?:#\s*(.*))?$")
OVERRIDES_KEY = "normbench.overrides"  # where ConfigHelpCommand keeps the overrides in ctx.meta


def documented_keys(path: Path) -> list[tuple[str, str, str]]:
    """(dotted key, value as written, comment) of each key of a hand-written config file, in file
    order; `defaults` lists and comment-only lines are skipped."""
    keys, section = [], ""
    for raw in path.read_text().splitlines():
        match = YAML_KEY.match(raw)
        if not match or match.group(2) == "defaults" or raw.lstrip().startswith("-"):
            continue
        indent, key, value, comment = match.groups()
        if not indent and not value:
            section = f"{key}."
            continue
        if not indent:
            section = ""
        keys.append((f"{section if indent else ''}{key}", value, comment or ""))
    return keys


def group_options(group: str) -> list[str]:
    """The options of a config group (the YAML files of configs/<group>/)."""
    return sorted(path.stem for path in (config_dir() / group).glob("*.yaml"))


def config_help() -> str:
    """The options of each config group and the top-level keys of configs/config.yaml with their
    defaults and comments."""
    # \b: click keeps this paragraph's line breaks
    lines = ["\b", "Config groups (pick with group=option):"]
    for group in GROUPS:
        lines.append(f"  {group:<10} {', '.join(group_options(group))}")
    lines.append(
        f"  {PRESETS:<10} {', '.join(group_options(PRESETS))} (presets; one that holds a grid "
        "runs with normbench sweep)"
    )
    lines += ["", "\b", "Keys (key=value; nested ones as norm.groups=16, data.train_size=2000):"]
    for name, value, comment in documented_keys(config_dir() / "config.yaml"):
        lines.append(f"  {name + '=' + value:<26} {comment}".rstrip())
    lines += [
        "",
        "The keys of the groups (backbone.*, norm.*, data.*, optim.*) follow the options below, as "
        "the overrides given compose them: normbench run norm=gn --help shows gn's.",
        "",
        "Your own norm: a module that calls normbench.norms.register_norm, loaded with --plugin "
        "MODULE, NORMBENCH_PLUGINS=mod1,mod2 or an installed package's entry point (group "
        "normbench.norms); then norm=<its name> (normbench list norms --plugin MODULE).",
    ]
    return "\n".join(lines)


def group_keys_help(overrides: list[str], user_config_dir: str | None = None) -> str:
    """Every key of the config groups as `overrides` compose them, with its value and the comment
    of the YAML file it comes from."""
    try:
        cfg, choices = compose(overrides, user_config_dir, with_choices=True)
    except UserError as error:
        return f"The keys of the groups cannot be shown for these overrides: {error}"
    comments = {
        f"{group}.{key}": comment
        for group, option in choices.items()
        for path in option_files(group, option)  # base first: a variant's own comments win
        for key, _, comment in documented_keys(path)
        if comment
    }
    picked = " ".join(f"{group}={option}" for group, option in choices.items())
    lines = ["\b", f"Keys of the groups, as composed for {picked}:"]
    for key, value in flatten(cfg).items():
        if key.split(".")[0] in GROUPS:
            shown = f"{key}={as_override(value)}"
            lines.append(f"  {shown:<30} {comments.get(key, '')}".rstrip())
    return "\n".join(lines)


def as_override(value: Any) -> str:
    """A config value as an override writes it: null, true, 0.1, relu, [0.3,0.6]."""
    if isinstance(value, list):
        return f"[{','.join(as_override(item) for item in value)}]"
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def option_files(group: str, option: str) -> list[Path]:
    """The shipped YAML file of a group's option after the files its defaults list pulls in
    (lenet_relu: lenet.yaml, lenet_relu.yaml); none for an option shipped elsewhere."""
    path = config_dir() / group / f"{option}.yaml"
    if not path.is_file():  # a user config dir's or a plugin's
        return []
    return [base for name in defaults_of(path) for base in option_files(group, name)] + [path]


def defaults_of(path: Path) -> list[str]:
    """The options a config file's defaults list names in its own group (`- lenet`)."""
    defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults", [])
    return [entry for entry in defaults if isinstance(entry, str) and entry != "_self_"]


def norm_options_help() -> str:
    """One line per shipped norm config with its options and their defaults."""
    lines = ["\b", "Options of every norm (norm=NAME norm.KEY=VALUE):"]
    for option in group_options("norm"):
        keys = documented_keys(config_dir() / "norm" / f"{option}.yaml")
        settings = " ".join(f"{key}={value}" for key, value, _ in keys if key != "name")
        lines.append(f"  {option:<11} {settings or '(none)'}")
    return "\n".join(lines)


class ConfigHelpCommand(TyperCommand):
    """A command whose --help ends with the keys of the config groups as the overrides typed
    before --help compose them (`normbench run norm=gn --help`), and every norm's options."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        ctx.meta[OVERRIDES_KEY] = list(args)  # --help is handled inside parse_args
        return super().parse_args(ctx, args)

    def format_epilog(self, ctx: Context, formatter: Any) -> None:
        args = ctx.meta.get(OVERRIDES_KEY, [])
        overrides = [arg for arg in args if "=" in arg and not arg.startswith("-")]
        user_dir = next((b for a, b in zip(args, args[1:]) if a == "--config-dir"), None)
        for text in (group_keys_help(overrides, user_dir), norm_options_help()):
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text(text)


def norm_lines(norms: Mapping[str, Any]) -> list[str]:
    """`normbench list norms`: one line per registered norm (NORMS) with its traits; a plugin's
    names the module that registered it."""
    lines = []
    for name, spec in norms.items():
        traits = ["batch stats" if spec.batch_dependent else "batch-independent"]
        if spec.includes_activation:
            traits.append("own activation")
        if not spec.supports_1d:
            traits.append("no fc form")
        if spec.plugin is not None:
            traits.append(f"plugin: {spec.plugin}")
        lines.append(f"{name:<12} {spec.description}  [{', '.join(traits)}]")
    return lines


def backbone_lines(backbones: Mapping[str, Any]) -> list[str]:
    """`normbench list backbones`: every registered backbone (BACKBONES) and every backbone config
    that is a variant of one (lenet_relu: its first comment line), after the one it varies."""
    variants: dict[str, list[str]] = {}
    for path in sorted((config_dir() / "backbone").glob("*.yaml")):
        if path.stem in backbones:
            continue
        base = next((name for name in defaults_of(path) if name in backbones), None)
        if base is not None:
            variants.setdefault(base, []).append(f"{path.stem:<12} {first_comment(path)}")
    lines = []
    for name, spec in backbones.items():
        inputs = f"  [input: {spec.inputs}]"
        lines.append(f"{name:<12} {spec.description}{inputs}")
        lines += [f"{variant}{inputs}" for variant in variants.get(name, [])]
    return lines


def experiment_lines() -> list[str]:
    """`normbench list experiments`: each preset with the first line of its comment."""
    presets = sorted((config_dir() / PRESETS).glob("*.yaml"))
    return [f"{path.stem:<14} {first_comment(path)}" for path in presets] or [
        "no experiment presets yet"
    ]


def first_comment(path: Path) -> str:
    """The first comment line of a config file (not Hydra's `# @package` line)."""
    return next(
        (
            line.lstrip("# ").strip()
            for line in path.read_text().splitlines()
            if line.startswith("#") and "@package" not in line
        ),
        "",
    )


SWEEP_HELP = """Run the grid of all sweep overrides (Hydra syntax), one cell after another, then
write <out>/sweeps/<name>/ (sweep.yaml, table.md, table.tex, table.csv,
error_vs_batch.png).

Examples: normbench sweep norm=bn,gn batch=2,4,8 seed=0,1,2 | normbench sweep norm=gn
batch=range(2,9,2)

Sweeps: comma lists (a=1,2), range(start,stop[,step]), choice(...); other overrides apply to every
cell. A preset may hold the grid: normbench sweep experiment=gn_paper --jobs 2 (normbench list
experiments). Every cell is checked before any trains; --dry-run lists the cells (run key, SGD
batch, lr, steps, done or not, time estimate) and trains nothing. Completed runs are skipped, so
rerunning a sweep only does what is missing; a failed or diverged cell is reported and the others
go on. Same keys as `normbench run --help`.

Parallel / cluster (Hydra launchers): --jobs N runs N cells at once on this machine (joblib);
hydra/launcher=submitit_slurm hydra.launcher.partition=P hydra.launcher.timeout_min=120 submits one
SLURM job per cell (pip install 'normbench[slurm]'); hydra/launcher=submitit_local tries that
locally."""
