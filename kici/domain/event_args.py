"""The event argument of ``kici preview`` / ``kici run local`` (00 §3.3 "Event args") as a simulated event.

A local run has no webhook, so the CLI builds the :class:`SimulatedEvent` a provider would
have sent: ``push``, ``pr:sync``, ``comment:edited``, ``kici_event:deployed`` ... plus the
options ``--branch``, ``--sha``, ``--files``, ``--payload`` and ``--input``. The grammar is a
table (:data:`FAMILIES`): each family names its event type and what may follow the colon.
Keywords compare case-insensitively; free-form values (an event name, a webhook source, a
cron expression) keep their case because the triggers compare them exactly.

The caller does the I/O (reading git, the payload file) and passes plain values in, so the
same function serves preview, run local and tests.

Choices where the spec is silent, each what a CI user would expect:

* ``pr`` accepts every pull-request action the SDK's ``pr(events=...)`` knows, besides the
  documented short forms (``open``, ``sync``, ``close``, ``reopen``).
* ``pull_request`` is accepted as a synonym of ``pr``, ``webhook`` of ``generic_webhook``.
* ``dispatch:<type>`` sets the action, so a typed ``dispatch(types=[...])`` can be tried
  locally; plain ``dispatch`` has no action and matches only untyped dispatch triggers.
* ``create``/``delete`` default to ``branch``; ``workflow_complete``/``job_complete`` to
  ``success``; ``generic_webhook`` to the source ``local``; ``status`` reports state
  ``success`` for context ``local``.
* ``tag`` takes the tag name from ``--branch`` (the spec's ``refs/tags/<branch>``).
* ``--input`` values are coerced against the matched trigger's input descriptors; without
  descriptors every value stays a string. Defaults are applied here, once, as the
  orchestrator would.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from enum import Enum
from types import MappingProxyType
from typing import Any

import attrs

from kici.domain.events import SimulatedEvent
from kici.domain.lockfile.fields import UNSET
from kici.domain.lockfile.frozen import JsonValue, thaw_json
from kici.domain.lockfile.triggers import InputDescriptor
from kici.domain.regex import UnsafeRegexError, regex_search

ZERO_SHA = "0" * 40
DEFAULT_TARGET_BRANCH = "main"
LOCAL_PROVIDER = "local"


class EventArgError(ValueError):
    """The event argument or an event option is malformed: a usage error (exit 2)."""


class InputError(ValueError):
    """``--input`` values do not fit the workflow's input descriptors; lists every problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


class ParamKind(Enum):
    """What may follow the colon of an event argument."""

    NONE = "none"
    ACTION = "action"
    CHOICE = "choice"
    FREE = "free"


@attrs.frozen(kw_only=True)
class Family:
    """One row of the grammar.

    ``choices`` lists the allowed keywords (the first is the bare form's default) for
    ``ACTION``/``CHOICE``; ``aliases`` maps short spellings to them. ``default`` is the
    value a bare ``FREE`` argument takes (``None``: the value stays absent).
    """

    name: str
    type: str
    kind: ParamKind = ParamKind.NONE
    choices: tuple[str, ...] = ()
    aliases: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    default: str | None = None
    placeholder: str = ""

    @property
    def usage(self) -> str:
        """The documented form, e.g. ``comment[:created|edited|deleted]``."""
        if self.kind is ParamKind.NONE:
            return self.name
        if self.kind is ParamKind.FREE:
            return f"{self.name}[:<{self.placeholder}>]"
        return f"{self.name}[:{'|'.join(self.choices)}]"


_PR_ACTIONS = (
    "opened",
    "synchronize",
    "closed",
    "reopened",
    "assigned",
    "unassigned",
    "labeled",
    "unlabeled",
    "edited",
    "converted_to_draft",
    "ready_for_review",
    "locked",
    "unlocked",
    "review_requested",
    "review_request_removed",
    "auto_merge_enabled",
    "auto_merge_disabled",
)

FAMILIES: Mapping[str, Family] = MappingProxyType(
    {
        f.name: f
        for f in (
            Family(
                name="pr",
                type="pull_request",
                kind=ParamKind.ACTION,
                choices=_PR_ACTIONS,
                aliases={"open": "opened", "sync": "synchronize", "close": "closed", "reopen": "reopened"},
            ),
            Family(name="push", type="push"),
            Family(name="tag", type="tag"),
            Family(
                name="comment",
                type="comment",
                kind=ParamKind.ACTION,
                choices=("created", "edited", "deleted"),
            ),
            Family(
                name="review",
                type="review",
                kind=ParamKind.ACTION,
                choices=("submitted", "edited", "dismissed"),
            ),
            Family(
                name="review_comment",
                type="review_comment",
                kind=ParamKind.ACTION,
                choices=("created", "edited", "deleted"),
            ),
            Family(
                name="release",
                type="release",
                kind=ParamKind.ACTION,
                choices=(
                    "published",
                    "unpublished",
                    "created",
                    "edited",
                    "deleted",
                    "prereleased",
                    "released",
                ),
            ),
            Family(name="dispatch", type="dispatch", kind=ParamKind.FREE, placeholder="type"),
            Family(name="create", type="create", kind=ParamKind.CHOICE, choices=("branch", "tag")),
            Family(name="delete", type="delete", kind=ParamKind.CHOICE, choices=("branch", "tag")),
            Family(name="status", type="status"),
            Family(
                name="workflow_run",
                type="workflow_run",
                kind=ParamKind.ACTION,
                choices=("completed", "requested", "in_progress"),
            ),
            Family(name="fork", type="fork"),
            Family(name="star", type="star", kind=ParamKind.ACTION, choices=("created", "deleted")),
            Family(name="watch", type="watch", kind=ParamKind.ACTION, choices=("started",)),
            Family(
                name="kici_event",
                type="kici_event",
                kind=ParamKind.FREE,
                default="test-event",
                placeholder="name",
            ),
            Family(
                name="workflow_complete",
                type="workflow_complete",
                kind=ParamKind.CHOICE,
                choices=("success", "failed", "cancelled"),
            ),
            Family(
                name="job_complete",
                type="job_complete",
                kind=ParamKind.CHOICE,
                choices=("success", "failed", "cancelled", "skipped"),
            ),
            Family(
                name="generic_webhook",
                type="generic_webhook",
                kind=ParamKind.FREE,
                default=LOCAL_PROVIDER,
                placeholder="source",
            ),
            Family(name="schedule", type="schedule", kind=ParamKind.FREE, placeholder="cron"),
            Family(
                name="lifecycle",
                type="lifecycle",
                kind=ParamKind.CHOICE,
                choices=("workflow_complete", "job_complete", "job_failed", "registration_updated"),
            ),
        )
    }
)
"""The grammar, in the order the spec documents it."""

SYNONYMS: Mapping[str, str] = MappingProxyType({"pull_request": "pr", "webhook": "generic_webhook"})


def event_arg_usage() -> str:
    """Every accepted form, one per line: the text an unknown event name is answered with."""
    lines = [family.usage for family in FAMILIES.values()]
    lines += [f"{alias} (= {target})" for alias, target in SYNONYMS.items()]
    return "\n".join(lines)


@attrs.frozen
class EventArg:
    """A parsed event argument: the family, and its action or parameter (already canonical)."""

    family: str
    value: str | None = None

    @property
    def spec(self) -> Family:
        return FAMILIES[self.family]

    @property
    def type(self) -> str:
        return self.spec.type

    @property
    def action(self) -> str | None:
        kind = self.spec.kind
        if kind is ParamKind.ACTION or (kind is ParamKind.FREE and self.family == "dispatch"):
            return self.value
        return None

    def __str__(self) -> str:
        return self.family if self.value is None else f"{self.family}:{self.value}"


def parse_event_arg(text: str) -> EventArg:
    """Parse ``name[:value]``; raises :class:`EventArgError` naming what is allowed."""
    raw_name, colon, raw_value = text.strip().partition(":")
    name = raw_name.strip().lower()
    name = SYNONYMS.get(name, name)
    family = FAMILIES.get(name)
    if family is None:
        shown = ", ".join([*FAMILIES, *SYNONYMS])
        raise EventArgError(f"unknown event {raw_name.strip()!r} (known events: {shown})")
    if not colon:
        return EventArg(family.name, family.choices[0] if family.choices else family.default)
    if family.kind is ParamKind.NONE:
        raise EventArgError(f"event {family.name!r} takes no ':<value>' (got {text.strip()!r})")
    value = raw_value.strip()
    if family.kind is ParamKind.FREE:
        if not value:
            raise EventArgError(f"{family.name}: the <{family.placeholder}> after ':' must not be empty")
        return EventArg(family.name, value)
    keyword = value.lower()
    keyword = family.aliases.get(keyword, keyword)
    if keyword not in family.choices:
        allowed = ", ".join([*family.choices, *family.aliases])
        raise EventArgError(f"{family.name}: unknown value {value!r} (allowed: {allowed})")
    return EventArg(family.name, keyword)


def _optional_tuple(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


@attrs.frozen(kw_only=True)
class EventOptions:
    """What the command line and the repository add to the event argument.

    ``branch`` is ``--branch`` (None: not given); ``current_branch`` the checked-out
    branch; ``changed_files`` the ``--files`` values or the working-tree diff;
    ``payload`` the parsed ``--payload`` file, which replaces the generated payload;
    ``inputs`` the raw ``--input`` values, shown to dispatch/schedule payloads.
    """

    branch: str | None = None
    current_branch: str = DEFAULT_TARGET_BRANCH
    sha: str = ZERO_SHA
    changed_files: tuple[str, ...] | None = attrs.field(default=None, converter=_optional_tuple)
    payload: Mapping[str, Any] | None = None
    inputs: Mapping[str, str] = attrs.field(factory=dict)
    default_branch: str = DEFAULT_TARGET_BRANCH
    sender_username: str | None = None


def _repository(options: EventOptions) -> dict[str, Any]:
    return {"default_branch": options.default_branch}


def _pr_payload(arg: EventArg, options: EventOptions, target: str) -> dict[str, Any]:
    source = options.current_branch
    pull = {
        "number": 1,
        "state": "closed" if arg.value == "closed" else "open",
        "merged": False,
        "draft": False,
        "head": {"ref": source, "sha": options.sha},
        "base": {"ref": target},
    }
    return {"action": arg.value, "number": 1, "pull_request": pull, "repository": _repository(options)}


def default_payload(arg: EventArg, options: EventOptions) -> dict[str, Any]:
    """The provider-like payload of 00 §3.3 the event carries when ``--payload`` is not given."""
    branch = options.branch or options.current_branch
    common: dict[str, Any] = {"repository": _repository(options)}
    if arg.family == "pr":
        return _pr_payload(arg, options, options.branch or DEFAULT_TARGET_BRANCH)
    if arg.family in ("push", "tag"):
        ref = f"refs/tags/{branch}" if arg.family == "tag" else f"refs/heads/{branch}"
        return {"ref": ref, "before": ZERO_SHA, "after": options.sha, "commits": [], **common}
    if arg.family in ("comment", "review_comment"):
        payload = {"action": arg.value, "comment": {"body": ""}, "issue": {"number": 1}, **common}
        if arg.family == "review_comment":
            payload["pull_request"] = payload.pop("issue")
        return payload
    if arg.family == "review":
        review = {"state": "approved"}
        return {"action": arg.value, "review": review, "pull_request": {"number": 1}, **common}
    if arg.family == "release":
        return {"action": arg.value, "release": {"tag_name": branch}, **common}
    if arg.family == "dispatch":
        action = {"action": arg.value} if arg.value is not None else {}
        return {**action, "ref": f"refs/heads/{branch}", "inputs": dict(options.inputs), **common}
    if arg.family in ("create", "delete"):
        return {"ref": branch, "ref_type": arg.value, **common}
    if arg.family == "status":
        return {"state": "success", "context": LOCAL_PROVIDER, "sha": options.sha, **common}
    if arg.family == "workflow_run":
        run = {"name": "", "conclusion": "success" if arg.value == "completed" else None}
        return {"action": arg.value, "workflow_run": run, **common}
    if arg.family in ("star", "watch"):
        return {"action": arg.value, **common}
    if arg.family == "kici_event":
        return {"eventName": arg.value, "payload": {}}
    if arg.family in ("workflow_complete", "job_complete"):
        return {"status": arg.value}
    if arg.family == "generic_webhook":
        return {"source": arg.value}
    if arg.family == "schedule":
        cron = {"cronExpression": arg.value} if arg.value is not None else {}
        return {**cron, "inputs": dict(options.inputs)}
    if arg.family == "lifecycle":
        return {"lifecycleEvent": arg.value}
    return common


def simulate_event(arg: EventArg | str, options: EventOptions) -> SimulatedEvent:
    """The event a provider would have delivered for ``arg`` in the state ``options`` describes."""
    parsed = parse_event_arg(arg) if isinstance(arg, str) else arg
    branch = options.branch or options.current_branch
    payload = dict(options.payload) if options.payload is not None else default_payload(parsed, options)
    is_pr = parsed.family == "pr"
    target = (options.branch or DEFAULT_TARGET_BRANCH) if is_pr else branch
    return SimulatedEvent(
        type=parsed.type,
        action=parsed.action,
        payload=payload,
        target_branch=target,
        source_branch=options.current_branch if is_pr else None,
        changed_files=options.changed_files,
        provider=LOCAL_PROVIDER,
        is_fork_pr=False if is_pr else None,
        base_branch=target if is_pr else None,
        sender_username=options.sender_username,
    )


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def parse_assignments(values: Sequence[str], option: str) -> dict[str, str]:
    """``K=V`` option values (split on the first ``=``); a later key wins, as on a shell line."""
    result: dict[str, str] = {}
    for value in values:
        key, eq, rest = value.partition("=")
        if not eq or not _KEY.match(key):
            raise EventArgError(f"{option} expects KEY=VALUE, got {value!r}")
        result[key] = rest
    return result


_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def _render(value: JsonValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _bounds(name: str, measure: float, what: str, spec: InputDescriptor) -> list[str]:
    problems = []
    if spec.min is not None and measure < spec.min:
        problems.append(f"input {name!r}: {what} must be >= {_render(spec.min)}")
    if spec.max is not None and measure > spec.max:
        problems.append(f"input {name!r}: {what} must be <= {_render(spec.max)}")
    return problems


def _coerce(name: str, text: str, spec: InputDescriptor) -> tuple[Any, list[str]]:
    """One value; returns it and the problems found (empty when it fits)."""
    if spec.nullable and text == "null":
        return None, []
    expected = spec.type
    if expected == "boolean":
        word = text.lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE, []
        return None, [f"input {name!r}: expected boolean (true/false/1/0/yes/no), got {text!r}"]
    if expected in ("integer", "number"):
        number = _number(text)
        if number is None or (expected == "integer" and not isinstance(number, int)):
            return None, [f"input {name!r}: expected {expected}, got {text!r}"]
        return number, _bounds(name, number, "value", spec)
    if expected == "enum":
        for candidate in spec.values or ():
            if _render(candidate) == text:
                return thaw_json(candidate), []
        allowed = ", ".join(_render(v) for v in spec.values or ())
        return None, [f"input {name!r}: expected one of {allowed}, got {text!r}"]
    if expected == "literal":
        literal = spec.literal
        wanted = None if literal is UNSET else literal
        if _render(wanted) == text:
            return thaw_json(wanted), []
        return None, [f"input {name!r}: expected {_render(wanted)}, got {text!r}"]
    problems = _bounds(name, len(text), "length", spec)
    if spec.pattern is not None:
        try:
            fits = regex_search(spec.pattern, "", text)
        except UnsafeRegexError as exc:
            return None, [f"input {name!r}: {exc}"]
        if not fits:
            problems.append(f"input {name!r}: {text!r} does not match /{spec.pattern}/")
    return text, problems


def coerce_inputs(
    raw: Mapping[str, str], descriptors: Mapping[str, InputDescriptor] | None
) -> dict[str, Any]:
    """Typed dispatch inputs from ``--input`` strings, with defaults applied.

    Without descriptors the values pass through as strings (an untyped dispatch).
    Raises :class:`InputError` listing every unknown, missing or ill-typed input.
    """
    if not descriptors:
        return dict(raw)
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name in raw:
        if name not in descriptors:
            problems.append(f"unknown input {name!r} (known: {', '.join(sorted(descriptors))})")
    for name, spec in descriptors.items():
        if name in raw:
            value, found = _coerce(name, raw[name], spec)
            problems.extend(found)
            values[name] = value
        elif spec.default is not UNSET:
            values[name] = thaw_json(spec.default)
        elif not spec.optional:
            problems.append(f"input {name!r} is required")
    if problems:
        raise InputError(problems)
    return values
