"""Direct-ingress invariants (HOOK-04): the per-source rate window and a total decision table."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.webhooks.ingress import (
    RATE_WINDOW_MS,
    Admitted,
    IngressRequest,
    IngressResponse,
    RateWindow,
    admit,
    classify,
)
from kici.domain.webhooks.normalizers.generic import GenericNormalizer
from kici.domain.webhooks.sources import GenericSource
from tests.strategies.webhooks import bodies, generic_configs, headers, methods, secrets

pytestmark = pytest.mark.feature("HOOK-04")

gaps = st.lists(st.integers(min_value=0, max_value=30_000), min_size=1, max_size=40)
limits = st.integers(min_value=1, max_value=6)


def arrivals(steps: list[int]) -> list[int]:
    times, now = [], 0
    for step in steps:
        now += step
        times.append(now)
    return times


@given(gaps, limits)
def test_the_window_admits_greedily_and_never_more_than_the_limit(steps: list[int], limit: int) -> None:
    window = RateWindow()
    admitted: list[int] = []
    for now in arrivals(steps):
        recent = [t for t in admitted if now - t < RATE_WINDOW_MS]
        window, retry_after = window.admit(now, limit)
        assert (retry_after is None) == (len(recent) < limit)
        if retry_after is None:
            admitted.append(now)
        else:
            assert retry_after >= 1
            oldest = min(recent)
            assert (retry_after - 1) * 1000 < oldest + RATE_WINDOW_MS - now <= retry_after * 1000
    for t in admitted:
        assert sum(1 for u in admitted if t <= u < t + RATE_WINDOW_MS) <= limit


@given(gaps, limits)
def test_waiting_retry_after_is_enough(steps: list[int], limit: int) -> None:
    window = RateWindow()
    for now in arrivals(steps):
        window, retry_after = window.admit(now, limit)
        if retry_after is not None:
            assert window.admit(now + retry_after * 1000, limit)[1] is None


@given(
    bodies,
    headers,
    methods,
    secrets,
    st.data(),
)
def test_the_decision_is_total(
    body: bytes, given_headers: dict[str, str], method: str, secret: str, data: Any
) -> None:
    source = data.draw(
        st.one_of(
            st.none(),
            st.builds(
                GenericSource,
                org_id=st.just("o"),
                source_id=st.just("s"),
                name=st.just("n"),
                enabled=st.booleans(),
                verification_method=st.just(method),
                verification_config=generic_configs(secret),
                max_payload_bytes=st.integers(min_value=1, max_value=600),
                allowed_events=st.lists(st.sampled_from(["default", "deploy"]), max_size=2),
                event_type_path=st.sampled_from([None, "$.kind", "$["]),
                idempotency_path=st.sampled_from([None, "$.id", "$["]),
            ),
        )
    )
    request = IngressRequest(
        body=body, headers=given_headers, peer_ip=data.draw(st.sampled_from([None, "127.0.0.1"]))
    )
    normalizer = GenericNormalizer(source or GenericSource(org_id="o", source_id="s", name="n"))
    outcome, _ = admit(source, request, normalizer, window=RateWindow(), now_ms=0, fallback_id="f")
    if isinstance(outcome, IngressResponse):
        assert outcome.status in {404, 413, 500, 401}
        assert outcome.body["rejected"] is True
        assert secret not in str(outcome.body) or len(secret) < 8
        return
    seen = data.draw(st.tuples(st.booleans(), st.booleans()))
    decided = classify(outcome, idempotency_seen=seen[0], delivery_seen=seen[1])
    if isinstance(decided, Admitted):
        assert decided.delivery_id.startswith("generic:o:s:")
        assert not seen[1]
    else:
        assert decided.status == 200
