"""Dispatch acknowledgement (PRO-10), spec 20 §12 and §20 invariant 11."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.dispatch_ack import (
    MAX_DISPATCH_ATTEMPTS,
    AckPhase,
    Answer,
    Arm,
    Deadline,
    Disconnect,
    Dispatch,
    Outcome,
    Resolution,
    Resolved,
    Signal,
    advance,
)

pytestmark = pytest.mark.feature("PRO-10")

answers = st.builds(
    Answer,
    resolution=st.sampled_from([Resolution.ACK, Resolution.REJECT, Resolution.RUNNING]),
    reason=st.one_of(st.none(), st.sampled_from(["busy", "draining"])),
)
signals: st.SearchStrategy[Signal] = st.one_of(
    st.builds(Arm, now_ms=st.integers(0, 30_000), timeout_ms=st.integers(1_000, 20_000)),
    answers,
    st.builds(Deadline, now_ms=st.integers(0, 60_000)),
    st.just(Disconnect()),
)
attempts = st.integers(1, MAX_DISPATCH_ATTEMPTS)


def _first_resolution(sequence: list[Signal]) -> tuple[Resolution, str | None] | None:
    """An independent reading of spec §12: which signal settles the dispatch."""
    early: Answer | None = None
    deadline: float | None = None
    for signal in sequence:
        if isinstance(signal, Disconnect):
            return Resolution.DISCONNECT, None
        if isinstance(signal, Arm) and deadline is None:
            if early is not None:
                return early.resolution, early.reason
            deadline = signal.now_ms + signal.timeout_ms
        elif isinstance(signal, Answer):
            if deadline is not None:
                return signal.resolution, signal.reason
            early = early or signal
        elif isinstance(signal, Deadline) and deadline is not None and signal.now_ms >= deadline:
            return Resolution.TIMEOUT, None
    return None


@given(attempts, st.lists(signals, max_size=12))
def test_every_dispatch_resolves_at_most_once_by_its_first_settling_signal(
    attempt: int, sequence: list[Signal]
) -> None:
    dispatch = Dispatch("job", "agent", attempt)
    resolutions: list[Resolved] = []
    for signal in sequence:
        before = dispatch
        dispatch, resolved = advance(dispatch, signal)
        if resolved is not None:
            resolutions.append(resolved)
        if before.phase is AckPhase.RESOLVED:
            assert dispatch == before
    expected = _first_resolution(sequence)
    assert len(resolutions) == (0 if expected is None else 1)
    assert (dispatch.phase is AckPhase.RESOLVED) == (expected is not None)
    if expected is not None:
        (resolved,) = resolutions
        assert dispatch.resolved == resolved
        assert (resolved.resolution, resolved.reason) == expected


@given(attempts, st.sampled_from(list(Resolution)), st.one_of(st.none(), st.text(max_size=8)))
def test_outcome_of_each_resolution(attempt: int, resolution: Resolution, reason: str | None) -> None:
    dispatch = Dispatch("job", "agent", attempt)
    if resolution is Resolution.DISCONNECT:
        _, resolved = advance(dispatch, Disconnect())
    elif resolution is Resolution.TIMEOUT:
        armed, _ = advance(dispatch, Arm(0, 10_000))
        _, resolved = advance(armed, Deadline(10_000))
    else:
        armed, _ = advance(dispatch, Arm(0, 10_000))
        _, resolved = advance(armed, Answer(resolution, reason))
    assert resolved is not None
    assert resolved.close_agent is (resolution is Resolution.TIMEOUT)
    if resolution in (Resolution.ACK, Resolution.RUNNING):
        assert resolved.outcome is Outcome.STARTED
    elif resolution is Resolution.DISCONNECT:
        assert resolved.outcome is Outcome.DISCONNECTED
    elif attempt < MAX_DISPATCH_ATTEMPTS:
        assert resolved.outcome is Outcome.REQUEUE
        assert resolved.failure_message is None
    else:
        assert resolved.outcome is Outcome.FAIL
        assert resolved.failure_message is not None
        assert resolved.failure_message.startswith(
            "Job failed: re-dispatch attempts exhausted after 5 attempts ("
        )


agent_behaviours = st.lists(
    st.sampled_from(["ack", "running", "reject", "timeout", "disconnect", "early-ack", "early-reject"]),
    min_size=1,
    max_size=8,
)


@given(agent_behaviours)
def test_a_job_is_dispatched_at_most_five_times_and_settles_once(behaviours: list[str]) -> None:
    dispatch = Dispatch("job", "agent-0")
    sent = 1
    final: Resolved | None = None
    for n, behaviour in enumerate(behaviours):
        if behaviour.startswith("early-"):
            kind = Resolution.ACK if behaviour == "early-ack" else Resolution.REJECT
            dispatch, resolved = advance(dispatch, Answer(kind, "busy"))
            assert resolved is None
            dispatch, resolved = advance(dispatch, Arm(n * 20_000, 10_000))
        else:
            dispatch, resolved = advance(dispatch, Arm(n * 20_000, 10_000))
            assert resolved is None
            signal: Signal = {
                "ack": Answer(Resolution.ACK),
                "running": Answer(Resolution.RUNNING),
                "reject": Answer(Resolution.REJECT, "busy"),
                "timeout": Deadline(n * 20_000 + 10_000),
                "disconnect": Disconnect(),
            }[behaviour]
            dispatch, resolved = advance(dispatch, signal)
        assert resolved is not None
        if resolved.outcome is not Outcome.REQUEUE:
            final = resolved
            break
        dispatch = dispatch.redispatch(f"agent-{n + 1}")
        sent += 1
    assert sent <= MAX_DISPATCH_ATTEMPTS
    if final is not None and final.outcome is Outcome.FAIL:
        assert sent == MAX_DISPATCH_ATTEMPTS
