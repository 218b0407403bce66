"""Trigger matching: does a lock trigger fire for a normalized event, and why (LOCK-02, 30 §3.3).

Every trigger kind first checks the event type (its *type guard*); each filter
then compares one field of the event. An empty filter is no filter. Every check
lands in the trace, so a decision can be explained check by check. A pattern
the matcher cannot evaluate (an invalid glob, an unsafe regex, a malformed
JSONPath) fails its check with the reason instead of raising: a broken filter
must neither crash the pipeline nor let an event through.

Pattern rules: globs follow picomatch (:mod:`kici.domain.globs`); regexes are
searched, with JS flags (:mod:`kici.domain.regex`). In branch, tag, ref, body,
status-context and lifecycle-source filters a glob starting with ``!``
excludes, as in ``paths`` and ``repos``; an exclusion always wins, and a filter
of exclusions only admits everything it does not exclude.

Choices where the spec is silent, each what a CI user would expect:

* ``webhook`` with no ``events`` matches nothing (its events *are* its type
  guard; the SDK refuses the empty list).
* ``comment.source`` is ``pr`` when the commented issue is a pull request
  (``payload.issue.pull_request`` present), else ``issue``.
* ``review.states`` compare case-insensitively (GitHub's REST and GraphQL
  spell them differently).
* ``workflow_run.workflows`` entries are exact names unless they contain glob
  characters.
* ``generic_webhook.events`` admits the event if it names either the event
  type (``payload.eventType``) or the action.
* ``schedule`` compares ``cronExpression``/``timezone`` only when the fire
  event carries them, so a workflow with several schedules reports the one that
  fired while a hand-made ``schedule`` event (``kici run local``) matches any.
* A ``match``/``not`` expectation that is a ``/regex/`` only matches strings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar, assert_never

import attrs

from kici.domain.events import SimulatedEvent, TraceEntry, WorkflowDecision
from kici.domain.globs import InvalidGlobError, filter_matches, glob_matches, is_glob, split_negations
from kici.domain.jsonpath import JsonPathError, find, value_matches
from kici.domain.lockfile.triggers import (
    CommentTrigger,
    CreateTrigger,
    DeleteTrigger,
    DispatchTrigger,
    ForkTrigger,
    GenericWebhookTrigger,
    JobCompleteTrigger,
    KiciEventTrigger,
    LifecycleTrigger,
    LockBranchPattern,
    PrTrigger,
    PushTrigger,
    ReleaseTrigger,
    ReviewCommentTrigger,
    ReviewTrigger,
    ScheduleTrigger,
    StarTrigger,
    StatusTrigger,
    TagTrigger,
    Trigger,
    WatchTrigger,
    WebhookTrigger,
    WorkflowCompleteTrigger,
    WorkflowRunTrigger,
    trigger_type,
)
from kici.domain.regex import UnsafeRegexError, regex_search

TRIGGER_EVENT_TYPES: Mapping[str, str] = {
    "pr": "pull_request",
    **{
        tag: tag
        for tag in (
            "push",
            "tag",
            "comment",
            "review",
            "review_comment",
            "release",
            "dispatch",
            "create",
            "delete",
            "status",
            "workflow_run",
            "fork",
            "star",
            "watch",
            "kici_event",
            "workflow_complete",
            "job_complete",
            "generic_webhook",
            "schedule",
            "lifecycle",
        )
    },
}
"""The event type each trigger kind admits; ``webhook`` is absent, its ``events`` list decides."""

_NO_VALUE = "<none>"
_MAX_SHOWN_FILES = 20
_PATTERN_ERRORS = (InvalidGlobError, UnsafeRegexError, JsonPathError)


@attrs.frozen
class TriggerMatch:
    """The verdict on one trigger and the checks that produced it."""

    matched: bool
    checks: tuple[TraceEntry, ...]


class _Trace:
    """Collects the checks of one trigger under a common ``<type>[<index>]`` prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.entries: list[TraceEntry] = []

    def add(
        self, name: str, pattern: str, value: str | None, passed: bool, reason: str | None = None
    ) -> bool:
        shown = _NO_VALUE if value is None else value
        self.entries.append(TraceEntry(f"{self.prefix}.{name}", pattern, shown, passed, reason))
        return passed

    @property
    def passed(self) -> bool:
        return all(entry.passed for entry in self.entries)


def _dig(payload: Any, *keys: str) -> Any:
    node = payload
    for key in keys:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _show_pattern(pattern: LockBranchPattern) -> str:
    if pattern.type == "regex":
        return f"/{pattern.pattern}/{pattern.flags or ''}"
    return pattern.pattern


def _pattern_hits(pattern: LockBranchPattern, value: str) -> bool:
    if pattern.type == "regex":
        return regex_search(pattern.pattern, pattern.flags or "", value)
    return glob_matches(pattern.pattern, value)


def _is_exclusion(pattern: LockBranchPattern) -> bool:
    return pattern.type == "glob" and pattern.pattern.startswith("!")


def branch_filter_admits(patterns: Sequence[LockBranchPattern], value: str) -> bool:
    """Include/exclude filter over glob-or-regex patterns; raises on a pattern it cannot compile."""
    if not patterns:
        return True
    includes = [p for p in patterns if not _is_exclusion(p)]
    excludes = [LockBranchPattern(type="glob", pattern=p.pattern[1:]) for p in patterns if _is_exclusion(p)]
    if any(_pattern_hits(p, value) for p in excludes):
        return False
    return not includes or any(_pattern_hits(p, value) for p in includes)


def paths_admit(patterns: Sequence[str], changed_files: Sequence[str] | None) -> bool:
    """The ``paths`` rule of 30 §3.3.

    No patterns: match. Patterns but no changed files: no match (nothing shows
    the change concerns the filter). Files matching an exclusion are dropped;
    none left: no match. Only exclusions: match. Otherwise some remaining file
    must match an inclusion.
    """
    if not patterns:
        return True
    if not changed_files:
        return False
    includes, excludes = split_negations(patterns)
    remaining = [f for f in changed_files if not any(glob_matches(p, f) for p in excludes)]
    if not remaining:
        return False
    return not includes or any(glob_matches(p, f) for f in remaining for p in includes)


def repos_admit(patterns: Sequence[str] | None, source_repo: str | None) -> bool:
    """The ``repos`` rule: no patterns admit all; otherwise a missing source repository never matches."""
    if not patterns:
        return True
    if source_repo is None:
        return False
    return filter_matches(patterns, source_repo)


def _checked(
    trace: _Trace, name: str, shown: str, value: str | None, test: Callable[[str], bool], *, missing: str = ""
) -> None:
    """Record ``test(value)``; no value, or a pattern that cannot be evaluated, fails the check."""
    if value is None:
        trace.add(name, shown, None, False, missing or f"event has no {name}")
        return
    try:
        passed = test(value)
    except _PATTERN_ERRORS as exc:
        trace.add(name, shown, value, False, f"invalid pattern: {exc}")
        return
    trace.add(name, shown, value, passed, None if passed else "not matched")


def _listed(
    trace: _Trace, name: str, allowed: Sequence[str] | None, value: str | None, fold: bool = False
) -> None:
    if not allowed:
        return
    shown = ", ".join(allowed)
    if value is None:
        trace.add(name, shown, None, False, f"event has no {name}")
        return
    candidates = {a.lower() for a in allowed} if fold else set(allowed)
    passed = (value.lower() if fold else value) in candidates
    trace.add(name, shown, value, passed, None if passed else "not listed")


def _branches(trace: _Trace, name: str, patterns: Sequence[LockBranchPattern], value: str | None) -> None:
    if patterns:
        shown = ", ".join(_show_pattern(p) for p in patterns)
        _checked(trace, name, shown, value, lambda v: branch_filter_admits(patterns, v))


def _globs(trace: _Trace, name: str, patterns: Sequence[str] | None, value: str | None) -> None:
    if patterns:
        _checked(trace, name, ", ".join(patterns), value, lambda v: filter_matches(patterns, v))


def _name_matches(pattern: str, value: str) -> bool:
    return glob_matches(pattern, value) if is_glob(pattern) else pattern == value


def _names(trace: _Trace, name: str, patterns: Sequence[str], value: str | None) -> None:
    if patterns:
        _checked(
            trace, name, ", ".join(patterns), value, lambda v: any(_name_matches(p, v) for p in patterns)
        )


def _show_files(files: Sequence[str]) -> str:
    shown = ", ".join(files[:_MAX_SHOWN_FILES])
    extra = len(files) - _MAX_SHOWN_FILES
    return f"{shown} (+{extra} more)" if extra > 0 else shown


def _paths(trace: _Trace, patterns: Sequence[str], files: Sequence[str] | None) -> None:
    if not patterns:
        return
    shown = ", ".join(patterns)
    if not files:
        trace.add("paths", shown, None if files is None else "", False, "no changed files")
        return
    _checked(trace, "paths", shown, _show_files(files), lambda _: paths_admit(patterns, files))


def _repos(trace: _Trace, patterns: Sequence[str] | None, source_repo: str | None) -> None:
    if patterns:
        shown = ", ".join(patterns)
        missing = "event has no source repository"
        _checked(trace, "repos", shown, source_repo, lambda v: repos_admit(patterns, v), missing=missing)


def _equal(trace: _Trace, name: str, expected: str | None, value: str | None) -> None:
    if expected is None:
        return
    passed = value == expected
    trace.add(name, expected, value, passed, None if passed else "not equal")


def _if_given(trace: _Trace, name: str, expected: str, value: str | None) -> None:
    if value is None:
        trace.add(name, expected, None, True, "not given by the event")
    else:
        _equal(trace, name, expected, value)


def _show_json(value: Any) -> str:
    return json.dumps(
        value, default=lambda o: dict(o) if isinstance(o, Mapping) else str(o), ensure_ascii=False
    )


def _expectations(
    trace: _Trace, name: str, spec: Mapping[str, Any] | None, document: Any, negate: bool
) -> None:
    for path, expected in (spec or {}).items():
        check, wanted = f"{name}[{path}]", _show_json(expected)
        try:
            found = find(path, document)
            hit = any(value_matches(expected, v) for v in found)
        except _PATTERN_ERRORS as exc:
            trace.add(check, wanted, None, False, f"invalid pattern: {exc}")
            continue
        shown = ", ".join(_show_json(v) for v in found) if found else None
        if negate:
            trace.add(check, wanted, shown, not hit, "excluded by not" if hit else None)
        elif not found:
            trace.add(check, wanted, None, False, "path not found")
        else:
            trace.add(check, wanted, shown, hit, None if hit else "not matched")


def _generic_events(trace: _Trace, events: Sequence[str] | None, event: SimulatedEvent) -> None:
    if not events:
        return
    names = [n for n in (_text(_dig(event.payload, "eventType")), event.action) if n is not None]
    hit = any(n in events for n in names)
    trace.add("events", ", ".join(events), ", ".join(names) or None, hit, None if hit else "not listed")


def _comment_source(event: SimulatedEvent) -> str:
    return "pr" if _dig(event.payload, "issue", "pull_request") is not None else "issue"


def _filters(trigger: Trigger, event: SimulatedEvent, trace: _Trace) -> None:
    payload = event.payload
    match trigger:
        case PrTrigger():
            _listed(trace, "events", trigger.events, event.action)
            _branches(trace, "target_branches", trigger.target_branches, event.target_branch)
            _branches(trace, "source_branches", trigger.source_branches, event.source_branch)
            _paths(trace, trigger.paths, event.changed_files)
            _repos(trace, trigger.repos, event.source_repo)
        case PushTrigger():
            _branches(trace, "branches", trigger.branches, event.target_branch)
            _paths(trace, trigger.paths, event.changed_files)
            _repos(trace, trigger.repos, event.source_repo)
        case TagTrigger():
            _branches(trace, "patterns", trigger.patterns, event.target_branch)
            _repos(trace, trigger.repos, event.source_repo)
        case CommentTrigger():
            _listed(trace, "actions", trigger.actions, event.action)
            _equal(trace, "source", trigger.source, _comment_source(event))
            if trigger.body_match is not None:
                _branches(trace, "body_match", (trigger.body_match,), _text(_dig(payload, "comment", "body")))
            _repos(trace, trigger.repos, event.source_repo)
        case ReviewTrigger():
            _listed(trace, "actions", trigger.actions, event.action)
            _listed(trace, "states", trigger.states, _text(_dig(payload, "review", "state")), fold=True)
            _repos(trace, trigger.repos, event.source_repo)
        case ReviewCommentTrigger() | ReleaseTrigger() | StarTrigger() | WatchTrigger():
            _listed(trace, "actions", trigger.actions, event.action)
            _repos(trace, trigger.repos, event.source_repo)
        case DispatchTrigger():
            _listed(trace, "types", trigger.types, event.action)
            _repos(trace, trigger.repos, event.source_repo)
        case CreateTrigger() | DeleteTrigger():
            _listed(trace, "ref_types", trigger.ref_types, _text(_dig(payload, "ref_type")))
            ref = _text(_dig(payload, "ref")) or event.target_branch
            _branches(trace, "patterns", trigger.patterns, ref)
            _repos(trace, trigger.repos, event.source_repo)
        case StatusTrigger():
            _globs(trace, "contexts", trigger.contexts, _text(_dig(payload, "context")))
            _listed(trace, "states", trigger.states, _text(_dig(payload, "state")))
            _repos(trace, trigger.repos, event.source_repo)
        case WorkflowRunTrigger():
            run_name = _text(_dig(payload, "workflow_run", "name")) or _text(
                _dig(payload, "workflow", "name")
            )
            _listed(trace, "actions", trigger.actions, event.action)
            _names(trace, "workflows", trigger.workflows, run_name)
            _listed(
                trace, "conclusions", trigger.conclusions, _text(_dig(payload, "workflow_run", "conclusion"))
            )
            _repos(trace, trigger.repos, event.source_repo)
        case ForkTrigger():
            _repos(trace, trigger.repos, event.source_repo)
        case WebhookTrigger():
            _listed(trace, "actions", trigger.actions, event.action)
            _repos(trace, trigger.repos, event.source_repo)
        case KiciEventTrigger():
            _equal(trace, "event_name", trigger.event_name, _text(_dig(payload, "eventName")))
            _expectations(trace, "match", trigger.match, _dig(payload, "payload"), negate=False)
            _expectations(trace, "not", trigger.not_, _dig(payload, "payload"), negate=True)
            _equal(trace, "source", trigger.source, _text(_dig(payload, "sourceRepo")))
        case WorkflowCompleteTrigger():
            _equal(trace, "name", trigger.name, _text(_dig(payload, "workflowName")))
            _listed(trace, "status", trigger.status, _text(_dig(payload, "status")))
            _equal(trace, "source", trigger.source, _text(_dig(payload, "sourceRepo")))
        case JobCompleteTrigger():
            _equal(trace, "workflow", trigger.workflow, _text(_dig(payload, "workflowName")))
            _equal(trace, "job", trigger.job, _text(_dig(payload, "jobName")))
            _listed(trace, "status", trigger.status, _text(_dig(payload, "status")))
            _equal(trace, "source", trigger.source, _text(_dig(payload, "sourceRepo")))
        case GenericWebhookTrigger():
            _equal(trace, "source", trigger.source, _text(_dig(payload, "source")))
            _generic_events(trace, trigger.events, event)
            _expectations(trace, "match", trigger.match, payload, negate=False)
            _expectations(trace, "not", trigger.not_, payload, negate=True)
        case ScheduleTrigger():
            _if_given(
                trace, "cron_expression", trigger.cron_expression, _text(_dig(payload, "cronExpression"))
            )
            _if_given(trace, "timezone", trigger.timezone, _text(_dig(payload, "timezone")))
        case LifecycleTrigger():
            _listed(trace, "events", trigger.events, _text(_dig(payload, "lifecycleEvent")))
            _globs(trace, "sources", trigger.sources, _text(_dig(payload, "sourceRepo")))
        case _:
            assert_never(trigger)


def _type_guard(trigger: Trigger, tag: str, event: SimulatedEvent, trace: _Trace) -> bool:
    if isinstance(trigger, WebhookTrigger):
        allowed = ", ".join(trigger.events)
        passed = event.type in trigger.events
        return trace.add("type", allowed, event.type, passed, None if passed else "event type not listed")
    expected = TRIGGER_EVENT_TYPES[tag]
    passed = event.type == expected
    return trace.add("type", expected, event.type, passed, None if passed else "other event type")


def match_trigger(trigger: Trigger, event: SimulatedEvent, index: int = 0) -> TriggerMatch:
    """Whether ``trigger`` fires for ``event``; the trace stops after a failed type guard."""
    tag = trigger_type(trigger)
    trace = _Trace(f"{tag}[{index}]")
    if _type_guard(trigger, tag, event, trace):
        _filters(trigger, event, trace)
    return TriggerMatch(trace.passed, tuple(trace.entries))


def needs_changed_files(triggers: Iterable[Trigger]) -> bool:
    """Whether matching needs the changed files (HOOK-13): only ``pr``/``push`` with ``paths`` read them.

    Fetching them costs provider API calls (paginated for big pull requests),
    so the pipeline asks before fetching.
    """
    return any(isinstance(t, PrTrigger | PushTrigger) and t.paths for t in triggers)


def _first_failure(checks: Iterable[TraceEntry]) -> str:
    return next(entry.check for entry in checks if not entry.passed)


def match_workflow(
    triggers: Sequence[Trigger], event: SimulatedEvent, workflow_name: str = ""
) -> WorkflowDecision:
    """The first matching trigger wins; a workflow without triggers never matches."""
    if not triggers:
        return WorkflowDecision(workflow_name, False, None, (), "no triggers")
    checks: list[TraceEntry] = []
    failures: list[str] = []
    for index, trigger in enumerate(triggers):
        result = match_trigger(trigger, event, index)
        checks.extend(result.checks)
        if result.matched:
            summary = f"matched trigger {index} ({trigger_type(trigger)})"
            return WorkflowDecision(workflow_name, True, index, tuple(checks), summary)
        failures.append(_first_failure(result.checks))
    return WorkflowDecision(
        workflow_name, False, None, tuple(checks), "no trigger matched: " + ", ".join(failures)
    )


class WorkflowLike(Protocol):
    """What matching needs of a lock workflow."""

    @property
    def name(self) -> str: ...

    @property
    def triggers(self) -> Sequence[Trigger]: ...


W = TypeVar("W", bound=WorkflowLike)
W_co = TypeVar("W_co", bound=WorkflowLike, covariant=True)


class LockLike(Protocol[W_co]):
    """A lock file, or anything else holding workflows."""

    @property
    def workflows(self) -> Sequence[W_co]: ...


@attrs.frozen
class LockMatch(Generic[W]):
    """One decision per workflow, in lock order, and the workflows that matched (their jobs run)."""

    decisions: tuple[WorkflowDecision, ...]
    matched: tuple[W, ...]


def match_lock(lock: LockLike[W] | Iterable[W], event: SimulatedEvent) -> LockMatch[W]:
    """Match every workflow of a lock (or a list of workflows) against one event."""
    workflows: Iterable[W] = lock.workflows if not isinstance(lock, Iterable) else lock
    decisions: list[WorkflowDecision] = []
    matched: list[W] = []
    for workflow in workflows:
        decision = match_workflow(workflow.triggers, event, workflow.name)
        decisions.append(decision)
        if decision.matched:
            matched.append(workflow)
    return LockMatch(tuple(decisions), tuple(matched))
