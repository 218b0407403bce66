"""The job state machine (EXE-01) as a table.

The table is the single source of truth: every tracker, the stale detector and
the recovery path ask it (``can_transition``) before writing a status, so an
invalid or late input is dropped instead of corrupting a terminal row.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from kici.domain.execution.states import TERMINAL_EXECUTION_STATES, Event, ExecutionState

_S = ExecutionState
_E = Event

TRANSITIONS: Mapping[tuple[ExecutionState, Event], ExecutionState] = MappingProxyType(
    {
        (_S.PENDING, _E.ENQUEUE): _S.QUEUED,
        (_S.PENDING, _E.CANCEL): _S.CANCELLED,
        (_S.PENDING, _E.SKIP): _S.SKIPPED,
        (_S.PENDING, _E.HOLD): _S.HELD,
        (_S.PENDING, _E.WAIT): _S.WAITING,
        (_S.HELD, _E.APPROVE): _S.QUEUED,
        (_S.HELD, _E.REJECT): _S.CANCELLED,
        (_S.HELD, _E.EXPIRE): _S.CANCELLED,
        (_S.HELD, _E.CANCEL): _S.CANCELLED,
        (_S.WAITING, _E.TIMER_DONE): _S.QUEUED,
        (_S.WAITING, _E.CANCEL): _S.CANCELLED,
        (_S.QUEUED, _E.START): _S.RUNNING,
        (_S.QUEUED, _E.FAIL): _S.FAILED,
        (_S.QUEUED, _E.CANCEL): _S.CANCELLED,
        (_S.RUNNING, _E.SUCCEED): _S.SUCCESS,
        (_S.RUNNING, _E.FAIL): _S.FAILED,
        (_S.RUNNING, _E.CANCEL): _S.CANCELLED,
        (_S.RUNNING, _E.CANCEL_GRACEFUL): _S.CANCELLING,
        (_S.RUNNING, _E.RECOVER): _S.RECOVERING,
        (_S.CANCELLING, _E.CANCEL_FORCE): _S.CANCELLED,
        (_S.CANCELLING, _E.COMPLETE): _S.CANCELLED,
        (_S.CANCELLING, _E.FAIL): _S.FAILED,
        (_S.RECOVERING, _E.START): _S.RUNNING,
        (_S.RECOVERING, _E.FAIL): _S.FAILED,
        (_S.RECOVERING, _E.CANCEL): _S.CANCELLED,
    }
)

_VALID_EVENTS: Mapping[ExecutionState, frozenset[Event]] = MappingProxyType(
    {state: frozenset(e for (s, e) in TRANSITIONS if s is state) for state in ExecutionState}
)


class InvalidTransitionError(ValueError):
    """``event`` does not apply in ``state``; both are kept for the caller's log line."""

    def __init__(self, state: ExecutionState, event: Event) -> None:
        super().__init__(f"Invalid transition: cannot apply event '{event}' in state '{state}'")
        self.state = state
        self.event = event


def can_transition(state: ExecutionState, event: Event) -> bool:
    return (state, event) in TRANSITIONS


def transition(state: ExecutionState, event: Event) -> ExecutionState:
    """The state ``event`` leads to from ``state``; raises :class:`InvalidTransitionError` otherwise."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransitionError(state, event) from None


def valid_events(state: ExecutionState) -> frozenset[Event]:
    return _VALID_EVENTS.get(state, frozenset())


def is_terminal(state: ExecutionState) -> bool:
    return state in TERMINAL_EXECUTION_STATES
