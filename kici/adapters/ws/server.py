"""The HTTP and WebSocket server: quart-trio on hypercorn, and quart websockets behind ``WsConnection``.

- `create_app` builds the ``QuartTrio`` app of a tier with the limits of PRO-04 (25 MiB frames) and an
  app-wide request-body ceiling; `limit_body` gives a route its own, lower body limit (413 above it);
  `serve` runs the app on hypercorn at ``host:port`` (port 0 picks a free port) and reports the bound
  address through ``nursery.start``.
- Inside a ``@app.websocket`` route, ``conn = await accept_websocket()`` accepts the handshake and returns
  the connection as a ``WsConnection``; the route then runs its per-connection logic on ``conn``.

quart-trio cancels a websocket route as soon as the client disconnects, which would cut a handler's
disconnect handling (recovery timers, unregistering) short. Apps made by `create_app` instead end the
stream: ``receive`` raises ``ConnectionClosed`` and the route returns by itself, so a route that uses
the connection must keep reading it until then (``run_connection`` does). ASGI tells the app neither
the code nor the reason of a close it did not send: hypercorn reports 1006 for every one of them,
the client's own 1000 and hypercorn's 1009 included.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, Final, ParamSpec, TypeVar, cast

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart import abort, current_app, request, websocket
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIWebsocketConnection
from quart_trio.wrappers import TrioWebsocket

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
from kici.domain.ports import ConnectionClosed, RemoteAddress

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""Quart's own default; a tier that accepts webhooks raises it to the largest route limit."""

_MAX_MESSAGE_SIZE_KEY: Final = "KICI_WS_MAX_MESSAGE_SIZE"
_CLOSE_TIMEOUT_KEY: Final = "KICI_WS_CLOSE_TIMEOUT"
_log = logging.getLogger(__name__)


class KiciWebsocket(TrioWebsocket):
    """quart-trio's websocket plus a link to the ASGI connection that knows when the client left."""

    transport: _StreamingWebsocketConnection | None = None


class _StreamingWebsocketConnection(TrioASGIWebsocketConnection):
    """Ends the message stream on disconnect instead of cancelling the route (see the module docstring).

    Unlike quart's own loop it does not fire the ``websocket_received`` signal; kici uses no signals.
    """

    disconnect: ConnectionClosed | None = None

    def _create_websocket_from_scope(self, send: Any) -> Any:
        ws = cast(KiciWebsocket, super()._create_websocket_from_scope(send))
        ws.transport = self
        return ws

    async def handle_messages(self, nursery: trio.Nursery, receive: Any) -> None:  # type: ignore[override]
        while True:
            event = await receive()
            if event["type"] == "websocket.receive":
                text = event.get("text")
                message = text if text is not None else bytes(event.get("bytes") or b"")
                try:
                    await self.send_channel.send(message)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    continue
            elif event["type"] == "websocket.disconnect":
                self.disconnect = ConnectionClosed(
                    int(event.get("code", ABNORMAL_CLOSURE)), str(event.get("reason") or "")
                )
                await self.send_channel.aclose()
                return


def create_app(
    import_name: str,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT_S,
) -> QuartTrio:
    """A ``QuartTrio`` app whose websockets work with `accept_websocket`.

    ``max_message_size`` is the largest inbound frame in UTF-8 bytes (hypercorn enforces it as a
    character count, `accept_websocket` as bytes); ``max_body_bytes`` caps every request body,
    `limit_body` lowers it per route.
    """
    app = QuartTrio(import_name)
    app.asgi_websocket_class = _StreamingWebsocketConnection
    app.websocket_class = KiciWebsocket
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.config[_MAX_MESSAGE_SIZE_KEY] = max_message_size
    app.config[_CLOSE_TIMEOUT_KEY] = close_timeout
    return app


def _remote_address(scope: Any) -> RemoteAddress:
    client = scope.get("client")
    if not client:
        return RemoteAddress("<local>", 0)
    return RemoteAddress(str(client[0]), int(client[1]))


class QuartWsConnection:
    """An accepted quart websocket as a ``WsConnection``; made by `accept_websocket`."""

    def __init__(
        self,
        ws: KiciWebsocket,
        transport: _StreamingWebsocketConnection,
        *,
        max_message_size: int,
        close_timeout: float,
    ) -> None:
        self._ws = ws
        self._transport = transport
        self._max_message_size = max_message_size
        self._close_timeout = close_timeout
        self._local_close: ConnectionClosed | None = None
        self._remote_addr = _remote_address(ws.scope)

    @property
    def remote_addr(self) -> RemoteAddress:
        return self._remote_addr

    async def send(self, text: str) -> None:
        require_text(text)
        await trio.lowlevel.checkpoint()
        self._raise_if_closed()
        await self._ws.send(text)

    async def receive(self) -> str:
        self._raise_if_local()
        try:
            message = await self._ws.receive()
        except trio.EndOfChannel:
            raise raised(self._transport.disconnect) from None
        except trio.ClosedResourceError:
            raise raised(self._local_close) from None
        if isinstance(message, bytes):
            await self.close(UNSUPPORTED_DATA, BINARY_REASON)
            raise ConnectionClosed(UNSUPPORTED_DATA, BINARY_REASON)
        if exceeds_limit(message, self._max_message_size):
            await self.close(MESSAGE_TOO_BIG, TOO_BIG_REASON)
            raise ConnectionClosed(MESSAGE_TOO_BIG, TOO_BIG_REASON)
        return message

    async def close(self, code: int, reason: str = "") -> None:
        code, reason = close_frame(code, reason)
        await trio.lowlevel.checkpoint()
        if self._local_close is not None:
            return
        self._local_close = self._transport.disconnect or ConnectionClosed(code, reason)
        self._transport.receive_channel.close()
        if self._transport.disconnect is not None:
            return
        with trio.move_on_after(self._close_timeout):
            await self._ws.close(code, reason)

    def _raise_if_local(self) -> None:
        if self._local_close is not None:
            raise raised(self._local_close)

    def _raise_if_closed(self) -> None:
        self._raise_if_local()
        if self._transport.disconnect is not None:
            raise raised(self._transport.disconnect)


async def accept_websocket(headers: dict[str, str] | None = None) -> QuartWsConnection:
    """Accept the current route's websocket handshake; call inside an app made by `create_app`."""
    ws = cast(KiciWebsocket, websocket._get_current_object())  # type: ignore[attr-defined]
    transport = getattr(ws, "transport", None)
    if transport is None:
        raise RuntimeError("accept_websocket() needs an app made by kici.adapters.ws.server.create_app")
    await ws.accept(headers=headers)
    return QuartWsConnection(
        ws,
        transport,
        max_message_size=int(current_app.config[_MAX_MESSAGE_SIZE_KEY]),
        close_timeout=float(current_app.config[_CLOSE_TIMEOUT_KEY]),
    )


async def read_body(max_bytes: int) -> bytes:
    """The current request's body, or 413 once it is known to exceed ``max_bytes``.

    A declared ``Content-Length`` above the limit is refused before anything is read; a chunked body is
    counted as it streams in, so memory stays bounded by the limit.
    """
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        abort(413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.body:
        size += len(chunk)
        if size > max_bytes:
            abort(413)
        chunks.append(chunk)
    return b"".join(chunks)


def limit_body(
    max_bytes: int,
) -> Callable[[Callable[Concatenate[bytes, P], Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Route decorator: read the body under ``max_bytes`` (at most the app's ceiling) and pass it first.

    ``@app.post("/hook") @limit_body(25_000_000) async def hook(body: bytes) -> ...``
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")

    def decorate(route: Callable[Concatenate[bytes, P], Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(route)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            body = await read_body(max_bytes)
            return await route(body, *args, **kwargs)

        return wrapper

    return decorate


@attrs.frozen
class BoundServer:
    """Where `serve` listens; ``port`` is the real one when 0 was asked for."""

    scheme: str
    host: str
    port: int

    def url(self, path: str = "/", *, websocket: bool = False) -> str:
        scheme = {"http": "ws", "https": "wss"}[self.scheme] if websocket else self.scheme
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{path}"


def _parse_bind(bind: str) -> BoundServer:
    scheme, _, rest = bind.partition("://")
    host, _, port = rest.rpartition(":")
    return BoundServer(scheme, host.strip("[]"), int(port))


def hypercorn_config(
    app: QuartTrio,
    *,
    host: str,
    port: int,
    certfile: str | None = None,
    keyfile: str | None = None,
    graceful_timeout: float = 5.0,
) -> HypercornConfig:
    """The hypercorn settings `serve` uses: one bind, the app's frame limit, logs through ``logging``."""
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.websocket_max_message_size = int(app.config.get(_MAX_MESSAGE_SIZE_KEY, DEFAULT_MAX_MESSAGE_SIZE))
    config.accesslog = None
    config.errorlog = _log
    config.graceful_timeout = graceful_timeout
    if certfile is not None:
        config.certfile = certfile
        config.keyfile = keyfile
    return config


class _Started:
    """Receives hypercorn's ``task_status.started(binds)`` outside ``nursery.start`` (see `serve`)."""

    def __init__(self) -> None:
        self.binds: list[str] = []
        self.ready = trio.Event()

    def started(self, binds: list[str]) -> None:
        self.binds = binds
        self.ready.set()


async def _run_hypercorn(
    app: QuartTrio, config: HypercornConfig, shutdown: trio.Event, started: _Started
) -> None:
    with trio.CancelScope(shield=True):
        await hypercorn_serve(app, config, shutdown_trigger=shutdown.wait, task_status=started)  # type: ignore[arg-type]


async def serve(
    app: QuartTrio,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    certfile: str | None = None,
    keyfile: str | None = None,
    graceful_timeout: float = 5.0,
    task_status: trio.TaskStatus[BoundServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled: ``bound = await nursery.start(serve, app)``.

    TLS when ``certfile``/``keyfile`` are given (``wss://``); otherwise plain ``ws://`` behind a proxy.
    Cancelling ``serve`` shuts hypercorn down gracefully rather than cancelling it: it stops accepting,
    lets open connections finish for up to ``graceful_timeout`` seconds, then ends them. (Cancelled
    outright, hypercorn 0.18 loses each open socket: its close path awaits ``send_eof`` before
    ``aclose``.) Routes should have closed their websockets (1001) before the server is cancelled.
    """
    config = hypercorn_config(
        app, host=host, port=port, certfile=certfile, keyfile=keyfile, graceful_timeout=graceful_timeout
    )
    shutdown = trio.Event()
    started = _Started()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run_hypercorn, app, config, shutdown, started)
        try:
            await started.ready.wait()
            task_status.started(_parse_bind(started.binds[0]))
            await trio.sleep_forever()
        finally:
            shutdown.set()


__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "BoundServer",
    "KiciWebsocket",
    "QuartWsConnection",
    "accept_websocket",
    "create_app",
    "hypercorn_config",
    "limit_body",
    "read_body",
    "serve",
]
