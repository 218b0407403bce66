"""Link liveness (PRO-15), spec 20 §10 and §20 invariant 12."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.liveness import (
    InvalidLivenessError,
    Liveness,
    LivenessThresholds,
    classify_liveness,
)

pytestmark = pytest.mark.feature("PRO-15")

elapsed = st.one_of(
    st.integers(-(10**6), 10**7),
    st.floats(-1e6, 1e7, allow_nan=False),
    st.sampled_from([90_000, 90_000.001, 180_000, 180_000.001, 0]),
)
_RANK = {Liveness.OK: 0, Liveness.UNHEALTHY: 1, Liveness.STALE: 2}


@given(elapsed)
def test_default_bands(ms: float) -> None:
    expected = Liveness.OK if ms <= 90_000 else Liveness.UNHEALTHY if ms <= 180_000 else Liveness.STALE
    assert classify_liveness(ms) is expected


@given(st.integers(1, 10**6), st.integers(0, 10**6), elapsed)
def test_configured_bands(unhealthy: int, span: int, ms: float) -> None:
    thresholds = LivenessThresholds(unhealthy, unhealthy + span)
    result = classify_liveness(ms, thresholds)
    assert (result is Liveness.OK) == (ms <= unhealthy)
    assert (result is Liveness.STALE) == (ms > unhealthy + span)


@given(elapsed, elapsed)
def test_more_silence_is_never_healthier(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert _RANK[classify_liveness(low)] <= _RANK[classify_liveness(high)]


@given(st.integers(-100, 100), st.integers(-100, 100))
def test_thresholds_must_be_positive_and_ordered(unhealthy: int, stale: int) -> None:
    if 0 < unhealthy <= stale:
        LivenessThresholds(unhealthy, stale)
    else:
        with pytest.raises(InvalidLivenessError):
            LivenessThresholds(unhealthy, stale)
