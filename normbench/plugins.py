"""Norm plugins: modules that register norms of their own with normbench.norms.register_norm when
imported. They come from installed packages' entry points (group `normbench.norms`), from
$NORMBENCH_PLUGINS (mod1,mod2) and from `--plugin MODULE`; README "Your own norm" shows one.

A plugin is code the user chose to import; configs still never name a class (`_target_`)."""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Iterable
from functools import partial
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .errors import UserError
from .norms import NORMS

ENTRY_POINT_GROUP = "normbench.norms"
PLUGINS_ENV = "NORMBENCH_PLUGINS"
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def load_plugins(modules: Iterable[str] = (), source: str = "--plugin") -> None:
    """Import every norm plugin: the entry points of installed packages, then the modules of
    $NORMBENCH_PLUGINS, then `modules`; each registers its norms as it is imported. Loading again
    is harmless: a module already imported is not run again.

    The current folder goes at the end of sys.path (if absent), so `--plugin mynorm` finds
    ./mynorm.py, as `python -m` would, without shadowing installed modules.

    Args:
        modules: importable module names (`--plugin`).
        source: how the message of a failed import names where `modules` came from.

    Raises UserError (one line, naming the module and its error) when a plugin fails to load.
    """
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        _load(entry.value, _describe(entry), partial(_run_entry_point, entry))
    named = [(name, PLUGINS_ENV) for name in _env_modules()] + [(name, source) for name in modules]
    if named and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    for name, where in named:
        if not MODULE_NAME.fullmatch(name):
            raise UserError(
                f"norm plugin {name!r} ({where}) is not a module name: give an importable module "
                "such as mypackage.norms (a file ./mynorm.py is `mynorm`)"
            )
        _load(name, where, partial(importlib.import_module, name))


def worker_plugins() -> dict[str, list[str]]:
    """What a sweep's worker process (a Hydra launcher job) needs to register the plugin norms this
    process has: the modules that registered them and this process's sys.path (a reused worker
    started before a plugin's folder was added lacks it). Passed to load_worker_plugins."""
    modules = {spec.plugin for spec in NORMS.values() if spec.plugin not in (None, "__main__")}
    return {"modules": sorted(str(module) for module in modules), "sys_path": list(sys.path)}


def load_worker_plugins(state: dict[str, list[str]] | None) -> None:
    """In a worker: the plugins the sweep's process had (worker_plugins), plus the worker's own
    entry points and $NORMBENCH_PLUGINS."""
    state = state or {}
    sys.path.extend(path for path in state.get("sys_path", []) if path not in sys.path)
    load_plugins(state.get("modules", []), source="the sweep's plugins")


def _env_modules() -> list[str]:
    """The modules named by $NORMBENCH_PLUGINS, a comma list (blanks ignored)."""
    return [name.strip() for name in os.environ.get(PLUGINS_ENV, "").split(",") if name.strip()]


def _describe(entry: EntryPoint) -> str:
    """Where an entry point comes from, for messages: its package and group."""
    package = entry.dist.name if entry.dist is not None else "an installed package"
    return f"entry point {entry.name!r} of {package}, group {ENTRY_POINT_GROUP}"


def _run_entry_point(entry: EntryPoint) -> None:
    """An entry point names a module (imported: that registers its norms) or a function in one
    (`mypackage.norms:register`), called with no arguments."""
    loaded = entry.load()
    if callable(loaded) and not isinstance(loaded, type):
        loaded()


def _load(name: str, where: str, load: Callable[[], Any]) -> None:
    """Run `load`; any error becomes one UserError line naming the plugin."""
    try:
        load()
    except Exception as error:  # whatever a plugin raises, the user gets one line, exit 2
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        kind = "" if isinstance(error, UserError) else f"{type(error).__name__}: "
        hint = (
            "; is it installed, or a file in the current folder?"
            if isinstance(error, ModuleNotFoundError) and f"{name}.".startswith(f"{error.name}.")
            else ""
        )
        raise UserError(f"cannot load norm plugin {name!r} ({where}): {kind}{text}{hint}") from None
