"""P-SM1..P-SM8: the job state machine (EXE-01)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.execution.machine import (
    TRANSITIONS,
    InvalidTransitionError,
    can_transition,
    is_terminal,
    transition,
    valid_events,
)
from kici.domain.execution.states import TERMINAL_EXECUTION_STATES, Event, ExecutionState
from tests.strategies.execution import events, execution_states

S = ExecutionState
E = Event
ALL_PAIRS = list(itertools.product(ExecutionState, Event))
TRANSIENT = [s for s in ExecutionState if s not in TERMINAL_EXECUTION_STATES]

pytestmark = pytest.mark.feature("EXE-01")


def successors(state: ExecutionState) -> set[ExecutionState]:
    return {transition(state, e) for e in valid_events(state)}


def reachable(start: ExecutionState) -> set[ExecutionState]:
    seen = {start}
    frontier = [start]
    while frontier:
        for nxt in successors(frontier.pop()):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return seen


def test_p_sm1_exactly_25_valid_pairs() -> None:
    valid = [(s, e) for s, e in ALL_PAIRS if can_transition(s, e)]
    assert len(valid) == 25
    assert set(valid) == set(TRANSITIONS)


@given(execution_states, events)
def test_p_sm1_transition_raises_iff_not_can_transition(state: ExecutionState, event: Event) -> None:
    if can_transition(state, event):
        assert transition(state, event) == TRANSITIONS[(state, event)]
        assert event in valid_events(state)
    else:
        with pytest.raises(InvalidTransitionError):
            transition(state, event)
        assert event not in valid_events(state)


def test_p_sm1_valid_events_agree_with_can_transition_everywhere() -> None:
    for state in ExecutionState:
        assert valid_events(state) == frozenset(e for e in Event if can_transition(state, e))


@given(execution_states)
def test_p_sm2_terminal_iff_no_valid_events(state: ExecutionState) -> None:
    assert is_terminal(state) == (valid_events(state) == frozenset())


def test_p_sm2_terminal_states_are_the_four() -> None:
    assert {s for s in ExecutionState if is_terminal(s)} == {S.SUCCESS, S.FAILED, S.CANCELLED, S.SKIPPED}


@given(st.lists(st.tuples(execution_states, events), max_size=30))
def test_p_sm3_pure_and_table_immutable(calls: list[tuple[ExecutionState, Event]]) -> None:
    snapshot = dict(TRANSITIONS)
    results = []
    for state, event in calls:
        results.append(transition(state, event) if can_transition(state, event) else None)
        valid_events(state)
    again = [transition(s, e) if can_transition(s, e) else None for s, e in calls]
    assert results == again
    assert dict(TRANSITIONS) == snapshot


def test_p_sm3_table_rejects_writes() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[(S.SUCCESS, E.START)] = S.RUNNING  # type: ignore[index]
    assert isinstance(valid_events(S.PENDING), frozenset)


def test_p_sm4_cancel_valid_exactly_from_the_six_transient_states() -> None:
    assert {s for s in ExecutionState if can_transition(s, E.CANCEL)} == {
        S.PENDING,
        S.QUEUED,
        S.RUNNING,
        S.RECOVERING,
        S.HELD,
        S.WAITING,
    }


def test_p_sm4_cancelling_accepts_only_terminal_exits() -> None:
    assert valid_events(S.CANCELLING) == {E.CANCEL_FORCE, E.COMPLETE, E.FAIL}
    assert all(is_terminal(transition(S.CANCELLING, e)) for e in valid_events(S.CANCELLING))


@given(st.sampled_from(TRANSIENT))
def test_p_sm4_one_cancel_event_reaches_a_terminal_state(state: ExecutionState) -> None:
    outcomes = [transition(state, e) for e in (E.CANCEL, E.CANCEL_FORCE) if can_transition(state, e)]
    assert outcomes
    assert all(is_terminal(s) for s in outcomes)


@pytest.mark.parametrize(
    ("event", "only_from"),
    [
        (E.SUCCEED, {S.RUNNING}),
        (E.SKIP, {S.PENDING}),
        (E.HOLD, {S.PENDING}),
        (E.WAIT, {S.PENDING}),
        (E.APPROVE, {S.HELD}),
        (E.REJECT, {S.HELD}),
        (E.EXPIRE, {S.HELD}),
        (E.TIMER_DONE, {S.WAITING}),
        (E.RECOVER, {S.RUNNING}),
    ],
)
def test_p_sm5_event_sources(event: Event, only_from: set[ExecutionState]) -> None:
    assert {s for s in ExecutionState if can_transition(s, event)} == only_from


@given(st.lists(events, max_size=40))
def test_p_sm6_random_sequences_never_leave_a_terminal_state(sequence: list[Event]) -> None:
    state = S.PENDING
    visited = [state]
    for event in sequence:
        if not can_transition(state, event):
            continue
        assert not is_terminal(state)
        state = transition(state, event)
        visited.append(state)
    revisited = {s for s in visited if visited.count(s) > 1}
    assert revisited <= {S.RUNNING, S.RECOVERING}


def test_p_sm6_only_cycle_is_running_recovering() -> None:
    on_cycle = {s for s in ExecutionState if any(s in reachable(n) for n in successors(s))}
    assert on_cycle == {S.RUNNING, S.RECOVERING}


def test_p_sm7_everything_reachable_from_pending() -> None:
    assert reachable(S.PENDING) == set(ExecutionState)


@given(execution_states)
def test_p_sm7_every_state_can_reach_a_terminal_state(state: ExecutionState) -> None:
    assert reachable(state) & TERMINAL_EXECUTION_STATES


@given(execution_states, events)
def test_p_sm8_error_carries_state_and_event(state: ExecutionState, event: Event) -> None:
    if can_transition(state, event):
        return
    with pytest.raises(InvalidTransitionError) as info:
        transition(state, event)
    assert info.value.state is state
    assert info.value.event is event
    assert (
        str(info.value) == f"Invalid transition: cannot apply event '{event.value}' in state '{state.value}'"
    )
    assert isinstance(info.value, ValueError)
