"""run_connection over the in-memory pair under MockClock: reader/writer/heartbeat/liveness tasks, the §2
invalid-input policies, handshake timers, the rate limiter wired before handling (PRO-33, PRO-15, PRO-05,
PRO-03)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from kici.adapters.ws.memory import MemoryWsConnection, memory_pair
from kici.domain.liveness import Liveness, LivenessThresholds
from kici.domain.ports import ConnectionClosed, InvalidCloseCodeError
from kici.domain.protocol import (
    Ack,
    ConfigAck,
    Direction,
    Heartbeat,
    JobAck,
    Message,
    RateLimitWarning,
    decode,
    encode,
)
from kici.domain.ratelimit import MIB, RateLimitConfig, WsRateLimiter
from kici.services.connection import (
    INVALID_MESSAGE_REPLY,
    LOG_AND_IGNORE,
    ORCHESTRATOR_FROM_AGENT,
    ConnectionEnd,
    DecodeErrorTable,
    HandlerBase,
    Ignore,
    Reply,
    Session,
    run_connection,
)
from kici.testing import ws_contract

ORCH = Direction.AGENT_TO_ORCH


async def expect_closed(conn: MemoryWsConnection) -> ConnectionClosed:
    """The contract helper with a virtual-time budget far beyond every timer under test."""
    return await ws_contract.expect_closed(conn, within=10_000)


def _ack(n: int) -> JobAck:
    return JobAck(message_id=f"m{n}", run_id="r", job_id="j", timestamp=n)


class Recorder(HandlerBase):
    """Records what the session delivers; optional hooks for on_open/on_message."""

    def __init__(
        self,
        on_open: Callable[[Session], Awaitable[None]] | None = None,
        on_message: Callable[[Session, Message], Awaitable[None]] | None = None,
    ) -> None:
        self.messages: list[tuple[float, Message]] = []
        self.liveness: list[tuple[float, Liveness]] = []
        self._on_open = on_open
        self._on_message = on_message

    async def on_open(self, session: Session) -> None:
        if self._on_open is not None:
            await self._on_open(session)

    async def on_message(self, session: Session, message: Message) -> None:
        self.messages.append((trio.current_time(), message))
        if self._on_message is not None:
            await self._on_message(session, message)

    def on_liveness(self, session: Session, liveness: Liveness) -> None:
        self.liveness.append((trio.current_time(), liveness))


async def _serve(
    server: MemoryWsConnection, handler: Recorder, **kwargs: object
) -> tuple[list[ConnectionEnd], Callable[[trio.Nursery], Awaitable[Session]]]:
    ends: list[ConnectionEnd] = []

    async def start(nursery: trio.Nursery) -> Session:
        async def run(task_status: trio.TaskStatus[Session] = trio.TASK_STATUS_IGNORED) -> None:
            ends.append(
                await run_connection(server, handler, direction=ORCH, task_status=task_status, **kwargs)  # type: ignore[arg-type]
            )

        session: Session = await nursery.start(run)
        return session

    return ends, start


@pytest.mark.feature("PRO-33")
async def test_reader_hands_decoded_messages_in_order_and_writer_sends_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = memory_pair()

    async def echo(session: Session, message: Message) -> None:
        assert isinstance(message, JobAck)
        await session.send(Ack(message_id=message.message_id))

    handler = Recorder(on_message=echo)
    ends, start = await _serve(server, handler)
    async with trio.open_nursery() as nursery:
        await start(nursery)
        for n in range(20):
            await client.send(encode(_ack(n)))
        replies = [decode(Direction.ORCH_TO_AGENT, await client.receive()) for _ in range(20)]
        await client.close(1000, "bye")
    assert [m for _, m in handler.messages] == [_ack(n) for n in range(20)]
    assert replies == [Ack(message_id=f"m{n}") for n in range(20)]
    assert ends == [ConnectionEnd(1006, "", by_peer=True)]


@pytest.mark.feature("PRO-33", "PRO-03")
async def test_orchestrator_policy_closes_4003_on_bad_json(autojump_clock: trio.testing.MockClock) -> None:
    client, server = memory_pair()
    handler = Recorder()
    ends, start = await _serve(server, handler, policy=ORCHESTRATOR_FROM_AGENT)
    async with trio.open_nursery() as nursery:
        await start(nursery)
        await client.send("{not json")
        closed = await expect_closed(client)
    assert (closed.code, closed.reason) == (4003, "Malformed JSON")
    assert ends == [ConnectionEnd(4003, "Malformed JSON", by_peer=False)]
    assert handler.messages == []


@pytest.mark.feature("PRO-33", "PRO-03")
@pytest.mark.parametrize(
    "frame", ['{"type":"job.dispatch"}', '{"type":"no.such.type"}', '{"type":"job.ack"}']
)
async def test_orchestrator_policy_answers_invalid_message_then_closes_4003(
    frame: str, autojump_clock: trio.testing.MockClock
) -> None:
    client, server = memory_pair()
    ends, start = await _serve(server, Recorder(), policy=ORCHESTRATOR_FROM_AGENT)
    async with trio.open_nursery() as nursery:
        await start(nursery)
        await client.send(frame)
        assert decode(Direction.ORCH_TO_AGENT, await client.receive()) == INVALID_MESSAGE_REPLY
        closed = await expect_closed(client)
    assert (closed.code, closed.reason) == (4003, "Invalid message format")
    assert (INVALID_MESSAGE_REPLY.code, INVALID_MESSAGE_REPLY.message) == (
        "INVALID_MESSAGE",
        "Invalid message format",
    )
    assert ends[0].code == 4003


@pytest.mark.feature("PRO-33")
async def test_agent_policy_logs_and_ignores_bad_frames(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    agent_end, orch_end = memory_pair()
    handler = Recorder()
    ends: list[ConnectionEnd] = []
    caplog.set_level(logging.WARNING, logger="kici.services.connection")

    async def run_agent() -> None:
        ends.append(
            await run_connection(agent_end, handler, direction=Direction.ORCH_TO_AGENT, policy=LOG_AND_IGNORE)
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_agent)
        for frame in ("garbage", '{"type":"agent.register"}', '{"type":"ack"}', encode(Ack(message_id="x"))):
            await orch_end.send(frame)
        await trio.testing.wait_all_tasks_blocked()
        await orch_end.close(1001, "restart")
    assert [m for _, m in handler.messages] == [Ack(message_id="x")]
    assert ends == [ConnectionEnd(1001, "restart", by_peer=True)]
    kinds = [r.getMessage() for r in caplog.records if "invalid inbound frame" in r.getMessage()]
    assert len(kinds) == 3
    assert "kind=bad_json" in kinds[0]
    assert "kind=unknown_type" in kinds[1]
    assert "kind=invalid" in kinds[2]


@pytest.mark.feature("PRO-33")
async def test_reply_reaction_answers_and_keeps_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = memory_pair()
    table = DecodeErrorTable(bad_json=Reply(Ack(message_id="bad")), unknown_type=Ignore(), invalid=Ignore())
    handler = Recorder()
    _, start = await _serve(server, handler, policy=table)
    async with trio.open_nursery() as nursery:
        session = await start(nursery)
        await client.send("[")
        assert decode(Direction.ORCH_TO_AGENT, await client.receive()) == Ack(message_id="bad")
        await client.send(encode(_ack(1)))
        await trio.testing.wait_all_tasks_blocked()
        session.close(1000)
    assert [m for _, m in handler.messages] == [_ack(1)]


@pytest.mark.feature("PRO-15")
async def test_silence_is_unhealthy_after_90_s_and_closed_4004_after_180_s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = memory_pair()
    handler = Recorder()
    ends, start = await _serve(server, handler)
    async with trio.open_nursery() as nursery:
        await start(nursery)
        began = trio.current_time()
        closed = await expect_closed(client)
        finished = trio.current_time()
    assert (closed.code, closed.reason) == (4004, "Heartbeat timeout")
    assert ends == [ConnectionEnd(4004, "Heartbeat timeout", by_peer=False)]
    (t_unhealthy, s1), (t_stale, s2) = handler.liveness
    assert (s1, s2) == (Liveness.UNHEALTHY, Liveness.STALE)
    assert 90.0 < t_unhealthy - began <= 90.01
    assert 180.0 < t_stale - began <= 180.01
    assert finished - began <= 180.01


@pytest.mark.feature("PRO-15")
async def test_any_inbound_frame_counts_as_liveness_and_ends_unhealthy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = memory_pair()
    handler = Recorder()
    _, start = await _serve(server, handler, policy=LOG_AND_IGNORE)
    async with trio.open_nursery() as nursery:
        session = await start(nursery)
        for frame in (encode(_ack(1)), "not json", '{"type":"nope"}'):
            await trio.sleep(89)
            await client.send(frame)
        assert handler.liveness == []
        await trio.sleep(100)
        assert session.liveness is Liveness.UNHEALTHY
        await client.send(encode(Heartbeat(timestamp=1)))
        await trio.testing.wait_all_tasks_blocked()
        assert session.liveness is Liveness.OK
        session.close(1000)
    assert [state for _, state in handler.liveness] == [Liveness.UNHEALTHY, Liveness.OK]


@pytest.mark.feature("PRO-15")
async def test_thresholds_are_configurable_and_the_monitor_can_be_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = memory_pair()
    ends, start = await _serve(
        server, Recorder(), liveness=LivenessThresholds(unhealthy_after_ms=600, stale_after_ms=1200)
    )
    async with trio.open_nursery() as nursery:
        await start(nursery)
        began = trio.current_time()
        await expect_closed(client)
        assert 1.2 < trio.current_time() - began <= 1.21
    assert ends[0].code == 4004

    client, server = memory_pair()
    _, start = await _serve(server, Recorder(), liveness=None)
    async with trio.open_nursery() as nursery:
        session = await start(nursery)
        await trio.sleep(10_000)
        assert not session.closing
        session.close(1000)


@pytest.mark.feature("PRO-15")
async def test_heartbeats_start_when_the_handler_says_so_then_every_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    agent_end, orch_end = memory_pair()
    stamps = iter(range(1_000, 10_000, 1_000))

    async def registered(session: Session, message: Message) -> None:
        session.start_heartbeats()

    handler = Recorder(on_message=registered)

    async def run_agent() -> None:
        await run_connection(
            agent_end,
            handler,
            direction=Direction.ORCH_TO_AGENT,
            heartbeat_interval=30.0,
            liveness=None,
            clock=lambda: next(stamps),
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_agent)
        with trio.move_on_after(100):
            assert await orch_end.receive() is None
        await orch_end.send(encode(Ack(message_id="register.ack stand-in")))
        started = trio.current_time()
        beats = []
        for _ in range(3):
            beat = decode(ORCH, await orch_end.receive())
            beats.append((trio.current_time() - started, beat))
        await orch_end.close(1000)
    assert [round(at) for at, _ in beats] == [30, 60, 90]
    assert [beat for _, beat in beats] == [Heartbeat(timestamp=t) for t in (1_000, 2_000, 3_000)]


@pytest.mark.feature("PRO-33", "PRO-03")
async def test_handshake_timer_closes_unless_disarmed(autojump_clock: trio.testing.MockClock) -> None:
    async def arm(session: Session) -> None:
        session.arm_timer(5.0, 4002, "Auth timeout")

    client, server = memory_pair()
    ends, start = await _serve(server, Recorder(on_open=arm))
    async with trio.open_nursery() as nursery:
        await start(nursery)
        began = trio.current_time()
        closed = await expect_closed(client)
        assert 5.0 <= trio.current_time() - began < 5.01
    assert (closed.code, closed.reason) == (4002, "Auth timeout")
    assert ends == [ConnectionEnd(4002, "Auth timeout", by_peer=False)]

    async def advance(session: Session, message: Message) -> None:
        session.disarm_timer()
        if isinstance(message, JobAck) and message.timestamp == 1:
            session.arm_timer(10.0, 4002, "Registration timeout")

    client, server = memory_pair()
    ends, start = await _serve(server, Recorder(on_open=arm, on_message=advance))
    async with trio.open_nursery() as nursery:
        await start(nursery)
        await trio.sleep(4.9)
        await client.send(encode(_ack(1)))
        await trio.sleep(9.9)
        await client.send(encode(_ack(2)))
        await trio.sleep(50)
        await client.send(encode(_ack(3)))
        await client.close(1000)
    assert ends == [ConnectionEnd(1006, "", by_peer=True)]


@pytest.mark.feature("PRO-05")
async def test_rate_limiter_runs_before_the_handler_and_disconnects_sustained_floods(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = memory_pair()
    handler = Recorder()
    limiter = WsRateLimiter(RateLimitConfig(message_capacity=5, messages_per_s=0.1))
    ends, start = await _serve(server, handler, rate_limiter=limiter, policy=LOG_AND_IGNORE)
    warnings: list[Message] = []

    async def read_client() -> None:
        try:
            while True:
                warnings.append(decode(Direction.ORCH_TO_AGENT, await client.receive()))
        except ConnectionClosed:
            return

    async with trio.open_nursery() as nursery:
        await start(nursery)
        nursery.start_soon(read_client)
        for n in range(8):
            await client.send(encode(_ack(n)))
        await client.send("garbage is limited too")
        await client.send(encode(Heartbeat(timestamp=1)))
        await trio.testing.wait_all_tasks_blocked()
        assert [m for _, m in handler.messages] == [*(_ack(n) for n in range(5)), Heartbeat(timestamp=1)]
        assert warnings == [RateLimitWarning(retry_after_ms=10_000)] * 4
        for second in range(7):
            await trio.sleep(1)
            for n in range(3):
                try:
                    await client.send(encode(_ack(100 * second + n)))
                except ConnectionClosed:
                    break
    assert ends == [ConnectionEnd(4003, "Sustained rate limit violation", by_peer=False)]


@pytest.mark.feature("PRO-05")
async def test_rate_limiter_disconnects_a_frame_above_4_mib(autojump_clock: trio.testing.MockClock) -> None:
    client, server = memory_pair()
    handler = Recorder()
    ends, start = await _serve(server, handler, rate_limiter=WsRateLimiter())
    async with trio.open_nursery() as nursery:
        await start(nursery)
        await client.send('{"type":"job.ack","pad":"' + "x" * (4 * MIB) + '"}')
        closed = await expect_closed(client)
    assert (closed.code, closed.reason) == (4003, "Message too large")
    assert ends[0].code == 4003
    assert handler.messages == []


@pytest.mark.feature("PRO-33")
async def test_outbox_is_bounded_and_flushed_before_the_close_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = memory_pair(capacity=0)
    handler = Recorder()
    ends, start = await _serve(server, handler, outbox_frames=2)
    async with trio.open_nursery() as nursery:
        session = await start(nursery)
        await session.send(Ack(message_id="1"))
        await trio.testing.wait_all_tasks_blocked()
        await session.send(Ack(message_id="2"))
        await session.send(Ack(message_id="3"))
        assert not session.try_send(Ack(message_id="4"))
        assert session.unsent_bytes == 3 * len(encode(Ack(message_id="1")))
        with trio.move_on_after(1) as blocked:
            await session.send(Ack(message_id="4"))
        assert blocked.cancelled_caught
        session.close(4031, "Dispatch ack timeout")
        with pytest.raises(ConnectionClosed):
            await session.send(Ack(message_id="late"))
        received = [decode(Direction.ORCH_TO_AGENT, await client.receive()) for _ in range(3)]
        closed = await expect_closed(client)
    assert [m.message_id for m in received if isinstance(m, Ack)] == ["1", "2", "3"]
    assert (closed.code, closed.reason) == (4031, "Dispatch ack timeout")
    assert ends == [ConnectionEnd(4031, "Dispatch ack timeout", by_peer=False)]
    assert session.unsent_bytes == 0


@pytest.mark.feature("PRO-33")
async def test_flush_is_bounded_when_the_peer_stops_reading(autojump_clock: trio.testing.MockClock) -> None:
    client, server = memory_pair(capacity=0)
    ends: list[tuple[float, ConnectionEnd]] = []

    async def run(task_status: trio.TaskStatus[Session] = trio.TASK_STATUS_IGNORED) -> None:
        end = await run_connection(
            server, Recorder(), direction=ORCH, flush_timeout=2.0, task_status=task_status
        )
        ends.append((trio.current_time(), end))

    async with trio.open_nursery() as nursery:
        session: Session = await nursery.start(run)
        for n in range(3):
            await session.send(Ack(message_id=str(n)))
        began = trio.current_time()
        session.close(4004, "bye")
    closed = await expect_closed(client)
    assert closed.code == 4004
    [(ended, end)] = ends
    assert 2.0 <= ended - began < 2.01
    assert end == ConnectionEnd(4004, "bye", by_peer=False)


@pytest.mark.feature("PRO-33", "PRO-03")
async def test_a_failing_handler_closes_4006_and_its_error_propagates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def explode(session: Session, message: Message) -> None:
        raise LookupError("handler bug")

    client, server = memory_pair()
    seen: list[ConnectionClosed] = []

    async def agent() -> None:
        await client.send(encode(_ack(1)))
        seen.append(await expect_closed(client))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent)
        with pytest.raises(LookupError, match="handler bug"):
            await run_connection(server, Recorder(on_message=explode), direction=ORCH)
    assert [(c.code, c.reason) for c in seen] == [(4006, "Internal error")]


@pytest.mark.feature("PRO-33", "PRO-03")
async def test_session_close_checks_the_code_and_cuts_the_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = memory_pair()
    ends, start = await _serve(server, Recorder())
    async with trio.open_nursery() as nursery:
        session = await start(nursery)
        with pytest.raises(InvalidCloseCodeError):
            session.close(1006)
        with pytest.raises(InvalidCloseCodeError):
            session.arm_timer(1, 1005, "x")
        session.close(4010, "€" * 100)
        session.close(4003, "ignored: the first close wins")
        closed = await expect_closed(client)
    assert closed.code == 4010
    assert closed.reason == "€" * 41
    assert ends[0].reason == "€" * 41


@pytest.mark.feature("PRO-33")
async def test_session_from_nursery_start_serves_other_tasks_until_the_peer_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = memory_pair()
    _, start = await _serve(server, Recorder())
    async with trio.open_nursery() as nursery:
        session = await start(nursery)
        assert session.remote_addr == server.remote_addr
        assert session.now_ms() > 0
        await session.send(ConfigAck(message_id="c", agent_id="a"))
        assert decode(ORCH, await client.receive()) == ConfigAck(message_id="c", agent_id="a")
        await client.close(1000)
        await trio.testing.wait_all_tasks_blocked()
        assert session.closing
        with pytest.raises(ConnectionClosed):
            await session.send(Ack(message_id="late"))
        with pytest.raises(ConnectionClosed):
            session.try_send(Ack(message_id="late"))


@pytest.mark.feature("PRO-33")
async def test_run_connection_checks_its_settings(autojump_clock: trio.testing.MockClock) -> None:
    client, server = memory_pair()
    with pytest.raises(ValueError, match="outbox_frames"):
        await run_connection(server, Recorder(), direction=ORCH, outbox_frames=0)
    with pytest.raises(ValueError, match="heartbeat_interval"):
        await run_connection(server, Recorder(), direction=ORCH, heartbeat_interval=0)
    client.abort()
