"""An in-memory WebSocket: two connected ``WsConnection`` ends over two trio memory channels.

It exists so that connection logic can be tested under ``trio.testing.MockClock`` (no sockets, no real
time) and still mean something for production: the contract suite (``kici.testing.ws_contract``) runs
the same cases against this pair and against the real client and server. The ends copy the real
adapters' close semantics, including their blind spots:

- a bounded inbox per direction (``capacity`` frames), so a sender blocks when its peer stops reading,
  as it would once TCP buffers fill;
- the receiver enforces the size limit: an oversized frame closes the pair with 1009, the receiver drops
  what it had not read yet, the sender still reads what arrived before the close;
- the server end reports every close it did not send itself as 1006 with no reason, because that is all
  hypercorn tells a quart-trio app (``exact_peer_codes=True`` lifts this for tests that need it);
- ``abort()`` ends the pair without a close frame (a reset): both ends see 1006;
- ``ping()`` is answered at once while the pair is open, the way hypercorn's protocol layer answers
  whether or not the application reads; ``answers_pings = False`` on an end makes it a silent peer
  (a black hole for pings): a ping waits until the pair closes, then raises its close.

`MemoryListener` adds connect/accept on top, for client supervisors and server loops.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import trio

from kici.adapters.ws.frames import (
    ABNORMAL_CLOSURE,
    DEFAULT_MAX_MESSAGE_SIZE,
    MESSAGE_TOO_BIG,
    TOO_BIG_REASON,
    close_frame,
    exceeds_limit,
    raised,
    require_text,
    utf8_size,
)
from kici.domain.ports import ConnectionClosed, RemoteAddress, WsConnectError

DEFAULT_CAPACITY: Final = 64
SERVER_ADDRESS: Final = RemoteAddress("memory", 0)


class MemoryWsConnection:
    """One end of an in-memory pair; build pairs with `memory_pair`."""

    def __init__(
        self,
        *,
        inbox: trio.MemoryReceiveChannel[str],
        outbox: trio.MemorySendChannel[str],
        remote_addr: RemoteAddress,
        max_message_size: int,
        exact_peer_codes: bool,
    ) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._remote_addr = remote_addr
        self._max_message_size = max_message_size
        self._exact_peer_codes = exact_peer_codes
        self._local_close: ConnectionClosed | None = None
        self._peer_close: ConnectionClosed | None = None
        self._peer: MemoryWsConnection | None = None
        self._ended = trio.Event()
        self.answers_pings = True

    @property
    def remote_addr(self) -> RemoteAddress:
        return self._remote_addr

    @property
    def closed(self) -> ConnectionClosed | None:
        """How this end sees the close, once either side closed."""
        return self._local_close or self._peer_close

    async def send(self, text: str) -> None:
        require_text(text)
        utf8_size(text)
        await trio.lowlevel.checkpoint()
        self._raise_if_closed()
        peer = self._linked_peer()
        try:
            if exceeds_limit(text, peer._max_message_size):
                peer._close_locally(MESSAGE_TOO_BIG, TOO_BIG_REASON)
                return
            await self._outbox.send(text)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._raise_if_closed()
            raise ConnectionClosed(ABNORMAL_CLOSURE) from None

    async def receive(self) -> str:
        self._raise_if_local()
        try:
            return await self._inbox.receive()
        except trio.EndOfChannel:
            raise raised(self._peer_close) from None
        except trio.ClosedResourceError:
            raise raised(self._local_close) from None

    async def ping(self) -> None:
        """Wait for the peer's pong; raises ``ConnectionClosed`` once the pair is closed, even mid-wait."""
        await trio.lowlevel.checkpoint()
        self._raise_if_closed()
        if not self._linked_peer().answers_pings:
            await self._ended.wait()
            self._raise_if_closed()

    async def close(self, code: int, reason: str = "") -> None:
        code, reason = close_frame(code, reason)
        await trio.lowlevel.checkpoint()
        if self._local_close is not None:
            return
        if self._peer_close is not None:
            self._local_close = self._peer_close
            self._shut_channels()
            return
        self._close_locally(code, reason)

    def abort(self) -> None:
        """End the pair without a close frame, like a TCP reset: both ends see 1006."""
        if self.closed is not None:
            return
        self._local_close = ConnectionClosed(ABNORMAL_CLOSURE)
        self._shut_channels()
        peer = self._linked_peer()
        peer._local_close = ConnectionClosed(ABNORMAL_CLOSURE)
        peer._shut_channels()

    def _close_locally(self, code: int, reason: str) -> None:
        self._local_close = ConnectionClosed(code, reason)
        self._shut_channels()
        self._linked_peer()._closed_by_peer(code, reason)

    def _closed_by_peer(self, code: int, reason: str) -> None:
        if self.closed is not None:
            return
        self._peer_close = (
            ConnectionClosed(code, reason) if self._exact_peer_codes else ConnectionClosed(ABNORMAL_CLOSURE)
        )
        self._outbox.close()
        self._ended.set()

    def _shut_channels(self) -> None:
        self._inbox.close()
        self._outbox.close()
        self._ended.set()

    def _raise_if_local(self) -> None:
        if self._local_close is not None:
            raise raised(self._local_close)

    def _raise_if_closed(self) -> None:
        if self.closed is not None:
            raise raised(self.closed)

    def _linked_peer(self) -> MemoryWsConnection:
        if self._peer is None:
            raise RuntimeError("a MemoryWsConnection is only usable as half of memory_pair()")
        return self._peer


_client_numbers = itertools.count(1)


def memory_pair(
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    capacity: int = DEFAULT_CAPACITY,
    exact_peer_codes: bool = False,
) -> tuple[MemoryWsConnection, MemoryWsConnection]:
    """A connected ``(client, server)`` pair; both ends accept frames up to ``max_message_size`` bytes."""
    if max_message_size < 1 or capacity < 0:
        raise ValueError("max_message_size must be >= 1 and capacity >= 0")
    to_server_send, to_server_receive = trio.open_memory_channel[str](capacity)
    to_client_send, to_client_receive = trio.open_memory_channel[str](capacity)
    client = MemoryWsConnection(
        inbox=to_client_receive,
        outbox=to_server_send,
        remote_addr=SERVER_ADDRESS,
        max_message_size=max_message_size,
        exact_peer_codes=True,
    )
    server = MemoryWsConnection(
        inbox=to_server_receive,
        outbox=to_client_send,
        remote_addr=RemoteAddress("memory", next(_client_numbers)),
        max_message_size=max_message_size,
        exact_peer_codes=exact_peer_codes,
    )
    client._peer = server
    server._peer = client
    return client, server


class MemoryListener:
    """Accepts in-memory connections: ``connect()`` for clients, ``accept()`` for the server loop.

    ``refusing = True`` (or `close`) makes ``connect`` raise `WsConnectError`, as a stopped server would.
    Leaving ``connect()``'s context closes the client end with 1000, like trio-websocket does.
    """

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        capacity: int = DEFAULT_CAPACITY,
        backlog: int = 16,
        exact_peer_codes: bool = False,
    ) -> None:
        self._max_message_size = max_message_size
        self._capacity = capacity
        self._exact_peer_codes = exact_peer_codes
        self._pending_send, self._pending_receive = trio.open_memory_channel[MemoryWsConnection](backlog)
        self.refusing = False
        self.connects = 0

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[MemoryWsConnection]:
        await trio.lowlevel.checkpoint()
        if self.refusing:
            raise WsConnectError("connection refused (memory listener is refusing)")
        client, server = memory_pair(
            max_message_size=self._max_message_size,
            capacity=self._capacity,
            exact_peer_codes=self._exact_peer_codes,
        )
        try:
            self._pending_send.send_nowait(server)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            raise WsConnectError("connection refused (memory listener backlog full or closed)") from None
        self.connects += 1
        try:
            yield client
        finally:
            with trio.CancelScope(shield=True):
                await client.close(1000)

    async def accept(self) -> MemoryWsConnection:
        return await self._pending_receive.receive()

    def close(self) -> None:
        self.refusing = True
        self._pending_receive.close()


__all__ = ["DEFAULT_CAPACITY", "MemoryListener", "MemoryWsConnection", "memory_pair"]
