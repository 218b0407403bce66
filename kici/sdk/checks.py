"""Small validators shared by the factories; each raises a located ``KiciDefinitionError``.

Durations (D2) are seconds given as ``int``, ``float`` or ``timedelta``; they are kept
as ``int``/``float`` seconds (a ``timedelta`` becomes a float) and the compiler writes
``round(s * 1000)`` ms into the lock. ``bool`` is refused wherever a number is
expected: ``timeout=True`` is always a mistake.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from datetime import timedelta
from typing import Any

from kici.sdk.diagnostics import error, show_allowed
from kici.sdk.location import SourceLocation

Seconds = int | float
Duration = int | float | timedelta

INVALID_OPTION = "E220"


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def as_seconds(value: object, what: str, location: SourceLocation, *, allow_zero: bool = False) -> Seconds:
    """A positive (or, with ``allow_zero``, non-negative) finite duration in seconds."""
    if isinstance(value, timedelta):
        seconds: Seconds = value.total_seconds()
    elif is_number(value):
        seconds = value  # type: ignore[assignment]  # narrowed by is_number
    else:
        raise error(
            INVALID_OPTION, f"{what} must be seconds (int, float or timedelta), got {value!r}", location
        )
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise error(INVALID_OPTION, f"{what} must be {bound} seconds, got {value!r}", location)
    return seconds


def as_optional_seconds(
    value: object, what: str, location: SourceLocation, *, allow_zero: bool = False
) -> Seconds | None:
    return None if value is None else as_seconds(value, what, location, allow_zero=allow_zero)


def one_of(
    value: object,
    allowed: Collection[str],
    what: str,
    location: SourceLocation,
    *,
    code: str = INVALID_OPTION,
) -> str:
    """A literal-union option: the message names the value and the allowed set (00 §0)."""
    if not isinstance(value, str) or value not in allowed:
        raise error(code, f"{what} must be one of {show_allowed(allowed)} (got {value!r})", location)
    return value


def as_tuple(value: object) -> tuple[Any, ...]:
    """One item or a list/tuple of items; ``None`` is the empty tuple. A string is one item."""
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(value)
    return (value,)


def check_bool(value: object, what: str, location: SourceLocation) -> bool:
    if not isinstance(value, bool):
        raise error(INVALID_OPTION, f"{what} must be True or False, got {value!r}", location)
    return value


def check_optional_bool(value: object, what: str, location: SourceLocation) -> bool | None:
    return None if value is None else check_bool(value, what, location)


def check_name(value: object, what: str, location: SourceLocation) -> str:
    """A display name: a non-empty string without surrounding whitespace."""
    if not isinstance(value, str) or not value or value != value.strip():
        raise error(
            INVALID_OPTION,
            f"{what} must be a non-empty string without surrounding spaces, got {value!r}",
            location,
        )
    return value


def check_optional_str(value: object, what: str, location: SourceLocation) -> str | None:
    if value is not None and not isinstance(value, str):
        raise error(INVALID_OPTION, f"{what} must be a string, got {value!r}", location)
    return value


def check_callable(value: object, what: str, location: SourceLocation) -> Callable[..., Any]:
    if not callable(value):
        raise error(INVALID_OPTION, f"{what} must be callable, got {value!r}", location)
    return value


def check_optional_callable(value: object, what: str, location: SourceLocation) -> Callable[..., Any] | None:
    return None if value is None else check_callable(value, what, location)


def check_str_list(value: object, what: str, location: SourceLocation) -> tuple[str, ...]:
    """One string or a list of non-empty strings."""
    items = as_tuple(value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise error(INVALID_OPTION, f"{what} must hold non-empty strings, got {item!r}", location)
    return items


def check_str_map(value: object, what: str, location: SourceLocation) -> dict[str, str]:
    if not isinstance(value, dict):
        raise error(INVALID_OPTION, f"{what} must be a dict of str to str, got {value!r}", location)
    for key, item in value.items():
        if not isinstance(key, str) or not key or not isinstance(item, str):
            raise error(
                INVALID_OPTION,
                f"{what} must map non-empty str keys to str values, got {key!r}: {item!r}",
                location,
            )
    return dict(value)
