"""Event vocabulary and kici events (SDK-14): ``define_event`` and ``is_event_type``.

``define_event(name, schema)`` names a payload shape once so the emitting step
(``ctx.emit(definition, payload)``) and the receiving workflow's ``kici_event(name=...)``
agree on it; the runner validates payloads against ``schema`` when emitting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kici.sdk.checks import check_name
from kici.sdk.location import SourceLocation, caller_location
from kici.sdk.outputs import check_outputs_schema

EVENT_TYPES: frozenset[str] = frozenset(
    {
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
    }
)


def is_event_type(event: Any, event_type: str) -> bool:
    """Whether ``event.type`` is ``event_type``; an unknown type name is a typo and raises."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r} (allowed: {', '.join(sorted(EVENT_TYPES))})")
    return getattr(event, "type", None) == event_type


@dataclass(frozen=True, eq=False)
class EventDefinition:
    name: str
    schema: Any = None
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        check_name(self.name, "define_event name", self.location)
        check_outputs_schema(self.schema, f"define_event('{self.name}')", self.location, "schema")


def define_event(name: str, schema: Any = None) -> EventDefinition:
    return EventDefinition(name, schema, location=caller_location())
