"""The client reconnect loop shared by the agent link, the upstream link and peer links (PRO-06, §14/§16).

``while not stopped: connect and run the session; on close sleep delay_ms(attempt, max, jitter)``. The
attempt counter grows with every scheduled reconnect (failed connects included) and is reset by the
link when its handshake succeeds (``register.ack``, ``auth.success``, peer auth: `Supervisor.registered`),
so a link that keeps failing before registration backs off to the cap while one that was healthy
comes back within about a second. There is no attempt limit.

The loop ends for good only when

- the link is stopped on purpose (`Supervisor.stop`): the connection is closed with 1000 and never
  reopened, whatever its close code would say; or
- the server closes with a code whose reaction forbids reconnecting (`close_reaction`): 4010, the agent
  token was rejected or revoked (PRO-36), and 4030 for run-observer streams.

Everything that must survive a reconnect (outbound rings, the pinned outbox, the correlator) belongs to
the link object, outside the session that each connection runs in its own nursery.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import trio

from kici.domain.backoff import DEFAULT_MAX_DELAY_MS, ReconnectBackoff
from kici.domain.ports import ConnectionClosed, WsConnectError, WsConnection, WsConnector
from kici.domain.protocol import close_reaction
from kici.services.connection import ConnectionEnd

_log = logging.getLogger(__name__)

STOP_REASON: Final = "Client shutdown"

SessionRunner = Callable[[WsConnection], Awaitable[ConnectionEnd]]
Jitter = Callable[[], float]
"""Draws the backoff jitter ``r`` in [0, 1); ``random.random`` in production, fixed values in tests."""


class SupervisorState(enum.StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"
    STOPPED = "stopped"


class ExitReason(enum.StrEnum):
    STOPPED = "stopped"
    """`Supervisor.stop` was called."""
    REFUSED = "refused"
    """The server closed with a code that forbids reconnecting (4010 for an agent)."""


@attrs.frozen
class SupervisorExit:
    reason: ExitReason
    code: int | None = None
    detail: str = ""


@attrs.frozen
class ConnectFailed:
    """An attempt that never got a connection (refused, handshake rejected, timeout)."""

    detail: str


Attempt = ConnectionEnd | ConnectFailed


class Supervisor:
    """Keeps one client link connected; ``await supervisor.run()`` in the link's nursery.

    ``run_session(conn)`` runs one connection to its end (usually ``run_connection``) and returns its
    `ConnectionEnd`; it calls `registered` once the link's handshake succeeded. A ``ConnectionClosed``
    escaping it counts as a close; any other exception is a bug and ends `run` with it.
    """

    def __init__(
        self,
        connect: WsConnector,
        run_session: SessionRunner,
        *,
        max_delay_ms: float = DEFAULT_MAX_DELAY_MS,
        jitter: Jitter = random.random,
        name: str = "link",
    ) -> None:
        self._connect = connect
        self._run_session = run_session
        self._jitter = jitter
        self._backoff = ReconnectBackoff(max_ms=max_delay_ms)
        self._name = name
        self._stopping = False
        self._scope: trio.CancelScope | None = None
        self.state = SupervisorState.CONNECTING
        self.last_attempt: Attempt | None = None
        self.delays_ms: list[float] = []
        """Every backoff delay slept so far, in order (for logs, metrics and tests)."""

    @property
    def attempt(self) -> int:
        """Reconnects scheduled since the last successful handshake."""
        return self._backoff.attempt

    def registered(self) -> None:
        """The link's handshake succeeded: the next reconnect starts again from the first delay."""
        self._backoff = self._backoff.reset()

    def stop(self) -> None:
        """Stop for good: close the current connection with 1000 (or stop waiting) and end `run`."""
        self._stopping = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> SupervisorExit:
        while not self._stopping:
            with trio.CancelScope() as self._scope:
                outcome = await self._attempt()
                self.last_attempt = outcome
                if isinstance(outcome, ConnectionEnd) and not close_reaction(outcome.code).reconnect:
                    _log.error(
                        "%s: server refused the link for good code=%s reason=%r",
                        self._name,
                        outcome.code,
                        outcome.reason,
                    )
                    self.state = SupervisorState.STOPPED
                    return SupervisorExit(ExitReason.REFUSED, outcome.code, outcome.reason)
                delay_ms, self._backoff = self._backoff.schedule(self._jitter())
                self.delays_ms.append(delay_ms)
                self.state = SupervisorState.WAITING
                _log.info(
                    "%s: reconnecting in %.0f ms attempt=%d after=%s",
                    self._name,
                    delay_ms,
                    self._backoff.attempt,
                    _describe(outcome),
                )
                await trio.sleep(delay_ms / 1000.0)
        self.state = SupervisorState.STOPPED
        return SupervisorExit(ExitReason.STOPPED, 1000, STOP_REASON)

    async def _attempt(self) -> Attempt:
        self.state = SupervisorState.CONNECTING
        try:
            async with self._connect() as conn:
                self.state = SupervisorState.CONNECTED
                try:
                    return await self._run_session(conn)
                except ConnectionClosed as exc:
                    return ConnectionEnd(exc.code, exc.reason, by_peer=True)
                finally:
                    if self._stopping:
                        with trio.CancelScope(shield=True):
                            await conn.close(1000, STOP_REASON)
        except WsConnectError as exc:
            return ConnectFailed(str(exc))


def _describe(outcome: Attempt) -> str:
    if isinstance(outcome, ConnectFailed):
        return f"connect failed: {outcome.detail}"
    return f"close code={outcome.code} reason={outcome.reason!r} by_peer={outcome.by_peer}"


__all__ = [
    "STOP_REASON",
    "Attempt",
    "ConnectFailed",
    "ExitReason",
    "Jitter",
    "SessionRunner",
    "Supervisor",
    "SupervisorExit",
    "SupervisorState",
]
