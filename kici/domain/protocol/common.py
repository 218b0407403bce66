"""Messages and vocabularies shared by several layers (20a §6.1 and the shapes reused across it).

The same ``type`` can mean different shapes on different layers: the agent's ``auth.request``
has no capabilities and the browser's carries only a JWT; the orchestrator's ``auth.success``
from the Platform has organisation fields the agent's lacks. Each shape is its own class
and each direction's union picks the one it speaks, so a receiver never accepts a field
its layer does not define.

``log.chunk``, ``run.event``, ``job.context`` and ``MetricEntry`` live here because the
agent sends them to the orchestrator and the orchestrator forwards them upstream unchanged.
"""

from enum import StrEnum
from typing import Any, ClassVar

import attrs

from kici.domain.execution.steps import PREPARE_STEP_INDEX
from kici.domain.protocol.base import (
    NON_EMPTY,
    NON_NEGATIVE,
    NULLABLE,
    PASSTHROUGH,
    POSITIVE,
    Message,
    WireModel,
    check_passthrough,
    check_range,
    wire,
)
from kici.domain.protocol.capabilities import OrchCapabilities


class JobState(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    RECOVERING = "recovering"
    CANCELLING = "cancelling"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    TIMED_OUT_STALE = "timed_out_stale"
    DRIFT_DROPPED = "drift_dropped"


class StepState(StrEnum):
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"
    PENDING = "pending"
    CANCELLED = "cancelled"


class RunState(StrEnum):
    """Run status on the wire; ``held`` appears only in ``state.replay`` snapshots."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CANCELLING = "cancelling"
    HELD = "held"


class MetricType(StrEnum):
    COUNTER = "counter"
    HISTOGRAM = "histogram"
    GAUGE = "gauge"
    UP_DOWN_COUNTER = "upDownCounter"


class SourceService(StrEnum):
    PLATFORM = "platform"
    ORCHESTRATOR = "orchestrator"
    AGENT = "agent"


class EnvVarCategory(StrEnum):
    SYSTEM = "system"
    USER = "user"
    INHERITED = "inherited"
    SECRET = "secret"


@attrs.frozen(kw_only=True)
class Heartbeat(Message):
    TYPE: ClassVar[str] = "heartbeat"
    timestamp: int


@attrs.frozen(kw_only=True)
class Ack(Message):
    TYPE: ClassVar[str] = "ack"
    message_id: str


@attrs.frozen(kw_only=True)
class Nack(Message):
    TYPE: ClassVar[str] = "nack"
    message_id: str
    reason: str


@attrs.frozen(kw_only=True)
class ErrorMessage(Message):
    """``error{code, message}``: e.g. ``INVALID_MESSAGE`` before the orchestrator closes 4003."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str


@attrs.frozen(kw_only=True)
class AuthRequest(Message):
    """The orchestrator's ``auth.request`` to the Platform (org API key + capabilities)."""

    TYPE: ClassVar[str] = "auth.request"
    token: str = attrs.field(validator=NON_EMPTY)
    protocol_version: int = attrs.field(validator=POSITIVE)
    capabilities: OrchCapabilities | None = None


@attrs.frozen(kw_only=True)
class AgentAuthRequest(Message):
    """The agent's ``auth.request`` (``kat_`` token); it carries no capabilities."""

    TYPE: ClassVar[str] = "auth.request"
    token: str = attrs.field(validator=NON_EMPTY)
    protocol_version: int = attrs.field(validator=POSITIVE)


@attrs.frozen(kw_only=True)
class AuthSuccess(Message):
    """``auth.success`` to an agent or a browser: the connection id only."""

    TYPE: ClassVar[str] = "auth.success"
    connection_id: str


@attrs.frozen(kw_only=True)
class PlatformAuthSuccess(Message):
    """``auth.success`` from the Platform to an orchestrator."""

    TYPE: ClassVar[str] = "auth.success"
    connection_id: str
    org_public_alias: str | None = None
    org_id: str | None = None
    provenance_issuer: str | None = attrs.field(default=None, metadata=NULLABLE)


@attrs.frozen(kw_only=True)
class AuthFailure(Message):
    TYPE: ClassVar[str] = "auth.failure"
    reason: str


@attrs.frozen(kw_only=True)
class RateLimitWarning(Message):
    """Sent by a receiver's rate limiter instead of processing a frame (kici-py adds it to the unions)."""

    TYPE: ClassVar[str] = "rate.limit.warning"
    retry_after_ms: int = attrs.field(validator=NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class LogChunk(Message):
    """Step log lines: agent -> orchestrator, and the same frame forwarded upstream.

    ``stepIndex`` -1 is the prepare bucket of 10 §3 (the lines before the first step: clone, load,
    rules); anything below it is invalid.
    """

    TYPE: ClassVar[str] = "log.chunk"
    message_id: str
    run_id: str
    job_id: str
    step_index: int = attrs.field(validator=check_range(PREPARE_STEP_INDEX))
    lines: list[str]
    timestamp: int


@attrs.frozen(kw_only=True)
class HistogramBucket(WireModel):
    le: float
    count: float


@attrs.frozen(kw_only=True)
class MetricEntry(WireModel):
    name: str
    metric_type: MetricType = attrs.field(metadata=wire("type"))
    value: float | None = None
    labels: dict[str, str] | None = None
    buckets: list[HistogramBucket] | None = None
    count: float | None = None
    sum: float | None = None


@attrs.frozen(kw_only=True)
class RunEvent(Message):
    """A run-timeline event. It never carries an ``orgId``: the tenant comes from the connection."""

    TYPE: ClassVar[str] = "run.event"
    run_id: str
    event_type: str
    timestamp_ms: int
    source_service: SourceService
    metadata: dict[str, Any] | None = None
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    duration_ms: float | None = attrs.field(default=None, metadata=NULLABLE)
    job_id: str | None = attrs.field(default=None, metadata=NULLABLE)
    step_index: int | None = attrs.field(default=None, metadata=NULLABLE)


@attrs.frozen(kw_only=True)
class EnvVar(WireModel):
    """One environment variable of a job as shown to users; ``value`` is already masked."""

    name: str
    value: str
    category: EnvVarCategory


@attrs.frozen(kw_only=True)
class ScalerContext(WireModel):
    """Which scaler spawned the agent; scaler-specific keys pass through."""

    backend_type: str
    scaler_name: str
    extra: dict[str, Any] = attrs.field(factory=dict, metadata=PASSTHROUGH, validator=check_passthrough)


@attrs.frozen(kw_only=True)
class JobContextInfo(WireModel):
    """Execution context of a job. 20a leaves some types open; those are kept as any JSON."""

    env_vars: list[EnvVar] | None = None
    runtime: Any = None
    sandbox_type: str | None = None
    labels: list[str] | None = None
    working_directory: str | None = None
    git_ref: str | None = None
    lock_file_version: Any = None
    sdk_version: str | None = None
    dep_cache_status: str | None = None
    network_isolation: Any = None
    scaler_context: ScalerContext | None = None


@attrs.frozen(kw_only=True)
class JobContext(Message):
    TYPE: ClassVar[str] = "job.context"
    run_id: str
    job_id: str
    context: JobContextInfo
