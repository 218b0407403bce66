"""Request/response correlation over one link (PRO-12, 20-protocol.md §11).

A link that sends requests (``cache.upload.request``, ``event.emit``, ``agent.api.request``, dashboard
requests, webhook relays, peer reroutes) keeps one `Correlator`: each pending request id owns a one-shot
slot; the link's reader hands every response to ``resolve`` by its id; the requester wakes with the
response, with `RequestTimeout` after the kind's timeout, or with `Disconnected` when the link closes
(``fail_all``). A response nobody waits for (unknown id, late after a timeout, duplicate) is ignored:
the peer may answer after we gave up, which is not an error.

Timeouts run on ``trio.current_time()``, so ``MockClock`` tests cover them instantly. What a timeout
*means* differs per kind (an error, a synthetic ``deliveryId = "timeout-<id>"`` for ``event.emit``, HTTP 504
for a dashboard request); the correlator only reports it and the caller maps it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Generic, TypeVar, cast

import attrs
import trio

from kici.domain.protocol import Message

T = TypeVar("T")


class Disconnected(Exception):
    """The link closed while the request was pending (§9: "WebSocket disconnected")."""

    def __init__(self, reason: str = "WebSocket disconnected") -> None:
        super().__init__(reason)
        self.reason = reason


class RequestTimeout(Exception):
    """No response within the kind's timeout; the request is forgotten."""

    def __init__(self, kind: str, request_id: str, timeout_s: float) -> None:
        super().__init__(f"{kind} request {request_id} timed out after {timeout_s:g}s")
        self.kind = kind
        self.request_id = request_id
        self.timeout_s = timeout_s


class DuplicateRequestError(ValueError):
    """A request id that is already pending on this link (ids must be unique per link)."""


@attrs.frozen
class RequestKind:
    """One row of the §11 table: a request type, the response type(s) that answer it and the timeout.

    ``timeout_s`` None waits without limit (``step.approval-request``: the orchestrator owns expiry).
    """

    request_type: str
    response_types: frozenset[str]
    timeout_s: float | None = attrs.field(validator=lambda _i, _a, v: _check_timeout(v))


def _check_timeout(value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"timeout_s must be a positive number of seconds or None, got {value}")


def _kind(request: str, response: str, timeout_s: float | None) -> RequestKind:
    return RequestKind(request, frozenset({response}), timeout_s)


CACHE_UPLOAD: Final = _kind("cache.upload.request", "cache.upload.response", 30.0)
PROVENANCE_UPLOAD: Final = _kind("provenance.upload.request", "provenance.upload.response", 30.0)
CACHE_USER_RESTORE: Final = _kind("cache.user.restore.request", "cache.user.restore.response", 30.0)
CACHE_USER_SAVE: Final = _kind("cache.user.save.request", "cache.user.save.response", 30.0)
EVENT_EMIT: Final = _kind("event.emit", "event.emit.response", 5.0)
AGENT_API: Final = _kind("agent.api.request", "agent.api.response", 15.0)
CONCURRENCY_REPORT: Final = _kind("job.concurrency.report", "job.concurrency.ack", 30.0)
STEP_APPROVAL: Final = _kind("step.approval-request", "step.approval-resolved", None)
JOB_REROUTE: Final = _kind("job.reroute", "job.reroute.ack", 15.0)
PEER_CONFIG_RELOAD: Final = _kind("peer.config.reload", "peer.config.reload.response", 15.0)
WEBHOOK_RELAY: Final = _kind("webhook.relay.start", "webhook.ack", 5.0)
DASHBOARD_TIMEOUT_S: Final = 10.0

REQUEST_KINDS: Final[Mapping[str, RequestKind]] = {
    kind.request_type: kind
    for kind in (
        CACHE_UPLOAD,
        PROVENANCE_UPLOAD,
        CACHE_USER_RESTORE,
        CACHE_USER_SAVE,
        EVENT_EMIT,
        AGENT_API,
        CONCURRENCY_REPORT,
        STEP_APPROVAL,
        JOB_REROUTE,
        PEER_CONFIG_RELOAD,
        WEBHOOK_RELAY,
    )
}
"""The fixed rows of §11 by request type; dashboard requests use `dashboard_kind`."""


def dashboard_kind(request_type: str) -> RequestKind:
    """A dashboard request: answered by ``<type>.response`` (or its error frame) within 10 s."""
    return _kind(request_type, f"{request_type}.response", DASHBOARD_TIMEOUT_S)


def response_id(message: Message) -> str | None:
    """The id a response carries back: ``requestId`` where the message has one, else ``messageId``."""
    for name in ("request_id", "message_id"):
        value = getattr(message, name, None)
        if isinstance(value, str):
            return value
    return None


class _Slot(Generic[T]):
    """One pending request: filled at most once, by a response or by an error."""

    __slots__ = ("error", "event", "kind", "value")

    def __init__(self, kind: RequestKind) -> None:
        self.kind = kind
        self.event = trio.Event()
        self.value: T | None = None
        self.error: Exception | None = None


class Correlator(Generic[T]):
    """Pending requests of one link by id; ``T`` is the response type (``Message`` on a WS link)."""

    def __init__(self) -> None:
        self._pending: dict[str, _Slot[T]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._pending

    async def request(
        self,
        kind: RequestKind,
        request_id: str,
        send: Callable[[], Awaitable[None]],
        *,
        timeout_s: float | None = None,
    ) -> T:
        """Register ``request_id``, run ``send`` and wait for the response.

        The slot exists before ``send`` runs, so an answer that beats ``send``'s return is not lost.
        ``timeout_s`` overrides the kind's timeout. Raises `RequestTimeout`, `Disconnected`, or what
        ``send`` raised; the id is forgotten in every case.
        """
        if request_id in self._pending:
            raise DuplicateRequestError(f"request id {request_id!r} is already pending")
        limit = kind.timeout_s if timeout_s is None else timeout_s
        slot: _Slot[T] = _Slot(kind)
        self._pending[request_id] = slot
        try:
            await send()
            if limit is None:
                await slot.event.wait()
            else:
                with trio.move_on_after(limit):
                    await slot.event.wait()
                if not slot.event.is_set():
                    raise RequestTimeout(kind.request_type, request_id, limit)
            if slot.error is not None:
                raise slot.error
            return cast(T, slot.value)
        finally:
            if self._pending.get(request_id) is slot:
                del self._pending[request_id]

    def resolve(self, request_id: str, response: T) -> bool:
        """Deliver ``response`` to the request waiting on ``request_id``; False (ignored) if none is."""
        slot = self._pending.pop(request_id, None)
        if slot is None:
            return False
        slot.value = response
        slot.event.set()
        return True

    def resolve_message(self, message: Message) -> bool:
        """`resolve` a WS response by its own id, if its type answers the pending request of that id."""
        key = response_id(message)
        if key is None:
            return False
        slot = self._pending.get(key)
        if slot is None or message.wire_type() not in slot.kind.response_types:
            return False
        return self.resolve(key, cast(T, message))

    def fail(self, request_id: str, error: Exception) -> bool:
        """Wake one pending request with ``error`` (e.g. an ``error`` frame that names it)."""
        slot = self._pending.pop(request_id, None)
        if slot is None:
            return False
        slot.error = error
        slot.event.set()
        return True

    def fail_all(self, reason: str = "WebSocket disconnected") -> int:
        """Wake every pending request with `Disconnected` (the link closed); returns how many."""
        failed = 0
        for request_id in list(self._pending):
            failed += self.fail(request_id, Disconnected(reason))
        return failed


__all__ = [
    "AGENT_API",
    "CACHE_UPLOAD",
    "CACHE_USER_RESTORE",
    "CACHE_USER_SAVE",
    "CONCURRENCY_REPORT",
    "DASHBOARD_TIMEOUT_S",
    "EVENT_EMIT",
    "JOB_REROUTE",
    "PEER_CONFIG_RELOAD",
    "PROVENANCE_UPLOAD",
    "REQUEST_KINDS",
    "STEP_APPROVAL",
    "WEBHOOK_RELAY",
    "Correlator",
    "Disconnected",
    "DuplicateRequestError",
    "RequestKind",
    "RequestTimeout",
    "dashboard_kind",
    "response_id",
]
