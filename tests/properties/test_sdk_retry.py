"""S3: retry waits never shrink and never exceed ``max_delay`` (SDK-25)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.sdk import KiciDefinitionError, Retry
from tests.strategies.sdk import retry_options

pytestmark = pytest.mark.feature("SDK-25")


@given(retry_options(), st.integers(1, 2000))
def test_s3_waits_are_non_decreasing_and_capped(options: dict[str, Any], attempts: int) -> None:
    retry = Retry(**options)
    assert retry.max_delay is not None
    waits = [retry.wait_after(n) for n in range(1, min(attempts, 80) + 1)] + [retry.wait_after(attempts)]
    assert all(a <= b for a, b in itertools.pairwise(waits))
    assert all(0 <= w <= retry.max_delay for w in waits)


@given(retry_options(), st.integers(1, 30))
def test_s3_waits_follow_the_backoff_formula(options: dict[str, Any], attempt: int) -> None:
    retry = Retry(**options)
    assert retry.max_delay is not None
    if retry.backoff == "fixed":
        assert retry.wait_after(attempt) == retry.delay
    else:
        assert retry.wait_after(attempt) == min(retry.delay * 2 ** (attempt - 1), retry.max_delay)


@given(st.integers(max_value=0))
def test_s3_at_least_one_attempt(attempts: int) -> None:
    with pytest.raises(KiciDefinitionError) as info:
        Retry(max_attempts=attempts)
    assert info.value.code == "E220"
    assert "retry.max_attempts must be >= 1" in info.value.message
