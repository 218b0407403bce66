"""WsRateLimiter examples with the spec 20 §7 defaults (PRO-05)."""

from __future__ import annotations

import pytest

from kici.domain.ratelimit import (
    ALLOW,
    Disconnect,
    DisconnectReason,
    InvalidRateLimitError,
    RateLimitConfig,
    TokenBucket,
    Warn,
    WsRateLimiter,
)

pytestmark = pytest.mark.feature("PRO-05")

MIB = 1_048_576


def test_defaults_match_the_spec() -> None:
    config = RateLimitConfig()
    assert (config.message_capacity, config.messages_per_s) == (200, 100)
    assert (config.byte_capacity, config.bytes_per_s) == (2_097_152, 512_000)
    assert config.max_message_bytes == 4_194_304
    assert config.sustained_violation_ms == 5_000


def test_reasons_are_the_exact_close_reasons() -> None:
    assert DisconnectReason.TOO_LARGE == "Message too large"
    assert DisconnectReason.EXCEEDS_BURST == "Message exceeds byte burst capacity"
    assert DisconnectReason.SUSTAINED == "Sustained rate limit violation"


def test_a_burst_of_200_frames_passes_and_the_201st_waits_10_ms() -> None:
    limiter = WsRateLimiter()
    assert all(limiter.check(10, False, 0) == ALLOW for _ in range(200))
    assert limiter.check(10, False, 0) == Warn(10)
    assert limiter.check(10, False, 10) == ALLOW


def test_byte_bucket_warns_with_its_own_retry_after() -> None:
    limiter = WsRateLimiter()
    assert limiter.check(2 * MIB, False, 0) == ALLOW
    # 512 000 bytes refill per second: 1 000 bytes need ceil(1000 / 512000 * 1000) = 2 ms
    assert limiter.check(1_000, False, 0) == Warn(2)
    assert limiter.check(1_000, False, 2) == ALLOW


def test_sizes_above_the_byte_burst_or_the_hard_cap_disconnect() -> None:
    limiter = WsRateLimiter()
    assert limiter.check(2 * MIB + 1, False, 0) == Disconnect(DisconnectReason.EXCEEDS_BURST)
    assert limiter.check(4 * MIB, False, 0) == Disconnect(DisconnectReason.EXCEEDS_BURST)
    assert limiter.check(4 * MIB + 1, False, 0) == Disconnect(DisconnectReason.TOO_LARGE)


def test_heartbeat_passes_even_when_huge_or_while_flooding() -> None:
    limiter = WsRateLimiter()
    for _ in range(200):
        limiter.check(0, False, 0)
    assert isinstance(limiter.check(0, False, 0), Warn)
    assert limiter.check(25 * MIB, True, 0) == ALLOW
    assert limiter.violation_since_ms == 0


def test_sustained_violation_disconnects_only_after_more_than_five_seconds() -> None:
    limiter = WsRateLimiter(RateLimitConfig(message_capacity=1, messages_per_s=0.1))
    assert limiter.check(0, False, 0) == ALLOW
    assert isinstance(limiter.check(0, False, 1), Warn)
    assert isinstance(limiter.check(0, False, 5_001), Warn)
    assert limiter.check(0, False, 5_002) == Disconnect(DisconnectReason.SUSTAINED)


def test_an_admitted_frame_restarts_the_violation_clock() -> None:
    limiter = WsRateLimiter(RateLimitConfig(message_capacity=1, messages_per_s=0.25))
    assert limiter.check(0, False, 0) == ALLOW
    assert isinstance(limiter.check(0, False, 100), Warn)
    assert limiter.check(0, False, 4_000) == ALLOW
    assert limiter.violation_since_ms is None
    assert isinstance(limiter.check(0, False, 4_100), Warn)
    assert isinstance(limiter.check(0, False, 7_000), Warn)
    assert limiter.violation_since_ms == 4_100


def test_token_bucket_refill_caps_and_ignores_a_clock_stepping_back() -> None:
    bucket = TokenBucket(10, 5)
    assert bucket.tokens == 10
    bucket = bucket.refill(1_000).take(10)
    assert bucket.refill(1_200).tokens == pytest.approx(1)
    assert bucket.refill(900) == bucket
    assert bucket.refill(100_000).tokens == 10
    assert bucket.retry_after_ms(3) == 600
    assert bucket.refill(1_000).retry_after_ms(0) == 0


def test_illegal_values_are_typed_errors() -> None:
    with pytest.raises(InvalidRateLimitError):
        TokenBucket(0, 1)
    with pytest.raises(InvalidRateLimitError):
        TokenBucket(1, 1).take(2)
    with pytest.raises(InvalidRateLimitError):
        RateLimitConfig(bytes_per_s=0)
    with pytest.raises(InvalidRateLimitError):
        WsRateLimiter().check(-1, False, 0)
