"""Orchestrator <-> agent messages (20a §6.2, §6.3) and the two direction unions.

``common`` messages join these unions where the layer uses them: the agent sends
``heartbeat`` every 30 s; the orchestrator answers a malformed frame with ``error`` and a
flood with ``rate.limit.warning``; ``ack``/``nack`` are available both ways. ``run.event``
and ``job.context`` are agent frames the orchestrator forwards (the reference parsed them
outside its union; kici-py types them, 20-protocol.md §19).
"""

import re
from enum import StrEnum
from typing import Any, ClassVar, Final, get_args

import attrs

from kici.domain.protocol.base import (
    NON_NEGATIVE,
    OPT_NON_NEGATIVE,
    OPT_POSITIVE,
    InvalidMessage,
    Message,
    WireModel,
    wire,
)
from kici.domain.protocol.common import (
    Ack,
    AgentAuthRequest,
    AuthFailure,
    AuthSuccess,
    ErrorMessage,
    Heartbeat,
    JobContext,
    JobState,
    LogChunk,
    MetricEntry,
    Nack,
    RateLimitWarning,
    RunEvent,
    StepState,
)

PropertyValue = str | int | float | bool
"""A value of ``agent.register.properties``: any JSON scalar except null."""


class GitAuthKind(StrEnum):
    BASIC = "basic"
    SSH = "ssh"


class SshHostKeyPolicy(StrEnum):
    ACCEPT_NEW = "accept-new"
    PINNED = "pinned"


class CacheRefScope(StrEnum):
    """Absent on the wire means ``isolated``."""

    SHARED = "shared"
    ISOLATED = "isolated"


class ConcurrencyAction(StrEnum):
    PROCEED = "proceed"
    WAIT = "wait"
    CANCEL = "cancel"


class ApprovalOutcome(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


class RejectReason(StrEnum):
    BUSY = "busy"
    DRAINING = "draining"


class StepType(StrEnum):
    STEP = "step"
    ON_CANCEL = "hook:onCancel"
    CLEANUP = "hook:cleanup"
    ON_SUCCESS = "hook:onSuccess"
    ON_FAILURE = "hook:onFailure"
    BEFORE_STEP = "hook:beforeStep"
    AFTER_STEP = "hook:afterStep"


class ConcurrencyKind(StrEnum):
    SEQUENTIAL = "sequential"
    PARALLEL_CHILD = "parallel-child"
    PARALLEL_GROUP = "parallel-group"


class CacheType(StrEnum):
    SOURCE = "source"
    DEPS = "deps"


_LOWER_HEX: Final = re.compile(r"[0-9a-f]+")


# --- nested shapes -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class GitAuth(WireModel):
    """Clone credentials. A pinned host-key policy needs the known-hosts text to pin against."""

    kind: GitAuthKind
    user: str | None = None
    secret: str
    ssh_host_key_policy: SshHostKeyPolicy | None = None
    ssh_known_hosts_pem: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.ssh_host_key_policy == SshHostKeyPolicy.PINNED and self.ssh_known_hosts_pem is None:
            raise InvalidMessage("sshHostKeyPolicy 'pinned' requires sshKnownHostsPem")


@attrs.frozen(kw_only=True)
class NpmRegistry(WireModel):
    url: str
    scope: str | None = None
    always_auth: bool
    token: str


@attrs.frozen(kw_only=True)
class PackageIndex(WireModel):
    """kici-py's pip/uv counterpart of `NpmRegistry` (``packageIndexes``)."""

    url: str
    name: str | None = None
    always_auth: bool
    token: str


@attrs.frozen(kw_only=True)
class InFlightJob(WireModel):
    job_id: str
    run_id: str


@attrs.frozen(kw_only=True)
class SecretOutput(WireModel):
    agent_public_key: str
    encrypted: str


@attrs.frozen(kw_only=True)
class EventTarget(WireModel):
    repos: list[str] | None = None


@attrs.frozen(kw_only=True)
class ApproverClause(WireModel):
    """One AND-ed approval clause: a team or a user, exactly one of the two."""

    team: str | None = None
    user: str | None = None

    def __attrs_post_init__(self) -> None:
        if (self.team is None) == (self.user is None):
            raise InvalidMessage("an approver clause names exactly one of team or user")


@attrs.frozen(kw_only=True)
class ApprovalPayload(WireModel):
    summary_markdown: str
    drift: Any


# --- orchestrator -> agent -----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class JobDispatch(Message):
    """One job handed to an agent, with a short-lived clone token and its resolved secrets.

    Invariant (20a §6.2): when both ``token`` and ``source_auth`` are present, the source
    credentials must be the same token as basic auth; anything else is rejected, so an
    agent never clones with credentials that disagree with the token it was given.
    """

    TYPE: ClassVar[str] = "job.dispatch"
    message_id: str
    run_id: str
    job_id: str
    repo_url: str
    ref: str
    sha: str
    lock_file_url: str
    job_config: dict[str, Any]
    timestamp: int
    token: str | None = None
    secrets: dict[str, str] | None = None
    namespaced_secrets: dict[str, dict[str, str]] | None = None
    max_log_size_bytes: int | None = attrs.field(default=None, validator=OPT_POSITIVE)
    source_tar_url: str | None = None
    source_tar_hash: str | None = None
    deps_url: str | None = None
    deps_hash: str | None = None
    request_id: str | None = None
    run_public_key: str | None = None
    upstream_job_outputs: dict[str, dict[str, Any]] | None = None
    upstream_job_statuses: dict[str, JobState] | None = None
    source_auth: GitAuth | None = None
    workflow_auth: GitAuth | None = None
    npm_registries: list[NpmRegistry] | None = None
    package_indexes: list[PackageIndex] | None = None
    install_env_secrets: dict[str, str] | None = None
    org_id: str | None = None
    repo_id: str | None = None
    cache_ref_scope: CacheRefScope | None = None

    def __attrs_post_init__(self) -> None:
        auth = self.source_auth
        if (
            self.token is not None
            and auth is not None
            and (auth.kind != GitAuthKind.BASIC or auth.secret != self.token)
        ):
            raise InvalidMessage("sourceAuth must be basic auth carrying the dispatch token")


@attrs.frozen(kw_only=True)
class JobCancel(Message):
    TYPE: ClassVar[str] = "job.cancel"
    message_id: str
    run_id: str
    job_id: str
    reason: str
    force: bool | None = None


@attrs.frozen(kw_only=True)
class RegisterAck(Message):
    TYPE: ClassVar[str] = "register.ack"
    agent_id: str
    labels: list[str]
    scaler_managed: bool = False
    pending_dispatch: bool | None = None


@attrs.frozen(kw_only=True)
class JobConcurrencyAck(Message):
    """Answer to ``job.concurrency.report``; also sent unsolicited (``proceed`` + ids) when a slot frees."""

    TYPE: ClassVar[str] = "job.concurrency.ack"
    request_id: str
    action: ConcurrencyAction
    reason: str | None = None
    run_id: str | None = None
    job_id: str | None = None


@attrs.frozen(kw_only=True)
class CacheUploadResponse(Message):
    TYPE: ClassVar[str] = "cache.upload.response"
    request_id: str
    upload_url: str


@attrs.frozen(kw_only=True)
class CacheUserRestoreResponse(Message):
    TYPE: ClassVar[str] = "cache.user.restore.response"
    request_id: str
    hit: bool
    matched_key: str | None = None
    download_url: str | None = None
    tar_hash: str | None = None


@attrs.frozen(kw_only=True)
class CacheUserSaveResponse(Message):
    TYPE: ClassVar[str] = "cache.user.save.response"
    request_id: str
    upload_url: str | None = None
    skip: bool


@attrs.frozen(kw_only=True)
class ProvenanceUploadResponse(Message):
    """``upload_url`` is ``""`` when the orchestrator has no storage: the agent treats it as an error."""

    TYPE: ClassVar[str] = "provenance.upload.response"
    request_id: str
    upload_url: str


@attrs.frozen(kw_only=True)
class EventEmitResponse(Message):
    TYPE: ClassVar[str] = "event.emit.response"
    request_id: str
    delivery_id: str | None = None
    error: str | None = None


@attrs.frozen(kw_only=True)
class AgentApiResponse(Message):
    TYPE: ClassVar[str] = "agent.api.response"
    request_id: str
    result: Any = None
    error: str | None = None


@attrs.frozen(kw_only=True)
class FleetLogsRequest(Message):
    TYPE: ClassVar[str] = "fleet.logs.request"
    request_id: str
    log_window_hours: float
    max_bytes: float


@attrs.frozen(kw_only=True)
class StepApprovalResolved(Message):
    """``request_id`` is the ``messageId`` of the agent's ``step.approval-request``."""

    TYPE: ClassVar[str] = "step.approval-resolved"
    request_id: str
    run_id: str
    job_id: str
    step_index: int = attrs.field(validator=NON_NEGATIVE)
    outcome: ApprovalOutcome
    reason: str | None = None


# --- agent -> orchestrator -----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AgentRegister(Message):
    """Registration; ``max_concurrency`` absent means 1. ``python_version`` replaces the
    reference's ``nodeVersion`` (kici agents run on CPython)."""

    TYPE: ClassVar[str] = "agent.register"
    message_id: str
    agent_id: str
    labels: list[str]
    max_concurrency: int | None = attrs.field(default=None, validator=OPT_POSITIVE)
    platform: str | None = None
    arch: str | None = None
    version: str | None = None
    in_flight_jobs: list[InFlightJob] | None = None
    hostname: str | None = None
    os_release: str | None = None
    os_version: str | None = None
    total_memory_mb: float | None = None
    cpu_count: float | None = None
    python_version: str | None = None
    running_as_user: str | None = None
    running_as_uid: int | None = None
    properties: dict[str, PropertyValue] | None = None

    @property
    def concurrency(self) -> int:
        return 1 if self.max_concurrency is None else self.max_concurrency


@attrs.frozen(kw_only=True)
class AgentStatus(Message):
    TYPE: ClassVar[str] = "agent.status"
    message_id: str
    agent_id: str
    active_jobs: float
    memory_used_mb: float | None = None
    memory_available_mb: float | None = None
    uptime_seconds: float | None = None


@attrs.frozen(kw_only=True)
class ConfigAck(Message):
    TYPE: ClassVar[str] = "config.ack"
    message_id: str
    agent_id: str


@attrs.frozen(kw_only=True)
class JobAck(Message):
    TYPE: ClassVar[str] = "job.ack"
    message_id: str
    run_id: str
    job_id: str
    timestamp: int


@attrs.frozen(kw_only=True)
class JobReject(Message):
    TYPE: ClassVar[str] = "job.reject"
    message_id: str
    run_id: str
    job_id: str
    reason: RejectReason
    timestamp: int


@attrs.frozen(kw_only=True)
class JobStatus(Message):
    TYPE: ClassVar[str] = "job.status"
    message_id: str
    run_id: str
    job_id: str
    state: JobState
    timestamp: int
    data: dict[str, Any] | None = None
    dropped_jobs: list[str] | None = None
    secret_outputs: dict[str, SecretOutput] | None = None


@attrs.frozen(kw_only=True)
class StepStatus(Message):
    """Step transition. The hook kind travels under the snake_case key ``step_type`` (as the
    reference wrote it). ``log_bytes_streamed`` is meant for terminal states; receivers
    ignore it otherwise rather than dropping the status."""

    TYPE: ClassVar[str] = "step.status"
    message_id: str
    run_id: str
    job_id: str
    step_index: int = attrs.field(validator=NON_NEGATIVE)
    step_name: str
    state: StepState
    timestamp: int
    data: dict[str, Any] | None = None
    step_type: StepType | None = attrs.field(default=None, metadata=wire("step_type"))
    secrets_accessed: list[str] | None = None
    concurrency_kind: ConcurrencyKind | None = None
    group_id: str | None = None
    log_bytes_streamed: int | None = attrs.field(default=None, validator=OPT_NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class JobHeartbeat(Message):
    """Per running job, on the buffered path; it has no ``messageId``."""

    TYPE: ClassVar[str] = "job.heartbeat"
    run_id: str
    job_id: str
    timestamp: int


@attrs.frozen(kw_only=True)
class AgentLog(Message):
    """The agent's own operational lines (gap markers included), not step output."""

    TYPE: ClassVar[str] = "agent.log"
    message_id: str
    agent_id: str
    lines: list[str]
    timestamp: int


@attrs.frozen(kw_only=True)
class AgentMetrics(Message):
    TYPE: ClassVar[str] = "agent.metrics"
    message_id: str
    agent_id: str
    metrics: list[MetricEntry]
    timestamp: int


@attrs.frozen(kw_only=True)
class JobConcurrencyReport(Message):
    TYPE: ClassVar[str] = "job.concurrency.report"
    message_id: str
    run_id: str
    job_id: str
    group: str


@attrs.frozen(kw_only=True)
class CacheUploadRequest(Message):
    TYPE: ClassVar[str] = "cache.upload.request"
    message_id: str
    job_id: str
    cache_type: CacheType
    content_hash: str | None = None
    lockfile_hash: str | None = None
    platform: str
    arch: str


@attrs.frozen(kw_only=True)
class CacheUploadComplete(Message):
    TYPE: ClassVar[str] = "cache.upload.complete"
    message_id: str
    job_id: str
    cache_type: CacheType
    content_hash: str | None = None
    lockfile_hash: str | None = None
    platform: str
    arch: str
    deps_hash: str | None = None


@attrs.frozen(kw_only=True)
class CacheUserRestoreRequest(Message):
    TYPE: ClassVar[str] = "cache.user.restore.request"
    message_id: str
    job_id: str
    key: str
    restore_keys: list[str] | None = None


@attrs.frozen(kw_only=True)
class CacheUserSaveRequest(Message):
    TYPE: ClassVar[str] = "cache.user.save.request"
    message_id: str
    job_id: str
    key: str


@attrs.frozen(kw_only=True)
class CacheUserSaveComplete(Message):
    """Fire-and-forget."""

    TYPE: ClassVar[str] = "cache.user.save.complete"
    message_id: str
    job_id: str
    key: str
    tar_hash: str
    size_bytes: int = attrs.field(validator=NON_NEGATIVE)


def _lower_hex(_instance: object, attribute: "attrs.Attribute[str]", value: str) -> None:
    if _LOWER_HEX.fullmatch(value) is None:
        raise InvalidMessage(f"{attribute.name} must be lowercase hex")


@attrs.frozen(kw_only=True)
class ProvenanceUploadRequest(Message):
    TYPE: ClassVar[str] = "provenance.upload.request"
    message_id: str
    job_id: str
    subject_digest: str = attrs.field(validator=_lower_hex)


@attrs.frozen(kw_only=True)
class ProvenanceUploadComplete(Message):
    """Fire-and-forget."""

    TYPE: ClassVar[str] = "provenance.upload.complete"
    message_id: str
    job_id: str
    subject_name: str
    subject_digest: str
    media_type: str


@attrs.frozen(kw_only=True)
class EventEmit(Message):
    TYPE: ClassVar[str] = "event.emit"
    job_id: str
    request_id: str
    event_name: str
    payload: dict[str, Any]
    target: EventTarget | None = None


@attrs.frozen(kw_only=True)
class AgentApiRequest(Message):
    """``method`` is dot-namespaced (``infrastructure.list``); ``params`` is always written."""

    TYPE: ClassVar[str] = "agent.api.request"
    request_id: str
    method: str
    params: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class FleetBundleChunk(Message):
    TYPE: ClassVar[str] = "fleet.bundle.chunk"
    request_id: str
    seq: int = attrs.field(validator=NON_NEGATIVE)
    is_last: bool
    data_b64: str


@attrs.frozen(kw_only=True)
class FleetBundleError(Message):
    TYPE: ClassVar[str] = "fleet.bundle.error"
    request_id: str
    message: str


@attrs.frozen(kw_only=True)
class StepApprovalRequest(Message):
    TYPE: ClassVar[str] = "step.approval-request"
    message_id: str
    run_id: str
    job_id: str
    step_index: int = attrs.field(validator=NON_NEGATIVE)
    step_name: str
    clauses: list[ApproverClause]
    reason: str
    timeout_seconds: int | None = attrs.field(default=None, validator=OPT_POSITIVE)
    payload: ApprovalPayload | None = None


OrchToAgent = (
    JobDispatch
    | JobCancel
    | RegisterAck
    | JobConcurrencyAck
    | CacheUploadResponse
    | CacheUserRestoreResponse
    | CacheUserSaveResponse
    | ProvenanceUploadResponse
    | EventEmitResponse
    | AgentApiResponse
    | FleetLogsRequest
    | StepApprovalResolved
    | AuthSuccess
    | AuthFailure
    | RateLimitWarning
    | ErrorMessage
    | Ack
    | Nack
)

AgentToOrch = (
    AgentAuthRequest
    | Heartbeat
    | Ack
    | Nack
    | AgentRegister
    | AgentStatus
    | ConfigAck
    | JobAck
    | JobReject
    | JobStatus
    | StepStatus
    | LogChunk
    | JobHeartbeat
    | AgentLog
    | AgentMetrics
    | JobConcurrencyReport
    | CacheUploadRequest
    | CacheUploadComplete
    | CacheUserRestoreRequest
    | CacheUserSaveRequest
    | CacheUserSaveComplete
    | ProvenanceUploadRequest
    | ProvenanceUploadComplete
    | EventEmit
    | AgentApiRequest
    | FleetBundleChunk
    | FleetBundleError
    | StepApprovalRequest
    | RunEvent
    | JobContext
)

ORCH_TO_AGENT: Final[tuple[type[Message], ...]] = get_args(OrchToAgent)
AGENT_TO_ORCH: Final[tuple[type[Message], ...]] = get_args(AgentToOrch)
