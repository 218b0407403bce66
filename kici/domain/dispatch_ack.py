"""Dispatch acknowledgement: how one ``job.dispatch`` to one agent is resolved.

The orchestrator cannot tell a slow agent from a dead one, so every dispatch
must be answered within a deadline (10 s by default, counted from when the frame
was written). The first of ``job.ack``, ``job.reject``, ``job.status{running}``,
the deadline or the agent's disconnect resolves it, exactly once; anything later
is ignored. An answer can beat the arming of the deadline (the agent is fast and
the deadline is stamped after the write): it is remembered and resolves the
dispatch the moment the deadline would be armed.

A reject or a timeout puts the job back in the queue, up to five dispatches in
total; a job that no agent will take is failed rather than bounced forever. A
timeout also takes the agent out of routing and closes it with 4031, since an
agent that does not answer dispatches should not get more of them. A disconnect
hands the job to disconnect handling (recovery or requeue, see ``recovery``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import ClassVar

import attrs

MAX_DISPATCH_ATTEMPTS = 5
DEFAULT_ACK_TIMEOUT_MS = 10_000
MIN_ACK_TIMEOUT_MS = 1_000


class InvalidDispatchError(ValueError):
    """An attempt number out of range or a deadline that cannot be armed."""


def effective_ack_timeout_ms(org_timeout_ms: int | None, default_ms: int = DEFAULT_ACK_TIMEOUT_MS) -> int:
    """The org setting if present, else the server default; never below one second."""
    chosen = org_timeout_ms if org_timeout_ms is not None else default_ms
    return max(MIN_ACK_TIMEOUT_MS, chosen)


class AckPhase(enum.StrEnum):
    SENT = "sent"
    ARMED = "armed"
    RESOLVED = "resolved"


class Resolution(enum.StrEnum):
    ACK = "ack"
    REJECT = "reject"
    RUNNING = "running"
    TIMEOUT = "timeout"
    DISCONNECT = "disconnect"


class Outcome(enum.StrEnum):
    """What the dispatcher does once a dispatch is resolved."""

    STARTED = "started"
    REQUEUE = "requeue"
    FAIL = "fail"
    DISCONNECTED = "disconnected"


class _Action(enum.Enum):
    IGNORE = enum.auto()
    REMEMBER = enum.auto()
    ARM = enum.auto()
    RESOLVE = enum.auto()
    RESOLVE_IF_DUE = enum.auto()


class SignalKind(enum.Enum):
    ARM = enum.auto()
    ANSWER = enum.auto()
    DEADLINE = enum.auto()
    DISCONNECT = enum.auto()


_TRANSITIONS: Mapping[tuple[AckPhase, SignalKind], _Action] = {
    (AckPhase.SENT, SignalKind.ARM): _Action.ARM,
    (AckPhase.SENT, SignalKind.ANSWER): _Action.REMEMBER,
    (AckPhase.SENT, SignalKind.DEADLINE): _Action.IGNORE,
    (AckPhase.SENT, SignalKind.DISCONNECT): _Action.RESOLVE,
    (AckPhase.ARMED, SignalKind.ARM): _Action.IGNORE,
    (AckPhase.ARMED, SignalKind.ANSWER): _Action.RESOLVE,
    (AckPhase.ARMED, SignalKind.DEADLINE): _Action.RESOLVE_IF_DUE,
    (AckPhase.ARMED, SignalKind.DISCONNECT): _Action.RESOLVE,
    **{(AckPhase.RESOLVED, kind): _Action.IGNORE for kind in SignalKind},
}

_AGENT_ANSWERS = frozenset({Resolution.ACK, Resolution.REJECT, Resolution.RUNNING})


@attrs.frozen
class Arm:
    """The dispatch frame was written at ``now_ms``: start the deadline."""

    now_ms: float
    timeout_ms: float

    KIND: ClassVar[SignalKind] = SignalKind.ARM


@attrs.frozen
class Answer:
    """``job.ack``, ``job.reject{reason}`` or ``job.status{running}`` from the agent."""

    resolution: Resolution
    reason: str | None = None

    KIND: ClassVar[SignalKind] = SignalKind.ANSWER

    def __attrs_post_init__(self) -> None:
        if self.resolution not in _AGENT_ANSWERS:
            raise InvalidDispatchError(f"{self.resolution} is not an agent answer")


@attrs.frozen
class Deadline:
    """The deadline timer fired at ``now_ms`` (it may be stale)."""

    now_ms: float

    KIND: ClassVar[SignalKind] = SignalKind.DEADLINE


@attrs.frozen
class Disconnect:
    """The agent's connection closed before the dispatch was resolved."""

    KIND: ClassVar[SignalKind] = SignalKind.DISCONNECT


Signal = Arm | Answer | Deadline | Disconnect


@attrs.frozen
class Resolved:
    """The single resolution of one dispatch and what to do about it.

    ``close_agent``: take the agent out of routing and close it with
    ``CloseCode.DISPATCH_ACK_TIMEOUT`` (4031).
    """

    resolution: Resolution
    outcome: Outcome
    close_agent: bool = False
    reason: str | None = None
    failure_message: str | None = None


@attrs.frozen
class Dispatch:
    """One ``job.dispatch`` of ``job_id`` to ``agent_id``; ``attempt`` counts from 1."""

    job_id: str
    agent_id: str
    attempt: int = 1
    phase: AckPhase = AckPhase.SENT
    deadline_ms: float | None = None
    early: Answer | None = None
    resolved: Resolved | None = None

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.attempt <= MAX_DISPATCH_ATTEMPTS:
            raise InvalidDispatchError(f"attempt must be in [1, {MAX_DISPATCH_ATTEMPTS}], got {self.attempt}")

    def redispatch(self, agent_id: str) -> Dispatch:
        """The next attempt after a requeue (possibly to another agent)."""
        if self.resolved is None or self.resolved.outcome is not Outcome.REQUEUE:
            raise InvalidDispatchError("only a requeued dispatch can be re-dispatched")
        return Dispatch(self.job_id, agent_id, self.attempt + 1)


def exhausted_message(attempts: int, context: str) -> str:
    return f"Job failed: re-dispatch attempts exhausted after {attempts} attempts ({context})"


def _resolve(dispatch: Dispatch, resolution: Resolution, reason: str | None) -> Resolved:
    if resolution in (Resolution.ACK, Resolution.RUNNING):
        return Resolved(resolution, Outcome.STARTED, reason=reason)
    if resolution is Resolution.DISCONNECT:
        return Resolved(resolution, Outcome.DISCONNECTED, reason=reason)
    timed_out = resolution is Resolution.TIMEOUT
    if dispatch.attempt < MAX_DISPATCH_ATTEMPTS:
        return Resolved(resolution, Outcome.REQUEUE, close_agent=timed_out, reason=reason)
    context = (
        f"agent {dispatch.agent_id} did not acknowledge the dispatch"
        if timed_out
        else f"agent {dispatch.agent_id} rejected it: {reason or 'no reason given'}"
    )
    return Resolved(
        resolution,
        Outcome.FAIL,
        close_agent=timed_out,
        reason=reason,
        failure_message=exhausted_message(dispatch.attempt, context),
    )


def _finish(dispatch: Dispatch, resolution: Resolution, reason: str | None) -> tuple[Dispatch, Resolved]:
    resolved = _resolve(dispatch, resolution, reason)
    return attrs.evolve(dispatch, phase=AckPhase.RESOLVED, resolved=resolved), resolved


def advance(dispatch: Dispatch, signal: Signal) -> tuple[Dispatch, Resolved | None]:
    """The dispatch after ``signal``, and its resolution if this signal resolved it.

    Across any sequence of signals at most one call returns a resolution.
    """
    match _TRANSITIONS[(dispatch.phase, signal.KIND)], signal:
        case _Action.REMEMBER, Answer() if dispatch.early is None:
            return attrs.evolve(dispatch, early=signal), None
        case _Action.ARM, Arm(now_ms=now_ms, timeout_ms=timeout_ms):
            if timeout_ms <= 0:
                raise InvalidDispatchError(f"timeout_ms must be > 0, got {timeout_ms}")
            if dispatch.early is not None:
                return _finish(dispatch, dispatch.early.resolution, dispatch.early.reason)
            return attrs.evolve(dispatch, phase=AckPhase.ARMED, deadline_ms=now_ms + timeout_ms), None
        case _Action.RESOLVE_IF_DUE, Deadline(now_ms=now_ms):
            if dispatch.deadline_ms is None or now_ms < dispatch.deadline_ms:
                return dispatch, None
            return _finish(dispatch, Resolution.TIMEOUT, None)
        case _Action.RESOLVE, Answer(resolution=resolution, reason=reason):
            return _finish(dispatch, resolution, reason)
        case _Action.RESOLVE, Disconnect():
            return _finish(dispatch, Resolution.DISCONNECT, None)
    return dispatch, None


class AgentAnswer(enum.StrEnum):
    """What the agent replies to ``job.dispatch`` (the reject reasons are the wire values)."""

    ACK = "ack"
    DRAINING = "draining"
    BUSY = "busy"


def agent_answer(*, draining: bool, active_jobs: int, max_concurrency: int) -> AgentAnswer:
    """A draining agent takes nothing; a full one is busy; otherwise it acks before cloning."""
    if draining:
        return AgentAnswer.DRAINING
    if active_jobs >= max_concurrency:
        return AgentAnswer.BUSY
    return AgentAnswer.ACK
