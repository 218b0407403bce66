"""The conformance suite of the ``WsConnection`` port (PRO-03, PRO-04, PRO-33): every adapter passes it.

It runs on a connected *pair*, a client end and a server end, because a close or a size limit is only
observable from the other side. Use it by subclassing in ``tests/contract`` with a fixture ``open_pair``
returning a `PairFactory`::

    class TestMemoryPair(WsContract):
        @pytest.fixture
        def open_pair(self) -> PairFactory:
            return open_memory_pair

Factories for the adapters shipped with kici: `open_memory_pair` (``kici.adapters.ws.memory``) and
`open_real_pair` (the trio-websocket client against quart-trio on hypercorn on loopback, optionally TLS
and optionally through the misbehaving `TcpProxy`).

Where the real server cannot know something, the suite asks for what it can: the quart/hypercorn server
end learns of a close it did not send only as 1006 (``WsPair.server_sees_peer_codes`` is False), and the
in-memory server end copies that by default.

The client end can also ``ping`` (`PingingWsConnection`): the pong comes whether or not the server's
application reads, and a ping never outlives the connection, however the connection ends.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, Protocol

import attrs
import pytest
import trio

from kici.adapters.ws.client import connect
from kici.adapters.ws.frames import DEFAULT_MAX_MESSAGE_SIZE
from kici.adapters.ws.memory import memory_pair
from kici.adapters.ws.server import accept_websocket, create_app, serve
from kici.domain.ports import ConnectionClosed, InvalidCloseCodeError, RemoteAddress, WsConnection
from kici.domain.protocol import MAX_CLOSE_REASON_BYTES, truncate_close_reason
from kici.testing.tcp_proxy import TcpProxy, open_tcp_proxy

_TIMEOUT_S: Final = 10.0
SMALL_LIMIT: Final = 4096
"""The frame limit of the size tests: the same rule as 25 MiB without moving 25 MiB per test."""


class PingingWsConnection(WsConnection, Protocol):
    """The client end of the port: a ``WsConnection`` that can also ping.

    ``ping`` waits for the pong; it raises ``ConnectionClosed`` once the connection is closed, also
    when the close (local, by the peer, a reset) happens while it waits, and may wait as long as a
    black-holed peer stays silent.
    """

    async def ping(self) -> None: ...


@attrs.frozen
class WsPair:
    """A connected client/server pair and what the suite may expect of it."""

    client: PingingWsConnection
    server: WsConnection
    reset: Callable[[], None]
    """Tear the connection down without a close frame (a TCP reset)."""
    silence: Callable[[], None]
    """Make the server end stop answering pings from now on (a black hole, as far as pings go)."""
    server_sees_peer_codes: bool
    client_remote: RemoteAddress | None
    """What ``client.remote_addr`` must be, when the factory knows it."""
    server_remote_host: str


PairFactory = Callable[..., AbstractAsyncContextManager[WsPair]]
"""``open_pair(max_message_size=...)`` -> ``async with`` a fresh `WsPair`."""


@asynccontextmanager
async def open_memory_pair(*, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> AsyncIterator[WsPair]:
    client, server = memory_pair(max_message_size=max_message_size)

    def silence() -> None:
        server.answers_pings = False

    try:
        yield WsPair(
            client=client,
            server=server,
            reset=client.abort,
            silence=silence,
            server_sees_peer_codes=False,
            client_remote=RemoteAddress("memory", 0),
            server_remote_host="memory",
        )
    finally:
        client.abort()


@attrs.frozen
class Tls:
    """A server certificate for ``wss://`` and the client context that trusts it."""

    certfile: str
    keyfile: str
    client_context: ssl.SSLContext


@asynccontextmanager
async def open_real_pair(
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    tls: Tls | None = None,
    proxy_hook: Callable[[TcpProxy], None] | None = None,
    close_timeout: float = 2.0,
) -> AsyncIterator[WsPair]:
    """A trio-websocket client connected to a quart-trio/hypercorn server on 127.0.0.1, via a `TcpProxy`.

    The route keeps the server end open until the pair is released; ``proxy_hook`` receives the
    proxy (to delay or black-hole traffic later).
    """
    app = create_app(__name__, max_message_size=max_message_size, close_timeout=close_timeout)
    accepted_send, accepted_receive = trio.open_memory_channel[WsConnection](1)
    release = trio.Event()

    @app.websocket("/ws")
    async def ws() -> None:
        conn = await accept_websocket()
        await accepted_send.send(conn)
        await release.wait()

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            _serve_with_tls, app, tls.certfile if tls else None, tls.keyfile if tls else None
        )
        async with open_tcp_proxy("127.0.0.1", bound.port) as proxy:
            if proxy_hook is not None:
                proxy_hook(proxy)
            scheme = "wss" if tls else "ws"
            async with connect(
                f"{scheme}://127.0.0.1:{proxy.port}/ws",
                ssl_context=tls.client_context if tls else None,
                max_message_size=max_message_size,
                close_timeout=close_timeout,
            ) as client:
                with trio.fail_after(_TIMEOUT_S):
                    server = await accepted_receive.receive()

                def silence() -> None:
                    proxy.blackhole = True

                try:
                    yield WsPair(
                        client=client,
                        server=server,
                        reset=proxy.reset,
                        silence=silence,
                        server_sees_peer_codes=False,
                        client_remote=RemoteAddress("127.0.0.1", proxy.port),
                        server_remote_host="127.0.0.1",
                    )
                finally:
                    release.set()
        nursery.cancel_scope.cancel()


async def _serve_with_tls(
    app: Any, certfile: str | None, keyfile: str | None, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    await serve(app, certfile=certfile, keyfile=keyfile, task_status=task_status)


async def expect_closed(conn: WsConnection, *, within: float = _TIMEOUT_S) -> ConnectionClosed:
    """Receive until the connection reports its close (frames still in flight are skipped)."""
    with trio.fail_after(within):
        while True:
            try:
                await conn.receive()
            except ConnectionClosed as closed:
                return closed


async def expect_both_closed(pair: WsPair) -> tuple[ConnectionClosed, ConnectionClosed]:
    """Read both ends until each reports its close: (client's view, server's view)."""
    views: dict[str, ConnectionClosed] = {}

    async def watch(name: str, conn: WsConnection) -> None:
        views[name] = await expect_closed(conn)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, "client", pair.client)
        nursery.start_soon(watch, "server", pair.server)
    return views["client"], views["server"]


def _server_view(pair: WsPair, code: int) -> set[int]:
    return {code} if pair.server_sees_peer_codes else {code, 1006}


@pytest.mark.feature("PRO-33", "PRO-03", "PRO-04")
class WsContract:
    """The ``WsConnection`` semantics of ``kici.domain.ports``, from both ends of a pair."""

    @pytest.fixture
    def open_pair(self) -> PairFactory:
        raise NotImplementedError

    async def test_text_frames_round_trip_in_order(self, open_pair: PairFactory) -> None:
        frames = ["", "a", "{}", "é€😀 mixed", "x" * 70_000, *(f'{{"n":{i}}}' for i in range(40))]
        async with open_pair() as pair:
            with trio.fail_after(_TIMEOUT_S):
                for sender, receiver in ((pair.client, pair.server), (pair.server, pair.client)):
                    for frame in frames:
                        await sender.send(frame)
                    assert [await receiver.receive() for _ in frames] == frames

    async def test_server_close_reaches_client_with_code_and_reason(self, open_pair: PairFactory) -> None:
        async with open_pair() as pair:
            await pair.server.send("last words")
            await pair.server.close(4004, "Heartbeat timeout")
            with trio.fail_after(_TIMEOUT_S):
                assert await pair.client.receive() == "last words"
            closed = await expect_closed(pair.client)
            assert (closed.code, closed.reason) == (4004, "Heartbeat timeout")
            with pytest.raises(ConnectionClosed):
                await pair.client.send("too late")

    async def test_client_close_reaches_server(self, open_pair: PairFactory) -> None:
        async with open_pair() as pair:
            await pair.client.send("bye")
            await pair.client.close(4003, "client leaving")
            with trio.fail_after(_TIMEOUT_S):
                assert await pair.server.receive() == "bye"
            closed = await expect_closed(pair.server)
            assert closed.code in _server_view(pair, 4003)
            if pair.server_sees_peer_codes:
                assert closed.reason == "client leaving"
            with pytest.raises(ConnectionClosed):
                await pair.server.send("too late")

    async def test_close_reason_is_cut_to_123_utf8_bytes(self, open_pair: PairFactory) -> None:
        reason = "é" * 70 + "z" * 10
        expected = truncate_close_reason(reason)
        assert len(expected.encode()) <= MAX_CLOSE_REASON_BYTES
        async with open_pair() as pair:
            await pair.server.close(4010, reason)
            closed = await expect_closed(pair.client)
            assert (closed.code, closed.reason) == (4010, expected)
            local = await expect_closed(pair.server)
            assert (local.code, local.reason) == (4010, expected)

    async def test_receive_and_send_after_local_close_raise_the_local_close(
        self, open_pair: PairFactory
    ) -> None:
        for closer in ("client", "server"):
            async with open_pair() as pair:
                conn = getattr(pair, closer)
                await conn.close(1000, "done")
                await conn.close(4006, "ignored: close is idempotent")
                for _ in range(2):
                    with pytest.raises(ConnectionClosed) as raised:
                        await conn.receive()
                    assert (raised.value.code, raised.value.reason) == (1000, "done")
                with pytest.raises(ConnectionClosed):
                    await conn.send("x")

    async def test_pending_receive_wakes_on_local_close(self, open_pair: PairFactory) -> None:
        async with open_pair() as pair:
            seen: list[ConnectionClosed] = []

            async def wait() -> None:
                try:
                    await pair.client.receive()
                except ConnectionClosed as closed:
                    seen.append(closed)

            with trio.fail_after(_TIMEOUT_S):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(wait)
                    await trio.testing.wait_all_tasks_blocked()
                    await pair.client.close(4002, "Auth timeout")
            assert [(c.code, c.reason) for c in seen] == [(4002, "Auth timeout")]

    async def test_receive_after_peer_close_keeps_raising(self, open_pair: PairFactory) -> None:
        async with open_pair() as pair:
            await pair.server.close(4031, "Dispatch ack timeout")
            first = await expect_closed(pair.client)
            with pytest.raises(ConnectionClosed) as again:
                await pair.client.receive()
            assert first.code == 4031
            assert (again.value.code, again.value.reason) == (first.code, first.reason)

    async def test_unsendable_close_code_is_refused(self, open_pair: PairFactory) -> None:
        async with open_pair() as pair:
            for code in (999, 1004, 1005, 1006, 1015, 2000, 5000):
                with pytest.raises(InvalidCloseCodeError):
                    await pair.client.close(code)
            await pair.client.send("still open")
            with trio.fail_after(_TIMEOUT_S):
                assert await pair.server.receive() == "still open"

    async def test_send_refuses_non_text(self, open_pair: PairFactory) -> None:
        async with open_pair() as pair:
            with pytest.raises(TypeError):
                await pair.client.send(b"bytes")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="surrogate"):
                await pair.client.send("lone \ud800 surrogate")
            await pair.client.send("fine")
            with trio.fail_after(_TIMEOUT_S):
                assert await pair.server.receive() == "fine"

    async def test_frames_at_the_limit_pass(self, open_pair: PairFactory) -> None:
        async with open_pair(max_message_size=SMALL_LIMIT) as pair:
            frames = ["a" * SMALL_LIMIT, "é" * (SMALL_LIMIT // 2)]
            with trio.fail_after(_TIMEOUT_S):
                for frame in frames:
                    await pair.client.send(frame)
                    assert await pair.server.receive() == frame
                    await pair.server.send(frame)
                    assert await pair.client.receive() == frame

    @pytest.mark.parametrize("frame", ["a" * (SMALL_LIMIT + 1), "é" * (SMALL_LIMIT // 2 + 1)])
    async def test_oversized_frame_from_client_closes_with_1009(
        self, open_pair: PairFactory, frame: str
    ) -> None:
        async with open_pair(max_message_size=SMALL_LIMIT) as pair:
            await pair.client.send(frame)
            client_view, server_view = await expect_both_closed(pair)
            assert client_view.code == 1009
            assert server_view.code in _server_view(pair, 1009)

    @pytest.mark.parametrize("frame", ["a" * (SMALL_LIMIT + 1), "é" * (SMALL_LIMIT // 2 + 1)])
    async def test_oversized_frame_from_server_closes_with_1009(
        self, open_pair: PairFactory, frame: str
    ) -> None:
        async with open_pair(max_message_size=SMALL_LIMIT) as pair:
            await pair.server.send(frame)
            client_view, server_view = await expect_both_closed(pair)
            assert client_view.code == 1009
            assert server_view.code in _server_view(pair, 1009)

    async def test_concurrent_sends_are_serialized(self, open_pair: PairFactory) -> None:
        per_task = 60
        async with open_pair() as pair:

            async def burst(tag: str) -> None:
                for i in range(per_task):
                    await pair.client.send(f"{tag}:{i}:" + tag * 20_000)

            received: list[str] = []
            with trio.fail_after(_TIMEOUT_S):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(burst, "a")
                    nursery.start_soon(burst, "b")
                    for _ in range(2 * per_task):
                        received.append(await pair.server.receive())
            for tag in "ab":
                mine = [frame.split(":", 2) for frame in received if frame.startswith(tag + ":")]
                assert [int(index) for _, index, _ in mine] == list(range(per_task))
                assert all(body == tag * 20_000 for _, _, body in mine)

    async def test_reset_is_seen_as_1006_on_both_ends(self, open_pair: PairFactory) -> None:
        async with open_pair() as pair:
            await pair.client.send("before")
            with trio.fail_after(_TIMEOUT_S):
                assert await pair.server.receive() == "before"
            pair.reset()
            assert (await expect_closed(pair.client)).code == 1006
            assert (await expect_closed(pair.server)).code == 1006

    @pytest.mark.feature("PRO-15")
    async def test_client_ping_is_answered_while_the_server_app_does_not_read(
        self, open_pair: PairFactory
    ) -> None:
        async with open_pair() as pair:
            await pair.client.send("unread")
            with trio.fail_after(_TIMEOUT_S):
                for _ in range(3):
                    await pair.client.ping()
                assert await pair.server.receive() == "unread"
                await pair.client.ping()

    @pytest.mark.feature("PRO-15")
    async def test_ping_after_a_close_raises_that_close(self, open_pair: PairFactory) -> None:
        async with open_pair() as pair:
            await pair.client.close(4006, "local")
            with pytest.raises(ConnectionClosed) as local:
                await pair.client.ping()
            assert (local.value.code, local.value.reason) == (4006, "local")
        async with open_pair() as pair:
            await pair.server.close(4004, "Heartbeat timeout")
            await expect_closed(pair.client)
            with pytest.raises(ConnectionClosed) as remote:
                await pair.client.ping()
            assert (remote.value.code, remote.value.reason) == (4004, "Heartbeat timeout")

    @pytest.mark.feature("PRO-15")
    async def test_a_pending_ping_wakes_when_the_connection_drops(self, open_pair: PairFactory) -> None:
        async with open_pair() as pair:
            with trio.fail_after(_TIMEOUT_S):
                await pair.client.ping()
            pair.silence()
            seen: list[ConnectionClosed] = []

            async def ping() -> None:
                try:
                    await pair.client.ping()
                except ConnectionClosed as closed:
                    seen.append(closed)

            with trio.fail_after(_TIMEOUT_S):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ping)
                    await trio.sleep(0.2)
                    assert not seen
                    pair.reset()
            assert [c.code for c in seen] == [1006]

    async def test_remote_addr_names_the_other_end(self, open_pair: PairFactory) -> None:
        async with open_pair() as pair:
            if pair.client_remote is not None:
                assert pair.client.remote_addr == pair.client_remote
            assert pair.server.remote_addr.host == pair.server_remote_host
            assert pair.server.remote_addr.port > 0
            assert str(pair.server.remote_addr).startswith(pair.server_remote_host + ":")


__all__ = [
    "SMALL_LIMIT",
    "PairFactory",
    "PingingWsConnection",
    "Tls",
    "WsContract",
    "WsPair",
    "expect_both_closed",
    "expect_closed",
    "open_memory_pair",
    "open_real_pair",
]
