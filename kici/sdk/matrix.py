"""Matrix validation on the SDK side (SDK-17/18): shapes and sizes, never the expansion.

A static matrix is a list of JSON values (one implicit dimension, ``ctx.matrix.value``)
or a mapping of dimension name to a list of JSON values; a callable is a dynamic
matrix the runner evaluates. Expansion, child names and the 256 cap (E104, which
names the workflow) live in ``kici.domain.matrix``, which must accept everything
accepted here and count the same product (property S2). :func:`matrix_size` and
:func:`check_matrix_values` are also what the standard-library runner uses to check
a dynamic matrix's result against the cap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from kici.sdk.checks import INVALID_OPTION, as_tuple
from kici.sdk.diagnostics import error
from kici.sdk.location import SourceLocation

MAX_MATRIX_JOBS = 256

StaticMatrix = tuple[Any, ...] | dict[str, tuple[Any, ...]]


class InvalidMatrix(ValueError):
    """The value is not a list of JSON values or a mapping of dimension to such a list."""


def is_json_value(value: object) -> bool:
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(is_json_value(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_json_value(v) for k, v in value.items())
    return False


def _column(name: str, values: object) -> tuple[Any, ...]:
    if not isinstance(values, list | tuple):
        raise InvalidMatrix(
            f"matrix dimension '{name}' must be a list of values, got {type(values).__name__}"
        )
    for item in values:
        if not is_json_value(item):
            raise InvalidMatrix(f"matrix dimension '{name}' holds a non-JSON value {item!r}")
    return tuple(values)


def check_matrix_values(values: object) -> StaticMatrix:
    """Normalize a static matrix; raises :class:`InvalidMatrix` with the reason."""
    if isinstance(values, Mapping):
        columns: dict[str, tuple[Any, ...]] = {}
        for name, column in values.items():
            if not isinstance(name, str) or not name:
                raise InvalidMatrix(f"matrix dimension names must be non-empty strings, got {name!r}")
            columns[name] = _column(name, column)
        return columns
    if isinstance(values, list | tuple):
        return _column("value", values)
    raise InvalidMatrix(f"a matrix is a list, a dict of lists or a function, got {type(values).__name__}")


def matrix_size(values: StaticMatrix) -> int:
    """Children of the cartesian product (before include/exclude)."""
    if isinstance(values, dict):
        return math.prod(len(column) for column in values.values())
    return len(values)


def check_entries(
    entries: object, what: str, owner: str, location: SourceLocation
) -> tuple[dict[str, Any], ...]:
    """``include`` / ``exclude``: one dict or a list of dicts of dimension -> JSON value."""
    checked: list[dict[str, Any]] = []
    for entry in as_tuple(entries):
        if not isinstance(entry, dict) or not is_json_value(entry):
            raise error(
                INVALID_OPTION,
                f"{owner}: {what} entries must be dicts of dimension to JSON value, got {entry!r}",
                location,
            )
        checked.append(dict(entry))
    return tuple(checked)


def check_matrix(
    values: object, owner: str, location: SourceLocation
) -> StaticMatrix | Callable[..., Any] | None:
    if values is None or callable(values):
        return values
    try:
        return check_matrix_values(values)
    except InvalidMatrix as exc:
        raise error(INVALID_OPTION, f"{owner}: {exc}", location) from None
