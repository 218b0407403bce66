"""The machine's table and the status vocabularies, by example (EXE-01, EXE-02)."""

from __future__ import annotations

import pytest

from kici.domain.execution.machine import InvalidTransitionError, transition, valid_events
from kici.domain.execution.states import (
    INIT_FAILURE_MESSAGE_MAX,
    TERMINAL_JOB_STATES,
    TERMINAL_RUN_STATES,
    TERMINAL_STEP_STATES,
    CheckMode,
    CheckStepOutcome,
    Event,
    ExecutionState,
    InitFailure,
    InitFailureCategory,
    InitFailureScope,
    InvalidInitFailureError,
    JobStatus,
    RunStatus,
    StepConcurrencyKind,
    StepStatus,
    StepType,
    TimeoutReason,
    init_step_number,
    init_step_type,
    is_step_type,
    persisted_job_status,
)

S = ExecutionState
E = Event


@pytest.mark.feature("EXE-01")
@pytest.mark.parametrize(
    ("state", "event", "target"),
    [
        (S.PENDING, E.ENQUEUE, S.QUEUED),
        (S.PENDING, E.HOLD, S.HELD),
        (S.HELD, E.APPROVE, S.QUEUED),
        (S.HELD, E.EXPIRE, S.CANCELLED),
        (S.WAITING, E.TIMER_DONE, S.QUEUED),
        (S.QUEUED, E.FAIL, S.FAILED),
        (S.RUNNING, E.CANCEL_GRACEFUL, S.CANCELLING),
        (S.RUNNING, E.RECOVER, S.RECOVERING),
        (S.RECOVERING, E.START, S.RUNNING),
        (S.CANCELLING, E.COMPLETE, S.CANCELLED),
        (S.CANCELLING, E.FAIL, S.FAILED),
    ],
)
def test_transitions_from_the_table(state: ExecutionState, event: Event, target: ExecutionState) -> None:
    assert transition(state, event) is target


@pytest.mark.feature("EXE-01")
def test_exact_error_message() -> None:
    with pytest.raises(
        InvalidTransitionError, match=r"^Invalid transition: cannot apply event 'SUCCEED' in state 'pending'$"
    ):
        transition(S.PENDING, E.SUCCEED)


@pytest.mark.feature("EXE-01")
def test_string_values_work_as_members() -> None:
    assert transition(S("queued"), E("START")) is S.RUNNING
    assert valid_events(S.WAITING) == {E.TIMER_DONE, E.CANCEL}


@pytest.mark.feature("EXE-01")
def test_sizes_of_the_vocabularies() -> None:
    assert len(ExecutionState) == 11
    assert len(Event) == 16


@pytest.mark.feature("EXE-02")
def test_job_status_vocabulary() -> None:
    assert [s.value for s in JobStatus] == [
        "pending",
        "queued",
        "running",
        "recovering",
        "cancelling",
        "success",
        "failed",
        "cancelled",
        "skipped",
        "timed_out_stale",
        "drift_dropped",
    ]
    assert {s.value for s in TERMINAL_JOB_STATES} == {
        "success",
        "failed",
        "cancelled",
        "skipped",
        "timed_out_stale",
        "drift_dropped",
    }


@pytest.mark.feature("EXE-02")
def test_run_and_step_vocabularies() -> None:
    assert {s.value for s in RunStatus} == {
        "pending",
        "running",
        "success",
        "failed",
        "cancelled",
        "cancelling",
        "held",
    }
    assert {s.value for s in TERMINAL_RUN_STATES} == {"success", "failed", "cancelled"}
    assert {s.value for s in StepStatus} == {
        "running",
        "success",
        "failed",
        "skipped",
        "pending",
        "cancelled",
    }
    assert {s.value for s in TERMINAL_STEP_STATES} == {"success", "failed", "skipped", "cancelled"}
    assert {k.value for k in StepConcurrencyKind} == {"sequential", "parallel-child", "parallel-group"}
    assert {r.value for r in TimeoutReason} == {"job_timeout", "workflow_timeout"}
    assert {m.value for m in CheckMode} == {"apply", "check", "check-fail-on-drift"}
    assert {o.value for o in CheckStepOutcome} == {"skipped", "applied", "declined", "dry-run", "no_check"}


@pytest.mark.feature("EXE-02")
def test_step_types_including_init() -> None:
    assert {t.value for t in StepType} == {
        "step",
        "hook:onCancel",
        "hook:cleanup",
        "hook:onSuccess",
        "hook:onFailure",
        "hook:beforeStep",
        "hook:afterStep",
        "cache:restore",
        "cache:save",
    }
    assert init_step_type(3) == "init:3"
    assert init_step_number("init:3") == 3
    assert init_step_number("init:03") is None
    assert init_step_number("init:") is None
    assert init_step_number("init:-1") is None
    assert init_step_number("step") is None
    assert is_step_type("init:0")
    assert is_step_type("hook:cleanup")
    assert not is_step_type("hook:other")
    with pytest.raises(ValueError, match=">= 0"):
        init_step_type(-1)


@pytest.mark.feature("EXE-02")
def test_held_and_waiting_persist_as_pending() -> None:
    assert persisted_job_status(S.HELD) is JobStatus.PENDING
    assert persisted_job_status(S.WAITING) is JobStatus.PENDING
    assert persisted_job_status(S.CANCELLING) is JobStatus.CANCELLING
    assert persisted_job_status(JobStatus.DRIFT_DROPPED) is JobStatus.DRIFT_DROPPED


@pytest.mark.feature("EXE-02")
def test_init_failure_model() -> None:
    failure = InitFailure(InitFailureScope.JOB, InitFailureCategory.NO_AGENT, "no agent", "build")
    assert failure.job_name == "build"
    run_failure = InitFailure("run", "lock_resolution", "lock file missing")  # type: ignore[arg-type]
    assert run_failure.scope is InitFailureScope.RUN
    assert run_failure.category is InitFailureCategory.LOCK_RESOLUTION


@pytest.mark.feature("EXE-02")
def test_init_failure_rejects_category_of_the_other_scope() -> None:
    with pytest.raises(InvalidInitFailureError, match="not a run init failure category"):
        InitFailure(InitFailureScope.RUN, InitFailureCategory.DYNAMIC_EVAL, "boom")
    with pytest.raises(InvalidInitFailureError):
        InitFailure(InitFailureScope.JOB, InitFailureCategory.SECRET_RESOLUTION, "boom")


@pytest.mark.feature("EXE-02")
def test_init_failure_message_limit() -> None:
    InitFailure(InitFailureScope.JOB, InitFailureCategory.NO_AGENT, "x" * INIT_FAILURE_MESSAGE_MAX)
    with pytest.raises(InvalidInitFailureError, match="2001 characters"):
        InitFailure(InitFailureScope.JOB, InitFailureCategory.NO_AGENT, "x" * 2001)
    cut = InitFailure.of(InitFailureScope.JOB, InitFailureCategory.NO_AGENT, "y" * 5000)
    assert len(cut.message) == INIT_FAILURE_MESSAGE_MAX
    with pytest.raises(InvalidInitFailureError):
        InitFailure(InitFailureScope.JOB, InitFailureCategory.NO_AGENT, "m", "")
    with pytest.raises(ValueError, match="bogus"):
        InitFailure(InitFailureScope.JOB, "bogus", "m")  # type: ignore[arg-type]
