"""Agent targeting (SDK-05, SDK-06): ``runs_on`` and ``runs_on_all`` in every accepted form.

Each label element is an exact label (plain string), a glob (a string with
``* ? [ ] { }``) or a regex (``re.Pattern``, flags ``re.I/M/S``, ``re.U`` ignored).
Here the forms are normalized to :class:`RunsOn` / :class:`RunsOnAll` and checked as
far as the standard library allows (D1): regex flags and ``str`` patterns (E212),
exact labels both required and excluded (E211). Translating globs to regexes and the
ReDoS gate need the domain's glob and regex helpers, so the compiler runs them.

``runs_on_all`` fan-out is only *defined* here; expanding it over live hosts is the
orchestrator's job.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kici.sdk.checks import INVALID_OPTION, as_tuple, one_of
from kici.sdk.diagnostics import error
from kici.sdk.location import SourceLocation, caller_location

Label = str | re.Pattern[str]
PickMode = Literal["deterministic", "any"]
PICK_MODES = ("deterministic", "any")

LABEL_ERROR = "E212"
_GLOB_CHARS = frozenset("*?[]{}")
_FLAG_NAMES = ((re.IGNORECASE, "re.I"), (re.MULTILINE, "re.M"), (re.DOTALL, "re.S"))
_ALLOWED_FLAGS = re.IGNORECASE | re.MULTILINE | re.DOTALL | re.UNICODE
_RUNS_ON_KEYS = frozenset({"labels", "exclude", "pick"})


def is_glob(label: str) -> bool:
    return any(ch in _GLOB_CHARS for ch in label)


def check_pattern(pattern: re.Pattern[Any], owner: str, location: SourceLocation) -> re.Pattern[str]:
    """A user regex: a ``str`` pattern using only the flags the lock can express (E212)."""
    if not isinstance(pattern.pattern, str):
        raise error(
            LABEL_ERROR, f"{owner}: regex {pattern.pattern!r} must be a str pattern, not bytes", location
        )
    extra = pattern.flags & ~_ALLOWED_FLAGS
    if extra:
        raise error(
            LABEL_ERROR,
            f"{owner}: regex /{pattern.pattern}/ uses unsupported flags {re.RegexFlag(extra)!r} "
            f"(allowed: {', '.join(name for _, name in _FLAG_NAMES)})",
            location,
        )
    return pattern


def check_label(value: object, owner: str, location: SourceLocation) -> Label:
    if isinstance(value, re.Pattern):
        return check_pattern(value, owner, location)
    if not isinstance(value, str) or not value.strip():
        raise error(
            LABEL_ERROR,
            f"{owner}: labels must be non-empty strings or re.compile(...) patterns, got {value!r}",
            location,
        )
    return value


@dataclass(frozen=True, eq=False)
class RunsOn:
    """Every label required (AND), none of ``exclude`` present; ``pick`` chooses among eligible agents."""

    labels: Sequence[Label]
    exclude: Sequence[Label] = ()
    pick: PickMode = "deterministic"
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", as_tuple(self.labels))
        object.__setattr__(self, "exclude", as_tuple(self.exclude))
        one_of(self.pick, PICK_MODES, "runs_on pick", self.location)


@dataclass(frozen=True, eq=False)
class All:
    """An AND-group of labels inside ``RunsOnAll(include=[...])``."""

    labels: tuple[Label, ...]

    def __init__(self, *labels: Label) -> None:
        object.__setattr__(self, "labels", tuple(labels))


@dataclass(frozen=True, eq=False)
class RunsOnAll:
    """Fan out to every host matching any ``include`` group (OR of ANDs) and no ``exclude`` label."""

    include: Sequence[All]
    exclude: Sequence[Label] = ()
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        groups = tuple(
            item if isinstance(item, All) else All(*as_tuple(item)) for item in as_tuple(self.include)
        )
        object.__setattr__(self, "include", groups)
        object.__setattr__(self, "exclude", as_tuple(self.exclude))


def _exact(labels: Sequence[Label]) -> dict[str, str]:
    return {label.lower(): label for label in labels if isinstance(label, str) and not is_glob(label)}


def as_runs_on(value: object, owner: str, job_label: str, location: SourceLocation) -> RunsOn:
    """Normalize a ``runs_on`` value; ``owner`` prefixes E212 messages, ``job_label`` E211's."""
    if isinstance(value, RunsOn):
        runs_on = value
    elif isinstance(value, dict):
        unknown = sorted(str(k) for k in value if k not in _RUNS_ON_KEYS)
        if unknown:
            raise error(
                INVALID_OPTION, f"{owner}: unknown keys {unknown} (allowed: labels, exclude, pick)", location
            )
        runs_on = RunsOn(
            value.get("labels", ()),
            value.get("exclude", ()),
            value.get("pick", "deterministic"),
            location=location,
        )
    else:
        runs_on = RunsOn(as_tuple(value), location=location)
    if not runs_on.labels:
        raise error(LABEL_ERROR, f"{owner}: at least one label is required", location)
    for label in (*runs_on.labels, *runs_on.exclude):
        check_label(label, owner, location)
    required, excluded = _exact(runs_on.labels), _exact(runs_on.exclude)
    overlap = sorted(required[key] for key in required.keys() & excluded.keys())
    if overlap:
        raise error(
            "E211",
            f'Job "{job_label}": labels and exclude overlap on [{", ".join(overlap)}]. '
            "A label cannot be both required and excluded.",
            location,
        )
    return runs_on


def as_runs_on_all(value: object, owner: str, location: SourceLocation) -> RunsOnAll:
    """Normalize ``runs_on_all``: a label, a regex, a list (``"!x"`` excludes) or ``RunsOnAll``."""
    if isinstance(value, RunsOnAll):
        spec = value
    else:
        include: list[Label] = []
        exclude: list[Label] = []
        for item in as_tuple(value):
            if isinstance(item, str) and item.startswith("!"):
                exclude.append(item[1:])
            else:
                include.append(item)
        spec = RunsOnAll((All(*include),) if include else (), tuple(exclude), location=location)
    if not spec.include or any(not group.labels for group in spec.include):
        raise error(LABEL_ERROR, f"{owner}: every include group needs at least one label", location)
    for group in spec.include:
        for label in group.labels:
            check_label(label, owner, location)
    for label in spec.exclude:
        check_label(label, owner, location)
    return spec
