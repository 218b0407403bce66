"""The pipeline's timings on its ``webhook handled`` log line (HOOK-14, OPS-12), against PostgreSQL.

``scripts/bench/latency.py`` reads ``duration_ms`` (the phases from the dedup insert to that line)
and ``lock_fetch_ms`` (phase E alone) back from the JSON log to split the webhook-to-step latency.
"""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from kici.services.orchestrator.pipeline import process_webhook
from kici.testing.postgres import PgStores
from tests.contract.test_orch_pipeline import CI_LOCK, FakeFetcher, world

pytestmark = pytest.mark.pg


@pytest.mark.feature("HOOK-14", "OPS-12")
async def test_webhook_handled_carries_the_pipeline_and_lock_fetch_durations(pg_stores: PgStores) -> None:
    w = world(pg_stores, FakeFetcher(default=CI_LOCK))
    with capture_logs() as logs:
        first = await process_webhook(w.info("github_push"), w.deps)
        replay = await process_webhook(w.info("github_push"), w.deps)
    handled = [entry for entry in logs if entry["event"] == "webhook handled"]
    assert [entry["status"] for entry in handled] == [first.status.value, replay.status.value]
    assert [entry["status"] for entry in handled] == ["processed", "duplicate"]
    processed, duplicate = handled
    assert isinstance(processed["lock_fetch_ms"], float)
    assert 0.0 <= processed["lock_fetch_ms"] <= processed["duration_ms"]
    assert first.lock_fetch_ms == processed["lock_fetch_ms"]
    assert duplicate["lock_fetch_ms"] is None
    assert duplicate["duration_ms"] >= 0.0


@pytest.mark.feature("HOOK-14")
async def test_an_absent_lock_still_reports_how_long_its_fetch_took(pg_stores: PgStores) -> None:
    w = world(pg_stores, FakeFetcher(default=None))
    with capture_logs() as logs:
        result = await process_webhook(w.info("github_push"), w.deps)
    (handled,) = [entry for entry in logs if entry["event"] == "webhook handled"]
    assert handled["status"] == result.status.value == "lockfile_missing"
    assert handled["lock_fetch_ms"] == result.lock_fetch_ms
    assert result.lock_fetch_ms is not None
    assert result.lock_fetch_ms >= 0.0
