"""Liveness band edges of spec 20 §10 (PRO-15)."""

from __future__ import annotations

import pytest

from kici.domain.liveness import (
    HEARTBEAT_INTERVAL_MS,
    Liveness,
    LivenessThresholds,
    classify_liveness,
)

pytestmark = pytest.mark.feature("PRO-15")


@pytest.mark.parametrize(
    ("elapsed", "state"),
    [
        (-5, Liveness.OK),
        (0, Liveness.OK),
        (90_000, Liveness.OK),
        (90_001, Liveness.UNHEALTHY),
        (180_000, Liveness.UNHEALTHY),
        (180_001, Liveness.STALE),
    ],
)
def test_edges(elapsed: int, state: Liveness) -> None:
    assert classify_liveness(elapsed) is state


def test_shrunk_intervals_for_real_socket_tests() -> None:
    thresholds = LivenessThresholds(600, 1_200)
    assert classify_liveness(601, thresholds) is Liveness.UNHEALTHY
    assert classify_liveness(1_201, thresholds) is Liveness.STALE
    assert HEARTBEAT_INTERVAL_MS * 3 == 90_000
