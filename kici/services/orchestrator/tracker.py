"""The tracker: what agents report about their jobs, turned into machine-checked, persisted state.

Every job input goes through ``kici.domain.execution.run_status.decide_job_input`` against the job's
persisted status and is written under the store's guard (``WHERE status = <expected>``), so a late,
duplicate or invalid input is logged and dropped and a terminal row never changes (EXE-04). A
terminal write runs the needs gate in the same unit of work (store); the tracker then *settles* the
run: newly ready jobs wake the dispatcher, stuck jobs are failed (EXE-17 L3) and the run is completed
once every job is terminal (EXE-03, path B).

It also owns the recovery book (``kici.domain.recovery``): which agent holds which job, which jobs
are ``recovering`` after their agent's connection dropped, and the ownership checks that gate step
statuses and log chunks (PRO-19). And the per-job timers: recovery deadlines (PRO-16), the job
timeout backstop and the workflow deadline (EXE-26), plus the stale heartbeat scan (EXE-24).

Choices where the spec is silent:

* A job acknowledged but not yet ``running`` when its agent drops also waits in recovery (the agent
  may be cloning); if the window closes first it is requeued rather than failed, since it never ran.
* A job ``cancelling`` when its agent drops ends ``cancelled`` at once: nobody is left to finish its
  cancel hooks, and recovering it would need a transition the machine does not have.
* A ``success`` or ``failed`` report for a job still ``queued`` (its ``running`` report was coalesced
  away by the agent's outbox during an outage) is applied as START then the terminal event.
* A stale job is stopped with a forced ``job.cancel`` to its agent instead of dropping the agent's
  whole connection (its other jobs are fine).
* The workflow deadline cancels the run gracefully with reason ``workflow_timeout`` (10 §11), so the
  run ends ``cancelled``; a second cancel (from the API) escalates to force as usual.

An :class:`ExecutionObserver` hears about every change it writes (the Platform link forwards them
upstream, PRO-22). The calls are synchronous and must not block: an observer queues the news and
reads the state itself, so a slow or disconnected Platform never slows down job tracking. A run is
only named (``run_changed``), never described, so a missed or repeated call costs a re-read, not a
wrong status.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Any, Protocol

import attrs
import structlog

from kici.adapters.clock import Clock
from kici.domain.execution.machine import InvalidTransitionError
from kici.domain.execution.run_status import (
    ApplyEvent,
    Drop,
    JobInput,
    decide_job_input,
    is_run_terminal,
    reported_job_input,
)
from kici.domain.execution.states import (
    TERMINAL_JOB_STATES,
    Event,
    ExecutionState,
    JobStatus,
    RunStatus,
    StepConcurrencyKind,
    StepStatus,
)
from kici.domain.lockfile.frozen import freeze_json, thaw_json
from kici.domain.protocol import InFlightJob, JobCancel, JobHeartbeat, JobState, LogChunk, StepState
from kici.domain.protocol import JobStatus as JobStatusMessage
from kici.domain.protocol import StepStatus as StepStatusMessage
from kici.domain.recovery import (
    UNKNOWN_AGENT,
    JobRef,
    LostFailed,
    Ownership,
    Rearmed,
    Reclaimed,
    RecoveryBook,
    RecoveryEntry,
    RecoveryExpired,
    RecoveryStarted,
    StartupRow,
    StartupRowStatus,
    StatusVerdict,
)
from kici.domain.store import (
    DispatchQueue,
    ExecutionStore,
    ForceStatusCommand,
    GateOutcome,
    JobEventCommand,
    JobNotFoundError,
    JobRecord,
    LogStore,
    NewLogChunk,
    QueueEntry,
    QueueStatus,
    RunRecord,
    StepRecord,
)
from kici.services.orchestrator.agent_hub import AgentRegistry, ConnectedAgent
from kici.services.orchestrator.dispatcher import Dispatcher
from kici.services.orchestrator.timers import DeadlineScheduler

_log = structlog.get_logger(__name__)

WORKFLOW_TIMEOUT_REASON = "workflow_timeout"
WORKFLOW_TIMEOUT_BY = "system:workflow-deadline"
STALE_DISPATCH_MESSAGE = "No heartbeat -- dispatch never acknowledged"
UNTRACKED_JOB_REASON = "Job is not tracked by this orchestrator"

_TERMINAL_STEP_STATES = frozenset(
    {StepState.SUCCESS, StepState.FAILED, StepState.SKIPPED, StepState.CANCELLED}
)
_TERMINAL_WIRE_STATES = frozenset(JobState(s.value) for s in TERMINAL_JOB_STATES)


class CancelOutcome(StrEnum):
    ACCEPTED = "accepted"
    NOT_FOUND = "not_found"
    ALREADY_TERMINAL = "already_terminal"


_HTTP_STATUS = {
    CancelOutcome.ACCEPTED: 202,
    CancelOutcome.NOT_FOUND: 404,
    CancelOutcome.ALREADY_TERMINAL: 409,
}


@attrs.frozen(kw_only=True)
class CancelResult:
    """What a run cancel did; ``force`` is True when it was (or was escalated to) a force cancel."""

    outcome: CancelOutcome
    run_id: uuid.UUID
    run_status: RunStatus | None = None
    force: bool = False
    agents_notified: int = 0
    jobs_cancelled: int = 0

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self.outcome]


class ExecutionObserver(Protocol):
    """Told about execution changes as they are written; see the module docstring."""

    def run_changed(self, run_id: uuid.UUID) -> None:
        """The run or one of its jobs may have a new status (also sent for a run's first queued job)."""

    def step_reported(self, message: StepStatusMessage) -> None:
        """An agent's step status was accepted and stored."""

    def log_reported(self, message: LogChunk) -> None:
        """An agent's log chunk was accepted and stored."""


class NoObserver:
    """The default observer: nobody listens (independent mode)."""

    def run_changed(self, run_id: uuid.UUID) -> None:
        return None

    def step_reported(self, message: StepStatusMessage) -> None:
        return None

    def log_reported(self, message: LogChunk) -> None:
        return None


NO_OBSERVER = NoObserver()


@attrs.frozen(kw_only=True)
class TrackerSettings:
    recovery_grace_ms: float = 120_000
    completed_grace_ms: float = 30_000
    stale_threshold_ms: float = 120_000
    job_timeout_grace_ms: float = 30_000


@attrs.define
class _Live:
    """A job on an agent, for the stale scan: ``beat`` is the last sign of life (START, heartbeat)."""

    run_id: uuid.UUID
    agent_id: str
    since: datetime
    started: bool = False
    beat: datetime | None = None


def utc_from_ms(value: float) -> datetime:
    """Epoch milliseconds (wire timestamps, the recovery book's times) as an aware datetime."""
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def _error_message(data: dict[str, Any] | None) -> str | None:
    if not data:
        return None
    error = data.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        return None if message is None else str(message)
    return None if error is None else str(error)


def _exit_code(data: dict[str, Any] | None) -> int | None:
    if not data:
        return None
    error = data.get("error")
    code = error.get("exitCode") if isinstance(error, dict) else data.get("exitCode")
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _duration_ms(data: dict[str, Any] | None) -> int | None:
    value = None if not data else data.get("durationMs")
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _job_timeout_ms(job: JobRecord) -> int | None:
    config = thaw_json(job.config)
    value = config.get("timeout") if isinstance(config, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


class Tracker:
    """See the module docstring."""

    def __init__(
        self,
        *,
        execution: ExecutionStore,
        queue: DispatchQueue,
        logs: LogStore,
        registry: AgentRegistry,
        dispatcher: Dispatcher,
        scheduler: DeadlineScheduler,
        clock: Clock,
        settings: TrackerSettings,
        observer: ExecutionObserver = NO_OBSERVER,
    ) -> None:
        self._execution = execution
        self._queue = queue
        self._logs = logs
        self._registry = registry
        self._dispatcher = dispatcher
        self._scheduler = scheduler
        self._clock = clock
        self._settings = settings
        self._observer = observer
        self.book = RecoveryBook(settings.recovery_grace_ms, settings.completed_grace_ms)
        self._live: dict[str, _Live] = {}
        self._watched: set[uuid.UUID] = set()
        dispatcher.bind(self)

    def _now_ms(self) -> float:
        return self._clock.now().timestamp() * 1000

    # --- bookkeeping used by the hub and the dispatcher ---------------------------------------------

    def connect(self, agent_id: str) -> int:
        """A new connection generation for ``agent_id``."""
        return self.book.connect(agent_id)

    def assigned(self, entry: QueueEntry, agent: ConnectedAgent) -> None:
        job_id = str(entry.job_id)
        self.book.assign(JobRef(job_id, str(entry.run_id)), agent.agent_id)
        self._live[job_id] = _Live(entry.run_id, agent.agent_id, self._clock.now())

    def released(self, job_id: str) -> None:
        self.book.release(job_id)
        self._live.pop(job_id, None)
        self._scheduler.cancel(("job-timeout", job_id))

    async def watch_run(self, run_id: uuid.UUID, run: RunRecord | None = None) -> None:
        """Arm the workflow deadline of ``run_id`` once, if it has one (EXE-26).

        A caller that just read the run passes it: the dispatcher does for every job, and a second
        read of the same row was one more transaction per dispatch (issue 7)."""
        self._observer.run_changed(run_id)
        if run_id in self._watched:
            return
        self._watched.add(run_id)
        if run is None:
            run = await self._execution.get_run(run_id)
        if run is None or is_run_terminal(run.status) or not run.workflow_timeout_ms:
            return
        started = run.started_at or run.created_at
        deadline = started + timedelta(milliseconds=run.workflow_timeout_ms)
        self._scheduler.arm_at(("workflow", str(run_id)), deadline, partial(self._workflow_due, run_id))

    # --- settling a run after terminal writes ---------------------------------------------------

    async def settle(self, run_id: uuid.UUID, gate: GateOutcome | None) -> None:
        """After a terminal write: log the gate's decisions, dispatch the ready, complete the run."""
        now = self._clock.now()
        if gate is not None:
            self._log_gate(gate)
        stuck = await self._execution.fail_stuck_jobs(run_id, now)
        for failed in stuck.failed:
            _log.error("stuck job failed", run_id=str(run_id), job=failed.name, reason=failed.reason)
        if (gate is not None and gate.dispatched) or stuck.dispatched:
            self._dispatcher.wake()
        final = await self._execution.complete_run_if_all_jobs_terminal(run_id, now)
        if final is not None:
            self._watched.discard(run_id)
            self._scheduler.cancel(("workflow", str(run_id)))
            _log.info(
                "run completed",
                run_id=str(run_id),
                status=final.status.value,
                duration_ms=final.duration_ms,
                failure_reason=final.failure_reason,
            )
        self._observer.run_changed(run_id)

    @staticmethod
    def _log_gate(gate: GateOutcome) -> None:
        for skipped in gate.skipped:
            _log.info("job skipped", run_id=str(gate.run_id), job=skipped.name, reason=skipped.reason)
        for failed in gate.failed:
            _log.warning(
                "job failed by the gate", run_id=str(gate.run_id), job=failed.name, reason=failed.reason
            )
        for ready in gate.dispatched:
            _log.info("job ready", run_id=str(gate.run_id), job=ready.name)

    async def _finished(self, job_id: str, run_id: uuid.UUID, gate: GateOutcome | None) -> None:
        self._dispatcher.forget(job_id)
        await self.settle(run_id, gate)
        self._dispatcher.wake()

    async def _apply(
        self,
        job: JobRecord,
        job_input: JobInput,
        *,
        agent_id: str | None = None,
        error_message: str | None = None,
        outputs: Any = None,
    ) -> JobStatus | None:
        """Decide ``job_input`` against the job's persisted status and write it; the new status or None."""
        decision = decide_job_input(job.status, job_input)
        if isinstance(decision, Drop):
            _log.info(
                "job input dropped", job_id=str(job.job_id), input=job_input.value, reason=decision.reason
            )
            return None
        if isinstance(decision, ApplyEvent):
            try:
                transition = await self._execution.apply_job_event(
                    JobEventCommand(
                        job_id=job.job_id,
                        expected=ExecutionState(job.status.value),
                        event=decision.event,
                        now=self._clock.now(),
                        agent_id=agent_id if decision.event is Event.START else None,
                        error_message=error_message,
                        outputs=outputs,
                    )
                )
            except InvalidTransitionError as exc:
                _log.info("job input dropped", job_id=str(job.job_id), input=job_input.value, reason=str(exc))
                return None
        else:
            transition = await self._execution.force_job_status(
                ForceStatusCommand(
                    job_id=job.job_id,
                    status=decision.status,
                    expected=decision.expected,
                    now=self._clock.now(),
                    error_message=error_message,
                )
            )
        if not transition.applied:
            _log.info(
                "job input lost a race",
                job_id=str(job.job_id),
                input=job_input.value,
                status=transition.status.value,
            )
            return None
        self._observer.run_changed(job.run_id)
        if transition.status in TERMINAL_JOB_STATES:
            await self._finished(str(job.job_id), job.run_id, transition.gate)
        return transition.status

    # --- agent reports --------------------------------------------------------------------------

    async def on_job_status(self, agent: ConnectedAgent, message: JobStatusMessage) -> None:
        job_input = reported_job_input(message.state.value)
        job_uuid = _parse_uuid(message.job_id)
        if job_input is None or job_uuid is None:
            _log.info("job.status ignored", job_id=message.job_id, state=message.state.value)
            return
        terminal = message.state in _TERMINAL_WIRE_STATES
        decision = self.book.on_job_status(agent.agent_id, message.job_id, terminal, self._now_ms())
        if decision.verdict is StatusVerdict.DROP:
            _log.info(
                "job.status from an agent not holding the job dropped",
                job_id=message.job_id,
                agent_id=agent.agent_id,
            )
            return
        if decision.reclaimed is not None:
            cancel = await self._persist_reclaim(decision.reclaimed, agent)
            if cancel is not None:
                agent.session.try_send(cancel)
                return
        if job_input is JobInput.REPORTED_RUNNING:
            await self._dispatcher.job_started(agent, message.job_id)
        job = await self._execution.get_job(job_uuid)
        if job is None:
            return
        if job.status is JobStatus.QUEUED and job_input in (
            JobInput.REPORTED_SUCCESS,
            JobInput.REPORTED_FAILED,
        ):
            await self._dispatcher.job_started(agent, message.job_id)
            if await self._apply(job, JobInput.REPORTED_RUNNING, agent_id=agent.agent_id) is None:
                return
            self._started(message.job_id, job, agent)
            job = await self._execution.get_job(job_uuid)
            if job is None:
                return
        data = message.data
        outputs = freeze_json(data.get("outputs")) if data and data.get("outputs") is not None else None
        status = await self._apply(
            job,
            job_input,
            agent_id=agent.agent_id,
            error_message=_error_message(data) if job_input is not JobInput.REPORTED_SUCCESS else None,
            outputs=outputs,
        )
        if status is JobStatus.RUNNING:
            self._started(message.job_id, job, agent)
        if terminal and status is None:
            job_now = await self._execution.get_job(job_uuid)
            if job_now is not None and job_now.terminal:
                self._dispatcher.forget(message.job_id)
                self._dispatcher.wake()
            elif job_now is not None:
                self.book.assign(JobRef(message.job_id, message.run_id), agent.agent_id)
        elif status is not None:
            _log.info("job status", run_id=str(job.run_id), job_id=message.job_id, status=status.value)

    def _started(self, job_id: str, job: JobRecord, agent: ConnectedAgent) -> None:
        now = self._clock.now()
        live = self._live.get(job_id)
        if live is None:
            live = self._live[job_id] = _Live(job.run_id, agent.agent_id, now)
        live.started = True
        live.beat = now
        timeout = _job_timeout_ms(job)
        if timeout is not None:
            deadline = now + timedelta(milliseconds=timeout + self._settings.job_timeout_grace_ms)
            self._scheduler.arm_at(
                ("job-timeout", job_id), deadline, partial(self._job_timeout_due, job.job_id, timeout)
            )

    def _may_report(self, agent: ConnectedAgent, job_id: str) -> bool:
        return self.book.ownership(agent.agent_id, job_id, self._now_ms()) is not Ownership.NONE

    async def on_step_status(self, agent: ConnectedAgent, message: StepStatusMessage) -> None:
        job_uuid, run_uuid = _parse_uuid(message.job_id), _parse_uuid(message.run_id)
        if job_uuid is None or run_uuid is None or not self._may_report(agent, message.job_id):
            _log.info("step.status dropped (ownership)", job_id=message.job_id, agent_id=agent.agent_id)
            return
        stamp = utc_from_ms(message.timestamp)
        terminal = message.state in _TERMINAL_STEP_STATES
        data = message.data
        step = StepRecord(
            run_id=run_uuid,
            job_id=job_uuid,
            step_index=message.step_index,
            step_name=message.step_name,
            status=StepStatus(message.state.value),
            updated_at=self._clock.now(),
            step_type="step" if message.step_type is None else message.step_type.value,
            started_at=stamp if message.state is StepState.RUNNING else None,
            completed_at=stamp if terminal else None,
            duration_ms=_duration_ms(data),
            exit_code=_exit_code(data),
            error_message=_error_message(data),
            secrets_accessed=tuple(message.secrets_accessed or ()),
            concurrency_kind=None
            if message.concurrency_kind is None
            else StepConcurrencyKind(message.concurrency_kind.value),
            group_id=message.group_id,
            log_bytes=message.log_bytes_streamed if terminal else None,
        )
        try:
            if not await self._execution.upsert_step(step):
                _log.info(
                    "late step.status for a finished step dropped",
                    job_id=message.job_id,
                    step=message.step_index,
                )
                return
        except JobNotFoundError:
            _log.info("step.status for an unknown job dropped", job_id=message.job_id)
            return
        self._observer.step_reported(message)

    async def on_log_chunk(self, agent: ConnectedAgent, message: LogChunk) -> None:
        job_uuid, run_uuid = _parse_uuid(message.job_id), _parse_uuid(message.run_id)
        if job_uuid is None or run_uuid is None or not self._may_report(agent, message.job_id):
            _log.info("log.chunk dropped (ownership)", job_id=message.job_id, agent_id=agent.agent_id)
            return
        try:
            await self._logs.append_log_chunk(
                NewLogChunk(
                    run_id=run_uuid,
                    job_id=job_uuid,
                    step_index=message.step_index,
                    lines=tuple(message.lines),
                    logged_at=utc_from_ms(message.timestamp),
                    received_at=self._clock.now(),
                )
            )
        except JobNotFoundError:
            _log.info("log.chunk for an unknown job dropped", job_id=message.job_id)
            return
        self._observer.log_reported(message)

    async def on_job_heartbeat(self, agent: ConnectedAgent, message: JobHeartbeat) -> None:
        job_uuid = _parse_uuid(message.job_id)
        live = self._live.get(message.job_id)
        if job_uuid is None or live is None or live.agent_id != agent.agent_id:
            return
        now = self._clock.now()
        live.beat = now
        await self._execution.record_heartbeat(job_uuid, now)

    # --- recovery (PRO-16, PRO-17) -------------------------------------------------------------

    async def reconcile(
        self, agent: ConnectedAgent, in_flight: Iterable[InFlightJob]
    ) -> tuple[JobCancel, ...]:
        """Answer ``inFlightJobs`` before ``register.ack``: reclaim, keep, or cancel each job."""
        refs = [JobRef(job.job_id, job.run_id) for job in in_flight]
        result = self.book.reconcile(agent.agent_id, refs, self._now_ms())
        cancels: list[JobCancel] = []
        for reclaimed in result.reclaimed:
            cancel = await self._persist_reclaim(reclaimed, agent)
            if cancel is not None:
                cancels.append(cancel)
        for kept in result.kept:
            agent.jobs.add(kept.job_id)
        for unknown in result.cancel:
            if await self._already_finished(unknown.job_id):
                _log.info("agent listed an ended job", agent_id=agent.agent_id, job_id=unknown.job_id)
            else:
                _log.warning(
                    "agent reported unknown in-flight job", agent_id=agent.agent_id, job_id=unknown.job_id
                )
            cancels.append(
                self._cancel_message(unknown.run_id, unknown.job_id, UNTRACKED_JOB_REASON, force=True)
            )
        return tuple(cancels)

    async def _already_finished(self, job_id: str) -> bool:
        """An agent lists an ended job when it still replays the job's terminal status (no pong proved
        delivery) or still runs a job the recovery window failed: routine, not a warning. The cancel
        goes out either way; an agent ignores it for a job it no longer runs."""
        job_uuid = _parse_uuid(job_id)
        job = None if job_uuid is None else await self._execution.get_job(job_uuid)
        return job is not None and job.terminal

    async def _persist_reclaim(self, reclaimed: Reclaimed, agent: ConnectedAgent) -> JobCancel | None:
        job_id = reclaimed.job.job_id
        self._scheduler.cancel(("recovery", job_id))
        job_uuid = uuid.UUID(job_id)
        now = self._clock.now()
        await self._queue.reclaim(job_uuid, agent.agent_id, now)
        job = await self._execution.get_job(job_uuid)
        if job is None or job.terminal:
            self.book.release(job_id)
            return self._cancel_message(reclaimed.job.run_id, job_id, UNTRACKED_JOB_REASON, force=True)
        agent.jobs.add(job_id)
        self._live[job_id] = _Live(job.run_id, agent.agent_id, now)
        if job.status is JobStatus.RECOVERING:
            await self._apply(job, JobInput.REPORTED_RUNNING, agent_id=agent.agent_id)
            self._started(job_id, job, agent)
        _log.info(
            "job reclaimed",
            job_id=job_id,
            run_id=reclaimed.job.run_id,
            agent_id=agent.agent_id,
            recovery_duration=reclaimed.recovery_duration_ms,
        )
        return None

    async def agent_disconnected(self, agent: ConnectedAgent) -> None:
        """The agent's current connection closed: each job it holds starts recovering (static agents)."""
        for started in self.book.disconnect(agent.agent_id, agent.generation, self._now_ms()):
            await self._start_recovery(started.entry)

    async def _start_recovery(self, entry: RecoveryEntry) -> None:
        """Persist a recovery the book started: job RECOVER (if running), queue row + deadline, timer."""
        ref, agent_id = entry.job, entry.agent_id
        job_id = ref.job_id
        self._live.pop(job_id, None)
        self._scheduler.cancel(("job-timeout", job_id))
        job = await self._execution.get_job(uuid.UUID(job_id))
        if job is None or job.terminal:
            self.book.release(job_id)
            return
        if job.status is JobStatus.CANCELLING:
            self.book.release(job_id)
            await self._apply(job, JobInput.RUN_CANCEL_FORCE)
            return
        deadline = utc_from_ms(entry.deadline_ms)
        if job.status is JobStatus.RUNNING:
            await self._apply(job, JobInput.AGENT_DISCONNECTED)
        await self._queue.start_recovery(job.job_id, agent_id or UNKNOWN_AGENT, deadline, self._clock.now())
        self._arm_recovery(entry)
        _log.warning(
            "job recovering",
            job_id=job_id,
            run_id=ref.run_id,
            agent_id=agent_id,
            deadline=deadline.isoformat(),
        )

    def _arm_recovery(self, entry: RecoveryEntry) -> None:
        self._scheduler.arm_at(
            ("recovery", entry.job.job_id),
            utc_from_ms(entry.deadline_ms),
            partial(self._recovery_due, entry.job.job_id, entry.deadline_ms),
        )

    async def _recovery_due(self, job_id: str, deadline_ms: float) -> None:
        """The recovery timer fired; it never fires early, so it reports at least its own deadline."""
        expired = self.book.expire(job_id, max(deadline_ms, self._now_ms()))
        if expired is not None:
            await self._expire(expired)

    async def expire_recoveries(self) -> None:
        """The sweep's backstop for recovery timers (e.g. deadlines re-armed in the past at boot)."""
        for expired in self.book.expire_due(self._now_ms()):
            self._scheduler.cancel(("recovery", expired.job.job_id))
            await self._expire(expired)

    async def _expire(self, expired: RecoveryExpired) -> None:
        job = await self._execution.get_job(uuid.UUID(expired.job.job_id))
        if job is None or job.terminal:
            return
        if job.status is JobStatus.QUEUED:
            result = await self._queue.requeue(job.job_id, self._clock.now(), expired.message)
            _log.warning("never-started job requeued after its recovery window", job_id=expired.job.job_id)
            if result.failed is not None and result.failed.gate is not None:
                await self.settle(job.run_id, result.failed.gate)
            self._dispatcher.wake()
            return
        _log.warning(
            "recovery window expired",
            run_id=expired.job.run_id,
            job_id=expired.job.job_id,
            agent_id=expired.agent_id,
        )
        await self._apply(job, JobInput.RECOVERY_EXPIRED, error_message=expired.message)

    async def restore(self, rows: Sequence[QueueEntry]) -> None:
        """Boot (PRO-17): rebuild the recovery book from in-flight queue rows and persist what it decides;
        their runs' workflow deadlines are armed again."""
        startup = [
            StartupRow(
                job=JobRef(str(row.job_id), str(row.run_id)),
                status=StartupRowStatus(row.status.value),
                agent_id=row.recovery_agent_id or row.agent_id,
                recovery_deadline_ms=None
                if row.recovery_deadline is None
                else row.recovery_deadline.timestamp() * 1000,
            )
            for row in rows
            if row.status in (QueueStatus.DISPATCHED, QueueStatus.RECOVERING)
        ]
        for run_id in dict.fromkeys(row.run_id for row in rows):
            await self.watch_run(run_id)
        for action in self.book.restore(startup, self._now_ms()):
            match action:
                case RecoveryStarted(entry=entry):
                    await self._start_recovery(entry)
                case Rearmed(entry=entry):
                    self._arm_recovery(entry)
                    _log.info(
                        "recovery re-armed",
                        run_id=entry.job.run_id,
                        job_id=entry.job.job_id,
                        agent_id=entry.agent_id,
                        deadline=utc_from_ms(entry.deadline_ms).isoformat(),
                    )
                case LostFailed(job=ref, message=message):
                    job = await self._execution.get_job(uuid.UUID(ref.job_id))
                    if job is not None and not job.terminal:
                        await self._apply(job, JobInput.RECOVERY_EXPIRED, error_message=message)

    # --- timers and the stale scan (EXE-24, EXE-26) ----------------------------------------------

    async def detect_stale(self) -> None:
        """Tier 1: a started job silent past the threshold, or an acked one that never started."""
        now = self._clock.now()
        threshold = timedelta(milliseconds=self._settings.stale_threshold_ms)
        for job_id, live in list(self._live.items()):
            if self.book.excluded_from_stale_scan(job_id):
                continue
            if live.started and live.beat is not None and now - live.beat > threshold:
                job_input = JobInput.STALE_HEARTBEAT
                message = f"No heartbeat received for {int((now - live.beat).total_seconds())}s"
            elif (
                not live.started and not self._dispatcher.pending_ack(job_id) and now - live.since > threshold
            ):
                job_input, message = JobInput.STALE_DISPATCH, STALE_DISPATCH_MESSAGE
            else:
                continue
            job = await self._execution.get_job(uuid.UUID(job_id))
            if job is None:
                self._live.pop(job_id, None)
                continue
            if await self._apply(job, job_input, error_message=message) is not None:
                _log.warning(
                    "stale job", job_id=job_id, run_id=str(live.run_id), agent_id=live.agent_id, error=message
                )
                self._stop_on_agent(live.agent_id, job, message)

    def _stop_on_agent(self, agent_id: str | None, job: JobRecord, reason: str) -> None:
        agent = self._registry.get(agent_id)
        if agent is not None:
            agent.session.try_send(self._cancel_message(str(job.run_id), str(job.job_id), reason, force=True))

    async def _job_timeout_due(self, job_id: uuid.UUID, timeout_ms: int) -> None:
        job = await self._execution.get_job(job_id)
        if job is None or job.status not in (JobStatus.RUNNING, JobStatus.CANCELLING):
            return
        live = self._live.get(str(job_id))
        message = f"job_timeout: job exceeded its timeout of {timeout_ms}ms"
        if await self._apply(job, JobInput.REPORTED_FAILED, error_message=message) is not None:
            _log.warning("job timed out", job_id=str(job_id), run_id=str(job.run_id))
            self._stop_on_agent(job.agent_id if live is None else live.agent_id, job, message)

    async def _workflow_due(self, run_id: uuid.UUID) -> None:
        result = await self.cancel_run(
            run_id, force=False, reason=WORKFLOW_TIMEOUT_REASON, cancelled_by=WORKFLOW_TIMEOUT_BY
        )
        if result.outcome is CancelOutcome.ACCEPTED:
            _log.warning("workflow deadline reached, run cancelled", run_id=str(run_id))

    def sweep_completed(self) -> None:
        self.book.sweep_completed(self._now_ms())

    # --- run cancel (EXE-14) ---------------------------------------------------------------------

    def _cancel_message(self, run_id: str, job_id: str, reason: str, *, force: bool) -> JobCancel:
        return JobCancel(
            message_id=str(uuid.uuid4()), run_id=run_id, job_id=job_id, reason=reason, force=force or None
        )

    async def cancel_run(
        self, run_id: uuid.UUID, *, force: bool, reason: str, cancelled_by: str
    ) -> CancelResult:
        """Cancel a run (10 §6): graceful first, force on the second request or when no agent can hear it."""
        run = await self._execution.get_run(run_id)
        if run is None:
            return CancelResult(outcome=CancelOutcome.NOT_FOUND, run_id=run_id)
        if is_run_terminal(run.status):
            return CancelResult(outcome=CancelOutcome.ALREADY_TERMINAL, run_id=run_id, run_status=run.status)
        force = force or run.status is RunStatus.CANCELLING
        holders: dict[uuid.UUID, ConnectedAgent] = {}
        for job in await self._execution.list_jobs(run_id):
            if job.status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING):
                agent = self._registry.holder_of(str(job.job_id)) or self._registry.get(job.agent_id)
                if agent is not None:
                    holders[job.job_id] = agent
        cancellation = await self._execution.cancel_run(
            run_id, self._clock.now(), graceful=not force, reason=reason, cancelled_by=cancelled_by
        )
        notified = 0
        for job_id, agent in holders.items():
            try:
                sent = agent.session.try_send(
                    self._cancel_message(str(run_id), str(job_id), reason, force=force)
                )
            except Exception:
                sent = False
            notified += int(sent)
        cancelled = list(cancellation.cancelled)
        if not force and cancellation.cancelling and notified == 0:
            _log.warning("no agent reachable for a graceful cancel, forcing it", run_id=str(run_id))
            force = True
            escalated = await self._execution.cancel_run(
                run_id, self._clock.now(), graceful=False, reason=reason, cancelled_by=cancelled_by
            )
            cancelled.extend(escalated.cancelled)
            self._forget_all(c.job_id for c in escalated.cancelled)
            self._log_gate(escalated.gate)
        self._forget_all(c.job_id for c in cancellation.cancelled)
        await self.settle(run_id, cancellation.gate)
        after = await self._execution.get_run(run_id)
        _log.info("run cancel", run_id=str(run_id), force=force, agents_notified=notified, reason=reason)
        return CancelResult(
            outcome=CancelOutcome.ACCEPTED,
            run_id=run_id,
            run_status=None if after is None else after.status,
            force=force,
            agents_notified=notified,
            jobs_cancelled=len(cancelled),
        )

    def _forget_all(self, job_ids: Iterable[uuid.UUID]) -> None:
        for job_uuid in job_ids:
            job_id = str(job_uuid)
            self._scheduler.cancel(("recovery", job_id))
            self._dispatcher.forget(job_id)
        self._dispatcher.wake()
