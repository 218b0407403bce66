"""The reconnect backoff table of spec 20 §14 (PRO-06), row by row."""

from __future__ import annotations

import math

import pytest

from kici.domain.backoff import InvalidBackoffError, ReconnectBackoff, base_delay_ms, delay_ms

# a, base ms, upper end of the jittered range (ms), as printed in the spec (one decimal)
TABLE = [
    (0, 1_000, 1_500),
    (1, 1_500, 2_250),
    (2, 2_250, 3_375),
    (3, 3_375, 5_062.5),
    (4, 5_062.5, 7_593.75),
    (5, 7_593.75, 11_390.6),
    (6, 11_390.6, 17_085.9),
    (7, 17_085.9, 25_628.9),
    (8, 25_628.9, 38_443.4),
    (9, 38_443.4, 57_665.0),
    (10, 57_665.0, 60_000),
]
ALMOST_ONE = math.nextafter(1.0, 0.0)

pytestmark = pytest.mark.feature("PRO-06")


@pytest.mark.parametrize(("attempt", "base", "upper"), TABLE)
def test_table_row(attempt: int, base: float, upper: float) -> None:
    assert delay_ms(attempt, 60_000, 0.0) == pytest.approx(base, abs=0.05)
    assert delay_ms(attempt, 60_000, ALMOST_ONE) == pytest.approx(upper, abs=0.05)
    assert delay_ms(attempt, 60_000, 0.5) == pytest.approx(min(base * 1.25, 60_000), abs=0.1)


def test_attempt_eleven_base_exceeds_the_cap() -> None:
    assert base_delay_ms(11) == pytest.approx(86_497.6, abs=0.05)
    assert delay_ms(11, 60_000, 0.0) == 60_000


def test_huge_attempts_do_not_overflow() -> None:
    assert base_delay_ms(100_000) == math.inf
    assert delay_ms(100_000, 60_000, 0.3) == 60_000


def test_cap_is_configurable() -> None:
    assert delay_ms(3, 500, 0.0) == 500
    assert delay_ms(0, 1_200, 0.9) == 1_200


@pytest.mark.parametrize(
    ("attempt", "max_ms", "r"),
    [(-1, 60_000, 0.0), (0, 60_000, 1.0), (0, 60_000, -0.1), (0, 0, 0.0), (0, 60_000, float("nan"))],
)
def test_illegal_input_is_a_typed_error(attempt: int, max_ms: float, r: float) -> None:
    with pytest.raises(InvalidBackoffError):
        delay_ms(attempt, max_ms, r)


def test_backoff_state_validates_and_resets() -> None:
    with pytest.raises(InvalidBackoffError):
        ReconnectBackoff(max_ms=0)
    with pytest.raises(InvalidBackoffError):
        ReconnectBackoff(attempt=-1)
    first, after = ReconnectBackoff().schedule(0.0)
    second, _ = after.schedule(0.0)
    assert (first, second) == (1_000, 1_500)
    assert after.reset() == ReconnectBackoff()
