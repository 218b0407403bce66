"""One WebSocket connection's task structure, shared by every link (20-protocol.md §16, PRO-33).

``run_connection(conn, handler, ...)`` runs, under one nursery:

- the **reader**: receive -> decode -> rate limit -> handle, strictly one frame after another, so the
  handler sees a consistent state (registration, recovery reconciliation) without locks of its own;
- the **writer**: the only caller of ``conn.send``, draining a bounded outbox in order. A full outbox
  blocks ``Session.send`` (backpressure reaches the producer) and refuses ``Session.try_send``;
- the **liveness monitor**: any inbound frame counts as a sign of life; silence past the unhealthy
  threshold (90 s) is reported to the handler, past the stale threshold (180 s) the connection is closed
  with 4004 (PRO-15);
- the **heartbeat** sender, started by the handler once the link is registered or authenticated
  (``Session.start_heartbeats``), because a heartbeat before ``auth.request`` would break the handshake.

Handshake timers are deadlines around the expected message: ``Session.arm_timer(5, 4002, "Auth
timeout")`` makes the reader's receive run under ``trio.move_on_at``; the handler disarms it when the
message arrived. Invalid input follows the receiver's row of the §2 table through a policy object
(`DecodeErrorTable`): the orchestrator closes 4003, an agent logs and ignores. The rate limiter runs on
every frame after parsing and before any handling, decode failures included, so garbage cannot
bypass it (PRO-05).

The result says how the connection ended; the caller then runs its disconnect handling (recovery
timers, failing pending requests, reconnect backoff). A handler that raises gets the connection closed
with 4006 and its exception re-raised from ``run_connection``. Any close (local, by the peer, by a
timer) cancels the reader, a handler call in progress included: a handler shields the few steps that
must finish together.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Final, Protocol

import attrs
import trio

from kici.adapters.ws.frames import raised, utf8_size
from kici.domain.liveness import DEFAULT_THRESHOLDS, Liveness, LivenessThresholds, classify_liveness
from kici.domain.ports import ConnectionClosed, RemoteAddress, WsConnection, check_close_code
from kici.domain.protocol import (
    CloseCode,
    DecodeError,
    DecodeErrorKind,
    Direction,
    ErrorMessage,
    Heartbeat,
    Message,
    RateLimitWarning,
    decode,
    encode,
    truncate_close_reason,
)
from kici.domain.ratelimit import Disconnect, Warn, WsRateLimiter

_log = logging.getLogger(__name__)

DEFAULT_OUTBOX_FRAMES: Final = 1024
DEFAULT_FLUSH_TIMEOUT_S: Final = 5.0
HEARTBEAT_TIMEOUT_REASON: Final = "Heartbeat timeout"
INTERNAL_ERROR_REASON: Final = "Internal error"

WallClock = Callable[[], int]
"""Epoch milliseconds for wire timestamps; timeouts use ``trio.current_time()`` instead."""


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


# --- invalid input policy (20-protocol.md §2) ---------------------------------------------------


@attrs.frozen
class Ignore:
    """Log the bad frame and carry on."""


@attrs.frozen
class Reply:
    """Answer the bad frame (e.g. a structured dashboard error) and carry on."""

    message: Message


@attrs.frozen
class CloseWith:
    """Optionally answer, then close the connection with ``code``."""

    code: int
    reason: str
    reply: Message | None = None


Reaction = Ignore | Reply | CloseWith


class InvalidInputPolicy(Protocol):
    def reaction(self, error: DecodeError) -> Reaction: ...


@attrs.frozen
class DecodeErrorTable:
    """One receiver's row of the §2 table: the reaction to each kind of `DecodeError`.

    A link whose reaction depends on its phase (before/after ``agent.register``) swaps
    ``Session.policy`` as the phase changes.
    """

    bad_json: Reaction
    unknown_type: Reaction
    invalid: Reaction

    def reaction(self, error: DecodeError) -> Reaction:
        if error.kind is DecodeErrorKind.BAD_JSON:
            return self.bad_json
        if error.kind is DecodeErrorKind.UNKNOWN_TYPE:
            return self.unknown_type
        return self.invalid


INVALID_MESSAGE_REPLY: Final = ErrorMessage(code="INVALID_MESSAGE", message="Invalid message format")

ORCHESTRATOR_FROM_AGENT: Final = DecodeErrorTable(
    bad_json=CloseWith(CloseCode.INVALID_MESSAGE, "Malformed JSON"),
    unknown_type=CloseWith(CloseCode.INVALID_MESSAGE, "Invalid message format", INVALID_MESSAGE_REPLY),
    invalid=CloseWith(CloseCode.INVALID_MESSAGE, "Invalid message format", INVALID_MESSAGE_REPLY),
)
"""A registered agent's bad frame: bad JSON closes 4003; a bad message is answered, then closes 4003."""

LOG_AND_IGNORE: Final = DecodeErrorTable(bad_json=Ignore(), unknown_type=Ignore(), invalid=Ignore())
"""The agent's policy towards its orchestrator, and the drop policy of authenticated peers."""


# --- the session ----------------------------------------------------------------------------------


@attrs.frozen
class ConnectionEnd:
    """How a connection ended: the close code and reason, and whether the peer (or the network) ended it."""

    code: int
    reason: str
    by_peer: bool


@attrs.frozen
class _LocalClose:
    code: int
    reason: str
    flush: bool


@attrs.frozen
class _Deadline:
    at: float
    code: int
    reason: str


class Handler(Protocol):
    """What a link plugs into `run_connection`; every callback runs in the reader task but `on_liveness`."""

    async def on_open(self, session: Session) -> None:
        """First thing on the connection: send ``auth.request``/``agent.register``, arm timers."""
        ...

    async def on_message(self, session: Session, message: Message) -> None: ...

    def on_liveness(self, session: Session, liveness: Liveness) -> None:
        """The inbound silence crossed a threshold (or ended: `Liveness.OK`)."""
        ...


class HandlerBase:
    """Defaults for `Handler`: nothing to do on open, liveness changes logged."""

    async def on_open(self, session: Session) -> None:
        return None

    async def on_message(self, session: Session, message: Message) -> None:
        raise NotImplementedError

    def on_liveness(self, session: Session, liveness: Liveness) -> None:
        level = logging.INFO if liveness is Liveness.OK else logging.WARNING
        _log.log(level, "connection liveness %s remote=%s", liveness.value, session.remote_addr)


class Session:
    """A running connection as its handler and other tasks see it; made by `run_connection`."""

    def __init__(
        self,
        conn: WsConnection,
        *,
        direction: Direction,
        policy: InvalidInputPolicy,
        rate_limiter: WsRateLimiter | None,
        clock: WallClock,
        outbox_frames: int,
    ) -> None:
        self.policy = policy
        self._conn = conn
        self._direction = direction
        self._rate_limiter = rate_limiter
        self._clock = clock
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[tuple[str, int]](outbox_frames)
        self._unsent_bytes = 0
        self._end: _LocalClose | ConnectionClosed | None = None
        self._end_requested = trio.Event()
        self._error: Exception | None = None
        self._deadline: _Deadline | None = None
        self._heartbeats = trio.Event()
        self._last_inbound = trio.current_time()
        self._liveness = Liveness.OK
        self._writer_scope = trio.CancelScope()
        self._writer_done = trio.Event()

    @property
    def remote_addr(self) -> RemoteAddress:
        return self._conn.remote_addr

    @property
    def liveness(self) -> Liveness:
        return self._liveness

    @property
    def last_inbound(self) -> float:
        """``trio.current_time()`` of the last inbound frame (or of the connection start)."""
        return self._last_inbound

    @property
    def unsent_bytes(self) -> int:
        """UTF-8 bytes queued or being written: the backpressure signal of log streaming (PRO-13)."""
        return self._unsent_bytes

    @property
    def closing(self) -> bool:
        return self._end is not None

    def now_ms(self) -> int:
        """Wall-clock epoch ms for wire timestamps (the injected clock)."""
        return self._clock()

    async def send(self, message: Message) -> None:
        """Queue ``message``; waits while the outbox is full. Raises `ConnectionClosed` once closing."""
        await self._send_text(encode(message))

    def try_send(self, message: Message) -> bool:
        """Queue ``message`` unless the outbox is full (False); raises `ConnectionClosed` once closing."""
        text = encode(message)
        self._raise_if_closing()
        size = utf8_size(text)
        try:
            self._outbox_send.send_nowait((text, size))
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise self._closed_error() from None
        self._unsent_bytes += size
        return True

    def close(self, code: int, reason: str = "", *, flush: bool = True) -> None:
        """Ask for the connection to close; `run_connection` does it and returns.

        With ``flush`` the frames queued so far are written first (``auth.failure`` before 4010, ``error``
        before 4003), for at most the flush timeout. The first request wins; later ones are ignored.
        """
        code = check_close_code(code)
        reason = truncate_close_reason(reason)
        if self._end is None:
            self._end = _LocalClose(code, reason, flush)
            self._end_requested.set()

    def arm_timer(self, seconds: float, code: int, reason: str) -> None:
        """Close with ``code`` unless `disarm_timer` is called within ``seconds`` (handshake timers)."""
        self._deadline = _Deadline(trio.current_time() + seconds, check_close_code(code), reason)

    def disarm_timer(self) -> None:
        self._deadline = None

    def start_heartbeats(self) -> None:
        """Begin the periodic heartbeat (no-op when the connection runs without one). Idempotent."""
        self._heartbeats.set()

    # --- tasks ------------------------------------------------------------------------------------

    async def _send_text(self, text: str) -> None:
        self._raise_if_closing()
        size = utf8_size(text)
        self._unsent_bytes += size
        try:
            await self._outbox_send.send((text, size))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._unsent_bytes -= size
            raise self._closed_error() from None
        except BaseException:
            self._unsent_bytes -= size
            raise

    async def _write_loop(self) -> None:
        try:
            with self._writer_scope:
                async for text, size in self._outbox_receive:
                    try:
                        await self._conn.send(text)
                    except ConnectionClosed as exc:
                        self._peer_gone(exc)
                        return
                    finally:
                        self._unsent_bytes -= size
        finally:
            self._writer_done.set()

    async def _read_loop(self, handler: Handler) -> None:
        try:
            await handler.on_open(self)
            while True:
                text = await self._receive()
                if text is None:
                    return
                self._last_inbound = trio.current_time()
                if self._liveness is not Liveness.OK:
                    self._set_liveness(handler, Liveness.OK)
                await self._dispatch(handler, text)
        except ConnectionClosed as exc:
            self._peer_gone(exc)
        except Exception as exc:
            self._fail(exc)

    async def _receive(self) -> str | None:
        deadline = self._deadline
        if deadline is None:
            return await self._conn.receive()
        with trio.move_on_at(deadline.at):
            return await self._conn.receive()
        _log.info("handshake timer expired code=%s remote=%s", deadline.code, self.remote_addr)
        self.close(deadline.code, deadline.reason)
        return None

    async def _dispatch(self, handler: Handler, text: str) -> None:
        message: Message | None = None
        error: DecodeError | None = None
        try:
            message = decode(self._direction, text)
        except DecodeError as exc:
            error = exc
        if self._rate_limiter is not None:
            verdict = self._rate_limiter.check(
                utf8_size(text), isinstance(message, Heartbeat), trio.current_time() * 1000.0
            )
            if isinstance(verdict, Disconnect):
                _log.warning("rate limit disconnect reason=%r remote=%s", verdict.reason, self.remote_addr)
                self.close(CloseCode.INVALID_MESSAGE, verdict.reason.value)
                return
            if isinstance(verdict, Warn):
                self.try_send(RateLimitWarning(retry_after_ms=verdict.retry_after_ms))
                return
        if error is not None:
            await self._react(error)
            return
        if message is not None:
            await handler.on_message(self, message)

    async def _react(self, error: DecodeError) -> None:
        reaction = self.policy.reaction(error)
        _log.warning(
            "invalid inbound frame kind=%s type=%s detail=%r remote=%s reaction=%s",
            error.kind.value,
            error.type,
            error.detail,
            self.remote_addr,
            type(reaction).__name__,
        )
        if isinstance(reaction, Reply):
            await self.send(reaction.message)
        elif isinstance(reaction, CloseWith):
            if reaction.reply is not None:
                await self.send(reaction.reply)
            self.close(reaction.code, reaction.reason)

    async def _monitor_loop(self, handler: Handler, thresholds: LivenessThresholds) -> None:
        while True:
            elapsed_ms = (trio.current_time() - self._last_inbound) * 1000.0
            state = classify_liveness(elapsed_ms, thresholds)
            if state is not self._liveness:
                self._set_liveness(handler, state)
            if state is Liveness.STALE:
                self.close(CloseCode.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_REASON, flush=False)
                return
            threshold_ms = (
                thresholds.unhealthy_after_ms if state is Liveness.OK else thresholds.stale_after_ms
            )
            await trio.sleep_until(self._last_inbound + (threshold_ms + 1.0) / 1000.0)

    async def _heartbeat_loop(self, interval: float, make: Callable[[int], Message]) -> None:
        await self._heartbeats.wait()
        due = trio.current_time()
        while True:
            due += interval
            await trio.sleep_until(due)
            try:
                await self.send(make(self._clock()))
            except ConnectionClosed:
                return

    async def _until_end(self, scope: trio.CancelScope) -> None:
        await self._end_requested.wait()
        scope.cancel()

    async def _finish(self, flush_timeout: float) -> ConnectionEnd:
        end = self._end
        if isinstance(end, _LocalClose) and end.flush:
            self._outbox_send.close()
            with trio.move_on_after(flush_timeout):
                await self._writer_done.wait()
        self._writer_scope.cancel()
        self._outbox_send.close()
        await self._writer_done.wait()
        self._outbox_receive.close()
        self._unsent_bytes = 0
        if isinstance(end, ConnectionClosed):
            return ConnectionEnd(end.code, end.reason, by_peer=True)
        if end is None:
            raise RuntimeError("connection tasks ended without a close")
        await self._conn.close(end.code, end.reason)
        return ConnectionEnd(end.code, end.reason, by_peer=False)

    # --- helpers ----------------------------------------------------------------------------------

    def _set_liveness(self, handler: Handler, state: Liveness) -> None:
        self._liveness = state
        try:
            handler.on_liveness(self, state)
        except Exception as exc:
            self._fail(exc)

    def _peer_gone(self, exc: ConnectionClosed) -> None:
        if self._end is None:
            self._end = ConnectionClosed(exc.code, exc.reason)
            self._end_requested.set()

    def _fail(self, exc: Exception) -> None:
        _log.error("connection handler failed remote=%s", self.remote_addr, exc_info=exc)
        if self._error is None:
            self._error = exc
        self.close(CloseCode.INTERNAL_ERROR, INTERNAL_ERROR_REASON, flush=False)

    def _closed_error(self) -> ConnectionClosed:
        end = self._end
        if isinstance(end, _LocalClose):
            return ConnectionClosed(end.code, end.reason)
        return raised(end)

    def _raise_if_closing(self) -> None:
        if self._end is not None:
            raise self._closed_error()


def _default_heartbeat(timestamp: int) -> Message:
    return Heartbeat(timestamp=timestamp)


async def run_connection(
    conn: WsConnection,
    handler: Handler,
    *,
    direction: Direction,
    policy: InvalidInputPolicy = LOG_AND_IGNORE,
    rate_limiter: WsRateLimiter | None = None,
    heartbeat_interval: float | None = None,
    heartbeat_message: Callable[[int], Message] = _default_heartbeat,
    liveness: LivenessThresholds | None = DEFAULT_THRESHOLDS,
    clock: WallClock = wall_clock_ms,
    outbox_frames: int = DEFAULT_OUTBOX_FRAMES,
    flush_timeout: float = DEFAULT_FLUSH_TIMEOUT_S,
    task_status: trio.TaskStatus[Session] = trio.TASK_STATUS_IGNORED,
) -> ConnectionEnd:
    """Run ``conn`` until it closes; see the module docstring.

    ``direction`` is the union this side decodes (``AGENT_TO_ORCH`` on the orchestrator's ``/ws``).
    ``heartbeat_interval`` (seconds, None = never) applies once the handler calls
    ``start_heartbeats``; ``liveness`` None disables the monitor, for a link whose peer sends nothing
    periodic. ``nursery.start(run_connection, ...)`` hands out the `Session` for tasks outside the
    handler (a dispatcher sending ``job.dispatch``).
    """
    if outbox_frames < 1:
        raise ValueError(f"outbox_frames must be >= 1, got {outbox_frames}")
    if heartbeat_interval is not None and not (heartbeat_interval > 0 and math.isfinite(heartbeat_interval)):
        raise ValueError(f"heartbeat_interval must be a positive number of seconds, got {heartbeat_interval}")
    session = Session(
        conn,
        direction=direction,
        policy=policy,
        rate_limiter=rate_limiter,
        clock=clock,
        outbox_frames=outbox_frames,
    )
    async with trio.open_nursery() as outer:
        outer.start_soon(session._write_loop)
        async with trio.open_nursery() as inner:
            inner.start_soon(session._until_end, inner.cancel_scope)
            inner.start_soon(session._read_loop, handler)
            if liveness is not None:
                inner.start_soon(session._monitor_loop, handler, liveness)
            if heartbeat_interval is not None:
                inner.start_soon(session._heartbeat_loop, heartbeat_interval, heartbeat_message)
            task_status.started(session)
        end = await session._finish(flush_timeout)
    if session._error is not None:
        raise session._error
    _log.info(
        "connection closed code=%s reason=%r by_peer=%s remote=%s",
        end.code,
        end.reason,
        end.by_peer,
        conn.remote_addr,
    )
    return end


__all__ = [
    "INVALID_MESSAGE_REPLY",
    "LOG_AND_IGNORE",
    "ORCHESTRATOR_FROM_AGENT",
    "CloseWith",
    "ConnectionEnd",
    "DecodeErrorTable",
    "Handler",
    "HandlerBase",
    "Ignore",
    "InvalidInputPolicy",
    "Reaction",
    "Reply",
    "Session",
    "run_connection",
    "wall_clock_ms",
]
