"""Trigger factories (SDK-09 to SDK-15): when a workflow starts.

Each factory validates its options when called and returns a frozen trigger whose
``kind`` is the lock's ``_type``; the compiler maps attributes one to one onto the
lock trigger (``target`` -> ``targetBranches``, ``cron`` -> ``cronExpression`` ...).
Branch, tag and ref patterns are a glob string or an ``re.Pattern``, one or a list;
``paths`` and ``repos`` are globs where a leading ``!`` excludes. An empty filter is
no filter.

Error codes: E208 for a missing required option and for every value outside its
allowed set (the message names the value and the set), E209 an invalid cron
expression, E210 an unknown time zone, E212 a regex the lock cannot express, E216
a schedule input without a default.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kici.sdk.checks import as_tuple
from kici.sdk.cron import CronSyntaxError, check_cron
from kici.sdk.diagnostics import error, show_allowed
from kici.sdk.inputs import DispatchInputs, as_inputs
from kici.sdk.location import SourceLocation, caller_location
from kici.sdk.matrix import is_json_value
from kici.sdk.targeting import check_pattern

TRIGGER_ERROR = "E208"

Pattern = str | re.Pattern[str]

PR_EVENTS = (
    "opened",
    "synchronize",
    "reopened",
    "closed",
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
DEFAULT_PR_EVENTS = PR_EVENTS[:4]
COMMENT_ACTIONS = ("created", "edited", "deleted")
COMMENT_SOURCES = ("issue", "pr")
REVIEW_ACTIONS = ("submitted", "edited", "dismissed")
REVIEW_STATES = ("approved", "changes_requested", "commented", "dismissed")
RELEASE_ACTIONS = ("published", "unpublished", "created", "edited", "deleted", "prereleased", "released")
REF_TYPES = ("branch", "tag")
STATUS_STATES = ("error", "failure", "pending", "success")
WORKFLOW_RUN_ACTIONS = ("requested", "completed", "in_progress")
WORKFLOW_RUN_CONCLUSIONS = ("success", "failure", "cancelled")
STAR_ACTIONS = ("created", "deleted")
WATCH_ACTIONS = ("started",)
WORKFLOW_STATUSES = ("success", "failed", "cancelled")
JOB_STATUSES = ("success", "failed", "cancelled", "skipped")
LIFECYCLE_EVENTS = ("workflow_complete", "job_complete", "job_failed", "registration_updated")


# --- validation helpers --------------------------------------------------------------------------


def _allowed(
    value: object, allowed: tuple[str, ...], factory: str, what: str, loc: SourceLocation
) -> tuple[str, ...]:
    items = as_tuple(value)
    for item in items:
        if not isinstance(item, str) or item not in allowed:
            raise error(
                TRIGGER_ERROR, f"{factory}(): unknown {what} {item!r} (allowed: {show_allowed(allowed)})", loc
            )
    return items


def _patterns(value: object, factory: str, what: str, loc: SourceLocation) -> tuple[Pattern, ...]:
    items = as_tuple(value)
    for item in items:
        if isinstance(item, re.Pattern):
            check_pattern(item, f"{factory}() {what}", loc)
        elif not isinstance(item, str) or not item:
            raise error(
                TRIGGER_ERROR,
                f"{factory}(): {what} must be glob strings or re.compile(...) patterns, got {item!r}",
                loc,
            )
    return items


def _globs(value: object, factory: str, what: str, loc: SourceLocation) -> tuple[str, ...]:
    items = as_tuple(value)
    for item in items:
        if not isinstance(item, str) or not item or item == "!":
            raise error(
                TRIGGER_ERROR, f"{factory}(): {what} must be non-empty glob strings, got {item!r}", loc
            )
    return items


def _repos(value: object, factory: str, loc: SourceLocation) -> tuple[str, ...] | None:
    return None if value is None else _globs(value, factory, "repos", loc)


def _names(value: object, factory: str, what: str, loc: SourceLocation) -> tuple[str, ...]:
    items = as_tuple(value)
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise error(TRIGGER_ERROR, f"{factory}(): {what} must be non-empty strings, got {item!r}", loc)
    return items


def _optional_name(value: object, factory: str, what: str, loc: SourceLocation) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise error(TRIGGER_ERROR, f"{factory}(): {what} must be a non-empty string, got {value!r}", loc)
    return value


def _expectations(value: object, factory: str, what: str, loc: SourceLocation) -> dict[str, Any] | None:
    """``match`` / ``not_``: JSONPath expression -> expected JSON value (a list means any of)."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and k for k in value):
        raise error(
            TRIGGER_ERROR,
            f"{factory}(): {what} must map JSONPath strings to expected values, got {value!r}",
            loc,
        )
    if not is_json_value(dict(value)):
        raise error(TRIGGER_ERROR, f"{factory}(): {what} values must be JSON values, got {value!r}", loc)
    return dict(value)


# --- provider triggers ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PrTrigger:
    kind: ClassVar[str] = "pr"
    events: tuple[str, ...]
    target: tuple[Pattern, ...]
    source: tuple[Pattern, ...]
    paths: tuple[str, ...]
    repos: tuple[str, ...] | None
    location: SourceLocation = field(repr=False)


def pr(
    *,
    events: Any = DEFAULT_PR_EVENTS,
    target: Any = None,
    source: Any = None,
    paths: Any = None,
    repos: Any = None,
) -> PrTrigger:
    loc = caller_location()
    return PrTrigger(
        _allowed(events, PR_EVENTS, "pr", "event", loc),
        _patterns(target, "pr", "target", loc),
        _patterns(source, "pr", "source", loc),
        _globs(paths, "pr", "paths", loc),
        _repos(repos, "pr", loc),
        loc,
    )


@dataclass(frozen=True, eq=False)
class PushTrigger:
    """A non-empty ``tags`` also makes the compiler emit a ``tag`` trigger (without ``repos``)."""

    kind: ClassVar[str] = "push"
    branches: tuple[Pattern, ...]
    tags: tuple[Pattern, ...]
    paths: tuple[str, ...]
    repos: tuple[str, ...] | None
    location: SourceLocation = field(repr=False)


def push(*, branches: Any = None, tags: Any = None, paths: Any = None, repos: Any = None) -> PushTrigger:
    loc = caller_location()
    return PushTrigger(
        _patterns(branches, "push", "branches", loc),
        _patterns(tags, "push", "tags", loc),
        _globs(paths, "push", "paths", loc),
        _repos(repos, "push", loc),
        loc,
    )


@dataclass(frozen=True, eq=False)
class TagTrigger:
    kind: ClassVar[str] = "tag"
    patterns: tuple[Pattern, ...]
    repos: tuple[str, ...] | None
    location: SourceLocation = field(repr=False)


def tag(*, patterns: Any = None, repos: Any = None) -> TagTrigger:
    loc = caller_location()
    return TagTrigger(_patterns(patterns, "tag", "patterns", loc), _repos(repos, "tag", loc), loc)


@dataclass(frozen=True, eq=False)
class CommentTrigger:
    kind: ClassVar[str] = "comment"
    actions: tuple[str, ...]
    source: str | None
    body_match: Pattern | None
    repos: tuple[str, ...] | None
    location: SourceLocation = field(repr=False)


def comment(
    *, actions: Any = None, source: str | None = None, body_match: Any = None, repos: Any = None
) -> CommentTrigger:
    loc = caller_location()
    if source is not None:
        _allowed(source, COMMENT_SOURCES, "comment", "source", loc)
    body = _patterns(body_match, "comment", "body_match", loc)
    if len(body) > 1:
        raise error(TRIGGER_ERROR, "comment(): body_match takes a single glob or regex", loc)
    return CommentTrigger(
        _allowed(actions, COMMENT_ACTIONS, "comment", "action", loc),
        source,
        body[0] if body else None,
        _repos(repos, "comment", loc),
        loc,
    )


@dataclass(frozen=True, eq=False)
class ReviewTrigger:
    kind: ClassVar[str] = "review"
    actions: tuple[str, ...]
    states: tuple[str, ...]
    repos: tuple[str, ...] | None
    location: SourceLocation = field(repr=False)


def review(*, actions: Any = None, states: Any = None, repos: Any = None) -> ReviewTrigger:
    loc = caller_location()
    return ReviewTrigger(
        _allowed(actions, REVIEW_ACTIONS, "review", "action", loc),
        _allowed(states, REVIEW_STATES, "review", "state", loc),
        _repos(repos, "review", loc),
        loc,
    )


@dataclass(frozen=True, eq=False)
class ActionsTrigger:
    """``review_comment``, ``release``, ``star`` and ``watch``: an action filter and ``repos``."""

    kind: str
    actions: tuple[str, ...]
    repos: tuple[str, ...] | None
    location: SourceLocation = field(repr=False)


def review_comment(*, actions: Any = None, repos: Any = None) -> ActionsTrigger:
    loc = caller_location()
    return ActionsTrigger(
        "review_comment",
        _allowed(actions, COMMENT_ACTIONS, "review_comment", "action", loc),
        _repos(repos, "review_comment", loc),
        loc,
    )


def release(*, actions: Any = None, repos: Any = None) -> ActionsTrigger:
    loc = caller_location()
    return ActionsTrigger(
        "release",
        _allowed(actions, RELEASE_ACTIONS, "release", "action", loc),
        _repos(repos, "release", loc),
        loc,
    )


def star(*, actions: Any = None, repos: Any = None) -> ActionsTrigger:
    loc = caller_location()
    return ActionsTrigger(
        "star", _allowed(actions, STAR_ACTIONS, "star", "action", loc), _repos(repos, "star", loc), loc
    )


def watch(*, actions: Any = None, repos: Any = None) -> ActionsTrigger:
    loc = caller_location()
    return ActionsTrigger(
        "watch", _allowed(actions, WATCH_ACTIONS, "watch", "action", loc), _repos(repos, "watch", loc), loc
    )


@dataclass(frozen=True, eq=False)
class DispatchTrigger:
    kind: ClassVar[str] = "dispatch"
    types: tuple[str, ...]
    inputs: DispatchInputs | None
    repos: tuple[str, ...] | None
    location: SourceLocation = field(repr=False)


def dispatch(*, types: Any = None, inputs: Any = None, repos: Any = None) -> DispatchTrigger:
    loc = caller_location()
    return DispatchTrigger(
        _names(types, "dispatch", "types", loc), as_inputs(inputs, loc), _repos(repos, "dispatch", loc), loc
    )


def manual(*, inputs: Any = None, types: Any = None, repos: Any = None) -> DispatchTrigger:
    """PY+ alias: ``manual(inputs=...)`` reads better for a button-started workflow."""
    loc = caller_location()
    return DispatchTrigger(
        _names(types, "manual", "types", loc), as_inputs(inputs, loc), _repos(repos, "manual", loc), loc
    )


@dataclass(frozen=True, eq=False)
class RefTrigger:
    """``create`` and ``delete`` of branches or tags."""

    kind: str
    ref_types: tuple[str, ...]
    patterns: tuple[Pattern, ...]
    repos: tuple[str, ...] | None
    location: SourceLocation = field(repr=False)


def create(*, ref_types: Any = None, patterns: Any = None, repos: Any = None) -> RefTrigger:
    loc = caller_location()
    return RefTrigger(
        "create",
        _allowed(ref_types, REF_TYPES, "create", "ref type", loc),
        _patterns(patterns, "create", "patterns", loc),
        _repos(repos, "create", loc),
        loc,
    )


def delete(*, ref_types: Any = None, patterns: Any = None, repos: Any = None) -> RefTrigger:
    loc = caller_location()
    return RefTrigger(
        "delete",
        _allowed(ref_types, REF_TYPES, "delete", "ref type", loc),
        _patterns(patterns, "delete", "patterns", loc),
        _repos(repos, "delete", loc),
        loc,
    )


@dataclass(frozen=True, eq=False)
class StatusTrigger:
    kind: ClassVar[str] = "status"
    contexts: tuple[str, ...]
    states: tuple[str, ...]
    repos: tuple[str, ...] | None
    location: SourceLocation = field(repr=False)


def status(*, contexts: Any = None, states: Any = None, repos: Any = None) -> StatusTrigger:
    loc = caller_location()
    return StatusTrigger(
        _globs(contexts, "status", "contexts", loc),
        _allowed(states, STATUS_STATES, "status", "state", loc),
        _repos(repos, "status", loc),
        loc,
    )


@dataclass(frozen=True, eq=False)
class WorkflowRunTrigger:
    kind: ClassVar[str] = "workflow_run"
    actions: tuple[str, ...]
    workflows: tuple[str, ...]
    conclusions: tuple[str, ...]
    repos: tuple[str, ...] | None
    location: SourceLocation = field(repr=False)


def workflow_run(
    *, actions: Any = None, workflows: Any = None, conclusions: Any = None, repos: Any = None
) -> WorkflowRunTrigger:
    loc = caller_location()
    return WorkflowRunTrigger(
        _allowed(actions, WORKFLOW_RUN_ACTIONS, "workflow_run", "action", loc),
        _names(workflows, "workflow_run", "workflows", loc),
        _allowed(conclusions, WORKFLOW_RUN_CONCLUSIONS, "workflow_run", "conclusion", loc),
        _repos(repos, "workflow_run", loc),
        loc,
    )


@dataclass(frozen=True, eq=False)
class ForkTrigger:
    kind: ClassVar[str] = "fork"
    repos: tuple[str, ...] | None
    location: SourceLocation = field(repr=False)


def fork(*, repos: Any = None) -> ForkTrigger:
    loc = caller_location()
    return ForkTrigger(_repos(repos, "fork", loc), loc)


@dataclass(frozen=True, eq=False)
class WebhookTrigger:
    kind: ClassVar[str] = "webhook"
    events: tuple[str, ...]
    actions: tuple[str, ...]
    repos: tuple[str, ...] | None
    location: SourceLocation = field(repr=False)


def webhook(*, events: Any, actions: Any = None, repos: Any = None) -> WebhookTrigger:
    loc = caller_location()
    names = _names(events, "webhook", "events", loc)
    if not names:
        raise error(TRIGGER_ERROR, "webhook() requires a non-empty events array", loc)
    return WebhookTrigger(
        names, _names(actions, "webhook", "actions", loc), _repos(repos, "webhook", loc), loc
    )


# --- kici triggers -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class KiciEventTrigger:
    kind: ClassVar[str] = "kici_event"
    name: str
    match: dict[str, Any] | None
    not_: dict[str, Any] | None
    source: str | None
    location: SourceLocation = field(repr=False)


def kici_event(
    *, name: str, match: Any = None, not_: Any = None, source: str | None = None
) -> KiciEventTrigger:
    loc = caller_location()
    if not isinstance(name, str) or not name.strip():
        raise error(TRIGGER_ERROR, "kiciEvent() requires a non-empty name", loc)
    return KiciEventTrigger(
        name,
        _expectations(match, "kici_event", "match", loc),
        _expectations(not_, "kici_event", "not_", loc),
        _optional_name(source, "kici_event", "source", loc),
        loc,
    )


@dataclass(frozen=True, eq=False)
class WorkflowCompleteTrigger:
    kind: ClassVar[str] = "workflow_complete"
    name: str | None
    status: tuple[str, ...] | None
    source: str | None
    location: SourceLocation = field(repr=False)


def workflow_complete(
    *, name: str | None = None, status: Any = None, source: str | None = None
) -> WorkflowCompleteTrigger:
    loc = caller_location()
    return WorkflowCompleteTrigger(
        _optional_name(name, "workflow_complete", "name", loc),
        None if status is None else _allowed(status, WORKFLOW_STATUSES, "workflow_complete", "status", loc),
        _optional_name(source, "workflow_complete", "source", loc),
        loc,
    )


@dataclass(frozen=True, eq=False)
class JobCompleteTrigger:
    kind: ClassVar[str] = "job_complete"
    workflow: str | None
    job: str | None
    status: tuple[str, ...] | None
    source: str | None
    location: SourceLocation = field(repr=False)


def job_complete(
    *, workflow: str | None = None, job: str | None = None, status: Any = None, source: str | None = None
) -> JobCompleteTrigger:
    loc = caller_location()
    return JobCompleteTrigger(
        _optional_name(workflow, "job_complete", "workflow", loc),
        _optional_name(job, "job_complete", "job", loc),
        None if status is None else _allowed(status, JOB_STATUSES, "job_complete", "status", loc),
        _optional_name(source, "job_complete", "source", loc),
        loc,
    )


@dataclass(frozen=True)
class Hmac:
    """HMAC-SHA256 over the raw body; ``secret`` names the secret, never its value."""

    secret: str
    signature_header: str


@dataclass(frozen=True)
class ApiKey:
    secret: str
    header: str = "authorization"


@dataclass(frozen=True, eq=False)
class GenericWebhookTrigger:
    kind: ClassVar[str] = "generic_webhook"
    source: str
    events: tuple[str, ...] | None
    match: dict[str, Any] | None
    not_: dict[str, Any] | None
    auth: Hmac | ApiKey | None
    path: str | None
    location: SourceLocation = field(repr=False)


def generic_webhook(
    *,
    source: str,
    events: Any = None,
    match: Any = None,
    not_: Any = None,
    auth: Hmac | ApiKey | None = None,
    path: str | None = None,
) -> GenericWebhookTrigger:
    loc = caller_location()
    if not isinstance(source, str) or not source.strip():
        raise error(TRIGGER_ERROR, "genericWebhook() requires a non-empty source", loc)
    if auth is not None:
        if not isinstance(auth, Hmac | ApiKey):
            raise error(
                TRIGGER_ERROR, f"generic_webhook(): auth must be Hmac(...) or ApiKey(...), got {auth!r}", loc
            )
        header = auth.signature_header if isinstance(auth, Hmac) else auth.header
        for what, value in (("auth secret", auth.secret), ("auth header", header)):
            if not isinstance(value, str) or not value.strip():
                raise error(
                    TRIGGER_ERROR, f"generic_webhook(): {what} must be a non-empty string, got {value!r}", loc
                )
    return GenericWebhookTrigger(
        source,
        None if events is None else _names(events, "generic_webhook", "events", loc),
        _expectations(match, "generic_webhook", "match", loc),
        _expectations(not_, "generic_webhook", "not_", loc),
        auth,
        _optional_name(path, "generic_webhook", "path", loc),
        loc,
    )


@functools.lru_cache(maxsize=256)
def _timezone_known(key: str) -> bool:
    """Whether ``key`` names a zone; ``True`` when this machine has no zone database to ask.

    A sandbox without tzdata must still load workflows; the compiler, which runs
    where the author works, is where an unknown zone is reported in practice.
    """
    try:
        zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        try:
            zoneinfo.ZoneInfo("UTC")
        except zoneinfo.ZoneInfoNotFoundError:
            return True
        return False
    return True


@dataclass(frozen=True, eq=False)
class ScheduleTrigger:
    kind: ClassVar[str] = "schedule"
    cron: str
    timezone: str
    description: str | None
    inputs: DispatchInputs | None
    location: SourceLocation = field(repr=False)


def _schedule(
    factory: str,
    *,
    expression: object,
    timezone: object,
    description: object,
    inputs: object,
    loc: SourceLocation,
) -> ScheduleTrigger:
    if not isinstance(expression, str) or not expression.strip():
        raise error(TRIGGER_ERROR, "schedule() requires a non-empty cron expression", loc)
    try:
        check_cron(expression)
    except CronSyntaxError as exc:
        raise error("E209", f"{factory}(): invalid cron '{expression}': {exc}", loc) from None
    if not isinstance(timezone, str) or not timezone or not _timezone_known(timezone):
        raise error("E210", f"{factory}(): unknown timezone '{timezone}'", loc)
    if description is not None and not isinstance(description, str):
        raise error(TRIGGER_ERROR, f"{factory}(): description must be a string, got {description!r}", loc)
    handle = as_inputs(inputs, loc)
    for key, descriptor in (handle.fields if handle is not None else {}).items():
        if not descriptor.has_default and not descriptor.optional:
            raise error("E216", f"{factory}(): input '{key}' needs a default or optional=True", loc)
    return ScheduleTrigger(expression.strip(), timezone, description, handle, loc)


def schedule(
    *, cron: str, timezone: str = "UTC", description: str | None = None, inputs: Any = None
) -> ScheduleTrigger:
    return _schedule(
        "schedule",
        expression=cron,
        timezone=timezone,
        description=description,
        inputs=inputs,
        loc=caller_location(),
    )


def cron(
    expression: str, *, timezone: str = "UTC", description: str | None = None, inputs: Any = None
) -> ScheduleTrigger:
    """PY+ alias: ``cron("0 3 * * *")`` is ``schedule(cron="0 3 * * *")``."""
    return _schedule(
        "cron",
        expression=expression,
        timezone=timezone,
        description=description,
        inputs=inputs,
        loc=caller_location(),
    )


@dataclass(frozen=True, eq=False)
class LifecycleTrigger:
    kind: ClassVar[str] = "lifecycle"
    events: tuple[str, ...]
    sources: tuple[str, ...] | None
    description: str | None
    location: SourceLocation = field(repr=False)


def lifecycle(*, events: Any, sources: Any = None, description: str | None = None) -> LifecycleTrigger:
    loc = caller_location()
    names = _allowed(events, LIFECYCLE_EVENTS, "lifecycle", "event", loc)
    if not names:
        raise error(TRIGGER_ERROR, "lifecycle() requires a non-empty events array", loc)
    if description is not None and not isinstance(description, str):
        raise error(TRIGGER_ERROR, f"lifecycle(): description must be a string, got {description!r}", loc)
    return LifecycleTrigger(
        names, None if sources is None else _globs(sources, "lifecycle", "sources", loc), description, loc
    )


Trigger = (
    PrTrigger
    | PushTrigger
    | TagTrigger
    | CommentTrigger
    | ReviewTrigger
    | ActionsTrigger
    | DispatchTrigger
    | RefTrigger
    | StatusTrigger
    | WorkflowRunTrigger
    | ForkTrigger
    | WebhookTrigger
    | KiciEventTrigger
    | WorkflowCompleteTrigger
    | JobCompleteTrigger
    | GenericWebhookTrigger
    | ScheduleTrigger
    | LifecycleTrigger
)
