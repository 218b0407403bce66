"""Browser <-> Platform messages (20a §6.7, hosted dashboards).

The Platform fans telemetry out to browsers. 20a names some of these shapes only by their
leading keys followed by "…": those classes model the named keys and keep the rest of the
telemetry verbatim in ``extra`` (passthrough), so the Platform can forward fields a newer
orchestrator adds without a browser-side schema change. ``job.new`` is assumed to lead
with ``runId``/``jobId``/``jobName``/``status`` like ``job.status``, and ``step.status`` with
``runId``/``jobId``/``stepIndex``.

The subscription organisation on the wire is a request, never an authorisation: the
Platform checks it against the user's membership.
"""

from enum import StrEnum
from typing import Any, ClassVar, Final, get_args

import attrs

from kici.domain.protocol.base import (
    LOG_STEP_INDEX,
    NON_NEGATIVE,
    OPT_NON_NEGATIVE,
    PASSTHROUGH,
    Message,
    check_passthrough,
)
from kici.domain.protocol.common import (
    AuthFailure,
    AuthSuccess,
    ErrorMessage,
    JobContext,
    JobState,
    RateLimitWarning,
    RunEvent,
    RunState,
)


class SubscriptionScope(StrEnum):
    ORG = "org"


class LogStreamTerminatedReason(StrEnum):
    PLAN_LIMIT_LIVE_LOG_MINUTES = "plan_limit_live_log_minutes"


# --- browser -> Platform -------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class BrowserAuthRequest(Message):
    """The browser authenticates with a JWT; it sends no protocol version."""

    TYPE: ClassVar[str] = "auth.request"
    token: str


@attrs.frozen(kw_only=True)
class AuthRefresh(Message):
    TYPE: ClassVar[str] = "auth.refresh"
    token: str


@attrs.frozen(kw_only=True)
class LogSubscribe(Message):
    """``after_line_count`` resumes a stream after the lines the browser already shows."""

    TYPE: ClassVar[str] = "log.subscribe"
    run_id: str
    job_id: str
    step_index: int = attrs.field(validator=LOG_STEP_INDEX)
    after_line_count: int | None = attrs.field(default=None, validator=OPT_NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class LogUnsubscribe(Message):
    TYPE: ClassVar[str] = "log.unsubscribe"
    run_id: str
    job_id: str
    step_index: int = attrs.field(validator=LOG_STEP_INDEX)


@attrs.frozen(kw_only=True)
class StatusSubscribe(Message):
    TYPE: ClassVar[str] = "status.subscribe"
    scope: SubscriptionScope
    org_id: str


@attrs.frozen(kw_only=True)
class StatusUnsubscribe(Message):
    TYPE: ClassVar[str] = "status.unsubscribe"


@attrs.frozen(kw_only=True)
class EventLogPayloadFetch(Message):
    TYPE: ClassVar[str] = "event-log.payload.fetch"
    request_id: str
    org_id: str
    delivery_id: str


@attrs.frozen(kw_only=True)
class Ping(Message):
    TYPE: ClassVar[str] = "ping"


# --- Platform -> browser -------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LogLines(Message):
    """``line_count`` is cumulative for the step, so a browser can detect missed lines."""

    TYPE: ClassVar[str] = "log.lines"
    run_id: str
    job_id: str
    step_index: int = attrs.field(validator=LOG_STEP_INDEX)
    lines: list[str]
    line_count: int = attrs.field(validator=NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class LogGap(Message):
    """Lines the Platform dropped under backpressure."""

    TYPE: ClassVar[str] = "log.gap"
    run_id: str
    job_id: str
    step_index: int = attrs.field(validator=LOG_STEP_INDEX)
    dropped_line_count: int = attrs.field(validator=NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class LogStreamTerminated(Message):
    """The stream ended for a plan limit: the browser must not resubscribe."""

    TYPE: ClassVar[str] = "log.stream.terminated"
    run_id: str
    job_id: str
    step_index: int = attrs.field(validator=LOG_STEP_INDEX)
    reason: LogStreamTerminatedReason
    message: str | None = None


@attrs.frozen(kw_only=True)
class RunStatus(Message):
    TYPE: ClassVar[str] = "run.status"
    run_id: str
    status: RunState
    completed_at: int | None = None
    duration_ms: float | None = None


@attrs.frozen(kw_only=True)
class RunNew(Message):
    TYPE: ClassVar[str] = "run.new"
    run_id: str
    status: RunState
    workflow_name: str
    job_count: float
    started_at: int
    org_id: str
    extra: dict[str, Any] = attrs.field(factory=dict, metadata=PASSTHROUGH, validator=check_passthrough)


@attrs.frozen(kw_only=True)
class BrowserJobStatus(Message):
    TYPE: ClassVar[str] = "job.status"
    run_id: str
    job_id: str
    job_name: str
    status: JobState
    extra: dict[str, Any] = attrs.field(factory=dict, metadata=PASSTHROUGH, validator=check_passthrough)


@attrs.frozen(kw_only=True)
class JobNew(Message):
    TYPE: ClassVar[str] = "job.new"
    run_id: str
    job_id: str
    job_name: str
    status: JobState
    extra: dict[str, Any] = attrs.field(factory=dict, metadata=PASSTHROUGH, validator=check_passthrough)


@attrs.frozen(kw_only=True)
class BrowserStepStatus(Message):
    TYPE: ClassVar[str] = "step.status"
    run_id: str
    job_id: str
    step_index: int = attrs.field(validator=LOG_STEP_INDEX)
    extra: dict[str, Any] = attrs.field(factory=dict, metadata=PASSTHROUGH, validator=check_passthrough)


@attrs.frozen(kw_only=True)
class EventLogPayloadChunk(Message):
    """Answer frames to ``event-log.payload.fetch``, same layout as the dashboard stream."""

    TYPE: ClassVar[str] = "event-log.payload.chunk"
    request_id: str
    seq: int = attrs.field(validator=NON_NEGATIVE)
    data: str
    is_last: bool
    error: str | None = None
    total_bytes: int | None = attrs.field(default=None, validator=OPT_NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class Pong(Message):
    TYPE: ClassVar[str] = "pong"


BrowserToPlatform = (
    BrowserAuthRequest
    | AuthRefresh
    | LogSubscribe
    | LogUnsubscribe
    | StatusSubscribe
    | StatusUnsubscribe
    | EventLogPayloadFetch
    | Ping
)

PlatformToBrowser = (
    AuthSuccess
    | AuthFailure
    | LogLines
    | LogGap
    | LogStreamTerminated
    | RunStatus
    | RunNew
    | BrowserJobStatus
    | JobNew
    | BrowserStepStatus
    | RunEvent
    | JobContext
    | EventLogPayloadChunk
    | ErrorMessage
    | RateLimitWarning
    | Pong
)

BROWSER_TO_PLATFORM: Final[tuple[type[Message], ...]] = get_args(BrowserToPlatform)
PLATFORM_TO_BROWSER: Final[tuple[type[Message], ...]] = get_args(PlatformToBrowser)
