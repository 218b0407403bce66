"""Orchestrator <-> orchestrator messages (20a §6.5): one bidirectional union, ``PeerMsg``.

The handshake pair (``peer.hello``/``peer.hello.response``) travels in clear; everything
after it is a base64 AES-256-GCM frame whose plaintext decodes with this same union (the
crypto lives in the adapters). ``join.request``/``join.response`` are also relayed by the
Platform, so `platform` reuses them.

Two choices where the sources disagree or are silent, documented here:
- ``peer.cache.upload.request.cacheType``: 20a says ``bundle|deps``, 50-cluster-ops.md says
  ``source|deps``; kici accepts all three values so either sender is understood.
- ``peer.heartbeat`` reports the orchestrator's runtime as ``pythonVersion`` (the reference
  sent ``nodeVersion``), like ``agent.register``.
"""

from enum import StrEnum
from typing import Any, ClassVar, Final, get_args

import attrs

from kici.domain.protocol.base import (
    NON_NEGATIVE,
    NULLABLE,
    POSITIVE,
    InvalidMessage,
    Message,
    WireModel,
    wire,
)
from kici.domain.protocol.capabilities import OrchRole, PeerCapabilities
from kici.domain.protocol.common import JobState, StepState


class ProgressKind(StrEnum):
    JOB = "job"
    STEP = "step"


class LogStream(StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


class PeerCacheType(StrEnum):
    BUNDLE = "bundle"
    SOURCE = "source"
    DEPS = "deps"


class ScalerEventType(StrEnum):
    PROVISIONING = "scaler.provisioning"
    NETWORK = "scaler.network"
    READY = "scaler.ready"
    FAILED = "scaler.failed"
    AGENT_CONNECTING = "agent.connecting"


@attrs.frozen(kw_only=True)
class PeerAgentSummary(WireModel):
    agent_id: str
    labels: list[str]
    active_jobs: float
    max_concurrency: float
    platform: str
    arch: str


@attrs.frozen(kw_only=True)
class ScalerCapacitySummary(WireModel):
    name: str | None = None
    scaler_type: str | None = attrs.field(default=None, metadata=wire("type"))
    label_sets: list[list[str]]
    max_agents: float
    active_count: float


@attrs.frozen(kw_only=True)
class PeerLogLine(WireModel):
    text: str
    timestamp: int
    stream: LogStream | None = None


@attrs.frozen(kw_only=True)
class PeerHello(Message):
    """Plaintext, sent by the accepting side: its X25519 key (b64 DER SPKI) and the HKDF salt."""

    TYPE: ClassVar[str] = "peer.hello"
    ephemeral_public_key: str
    nonce: str


@attrs.frozen(kw_only=True)
class PeerHelloResponse(Message):
    TYPE: ClassVar[str] = "peer.hello.response"
    ephemeral_public_key: str


@attrs.frozen(kw_only=True)
class PeerAuthRequest(Message):
    """Exactly one of ``token`` (first join) or ``proof`` (HMAC over the session credential)."""

    TYPE: ClassVar[str] = "peer.auth.request"
    instance_id: str
    protocol_version: int = attrs.field(validator=POSITIVE)
    token: str | None = None
    proof: str | None = None
    software_version: str | None = None
    role: OrchRole | None = None

    def __attrs_post_init__(self) -> None:
        if (self.token is None) == (self.proof is None):
            raise InvalidMessage("peer.auth.request carries exactly one of token or proof")


@attrs.frozen(kw_only=True)
class PeerAuthResponse(Message):
    TYPE: ClassVar[str] = "peer.auth.response"
    accepted: bool
    instance_id: str | None = None
    reason: str | None = None
    session_credential: str | None = None
    role: OrchRole | None = None
    software_version: str | None = None
    agents: list[PeerAgentSummary] | None = None
    scaler_capacity: list[ScalerCapacitySummary] | None = None
    capabilities: PeerCapabilities | None = None


@attrs.frozen(kw_only=True)
class PeerHeartbeat(Message):
    TYPE: ClassVar[str] = "peer.heartbeat"
    instance_id: str
    term: float
    leader_id: str | None = attrs.field(default=None, metadata=NULLABLE)
    draining: bool
    agents: list[PeerAgentSummary]
    capabilities: PeerCapabilities
    timestamp: int
    scaler_capacity: list[ScalerCapacitySummary] | None = None
    config_version: float | None = None
    registry_version: float | None = None
    hostname: str | None = None
    os_release: str | None = None
    total_memory_mb: float | None = None
    memory_used_mb: float | None = None
    memory_available_mb: float | None = None
    cpu_count: float | None = None
    uptime_seconds: float | None = None
    python_version: str | None = None
    running_as_user: str | None = attrs.field(default=None, metadata=NULLABLE)
    running_as_uid: int | None = attrs.field(default=None, metadata=NULLABLE)
    version: str | None = None


@attrs.frozen(kw_only=True)
class RaftVoteRequest(Message):
    TYPE: ClassVar[str] = "raft.vote.request"
    term: float
    candidate_id: str
    last_log_index: float
    last_log_term: float


@attrs.frozen(kw_only=True)
class RaftVoteResponse(Message):
    TYPE: ClassVar[str] = "raft.vote.response"
    term: float
    vote_granted: bool
    voter_id: str


@attrs.frozen(kw_only=True)
class RaftAppendEntries(Message):
    TYPE: ClassVar[str] = "raft.append.entries"
    term: float
    leader_id: str


@attrs.frozen(kw_only=True)
class JobReroute(Message):
    """A job handed to a peer. The receiver refuses when ``len(tried_connections) >= max_hops``;
    secrets travel only encrypted with the session key."""

    TYPE: ClassVar[str] = "job.reroute"
    message_id: str
    job_id: str
    run_id: str
    delivery_id: str
    routing_key: str
    event: str
    action: str | None = attrs.field(default=None, metadata=NULLABLE)
    payload: dict[str, Any]
    job_name: str
    workflow_name: str
    runs_on_labels: list[list[str]]
    tried_connections: list[str]
    max_hops: float
    coordinator_id: str
    exclude_labels: list[str] | None = None
    job_config: dict[str, Any] | None = None
    repo_url: str | None = None
    ref: str | None = None
    sha: str | None = None
    provider: str | None = None
    provider_context: Any = None
    source_tar_url: str | None = None
    source_tar_hash: str | None = None
    deps_url: str | None = None
    deps_hash: str | None = None
    clone_token: str | None = None
    encrypted_secrets: str | None = None
    encrypted_namespaced_secrets: str | None = None
    request_id: str | None = None
    trace_id: str | None = None


@attrs.frozen(kw_only=True)
class JobRerouteAck(Message):
    TYPE: ClassVar[str] = "job.reroute.ack"
    message_id: str
    accepted: bool
    reason: str | None = None


def _state_matches_kind(instance: "JobProgress", _attribute: "attrs.Attribute[str]", value: str) -> None:
    vocabulary: type[StrEnum] = JobState if instance.kind == ProgressKind.JOB else StepState
    if value not in vocabulary.__members__.values():
        raise InvalidMessage(f"state {value[:40]!r} is not a {vocabulary.__name__}")


@attrs.frozen(kw_only=True)
class JobProgress(Message):
    """Worker -> coordinator progress; ``state`` is a JobState for ``kind=job``, else a StepState."""

    TYPE: ClassVar[str] = "job.progress"
    kind: ProgressKind
    run_id: str
    job_id: str
    job_name: str
    step_index: int = attrs.field(validator=NON_NEGATIVE)
    step_name: str
    state: str = attrs.field(validator=_state_matches_kind)
    timestamp: int
    data: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class JobProgressAck(Message):
    """The coordinator applied a terminal job progress; the worker prunes its outbox record."""

    TYPE: ClassVar[str] = "job.progress.ack"
    run_id: str
    job_id: str
    state: JobState


@attrs.frozen(kw_only=True)
class PeerJobCancel(Message):
    """``job_id`` absent cancels the whole run."""

    TYPE: ClassVar[str] = "peer.job.cancel"
    run_id: str
    job_id: str | None = None
    reason: str
    force: bool | None = None


@attrs.frozen(kw_only=True)
class PeerLeaving(Message):
    TYPE: ClassVar[str] = "peer.leaving"
    instance_id: str
    term: float


@attrs.frozen(kw_only=True)
class PeerAgentTokenRevoke(Message):
    TYPE: ClassVar[str] = "peer.agent-token.revoke"
    token_id: str
    sender_instance_id: str


@attrs.frozen(kw_only=True)
class PeerLogChunk(Message):
    TYPE: ClassVar[str] = "peer.log.chunk"
    run_id: str
    job_id: str
    step_index: int = attrs.field(validator=NON_NEGATIVE)
    lines: list[PeerLogLine]


@attrs.frozen(kw_only=True)
class PeerCacheUploadRequest(Message):
    TYPE: ClassVar[str] = "peer.cache.upload.request"
    message_id: str
    run_id: str
    job_id: str
    cache_type: PeerCacheType
    hash: str
    size_bytes: float


@attrs.frozen(kw_only=True)
class PeerCacheUploadResponse(Message):
    """``upload_url == ""`` signals an error."""

    TYPE: ClassVar[str] = "peer.cache.upload.response"
    message_id: str
    run_id: str
    job_id: str
    upload_url: str


@attrs.frozen(kw_only=True)
class PeerConfigReload(Message):
    TYPE: ClassVar[str] = "peer.config.reload"
    message_id: str
    drain: bool | None = None


@attrs.frozen(kw_only=True)
class PeerConfigReloadResponse(Message):
    """``errors`` are reload messages; ``restart_required`` names fields that need a restart."""

    TYPE: ClassVar[str] = "peer.config.reload.response"
    message_id: str
    success: bool
    version: float | None = None
    errors: list[str] | None = None
    restart_required: list[str] | None = None
    fields_changed: list[str] | None = None


@attrs.frozen(kw_only=True)
class PeerLogsCollectRequest(Message):
    TYPE: ClassVar[str] = "peer.logs.collect.request"
    message_id: str
    log_window_hours: float
    include_coordinator_mesh: bool
    selection: dict[str, Any]


@attrs.frozen(kw_only=True)
class PeerLogsCollectChunk(Message):
    TYPE: ClassVar[str] = "peer.logs.collect.chunk"
    message_id: str
    seq: int = attrs.field(validator=NON_NEGATIVE)
    is_last: bool
    data_b64: str


@attrs.frozen(kw_only=True)
class PeerLogsCollectError(Message):
    TYPE: ClassVar[str] = "peer.logs.collect.error"
    message_id: str
    message: str


@attrs.frozen(kw_only=True)
class ScalerEvent(Message):
    TYPE: ClassVar[str] = "scaler.event"
    run_id: str
    job_id: str
    agent_id: str
    event_type: ScalerEventType
    detail: str
    timestamp_ms: int


@attrs.frozen(kw_only=True)
class JoinRequest(Message):
    """``message_id`` is injected by the Platform relay to route the answer back to the joiner."""

    TYPE: ClassVar[str] = "join.request"
    message_id: str | None = None
    token: str


@attrs.frozen(kw_only=True)
class JoinResponse(Message):
    TYPE: ClassVar[str] = "join.response"
    message_id: str | None = None
    success: bool
    encrypted_bundle: str | None = None
    error: str | None = None


PeerMsg = (
    PeerHello
    | PeerHelloResponse
    | PeerAuthRequest
    | PeerAuthResponse
    | PeerHeartbeat
    | RaftVoteRequest
    | RaftVoteResponse
    | RaftAppendEntries
    | JobReroute
    | JobRerouteAck
    | JobProgress
    | JobProgressAck
    | PeerJobCancel
    | PeerLeaving
    | PeerAgentTokenRevoke
    | PeerLogChunk
    | PeerCacheUploadRequest
    | PeerCacheUploadResponse
    | PeerConfigReload
    | PeerConfigReloadResponse
    | PeerLogsCollectRequest
    | PeerLogsCollectChunk
    | PeerLogsCollectError
    | ScalerEvent
    | JoinRequest
    | JoinResponse
)

PEER: Final[tuple[type[Message], ...]] = get_args(PeerMsg)
