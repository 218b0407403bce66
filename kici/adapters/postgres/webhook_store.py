"""``WebhookStore`` on PostgreSQL: delivery dedup and the delivery log ``event_log``.

Dedup is one statement: ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired
RETURNING``. A row comes back only for the first sighting of a key, or for a key
whose previous sighting is older than the TTL (24 h by default, HOOK-06); two
orchestrators racing on one delivery cannot both see it as new, because the
loser's conflict check runs against the winner's committed row.

The delivery log keeps one row per ``(org_id, delivery_id)``; a replay only
updates ``status``, ``run_id``, ``matched_count`` and ``error_message`` (spec 30
§3 P2), and keeps the stored run id and match count unless the replay brings
new ones.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from kici.adapters.postgres.database import Connection, Database
from kici.domain.store import (
    DEFAULT_DEDUP_TTL,
    EventLogEntry,
    EventLogStatus,
    EventSource,
    InvalidStoreInputError,
    PayloadOmittedReason,
    require_aware,
)

_MARK = """
INSERT INTO webhook_deliveries AS d (delivery_key, routing_key, first_seen_at, expires_at)
VALUES (%(key)s, %(routing_key)s, %(now)s, %(expires_at)s)
ON CONFLICT (delivery_key) DO UPDATE
SET routing_key = EXCLUDED.routing_key, first_seen_at = EXCLUDED.first_seen_at,
    expires_at = EXCLUDED.expires_at
WHERE d.expires_at <= EXCLUDED.first_seen_at
RETURNING delivery_key
"""

_RECORD = """
INSERT INTO event_log AS e (
    id, org_id, delivery_id, routing_key, event, action, source, provider, repo_identifier, ref, payload_key,
    payload_omitted, payload_omitted_reason, payload_size_bytes, payload_hash, matched_count, status, run_id,
    error_message, received_at, updated_at)
VALUES (
    %(id)s, %(org_id)s, %(delivery_id)s, %(routing_key)s, %(event)s, %(action)s, %(source)s, %(provider)s,
    %(repo_identifier)s, %(ref)s, %(payload_key)s, %(payload_omitted)s, %(payload_omitted_reason)s,
    %(payload_size_bytes)s, %(payload_hash)s, %(matched_count)s, %(status)s, %(run_id)s, %(error_message)s,
    %(received_at)s, %(received_at)s)
ON CONFLICT (org_id, delivery_id) DO UPDATE SET
    status = EXCLUDED.status,
    run_id = COALESCE(EXCLUDED.run_id, e.run_id),
    matched_count = CASE WHEN EXCLUDED.matched_count > 0 THEN EXCLUDED.matched_count ELSE e.matched_count END,
    error_message = EXCLUDED.error_message,
    updated_at = EXCLUDED.updated_at
RETURNING (xmax = 0) AS inserted
"""


def _entry(row: dict[str, Any]) -> EventLogEntry:
    return EventLogEntry(
        org_id=row["org_id"],
        delivery_id=row["delivery_id"],
        status=EventLogStatus(row["status"]),
        received_at=row["received_at"],
        routing_key=row["routing_key"],
        event=row["event"],
        action=row["action"],
        source=None if row["source"] is None else EventSource(row["source"]),
        provider=row["provider"],
        repo_identifier=row["repo_identifier"],
        ref=row["ref"],
        payload_key=row["payload_key"],
        payload_omitted=row["payload_omitted"],
        payload_omitted_reason=(
            None
            if row["payload_omitted_reason"] is None
            else PayloadOmittedReason(row["payload_omitted_reason"])
        ),
        payload_size_bytes=row["payload_size_bytes"],
        payload_hash=row["payload_hash"],
        matched_count=row["matched_count"],
        run_id=row["run_id"],
        error_message=row["error_message"],
    )


class PgWebhookStore:
    """See :class:`kici.domain.store.WebhookStore` and the module docstring."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def mark_delivery(
        self,
        delivery_key: str,
        now: datetime,
        ttl: timedelta = DEFAULT_DEDUP_TTL,
        routing_key: str | None = None,
    ) -> bool:
        require_aware(now)
        if ttl <= timedelta(0):
            raise InvalidStoreInputError(f"dedup ttl must be positive, got {ttl}")
        params = {"key": delivery_key, "routing_key": routing_key, "now": now, "expires_at": now + ttl}

        def work(conn: Connection) -> bool:
            return conn.execute(_MARK, params).fetchone() is not None

        return await self._db.run(work)

    async def purge_deliveries(self, now: datetime) -> int:
        require_aware(now)

        def work(conn: Connection) -> int:
            return conn.execute("DELETE FROM webhook_deliveries WHERE expires_at <= %s", (now,)).rowcount

        return await self._db.run(work)

    async def record_delivery(self, entry: EventLogEntry) -> bool:
        params = {
            "id": uuid.uuid4(),
            "org_id": entry.org_id,
            "delivery_id": entry.delivery_id,
            "routing_key": entry.routing_key,
            "event": entry.event,
            "action": entry.action,
            "source": None if entry.source is None else entry.source.value,
            "provider": entry.provider,
            "repo_identifier": entry.repo_identifier,
            "ref": entry.ref,
            "payload_key": entry.payload_key,
            "payload_omitted": entry.payload_omitted,
            "payload_omitted_reason": (
                None if entry.payload_omitted_reason is None else entry.payload_omitted_reason.value
            ),
            "payload_size_bytes": entry.payload_size_bytes,
            "payload_hash": entry.payload_hash,
            "matched_count": entry.matched_count,
            "status": entry.status.value,
            "run_id": entry.run_id,
            "error_message": entry.error_message,
            "received_at": entry.received_at,
        }

        def work(conn: Connection) -> bool:
            row = conn.execute(_RECORD, params).fetchone()
            return bool(row is not None and row["inserted"])

        return await self._db.run(work)

    async def get_delivery(self, org_id: str, delivery_id: str) -> EventLogEntry | None:
        def work(conn: Connection) -> EventLogEntry | None:
            row = conn.execute(
                "SELECT * FROM event_log WHERE org_id = %s AND delivery_id = %s", (org_id, delivery_id)
            ).fetchone()
            return None if row is None else _entry(row)

        return await self._db.run(work)
