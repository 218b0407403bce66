"""Storage ports of the orchestrator: runs, jobs and the needs gate, the dispatch queue, webhook
delivery bookkeeping, agents and their tokens, step logs, and workflow registrations.

The ports are ``typing.Protocol``s over attrs records; the PostgreSQL adapter
(``kici.adapters.postgres``) implements them and the contract suites in
``tests/contract/test_pg_*.py`` pin the behaviour every implementation must show.

Rules every implementation keeps:

* Every mutation is one atomic unit of work. A terminal job status, the needs
  gate it triggers (skip cascade, newly ready jobs, fan-out waves) and the
  dispatch-queue bookkeeping commit together, so a crash never leaves a job
  terminal with its dependents undecided.
* Job statuses move only along the state machine (``kici.domain.execution.machine``)
  or, for the forced statuses, under an optimistic guard on the expected
  statuses; a terminal row never changes again. A guard that matches no row is
  reported (``applied=False``), never raised: late and duplicate inputs are normal.
* A job is handed to the dispatcher exactly once: readiness flips
  ``needs_satisfied`` from false to true under a guard, and a queue row moves
  ``pending -> dispatched`` for one dequeuer only.
* Callers pass ``now`` (timezone-aware); stores never read a clock, so the
  domain and the tests decide time.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import attrs

from kici.domain.execution.needs import JobNeedsSpec, RunOn
from kici.domain.execution.run_status import RunEvent, RunFinalization
from kici.domain.execution.states import (
    TERMINAL_JOB_STATES,
    CheckMode,
    CheckStepOutcome,
    Event,
    ExecutionState,
    InitFailure,
    JobStatus,
    RunStatus,
    StepConcurrencyKind,
    StepStatus,
    is_step_type,
)
from kici.domain.lockfile.frozen import FrozenDict, JsonValue
from kici.domain.lockfile.model import LockWorkflow
from kici.domain.registrations import RegistrationSet

QUEUE_EXPIRED_MESSAGE = "Queue timeout expired (job was never dispatched to an agent)"
DEFAULT_DEDUP_TTL = timedelta(hours=24)


class StoreError(Exception):
    """Base of the errors a store raises on purpose."""


class StoreUnavailableError(StoreError):
    """The database could not be reached, even after the store's own retries; nothing was applied."""


class CommitUnknownError(StoreUnavailableError):
    """The connection broke while committing: the unit of work may or may not have been applied.

    Only idempotent work may be retried blindly; everything else must re-read state first.
    """


class RunNotFoundError(StoreError, LookupError):
    def __init__(self, run_id: uuid.UUID) -> None:
        super().__init__(f"run {run_id} does not exist")
        self.run_id = run_id


class JobNotFoundError(StoreError, LookupError):
    def __init__(self, ref: object) -> None:
        super().__init__(f"job {ref} does not exist")
        self.ref = ref


class DuplicateRunError(StoreError):
    def __init__(self, run_id: uuid.UUID) -> None:
        super().__init__(f"run {run_id} already exists")
        self.run_id = run_id


class InvalidStoreInputError(StoreError, ValueError):
    """A command the store refuses before touching the database (naive time, bad status set)."""


def _aware(_: object, attribute: attrs.Attribute[datetime], value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidStoreInputError(f"{attribute.name} must be timezone-aware, got {value!r}")


def _aware_or_none(_: object, attribute: attrs.Attribute[datetime | None], value: datetime | None) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise InvalidStoreInputError(f"{attribute.name} must be timezone-aware, got {value!r}")


def require_aware(value: datetime, what: str = "now") -> datetime:
    """Reject naive datetimes: a ``timestamptz`` column would read them in the server's time zone."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidStoreInputError(f"{what} must be timezone-aware, got {value!r}")
    return value


def _positive_or_none(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and value <= 0:
        raise InvalidStoreInputError(f"{attribute.name} must be > 0, got {value}")


def _str_tuple(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(values)


# -- runs and jobs


@attrs.frozen(kw_only=True)
class NewRun:
    """A run as the pipeline creates it (status ``pending``)."""

    run_id: uuid.UUID
    workflow_name: str
    created_at: datetime = attrs.field(validator=_aware)
    routing_key: str | None = None
    org_id: str | None = None
    repo_identifier: str | None = None
    ref: str | None = None
    sha: str | None = None
    event: str | None = None
    delivery_id: str | None = None
    request_id: str | None = None
    check_mode: CheckMode = CheckMode.APPLY
    is_test_run: bool = False
    fixture_id: str | None = None
    workflow_timeout_ms: int | None = attrs.field(default=None, validator=_positive_or_none)
    init_failure: InitFailure | None = None
    parent_run_id: uuid.UUID | None = None
    original_run_id: uuid.UUID | None = None
    triggered_by: str | None = None


@attrs.frozen(kw_only=True)
class NewJob:
    """One lock job of a new run.

    ``spec`` is what the needs gate sees (a fan-out lists its children, each of
    which becomes a row). ``config`` and ``routing`` are opaque to the store:
    the dispatch configuration and the agent-targeting data (``runsOn`` matchers)
    the dispatcher's chooser reads back. ``matrix_values`` is keyed by child name.
    """

    spec: JobNeedsSpec
    config: JsonValue = None
    routing: JsonValue = None
    matrix_values: FrozenDict[str, JsonValue] = attrs.field(factory=FrozenDict)


@attrs.frozen
class GateJob:
    job_id: uuid.UUID
    name: str


@attrs.frozen
class GateSkip:
    job_id: uuid.UUID
    name: str
    reason: str


@attrs.frozen
class GateFailure:
    job_id: uuid.UUID
    name: str
    reason: str


@attrs.frozen(kw_only=True)
class GateOutcome:
    """What one gate evaluation changed, in decision order.

    ``dispatched`` jobs are ready for the dispatcher (their ``needs_satisfied``
    flipped in this unit of work, or a fan-out wave released them); ``ignored``
    means the terminal status given was dropped because the job already had one.
    """

    run_id: uuid.UUID
    dispatched: tuple[GateJob, ...] = ()
    skipped: tuple[GateSkip, ...] = ()
    failed: tuple[GateFailure, ...] = ()
    ignored: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.dispatched or self.skipped or self.failed)


@attrs.frozen(kw_only=True)
class RunCancellation:
    """A run cancel: ``run_status`` is the run's status afterwards (None if the cancel did not apply to it);
    ``cancelling`` lists running jobs now running their cancel hooks (graceful cancel only)."""

    run_status: RunStatus | None
    cancelled: tuple[GateJob, ...]
    cancelling: tuple[GateJob, ...]
    gate: GateOutcome


@attrs.frozen(kw_only=True)
class CreatedRun:
    run_id: uuid.UUID
    job_ids: FrozenDict[str, uuid.UUID]
    gate: GateOutcome


@attrs.frozen(kw_only=True)
class RunRecord:
    run_id: uuid.UUID
    workflow_name: str
    status: RunStatus
    check_mode: CheckMode
    drift_detected: bool
    is_test_run: bool
    created_at: datetime
    updated_at: datetime
    routing_key: str | None = None
    org_id: str | None = None
    repo_identifier: str | None = None
    ref: str | None = None
    sha: str | None = None
    event: str | None = None
    delivery_id: str | None = None
    request_id: str | None = None
    fixture_id: str | None = None
    workflow_timeout_ms: int | None = None
    init_failure: InitFailure | None = None
    failure_reason: str | None = None
    cancelled_by: str | None = None
    log_bytes: int = 0
    parent_run_id: uuid.UUID | None = None
    original_run_id: uuid.UUID | None = None
    triggered_by: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = None


@attrs.frozen(kw_only=True)
class JobRecord:
    job_id: uuid.UUID
    run_id: uuid.UUID
    name: str
    ordinal: int
    status: JobStatus
    needs_satisfied: bool
    wave_gated: bool
    created_at: datetime
    updated_at: datetime
    base_job_name: str | None = None
    fanout_index: int | None = None
    group_name: str | None = None
    pending_groups: tuple[str, ...] = ()
    wave_max_parallel: int | None = None
    wave_fail_fast: bool | None = None
    ready_at: datetime | None = None
    config: JsonValue = None
    routing: JsonValue = None
    matrix_values: JsonValue = None
    outputs: JsonValue = None
    agent_id: str | None = None
    error_message: str | None = None
    log_bytes: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    last_heartbeat_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATES


@attrs.frozen
class EdgeRecord:
    job_name: str
    upstream_name: str
    run_on: RunOn


@attrs.frozen(kw_only=True)
class JobEventCommand:
    """Apply ``event`` to a job the caller believes to be in ``expected``.

    ``agent_id`` is recorded on START; ``error_message`` and ``outputs`` on a
    terminal target; ``queue_expires_at`` and ``request_id`` on the dispatch-queue
    row a transition into ``queued`` creates.
    """

    job_id: uuid.UUID
    expected: ExecutionState
    event: Event
    now: datetime = attrs.field(validator=_aware)
    agent_id: str | None = None
    error_message: str | None = None
    outputs: JsonValue = None
    queue_expires_at: datetime | None = attrs.field(default=None, validator=_aware_or_none)
    request_id: str | None = None


def _terminal_status(_: object, __: attrs.Attribute[JobStatus], value: JobStatus) -> None:
    if value not in TERMINAL_JOB_STATES:
        raise InvalidStoreInputError(f"a forced status must be terminal, got {value}")


def _open_statuses(
    _: object, __: attrs.Attribute[tuple[JobStatus, ...]], value: tuple[JobStatus, ...]
) -> None:
    if not value:
        raise InvalidStoreInputError("a forced status needs at least one expected status")
    closed = [s for s in value if s in TERMINAL_JOB_STATES]
    if closed:
        raise InvalidStoreInputError(f"terminal rows are immutable; expected may not list {closed}")


def _status_tuple(values: Sequence[JobStatus]) -> tuple[JobStatus, ...]:
    return tuple(sorted(JobStatus(v) for v in values))


@attrs.frozen(kw_only=True)
class ForceStatusCommand:
    """Write a terminal status with ``WHERE status IN (expected)`` (stale detector, queue expiry, drift)."""

    job_id: uuid.UUID
    status: JobStatus = attrs.field(converter=JobStatus, validator=_terminal_status)
    expected: tuple[JobStatus, ...] = attrs.field(converter=_status_tuple, validator=_open_statuses)
    now: datetime = attrs.field(validator=_aware)
    error_message: str | None = None


@attrs.frozen(kw_only=True)
class JobTransition:
    """``status`` is the row's status after the call: the new one if applied, else the one that stopped it."""

    applied: bool
    status: JobStatus
    gate: GateOutcome | None = None


@attrs.frozen(kw_only=True)
class StepRecord:
    """One ``execution_steps`` row, keyed ``(run_id, job_id, step_index)``."""

    run_id: uuid.UUID
    job_id: uuid.UUID
    step_index: int
    step_name: str
    status: StepStatus
    updated_at: datetime = attrs.field(validator=_aware)
    step_type: str = attrs.field(default="step")
    started_at: datetime | None = attrs.field(default=None, validator=_aware_or_none)
    completed_at: datetime | None = attrs.field(default=None, validator=_aware_or_none)
    duration_ms: int | None = None
    exit_code: int | None = None
    error_message: str | None = None
    log_path: str | None = None
    secrets_accessed: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    check_outcome: CheckStepOutcome | None = None
    drift_summary: str | None = None
    drift: JsonValue = None
    concurrency_kind: StepConcurrencyKind | None = None
    group_id: str | None = None
    log_bytes: int | None = None

    @step_type.validator
    def _check_step_type(self, _: attrs.Attribute[str], value: str) -> None:
        if not is_step_type(value):
            raise InvalidStoreInputError(f"{value!r} is not a step type")


class ExecutionStore(Protocol):
    """Runs, jobs, needs edges and steps; the needs gate runs inside every terminal write."""

    async def create_run(self, run: NewRun, jobs: Sequence[NewJob]) -> CreatedRun:
        """Create the run, its jobs and needs edges in one unit of work.

        Edges and the initial gate state are exactly those of
        ``kici.domain.execution.needs.insert_edges_for_run``: roots start satisfied
        (and are in ``gate.dispatched``), a cycle's jobs start failed.
        Raises :class:`DuplicateRunError` for a known run id.
        """
        ...

    async def get_run(self, run_id: uuid.UUID) -> RunRecord | None: ...

    async def get_job(self, job_id: uuid.UUID) -> JobRecord | None: ...

    async def list_open_runs(self) -> tuple[RunRecord, ...]:
        """Every run not yet terminal (pending, running, cancelling, held), oldest first.

        The boot sweep needs it: a node that died between a run's last terminal job write and the
        run's completion leaves an open run that no job event will ever visit again, and a run's
        workflow deadline lives only in memory, so it must be re-armed from the row.
        """
        ...

    async def list_jobs(self, run_id: uuid.UUID) -> tuple[JobRecord, ...]:
        """In creation order."""
        ...

    async def list_edges(self, run_id: uuid.UUID) -> tuple[EdgeRecord, ...]:
        """In insertion order."""
        ...

    async def apply_job_event(self, command: JobEventCommand) -> JobTransition:
        """A machine transition guarded by ``WHERE status = <expected as persisted>``.

        Raises ``InvalidTransitionError`` when the event is invalid in ``expected``
        and :class:`JobNotFoundError` for an unknown job. A transition into
        ``queued`` also enqueues the job for dispatch and moves a pending run to
        running; a terminal target runs the needs gate.
        """
        ...

    async def force_job_status(self, command: ForceStatusCommand) -> JobTransition:
        """Write a forced terminal status under the ``expected`` guard, then run the gate."""
        ...

    async def on_job_terminal(
        self, run_id: uuid.UUID, job_name: str, status: JobStatus, now: datetime
    ) -> GateOutcome:
        """Record a terminal status already decided elsewhere (by an in-memory tracker, a peer) and run
        the gate: ``kici.domain.execution.needs.apply_terminal`` in SQL.

        The status is written only if the row is still open (first status wins);
        otherwise nothing changes and the outcome is ``ignored``.
        """
        ...

    async def recompute_needs_satisfied(
        self, now: datetime, run_id: uuid.UUID | None = None
    ) -> tuple[GateOutcome, ...]:
        """Restart path: decide every pending, unsatisfied job of every open run (or of ``run_id``)."""
        ...

    async def list_ready_jobs(self, run_id: uuid.UUID | None = None) -> tuple[JobRecord, ...]:
        """Satisfied, ungated jobs still ``pending`` in open runs: ready but not yet enqueued."""
        ...

    async def fail_stuck_jobs(self, run_id: uuid.UUID, now: datetime) -> GateOutcome:
        """L3 (EXE-17) before declaring a run complete: fail the open jobs the gate can no longer move
        (``kici.domain.execution.needs.fail_stuck_jobs``); the caller logs each as an error."""
        ...

    async def cancel_run(
        self,
        run_id: uuid.UUID,
        now: datetime,
        *,
        graceful: bool,
        reason: str | None = None,
        cancelled_by: str | None = None,
    ) -> RunCancellation:
        """Cancel every open job of the run and the run itself in one unit of work (EXE-14).

        Each job gets the event the run-cancel input maps to in its status
        (``decide_job_input``); all the jobs cancelled are recorded before the
        gate runs (``apply_terminals``), so a dependent that is itself being
        cancelled ends ``cancelled``, not ``skipped``.
        """
        ...

    async def record_heartbeat(self, job_id: uuid.UUID, now: datetime) -> bool:
        """Stamp ``last_heartbeat_at`` of a running or cancelling job; False for any other status."""
        ...

    async def apply_run_event(
        self,
        run_id: uuid.UUID,
        event: RunEvent,
        now: datetime,
        *,
        reason: str | None = None,
        cancelled_by: str | None = None,
    ) -> RunStatus | None:
        """Move the run along ``RUN_TRANSITIONS``; None when the event is invalid in its status."""
        ...

    async def complete_run_if_all_jobs_terminal(
        self, run_id: uuid.UUID, now: datetime
    ) -> RunFinalization | None:
        """Path B of run completion: decide from the job rows and write the outcome once."""
        ...

    async def upsert_step(self, step: StepRecord) -> bool:
        """Insert or update a step row; False when the stored row is already terminal (immutable)."""
        ...

    async def list_steps(self, job_id: uuid.UUID) -> tuple[StepRecord, ...]:
        """Ordered by step index."""
        ...


# -- dispatch queue


class QueueStatus(StrEnum):
    PENDING = "pending"
    DISPATCHED = "dispatched"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    RECOVERING = "recovering"


@attrs.frozen(kw_only=True)
class QueueCandidate:
    """A pending queue row as the dispatcher's chooser sees it."""

    queue_id: uuid.UUID
    job_id: uuid.UUID
    run_id: uuid.UUID
    job_name: str
    routing: JsonValue
    dispatch_attempts: int
    enqueued_at: datetime
    expires_at: datetime | None


@attrs.frozen(kw_only=True)
class QueueEntry:
    queue_id: uuid.UUID
    job_id: uuid.UUID
    run_id: uuid.UUID
    job_name: str
    status: QueueStatus
    routing: JsonValue
    dispatch_attempts: int
    enqueued_at: datetime
    agent_id: str | None = None
    dispatched_at: datetime | None = None
    expires_at: datetime | None = None
    error_message: str | None = None
    request_id: str | None = None
    ack_deadline: datetime | None = None
    ack_agent_id: str | None = None
    recovery_deadline: datetime | None = None
    recovery_agent_id: str | None = None


Chooser = Callable[[QueueCandidate], str | None]
"""Returns the agent to dispatch a candidate to, or None to leave it queued."""


@attrs.frozen(kw_only=True)
class RequeueResult:
    """``failed`` is set when the attempts were exhausted and the job was failed instead."""

    requeued: bool
    attempts: int
    failed: JobTransition | None = None


@attrs.frozen(kw_only=True)
class ExpiredJob:
    job_id: uuid.UUID
    run_id: uuid.UUID
    gate: GateOutcome


class DispatchQueue(Protocol):
    """The FIFO of queued jobs; rows are created by the ``ENQUEUE`` transition of the execution store."""

    async def dequeue(self, choose: Chooser, now: datetime, *, batch: int = 32) -> QueueEntry | None:
        """Take the oldest pending row ``choose`` accepts and mark it dispatched to the agent it names.

        ``dispatch_attempts`` counts dispatches, so the returned entry carries the
        attempt number. Rows locked by a concurrent dequeuer are skipped.
        """
        ...

    async def get_entry(self, job_id: uuid.UUID) -> QueueEntry | None: ...

    async def arm_ack_deadline(self, job_id: uuid.UUID, agent_id: str, deadline: datetime) -> bool: ...

    async def resolve_ack(self, job_id: uuid.UUID) -> bool: ...

    async def due_ack_deadlines(self, now: datetime) -> tuple[QueueEntry, ...]: ...

    async def requeue(self, job_id: uuid.UUID, now: datetime, failure_message: str) -> RequeueResult:
        """Put a dispatched job that never started back in the queue; after
        ``MAX_DISPATCH_ATTEMPTS`` dispatches fail it with ``failure_message`` instead."""
        ...

    async def expire(self, now: datetime) -> tuple[ExpiredJob, ...]:
        """Pending rows past ``expires_at`` become ``expired`` and their jobs ``timed_out_stale``."""
        ...

    async def start_recovery(
        self, job_id: uuid.UUID, agent_id: str, deadline: datetime, now: datetime
    ) -> bool: ...

    async def reclaim(self, job_id: uuid.UUID, agent_id: str, now: datetime) -> bool: ...

    async def in_flight(self) -> tuple[QueueEntry, ...]:
        """Dispatched and recovering rows, for rebuilding the recovery book at boot."""
        ...

    async def depth(self) -> int: ...


# -- webhooks


class EventLogStatus(StrEnum):
    RECEIVED = "received"
    PROCESSED = "processed"
    DUPLICATE = "duplicate"
    LOCKFILE_MISSING = "lockfile_missing"
    LOCKFILE_CORRUPT = "lockfile_corrupt"
    FAILED = "failed"


class EventSource(StrEnum):
    RELAY = "relay"
    DIRECT = "direct"


class PayloadOmittedReason(StrEnum):
    SIZE_EXCEEDED = "size_exceeded"
    STORAGE_FAILED = "storage_failed"


@attrs.frozen(kw_only=True)
class EventLogEntry:
    """One delivery-log row (HOOK-19); one per ``(org_id, delivery_id)``."""

    org_id: str
    delivery_id: str
    status: EventLogStatus
    received_at: datetime = attrs.field(validator=_aware)
    routing_key: str | None = None
    event: str | None = None
    action: str | None = None
    source: EventSource | None = None
    provider: str | None = None
    repo_identifier: str | None = None
    ref: str | None = None
    payload_key: str | None = None
    payload_omitted: bool = False
    payload_omitted_reason: PayloadOmittedReason | None = None
    payload_size_bytes: int | None = None
    payload_hash: str | None = None
    matched_count: int = 0
    run_id: uuid.UUID | None = None
    error_message: str | None = None


class WebhookStore(Protocol):
    async def mark_delivery(
        self,
        delivery_key: str,
        now: datetime,
        ttl: timedelta = DEFAULT_DEDUP_TTL,
        routing_key: str | None = None,
    ) -> bool:
        """True for the first sighting of ``delivery_key`` within ``ttl`` (one atomic insert)."""
        ...

    async def purge_deliveries(self, now: datetime) -> int: ...

    async def record_delivery(self, entry: EventLogEntry) -> bool:
        """Insert the row, or on a replay update only status, run_id, matched_count and error_message.

        True when the row was new. A replay's ``run_id`` and ``matched_count`` only
        replace the stored ones when given (non-null, non-zero).
        """
        ...

    async def get_delivery(self, org_id: str, delivery_id: str) -> EventLogEntry | None: ...


# -- agents


class AgentStatus(StrEnum):
    CONNECTED = "connected"
    DRAINING = "draining"
    DISCONNECTED = "disconnected"


class AgentType(StrEnum):
    EPHEMERAL = "ephemeral"
    STATIC = "static"


@attrs.frozen(kw_only=True)
class AgentRecord:
    agent_id: str
    status: AgentStatus
    registered_at: datetime = attrs.field(validator=_aware)
    last_seen_at: datetime = attrs.field(validator=_aware)
    labels: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    max_concurrency: int = 1
    active_jobs: int = 0
    token_id: uuid.UUID | None = None
    scaler_managed: bool = False
    platform: str | None = None
    arch: str | None = None
    version: str | None = None
    hostname: str | None = None
    properties: FrozenDict[str, JsonValue] = attrs.field(factory=FrozenDict)
    instance_id: str | None = None
    disconnected_at: datetime | None = None


@attrs.frozen(kw_only=True)
class NewAgentToken:
    """Only the SHA-256 hex of a token is stored; ``labels`` is the raw JSON text (None = unscoped)."""

    token_hash: str
    token_prefix: str
    agent_type: AgentType
    created_by: str
    created_at: datetime = attrs.field(validator=_aware)
    labels: str | None = None
    mandatory_labels: str | None = None
    expires_at: datetime | None = attrs.field(default=None, validator=_aware_or_none)


@attrs.frozen(kw_only=True)
class AgentTokenRecord:
    token_id: uuid.UUID
    token_hash: str
    token_prefix: str
    agent_type: AgentType
    created_by: str
    created_at: datetime
    labels: str | None = None
    mandatory_labels: str | None = None
    expires_at: datetime | None = None
    last_seen_at: datetime | None = None
    revoked_at: datetime | None = None
    consumed_at: datetime | None = None


class AgentStore(Protocol):
    async def upsert_agent(self, agent: AgentRecord) -> None: ...

    async def set_agent_status(
        self, agent_id: str, status: AgentStatus, now: datetime, *, active_jobs: int | None = None
    ) -> bool: ...

    async def get_agent(self, agent_id: str) -> AgentRecord | None: ...

    async def list_agents(self, status: AgentStatus | None = None) -> tuple[AgentRecord, ...]: ...

    async def create_agent_token(self, token: NewAgentToken) -> AgentTokenRecord: ...

    async def find_agent_token(self, token_hash: str, now: datetime) -> AgentTokenRecord | None:
        """The token if it is usable now: not revoked, not consumed, not expired."""
        ...

    async def consume_agent_token(self, token_id: uuid.UUID, now: datetime) -> bool:
        """Mark a bootstrap token used; True for the single caller that consumed it."""
        ...

    async def revoke_agent_token(self, token_id: uuid.UUID, now: datetime) -> bool: ...

    async def touch_agent_token(self, token_id: uuid.UUID, now: datetime) -> None: ...


# -- logs


@attrs.frozen(kw_only=True)
class NewLogChunk:
    run_id: uuid.UUID
    job_id: uuid.UUID
    step_index: int
    lines: tuple[str, ...] = attrs.field(converter=_str_tuple)
    logged_at: datetime = attrs.field(validator=_aware)
    received_at: datetime = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class LogChunk:
    run_id: uuid.UUID
    job_id: uuid.UUID
    step_index: int
    sequence: int
    lines: tuple[str, ...]
    logged_at: datetime
    received_at: datetime


@attrs.frozen(kw_only=True)
class LogPage:
    """``next_cursor`` is the ``after`` of the next read (the last sequence returned, or the one given)."""

    chunks: tuple[LogChunk, ...]
    next_cursor: int


class LogStore(Protocol):
    async def append_log_chunk(self, chunk: NewLogChunk) -> int:
        """Store a chunk; returns its sequence, gap-free and in commit order per job."""
        ...

    async def read_log_chunks(
        self, job_id: uuid.UUID, *, after: int = 0, limit: int = 500, step_index: int | None = None
    ) -> LogPage: ...


# -- workflow registrations (HOOK-18, EVT-07)


@attrs.frozen(kw_only=True)
class RegistrationRecord:
    """A stored registration; ``id`` and ``disabled`` survive every ``replace_all`` that keeps the name."""

    id: uuid.UUID
    customer_id: str
    routing_key: str
    repo_identifier: str
    workflow: LockWorkflow
    trigger_types: tuple[str, ...]
    provider_context: Mapping[str, Any] = attrs.field(hash=False)
    disabled: bool
    commit_sha: str | None
    source_file: str
    is_global: bool
    created_at: datetime
    updated_at: datetime

    @property
    def workflow_name(self) -> str:
        return self.workflow.name


@attrs.frozen(kw_only=True)
class RegistrationReplace:
    """What one ``replace_all`` changed, and the registry version it committed with."""

    version: int
    inserted: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()


class RegistrationStore(Protocol):
    async def replace_all(self, batch: RegistrationSet, now: datetime) -> RegistrationReplace:
        """Make ``(routing_key, repo_identifier)``'s rows exactly ``batch`` and bump the registry version.

        One transaction: rows of the pair still owned by ``__default__`` move to ``batch.customer_id``,
        a kept name is updated in place, a new name inserted, a vanished name deleted, and the version
        bumped, so a peer that sees the new version also sees every row of it.
        """
        ...

    async def registry_version(self) -> int:
        """The version peers compare to reload their index; 0 before any registration."""
        ...

    async def list_registrations(
        self, *, routing_key: str | None = None, repo_identifier: str | None = None
    ) -> tuple[RegistrationRecord, ...]:
        """Rows ordered by ``(routing_key, repo_identifier, workflow_name)``; ``None`` filters nothing."""
        ...

    async def set_disabled(self, registration_id: uuid.UUID, disabled: bool, now: datetime) -> bool:
        """Whether the row exists; a disabled row stays stored but is never matched."""
        ...
