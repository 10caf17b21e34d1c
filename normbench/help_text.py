"""The long help texts of the `normbench` command line: the config keys with their defaults, how a
sweep works, and the lines of `normbench list norms`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .config import GROUPS, config_dir


def config_help() -> str:
    """The keys of configs/config.yaml with their defaults and comments, and the options of each
    group."""
    root = config_dir()
    # \b: click keeps this paragraph's line breaks
    lines = ["\b", "Config groups (pick with group=option):"]
    for group in GROUPS:
        options = sorted(p.stem for p in (root / group).glob("*.yaml"))
        lines.append(f"  {group:<9} {', '.join(options)}")
    lines += ["", "\b", "Keys (key=value; nested ones as norm.groups=16, data.train_size=2000):"]
    section = ""
    for raw in (root / "config.yaml").read_text().splitlines():
        match = re.match(r"^(\s*)(\w+):\s*([^#]*?)\s*(?:#\s*(.*))?$", raw)
        if not match or match.group(2) == "defaults" or raw.lstrip().startswith("-"):
            continue
        indent, key, value, comment = match.groups()
        if not indent and not value:
            section = f"{key}."
            continue
        name = f"{section if indent else ''}{key}"
        if not indent:
            section = ""
        lines.append(f"  {name + '=' + value:<26} {comment or ''}".rstrip())
    lines += [
        "",
        "Norm options live under norm. (see configs/norm/*.yaml), e.g. norm.groups=8 "
        "norm.eps=1e-6.",
        "",
        "Your own norm: a module that calls normbench.norms.register_norm, loaded with --plugin "
        "MODULE, NORMBENCH_PLUGINS=mod1,mod2 or an installed package's entry point (group "
        "normbench.norms); then norm=<its name> (normbench list norms --plugin MODULE).",
    ]
    return "\n".join(lines)


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


SWEEP_HELP = """Run the grid of all sweep overrides (Hydra syntax), one cell after another, then
write <out>/sweeps/<name>/ (sweep.yaml, table.md, table.tex, table.csv,
error_vs_batch.png).

Examples: normbench sweep norm=bn,gn batch=2,4,8 seed=0,1,2 | normbench sweep norm=gn
batch=range(2,9,2)

Sweeps: comma lists (a=1,2), range(start,stop[,step]), choice(...); other overrides apply to every
cell. A preset may hold the grid: normbench sweep experiment=gn_paper --jobs 2 (normbench list
experiments). Every cell is checked before any trains. Completed runs are skipped, so rerunning a
sweep only does what is missing; a failed or diverged cell is reported and the others go on. Same
keys as `normbench run --help`.

Parallel / cluster (Hydra launchers): --jobs N runs N cells at once on this machine (joblib);
hydra/launcher=submitit_slurm hydra.launcher.partition=P hydra.launcher.timeout_min=120 submits one
SLURM job per cell (pip install 'normbench[slurm]'); hydra/launcher=submitit_local tries that
locally."""
