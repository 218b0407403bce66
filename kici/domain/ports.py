"""Ports of the domain: what the services need from the outside world, as ``typing.Protocol``s.

``Sandbox`` (ISO-01, D7) turns "run this command over that workspace with this env" into a concrete
launch plan. It only *plans*: spawning, IPC and the abort ladder live in
``kici.services.runner_client`` so every adapter gets them for free and an adapter stays a pure
function of its spec plus a few host facts (which system directories exist). Adapters:
``kici.adapters.sandbox.bwrap`` (the default where bubblewrap exists) and
``kici.adapters.sandbox.process`` (no isolation; only when chosen explicitly).

``WsConnection`` (PRO-33) is one open WebSocket carrying text frames, whichever side opened it. Every
service speaks to its peers through it, so the per-connection logic (``kici.services.connection``) runs
unchanged over trio-websocket (``kici.adapters.ws.client``), quart-trio on hypercorn
(``kici.adapters.ws.server``) and the in-memory pair used by tests (``kici.adapters.ws.memory``). One
conformance suite (``kici.testing.ws_contract``) holds all three to the semantics written on the class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Final, Literal, Protocol

import attrs

NetworkMode = Literal["isolated", "host"]


class InvalidSandboxSpecError(ValueError):
    """A spec that no adapter could honour (empty argv, relative workspace, bad network mode)."""


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise InvalidSandboxSpecError("expected a sequence of strings, got a single string")
    return tuple(str(v) for v in value)


def _int_tuple(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


def _frozen_env(value: Mapping[str, str]) -> Mapping[str, str]:
    return dict(value)


def _check_argv(_: object, __: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    if not value:
        raise InvalidSandboxSpecError("argv must not be empty")


def _check_absolute(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.startswith("/"):
        raise InvalidSandboxSpecError(f"{attribute.name} must be an absolute path, got {value!r}")


def _check_paths(_: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    for path in value:
        if not path.startswith("/"):
            raise InvalidSandboxSpecError(f"{attribute.name} entries must be absolute, got {path!r}")


def _check_network(_: object, __: attrs.Attribute[str], value: str) -> None:
    if value not in ("isolated", "host"):
        raise InvalidSandboxSpecError(f"network must be 'isolated' or 'host', got {value!r}")


def _check_fds(_: object, __: attrs.Attribute[tuple[int, ...]], value: tuple[int, ...]) -> None:
    for fd in value:
        if fd < 3:
            raise InvalidSandboxSpecError(f"pass_fds must not include stdio (got {fd})")


@attrs.frozen(kw_only=True)
class SandboxSpec:
    """What to run and over what.

    ``env`` is used verbatim: the caller has already applied the ISO-04 allowlist
    (``kici.domain.sandbox_env``), so an adapter can never leak its own environment by accident.
    ``read_only_paths`` are extra host paths made visible read-only at the same path inside (the Python
    prefix, the venv, the kici package directory, local ``file://`` repositories).
    """

    workspace: str = attrs.field(validator=_check_absolute)
    argv: tuple[str, ...] = attrs.field(converter=_str_tuple, validator=_check_argv)
    env: Mapping[str, str] = attrs.field(converter=_frozen_env, factory=dict)
    read_only_paths: tuple[str, ...] = attrs.field(converter=_str_tuple, default=(), validator=_check_paths)
    network: NetworkMode = attrs.field(default="isolated", validator=_check_network)
    pass_fds: tuple[int, ...] = attrs.field(converter=_int_tuple, default=(), validator=_check_fds)


@attrs.frozen(kw_only=True)
class LaunchPlan:
    """A ready-to-spawn process: the spawner always starts it in a new session (own process group)."""

    argv: tuple[str, ...] = attrs.field(converter=_str_tuple, validator=_check_argv)
    env: Mapping[str, str] = attrs.field(converter=_frozen_env, factory=dict)
    cwd: str = attrs.field(validator=_check_absolute)
    pass_fds: tuple[int, ...] = attrs.field(converter=_int_tuple, default=())


class Sandbox(Protocol):
    """A way to confine the workflow runner; see the module docstring."""

    @property
    def name(self) -> str: ...

    def workspace_inside(self, spec: SandboxSpec) -> str:
        """Where ``spec.workspace`` is visible to the command (``/workspace`` under bwrap)."""
        ...

    def plan(self, spec: SandboxSpec) -> LaunchPlan: ...


_SENDABLE_PROTOCOL_CODES: Final = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013}
)


class InvalidCloseCodeError(ValueError):
    """A close code no endpoint may put in a close frame (1005/1006/1015, unassigned or out of range)."""


def check_close_code(code: int) -> int:
    """``code`` if a close frame may carry it, else `InvalidCloseCodeError`.

    RFC 6455 §7.4: the registered protocol codes that are not local-only, plus 3000-4999 (libraries and
    applications, where all of kici's own codes live). A peer fails the connection on anything else, so
    an illegal code is refused before it reaches the wire.
    """
    if code in _SENDABLE_PROTOCOL_CODES or 3000 <= code <= 4999:
        return int(code)
    raise InvalidCloseCodeError(f"close code {code} cannot be sent in a close frame")


class ConnectionClosed(Exception):
    """The connection is closed; ``code`` and ``reason`` say why.

    After a local ``close(code, reason)`` they are the ones this side sent; after the peer closed they
    are the peer's, as far as the transport reports them (see `WsConnection`). 1006 means the
    connection ended without a close frame, or that the transport does not report the peer's code.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"WebSocket closed ({self.code}{': ' + self.reason if self.reason else ''})"


class WsConnectError(Exception):
    """Opening a connection failed: refused, unreachable, TLS or HTTP handshake rejected, timed out.

    A client supervisor treats it like a close and retries with backoff.
    """


@attrs.frozen
class RemoteAddress:
    """The other end of a connection: an IP address and port, or a label for non-TCP transports."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class WsConnection(Protocol):
    """One open WebSocket of text frames.

    - ``send`` writes one whole frame; frames from concurrent senders are never interleaved and each
      sender's frames arrive in its order. ``receive`` returns the next frame, in order. ``send`` refuses
      a non-``str`` (``TypeError``) and a lone surrogate (``UnicodeEncodeError``), leaving the
      connection open.
    - ``close(code, reason)`` sends a close frame (``reason`` cut to 123 UTF-8 bytes on a character
      boundary; ``code`` checked by `check_close_code`), waits a bounded time for the peer's answer and
      is idempotent. Afterwards ``send`` and ``receive`` raise ``ConnectionClosed(code, reason)`` with the
      local values, at once; frames not yet received are discarded.
    - When the peer closes, ``receive`` first returns the frames that arrived before the close, then
      raises ``ConnectionClosed``; once the close is known ``send`` raises it too. Ending without a
      close frame (reset, EOF) is 1006.
    - The receiver enforces the size limit (25 MiB of UTF-8 by default, PRO-04): a bigger frame makes it
      close with 1009, which the sender then sees. A binary frame is closed with 1003 (text only).
    - The server side of quart-trio on hypercorn cannot see the code of a close it did not send: ASGI
      reports it as 1006 with no reason. Closes the server sends reach the client exactly.
    """

    @property
    def remote_addr(self) -> RemoteAddress: ...

    async def send(self, text: str) -> None: ...

    async def receive(self) -> str: ...

    async def close(self, code: int, reason: str = "") -> None: ...


WsConnector = Callable[[], AbstractAsyncContextManager[WsConnection]]
"""Opens one client connection (``async with connector() as conn``); raises `WsConnectError`."""


__all__ = [
    "ConnectionClosed",
    "InvalidCloseCodeError",
    "InvalidSandboxSpecError",
    "LaunchPlan",
    "NetworkMode",
    "RemoteAddress",
    "Sandbox",
    "SandboxSpec",
    "WsConnectError",
    "WsConnection",
    "WsConnector",
    "check_close_code",
]
