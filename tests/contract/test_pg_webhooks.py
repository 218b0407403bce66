"""Webhook dedup (one atomic insert) and the delivery log on real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import trio

from kici.domain.store import (
    EventLogEntry,
    EventLogStatus,
    EventSource,
    InvalidStoreInputError,
    PayloadOmittedReason,
)
from kici.testing.postgres import PgStores

pytestmark = pytest.mark.pg

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.feature("HOOK-06")
async def test_a_delivery_is_new_once_per_ttl(pg_stores: PgStores) -> None:
    hooks = pg_stores.webhooks
    assert await hooks.mark_delivery("github:1:d-1", NOW, routing_key="github:1")
    assert not await hooks.mark_delivery("github:1:d-1", NOW + timedelta(hours=23))
    assert await hooks.mark_delivery("github:1:d-2", NOW)
    assert await hooks.mark_delivery("github:1:d-1", NOW + timedelta(hours=24))
    assert not await hooks.mark_delivery("github:1:d-1", NOW + timedelta(hours=25))
    assert await hooks.purge_deliveries(NOW + timedelta(hours=24)) == 1
    assert await hooks.purge_deliveries(NOW + timedelta(hours=48)) == 1
    assert await hooks.mark_delivery("short", NOW, ttl=timedelta(seconds=5))
    assert await hooks.mark_delivery("short", NOW + timedelta(seconds=5))
    with pytest.raises(InvalidStoreInputError):
        await hooks.mark_delivery("x", NOW, ttl=timedelta(0))


@pytest.mark.feature("HOOK-06")
async def test_concurrent_sightings_of_one_delivery_have_exactly_one_winner(pg_stores: PgStores) -> None:
    keys = [f"generic:o:s:{i}" for i in range(40)]
    wins: dict[str, list[str]] = {key: [] for key in keys}

    async def orchestrator(name: str) -> None:
        for key in keys:
            if await pg_stores.webhooks.mark_delivery(key, NOW):
                wins[key].append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(orchestrator, "a")
        nursery.start_soon(orchestrator, "b")
    assert all(len(winners) == 1 for winners in wins.values()), wins


@pytest.mark.feature("HOOK-19")
async def test_one_event_log_row_per_delivery_and_replays_update_only_the_outcome(
    pg_stores: PgStores,
) -> None:
    run_id = uuid.uuid4()
    first = EventLogEntry(
        org_id="org",
        delivery_id="d-1",
        status=EventLogStatus.RECEIVED,
        received_at=NOW,
        routing_key="github:1",
        event="push",
        source=EventSource.RELAY,
        provider="github",
        repo_identifier="o/r",
        ref="refs/heads/main",
        payload_key="event-log/org/d-1.json.gz",
        payload_size_bytes=1234,
        payload_hash="ab" * 32,
    )
    assert await pg_stores.webhooks.record_delivery(first)
    processed = EventLogEntry(
        org_id="org",
        delivery_id="d-1",
        status=EventLogStatus.PROCESSED,
        received_at=NOW + timedelta(seconds=1),
        event="ignored-on-replay",
        matched_count=2,
        run_id=run_id,
    )
    assert not await pg_stores.webhooks.record_delivery(processed)
    duplicate = EventLogEntry(
        org_id="org",
        delivery_id="d-1",
        status=EventLogStatus.DUPLICATE,
        received_at=NOW + timedelta(minutes=5),
    )
    assert not await pg_stores.webhooks.record_delivery(duplicate)
    stored = await pg_stores.webhooks.get_delivery("org", "d-1")
    assert stored is not None
    assert (stored.status, stored.run_id, stored.matched_count, stored.event, stored.received_at) == (
        EventLogStatus.DUPLICATE,
        run_id,
        2,
        "push",
        NOW,
    )
    assert (stored.source, stored.payload_size_bytes, stored.payload_key) == (
        EventSource.RELAY,
        1234,
        "event-log/org/d-1.json.gz",
    )
    other_org = EventLogEntry(
        org_id="other",
        delivery_id="d-1",
        status=EventLogStatus.FAILED,
        received_at=NOW,
        payload_omitted=True,
        payload_omitted_reason=PayloadOmittedReason.SIZE_EXCEEDED,
        error_message="boom",
    )
    assert await pg_stores.webhooks.record_delivery(other_org)
    stored_other = await pg_stores.webhooks.get_delivery("other", "d-1")
    assert stored_other == other_org
    assert await pg_stores.webhooks.get_delivery("org", "missing") is None
