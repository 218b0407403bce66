"""Dispatch acknowledgement examples, spec 20 §12 (PRO-10)."""

from __future__ import annotations

import pytest

from kici.domain.dispatch_ack import (
    DEFAULT_ACK_TIMEOUT_MS,
    MAX_DISPATCH_ATTEMPTS,
    AckPhase,
    AgentAnswer,
    Answer,
    Arm,
    Deadline,
    Disconnect,
    Dispatch,
    InvalidDispatchError,
    Outcome,
    Resolution,
    Resolved,
    advance,
    agent_answer,
    effective_ack_timeout_ms,
    exhausted_message,
)

pytestmark = pytest.mark.feature("PRO-10")


def test_constants() -> None:
    assert (MAX_DISPATCH_ATTEMPTS, DEFAULT_ACK_TIMEOUT_MS) == (5, 10_000)


@pytest.mark.parametrize(
    ("org", "default", "expected"),
    [(None, 10_000, 10_000), (2_500, 10_000, 2_500), (10, 10_000, 1_000), (None, 5, 1_000)],
)
def test_effective_timeout(org: int | None, default: int, expected: int) -> None:
    assert effective_ack_timeout_ms(org, default) == expected


def test_deadline_fires_only_when_due() -> None:
    dispatch, _ = advance(Dispatch("j", "a"), Arm(1_000, 10_000))
    assert dispatch.phase is AckPhase.ARMED
    assert dispatch.deadline_ms == 11_000
    assert advance(dispatch, Deadline(10_999)) == (dispatch, None)
    _, resolved = advance(dispatch, Deadline(11_000))
    assert resolved == Resolved(Resolution.TIMEOUT, Outcome.REQUEUE, close_agent=True)


def test_an_early_ack_resolves_at_arming() -> None:
    dispatch, resolved = advance(Dispatch("j", "a"), Answer(Resolution.ACK))
    assert resolved is None
    dispatch, resolved = advance(dispatch, Answer(Resolution.REJECT, "busy"))
    assert resolved is None
    dispatch, resolved = advance(dispatch, Arm(5, 10_000))
    assert resolved == Resolved(Resolution.ACK, Outcome.STARTED)
    assert dispatch.deadline_ms is None


def test_running_status_counts_as_an_ack_and_later_answers_are_ignored() -> None:
    dispatch, _ = advance(Dispatch("j", "a"), Arm(0, 10_000))
    dispatch, resolved = advance(dispatch, Answer(Resolution.RUNNING))
    assert resolved is not None
    assert resolved.outcome is Outcome.STARTED
    assert advance(dispatch, Answer(Resolution.ACK)) == (dispatch, None)
    assert advance(dispatch, Deadline(99_999)) == (dispatch, None)
    assert advance(dispatch, Disconnect()) == (dispatch, None)


def test_fifth_reject_fails_the_job() -> None:
    dispatch = Dispatch("j", "a")
    for n in range(MAX_DISPATCH_ATTEMPTS):
        dispatch, _ = advance(dispatch, Arm(0, 10_000))
        dispatch, resolved = advance(dispatch, Answer(Resolution.REJECT, "busy"))
        assert resolved is not None
        if n < MAX_DISPATCH_ATTEMPTS - 1:
            assert resolved.outcome is Outcome.REQUEUE
            dispatch = dispatch.redispatch(f"agent-{n}")
    assert resolved.outcome is Outcome.FAIL
    assert resolved.failure_message == (
        "Job failed: re-dispatch attempts exhausted after 5 attempts (agent agent-3 rejected it: busy)"
    )
    with pytest.raises(InvalidDispatchError):
        dispatch.redispatch("another")


def test_disconnect_hands_over_to_recovery() -> None:
    _, resolved = advance(Dispatch("j", "a"), Disconnect())
    assert resolved == Resolved(Resolution.DISCONNECT, Outcome.DISCONNECTED)


def test_exhausted_message() -> None:
    assert exhausted_message(5, "ctx") == "Job failed: re-dispatch attempts exhausted after 5 attempts (ctx)"


def test_illegal_values_are_typed_errors() -> None:
    with pytest.raises(InvalidDispatchError):
        Dispatch("j", "a", 0)
    with pytest.raises(InvalidDispatchError):
        Dispatch("j", "a", 6)
    with pytest.raises(InvalidDispatchError):
        Answer(Resolution.TIMEOUT)
    with pytest.raises(InvalidDispatchError):
        advance(Dispatch("j", "a"), Arm(0, 0))
    with pytest.raises(InvalidDispatchError):
        Dispatch("j", "a").redispatch("b")


@pytest.mark.parametrize(
    ("draining", "active", "limit", "answer"),
    [
        (True, 0, 1, AgentAnswer.DRAINING),
        (False, 1, 1, AgentAnswer.BUSY),
        (False, 0, 1, AgentAnswer.ACK),
        (False, 2, 4, AgentAnswer.ACK),
    ],
)
def test_agent_answer(draining: bool, active: int, limit: int, answer: AgentAnswer) -> None:
    assert agent_answer(draining=draining, active_jobs=active, max_concurrency=limit) is answer
