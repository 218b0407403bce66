"""Static matrix expansion: dimensions, include/exclude, the 256-job cap and child names (SDK-17).

A matrix is either a list (one implicit dimension called ``value``, read as
``ctx.matrix.value``) or a mapping of dimension name to a list of values. The
expansion must not depend on how the author ordered the mapping, because the
same workflow is expanded independently by the compiler, the orchestrator and
the agent and all three must agree on the children and their names; so
dimensions are sorted by name before the cartesian product is taken.

Values are JSON values. Equality between them follows JSON (and the reference
system's ``===``), not Python: ``true`` is not ``1``, while ``1`` and ``1.0``
are the same number. Child names render values the way the reference system's
template strings do (``true``, ``null``, ``3`` for ``3.0``), so names read the
same in every tier.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias, TypeGuard

import attrs

from kici.domain.jsonpath import json_equal

MAX_MATRIX_JOBS = 256
VALUE_DIMENSION = "value"

Combination: TypeAlias = dict[str, Any]
MatrixValues: TypeAlias = Sequence[Any] | Mapping[str, Sequence[Any]]


class InvalidMatrixError(ValueError):
    """The matrix is not a list or a mapping of dimension name to list."""


class MatrixTooLargeError(ValueError):
    """E104: the static matrix would create more children than the cap allows."""

    code = "E104"

    def __init__(self, job: str, workflow: str, count: int) -> None:
        super().__init__(
            f'Static matrix for job "{job}" in workflow "{workflow}" would generate {count} jobs '
            f"(max: {MAX_MATRIX_JOBS})"
        )
        self.job = job
        self.workflow = workflow
        self.count = count


@attrs.frozen
class MatrixChild:
    """One expanded child job: its display name and the values its steps see as ``ctx.matrix``."""

    name: str
    combination: Combination = attrs.field(hash=False)


def _is_list(value: object) -> TypeGuard[Sequence[Any]]:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _dimensions(values: MatrixValues) -> list[tuple[str, Sequence[Any]]]:
    if isinstance(values, Mapping):
        dims: list[tuple[str, Sequence[Any]]] = []
        for name in sorted(values):
            column = values[name]
            if not isinstance(name, str) or not _is_list(column):
                raise InvalidMatrixError(
                    f"matrix dimension {name!r} must map to a list of values, got {type(column).__name__}"
                )
            dims.append((name, column))
        return dims
    if _is_list(values):
        return [(VALUE_DIMENSION, values)]
    raise InvalidMatrixError(f"a matrix is a list or a mapping of lists, got {type(values).__name__}")


def expand_matrix(values: MatrixValues) -> list[Combination]:
    """The cartesian product of the dimensions, sorted by dimension name.

    The last dimension (by name) varies fastest. A mapping without dimensions
    is the empty product: a single empty combination.
    """
    dims = _dimensions(values)
    names = [name for name, _ in dims]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(col for _, col in dims))]


def matrix_size(values: MatrixValues) -> int:
    """Children of the product alone, without building it."""
    return math.prod(len(column) for _, column in _dimensions(values))


def _entry_matches(entry: Mapping[str, Any], combo: Mapping[str, Any]) -> bool:
    return bool(entry) and all(key in combo and json_equal(combo[key], want) for key, want in entry.items())


def _same_combo(left: Mapping[str, Any], right: Mapping[str, Any]) -> bool:
    return left.keys() == right.keys() and _entry_matches(left, right)


def apply_include_exclude(
    combos: Sequence[Mapping[str, Any]],
    include: Sequence[Mapping[str, Any]] = (),
    exclude: Sequence[Mapping[str, Any]] = (),
) -> list[Combination]:
    """Remove excluded combinations, then append the included ones.

    Exclusion runs first, so an include can bring back a combination an exclude
    removed. An exclude entry removes every combination whose values equal all
    of the entry's keys (a key the combination lacks never matches); an include
    is appended unless an identical combination is already present. ``{}`` is
    ignored on both sides: an empty exclude would otherwise remove everything
    and an empty include would add a nameless child.
    """
    kept = [dict(c) for c in combos if not any(_entry_matches(e, c) for e in exclude)]
    for entry in include:
        if entry and not any(_same_combo(entry, c) for c in kept):
            kept.append(dict(entry))
    return kept


def check_static_cap(
    job: str, workflow: str, values: MatrixValues, include: Sequence[Mapping[str, Any]] = ()
) -> int:
    """The compile-time estimate ``product + len(include)``; raises E104 above the cap.

    The estimate counts every include entry and ignores excludes, as the
    reference compiler does: a matrix that is only brought under the cap by its
    excludes is still refused, which keeps the check independent of the values.
    """
    count = matrix_size(values) + len(include)
    if count > MAX_MATRIX_JOBS:
        raise MatrixTooLargeError(job, workflow, count)
    return count


def render_value(value: object) -> str:
    """A matrix value as it appears in a child name."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, Mapping):
        return json.dumps({str(k): _plain(v) for k, v in value.items()}, separators=(",", ":"))
    return json.dumps(_plain(value), separators=(",", ":"))


def _plain(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if _is_list(value):
        return [_plain(v) for v in value]
    return value


def child_suffix(combination: Mapping[str, Any]) -> str:
    """The parenthesised part of a child name: values in sorted-key order, joined by ``", "``."""
    return ", ".join(render_value(combination[key]) for key in sorted(combination))


def child_name(job: str, combination: Mapping[str, Any]) -> str:
    """``<job> (<suffix>)``; an empty combination keeps the job's own name."""
    if not combination:
        return job
    return f"{job} ({child_suffix(combination)})"


def expand_job_matrix(
    job: str,
    values: MatrixValues,
    include: Sequence[Mapping[str, Any]] = (),
    exclude: Sequence[Mapping[str, Any]] = (),
) -> list[MatrixChild]:
    """The children a static matrix job dispatches, in expansion order."""
    combos = apply_include_exclude(expand_matrix(values), include, exclude)
    return [MatrixChild(child_name(job, combo), combo) for combo in combos]
