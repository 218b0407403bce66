"""Per-connection inbound rate limiting for every WebSocket server endpoint.

Two token buckets (frames and bytes) absorb bursts and let a well-behaved
sender stream at the refill rates forever. A sender that overruns them is
warned (the frame is dropped with a retry-after hint) and only disconnected if
it keeps overrunning for more than five seconds, so a short spike, such as an
agent replaying its outage buffer, never costs the connection. Heartbeats are
exempt so that an overloaded but honest peer is not also declared dead.

Times are milliseconds on a monotonic clock supplied by the caller. A clock
that steps backwards refills nothing (and the violation clock never counts
negative time).
"""

from __future__ import annotations

import enum
import math
from typing import Any

import attrs

MIB = 1_048_576


class InvalidRateLimitError(ValueError):
    """A bucket or limiter configured or queried with impossible values."""


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise InvalidRateLimitError(f"{attribute.name} must be > 0, got {value}")


@attrs.frozen
class TokenBucket:
    """An immutable token bucket; every operation returns the next state.

    A fresh bucket is full. ``last_ms`` is ``None`` until the first
    :meth:`refill`, which then only starts the clock: the bucket is already full.
    """

    capacity: float = attrs.field(validator=_positive)
    refill_per_s: float = attrs.field(validator=_positive)
    tokens: float = attrs.field(default=attrs.Factory(lambda self: self.capacity, takes_self=True))
    last_ms: float | None = None

    @tokens.validator
    def _check_tokens(self, _attribute: attrs.Attribute[float], value: float) -> None:
        if not 0 <= value <= self.capacity:
            raise InvalidRateLimitError(f"tokens must be in [0, {self.capacity}], got {value}")

    def refill(self, now_ms: float) -> TokenBucket:
        if self.last_ms is None:
            return attrs.evolve(self, last_ms=now_ms)
        elapsed_ms = now_ms - self.last_ms
        if elapsed_ms <= 0:
            return self
        tokens = min(self.capacity, self.tokens + elapsed_ms / 1000.0 * self.refill_per_s)
        return attrs.evolve(self, tokens=tokens, last_ms=now_ms)

    def can_take(self, amount: float) -> bool:
        return amount <= self.tokens

    def take(self, amount: float) -> TokenBucket:
        if not 0 <= amount <= self.tokens:
            raise InvalidRateLimitError(f"cannot take {amount} tokens from {self.tokens}")
        return attrs.evolve(self, tokens=self.tokens - amount)

    def retry_after_ms(self, amount: float) -> int:
        """Milliseconds until ``amount`` tokens are available (0 if they already are)."""
        deficit = amount - self.tokens
        if deficit <= 0:
            return 0
        return math.ceil(deficit / self.refill_per_s * 1000.0)


@attrs.frozen
class RateLimitConfig:
    """The ``ws.rate_limit.*`` settings (spec §7 defaults)."""

    message_capacity: float = attrs.field(default=200.0, validator=_positive)
    messages_per_s: float = attrs.field(default=100.0, validator=_positive)
    byte_capacity: float = attrs.field(default=2.0 * MIB, validator=_positive)
    bytes_per_s: float = attrs.field(default=512_000.0, validator=_positive)
    max_message_bytes: int = attrs.field(default=4 * MIB, validator=_positive)
    sustained_violation_ms: float = attrs.field(default=5_000.0, validator=_positive)


class DisconnectReason(enum.StrEnum):
    """Close reasons sent with close code 4003."""

    TOO_LARGE = "Message too large"
    EXCEEDS_BURST = "Message exceeds byte burst capacity"
    SUSTAINED = "Sustained rate limit violation"


@attrs.frozen
class Allow:
    pass


@attrs.frozen
class Warn:
    """Drop the frame and answer ``rate.limit.warning{retryAfterMs}``."""

    retry_after_ms: int


@attrs.frozen
class Disconnect:
    """Close the connection with 4003 and this reason."""

    reason: DisconnectReason


Verdict = Allow | Warn | Disconnect
ALLOW = Allow()


@attrs.define
class WsRateLimiter:
    """The limiter of one connection; :meth:`check` runs on every parsed inbound frame.

    The violation clock starts at the first refused frame and is cleared by the
    next admitted one; heartbeats neither consume tokens nor clear it, so
    interleaving heartbeats cannot hide a flood.
    """

    config: RateLimitConfig = attrs.field(factory=RateLimitConfig)
    message_bucket: TokenBucket = attrs.field(init=False)
    byte_bucket: TokenBucket = attrs.field(init=False)
    violation_since_ms: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.message_bucket = TokenBucket(self.config.message_capacity, self.config.messages_per_s)
        self.byte_bucket = TokenBucket(self.config.byte_capacity, self.config.bytes_per_s)

    def check(self, size_bytes: int, is_heartbeat: bool, now_ms: float) -> Verdict:
        """The verdict on one frame of ``size_bytes`` UTF-8 bytes received at ``now_ms``."""
        if size_bytes < 0:
            raise InvalidRateLimitError(f"size_bytes must be >= 0, got {size_bytes}")
        if is_heartbeat:
            return ALLOW
        if size_bytes > self.config.max_message_bytes:
            return Disconnect(DisconnectReason.TOO_LARGE)
        if size_bytes > self.config.byte_capacity:
            return Disconnect(DisconnectReason.EXCEEDS_BURST)
        self.message_bucket = self.message_bucket.refill(now_ms)
        self.byte_bucket = self.byte_bucket.refill(now_ms)
        if self.message_bucket.can_take(1) and self.byte_bucket.can_take(size_bytes):
            self.message_bucket = self.message_bucket.take(1)
            self.byte_bucket = self.byte_bucket.take(size_bytes)
            self.violation_since_ms = None
            return ALLOW
        if self.violation_since_ms is None:
            self.violation_since_ms = now_ms
        elif now_ms - self.violation_since_ms > self.config.sustained_violation_ms:
            return Disconnect(DisconnectReason.SUSTAINED)
        return Warn(max(self.message_bucket.retry_after_ms(1), self.byte_bucket.retry_after_ms(size_bytes)))
