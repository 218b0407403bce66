"""P-RUN1..P-RUN3, the EXE-04 job-input mapping and the run lifecycle table."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.execution.machine import can_transition, is_terminal, transition
from kici.domain.execution.run_status import (
    DRIFT_FAILURE_REASON,
    RUN_TRANSITIONS,
    ApplyEvent,
    Drop,
    ForceStatus,
    IncompleteRunError,
    JobInput,
    RunEvent,
    can_run_transition,
    completion_event,
    completion_from_memory,
    completion_from_rows,
    compute_run_status,
    decide_job_input,
    is_run_complete,
    is_run_terminal,
    run_completion,
    run_transition,
)
from kici.domain.execution.states import (
    FAILING_JOB_STATES,
    TERMINAL_JOB_STATES,
    CheckMode,
    Event,
    ExecutionState,
    JobStatus,
    RunStatus,
    TrackedJobState,
    persisted_job_status,
)
from tests.strategies.execution import (
    check_modes,
    job_names,
    job_status_maps,
    tracked_job_states,
)

job_inputs = st.sampled_from(list(JobInput))
run_statuses = st.sampled_from(list(RunStatus))
run_events = st.sampled_from(list(RunEvent))
non_drift_modes = st.sampled_from([CheckMode.APPLY, CheckMode.CHECK])


@pytest.mark.feature("EXE-03")
@given(job_status_maps(terminal=True), non_drift_modes, st.booleans())
def test_p_run1_precedence_failed_over_cancelled_over_success(
    jobs: dict[str, JobStatus], mode: CheckMode, drift: bool
) -> None:
    status, reason = compute_run_status(jobs, mode, drift)
    failing = sorted(n for n, s in jobs.items() if s in FAILING_JOB_STATES)
    if failing:
        assert (status, reason) == (RunStatus.FAILED, "Failed jobs: " + ", ".join(failing))
    elif JobStatus.CANCELLED in jobs.values():
        assert (status, reason) == (RunStatus.CANCELLED, None)
    else:
        assert (status, reason) == (RunStatus.SUCCESS, None)


@pytest.mark.feature("EXE-03")
@given(job_status_maps(terminal=True), check_modes, st.booleans(), st.randoms(use_true_random=False))
def test_p_run1_order_independent(
    jobs: dict[str, JobStatus], mode: CheckMode, drift: bool, rnd: random.Random
) -> None:
    items = list(jobs.items())
    rnd.shuffle(items)
    assert compute_run_status(dict(items), mode, drift) == compute_run_status(jobs, mode, drift)


@pytest.mark.feature("EXE-03")
@given(job_status_maps(terminal=True))
def test_p_run1_fail_on_drift_wins_over_everything(jobs: dict[str, JobStatus]) -> None:
    assert compute_run_status(jobs, CheckMode.CHECK_FAIL_ON_DRIFT, True) == (
        RunStatus.FAILED,
        DRIFT_FAILURE_REASON,
    )
    assert compute_run_status(jobs, CheckMode.CHECK_FAIL_ON_DRIFT, False) == compute_run_status(
        jobs, CheckMode.APPLY, True
    )


@pytest.mark.feature("EXE-03")
@given(
    st.dictionaries(job_names, tracked_job_states, max_size=8),
    check_modes,
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_p_run2_memory_and_rows_agree(
    jobs: dict[str, TrackedJobState], mode: CheckMode, drift: bool, rnd: random.Random
) -> None:
    rows = [(name, persisted_job_status(state).value) for name, state in jobs.items()]
    rnd.shuffle(rows)
    assert completion_from_memory(jobs, mode, drift) == completion_from_rows(rows, mode, drift)


@pytest.mark.feature("EXE-03")
@given(st.dictionaries(job_names, tracked_job_states, max_size=8))
def test_p_run3_never_complete_with_open_or_zero_jobs(jobs: dict[str, TrackedJobState]) -> None:
    persisted = {n: persisted_job_status(s) for n, s in jobs.items()}
    complete = is_run_complete(jobs.values())
    assert complete == (bool(jobs) and all(s in TERMINAL_JOB_STATES for s in persisted.values()))
    outcome = run_completion(persisted, CheckMode.APPLY, False)
    assert (outcome is not None) == complete
    if not complete and jobs and not all(s in TERMINAL_JOB_STATES for s in persisted.values()):
        with pytest.raises(IncompleteRunError):
            compute_run_status(persisted, CheckMode.APPLY, False)


@pytest.mark.feature("EXE-04")
@given(tracked_job_states, job_inputs)
def test_decisions_respect_the_machine_and_terminal_rows(
    current: TrackedJobState, job_input: JobInput
) -> None:
    decision = decide_job_input(current, job_input)
    terminal = persisted_job_status(current) in TERMINAL_JOB_STATES
    if isinstance(decision, ApplyEvent):
        assert isinstance(current, ExecutionState)
        assert can_transition(current, decision.event)
        assert decision.to is transition(current, decision.event)
    elif isinstance(decision, ForceStatus):
        assert decision.status in {JobStatus.TIMED_OUT_STALE, JobStatus.DRIFT_DROPPED}
        assert persisted_job_status(current) in decision.expected
        assert not set(decision.expected) & TERMINAL_JOB_STATES
    else:
        assert isinstance(decision, Drop)
    if terminal:
        assert isinstance(decision, Drop)


@pytest.mark.feature("EXE-04")
@given(tracked_job_states)
def test_run_cancel_always_makes_progress(current: TrackedJobState) -> None:
    if persisted_job_status(current) in TERMINAL_JOB_STATES:
        return
    assert isinstance(current, ExecutionState)
    force = decide_job_input(current, JobInput.RUN_CANCEL_FORCE)
    assert isinstance(force, ApplyEvent)
    assert is_terminal(force.to)
    graceful = decide_job_input(current, JobInput.RUN_CANCEL_GRACEFUL)
    if current is ExecutionState.CANCELLING:
        assert isinstance(graceful, Drop)
    else:
        assert isinstance(graceful, ApplyEvent)
        assert graceful.to in {ExecutionState.CANCELLED, ExecutionState.CANCELLING}
        assert (graceful.event is Event.CANCEL_GRACEFUL) == (current is ExecutionState.RUNNING)


@pytest.mark.feature("EXE-04")
@given(tracked_job_states)
def test_reported_cancelled_completes_only_a_cancelling_job(current: TrackedJobState) -> None:
    decision = decide_job_input(current, JobInput.REPORTED_CANCELLED)
    if isinstance(decision, ApplyEvent):
        assert decision.to is ExecutionState.CANCELLED
        assert (decision.event is Event.COMPLETE) == (current is ExecutionState.CANCELLING)


@pytest.mark.feature("EXE-04")
@given(st.lists(job_inputs, max_size=30))
def test_tracker_replay_never_leaves_a_terminal_status(inputs: list[JobInput]) -> None:
    current: TrackedJobState = ExecutionState.PENDING
    reached_terminal = False
    for job_input in inputs:
        decision = decide_job_input(current, job_input)
        if reached_terminal:
            assert isinstance(decision, Drop)
            continue
        if isinstance(decision, ApplyEvent):
            current = decision.to
        elif isinstance(decision, ForceStatus):
            current = decision.status
        reached_terminal = persisted_job_status(current) in TERMINAL_JOB_STATES


@pytest.mark.feature("EXE-03")
@given(st.lists(run_events, max_size=20))
def test_run_lifecycle_never_leaves_a_terminal_status(sequence: list[RunEvent]) -> None:
    status = RunStatus.PENDING
    for event in sequence:
        if is_run_terminal(status):
            assert not can_run_transition(status, event)
        if can_run_transition(status, event):
            status = run_transition(status, event)


@pytest.mark.feature("EXE-03")
@given(run_statuses)
def test_every_open_run_can_be_force_cancelled(status: RunStatus) -> None:
    if is_run_terminal(status):
        assert not any(s is status for s, _ in RUN_TRANSITIONS)
    else:
        assert run_transition(status, RunEvent.CANCEL_FORCE) is RunStatus.CANCELLED


@pytest.mark.feature("EXE-03")
@given(job_status_maps(terminal=True, min_size=1), check_modes, st.booleans())
def test_completion_event_records_the_computed_status(
    jobs: dict[str, JobStatus], mode: CheckMode, drift: bool
) -> None:
    outcome = run_completion(jobs, mode, drift)
    assert outcome is not None
    for start in (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.CANCELLING):
        assert run_transition(start, completion_event(outcome)) is outcome.status
