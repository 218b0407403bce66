"""WsRateLimiter (PRO-05), spec 20 §7 and §20 invariant 7."""

from __future__ import annotations

import math

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.ratelimit import (
    ALLOW,
    Allow,
    Disconnect,
    DisconnectReason,
    RateLimitConfig,
    TokenBucket,
    Warn,
    WsRateLimiter,
)

pytestmark = pytest.mark.feature("PRO-05")

MIB = 1_048_576

# Small limits so that random traffic actually hits every branch.
small_configs = st.builds(
    RateLimitConfig,
    message_capacity=st.integers(1, 20).map(float),
    messages_per_s=st.integers(1, 50).map(float),
    byte_capacity=st.integers(1, 5_000).map(float),
    bytes_per_s=st.integers(1, 5_000).map(float),
    max_message_bytes=st.integers(1, 10_000),
    sustained_violation_ms=st.integers(1, 6_000).map(float),
)
configs = st.one_of(st.just(RateLimitConfig()), small_configs)


@st.composite
def traffic(draw: st.DrawFn, max_size: int) -> list[tuple[int, int, bool]]:
    """(gap ms, size bytes, is heartbeat) per frame."""
    return draw(
        st.lists(
            st.tuples(
                st.integers(0, 3_000),
                st.one_of(st.integers(0, 12_000), st.integers(0, 5 * MIB)),
                st.booleans(),
            ),
            max_size=max_size,
        )
    )


def _in_range(bucket: TokenBucket) -> bool:
    return 0 <= bucket.tokens <= bucket.capacity


@given(configs, traffic(80))
def test_tokens_stay_within_zero_and_capacity(
    config: RateLimitConfig, frames: list[tuple[int, int, bool]]
) -> None:
    limiter = WsRateLimiter(config)
    now = 0
    for gap, size, heartbeat in frames:
        now += gap
        limiter.check(size, heartbeat, now)
        assert _in_range(limiter.message_bucket)
        assert _in_range(limiter.byte_bucket)


@given(configs, traffic(80))
def test_refused_checks_consume_nothing(config: RateLimitConfig, frames: list[tuple[int, int, bool]]) -> None:
    limiter = WsRateLimiter(config)
    now = 0
    for gap, size, heartbeat in frames:
        now += gap
        messages, byte_bucket = limiter.message_bucket, limiter.byte_bucket
        verdict = limiter.check(size, heartbeat, now)
        if isinstance(verdict, Allow):
            continue
        assert limiter.message_bucket.tokens in (messages.tokens, messages.refill(now).tokens)
        assert limiter.byte_bucket.tokens in (byte_bucket.tokens, byte_bucket.refill(now).tokens)


@given(configs, traffic(60), st.integers(0, 30 * MIB), st.integers(0, 10_000))
def test_heartbeats_always_pass_and_touch_nothing(
    config: RateLimitConfig, frames: list[tuple[int, int, bool]], size: int, gap: int
) -> None:
    limiter = WsRateLimiter(config)
    now = 0
    for frame_gap, frame_size, heartbeat in frames:
        now += frame_gap
        limiter.check(frame_size, heartbeat, now)
    before = attrs.asdict(limiter, recurse=False)
    assert limiter.check(size, True, now + gap) == ALLOW
    assert attrs.asdict(limiter, recurse=False) == before


@given(configs, traffic(40), st.integers(1, 20 * MIB), st.integers(0, 10_000))
def test_frames_over_the_hard_cap_disconnect(
    config: RateLimitConfig, frames: list[tuple[int, int, bool]], extra: int, gap: int
) -> None:
    limiter = WsRateLimiter(config)
    now = 0
    for frame_gap, size, heartbeat in frames:
        now += frame_gap
        limiter.check(size, heartbeat, now)
    verdict = limiter.check(config.max_message_bytes + extra, False, now + gap)
    assert verdict == Disconnect(DisconnectReason.TOO_LARGE)


@st.composite
def polite_senders(draw: st.DrawFn) -> tuple[RateLimitConfig, list[tuple[int, int]]]:
    """An initial burst within both capacities, then frames spaced so each one's cost refills first."""
    config = draw(configs)
    burst_count = draw(st.integers(0, int(config.message_capacity)))
    max_frame = int(min(config.byte_capacity, config.max_message_bytes))
    sizes = draw(st.lists(st.integers(0, max_frame), min_size=burst_count, max_size=burst_count))
    while sum(sizes) > config.byte_capacity:
        sizes.pop()
    frames = [(0, size) for size in sizes]
    for size in draw(st.lists(st.integers(0, max_frame), max_size=60)):
        needed = max(1000 / config.messages_per_s, size * 1000 / config.bytes_per_s)
        frames.append((math.ceil(needed) + 1 + draw(st.integers(0, 500)), size))
    return config, frames


@given(polite_senders())
def test_a_sender_within_both_rates_is_always_admitted(
    sender: tuple[RateLimitConfig, list[tuple[int, int]]],
) -> None:
    config, frames = sender
    limiter = WsRateLimiter(config)
    now = 0
    for gap, size in frames:
        now += gap
        assert limiter.check(size, False, now) == ALLOW


@given(configs, traffic(120))
def test_violation_clock_runs_from_the_first_refusal_since_the_last_admission(
    config: RateLimitConfig, frames: list[tuple[int, int, bool]]
) -> None:
    limiter = WsRateLimiter(config)
    now = 0
    since: int | None = None
    for gap, size, heartbeat in frames:
        now += gap
        verdict = limiter.check(size, heartbeat, now)
        if heartbeat or size > config.max_message_bytes or size > config.byte_capacity:
            assert verdict == ALLOW or isinstance(verdict, Disconnect)
            assert limiter.violation_since_ms == since
            continue
        if verdict == ALLOW:
            since = None
            assert limiter.violation_since_ms is None
            continue
        since = now if since is None else since
        assert limiter.violation_since_ms == since
        if now - since > config.sustained_violation_ms:
            assert verdict == Disconnect(DisconnectReason.SUSTAINED)
        else:
            assert isinstance(verdict, Warn)
            assert verdict.retry_after_ms > 0
