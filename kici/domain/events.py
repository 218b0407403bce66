"""The normalized event every trigger is matched against, and the decision trace of a match (HOOK-01).

Providers turn their webhooks into a :class:`SimulatedEvent`; the event router,
cron and ``kici run local`` build the same shape, so one matcher serves all of
them. ``type`` is not restricted to :data:`EVENT_TYPES`: the local provider
passes its ``x-event-type`` header through verbatim, and an event of a type no
trigger knows simply matches nothing.

The matcher explains itself with :class:`TraceEntry` rows gathered into a
:class:`WorkflowDecision`, which the orchestrator forwards with the run
(``execution.event`` ``decisions``) so a user can see why a workflow did or did
not start.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

import attrs

EventType = Literal[
    "pull_request",
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
    "webhook",
    "kici_event",
    "workflow_complete",
    "job_complete",
    "generic_webhook",
    "schedule",
    "lifecycle",
]

EVENT_TYPES: frozenset[str] = frozenset(get_args(EventType))


def _files(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


@attrs.frozen(kw_only=True)
class SimulatedEvent:
    """A provider-neutral event.

    ``changed_files`` is ``None`` when they were not fetched (only triggers with
    ``paths`` need them) and ``()`` when the change touched no file; both fail
    a ``paths`` filter. ``sender_user_id`` is the provider's numeric id as a
    string: logins can be renamed, ids cannot, so trust decisions use the id.
    """

    type: str
    action: str | None = None
    payload: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    target_branch: str = ""
    source_branch: str | None = None
    changed_files: tuple[str, ...] | None = attrs.field(default=None, converter=_files)
    provider: str | None = None
    is_fork_pr: bool | None = None
    base_branch: str | None = None
    sender_username: str | None = None
    sender_user_id: str | None = None
    source_repo: str | None = None


def is_event_type(event: SimulatedEvent, event_type: EventType) -> bool:
    """Whether ``event`` is of ``event_type``; a name outside the vocabulary is a typo and raises."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r} (allowed: {', '.join(sorted(EVENT_TYPES))})")
    return event.type == event_type


@attrs.frozen
class TraceEntry:
    """One check of one trigger: what was compared with what, and why it failed."""

    check: str
    pattern: str
    value: str
    passed: bool
    reason: str | None = None


@attrs.frozen
class WorkflowDecision:
    """Whether a workflow matched; ``matched_trigger`` is the index of the first matching trigger."""

    workflow_name: str
    matched: bool
    matched_trigger: int | None
    checks: tuple[TraceEntry, ...]
    summary: str
