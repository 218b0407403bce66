"""The client reconnect loop shared by the agent link, the upstream link and peer links (PRO-06, §14/§16).

``while not stopped: connect and run the session; on close sleep delay_ms(attempt, max, jitter)``. The
attempt counter grows with every scheduled reconnect (failed connects included) and is reset by the
link when its handshake succeeds (``register.ack``, ``auth.success``, peer auth: `Supervisor.registered`),
so a link that keeps failing before registration backs off to the cap while one that was healthy
comes back within about a second. There is no attempt limit.

The loop ends for good only when

- the link is stopped on purpose (`Supervisor.stop`): the connection is closed with 1000 and never
  reopened, whatever its close code would say. Only the session is cancelled; the connection itself
  (and the transport's reader under it) stays up while the close frame goes out, so the peer's answer
  ends the closing handshake at once. The wait for that answer is bounded by `STOP_CLOSE_TIMEOUT_S`,
  then the connection is dropped: a stop must not hang on a black-holed peer; or
- the server closes with a code whose reaction forbids reconnecting (`close_reaction`): 4010, the agent
  token was rejected or revoked (PRO-36), and 4030 for run-observer streams.

Observability (PRO-37): every scheduled reconnect logs ``link reconnect scheduled`` with the keyword
fields ``link``, ``attempt``, ``delay_ms`` and ``close_code`` / ``close_reason`` (None after a connect
that never opened, which logs ``connect_error`` instead); the handshake that ends a series logs
``link registered`` with ``attempts``, the reconnects it took. The same facts reach an optional
`ReconnectObserver` so a tier can count them in its own metrics without parsing logs.

Everything that must survive a reconnect (outbound rings, the pinned outbox, the correlator) belongs to
the link object, outside the session that each connection runs in its own nursery.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import attrs
import structlog
import trio

from kici.domain.backoff import DEFAULT_MAX_DELAY_MS, ReconnectBackoff
from kici.domain.ports import ConnectionClosed, WsConnectError, WsConnection, WsConnector
from kici.domain.protocol import close_reaction
from kici.services.connection import ConnectionEnd

_log = structlog.get_logger(__name__)

STOP_REASON: Final = "Client shutdown"
STOP_CLOSE_TIMEOUT_S: Final = 1.0
"""How long an intentional stop waits for the peer's close frame before dropping the connection."""

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


@attrs.frozen(kw_only=True)
class ReconnectScheduled:
    """One scheduled reconnect: its backoff ``attempt``, the delay drawn, and what ended the last try."""

    link: str
    attempt: int
    delay_ms: float
    close_code: int | None
    close_reason: str | None
    connect_error: str | None = None


class ReconnectObserver(Protocol):
    """Told about reconnects (e.g. the agent's metrics); called in the supervisor's task, so keep it quick."""

    def reconnect_scheduled(self, event: ReconnectScheduled) -> None: ...

    def registered(self, link: str, attempts: int) -> None:
        """The handshake succeeded after ``attempts`` reconnects (0: the first try)."""


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
        observer: ReconnectObserver | None = None,
    ) -> None:
        self._connect = connect
        self._run_session = run_session
        self._jitter = jitter
        self._backoff = ReconnectBackoff(max_ms=max_delay_ms)
        self._name = name
        self._observer = observer
        self._stopping = False
        self._stop_reason = STOP_REASON
        self._scope: trio.CancelScope | None = None
        self._session_scope: trio.CancelScope | None = None
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
        attempts = self._backoff.attempt
        self._backoff = self._backoff.reset()
        _log.info("link registered", link=self._name, attempts=attempts)
        if self._observer is not None:
            self._observer.registered(self._name, attempts)

    def stop(self, reason: str = STOP_REASON) -> None:
        """Stop for good: close the current connection with 1000 and ``reason`` (or stop waiting or
        connecting) and end `run`. Only the first call counts.

        A running session is cancelled, not the connection under it: cancelling the connection too
        would stop the transport's reader, and the closing handshake would then wait out the
        adapter's close timeout for an answer nobody reads.
        """
        if self._stopping:
            return
        self._stopping = True
        self._stop_reason = reason
        scope = self._scope if self._session_scope is None else self._session_scope
        if scope is not None:
            scope.cancel()

    async def run(self) -> SupervisorExit:
        while not self._stopping:
            with trio.CancelScope() as self._scope:
                outcome = await self._attempt()
                self.last_attempt = outcome
                if self._stopping:
                    break
                if isinstance(outcome, ConnectionEnd) and not close_reaction(outcome.code).reconnect:
                    _log.error(
                        "link refused for good",
                        link=self._name,
                        close_code=outcome.code,
                        close_reason=outcome.reason,
                    )
                    self.state = SupervisorState.STOPPED
                    return SupervisorExit(ExitReason.REFUSED, outcome.code, outcome.reason)
                delay_ms, self._backoff = self._backoff.schedule(self._jitter())
                self.delays_ms.append(delay_ms)
                self.state = SupervisorState.WAITING
                self._scheduled(_scheduled_event(self._name, self._backoff.attempt, delay_ms, outcome))
                await trio.sleep(delay_ms / 1000.0)
        self.state = SupervisorState.STOPPED
        return SupervisorExit(ExitReason.STOPPED, 1000, self._stop_reason)

    def _scheduled(self, event: ReconnectScheduled) -> None:
        _log.info(
            "link reconnect scheduled",
            link=event.link,
            attempt=event.attempt,
            delay_ms=round(event.delay_ms),
            close_code=event.close_code,
            close_reason=event.close_reason,
            connect_error=event.connect_error,
        )
        if self._observer is not None:
            self._observer.reconnect_scheduled(event)

    async def _attempt(self) -> Attempt:
        self.state = SupervisorState.CONNECTING
        try:
            async with self._connect() as conn:
                self.state = SupervisorState.CONNECTED
                try:
                    return await self._session(conn)
                finally:
                    if self._stopping:
                        await self._close_for_stop(conn)
        except WsConnectError as exc:
            return ConnectFailed(str(exc))

    async def _session(self, conn: WsConnection) -> ConnectionEnd:
        scope = self._session_scope = trio.CancelScope()
        try:
            with scope:
                return await self._run_session(conn)
        except ConnectionClosed as exc:
            return ConnectionEnd(exc.code, exc.reason, by_peer=True)
        finally:
            self._session_scope = None
        return ConnectionEnd(1000, self._stop_reason, by_peer=False)

    async def _close_for_stop(self, conn: WsConnection) -> None:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + STOP_CLOSE_TIMEOUT_S):
            await conn.close(1000, self._stop_reason)


def _scheduled_event(link: str, attempt: int, delay_ms: float, outcome: Attempt) -> ReconnectScheduled:
    if isinstance(outcome, ConnectFailed):
        return ReconnectScheduled(
            link=link,
            attempt=attempt,
            delay_ms=delay_ms,
            close_code=None,
            close_reason=None,
            connect_error=outcome.detail,
        )
    return ReconnectScheduled(
        link=link, attempt=attempt, delay_ms=delay_ms, close_code=outcome.code, close_reason=outcome.reason
    )


__all__ = [
    "STOP_CLOSE_TIMEOUT_S",
    "STOP_REASON",
    "Attempt",
    "ConnectFailed",
    "ExitReason",
    "Jitter",
    "ReconnectObserver",
    "ReconnectScheduled",
    "SessionRunner",
    "Supervisor",
    "SupervisorExit",
    "SupervisorState",
]
