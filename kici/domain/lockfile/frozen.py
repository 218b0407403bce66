"""Immutable JSON values, so every lock model is hashable and comparable.

Free-form JSON appears in a few places of the lock (matrix values, ``kici_event``
match expectations, input defaults). It is stored frozen: arrays as tuples,
objects as :class:`FrozenDict`. Non-finite floats are not JSON and are refused
by the codec, so equality after a round trip always holds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeAlias, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")


class FrozenDict(Mapping[K, V]):
    """A read-only, hashable mapping that preserves insertion order."""

    __slots__ = ("_data", "_hash")

    def __init__(self, items: Mapping[K, V] | None = None) -> None:
        self._data: dict[K, V] = dict(items) if items is not None else {}
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenDict):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"


JsonValue: TypeAlias = (
    str | int | float | bool | tuple["JsonValue", ...] | FrozenDict[str, "JsonValue"] | None
)


@overload
def freeze_json(value: Mapping[str, Any]) -> FrozenDict[str, JsonValue]: ...
@overload
def freeze_json(value: Any) -> JsonValue: ...
def freeze_json(value: Any) -> JsonValue:
    """Freeze plain JSON data (``json.loads`` output or literals written in tests)."""
    if isinstance(value, Mapping):
        return FrozenDict({str(k): freeze_json(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze_json(v) for v in value)
    if value is None or isinstance(value, str | int | float):
        return value
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def thaw_json(value: JsonValue) -> Any:
    """Plain ``dict``/``list`` data for ``json.dumps``."""
    if isinstance(value, FrozenDict):
        return {k: thaw_json(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw_json(v) for v in value]
    return value
