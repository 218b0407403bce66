"""Per-job ``init`` (SDK-27): commands that prepare the tool chain before the first step.

``init`` is ``Init(run, ...)``, ``"mise"`` / ``Mise(...)``, ``"auto"``, ``False``
(disabled, kept in the lock) or a list run in order. Only the definition is built
here; running init entries as ``init:<n>`` pseudo-steps is the runner's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kici.sdk.cache import CacheSpec, as_cache, as_caches
from kici.sdk.checks import INVALID_OPTION, Seconds, as_optional_seconds, as_seconds, as_tuple, check_str_map
from kici.sdk.diagnostics import error
from kici.sdk.location import SourceLocation, caller_location

INIT_PRESETS = ("mise", "auto")
DEFAULT_INIT_TIMEOUT: Seconds = 600


@dataclass(frozen=True, eq=False)
class Init:
    run: str
    shell: str = "bash"
    cache: Any = None
    timeout: Seconds = DEFAULT_INIT_TIMEOUT
    env: dict[str, str] | None = None
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        loc = self.location
        if not isinstance(self.shell, str) or not self.shell.strip():
            raise error(INVALID_OPTION, f"Init.shell must be a non-empty string, got {self.shell!r}", loc)
        object.__setattr__(self, "cache", as_caches(self.cache, loc))
        object.__setattr__(self, "timeout", as_seconds(self.timeout, "Init.timeout", loc))
        if self.env is not None:
            object.__setattr__(self, "env", check_str_map(self.env, "Init.env", loc))


@dataclass(frozen=True, eq=False)
class Mise:
    """``cache=False`` disables the tool cache; ``None`` keeps the default one."""

    cache: Any = None
    timeout: Seconds | None = None
    env: dict[str, str] | None = None
    shell: str | None = None
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        loc = self.location
        if self.cache is not None and self.cache is not False:
            cache: CacheSpec | bool = as_cache(self.cache, loc)
            object.__setattr__(self, "cache", cache)
        object.__setattr__(self, "timeout", as_optional_seconds(self.timeout, "Mise.timeout", loc))
        if self.env is not None:
            object.__setattr__(self, "env", check_str_map(self.env, "Mise.env", loc))
        if self.shell is not None and (not isinstance(self.shell, str) or not self.shell.strip()):
            raise error(INVALID_OPTION, f"Mise.shell must be a non-empty string, got {self.shell!r}", loc)


InitEntry = Init | Mise | str
JobInit = InitEntry | bool | tuple[InitEntry, ...]


def as_init(value: object, job_label: str, location: SourceLocation) -> JobInit | None:
    """``None`` (unset), ``False``, one entry, or a tuple of entries for a list."""
    if value is None or value is False:
        return value
    entries = as_tuple(value)
    for index, entry in enumerate(entries):
        if isinstance(entry, Init):
            if not isinstance(entry.run, str) or not entry.run.strip():
                raise error(
                    "E204", f"job('{job_label}'): init[{index}].run must be a non-empty command", location
                )
        elif not isinstance(entry, Mise) and entry not in INIT_PRESETS:
            raise error(
                INVALID_OPTION,
                f"job('{job_label}'): init[{index}] must be Init(...), Mise(...), 'mise' or 'auto', "
                f"got {entry!r}",
                location,
            )
    return entries if isinstance(value, list | tuple) else entries[0]
