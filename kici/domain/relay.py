"""Chunked webhook relay: the Platform's splitter and the orchestrator's reassembly.

The Platform forwards a webhook's raw body bytes unchanged, split into 64 KiB
chunks (about 85 KiB of base64 each) so that no frame comes near the receiver's
per-frame limits. The orchestrator is the trust boundary against a compromised
Platform, so reassembly is strict: a stream is accepted only if its chunks arrive
in order from 0, decode as base64, add up to exactly the announced ``totalSize``
(at most 25 MiB) in exactly ``chunkCount`` chunks, and carry ``final`` on the
last chunk and on no other. Any violation rejects the whole message, which the
orchestrator answers with ``webhook.ack{result: rejected_misconfigured, reason}``
(HTTP 500 at the Platform, so the provider retries).

Choices where the spec is silent:

* A duplicate start rejects the message and discards the stream already held:
  which of the two starts is genuine cannot be told.
* Each message gets one verdict. After a stream completes or is rejected its
  ``messageId`` is remembered for one TTL and further frames for it are ignored,
  instead of producing a second, contradicting answer.
* A buffer expires ``ttl_ms`` (30 s) after its start; a start for an id whose
  old buffer expired but was not yet swept begins a fresh stream.
"""

from __future__ import annotations

import base64
import binascii
import enum
from typing import ClassVar, Generic, TypeVar

import attrs

M = TypeVar("M")

MAX_RELAY_BODY_BYTES = 26_214_400
RELAY_CHUNK_BYTES = 65_536
RELAY_BUFFER_TTL_MS = 30_000


class RelayBodyTooLargeError(ValueError):
    """The body exceeds what the relay may carry; the Platform answers 413 before relaying."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"webhook body of {size} bytes exceeds the relay limit of {limit} bytes")
        self.size = size
        self.limit = limit


class RelayViolation(enum.StrEnum):
    DUPLICATE_START = "duplicate_start"
    BAD_TOTAL_SIZE = "bad_total_size"
    BAD_CHUNK_COUNT = "bad_chunk_count"
    UNKNOWN_STREAM = "unknown_stream"
    OUT_OF_ORDER = "out_of_order"
    EXCESS_CHUNK = "excess_chunk"
    BAD_BASE64 = "bad_base64"
    OVERSIZE = "oversize"
    EARLY_FINAL = "early_final"
    MISSING_FINAL = "missing_final"
    SIZE_MISMATCH = "size_mismatch"
    EXPIRED = "expired"


@attrs.frozen
class RelayChunk:
    sequence: int
    data: str
    final: bool


@attrs.frozen
class RelaySplit:
    """What the Platform sends: the start's ``totalSize``/``chunkCount`` and the chunks in order."""

    total_size: int
    chunk_count: int
    chunks: tuple[RelayChunk, ...]


def split_body(
    body: bytes, chunk_bytes: int = RELAY_CHUNK_BYTES, max_body_bytes: int = MAX_RELAY_BODY_BYTES
) -> RelaySplit:
    """Cut ``body`` into base64 chunks; an empty body is one empty final chunk."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
    if len(body) > max_body_bytes:
        raise RelayBodyTooLargeError(len(body), max_body_bytes)
    pieces = [body[i : i + chunk_bytes] for i in range(0, len(body), chunk_bytes)] or [b""]
    last = len(pieces) - 1
    chunks = tuple(
        RelayChunk(n, base64.b64encode(piece).decode("ascii"), n == last) for n, piece in enumerate(pieces)
    )
    return RelaySplit(len(body), len(chunks), chunks)


@attrs.frozen
class RelayPending:
    """The frame was accepted; the message is not complete yet. Answer nothing."""

    message_id: str


@attrs.frozen
class RelayIgnored:
    """A frame for a message that already got its verdict. Answer nothing."""

    message_id: str


@attrs.frozen
class RelayComplete(Generic[M]):
    """The whole body arrived intact; verify it and answer the verdict."""

    message_id: str
    meta: M
    body: bytes


@attrs.frozen
class RelayRejected:
    """Answer ``webhook.ack{result: RESULT, reason: detail}``."""

    RESULT: ClassVar[str] = "rejected_misconfigured"

    message_id: str
    violation: RelayViolation
    detail: str


RelayOutcome = RelayPending | RelayIgnored | RelayComplete[M] | RelayRejected


@attrs.define
class _Stream(Generic[M]):
    meta: M
    total_size: int
    chunk_count: int
    started_ms: float
    parts: list[bytes] = attrs.Factory(list)
    received_bytes: int = 0


class RelayReassembler(Generic[M]):
    """Reassembly buffers of one Platform connection, keyed by ``messageId``.

    ``meta`` is whatever the caller needs back on completion (the start's
    delivery id, headers, signature). Call :meth:`expire` periodically.
    """

    __slots__ = ("_done", "_max_body_bytes", "_streams", "_ttl_ms")

    def __init__(
        self, ttl_ms: float = RELAY_BUFFER_TTL_MS, max_body_bytes: int = MAX_RELAY_BODY_BYTES
    ) -> None:
        self._ttl_ms = ttl_ms
        self._max_body_bytes = max_body_bytes
        self._streams: dict[str, _Stream[M]] = {}
        self._done: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._streams

    def start(
        self, message_id: str, total_size: int, chunk_count: int, meta: M, now_ms: float
    ) -> RelayPending | RelayIgnored | RelayRejected:
        if message_id in self._done:
            return RelayIgnored(message_id)
        held = self._streams.get(message_id)
        if held is not None and not self._expired(held, now_ms):
            return self._reject(message_id, RelayViolation.DUPLICATE_START, "duplicate relay start", now_ms)
        if not 0 <= total_size <= self._max_body_bytes:
            detail = f"totalSize {total_size} outside [0, {self._max_body_bytes}]"
            return self._reject(message_id, RelayViolation.BAD_TOTAL_SIZE, detail, now_ms)
        if chunk_count < 1:
            detail = f"chunkCount {chunk_count} must be >= 1"
            return self._reject(message_id, RelayViolation.BAD_CHUNK_COUNT, detail, now_ms)
        self._streams[message_id] = _Stream(meta, total_size, chunk_count, now_ms)
        return RelayPending(message_id)

    def chunk(self, message_id: str, sequence: int, data: str, final: bool, now_ms: float) -> RelayOutcome[M]:
        if message_id in self._done:
            return RelayIgnored(message_id)
        stream = self._streams.get(message_id)
        if stream is None:
            detail = "relay chunk without a start"
            return self._reject(message_id, RelayViolation.UNKNOWN_STREAM, detail, now_ms)
        if self._expired(stream, now_ms):
            detail = f"relay stream expired after {self._ttl_ms:g} ms"
            return self._reject(message_id, RelayViolation.EXPIRED, detail, now_ms)
        expected = len(stream.parts)
        if sequence >= stream.chunk_count:
            detail = f"chunk {sequence} beyond chunkCount {stream.chunk_count}"
            return self._reject(message_id, RelayViolation.EXCESS_CHUNK, detail, now_ms)
        if sequence != expected:
            detail = f"chunk {sequence} out of order, expected {expected}"
            return self._reject(message_id, RelayViolation.OUT_OF_ORDER, detail, now_ms)
        try:
            piece = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            detail = f"chunk {sequence} is not valid base64"
            return self._reject(message_id, RelayViolation.BAD_BASE64, detail, now_ms)
        received = stream.received_bytes + len(piece)
        if received > stream.total_size:
            detail = f"body exceeds totalSize {stream.total_size} at chunk {sequence}"
            return self._reject(message_id, RelayViolation.OVERSIZE, detail, now_ms)
        last = sequence == stream.chunk_count - 1
        if final and not last:
            detail = f"final flag on chunk {sequence} of {stream.chunk_count}"
            return self._reject(message_id, RelayViolation.EARLY_FINAL, detail, now_ms)
        if last and not final:
            detail = f"last chunk {sequence} lacks the final flag"
            return self._reject(message_id, RelayViolation.MISSING_FINAL, detail, now_ms)
        if last and received != stream.total_size:
            detail = f"body is {received} bytes, totalSize says {stream.total_size}"
            return self._reject(message_id, RelayViolation.SIZE_MISMATCH, detail, now_ms)
        stream.parts.append(piece)
        stream.received_bytes = received
        if not last:
            return RelayPending(message_id)
        del self._streams[message_id]
        self._done[message_id] = now_ms
        return RelayComplete(message_id, stream.meta, b"".join(stream.parts))

    def expire(self, now_ms: float) -> list[RelayRejected]:
        """Reject and drop every stream older than the TTL; forget old verdicts."""
        self._done = {mid: at for mid, at in self._done.items() if now_ms - at < self._ttl_ms}
        stale = [mid for mid, stream in self._streams.items() if self._expired(stream, now_ms)]
        detail = f"relay stream expired after {self._ttl_ms:g} ms"
        return [self._reject(mid, RelayViolation.EXPIRED, detail, now_ms) for mid in stale]

    def _expired(self, stream: _Stream[M], now_ms: float) -> bool:
        return now_ms - stream.started_ms >= self._ttl_ms

    def _reject(
        self, message_id: str, violation: RelayViolation, detail: str, now_ms: float
    ) -> RelayRejected:
        self._streams.pop(message_id, None)
        self._done[message_id] = now_ms
        return RelayRejected(message_id, violation, detail)
