"""A protocol-level fake Platform: the Platform side of 20 §5.1 / 20a §6.4 on a loopback WebSocket.

It stores nothing and routes nothing; a test scripts it. ``open_fake_platform(tokens=...)`` serves
``/ws`` on 127.0.0.1 (a free port) and yields a :class:`FakePlatform`:

* every ``auth.request`` is recorded (:attr:`FakePlatform.auth_requests`); a token in ``tokens`` (any
  token when ``tokens`` is None) gets ``auth.success``, any other ``auth.failure`` then close 4001.
  Flip :attr:`FakePlatform.accepting` to refuse everyone for a while;
* ``source.register`` is answered ``source.register.ack`` accepting every source (or as
  :attr:`FakePlatform.register_ack` says);
* every frame of an authenticated orchestrator lands in the inbox; tests wait for what they expect
  (``await platform.expect(ExecutionStatus, lambda m: ...)``);
* the test drives the orchestrator: :meth:`FakePlatform.relay` sends a body as
  ``webhook.relay.start`` + chunks (64 KiB by default, as the real Platform) and returns the
  ``webhook.ack``; :meth:`FakePlatform.request` sends a dashboard request and returns its response;
  :meth:`FakePlatform.send` / :meth:`FakePlatform.send_text` send anything, garbage included;
  :meth:`FakePlatform.kick` closes the orchestrator's connection.

The orchestrator side never needs this module: it is only the other end for tests and benchmarks.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import TypeVar

import attrs
import trio

from kici.adapters.ws.server import accept_websocket, create_app, serve
from kici.domain.ports import ConnectionClosed, WsConnection
from kici.domain.protocol import (
    AcceptedSource,
    AuthFailure,
    AuthRequest,
    CloseCode,
    DecodeError,
    Direction,
    Message,
    PlatformAuthSuccess,
    SourceRegister,
    SourceRegisterAck,
    WebhookAck,
    WebhookRelayChunk,
    WebhookRelayStart,
    decode,
    encode,
)
from kici.domain.relay import RELAY_CHUNK_BYTES, split_body

M = TypeVar("M", bound=Message)

DEFAULT_TIMEOUT_S = 10.0
ORG_ID = "org-fake"


class NotConnectedError(Exception):
    """The test asked the Platform to talk to an orchestrator while none is authenticated."""


@attrs.define
class OrchConnection:
    """One authenticated orchestrator connection."""

    conn: WsConnection
    connection_id: str
    closed: ConnectionClosed | None = None


class FakePlatform:
    """See the module docstring."""

    def __init__(self, tokens: Iterable[str] | None) -> None:
        self.tokens = None if tokens is None else frozenset(tokens)
        self.accepting = True
        self.register_ack: Callable[[SourceRegister], SourceRegisterAck] = accept_all
        self.url = ""
        self.auth_requests: list[AuthRequest] = []
        self.inbox: list[Message] = []
        self.undecodable: list[str] = []
        self.current: OrchConnection | None = None
        self.sessions = 0
        self._arrived = trio.Event()

    # --- the server side ------------------------------------------------------------------------

    def _notify(self) -> None:
        self._arrived.set()
        self._arrived = trio.Event()

    async def serve_connection(self, conn: WsConnection) -> None:
        """One orchestrator connection, from ``auth.request`` to its close."""
        try:
            first = decode(Direction.ORCH_TO_PLATFORM, await conn.receive())
        except (DecodeError, ConnectionClosed):
            await conn.close(CloseCode.INVALID_MESSAGE, "Expected auth.request")
            return
        if not isinstance(first, AuthRequest):
            await conn.close(CloseCode.INVALID_MESSAGE, "Expected auth.request")
            return
        self.auth_requests.append(first)
        self._notify()
        if not self.accepting or (self.tokens is not None and first.token not in self.tokens):
            await conn.send(encode(AuthFailure(reason="Invalid API key")))
            await conn.close(CloseCode.UNAUTHORIZED, "Unauthorized")
            return
        orch = OrchConnection(conn, str(uuid.uuid4()))
        self.current = orch
        self.sessions += 1
        await conn.send(encode(PlatformAuthSuccess(connection_id=orch.connection_id, org_id=ORG_ID)))
        try:
            while True:
                text = await conn.receive()
                try:
                    message = decode(Direction.ORCH_TO_PLATFORM, text)
                except DecodeError:
                    self.undecodable.append(text)
                    continue
                if isinstance(message, SourceRegister):
                    await conn.send(encode(self.register_ack(message)))
                self.inbox.append(message)
                self._notify()
        except ConnectionClosed as exc:
            orch.closed = exc
        finally:
            if self.current is orch:
                self.current = None
            self._notify()

    # --- waiting --------------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], *, within: float = DEFAULT_TIMEOUT_S) -> None:
        with trio.fail_after(within):
            while not predicate():
                await self._arrived.wait()

    async def wait_connected(self, *, within: float = DEFAULT_TIMEOUT_S) -> OrchConnection:
        """The authenticated connection, waiting for one."""
        await self.wait_for(lambda: self.current is not None, within=within)
        assert self.current is not None
        return self.current

    async def expect(
        self, kind: type[M], where: Callable[[M], bool] | None = None, *, within: float = DEFAULT_TIMEOUT_S
    ) -> M:
        """Take the first received ``kind`` frame (matching ``where``) out of the inbox, waiting for it."""
        found: list[M] = []

        def take() -> bool:
            for index, message in enumerate(self.inbox):
                if isinstance(message, kind) and (where is None or where(message)):
                    del self.inbox[index]
                    found.append(message)
                    return True
            return False

        await self.wait_for(take, within=within)
        return found[0]

    def received(self, kind: type[M]) -> list[M]:
        """The ``kind`` frames still in the inbox."""
        return [m for m in self.inbox if isinstance(m, kind)]

    # --- talking to the orchestrator --------------------------------------------------------------

    def _conn(self) -> WsConnection:
        if self.current is None:
            raise NotConnectedError("no orchestrator is connected")
        return self.current.conn

    async def send(self, message: Message) -> None:
        await self._conn().send(encode(message))

    async def send_text(self, text: str) -> None:
        await self._conn().send(text)

    async def kick(self, code: int = CloseCode.GOING_AWAY, reason: str = "Platform restarting") -> None:
        """Close the orchestrator's connection (it should reconnect)."""
        await self._conn().close(code, reason)

    async def relay(
        self,
        routing_key: str,
        body: bytes,
        *,
        delivery_id: str,
        event: str,
        headers: Mapping[str, str] | None = None,
        signature_header_name: str | None = None,
        signature_header: str | None = None,
        chunk_bytes: int = RELAY_CHUNK_BYTES,
        message_id: str | None = None,
        within: float = DEFAULT_TIMEOUT_S,
    ) -> WebhookAck:
        """Relay ``body`` as the Platform does and return the orchestrator's ``webhook.ack``."""
        mid = message_id or str(uuid.uuid4())
        split = split_body(body, chunk_bytes)
        await self.send(
            WebhookRelayStart(
                message_id=mid,
                routing_key=routing_key,
                delivery_id=delivery_id,
                event=event,
                signature_header_name=signature_header_name,
                signature_header=signature_header,
                headers={k.lower(): v for k, v in (headers or {}).items()},
                total_size=split.total_size,
                chunk_count=split.chunk_count,
                client_ip="127.0.0.1",
            )
        )
        for chunk in split.chunks:
            await self.send(
                WebhookRelayChunk(message_id=mid, sequence=chunk.sequence, data=chunk.data, final=chunk.final)
            )
        return await self.expect(WebhookAck, lambda ack: ack.message_id == mid, within=within)

    async def request(self, message: Message, *, within: float = DEFAULT_TIMEOUT_S) -> Message:
        """Send a dashboard request (it carries ``request_id``) and return the frame answering it."""
        request_id = getattr(message, "request_id", None)
        if not isinstance(request_id, str):
            raise TypeError("a dashboard request carries a request_id")
        await self.send(message)
        return await self.expect(
            Message, lambda m: getattr(m, "request_id", None) == request_id, within=within
        )


def accept_all(register: SourceRegister) -> SourceRegisterAck:
    return SourceRegisterAck(
        message_id=register.message_id,
        accepted=[AcceptedSource(routing_key=s.routing_key) for s in register.sources],
        rejected=[],
    )


@asynccontextmanager
async def open_fake_platform(
    tokens: Iterable[str] | None = None, *, graceful_timeout: float = 0.5
) -> AsyncIterator[FakePlatform]:
    """Serve a :class:`FakePlatform` at ``/ws`` on 127.0.0.1; its ``url`` is the ``ws://`` address."""
    platform = FakePlatform(tokens)
    app = create_app(__name__)

    @app.websocket("/ws")
    async def orchestrators() -> None:
        await platform.serve_connection(await accept_websocket())

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(serve, app, graceful_timeout=graceful_timeout))
        platform.url = bound.url("/ws", websocket=True)
        try:
            yield platform
        finally:
            nursery.cancel_scope.cancel()


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ORG_ID",
    "FakePlatform",
    "NotConnectedError",
    "OrchConnection",
    "accept_all",
    "open_fake_platform",
]
