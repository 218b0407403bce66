"""Job dependencies (SDK-07): ``needs=[job, "name", Need("x", when=...), dynamic_group("g", when=...)]``.

``when`` picks the terminal statuses of the upstream that let the dependent run
(the lock's ``runOn``); an unsatisfied edge skips the dependent. Keywords and
their sets follow 00 §1.4; a list is any non-empty subset of the six terminal
statuses, reported in the canonical order below whatever order it was written in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kici.sdk.checks import check_name
from kici.sdk.diagnostics import error
from kici.sdk.location import SourceLocation, caller_location

TERMINAL_STATUSES: tuple[str, ...] = (
    "success",
    "failed",
    "cancelled",
    "skipped",
    "timed_out_stale",
    "drift_dropped",
)
WHEN_RUN_ON: dict[str, tuple[str, ...]] = {
    "on-success": ("success",),
    "always": TERMINAL_STATUSES,
    "on-skip": ("success", "skipped"),
    "on-failure": ("failed", "timed_out_stale"),
}
DEFAULT_WHEN = "on-success"

When = str | Sequence[str]


class InvalidWhen(ValueError):
    """Neither a ``when`` keyword nor a non-empty list of terminal statuses."""


def run_on(when: When | None) -> tuple[str, ...]:
    """The statuses a ``when`` admits, in canonical order; unset means on-success."""
    if when is None:
        return WHEN_RUN_ON[DEFAULT_WHEN]
    if isinstance(when, str):
        if when not in WHEN_RUN_ON:
            raise InvalidWhen(when)
        return WHEN_RUN_ON[when]
    chosen = set()
    for status in when:
        if not isinstance(status, str) or status not in TERMINAL_STATUSES:
            raise InvalidWhen(status)
        chosen.add(status)
    if not chosen:
        raise InvalidWhen(when)
    return tuple(s for s in TERMINAL_STATUSES if s in chosen)


def _checked_when(when: object, target: str, location: SourceLocation) -> When | None:
    if when is not None and not isinstance(when, str):
        when = tuple(when) if isinstance(when, list | tuple | set | frozenset) else when
    try:
        run_on(when)  # type: ignore[arg-type]  # validated right here
    except (InvalidWhen, TypeError):
        raise error(
            "E217",
            f"needs '{target}': when must be on-success/always/on-skip/on-failure "
            "or a non-empty list of terminal statuses",
            location,
        ) from None
    return when  # type: ignore[return-value]  # run_on accepted it


def target_label(target: object) -> str:
    if isinstance(target, str):
        return target
    name = getattr(target, "name", None)
    return name if isinstance(name, str) else f"<unnamed job at {getattr(target, 'location', '?')}>"


@dataclass(frozen=True, eq=False)
class Need:
    """An edge to a static job, named by string or given as the ``Job`` object."""

    target: Any
    when: When | None = None
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.target, str):
            check_name(self.target, "needs target", self.location)
        elif not hasattr(self.target, "uid"):
            raise error(
                "E217",
                "needs entries must be a job, a job name, Need(...) or dynamic_group(...), "
                f"got {self.target!r}",
                self.location,
            )
        object.__setattr__(self, "when", _checked_when(self.when, target_label(self.target), self.location))

    @property
    def run_on(self) -> tuple[str, ...]:
        return run_on(self.when)


@dataclass(frozen=True, eq=False)
class DynamicGroupNeed:
    """An edge to every job a tagged generator (``dynamic_job("g", ...)``) produces."""

    group: str
    when: When | None = None
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        check_name(self.group, "dynamic_group name", self.location)
        object.__setattr__(self, "when", _checked_when(self.when, self.group, self.location))

    @property
    def run_on(self) -> tuple[str, ...]:
        return run_on(self.when)


def dynamic_group(group: str, when: When | None = None) -> DynamicGroupNeed:
    return DynamicGroupNeed(group, when, location=caller_location())


def as_need(value: object, location: SourceLocation) -> Need | DynamicGroupNeed:
    if isinstance(value, Need | DynamicGroupNeed):
        return value
    return Need(value, location=location)
