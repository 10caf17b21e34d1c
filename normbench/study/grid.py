"""The grid of a sweep: Hydra sweep overrides expanded into one override list per cell, and names.

Hydra's compose API does not multirun, so the grid is expanded here with Hydra's own override parser
(comma lists, `range(...)`, `choice(...)`); each cell is then composed on its own (study.cells).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from ..config import explain_hydra_error, preset_sweep
from ..errors import UserError

NAME_MAX = 80
NAME_HASH = 8  # hex digits of the hash that ends a shortened name
SAFE = r"[^A-Za-z0-9._,=+-]+"  # anything else in a folder name becomes `-`


@dataclass
class Grid:
    """The cells of a sweep.

    Args:
        overrides: as the user typed them.
        swept: (key, values) of each sweep override, in the order given.
        cells: one full override list per cell.
        labels: the swept part of each cell, e.g. "norm=gn batch=2".
    """

    overrides: list[str]
    swept: list[tuple[str, list[str]]]
    cells: list[list[str]]
    labels: list[str]

    @property
    def keys(self) -> list[str]:
        return [key for key, _ in self.swept]


def bare_key(key: str) -> str:
    """The key without Hydra's add/delete prefix (`+seed` -> `seed`)."""
    return key.lstrip("+~")


def key_of(text: str) -> str:
    """The key of an override as typed (`+norm.groups=8` -> `+norm.groups`)."""
    return text.split("=", 1)[0]


_PARSER = OverridesParser.create()  # building the grammar once saves ~20 ms per parse


def parse(text: str) -> Override:
    """One override, parsed on its own so that an error names the bad one."""
    try:
        return _PARSER.parse_overrides([text])[0]
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(explain_hydra_error(error, [text])) from error


def experiment_of(overrides: list[str]) -> str | None:
    """The `experiment=NAME` preset among the overrides, if any."""
    names = [text.split("=", 1)[1] for text in overrides if bare_key(key_of(text)) == "experiment"]
    return names[-1] if names else None


def expand(overrides: list[str], user_config_dir: str | None = None) -> Grid:
    """Hydra sweep overrides -> the grid.

    Non-sweep overrides apply to every cell; each cell keeps the user's order of overrides with each
    sweep replaced by one of its values. An `experiment=` preset may hold a grid in
    `hydra.sweeper.params`; as in Hydra's multirun, a key given on the command line replaces the
    preset's sweep of that key.
    """
    overrides = list(overrides)
    parsed = [(text, parse(text)) for text in overrides]
    if experiment_of(overrides) is not None:
        given = {bare_key(override.get_key_element()) for _, override in parsed}
        fixed = [text for text, override in parsed if not override.is_sweep_override()]
        extra = [
            f"{key}={values}"
            for key, values in preset_sweep(fixed, user_config_dir).items()
            if bare_key(key) not in given
        ]
        parsed += [(text, parse(text)) for text in extra]
    slots: list[list[str]] = []
    swept_slots: list[int] = []
    swept: list[tuple[str, list[str]]] = []
    for text, override in parsed:
        if not override.is_sweep_override():
            slots.append([text])
            continue
        key = override.get_key_element()
        _check_sweep(text, override, key, [k for k, _ in swept])
        values = _as_typed(text, list(override.sweep_string_iterator()))
        if not values:
            raise UserError(f"{text!r} sweeps over no values; give at least one, e.g. batch=2,4")
        swept.append((key, values))
        swept_slots.append(len(slots))
        slots.append([f"{key}={value}" for value in values])
    cells = [list(choice) for choice in itertools.product(*slots)]
    labels = [
        " ".join(cell[i] for i in swept_slots) or " ".join(cell) or "(defaults)" for cell in cells
    ]
    return Grid(overrides, swept, cells, labels)


def _check_sweep(text: str, override: Override, key: str, swept_keys: list[str]) -> None:
    """A sweep the grid can hold: discrete, not of `out`, each key swept once."""
    if not override.is_discrete_sweep():
        raise UserError(
            f"{text!r}: only comma lists, range(...) and choice(...) can be swept "
            f"(interval sweeps need an optimizer), e.g. lr=0.05,0.1"
        )
    if bare_key(key) == "out":
        raise UserError(
            f"{text!r}: out cannot be swept (a sweep writes under one output root); "
            "give one out=DIR"
        )
    if bare_key(key) in [bare_key(k) for k in swept_keys]:
        raise UserError(
            f"{text!r}: {bare_key(key)} is swept twice; give all its values in one list"
        )


def _as_typed(text: str, values: list[str]) -> list[str]:
    """The values of a plain comma list as the user wrote them (Hydra prints `lr=1e12` as
    1000000000000.0), so that names, labels and sweep.yaml read like the command; anything fancier
    keeps Hydra's strings."""
    raw = text.split("=", 1)[1]
    if any(mark in raw for mark in "()[]{}'\"\\"):
        return values
    typed = [part.strip() for part in raw.split(",")]
    return typed if len(typed) == len(values) else values


@dataclass(frozen=True)
class SweepName:
    """An automatic sweep folder name, and the parts of the grid that did not fit in it (a hash of
    the whole grid at its end stands for them)."""

    name: str
    left_out: tuple[str, ...] = ()


def default_name(grid: Grid) -> str:
    """`norm-bn,gn_batch-2,4` from the swept keys and values; a single cell is named after its
    overrides. With a preset: its name, then the other overrides as typed
    (`gn_paper_backbone=resnet20_seed-0,1,2`). Never longer than NAME_MAX: see sweep_name."""
    return sweep_name(grid).name


def sweep_name(grid: Grid) -> SweepName:
    """The automatic name of a sweep's folder. A name over NAME_MAX characters drops whole parts,
    never part of a value, and ends in a hash of the full name: overrides that are not swept go
    first (the last typed first, `epochs` after the others), then swept keys; a preset's name stays.
    A swept key whose values alone do not fit is named with its number of values (`norm-40values`).
    """
    parts = _name_parts(grid)
    full = "_".join(text for _, text in parts)
    if len(full) <= NAME_MAX:
        return SweepName(full or "default")
    budget = NAME_MAX - NAME_HASH - 1
    kept = [(importance, _fitting(text, budget)) for importance, text in parts]
    left_out = []
    while kept and len("_".join(text for _, text in kept)) > budget:
        # the least important part, the last typed among equals; a preset's name (0) stays
        victim = max(range(len(kept)), key=lambda i: (kept[i][0], i))
        if kept[victim][0] == 0:
            break
        left_out.append(kept.pop(victim)[1])
    digest = hashlib.sha1(full.encode()).hexdigest()[:NAME_HASH]
    return SweepName("_".join([*(text for _, text in kept), digest]), tuple(left_out))


def _name_parts(grid: Grid) -> list[tuple[int, str]]:
    """(importance, text) of each part of the name, in the order typed; lower is kept longer: the
    preset 0, a swept key 1, epochs 2, any other override 3."""
    typed = dict(grid.swept)
    experiment = experiment_of(grid.overrides)
    if experiment is None and grid.swept:
        return [(1, _safe(f"{bare_key(key)}-{','.join(values)}")) for key, values in grid.swept]
    parts = [] if experiment is None else [(0, _safe(experiment))]
    for text in grid.overrides:
        key = key_of(text)
        if bare_key(key) == "experiment":
            continue
        if key in typed:
            parts.append((1, _safe(f"{bare_key(key)}-{','.join(typed[key])}")))
        else:
            parts.append((2 if bare_key(key) == "epochs" else 3, _safe(text)))
    return parts


def _fitting(part: str, budget: int) -> str:
    """A part that fits the budget; a longer swept key is named with its number of values
    (`norm-40values`)."""
    key, sign, values = part.partition("-")
    if len(part) <= budget or not sign or "=" in key:
        return part
    return f"{key}-{values.count(',') + 1}values"


def _safe(text: str) -> str:
    """A part of a folder name: odd characters become `-`."""
    return re.sub(SAFE, "-", text).strip("-.") or "x"


def sanitize(raw: str) -> str:
    """A safe folder name from a user's --name: odd characters become `-`; a long name is cut and
    ends in a hash."""
    name = re.sub(SAFE, "-", raw).strip("-.") or "sweep"
    if len(name) > NAME_MAX:
        digest = hashlib.sha1(raw.encode()).hexdigest()[:NAME_HASH]
        name = f"{name[: NAME_MAX - NAME_HASH - 1].rstrip('-.')}-{digest}"
    return name
