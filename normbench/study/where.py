"""`--where key=value` filters of `table` and `plot`: which run records a table or figure reads.

A filter is written like an override: a dotted config key (`batch`, `data.train_size`,
`norm.groups`; a group name such as `norm` means its `name`) and a value parsed as Hydra parses an
override (`batch=2` is the integer 2, `amp=true` a bool, `norm=bn,gn` either of two values).
Several filters must all hold.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from ..config import ADDED_KEYS, GROUPS, flatten
from ..errors import UserError
from .grid import parse
from .run_records import Run

WHERE_HELP = (
    "Only the runs whose config has KEY=VALUE (repeatable: all must hold). KEY is a dotted config "
    "key as in overrides (norm, batch, data.train_size, norm.groups); VALUE is parsed like an "
    "override, a comma list matches any of its values (e.g. --where batch=2,4)."
)


@dataclass(frozen=True)
class Where:
    """One `--where` filter.

    Args:
        key: the dotted config key.
        values: the values it may have (one, or those of a comma list / range).
        text: as the user typed it, for messages and captions.
    """

    key: str
    values: tuple[Any, ...]
    text: str

    def holds(self, run: Run) -> bool:
        return any(same_value(run.get(self.key), wanted) for wanted in self.values)


def parse_where(texts: list[str] | None) -> list[Where]:
    """The `--where` options (repeatable) -> filters; a malformed one is one UserError line."""
    filters = []
    for text in texts or ():
        key, sign, raw = text.partition("=")
        if not sign or not key.strip() or not raw.strip() or key.startswith(("+", "~")):
            raise UserError(f"--where {text!r}: give key=value, e.g. --where norm=gn")
        override = parse(f"{key.strip()}={raw.strip()}")
        if not override.is_sweep_override():
            values: tuple[Any, ...] = (override.value(),)
        elif override.is_discrete_sweep():
            values = tuple(override.sweep_iterator())
        else:
            raise UserError(
                f"--where {text!r}: give one value or a comma list, e.g. --where batch=2,4"
            )
        filters.append(Where(key.strip(), values, text))
    return filters


def select(runs: list[Run], where: list[Where]) -> list[Run]:
    """The runs every filter holds for. A key no record has -> UserError naming close keys; no run
    left -> UserError naming the values the records do have."""
    if not where:
        return runs
    known = known_keys(runs)
    for condition in where:
        if condition.key not in known:
            close = difflib.get_close_matches(condition.key, known, n=3, cutoff=0.5)
            hint = f"close keys: {', '.join(close)}" if close else "e.g. norm, batch, seed"
            raise UserError(
                f"--where {condition.text!r}: no run record has the config key "
                f"{condition.key!r} ({hint})"
            )
    selected = [run for run in runs if all(condition.holds(run) for condition in where)]
    if not selected:
        present = ", ".join(
            f"{c.key} in {{{', '.join(sorted({str(run.get(c.key)) for run in runs}))}}}"
            for c in where
        )
        raise UserError(
            f"no run record matches --where {' '.join(c.text for c in where)}; the records have "
            f"{present}"
        )
    return selected


def known_keys(runs: list[Run]) -> list[str]:
    """Every config key some record has, the group names (`norm` = `norm.name`) and the keys added
    since older records were written, sorted."""
    keys = set(GROUPS) | set(ADDED_KEYS)
    for run in runs:
        keys.update(flatten(run.record.config or {}))
    return sorted(keys)


def same_value(value: Any, wanted: Any) -> bool:
    """Equal as config values: 2 == 2.0, but a bool only equals a bool (true is not 1)."""
    if isinstance(value, bool) or isinstance(wanted, bool):
        return isinstance(value, bool) and isinstance(wanted, bool) and value == wanted
    return bool(value == wanted)


def describe(where: list[Where]) -> str:
    """`where batch=2 norm=bn,gn` for a caption; empty without filters."""
    return f"where {' '.join(c.text for c in where)}" if where else ""
