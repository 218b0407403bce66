"""Reconnect backoff (PRO-06), spec 20 §14 and §20 invariant 4."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.backoff import ReconnectBackoff, base_delay_ms, delay_ms

attempts = st.integers(min_value=0, max_value=3_000)
jitters = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
caps = st.floats(min_value=1.0, max_value=1e7, allow_nan=False)

pytestmark = pytest.mark.feature("PRO-06")


@given(attempts, caps, jitters)
def test_delay_lies_between_base_and_one_and_a_half_base(attempt: int, max_ms: float, r: float) -> None:
    base = 1000 * 1.5**attempt if attempt < 1_500 else float("inf")
    delay = delay_ms(attempt, max_ms, r)
    assert min(base, max_ms) <= delay <= min(1.5 * base, max_ms)


@given(attempts, caps)
def test_lower_bound_never_decreases(attempt: int, max_ms: float) -> None:
    assert delay_ms(attempt, max_ms, 0.0) <= delay_ms(attempt + 1, max_ms, 0.0)


@given(attempts, caps, jitters, jitters)
def test_more_jitter_never_shortens_the_wait(attempt: int, max_ms: float, r1: float, r2: float) -> None:
    low, high = sorted((r1, r2))
    assert delay_ms(attempt, max_ms, low) <= delay_ms(attempt, max_ms, high)


@given(st.integers(min_value=11, max_value=10_000), jitters)
def test_from_attempt_eleven_the_default_cap_holds(attempt: int, r: float) -> None:
    assert delay_ms(attempt, 60_000, r) == 60_000


@given(st.lists(jitters, max_size=40), st.integers(min_value=0, max_value=40))
def test_counter_counts_scheduled_reconnects_and_resets(rs: list[float], keep: int) -> None:
    backoff = ReconnectBackoff()
    for n, r in enumerate(rs):
        delay, backoff = backoff.schedule(r)
        assert delay == delay_ms(n, 60_000, r)
    assert backoff.attempt == len(rs)
    assert backoff.reset().attempt == 0
    assert base_delay_ms(keep) == pytest.approx(1000 * 1.5**keep)
