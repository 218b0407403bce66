"""Trigger shapes of the lock file: the 22 ``_type``s of spec 00 §2.2.

Conventions (shared with every lock model):

* Attributes are snake_case; the codec writes the spec's camelCase keys
  (``target_branches`` -> ``targetBranches``, ``not_`` -> ``not``) and the
  ``_type`` tag, which is not an attribute: the class *is* the tag (see
  :data:`TRIGGER_TYPES`).
* Filters are tuples. An empty tuple means "no filter", exactly like an empty
  array in the lock. Branch, tag and ref-name filters hold
  :class:`LockBranchPattern` (glob or regex, as KiCI stores them); ``paths`` and
  ``repos`` hold plain glob strings where a leading ``!`` excludes.
* ``None`` means "key absent" for optional keys (``repos``, ``source`` ...);
  ``repos=None`` and ``repos=()`` both mean "no cross-repo filter" but are kept
  apart so that a lock round-trips unchanged. Keys required by the spec have no
  ``None`` default (see :mod:`kici.domain.lockfile.fields` for the omission rule);
  all models are keyword-only, so defaults like ``()`` are just conveniences.
* Free-form JSON (``match``/``not`` expectations, input defaults) is frozen with
  :mod:`kici.domain.lockfile.frozen` so every model is hashable.
* ``comment.bodyMatch`` reuses :class:`LockBranchPattern`: it has the same three
  keys and the same glob-or-regex meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypeAlias

import attrs

from kici.domain.lockfile.fields import UNSET, Unset
from kici.domain.lockfile.frozen import FrozenDict, JsonValue

PatternType = Literal["glob", "regex"]
InputType = Literal["string", "number", "integer", "boolean", "enum", "literal"]
AuthMethod = Literal["hmac-sha256", "api-key"]


@attrs.frozen(kw_only=True)
class LockBranchPattern:
    """A branch, tag or ref-name pattern; ``flags`` are JS regex flags (regex only)."""

    type: PatternType
    pattern: str
    flags: str | None = None


@attrs.frozen(kw_only=True)
class InputDescriptor:
    """A typed dispatch/schedule input (SDK ``I.*``); unsupported schemas are unrepresentable."""

    type: InputType
    optional: bool
    nullable: bool
    default: JsonValue | Unset = UNSET
    values: tuple[JsonValue, ...] | None = None
    literal: JsonValue | Unset = UNSET
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    description: str | None = None


Inputs: TypeAlias = FrozenDict[str, InputDescriptor]


@attrs.frozen(kw_only=True)
class GenericWebhookAuth:
    """``hmac-sha256`` uses ``signature_header``; ``api-key`` uses ``header``."""

    method: AuthMethod
    secret: str
    signature_header: str | None = None
    header: str | None = None


@attrs.frozen(kw_only=True)
class PrTrigger:
    events: tuple[str, ...] = ()
    target_branches: tuple[LockBranchPattern, ...] = ()
    source_branches: tuple[LockBranchPattern, ...] = ()
    paths: tuple[str, ...] = ()
    repos: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class PushTrigger:
    branches: tuple[LockBranchPattern, ...] = ()
    paths: tuple[str, ...] = ()
    repos: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class TagTrigger:
    patterns: tuple[LockBranchPattern, ...] = ()
    repos: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class CommentTrigger:
    """``source`` is ``issue`` or ``pr`` (absent: both)."""

    actions: tuple[str, ...] = ()
    source: str | None = None
    body_match: LockBranchPattern | None = None
    repos: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class ReviewTrigger:
    actions: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    repos: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class ReviewCommentTrigger:
    actions: tuple[str, ...] = ()
    repos: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class ReleaseTrigger:
    actions: tuple[str, ...] = ()
    repos: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class DispatchTrigger:
    types: tuple[str, ...] = ()
    inputs: Inputs | None = None
    repos: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class CreateTrigger:
    ref_types: tuple[str, ...] = ()
    patterns: tuple[LockBranchPattern, ...] = ()
    repos: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class DeleteTrigger:
    ref_types: tuple[str, ...] = ()
    patterns: tuple[LockBranchPattern, ...] = ()
    repos: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class StatusTrigger:
    """``contexts`` are glob strings."""

    contexts: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    repos: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class WorkflowRunTrigger:
    actions: tuple[str, ...] = ()
    workflows: tuple[str, ...] = ()
    conclusions: tuple[str, ...] = ()
    repos: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class ForkTrigger:
    repos: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class StarTrigger:
    actions: tuple[str, ...] = ()
    repos: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class WatchTrigger:
    actions: tuple[str, ...] = ()
    repos: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class WebhookTrigger:
    events: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    repos: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class KiciEventTrigger:
    """``match``/``not_`` map JSONPath expressions to expected values (EVT-15)."""

    event_name: str
    match: FrozenDict[str, JsonValue] | None = None
    not_: FrozenDict[str, JsonValue] | None = None
    source: str | None = None


@attrs.frozen(kw_only=True)
class WorkflowCompleteTrigger:
    name: str | None = None
    status: tuple[str, ...] | None = None
    source: str | None = None


@attrs.frozen(kw_only=True)
class JobCompleteTrigger:
    workflow: str | None = None
    job: str | None = None
    status: tuple[str, ...] | None = None
    source: str | None = None


@attrs.frozen(kw_only=True)
class GenericWebhookTrigger:
    source: str
    events: tuple[str, ...] | None = None
    match: FrozenDict[str, JsonValue] | None = None
    not_: FrozenDict[str, JsonValue] | None = None
    auth: GenericWebhookAuth | None = None
    path: str | None = None


@attrs.frozen(kw_only=True)
class ScheduleTrigger:
    cron_expression: str
    timezone: str = "UTC"
    description: str | None = None
    inputs: Inputs | None = None


@attrs.frozen(kw_only=True)
class LifecycleTrigger:
    events: tuple[str, ...] = ()
    sources: tuple[str, ...] | None = None
    description: str | None = None


Trigger: TypeAlias = (
    PrTrigger
    | PushTrigger
    | TagTrigger
    | CommentTrigger
    | ReviewTrigger
    | ReviewCommentTrigger
    | ReleaseTrigger
    | DispatchTrigger
    | CreateTrigger
    | DeleteTrigger
    | StatusTrigger
    | WorkflowRunTrigger
    | ForkTrigger
    | StarTrigger
    | WatchTrigger
    | WebhookTrigger
    | KiciEventTrigger
    | WorkflowCompleteTrigger
    | JobCompleteTrigger
    | GenericWebhookTrigger
    | ScheduleTrigger
    | LifecycleTrigger
)

TRIGGER_TYPES: Mapping[str, type[Trigger]] = FrozenDict(
    {
        "pr": PrTrigger,
        "push": PushTrigger,
        "tag": TagTrigger,
        "comment": CommentTrigger,
        "review": ReviewTrigger,
        "review_comment": ReviewCommentTrigger,
        "release": ReleaseTrigger,
        "dispatch": DispatchTrigger,
        "create": CreateTrigger,
        "delete": DeleteTrigger,
        "status": StatusTrigger,
        "workflow_run": WorkflowRunTrigger,
        "fork": ForkTrigger,
        "star": StarTrigger,
        "watch": WatchTrigger,
        "webhook": WebhookTrigger,
        "kici_event": KiciEventTrigger,
        "workflow_complete": WorkflowCompleteTrigger,
        "job_complete": JobCompleteTrigger,
        "generic_webhook": GenericWebhookTrigger,
        "schedule": ScheduleTrigger,
        "lifecycle": LifecycleTrigger,
    }
)

TRIGGER_TAGS: Mapping[type[Trigger], str] = FrozenDict({cls: tag for tag, cls in TRIGGER_TYPES.items()})


def trigger_type(trigger: Trigger) -> str:
    """The lock ``_type`` tag of a trigger."""
    return TRIGGER_TAGS[type(trigger)]
