"""Run outcome, run lifecycle and the orchestrator's job-input mapping (EXE-03, EXE-04).

Completion is decided twice in production: from the tracker's in-memory job map
(path A) and, after a restart, from ``execution_jobs`` rows (path B). Both paths
funnel through :func:`run_completion` on persisted statuses, which is what makes
them agree (P-RUN2).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType

import attrs

from kici.domain.execution.machine import can_transition, transition
from kici.domain.execution.states import (
    FAILING_JOB_STATES,
    TERMINAL_JOB_STATES,
    TERMINAL_RUN_STATES,
    CheckMode,
    Event,
    ExecutionState,
    JobStatus,
    RunStatus,
    TrackedJobState,
    persisted_job_status,
)

DRIFT_FAILURE_REASON = "Drift detected in check mode (--fail-on-drift)"


class IncompleteRunError(ValueError):
    """A run outcome was asked for while some job is still non-terminal."""


class UnknownJobStatusError(ValueError):
    """A persisted row holds a status outside the ``JobStatus`` vocabulary."""


@attrs.frozen
class RunOutcome:
    status: RunStatus
    reason: str | None


def compute_run_status(
    job_statuses: Mapping[str, JobStatus], check_mode: CheckMode, drift_detected: bool
) -> tuple[RunStatus, str | None]:
    """The terminal status of a finished run and its failure reason.

    Precedence: fail-on-drift with drift, then any failing job, then any cancelled
    job, else success (skipped jobs count as success). Failed job names are listed
    sorted so the reason does not depend on the order jobs finished in. A run
    without jobs is a success: nothing failed.
    """
    open_jobs = sorted(name for name, status in job_statuses.items() if status not in TERMINAL_JOB_STATES)
    if open_jobs:
        raise IncompleteRunError(f"run status asked for with non-terminal jobs: {', '.join(open_jobs)}")
    if check_mode is CheckMode.CHECK_FAIL_ON_DRIFT and drift_detected:
        return RunStatus.FAILED, DRIFT_FAILURE_REASON
    failed = sorted(name for name, status in job_statuses.items() if status in FAILING_JOB_STATES)
    if failed:
        return RunStatus.FAILED, f"Failed jobs: {', '.join(failed)}"
    if any(status is JobStatus.CANCELLED for status in job_statuses.values()):
        return RunStatus.CANCELLED, None
    return RunStatus.SUCCESS, None


def is_run_complete(job_statuses: Iterable[TrackedJobState]) -> bool:
    """A run is complete once it has jobs and all of them are terminal; zero jobs never completes it."""
    seen = False
    for status in job_statuses:
        seen = True
        if persisted_job_status(status) not in TERMINAL_JOB_STATES:
            return False
    return seen


def run_completion(
    job_statuses: Mapping[str, JobStatus], check_mode: CheckMode, drift_detected: bool
) -> RunOutcome | None:
    """The run's outcome if it is complete, else None."""
    if not is_run_complete(job_statuses.values()):
        return None
    status, reason = compute_run_status(job_statuses, check_mode, drift_detected)
    return RunOutcome(status, reason)


def completion_from_memory(
    jobs: Mapping[str, TrackedJobState], check_mode: CheckMode, drift_detected: bool
) -> RunOutcome | None:
    """Path A: decide completion from the tracker's job map (machine states and forced statuses)."""
    persisted = {name: persisted_job_status(state) for name, state in jobs.items()}
    return run_completion(persisted, check_mode, drift_detected)


def completion_from_rows(
    rows: Iterable[tuple[str, str]], check_mode: CheckMode, drift_detected: bool
) -> RunOutcome | None:
    """Path B: decide completion from ``(job name, status)`` rows of ``execution_jobs``."""
    statuses: dict[str, JobStatus] = {}
    for name, raw in rows:
        try:
            statuses[name] = JobStatus(raw)
        except ValueError:
            raise UnknownJobStatusError(f"job {name!r} has unknown status {raw!r}") from None
    return run_completion(statuses, check_mode, drift_detected)


@attrs.frozen
class RunFinalization:
    """The columns written when a run completes."""

    status: RunStatus
    completed_at: datetime
    duration_ms: int | None
    failure_reason: str | None


def finalize_run(
    outcome: RunOutcome, started_at: datetime | None, now: datetime, existing_failure_reason: str | None
) -> RunFinalization:
    """Completion columns: an earlier ``failure_reason`` (e.g. a cancel reason) is never overwritten.

    A run that never started has no duration; a clock step backwards clamps it to 0.
    """
    duration = None if started_at is None else max(0, (now - started_at) // timedelta(milliseconds=1))
    reason = existing_failure_reason if existing_failure_reason is not None else outcome.reason
    return RunFinalization(outcome.status, now, duration, reason)


class RunEvent(StrEnum):
    """What moves a run; ``REJECT`` also covers an install-gate hold expiring."""

    HOLD = "HOLD"
    RESUME = "RESUME"
    REJECT = "REJECT"
    JOB_QUEUED = "JOB_QUEUED"
    CANCEL_GRACEFUL = "CANCEL_GRACEFUL"
    CANCEL_FORCE = "CANCEL_FORCE"
    COMPLETE_SUCCESS = "COMPLETE_SUCCESS"
    COMPLETE_FAILED = "COMPLETE_FAILED"
    COMPLETE_CANCELLED = "COMPLETE_CANCELLED"


_R = RunStatus
_RE = RunEvent

# A run is held only at the workflow install gate, before any job is queued, so
# resuming returns it to pending; cancelling a held run has nothing to wait for.
# JOB_QUEUED while running and CANCEL_GRACEFUL while cancelling are accepted
# no-ops: later jobs queue into a running run, and a repeated graceful cancel is idempotent.
RUN_TRANSITIONS: Mapping[tuple[RunStatus, RunEvent], RunStatus] = MappingProxyType(
    {
        (_R.PENDING, _RE.HOLD): _R.HELD,
        (_R.PENDING, _RE.JOB_QUEUED): _R.RUNNING,
        (_R.PENDING, _RE.CANCEL_GRACEFUL): _R.CANCELLING,
        (_R.PENDING, _RE.CANCEL_FORCE): _R.CANCELLED,
        (_R.PENDING, _RE.COMPLETE_SUCCESS): _R.SUCCESS,
        (_R.PENDING, _RE.COMPLETE_FAILED): _R.FAILED,
        (_R.PENDING, _RE.COMPLETE_CANCELLED): _R.CANCELLED,
        (_R.HELD, _RE.RESUME): _R.PENDING,
        (_R.HELD, _RE.REJECT): _R.CANCELLED,
        (_R.HELD, _RE.CANCEL_GRACEFUL): _R.CANCELLED,
        (_R.HELD, _RE.CANCEL_FORCE): _R.CANCELLED,
        (_R.RUNNING, _RE.JOB_QUEUED): _R.RUNNING,
        (_R.RUNNING, _RE.CANCEL_GRACEFUL): _R.CANCELLING,
        (_R.RUNNING, _RE.CANCEL_FORCE): _R.CANCELLED,
        (_R.RUNNING, _RE.COMPLETE_SUCCESS): _R.SUCCESS,
        (_R.RUNNING, _RE.COMPLETE_FAILED): _R.FAILED,
        (_R.RUNNING, _RE.COMPLETE_CANCELLED): _R.CANCELLED,
        (_R.CANCELLING, _RE.CANCEL_GRACEFUL): _R.CANCELLING,
        (_R.CANCELLING, _RE.CANCEL_FORCE): _R.CANCELLED,
        (_R.CANCELLING, _RE.COMPLETE_SUCCESS): _R.SUCCESS,
        (_R.CANCELLING, _RE.COMPLETE_FAILED): _R.FAILED,
        (_R.CANCELLING, _RE.COMPLETE_CANCELLED): _R.CANCELLED,
    }
)

_COMPLETE_EVENTS: Mapping[RunStatus, RunEvent] = MappingProxyType(
    {
        RunStatus.SUCCESS: RunEvent.COMPLETE_SUCCESS,
        RunStatus.FAILED: RunEvent.COMPLETE_FAILED,
        RunStatus.CANCELLED: RunEvent.COMPLETE_CANCELLED,
    }
)


class InvalidRunTransitionError(ValueError):
    def __init__(self, status: RunStatus, event: RunEvent) -> None:
        super().__init__(f"Invalid run transition: cannot apply event '{event}' in run status '{status}'")
        self.status = status
        self.event = event


def can_run_transition(status: RunStatus, event: RunEvent) -> bool:
    return (status, event) in RUN_TRANSITIONS


def run_transition(status: RunStatus, event: RunEvent) -> RunStatus:
    try:
        return RUN_TRANSITIONS[(status, event)]
    except KeyError:
        raise InvalidRunTransitionError(status, event) from None


def completion_event(outcome: RunOutcome) -> RunEvent:
    """The run event that records ``outcome``."""
    return _COMPLETE_EVENTS[outcome.status]


def is_run_terminal(status: RunStatus) -> bool:
    return status in TERMINAL_RUN_STATES


class JobInput(StrEnum):
    """Everything the orchestrator hears about one job (the EXE-04 table)."""

    PROTECTION_HOLD = "protection_hold"
    WAIT_TIMER = "wait_timer"
    APPROVED = "approved"
    TIMER_DONE = "timer_done"
    REJECTED = "rejected"
    HOLD_EXPIRED = "hold_expired"
    QUEUED = "queued"
    REPORTED_RUNNING = "reported_running"
    REPORTED_SUCCESS = "reported_success"
    REPORTED_FAILED = "reported_failed"
    REPORTED_CANCELLED = "reported_cancelled"
    SCHEDULER_SKIP = "scheduler_skip"
    RUN_CANCEL_GRACEFUL = "run_cancel_graceful"
    RUN_CANCEL_FORCE = "run_cancel_force"
    AGENT_DISCONNECTED = "agent_disconnected"
    RECOVERY_EXPIRED = "recovery_expired"
    STALE_HEARTBEAT = "stale_heartbeat"
    STALE_DISPATCH = "stale_dispatch"
    QUEUE_EXPIRED = "queue_expired"
    DRIFT_DROPPED = "drift_dropped"


_REPORTED: Mapping[str, JobInput] = MappingProxyType(
    {
        "running": JobInput.REPORTED_RUNNING,
        "success": JobInput.REPORTED_SUCCESS,
        "failed": JobInput.REPORTED_FAILED,
        "cancelled": JobInput.REPORTED_CANCELLED,
    }
)


def reported_job_input(state: str) -> JobInput | None:
    """The input a ``job.status`` message's ``state`` stands for; None for states an agent never reports."""
    return _REPORTED.get(state)


@attrs.frozen
class ApplyEvent:
    """Fire ``event``; the job moves to ``to``."""

    event: Event
    to: ExecutionState


@attrs.frozen
class ForceStatus:
    """Write a forced terminal status with ``WHERE status IN (expected)`` (sorted for the SQL)."""

    status: JobStatus
    expected: tuple[JobStatus, ...]


@attrs.frozen
class Drop:
    """Log and ignore the input: it is late, duplicated or invalid in the job's state."""

    reason: str


JobDecision = ApplyEvent | ForceStatus | Drop

# Inputs whose event does not depend on the state: the machine alone decides validity.
_FIXED_EVENTS: Mapping[JobInput, Event] = MappingProxyType(
    {
        JobInput.PROTECTION_HOLD: Event.HOLD,
        JobInput.WAIT_TIMER: Event.WAIT,
        JobInput.APPROVED: Event.APPROVE,
        JobInput.TIMER_DONE: Event.TIMER_DONE,
        JobInput.REJECTED: Event.REJECT,
        JobInput.HOLD_EXPIRED: Event.EXPIRE,
        JobInput.QUEUED: Event.ENQUEUE,
        JobInput.REPORTED_RUNNING: Event.START,
        JobInput.REPORTED_SUCCESS: Event.SUCCEED,
        JobInput.REPORTED_FAILED: Event.FAIL,
        JobInput.SCHEDULER_SKIP: Event.SKIP,
        JobInput.AGENT_DISCONNECTED: Event.RECOVER,
        JobInput.RECOVERY_EXPIRED: Event.FAIL,
    }
)

# Inputs whose event depends on the state the job is in.
_STATE_EVENTS: Mapping[JobInput, Mapping[ExecutionState, Event]] = MappingProxyType(
    {
        JobInput.REPORTED_CANCELLED: MappingProxyType(
            {
                ExecutionState.CANCELLING: Event.COMPLETE,
                ExecutionState.PENDING: Event.CANCEL,
                ExecutionState.HELD: Event.CANCEL,
                ExecutionState.WAITING: Event.CANCEL,
                ExecutionState.QUEUED: Event.CANCEL,
                ExecutionState.RUNNING: Event.CANCEL,
                ExecutionState.RECOVERING: Event.CANCEL,
            }
        ),
        JobInput.RUN_CANCEL_GRACEFUL: MappingProxyType(
            {
                ExecutionState.PENDING: Event.CANCEL,
                ExecutionState.HELD: Event.CANCEL,
                ExecutionState.WAITING: Event.CANCEL,
                ExecutionState.QUEUED: Event.CANCEL,
                ExecutionState.RECOVERING: Event.CANCEL,
                ExecutionState.RUNNING: Event.CANCEL_GRACEFUL,
            }
        ),
        JobInput.RUN_CANCEL_FORCE: MappingProxyType(
            {
                ExecutionState.PENDING: Event.CANCEL,
                ExecutionState.HELD: Event.CANCEL,
                ExecutionState.WAITING: Event.CANCEL,
                ExecutionState.QUEUED: Event.CANCEL,
                ExecutionState.RECOVERING: Event.CANCEL,
                ExecutionState.RUNNING: Event.CANCEL,
                ExecutionState.CANCELLING: Event.CANCEL_FORCE,
            }
        ),
    }
)

_J = JobStatus

# Forced terminal statuses and the statuses their guarded UPDATE expects: a
# heartbeat goes stale only on a job an agent holds; a dispatch never acknowledged
# leaves the job queued; queue expiry and determinism drift hit jobs never started.
_FORCED: Mapping[JobInput, tuple[JobStatus, tuple[JobStatus, ...]]] = MappingProxyType(
    {
        JobInput.STALE_HEARTBEAT: (_J.TIMED_OUT_STALE, (_J.CANCELLING, _J.RUNNING)),
        JobInput.STALE_DISPATCH: (_J.TIMED_OUT_STALE, (_J.QUEUED,)),
        JobInput.QUEUE_EXPIRED: (_J.TIMED_OUT_STALE, (_J.PENDING, _J.QUEUED)),
        JobInput.DRIFT_DROPPED: (_J.DRIFT_DROPPED, (_J.PENDING, _J.QUEUED)),
    }
)


def decide_job_input(current: TrackedJobState, job_input: JobInput) -> JobDecision:
    """What the tracker does with ``job_input`` for a job currently in ``current``.

    A ``success`` report from a job already ``cancelling`` is dropped: the machine
    has no such transition and the agent follows up with ``cancelled`` or
    ``failed`` once its cancel hooks ran.
    """
    forced = _FORCED.get(job_input)
    if forced is not None:
        status, expected = forced
        if persisted_job_status(current) not in expected:
            return Drop(f"{job_input} expects status in ({', '.join(expected)}), job is {current}")
        return ForceStatus(status, expected)
    if isinstance(current, JobStatus):
        if current in TERMINAL_JOB_STATES:
            return Drop(f"{job_input} after terminal status {current}")
        current = ExecutionState(current.value)
    event = _FIXED_EVENTS.get(job_input)
    if event is None:
        event = _STATE_EVENTS[job_input].get(current)
    if event is None or not can_transition(current, event):
        shown = f"event {event}" if event is not None else "no event"
        return Drop(f"{job_input} maps to {shown}, invalid in state {current}")
    return ApplyEvent(event, transition(current, event))
