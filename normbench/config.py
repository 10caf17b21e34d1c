"""Composing the run config with Hydra's compose API, and turning every bad input into one UserError
line."""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import UserError
from .values import did_you_mean

# Keys of the run's identity (they name the run dir) and keys that never change results.
IDENTITY_KEYS = ("batch", "devices", "accum", "seed")
NON_RESULT_KEYS = ("out", "device", "log", "data.workers", "checkpoint")
# Keys added after records and checkpoints were first written, with the value that trains as a run
# without them did: an old record or checkpoint reads as if it had them.
ADDED_KEYS = {
    "devices": 1,
    "sgd_batch": None,
    "eval.running_stats": "device0",
    "eval.precise_batches": 0,
    "eval.precise_estimator": "population",
    "data.val_size": 0,
    "backbone.fc_norm": True,
}


def with_added_keys(flat: dict[str, Any]) -> dict[str, Any]:
    """A flat config (or identity) with ADDED_KEYS filled in where it lacks them."""
    return {**ADDED_KEYS, **flat}


def changes_results(key: str) -> bool:
    """False for settings that never change a run's numbers (where it writes, which device, logging,
    loader workers): they are left out of the run key and of the checkpoint's identity."""
    return not any(key == k or key.startswith(f"{k}.") for k in NON_RESULT_KEYS)


GROUPS = ("backbone", "norm", "data", "optim")
USER_CONFIG_ENV = "NORMBENCH_CONFIG_DIR"


def config_dir() -> Path:
    """The shipped configs: inside the installed package (wheel), else the repo's top-level configs/
    (editable install or source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise UserError(
        f"normbench's configs are missing (looked in {here / 'configs'} and "
        f"{here.parent / 'configs'}): reinstall normbench"
    )


def search_path_overrides(user_config_dir: str | os.PathLike | None) -> list[str]:
    """Hydra's override that searches a user config dir (or $NORMBENCH_CONFIG_DIR) first."""
    user_dir = user_config_dir or os.environ.get(USER_CONFIG_ENV)
    if not user_dir:
        return []
    path = Path(user_dir).expanduser().resolve()
    if not path.is_dir():
        raise UserError(
            f"config dir {user_dir} does not exist: pass --config-dir DIR with an existing folder"
        )
    return [f"hydra.searchpath=[file://{path}]"]


def compose(
    overrides: Iterable[str] = (),
    user_config_dir: str | os.PathLike | None = None,
    with_choices: bool = False,
) -> DictConfig | tuple[DictConfig, dict[str, str]]:
    """One config from the shipped configs, an optional user config dir and Hydra overrides.

    With `with_choices`, also returns the option picked in each config group (e.g. {"norm": "gn"}).
    Composed once per set of arguments and config files (Hydra takes ~0.2 s a time; a sweep composes
    a baseline per run); every call gets its own copy, free to change.
    """
    cfg, choices = _shared_config(overrides, user_config_dir)
    cfg, choices = copy.deepcopy(cfg), dict(choices)
    return (cfg, choices) if with_choices else cfg


def flat_config(
    overrides: Iterable[str] = (), user_config_dir: str | os.PathLike | None = None
) -> dict[str, Any]:
    """`flatten(compose(overrides, user_config_dir))` without copying the DictConfig first."""
    return flatten(_shared_config(overrides, user_config_dir)[0])


def group_defaults(user_config_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """The option each config group takes when nothing picks one (e.g. {"norm": "bn"})."""
    return dict(_shared_config((), user_config_dir)[1])


def _shared_config(
    overrides: Iterable[str], user_config_dir: str | os.PathLike | None
) -> tuple[DictConfig, dict[str, str]]:
    """The composed config and its group choices, from the per-process cache: read-only, callers
    copy before changing anything."""
    overrides = tuple(overrides)
    search_path = tuple(search_path_overrides(user_config_dir))
    if any("searchpath" in override for override in overrides):  # files we do not fingerprint
        return _run_config(overrides, search_path)
    return _cached_run_config(overrides, search_path, _fingerprint(search_path))


def _run_config(
    overrides: tuple[str, ...], search_path: tuple[str, ...]
) -> tuple[DictConfig, dict[str, str]]:
    """The composed config without its `hydra` node, and the option picked in each group."""
    cfg = _compose(list(overrides), list(search_path))
    choices = {
        group: str(cfg.hydra.runtime.choices[group])
        for group in GROUPS
        if cfg.hydra.runtime.choices.get(group) is not None
    }
    OmegaConf.set_struct(cfg, False)
    del cfg["hydra"]
    OmegaConf.set_struct(cfg, True)
    return cfg, choices


@functools.lru_cache(maxsize=512)
def _cached_run_config(
    overrides: tuple[str, ...], search_path: tuple[str, ...], fingerprint: tuple
) -> tuple[DictConfig, dict[str, str]]:
    """_run_config, kept while the config files (`fingerprint`) stay as they are; callers copy."""
    return _run_config(overrides, search_path)


def _fingerprint(search_path: tuple[str, ...]) -> tuple:
    """(path, size, mtime) of every file Hydra may read: the shipped configs and the user config
    dir, so an edited or added YAML file is composed afresh; and the norm configs plugins stored."""
    prefix, suffix = "hydra.searchpath=[file://", "]"  # as search_path_overrides writes them
    folders = [
        config_dir(),
        *(Path(s.removeprefix(prefix).removesuffix(suffix)) for s in search_path),
    ]
    files = [path for folder in folders for path in sorted(folder.rglob("*.yaml"))]
    stored = ConfigStore.instance().repo.get("norm", {})  # plugin norms (normbench.plugins)
    return (
        *((str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in files),
        *((name, repr(node.node)) for name, node in sorted(stored.items())),
    )


def compose_with_hydra(
    overrides: Iterable[str] = (), user_config_dir: str | os.PathLike | None = None
) -> DictConfig:
    """The composed config including its `hydra` node (launcher, sweeper params of an experiment
    preset)."""
    return _compose(list(overrides), search_path_overrides(user_config_dir))


def _compose(overrides: list[str], search_path: list[str]) -> DictConfig:
    """Hydra's compose, its errors as one UserError line."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return hydra_compose(
                "config", overrides=overrides + search_path, return_hydra_config=True
            )
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(explain_hydra_error(error, overrides, search_path)) from error
    finally:
        GlobalHydra.instance().clear()


def preset_sweep(
    overrides: Iterable[str], user_config_dir: str | os.PathLike | None = None
) -> dict[str, str]:
    """The grid an experiment preset holds in `hydra.sweeper.params` (e.g. {"norm": "bn,gn",
    "batch": "32,2"})."""
    params = compose_with_hydra(overrides, user_config_dir).hydra.sweeper.get("params")
    return {str(key): str(value) for key, value in (params or {}).items()}


def check_single_run(
    overrides: Iterable[str], user_config_dir: str | os.PathLike | None = None
) -> None:
    """UserError pointing to `normbench sweep` when the overrides hold a grid: a sweep override
    (`norm=bn,gn`, `seed=range(3)`) or an experiment preset whose grid (hydra.sweeper.params) sweeps
    a key that no override fixes (`experiment=gn_paper norm=bn batch=2` is one run)."""
    overrides = list(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except (HydraException, OmegaConfBaseException):
        return  # composing reports the malformed override
    command = " ".join(["normbench sweep", *overrides])
    swept = [override.input_line for override in parsed if override.is_sweep_override()]
    if swept:
        raise UserError(
            f"{swept[0]!r} is a sweep and `normbench run` trains one config: use `{command}` "
            "(add --dry-run to list its cells), or give one value"
        )
    given = {override.key_or_group for override in parsed}
    if "experiment" not in given:
        return
    grid = {
        key: values
        for key, values in preset_sweep(overrides, user_config_dir).items()
        if key.lstrip("+~") not in given
    }
    if grid:
        preset = [o.value() for o in parsed if o.key_or_group == "experiment"][-1]
        example = " ".join(f"{key}={values.split(',')[0]}" for key, values in grid.items())
        raise UserError(
            f"experiment={preset} holds a grid ({'; '.join(f'{k}={v}' for k, v in grid.items())})"
            f" and `normbench run` trains one config: use `{command}` (add --dry-run to list its "
            f"cells), or give each swept key one value, e.g. {example}"
        )


def explain_hydra_error(
    error: Exception, overrides: list[str], search_path: Iterable[str] = ()
) -> str:
    """Hydra's multi-line error text -> one line that names the problem and the fix; an unknown
    key's suggestion comes from the config the other overrides compose (`norm=gn norm.grups=8`:
    gn's keys), with the `search_path` overrides of a user config dir."""
    text = str(error)
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if missing:
        group, option = missing.groups()
        options = re.findall(r"^\t(\S+)$", text, flags=re.MULTILINE)
        return (
            f"unknown {group} {option!r}{did_you_mean(option, options)}; choose one of: "
            f"{', '.join(options)} (normbench list)"
        )
    bad_key = re.search(r"Could not override '([^']+)'", text)
    if bad_key:
        key = bad_key.group(1)
        others = [text for text in overrides if text.split("=", 1)[0].lstrip("+~") != key]
        return (
            f"unknown config key {key!r}{did_you_mean(key, known_keys(others, search_path))}; "
            f"`normbench run --help` lists the keys"
        )
    if "Error parsing override" in text or type(error).__name__ == "OverrideParseException":
        which = re.search(r"Error parsing override '([^']*)'", text)
        bad = which.group(1) if which else " ".join(overrides)
        return f"malformed override {bad!r}: write key=value (Hydra syntax), e.g. norm=gn batch=2"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return f"bad config: {first}"


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b": value}; lists stay values."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def known_keys(overrides: Iterable[str] = (), search_path: Iterable[str] = ()) -> list[str]:
    """Every key of the config that `overrides` compose (with a user config dir's `search_path`
    overrides), for suggestions; the default config's when they do not compose."""
    try:
        return list(flatten(_run_config(tuple(overrides), tuple(search_path))[0]))
    except UserError:  # e.g. a second unknown key: suggest from the default config
        return list(flatten(_run_config((), tuple(search_path))[0]))
