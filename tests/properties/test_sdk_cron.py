"""The SDK's standard-library cron check (E209) accepts only what the scheduler (croniter) accepts."""

from __future__ import annotations

import pytest
from croniter import croniter
from hypothesis import given
from hypothesis import strategies as st

from kici.sdk import KiciDefinitionError, schedule
from kici.sdk.cron import CronSyntaxError, check_cron

pytestmark = pytest.mark.feature("SDK-13")

MONTHS = ["jan", "FEB", "Mar", "dec"]
DAYS = ["sun", "MON", "Fri", "sat"]
BOUNDS = [(0, 59, []), (0, 23, []), (1, 31, []), (1, 12, MONTHS), (0, 7, DAYS)]


@st.composite
def elements(draw: st.DrawFn, low: int, high: int, names: list[str]) -> str:
    value = st.one_of(st.integers(low, high).map(str), *([st.sampled_from(names)] if names else []))
    kind = draw(st.sampled_from(["star", "value", "range"]))
    base = "*" if kind == "star" else draw(value) if kind == "value" else f"{draw(value)}-{draw(value)}"
    if draw(st.booleans()):
        base += f"/{draw(st.integers(1, 90))}"
    return base


@st.composite
def cron_expressions(draw: st.DrawFn) -> str:
    fields = [
        ",".join(draw(st.lists(elements(low, high, names), min_size=1, max_size=3)))
        for low, high, names in BOUNDS
    ]
    return " ".join(fields)


@given(cron_expressions())
def test_every_expression_of_the_grammar_is_accepted_by_both(expression: str) -> None:
    check_cron(expression)
    assert croniter.is_valid(expression)
    assert schedule(cron=expression).cron == expression


@given(st.text("0123456789*/-, abcjnMONsu?L#@", max_size=24))
def test_what_the_sdk_accepts_the_scheduler_accepts(expression: str) -> None:
    try:
        check_cron(expression)
    except CronSyntaxError:
        return
    assert croniter.is_valid(expression)


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("0 3 * *", "expected 5 fields"),
        ("60 * * * *", "minute field: 60 is out of range 0-59"),
        ("* 24 * * *", "hour field: 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month field: 0 is out of range 1-31"),
        ("* * * 13 *", "month field: 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week field: 8 is out of range 0-7"),
        ("*/0 * * * *", "minute field: step '0' must be a number >= 1"),
        ("* * * foo *", "month field: 'foo' is not a number or a name"),
        ("1,,2 * * * *", "minute field: empty list element"),
        ("1- * * * *", "minute field: range '1-' has no end"),
        ("@daily", "expected 5 fields"),
        ("0 0 L * *", "day-of-month field: 'L' is not a number"),
    ],
)
def test_invalid_expressions_are_e209_with_the_reason(expression: str, why: str) -> None:
    with pytest.raises(KiciDefinitionError) as info:
        schedule(cron=expression)
    assert info.value.code == "E209"
    assert info.value.message.startswith(f"schedule(): invalid cron '{expression}': {why}")
