"""Declarative caches (SDK-26): ``CacheSpec(key, paths, restore_keys)`` or the same-keyed dict.

Paths are repository-relative or start with ``~`` (the sandbox home): an absolute
path or one climbing out of the workspace with ``..`` would save files the step
does not own, so both are refused at definition time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kici.sdk.checks import INVALID_OPTION, as_tuple
from kici.sdk.diagnostics import error
from kici.sdk.location import SourceLocation, caller_location

_DICT_KEYS = frozenset({"key", "paths", "restore_keys"})


def _check_path(path: object, location: SourceLocation) -> str:
    if not isinstance(path, str) or not path:
        raise error(INVALID_OPTION, f"cache paths must be non-empty strings (got {path!r})", location)
    if path.startswith("/") or ".." in path.replace("\\", "/").split("/"):
        raise error(
            INVALID_OPTION, f"cache paths must be repo-relative or start with ~ (got '{path}')", location
        )
    return path


@dataclass(frozen=True, eq=False)
class CacheSpec:
    key: str
    paths: Sequence[str]
    restore_keys: Sequence[str] | None = None
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        loc = self.location
        if not isinstance(self.key, str) or not self.key.strip():
            raise error(INVALID_OPTION, "cache key must be non-empty", loc)
        paths = tuple(_check_path(p, loc) for p in as_tuple(self.paths))
        if not paths:
            raise error(INVALID_OPTION, "cache paths must be non-empty", loc)
        object.__setattr__(self, "paths", paths)
        if self.restore_keys is not None:
            keys = as_tuple(self.restore_keys)
            for key in keys:
                if not isinstance(key, str) or not key:
                    raise error(
                        INVALID_OPTION, f"cache restore_keys must be non-empty strings (got {key!r})", loc
                    )
            object.__setattr__(self, "restore_keys", keys)


def as_cache(value: object, location: SourceLocation) -> CacheSpec:
    if isinstance(value, CacheSpec):
        return value
    if isinstance(value, dict):
        unknown = sorted(str(k) for k in value if k not in _DICT_KEYS)
        if unknown:
            raise error(
                INVALID_OPTION,
                f"cache has unknown keys {unknown} (allowed: key, paths, restore_keys)",
                location,
            )
        return CacheSpec(
            key=value.get("key", ""),
            paths=value.get("paths", ()),
            restore_keys=value.get("restore_keys"),
            location=location,
        )
    raise error(
        INVALID_OPTION, f"cache must be CacheSpec(...) or a dict with key and paths, got {value!r}", location
    )


def as_caches(value: object, location: SourceLocation) -> tuple[CacheSpec, ...]:
    """One cache or a list of them; ``None`` is none."""
    return tuple(as_cache(item, location) for item in as_tuple(value))
