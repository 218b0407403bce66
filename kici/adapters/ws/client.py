"""The WebSocket client: trio-websocket behind the ``WsConnection`` port (agent -> orchestrator,
orchestrator -> Platform, peer -> peer).

``connect(url)`` opens one connection (25 MiB frames, PRO-04; 10 s connect timeout) and turns every way
opening can fail (refused, DNS, TLS, HTTP rejection, timeout) into `WsConnectError`, so a supervisor
has one exception to retry on. Leaving the context closes with 1000 if nobody closed before, waiting at
most ``close_timeout`` for the server's answer: a black-holed server must not hang a reconnect loop.
Nothing is left behind: every path closes the TCP stream.

Only the client can ``ping`` (a WebSocket ping, answered by the server's protocol layer whether or not
its application reads): a link uses the pong as proof that the server is alive and received what was
written before the ping.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Final

import attrs
import trio
import trio_websocket

from kici.adapters.ws.frames import (
    ABNORMAL_CLOSURE,
    BINARY_REASON,
    DEFAULT_CLOSE_TIMEOUT_S,
    DEFAULT_MAX_MESSAGE_SIZE,
    MESSAGE_TOO_BIG,
    TOO_BIG_REASON,
    UNSUPPORTED_DATA,
    close_frame,
    exceeds_limit,
    raised,
    require_text,
)
from kici.domain.ports import ConnectionClosed, RemoteAddress, WsConnectError

DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0


def _closed(reason: trio_websocket.CloseReason | None) -> ConnectionClosed:
    if reason is None:
        return ConnectionClosed(ABNORMAL_CLOSURE)
    return ConnectionClosed(int(reason.code), reason.reason or "")


def _address(endpoint: object) -> RemoteAddress:
    if isinstance(endpoint, trio_websocket.Endpoint):
        return RemoteAddress(str(endpoint.address), int(endpoint.port))
    return RemoteAddress(str(endpoint), 0)


class TrioWsConnection:
    """A trio-websocket connection as a ``WsConnection``; made by `connect`."""

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        stream: trio.abc.Stream,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT_S,
        reader_done: trio.Event | None = None,
    ) -> None:
        self._ws = ws
        self._stream = stream
        self._max_message_size = max_message_size
        self._close_timeout = close_timeout
        self._local_close: ConnectionClosed | None = None
        self._closing = trio.Event()
        self._reader_done = trio.Event() if reader_done is None else reader_done
        self._remote_addr = _address(ws.remote)

    @property
    def remote_addr(self) -> RemoteAddress:
        return self._remote_addr

    async def send(self, text: str) -> None:
        require_text(text)
        if self._local_close is not None:
            raise raised(self._local_close)
        try:
            await self._ws.send_message(text)
        except trio_websocket.ConnectionClosed as exc:
            raise raised(self._local_close or _closed(exc.reason)) from None

    async def receive(self) -> str:
        if self._local_close is not None:
            raise raised(self._local_close)
        try:
            message = await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise raised(self._local_close or _closed(exc.reason)) from None
        if isinstance(message, bytes):
            await self.close(UNSUPPORTED_DATA, BINARY_REASON)
            raise ConnectionClosed(UNSUPPORTED_DATA, BINARY_REASON)
        if exceeds_limit(message, self._max_message_size):
            await self.close(MESSAGE_TOO_BIG, TOO_BIG_REASON)
            raise ConnectionClosed(MESSAGE_TOO_BIG, TOO_BIG_REASON)
        return message

    async def ping(self) -> None:
        """Send a WebSocket ping and wait for its pong.

        Raises ``ConnectionClosed`` when the connection is or becomes closed before the pong (a local
        close, the server's close, a reset); waits as long as a black-holed server stays silent, so the
        caller bounds it.
        """
        if self._local_close is not None:
            raise raised(self._local_close)
        closed: ConnectionClosed | None = None

        async def pong(scope: trio.CancelScope) -> None:
            nonlocal closed
            try:
                await self._ws.ping()
            except trio_websocket.ConnectionClosed as exc:
                closed = self._local_close or _closed(exc.reason)
            scope.cancel()

        async def gone(event: trio.Event, scope: trio.CancelScope) -> None:
            nonlocal closed
            await event.wait()
            closed = self._local_close or _closed(self._ws.closed)
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pong, nursery.cancel_scope)
            nursery.start_soon(gone, self._closing, nursery.cancel_scope)
            nursery.start_soon(gone, self._reader_done, nursery.cancel_scope)
        if closed is not None:
            raise raised(closed)

    async def close(self, code: int, reason: str = "") -> None:
        code, reason = close_frame(code, reason)
        if self._local_close is None:
            already = self._ws.closed
            self._local_close = _closed(already) if already is not None else ConnectionClosed(code, reason)
            self._closing.set()
            if already is None:
                with trio.move_on_after(self._close_timeout):
                    await self._ws.aclose(code, reason)
        await self._release_stream()

    async def _release_stream(self) -> None:
        """Close the TCP stream, which trio-websocket 0.12 leaves open when the server closes first.

        Its client waits for the server's TCP close (RFC 6455 §7.1.1) but then never closes its own
        socket; closing it also ends the reader task. Idempotent.
        """
        await trio.aclose_forcefully(self._stream)


@attrs.frozen
class _Target:
    """Where a ``ws://``/``wss://`` URL points, and what the handshake request carries.

    ``http://``/``https://`` are read as ``ws://``/``wss://``: the config accepts them for the
    orchestrator and Platform URLs (an operator pastes the server's address), so the dialer must too.
    """

    host: str
    port: int
    resource: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> _Target:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "wss", "http", "https"):
            raise ValueError(f"a WebSocket URL needs ws:// or wss://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"a WebSocket URL needs a host, got {url!r}")
        tls = parts.scheme in ("wss", "https")
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, parts.port or (443 if tls else 80), resource, tls)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.tls else 80) else f"{host}:{self.port}"


class _ReaderGuard:
    """Stands in for the nursery trio-websocket starts its reader task in.

    The reader raises into its nursery when the server rejects the handshake, and simply returns when
    the connection drops mid-handshake while ``wrap_client_stream`` keeps waiting. The guard keeps those
    errors out of the caller's code and ends the handshake wait whenever the reader stops. ``done`` is
    set when the reader stops: nothing can arrive any more (a pending ping learns it from there).
    """

    def __init__(self, nursery: trio.Nursery, handshake: trio.CancelScope) -> None:
        self._nursery = nursery
        self._handshake = handshake
        self.error: Exception | None = None
        self.done = trio.Event()

    def start_soon(self, reader: Callable[[], Awaitable[None]]) -> None:
        self._nursery.start_soon(self._run, reader)

    async def _run(self, reader: Callable[[], Awaitable[None]]) -> None:
        try:
            await reader()
        except Exception as exc:
            self.error = exc
        finally:
            self._handshake.cancel()
            self.done.set()


async def _open_stream(
    target: _Target, ssl_context: ssl.SSLContext | None
) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    if not target.tls:
        if ssl_context is not None:
            raise ValueError("an ssl_context needs a wss:// URL")
        return await trio.open_tcp_stream(target.host, target.port)
    context = ssl_context or ssl.create_default_context()
    return await trio.open_ssl_over_tcp_stream(
        target.host, target.port, ssl_context=context, https_compatible=True
    )


def _only(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    return group.exceptions[0] if len(group.exceptions) == 1 else None


@asynccontextmanager
async def connect(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT_S,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> AsyncIterator[TrioWsConnection]:
    """Open ``url`` (``ws://`` or ``wss://``); raises `WsConnectError` if no connection results.

    ``ssl_context`` is used for ``wss://`` (default: the system trust store); ``max_message_size`` is
    the largest frame accepted from the server, in UTF-8 bytes; ``connect_timeout`` bounds TCP connect,
    TLS and the WebSocket handshake together.

    The TCP stream is opened here and handed to ``trio_websocket.wrap_client_stream`` rather than left
    to ``open_websocket_url``: trio-websocket 0.12 never closes the socket of a failed handshake (404,
    reset, timeout), and its connect timeout leaves the reader waiting forever on a server that accepted
    TCP but never answers (a black hole), which would hang a reconnect loop.
    """
    target = _Target.parse(url)
    deadline = trio.current_time() + connect_timeout
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
    with trio.move_on_at(deadline):
        try:
            stream = await _open_stream(target, ssl_context)
        except (OSError, trio.BrokenResourceError) as exc:
            raise WsConnectError(f"cannot open {url}: {exc!r}") from exc
    if stream is None:
        raise WsConnectError(f"cannot open {url}: no connection within {connect_timeout:g}s")
    try:
        async with trio.open_nursery() as nursery:
            with trio.CancelScope(deadline=deadline) as handshake:
                guard = _ReaderGuard(nursery, handshake)
                ws = await trio_websocket.wrap_client_stream(
                    guard,  # type: ignore[arg-type]
                    stream,
                    target.host_header,
                    target.resource,
                    extra_headers=list(extra_headers),
                    max_message_size=max_message_size,
                )
            if handshake.cancelled_caught:
                nursery.cancel_scope.cancel()
                why = repr(guard.error) if guard.error else f"no handshake within {connect_timeout:g}s"
                raise WsConnectError(f"cannot open {url}: {why}") from guard.error
            conn = TrioWsConnection(
                ws,
                stream,
                max_message_size=max_message_size,
                close_timeout=close_timeout,
                reader_done=guard.done,
            )
            try:
                yield conn
            finally:
                with trio.CancelScope(shield=True):
                    await conn.close(1000)
    except BaseExceptionGroup as group:
        single = _only(group)
        if single is None:
            raise
        raise single from None
    finally:
        await trio.aclose_forcefully(stream)


__all__ = ["DEFAULT_CONNECT_TIMEOUT_S", "TrioWsConnection", "connect"]
