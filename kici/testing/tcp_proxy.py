"""A TCP proxy on loopback that misbehaves on demand, for partition and latency tests (20 §21).

The build box has no netem and no root-free packet filter, so network faults are made here, between a
real client and a real server:

- ``delay``: every chunk is forwarded ``delay`` seconds after it was read, order kept (WAN latency);
- ``blackhole``: bytes are read and thrown away in both directions while the TCP connections stay up,
  the way a partition looks to both ends (no FIN, no RST: only silence);
- ``reset()``: every live connection is torn down with an RST on both sides;
- ``refusing``: new connections are reset at once (a server that is down).

Usage: ``async with open_tcp_proxy("127.0.0.1", server_port) as proxy: connect to proxy.port``.
Only loopback addresses are accepted, for the listener and for the target.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Final

import trio

_CHUNK: Final = 65536
_LINGER_RESET: Final = struct.pack("ii", 1, 0)
_STREAM_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def _require_loopback(host: str) -> str:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the test proxy only works on loopback, got {host}")
    return host


def _reset(stream: trio.SocketStream) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    with suppress(OSError):
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    stream.socket.close()


class _Link:
    """One client connection and its upstream twin."""

    def __init__(self, downstream: trio.SocketStream, upstream: trio.SocketStream) -> None:
        self.downstream = downstream
        self.upstream = upstream
        self.scope = trio.CancelScope()

    def reset(self) -> None:
        _reset(self.downstream)
        _reset(self.upstream)
        self.scope.cancel()


class TcpProxy:
    """A running proxy; see the module docstring. ``port`` is where clients connect."""

    def __init__(self, listener: trio.SocketListener, target_host: str, target_port: int) -> None:
        self._listener = listener
        self._target = (target_host, target_port)
        self._links: set[_Link] = set()
        self.delay = 0.0
        self.blackhole = False
        self.refusing = False
        self.accepted = 0

    @property
    def host(self) -> str:
        return str(self._listener.socket.getsockname()[0])

    @property
    def port(self) -> int:
        return int(self._listener.socket.getsockname()[1])

    @property
    def live_connections(self) -> int:
        return len(self._links)

    def reset(self) -> None:
        """Tear down every live connection with an RST on both sides."""
        for link in list(self._links):
            link.reset()
        self._links.clear()

    async def _serve(self, nursery: trio.Nursery) -> None:
        while True:
            downstream = await self._listener.accept()
            nursery.start_soon(self._handle, downstream)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        if self.refusing:
            _reset(downstream)
            return
        try:
            upstream = await trio.open_tcp_stream(*self._target)
        except OSError:
            _reset(downstream)
            return
        self.accepted += 1
        link = _Link(downstream, upstream)
        self._links.add(link)
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, downstream, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pump, upstream, downstream, nursery.cancel_scope)
        finally:
            self._links.discard(link)
            with trio.CancelScope(shield=True):
                await downstream.aclose()
                await upstream.aclose()

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope) -> None:
        """Copy ``source`` to ``sink`` through a queue that applies the delay and the black hole."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)

        async def forward() -> None:
            async for due, data in receive:
                await trio.sleep_until(due)
                try:
                    await sink.send_all(data)
                except _STREAM_ERRORS:
                    done.cancel()
                    return
            try:
                await sink.send_eof()
            except _STREAM_ERRORS:
                done.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            async with send:
                while True:
                    try:
                        data = await source.receive_some(_CHUNK)
                    except _STREAM_ERRORS:
                        done.cancel()
                        return
                    if not data:
                        if self.blackhole:
                            await trio.sleep_forever()
                        break
                    if not self.blackhole:
                        send.send_nowait((trio.current_time() + self.delay, data))


@asynccontextmanager
async def open_tcp_proxy(
    target_host: str, target_port: int, *, host: str = "127.0.0.1"
) -> AsyncIterator[TcpProxy]:
    """Run a proxy from ``host:<free port>`` to ``target_host:target_port`` until the context exits."""
    _require_loopback(host)
    _require_loopback(target_host)
    listeners = await trio.open_tcp_listeners(0, host=host)
    proxy = TcpProxy(listeners[0], target_host, target_port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proxy._serve, nursery)
        try:
            yield proxy
        finally:
            proxy.reset()
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()


__all__ = ["TcpProxy", "open_tcp_proxy"]
