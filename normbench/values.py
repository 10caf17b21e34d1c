"""One vocabulary of value checks for configs and options.

Each check returns the value (converted where its name says so) or raises one line,
"{name} must be {what}, got {value!r}{hint}", as `error` (UserError unless the caller's domain has
its own subclass, e.g. norms' NormConfigError). The caller names the value (`batch`,
`data.train_size`, `norm 'gn': groups`) and may add a hint (`: e.g. batch=32`).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Sequence
from numbers import Real
from typing import Any

from .errors import UserError

ErrorType = type[Exception]
BOOL_WORDS = ("true", "false")


def bad_value(
    name: str, what: str, value: Any, hint: str = "", error: ErrorType = UserError
) -> Exception:
    """The one-line error every check raises (returned, for `raise bad_value(...)`)."""
    return error(f"{name} must be {what}, got {value!r}{hint}")


def is_int(value: Any) -> bool:
    """An int that is not a bool (True would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool)


def as_int(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    hint: str = "",
    error: ErrorType = UserError,
) -> int:
    """An integer (not a bool), at least `minimum` when given."""
    if not is_int(value) or (minimum is not None and value < minimum):
        what = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise bad_value(name, what, value, hint, error)
    return value


def as_number(
    value: Any,
    name: str,
    *,
    above: float | None = None,
    minimum: float | None = None,
    below: float | None = None,
    maximum: float | None = None,
    finite: bool = False,
    allow_none: bool = False,
    hint: str = "",
    error: ErrorType = UserError,
) -> float | None:
    """A real number (not a bool) as a float, within the bounds given: `above`/`below` exclusive,
    `minimum`/`maximum` inclusive; `finite` also rejects inf and nan, `allow_none` lets None
    through."""
    if value is None and allow_none:
        return None
    ok = is_number(value) and (not finite or math.isfinite(value))
    ok = ok and (above is None or value > above) and (minimum is None or value >= minimum)
    ok = ok and (below is None or value < below) and (maximum is None or value <= maximum)
    if not ok:
        what = "a finite number" if finite else "a number"
        what += _bounds(above, minimum, below, maximum)
        what += " (or null)" if allow_none else ""
        raise bad_value(name, what, value, hint, error)
    return float(value)


def _bounds(
    above: float | None, minimum: float | None, below: float | None, maximum: float | None
) -> str:
    """ " in [0, 1]" for two inclusive bounds, else " > 0 and < 1"-style comparisons."""
    if minimum is not None and maximum is not None and above is None and below is None:
        return f" in [{minimum}, {maximum}]"
    parts = [
        f"{sign} {bound}"
        for sign, bound in ((">", above), (">=", minimum), ("<", below), ("<=", maximum))
        if bound is not None
    ]
    return " " + " and ".join(parts) if parts else ""


def as_bool(
    value: Any, name: str, *, words: bool = False, hint: str = "", error: ErrorType = UserError
) -> bool:
    """True or False; with `words`, also the strings "true"/"false" (any case)."""
    if isinstance(value, bool):
        return value
    if words and isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
        return value.strip().lower() == "true"
    raise bad_value(name, "true or false", value, hint, error)


def as_flag(
    value: Any, name: str, *, extra: Sequence[str] = (), error: ErrorType = UserError
) -> bool | str:
    """A bool, or one of the strings "true"/"false" (any case, made a bool) or `extra` (returned
    lower-cased), e.g. FRN's learned_eps=auto."""
    if isinstance(value, bool):
        return value
    word = value.strip().lower() if isinstance(value, str) else None
    if word in BOOL_WORDS:
        return word == "true"
    if word in extra:
        return word
    raise bad_value(name, f"one of {', '.join([*BOOL_WORDS, *extra])}", value, "", error)


def as_choice(
    value: Any,
    name: str,
    choices: Iterable[str],
    *,
    suggest: bool = True,
    error: ErrorType = UserError,
) -> str:
    """One of `choices`; the error suggests the closest choice when `suggest`."""
    choices = tuple(choices)
    if value not in choices:
        hint = did_you_mean(str(value), choices) if suggest else ""
        raise bad_value(name, f"one of {', '.join(choices)}", value, hint, error)
    return value


def choice_parser(what: str, choices: Sequence[str]) -> Callable[[str], str]:
    """A command-line value parser (Typer's `parser=`) that accepts one of `choices`; anything else
    is one UserError line, "unknown {what} 'x' (did you mean ...?); choose one of: ...", instead of
    the command's usage text."""

    def parse(value: str) -> str:
        if value not in choices:
            raise UserError(
                f"unknown {what} {value!r}{did_you_mean(value, choices)}; choose one of: "
                f"{', '.join(choices)}"
            )
        return value

    return parse


def as_fractions(value: Any, name: str, *, hint: str = "", error: ErrorType = UserError) -> list:
    """A list of numbers strictly between 0 and 1 (fractions of training, e.g. lr milestones)."""
    values = list(value) if isinstance(value, Iterable) and not isinstance(value, str) else None
    if values is None or not all(is_number(v) and 0 < v < 1 for v in values):
        shown = value if values is None else values
        raise bad_value(name, "fractions of training in (0, 1)", shown, hint, error)
    return values


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """ " (did you mean 'gn'?)" for the closest candidate, or "" when none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
