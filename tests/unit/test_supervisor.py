"""The client reconnect loop under MockClock over the in-memory listener (PRO-06, PRO-36, PRO-03): the
backoff sequence with injected jitter, reset after registration, no reconnect after 4010 or an
intentional stop, buffers that outlive each connection; and, over the real client and server, an
intentional stop that completes the closing handshake at once instead of waiting out the close timeout."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio
import trio.testing

from kici.adapters.ws.client import connect
from kici.adapters.ws.memory import MemoryListener, MemoryWsConnection
from kici.adapters.ws.server import accept_websocket, create_app, serve
from kici.domain.backoff import delay_ms
from kici.domain.buffers import RingBuffer
from kici.domain.ports import ConnectionClosed, WsConnection
from kici.domain.protocol import Ack, Direction, Message, decode, encode
from kici.services.connection import LOG_AND_IGNORE, ConnectionEnd, HandlerBase, Session, run_connection
from kici.services.supervisor import (
    STOP_REASON,
    ConnectFailed,
    ExitReason,
    Supervisor,
    SupervisorExit,
    SupervisorState,
)
from kici.testing.ws_contract import expect_closed

pytestmark = pytest.mark.feature("PRO-06")


def _jitters(*values: float) -> Iterator[float]:
    yield from values
    while True:
        yield 0.0


class Timed:
    """Wraps a listener's ``connect`` to record the virtual time of every attempt."""

    def __init__(self, listener: MemoryListener) -> None:
        self.listener = listener
        self.times: list[float] = []

    def __call__(self) -> AbstractAsyncContextManager[WsConnection]:
        self.times.append(trio.current_time())
        return self.listener.connect()


async def _close_at_once(conn: WsConnection) -> ConnectionEnd:
    await conn.close(4004, "gone")
    return ConnectionEnd(4004, "gone", by_peer=False)


async def test_failed_connects_back_off_by_the_spec_sequence(autojump_clock: trio.testing.MockClock) -> None:
    listener = MemoryListener()
    listener.refusing = True
    connect = Timed(listener)
    jitter = [0.0, 0.5, 0.99, 0.25, 0.0, 0.7, 0.1, 0.0, 0.0, 0.3, 0.6, 0.9, 0.2]
    supervisor = Supervisor(connect, _close_at_once, jitter=_jitters(*jitter).__next__)
    with trio.move_on_after(600):
        await supervisor.run()
    expected = [delay_ms(attempt, 60_000, r) for attempt, r in enumerate(jitter)]
    assert supervisor.delays_ms[: len(expected)] == expected
    assert supervisor.delays_ms[:4] == [1000.0, 1875.0, pytest.approx(3363.75), 3796.875]
    assert supervisor.delays_ms[9:13] == [pytest.approx(44_209.86328125), 60_000, 60_000, 60_000]
    gaps = [later - earlier for earlier, later in zip(connect.times, connect.times[1:], strict=False)]
    assert gaps == pytest.approx([d / 1000 for d in supervisor.delays_ms[: len(gaps)]])
    assert isinstance(supervisor.last_attempt, ConnectFailed)
    assert supervisor.state is SupervisorState.WAITING


async def test_closed_connections_back_off_and_registration_resets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    listener = MemoryListener(exact_peer_codes=True)
    sessions = 0

    async def session(conn: WsConnection) -> ConnectionEnd:
        nonlocal sessions
        sessions += 1
        if sessions == 4:
            supervisor.registered()
        await trio.sleep(1)
        await conn.close(1001, "server restarting")
        return ConnectionEnd(1001, "server restarting", by_peer=True)

    async def drain_server() -> None:
        while True:
            server = await listener.accept()
            await expect_closed(server)

    supervisor = Supervisor(listener.connect, session, jitter=lambda: 0.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_server)
        with trio.move_on_after(30):
            await supervisor.run()
        nursery.cancel_scope.cancel()
    assert supervisor.delays_ms[:6] == [1000.0, 1500.0, 2250.0, 1000.0, 1500.0, 2250.0]
    assert supervisor.attempt >= 3


@pytest.mark.feature("PRO-36", "PRO-03")
async def test_4010_stops_for_good(autojump_clock: trio.testing.MockClock) -> None:
    listener = MemoryListener()

    async def session(conn: WsConnection) -> ConnectionEnd:
        with pytest.raises(ConnectionClosed) as closed:
            await conn.receive()
        return ConnectionEnd(closed.value.code, closed.value.reason, by_peer=True)

    async def reject_the_token() -> None:
        server = await listener.accept()
        await server.close(4010, "Invalid or expired token")

    supervisor = Supervisor(listener.connect, session, jitter=lambda: 0.5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reject_the_token)
        outcome = await supervisor.run()
    assert outcome == SupervisorExit(ExitReason.REFUSED, 4010, "Invalid or expired token")
    assert listener.connects == 1
    assert supervisor.delays_ms == []
    assert supervisor.state is SupervisorState.STOPPED


async def test_a_session_raising_connection_closed_counts_as_a_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    listener = MemoryListener()

    async def session(conn: WsConnection) -> ConnectionEnd:
        raise ConnectionClosed(4010, "Token revoked")

    async def accept() -> None:
        await listener.accept()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        outcome = await Supervisor(listener.connect, session).run()
    assert (outcome.reason, outcome.code) == (ExitReason.REFUSED, 4010)


async def test_stop_while_connected_closes_1000_and_never_reconnects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    listener = MemoryListener(exact_peer_codes=True)
    connected = trio.Event()

    async def session(conn: WsConnection) -> ConnectionEnd:
        connected.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    supervisor = Supervisor(listener.connect, session)
    outcomes: list[SupervisorExit] = []

    async def run() -> None:
        outcomes.append(await supervisor.run())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        server = await listener.accept()
        await connected.wait()
        assert supervisor.state is SupervisorState.CONNECTED
        supervisor.stop()
        closed = await expect_closed(server)
        await trio.sleep(3600)
    assert (closed.code, closed.reason) == (1000, STOP_REASON)
    assert outcomes == [SupervisorExit(ExitReason.STOPPED, 1000, STOP_REASON)]
    assert listener.connects == 1


async def test_stop_mid_session_closes_with_its_reason_and_schedules_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    listener = MemoryListener(exact_peer_codes=True)
    cancelled: list[bool] = []

    async def session(conn: WsConnection) -> ConnectionEnd:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(True)
            raise
        raise AssertionError("unreachable")

    supervisor = Supervisor(listener.connect, session)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        server = await listener.accept()
        await trio.testing.wait_all_tasks_blocked()
        supervisor.stop("Agent shutting down")
        supervisor.stop("a second stop changes nothing")
        closed = await expect_closed(server)
    assert (closed.code, closed.reason) == (1000, "Agent shutting down")
    assert cancelled == [True]
    assert supervisor.delays_ms == []
    assert supervisor.last_attempt == ConnectionEnd(1000, "Agent shutting down", by_peer=False)
    assert supervisor.state is SupervisorState.STOPPED


@pytest.mark.feature("PRO-33", "PRO-03")
async def test_a_stop_completes_the_closing_handshake_without_waiting_out_the_close_timeout() -> None:
    """Cancelling the whole connection used to cancel the transport's reader too, so the close waited
    its full timeout for an answer nobody read; the timeout here is far above the test's deadline."""
    app = create_app(__name__)
    server_saw: list[ConnectionClosed] = []

    @app.websocket("/ws")
    async def ws() -> None:
        conn = await accept_websocket()
        server_saw.append(await expect_closed(conn, within=60))

    connected = trio.Event()

    async def session(conn: WsConnection) -> ConnectionEnd:
        connected.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve, app)
        url = f"ws://127.0.0.1:{bound.port}/ws"
        supervisor = Supervisor(functools.partial(connect, url, close_timeout=30.0), session)
        outcome: list[SupervisorExit] = []

        async def run() -> None:
            outcome.append(await supervisor.run())

        with trio.fail_after(20):
            async with trio.open_nursery() as link:
                link.start_soon(run)
                await connected.wait()
                supervisor.stop()
            while not server_saw:  # noqa: ASYNC110 - the route reports through a list
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert outcome == [SupervisorExit(ExitReason.STOPPED, 1000, STOP_REASON)]
    assert [closed.code for closed in server_saw] == [1006]
    assert supervisor.delays_ms == []


async def test_stop_while_waiting_ends_the_wait(autojump_clock: trio.testing.MockClock) -> None:
    listener = MemoryListener()
    listener.refusing = True
    supervisor = Supervisor(listener.connect, _close_at_once, jitter=lambda: 0.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        await trio.sleep(2.6)
        assert supervisor.state is SupervisorState.WAITING
        began = trio.current_time()
        supervisor.stop()
    assert trio.current_time() == began
    assert supervisor.state is SupervisorState.STOPPED
    assert supervisor.delays_ms == [1000.0, 1500.0, 2250.0]


async def test_stop_before_run_returns_at_once() -> None:
    supervisor = Supervisor(MemoryListener().connect, _close_at_once)
    supervisor.stop()
    assert await supervisor.run() == SupervisorExit(ExitReason.STOPPED, 1000, STOP_REASON)


class BufferingLink(HandlerBase):
    """A minimal link: events go to the live session, or to a ring that survives reconnects."""

    def __init__(self) -> None:
        self.buffer: RingBuffer[Message] = RingBuffer(3)
        self.session: Session | None = None
        self.supervisor: Supervisor | None = None

    async def emit(self, message: Message) -> None:
        if self.session is not None and not self.session.closing:
            await self.session.send(message)
        else:
            self.buffer.add(message)

    async def on_message(self, session: Session, message: Message) -> None:
        assert self.supervisor is not None
        self.supervisor.registered()
        self.session = session
        for held in self.buffer.flush():
            await session.send(held)

    async def run_session(self, conn: WsConnection) -> ConnectionEnd:
        try:
            return await run_connection(
                conn, self, direction=Direction.ORCH_TO_AGENT, policy=LOG_AND_IGNORE, liveness=None
            )
        finally:
            self.session = None


@asynccontextmanager
async def _accepted(listener: MemoryListener) -> AsyncIterator[MemoryWsConnection]:
    server = await listener.accept()
    await server.send(encode(Ack(message_id="register.ack stand-in")))
    yield server


async def test_buffers_live_outside_the_connection(autojump_clock: trio.testing.MockClock) -> None:
    listener = MemoryListener()
    link = BufferingLink()
    supervisor = Supervisor(listener.connect, link.run_session, jitter=lambda: 0.0)
    link.supervisor = supervisor
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        async with _accepted(listener) as first:
            await trio.testing.wait_all_tasks_blocked()
            await link.emit(Ack(message_id="live"))
            assert decode(Direction.ORCH_TO_AGENT, await first.receive()) == Ack(message_id="live")
            first.abort()
            await trio.testing.wait_all_tasks_blocked()
        for n in range(5):
            await link.emit(Ack(message_id=f"offline-{n}"))
        assert link.buffer.dropped == 2
        async with _accepted(listener) as second:
            replay = [decode(Direction.ORCH_TO_AGENT, await second.receive()) for _ in range(3)]
            supervisor.stop()
    assert replay == [Ack(message_id=f"offline-{n}") for n in (2, 3, 4)]
    assert supervisor.delays_ms == [1000.0]
