"""What `register_norm` checks before a plugin's norm joins NORMS, and the config it stores for it
(plumbing; no paper): a plugin norm must look exactly like a built-in to the rest of normbench."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

from hydra.core.config_store import ConfigStore

from ._common import NormConfigError
from .conv_weight import WEIGHT_MODES

# a norm name is a config group option and part of run and sweep folder names
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# what a config value can hold (configs/norm/<name>.yaml holds only these for the built-ins)
CONFIG_VALUES = (bool, int, float, str, type(None))
LAYER = inspect.Parameter.POSITIONAL_OR_KEYWORD
OPTION = inspect.Parameter.KEYWORD_ONLY


def factory_options(factory: Callable[..., Any]) -> dict[str, Any]:
    """The factory's keyword-only parameters with their defaults: the norm's config options."""
    return {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.kind is OPTION
    }


def check_name(name: object) -> str:
    """A norm name usable as `norm=<name>` and inside folder names."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise NormConfigError(
            f"cannot register norm {name!r}: a norm name is a letter followed by letters, digits "
            "or underscores (it becomes norm=<name> and part of folder names)"
        )
    return name


def check_factory(name: str, factory: object, includes_activation: bool) -> dict[str, Any]:
    """The options of a plugin's factory, after checking it follows the built-ins' convention:
    `factory(num_channels, dim[, act], *, option=default, ...)`."""
    if not callable(factory):
        raise NormConfigError(f"norm {name!r}: the factory must be callable, got {factory!r}")
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        raise NormConfigError(f"norm {name!r}: cannot read the factory's signature") from None
    layer = [p.name for p in params if p.kind is LAYER]
    wanted = ["num_channels", "dim"] + (["act"] if includes_activation else [])
    if layer != wanted or any(p.kind not in (LAYER, OPTION) for p in params):
        raise NormConfigError(
            f"norm {name!r}: the factory must read factory({', '.join(wanted)}, *, "
            f"option=default, ...) (layer arguments, then keyword-only options), got "
            f"factory{inspect.signature(factory)}"
        )
    for p in params:
        if p.kind is OPTION and (p.default is p.empty or not isinstance(p.default, CONFIG_VALUES)):
            got = "no default" if p.default is p.empty else repr(p.default)
            raise NormConfigError(
                f"norm {name!r}: option {p.name} needs a default that a config can hold (a "
                f"number, string, bool or None), got {got}"
            )
    return factory_options(factory)


def check_traits(name: str, flags: Mapping[str, object], conv_weight: object) -> None:
    """Every yes/no trait a bool (a truthy string would silently mean yes), a description of one
    line, a known conv weight reparametrization."""
    for trait, value in flags.items():
        if not isinstance(value, bool):
            raise NormConfigError(f"norm {name!r}: {trait} must be True or False, got {value!r}")
    if conv_weight is not None and conv_weight not in WEIGHT_MODES:
        raise NormConfigError(
            f"norm {name!r}: conv_weight must be None or one of {', '.join(WEIGHT_MODES)}, got "
            f"{conv_weight!r}"
        )


def check_extras(
    name: str, description: object, reference: object, check_options: Mapping, options: Mapping
) -> None:
    """The description `normbench list norms` prints, the formula reference and check options."""
    if not isinstance(description, str) or not description.strip() or "\n" in description:
        raise NormConfigError(
            f"norm {name!r}: description must be one line naming the method (and its paper)"
        )
    if reference is not None and not callable(reference):
        raise NormConfigError(f"norm {name!r}: reference must be callable or None")
    unknown = sorted(set(check_options) - set(options))
    if unknown:
        raise NormConfigError(
            f"norm {name!r}: check_options names {', '.join(unknown)}, which the factory does "
            f"not take; it takes: {', '.join(options) or 'no options'}"
        )


def store_config(name: str, options: Mapping[str, Any], module: str | None) -> None:
    """Hydra's config group option norm/<name> (a built-in's is configs/norm/<name>.yaml): `name`
    and the options with their defaults, so `norm=<name> norm.<option>=...` composes."""
    ConfigStore.instance().store(
        group="norm", name=name, node={"name": name, **options}, provider=module
    )


def forget_config(name: str) -> None:
    """Remove the config stored by store_config (Hydra's ConfigStore has no remove: its repo is a
    dict of groups, each a dict of "<name>.yaml" entries)."""
    ConfigStore.instance().repo.get("norm", {}).pop(f"{name}.yaml", None)
