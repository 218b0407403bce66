"""The in-memory pair against the WsConnection contract (PRO-33), plus what only the fake offers."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from kici.adapters.ws.memory import MemoryListener, memory_pair
from kici.domain.ports import ConnectionClosed, WsConnectError
from kici.domain.protocol import MAX_CLOSE_REASON_BYTES
from kici.testing.ws_contract import PairFactory, WsContract, expect_closed, open_memory_pair


class TestMemoryPair(WsContract):
    @pytest.fixture
    def open_pair(self) -> PairFactory:
        return open_memory_pair


@pytest.mark.feature("PRO-33", "PRO-03")
async def test_exact_peer_codes_lift_the_hypercorn_blind_spot() -> None:
    client, server = memory_pair(exact_peer_codes=True)
    await client.close(4003, "client leaving")
    closed = await expect_closed(server)
    assert (closed.code, closed.reason) == (4003, "client leaving")


@pytest.mark.feature("PRO-33")
async def test_sender_blocks_when_the_peer_stops_reading(autojump_clock: trio.testing.MockClock) -> None:
    client, server = memory_pair(capacity=2)
    await client.send("1")
    await client.send("2")
    with trio.move_on_after(1) as scope:
        await client.send("3")
    assert scope.cancelled_caught
    assert await server.receive() == "1"
    await client.send("3")


@pytest.mark.feature("PRO-33")
async def test_a_blocked_sender_wakes_when_the_peer_closes() -> None:
    client, server = memory_pair(capacity=0)
    outcome: list[ConnectionClosed] = []

    async def send() -> None:
        try:
            await client.send("stuck")
        except ConnectionClosed as closed:
            outcome.append(closed)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await trio.testing.wait_all_tasks_blocked()
        await server.close(1001, "going away")
    assert [(c.code, c.reason) for c in outcome] == [(1001, "going away")]


@pytest.mark.feature("PRO-33")
async def test_listener_connects_accepts_refuses_and_closes_with_1000_on_exit() -> None:
    listener = MemoryListener()
    async with listener.connect() as client:
        server = await listener.accept()
        await client.send("hello")
        assert await server.receive() == "hello"
    assert (await expect_closed(server)).code == 1006
    assert listener.connects == 1
    listener.refusing = True
    with pytest.raises(WsConnectError):
        async with listener.connect():
            pass
    listener.close()
    with pytest.raises(WsConnectError):
        async with listener.connect():
            pass


@pytest.mark.feature("PRO-33")
def test_pair_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_message_size"):
        memory_pair(max_message_size=0)


@pytest.mark.feature("PRO-33", "PRO-03")
@given(
    frames=st.lists(st.text(max_size=300), max_size=12),
    reason=st.text(alphabet=st.characters(exclude_categories=()), max_size=150),
)
def test_any_frames_arrive_in_order_and_any_reason_is_cut_safely(frames: list[str], reason: str) -> None:
    """Text frames round-trip unchanged and in order; every close reason, surrogates included, arrives
    as a valid UTF-8 prefix of at most 123 bytes."""

    async def main() -> None:
        client, server = memory_pair(exact_peer_codes=True)
        for frame in frames:
            await client.send(frame)
        await client.close(4000, reason)
        assert [await server.receive() for _ in frames] == frames
        closed = await expect_closed(server)
        assert closed.code == 4000
        assert reason.startswith(closed.reason)
        assert len(closed.reason.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES

    trio.run(main)


@pytest.mark.feature("PRO-33", "PRO-15")
async def test_a_silent_peer_leaves_a_ping_waiting_until_the_local_close() -> None:
    client, server = memory_pair()
    server.answers_pings = False
    seen: list[ConnectionClosed] = []

    async def ping() -> None:
        try:
            await client.ping()
        except ConnectionClosed as closed:
            seen.append(closed)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ping)
        await trio.testing.wait_all_tasks_blocked()
        assert not seen
        await client.close(4004, "No pong from the orchestrator")
    assert [(c.code, c.reason) for c in seen] == [(4004, "No pong from the orchestrator")]
