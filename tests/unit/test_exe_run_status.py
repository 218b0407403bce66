"""Run outcome, completion columns and the EXE-04 input table, by example."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kici.domain.execution.run_status import (
    ApplyEvent,
    Drop,
    ForceStatus,
    InvalidRunTransitionError,
    JobInput,
    RunEvent,
    RunOutcome,
    UnknownJobStatusError,
    completion_from_rows,
    compute_run_status,
    decide_job_input,
    finalize_run,
    reported_job_input,
    run_transition,
)
from kici.domain.execution.states import CheckMode, Event, ExecutionState, JobStatus, RunStatus

S = ExecutionState
J = JobStatus
T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.feature("EXE-03")
def test_failed_jobs_reason_lists_names_sorted() -> None:
    jobs = {"zeta": J.FAILED, "alpha": J.TIMED_OUT_STALE, "mid": J.DRIFT_DROPPED, "ok": J.SUCCESS}
    assert compute_run_status(jobs, CheckMode.APPLY, False) == (
        RunStatus.FAILED,
        "Failed jobs: alpha, mid, zeta",
    )


@pytest.mark.feature("EXE-03")
def test_skipped_counts_as_success_and_cancelled_beats_it() -> None:
    assert compute_run_status({"a": J.SKIPPED, "b": J.SUCCESS}, CheckMode.APPLY, False) == (
        RunStatus.SUCCESS,
        None,
    )
    assert compute_run_status({"a": J.SKIPPED, "b": J.CANCELLED}, CheckMode.CHECK, True) == (
        RunStatus.CANCELLED,
        None,
    )


@pytest.mark.feature("EXE-03")
def test_drift_fails_only_in_fail_on_drift_mode() -> None:
    jobs = {"a": J.SUCCESS}
    assert compute_run_status(jobs, CheckMode.CHECK_FAIL_ON_DRIFT, True) == (
        RunStatus.FAILED,
        "Drift detected in check mode (--fail-on-drift)",
    )
    assert compute_run_status(jobs, CheckMode.CHECK, True) == (RunStatus.SUCCESS, None)


@pytest.mark.feature("EXE-03")
def test_rows_with_unknown_status_are_a_typed_error() -> None:
    with pytest.raises(UnknownJobStatusError, match="'exploded'"):
        completion_from_rows([("a", "exploded")], CheckMode.APPLY, False)
    assert completion_from_rows([], CheckMode.APPLY, False) is None
    assert completion_from_rows([("a", "failed")], CheckMode.APPLY, False) == RunOutcome(
        RunStatus.FAILED, "Failed jobs: a"
    )


@pytest.mark.feature("EXE-03")
def test_finalize_keeps_an_earlier_failure_reason() -> None:
    outcome = RunOutcome(RunStatus.FAILED, "Failed jobs: a")
    done = finalize_run(outcome, T0, T0 + timedelta(seconds=2, microseconds=500), "cancelled by alice")
    assert done.failure_reason == "cancelled by alice"
    assert done.duration_ms == 2000
    assert done.completed_at == T0 + timedelta(seconds=2, microseconds=500)
    assert finalize_run(outcome, T0, T0, None).failure_reason == "Failed jobs: a"


@pytest.mark.feature("EXE-03")
def test_finalize_without_start_or_with_clock_skew() -> None:
    outcome = RunOutcome(RunStatus.SUCCESS, None)
    assert finalize_run(outcome, None, T0, None).duration_ms is None
    assert finalize_run(outcome, T0, T0 - timedelta(seconds=1), None).duration_ms == 0


@pytest.mark.feature("EXE-03")
def test_run_lifecycle_examples() -> None:
    assert run_transition(RunStatus.PENDING, RunEvent.JOB_QUEUED) is RunStatus.RUNNING
    assert run_transition(RunStatus.RUNNING, RunEvent.JOB_QUEUED) is RunStatus.RUNNING
    assert run_transition(RunStatus.RUNNING, RunEvent.CANCEL_GRACEFUL) is RunStatus.CANCELLING
    assert run_transition(RunStatus.CANCELLING, RunEvent.CANCEL_FORCE) is RunStatus.CANCELLED
    assert run_transition(RunStatus.PENDING, RunEvent.HOLD) is RunStatus.HELD
    assert run_transition(RunStatus.HELD, RunEvent.RESUME) is RunStatus.PENDING
    assert run_transition(RunStatus.HELD, RunEvent.REJECT) is RunStatus.CANCELLED
    with pytest.raises(InvalidRunTransitionError, match="'COMPLETE_SUCCESS' in run status 'success'"):
        run_transition(RunStatus.SUCCESS, RunEvent.COMPLETE_SUCCESS)


@pytest.mark.feature("EXE-04")
@pytest.mark.parametrize(
    ("current", "job_input", "expected"),
    [
        (S.PENDING, JobInput.PROTECTION_HOLD, ApplyEvent(Event.HOLD, S.HELD)),
        (S.PENDING, JobInput.WAIT_TIMER, ApplyEvent(Event.WAIT, S.WAITING)),
        (S.HELD, JobInput.APPROVED, ApplyEvent(Event.APPROVE, S.QUEUED)),
        (S.HELD, JobInput.HOLD_EXPIRED, ApplyEvent(Event.EXPIRE, S.CANCELLED)),
        (S.WAITING, JobInput.TIMER_DONE, ApplyEvent(Event.TIMER_DONE, S.QUEUED)),
        (S.PENDING, JobInput.QUEUED, ApplyEvent(Event.ENQUEUE, S.QUEUED)),
        (S.QUEUED, JobInput.REPORTED_RUNNING, ApplyEvent(Event.START, S.RUNNING)),
        (S.RECOVERING, JobInput.REPORTED_RUNNING, ApplyEvent(Event.START, S.RUNNING)),
        (S.RUNNING, JobInput.REPORTED_SUCCESS, ApplyEvent(Event.SUCCEED, S.SUCCESS)),
        (S.CANCELLING, JobInput.REPORTED_FAILED, ApplyEvent(Event.FAIL, S.FAILED)),
        (S.CANCELLING, JobInput.REPORTED_CANCELLED, ApplyEvent(Event.COMPLETE, S.CANCELLED)),
        (S.RUNNING, JobInput.REPORTED_CANCELLED, ApplyEvent(Event.CANCEL, S.CANCELLED)),
        (S.PENDING, JobInput.SCHEDULER_SKIP, ApplyEvent(Event.SKIP, S.SKIPPED)),
        (S.RUNNING, JobInput.RUN_CANCEL_GRACEFUL, ApplyEvent(Event.CANCEL_GRACEFUL, S.CANCELLING)),
        (S.QUEUED, JobInput.RUN_CANCEL_GRACEFUL, ApplyEvent(Event.CANCEL, S.CANCELLED)),
        (S.RUNNING, JobInput.RUN_CANCEL_FORCE, ApplyEvent(Event.CANCEL, S.CANCELLED)),
        (S.CANCELLING, JobInput.RUN_CANCEL_FORCE, ApplyEvent(Event.CANCEL_FORCE, S.CANCELLED)),
        (S.RUNNING, JobInput.AGENT_DISCONNECTED, ApplyEvent(Event.RECOVER, S.RECOVERING)),
        (S.RECOVERING, JobInput.RECOVERY_EXPIRED, ApplyEvent(Event.FAIL, S.FAILED)),
        (S.RUNNING, JobInput.STALE_HEARTBEAT, ForceStatus(J.TIMED_OUT_STALE, (J.CANCELLING, J.RUNNING))),
        (S.QUEUED, JobInput.STALE_DISPATCH, ForceStatus(J.TIMED_OUT_STALE, (J.QUEUED,))),
        (S.HELD, JobInput.QUEUE_EXPIRED, ForceStatus(J.TIMED_OUT_STALE, (J.PENDING, J.QUEUED))),
        (S.QUEUED, JobInput.DRIFT_DROPPED, ForceStatus(J.DRIFT_DROPPED, (J.PENDING, J.QUEUED))),
    ],
)
def test_input_table(current: ExecutionState, job_input: JobInput, expected: object) -> None:
    assert decide_job_input(current, job_input) == expected


@pytest.mark.feature("EXE-04")
@pytest.mark.parametrize(
    ("current", "job_input"),
    [
        (S.RUNNING, JobInput.REPORTED_RUNNING),
        (S.SUCCESS, JobInput.REPORTED_FAILED),
        (J.TIMED_OUT_STALE, JobInput.REPORTED_SUCCESS),
        (S.QUEUED, JobInput.SCHEDULER_SKIP),
        (S.CANCELLING, JobInput.REPORTED_SUCCESS),
        (S.CANCELLING, JobInput.RUN_CANCEL_GRACEFUL),
        (S.SUCCESS, JobInput.STALE_HEARTBEAT),
        (S.RUNNING, JobInput.QUEUE_EXPIRED),
    ],
)
def test_late_or_invalid_inputs_are_dropped(current: ExecutionState | JobStatus, job_input: JobInput) -> None:
    assert isinstance(decide_job_input(current, job_input), Drop)


@pytest.mark.feature("EXE-04")
def test_reported_states() -> None:
    assert reported_job_input("running") is JobInput.REPORTED_RUNNING
    assert reported_job_input("cancelled") is JobInput.REPORTED_CANCELLED
    assert reported_job_input("pending") is None
    assert reported_job_input("timed_out_stale") is None
