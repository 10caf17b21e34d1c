"""Composing the run config with Hydra's compose API, and turning every bad input into one UserError
line."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .errors import UserError

# Keys of the run's identity (they name the run dir) and keys that never change results.
IDENTITY_KEYS = ("batch", "accum", "seed")
NON_RESULT_KEYS = ("out", "device", "log", "data.workers")


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


def _search_path_overrides(user_config_dir: str | os.PathLike | None) -> list[str]:
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
    """
    cfg = compose_with_hydra(overrides, user_config_dir)
    choices = {
        group: str(cfg.hydra.runtime.choices[group])
        for group in GROUPS
        if cfg.hydra.runtime.choices.get(group) is not None
    }
    OmegaConf.set_struct(cfg, False)
    del cfg["hydra"]
    OmegaConf.set_struct(cfg, True)
    return (cfg, choices) if with_choices else cfg


def compose_with_hydra(
    overrides: Iterable[str] = (), user_config_dir: str | os.PathLike | None = None
) -> DictConfig:
    """The composed config including its `hydra` node (launcher, sweeper params of an experiment
    preset)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return hydra_compose(
                "config",
                overrides=overrides + _search_path_overrides(user_config_dir),
                return_hydra_config=True,
            )
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(explain_hydra_error(error, overrides)) from error
    finally:
        GlobalHydra.instance().clear()


def preset_sweep(
    overrides: Iterable[str], user_config_dir: str | os.PathLike | None = None
) -> dict[str, str]:
    """The grid an experiment preset holds in `hydra.sweeper.params` (e.g. {"norm": "bn,gn",
    "batch": "32,2"})."""
    params = compose_with_hydra(overrides, user_config_dir).hydra.sweeper.get("params")
    return {str(key): str(value) for key, value in (params or {}).items()}


def explain_hydra_error(error: Exception, overrides: list[str]) -> str:
    """Hydra's multi-line error text -> one line that names the problem and the fix."""
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
        return (
            f"unknown config key {key!r}{did_you_mean(key, known_keys())}; "
            f"`normbench run --help` lists the keys"
        )
    if "Error parsing override" in text or type(error).__name__ == "OverrideParseException":
        which = re.search(r"Error parsing override '([^']*)'", text)
        bad = which.group(1) if which else " ".join(overrides)
        return f"malformed override {bad!r}: write key=value (Hydra syntax), e.g. norm=gn batch=2"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return f"bad config: {first}"


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


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


def known_keys() -> list[str]:
    """Every key of the default config, for suggestions."""
    return list(flatten(compose()))
