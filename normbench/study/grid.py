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


def default_name(grid: Grid) -> str:
    """`norm-bn,gn_batch-2,4` from the swept keys and values; a single cell is named after its
    overrides. With a preset: its name, then the other overrides as typed
    (`gn_paper_backbone=resnet20_seed-0,1,2`)."""
    experiment = experiment_of(grid.overrides)
    if experiment is not None:
        typed = dict(grid.swept)
        parts = [experiment] + [
            f"{bare_key(key_of(text))}-{','.join(typed[key_of(text)])}"
            if key_of(text) in typed
            else text
            for text in grid.overrides
            if bare_key(key_of(text)) != "experiment"
        ]
        return sanitize("_".join(parts))
    if grid.swept:
        raw = "_".join(f"{bare_key(key)}-{','.join(values)}" for key, values in grid.swept)
    else:
        raw = "_".join(grid.overrides) or "default"
    return sanitize(raw)


def sanitize(raw: str) -> str:
    """A safe folder name: odd characters become `-`; a long name is cut and ends in a hash."""
    name = re.sub(r"[^A-Za-z0-9._,=+-]+", "-", raw).strip("-.") or "sweep"
    if len(name) > NAME_MAX:
        digest = hashlib.sha1(raw.encode()).hexdigest()[:8]
        name = f"{name[: NAME_MAX - 9].rstrip('-.')}-{digest}"
    return name
