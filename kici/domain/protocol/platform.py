"""Platform <-> orchestrator messages (20a §6.4) and the two direction unions.

The Platform -> orchestrator union also carries every dashboard request and the relayed
``join.request``; the orchestrator -> Platform union carries every dashboard response and
``join.response``. Both join types appear in both directions because a joining
orchestrator sends the request through the Platform and an existing one answers it.

The single-frame ``webhook.relay`` (body inline) is deliberately absent: the orchestrator
accepts webhooks from the Platform only through the chunked relay, whose raw bytes it
verifies itself, so a compromised Platform cannot inject unsigned events.
"""

import re
from enum import StrEnum
from typing import Any, ClassVar, Final, get_args

import attrs

from kici.domain.protocol.base import (
    LOG_STEP_INDEX,
    MAX_PAYLOAD_BYTES,
    NON_NEGATIVE,
    NULLABLE,
    OPT_LOG_STEP_INDEX,
    POSITIVE,
    InvalidMessage,
    Message,
    WireModel,
    check_range,
    check_text_len,
)
from kici.domain.protocol.capabilities import OrchCapabilities, OrchRole
from kici.domain.protocol.common import (
    Ack,
    AuthFailure,
    AuthRequest,
    Heartbeat,
    JobContext,
    JobState,
    LogChunk,
    MetricEntry,
    Nack,
    PlatformAuthSuccess,
    RateLimitWarning,
    RunEvent,
    RunState,
    StepState,
)
from kici.domain.protocol.dashboard import DASHBOARD_REQ, DASHBOARD_RESP, DashboardReq, DashboardResp
from kici.domain.protocol.peer import JoinRequest, JoinResponse

MAX_METRIC_ENTRIES: Final = 2000
MAX_METRICS_MESSAGE_ID: Final = 128

_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class WebhookResult(StrEnum):
    """Verdict of the orchestrator; the Platform maps it to 2xx / 401 / 404 / 500."""

    ACCEPTED = "accepted"
    REJECTED_SIGNATURE = "rejected_signature"
    REJECTED_UNKNOWN_SOURCE = "rejected_unknown_source"
    REJECTED_MISCONFIGURED = "rejected_misconfigured"


class SourceProvider(StrEnum):
    GITHUB = "github"
    GITLAB = "gitlab"
    BITBUCKET = "bitbucket"
    GENERIC = "generic"


class SourceSubtype(StrEnum):
    GITHUB_APP = "github_app"
    GENERIC_WEBHOOK = "generic_webhook"
    UNIVERSAL_GIT = "universal_git"
    LOCAL = "local"


class OrchMode(StrEnum):
    PLATFORM = "platform"
    HYBRID = "hybrid"
    INDEPENDENT = "independent"


class ExecutionEventKind(StrEnum):
    STARTED = "started"
    JOB_DISPATCHED = "job_dispatched"
    JOB_COMPLETED = "job_completed"
    FINISHED = "finished"


class CacheStatsType(StrEnum):
    SOURCE = "source"
    DEP = "dep"


class ForkPolicy(StrEnum):
    HOLD = "hold"
    REJECT = "reject"
    ALLOW = "allow"


class UnknownContributorPolicy(StrEnum):
    HOLD = "hold"
    REJECT = "reject"


class WorkflowChangePolicy(StrEnum):
    HOLD = "hold"
    REJECT = "reject"
    ALLOW = "allow"


class CiTrustLevel(StrEnum):
    NONE = "none"
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


# --- nested shapes -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AcceptedSource(WireModel):
    routing_key: str
    webhook_url: str | None = attrs.field(default=None, metadata=NULLABLE)


@attrs.frozen(kw_only=True)
class RejectedSource(WireModel):
    routing_key: str
    reason: str


@attrs.frozen(kw_only=True)
class RelayPeer(WireModel):
    """Another orchestrator of the same org as the Platform sees it (``peer.*`` pushes)."""

    connection_id: str
    instance_id: str | None = None
    address: str | None = attrs.field(default=None, metadata=NULLABLE)
    routing_keys: list[str]
    orch_role: OrchRole | None = None


@attrs.frozen(kw_only=True)
class TrustPolicy(WireModel):
    fork_policy: ForkPolicy
    unknown_contributor_policy: UnknownContributorPolicy
    workflow_change_policy: WorkflowChangePolicy
    approval_expiry_hours: float


@attrs.frozen(kw_only=True)
class IdentityLink(WireModel):
    user_id: str
    provider: str
    provider_username: str
    provider_user_id: str | None = attrs.field(default=None, metadata=NULLABLE)


@attrs.frozen(kw_only=True)
class TeamMembership(WireModel):
    team_name: str
    member_user_ids: list[str]


@attrs.frozen(kw_only=True)
class StaleRun(WireModel):
    run_id: str
    provider: str
    routing_key: str
    repo_identifier: str
    sha: str
    workflow_name: str
    job_names: list[str]


@attrs.frozen(kw_only=True)
class SourceEntry(WireModel):
    provider: SourceProvider
    routing_key: str
    name: str
    subtype: SourceSubtype
    slug: str | None = None


@attrs.frozen(kw_only=True)
class JobSnapshot(WireModel):
    """``status`` is free text in snapshots (20a types it ``s``)."""

    job_id: str
    job_name: str
    status: str
    started_at: int | None = None
    completed_at: int | None = None
    duration_ms: float | None = None
    error_message: str | None = attrs.field(default=None, metadata=NULLABLE)
    agent_id: str | None = attrs.field(default=None, metadata=NULLABLE)
    runs_on_labels: list[str] | None = None


@attrs.frozen(kw_only=True)
class RunSnapshot(WireModel):
    """A run in ``state.replay``: the run fields of ``execution.status`` (not its envelope
    ``messageId``/``timestamp``), ``jobCount`` required, ``held`` allowed, plus its jobs."""

    run_id: str
    workflow_name: str
    status: RunState
    started_at: int
    job_count: float
    jobs: list[JobSnapshot]
    routing_key: str | None = None
    repo_identifier: str | None = None
    sha: str | None = None
    ref: str | None = None
    trigger_event: str | None = None
    commit_message: str | None = None
    completed_at: int | None = None
    duration_ms: float | None = None
    parent_run_id: str | None = attrs.field(default=None, metadata=NULLABLE)
    original_run_id: str | None = attrs.field(default=None, metadata=NULLABLE)
    triggered_by: str | None = attrs.field(default=None, metadata=NULLABLE)
    failure_reason: str | None = None


@attrs.frozen(kw_only=True)
class LogResponseChunk(WireModel):
    job_name: str
    step_index: int = attrs.field(validator=LOG_STEP_INDEX)
    lines: list[str]
    timestamp: int


# --- Platform -> orchestrator --------------------------------------------------------------


@attrs.frozen(kw_only=True)
class WebhookRelayStart(Message):
    """Opens a chunked webhook relay; ``headers`` are lowercased and limited to what
    verification needs. The body (``total_size`` bytes) follows in ``chunk_count`` chunks."""

    TYPE: ClassVar[str] = "webhook.relay.start"
    message_id: str
    routing_key: str
    delivery_id: str
    event: str
    action: str | None = attrs.field(default=None, metadata=NULLABLE)
    signature_header_name: str | None = attrs.field(default=None, metadata=NULLABLE)
    signature_header: str | None = attrs.field(default=None, metadata=NULLABLE)
    client_ip: str | None = attrs.field(default=None, metadata=NULLABLE)
    headers: dict[str, str]
    total_size: int = attrs.field(validator=check_range(0, MAX_PAYLOAD_BYTES))
    chunk_count: int = attrs.field(validator=POSITIVE)
    request_id: str | None = None


@attrs.frozen(kw_only=True)
class WebhookRelayChunk(Message):
    """``data`` is base64 of the raw body slice; ``sequence`` counts from 0 without gaps."""

    TYPE: ClassVar[str] = "webhook.relay.chunk"
    message_id: str
    sequence: int = attrs.field(validator=NON_NEGATIVE)
    data: str
    final: bool


@attrs.frozen(kw_only=True)
class SourceRegisterAck(Message):
    TYPE: ClassVar[str] = "source.register.ack"
    message_id: str
    accepted: list[AcceptedSource]
    rejected: list[RejectedSource]
    peers: list[RelayPeer] | None = None


@attrs.frozen(kw_only=True)
class SourceDeregisterAck(Message):
    TYPE: ClassVar[str] = "source.deregister.ack"
    message_id: str
    removed: list[str]


@attrs.frozen(kw_only=True)
class PeerDiscover(Message):
    TYPE: ClassVar[str] = "peer.discover"
    peer: RelayPeer


@attrs.frozen(kw_only=True)
class PeerUpdate(Message):
    """The full peer list (not a delta)."""

    TYPE: ClassVar[str] = "peer.update"
    peers: list[RelayPeer]


@attrs.frozen(kw_only=True)
class TrustPolicyUpdate(Message):
    TYPE: ClassVar[str] = "trust_policy.update"
    org_id: str
    policy: TrustPolicy
    identity_links: list[IdentityLink]
    member_ci_trust_levels: dict[str, CiTrustLevel]
    team_memberships: list[TeamMembership] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class StaleCheckrunCleanup(Message):
    TYPE: ClassVar[str] = "stale.checkrun.cleanup"
    runs: list[StaleRun]


@attrs.frozen(kw_only=True)
class LogRequest(Message):
    TYPE: ClassVar[str] = "log.request"
    message_id: str
    execution_id: str
    job_name: str | None = None
    step_index: int | None = attrs.field(default=None, validator=OPT_LOG_STEP_INDEX)
    cursor: float | None = None
    limit: float | None = None


# --- orchestrator -> Platform --------------------------------------------------------------


@attrs.frozen(kw_only=True)
class WebhookAck(Message):
    TYPE: ClassVar[str] = "webhook.ack"
    message_id: str
    delivery_id: str
    result: WebhookResult | None = None
    reason: str | None = attrs.field(default=None, metadata=NULLABLE)


def _optional_uuid(_instance: object, attribute: "attrs.Attribute[str | None]", value: str | None) -> None:
    if value is not None and _UUID.fullmatch(value) is None:
        raise InvalidMessage(f"{attribute.name} must be a UUID")


@attrs.frozen(kw_only=True)
class SourceRegister(Message):
    """Sent right after ``auth.success``, even with no sources."""

    TYPE: ClassVar[str] = "source.register"
    message_id: str
    sources: list[SourceEntry]
    instance_id: str | None = None
    cluster_name: str | None = None
    cluster_id: str | None = attrs.field(default=None, validator=_optional_uuid)
    address: str | None = attrs.field(default=None, metadata=NULLABLE)
    version: str | None = None
    mode: OrchMode | None = None
    scaler_backends: list[str] | None = None
    deployment: dict[str, Any] | None = None
    s3_log_access: bool | None = None
    queue_timeout_ms: float | None = None


@attrs.frozen(kw_only=True)
class SourceDeregister(Message):
    TYPE: ClassVar[str] = "source.deregister"
    message_id: str
    routing_keys: list[str]


@attrs.frozen(kw_only=True)
class ExecutionEvent(Message):
    TYPE: ClassVar[str] = "execution.event"
    message_id: str
    run_id: str
    event: ExecutionEventKind
    data: dict[str, Any]
    timestamp: int


def _live_run_state(_instance: object, _attribute: object, value: RunState) -> None:
    if value == RunState.HELD:
        raise InvalidMessage("'held' appears only in state.replay snapshots")


@attrs.frozen(kw_only=True)
class ExecutionStatus(Message):
    TYPE: ClassVar[str] = "execution.status"
    message_id: str
    run_id: str
    workflow_name: str
    status: RunState = attrs.field(validator=_live_run_state)
    started_at: int
    timestamp: int
    repo_identifier: str | None = None
    sha: str | None = None
    ref: str | None = None
    trigger_event: str | None = None
    commit_message: str | None = None
    job_count: float | None = None
    completed_at: int | None = None
    duration_ms: float | None = None
    parent_run_id: str | None = attrs.field(default=None, metadata=NULLABLE)
    original_run_id: str | None = attrs.field(default=None, metadata=NULLABLE)
    triggered_by: str | None = attrs.field(default=None, metadata=NULLABLE)
    failure_reason: str | None = None


@attrs.frozen(kw_only=True)
class StepStatusForward(Message):
    TYPE: ClassVar[str] = "step.status.forward"
    message_id: str
    run_id: str
    job_id: str
    job_name: str
    step_index: int = attrs.field(validator=NON_NEGATIVE)
    step_name: str
    state: StepState
    timestamp: int
    data: dict[str, Any] | None = None
    secrets_accessed: list[str] | None = None


@attrs.frozen(kw_only=True)
class JobStatusForward(Message):
    TYPE: ClassVar[str] = "job.status.forward"
    message_id: str
    run_id: str
    job_id: str
    job_name: str
    status: JobState
    timestamp: int
    matrix_values: dict[str, Any] | None = None
    started_at: int | None = None
    completed_at: int | None = None
    duration_ms: float | None = None
    error_message: str | None = attrs.field(default=None, metadata=NULLABLE)
    agent_id: str | None = attrs.field(default=None, metadata=NULLABLE)
    orchestrator_id: str | None = attrs.field(default=None, metadata=NULLABLE)
    runs_on_labels: list[str] | None = None


@attrs.frozen(kw_only=True)
class StateReplay(Message):
    """Active runs plus terminal runs of the replay window, sent after every (re)connect."""

    TYPE: ClassVar[str] = "state.replay"
    message_id: str
    runs: list[RunSnapshot]
    timestamp: int


def _metrics_cap(_instance: object, _attribute: object, value: list[MetricEntry]) -> None:
    if len(value) > MAX_METRIC_ENTRIES:
        raise InvalidMessage(f"orch.metrics carries at most {MAX_METRIC_ENTRIES} entries")


@attrs.frozen(kw_only=True)
class OrchMetrics(Message):
    """Capped so one frame stays far below the Platform's byte-burst limit."""

    TYPE: ClassVar[str] = "orch.metrics"
    message_id: str = attrs.field(validator=check_text_len(0, MAX_METRICS_MESSAGE_ID))
    metrics: list[MetricEntry] = attrs.field(validator=_metrics_cap)
    timestamp: int


@attrs.frozen(kw_only=True)
class OrchCapabilitiesUpdate(Message):
    """The whole manifest; it replaces the Platform's cached copy."""

    TYPE: ClassVar[str] = "orch.capabilities.update"
    capabilities: OrchCapabilities


@attrs.frozen(kw_only=True)
class CacheStats(Message):
    TYPE: ClassVar[str] = "cache.stats"
    cache_type: CacheStatsType
    hit: bool


@attrs.frozen(kw_only=True)
class LogResponse(Message):
    TYPE: ClassVar[str] = "log.response"
    message_id: str
    execution_id: str
    chunks: list[LogResponseChunk]
    cursor: float | None = None
    complete: bool
    error: str | None = None


_PLATFORM_TO_ORCH_OWN = (
    PlatformAuthSuccess
    | AuthFailure
    | Ack
    | Nack
    | RateLimitWarning
    | WebhookRelayStart
    | WebhookRelayChunk
    | SourceRegisterAck
    | SourceDeregisterAck
    | PeerDiscover
    | PeerUpdate
    | TrustPolicyUpdate
    | StaleCheckrunCleanup
    | LogRequest
    | JoinRequest
    | JoinResponse
)

_ORCH_TO_PLATFORM_OWN = (
    AuthRequest
    | Heartbeat
    | Ack
    | Nack
    | WebhookAck
    | SourceRegister
    | SourceDeregister
    | ExecutionEvent
    | ExecutionStatus
    | StepStatusForward
    | JobStatusForward
    | LogChunk
    | StateReplay
    | RunEvent
    | JobContext
    | OrchMetrics
    | OrchCapabilitiesUpdate
    | CacheStats
    | LogResponse
    | JoinRequest
    | JoinResponse
)

PlatformToOrch = _PLATFORM_TO_ORCH_OWN | DashboardReq
OrchToPlatform = _ORCH_TO_PLATFORM_OWN | DashboardResp

PLATFORM_TO_ORCH: Final[tuple[type[Message], ...]] = (*get_args(_PLATFORM_TO_ORCH_OWN), *DASHBOARD_REQ)
ORCH_TO_PLATFORM: Final[tuple[type[Message], ...]] = (*get_args(_ORCH_TO_PLATFORM_OWN), *DASHBOARD_RESP)
