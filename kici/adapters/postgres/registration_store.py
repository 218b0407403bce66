"""``RegistrationStore`` on PostgreSQL: ``workflow_registrations`` and ``registry_versions`` (EVT-07).

``replace_all`` is one transaction ending in the version bump, so the bump commits with the rows and a
peer that reloads on the new version never reads a half-written repository. Rows are upserted on
``(routing_key, repo_identifier, workflow_name)``: a kept workflow keeps its ``id`` (cron state is keyed
by it) and its ``disabled`` flag (an operator's decision, not the lock's).

Healing: rows stored under ``__default__`` before the routing key's org was known move to the batch's
customer for the whole routing key, not only the pushed repository, because a routing key belongs to
exactly one customer.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from kici.adapters.postgres.database import Connection, Database
from kici.domain.lockfile import LockWorkflow, from_json, to_json
from kici.domain.registrations import RegistrationSet
from kici.domain.store import RegistrationRecord, RegistrationReplace, require_aware
from kici.domain.webhooks.models import DEFAULT_ORG_ID

_HEAL = """
UPDATE workflow_registrations SET customer_id = %(customer)s
WHERE routing_key = %(routing_key)s AND customer_id = %(default)s AND customer_id <> %(customer)s
"""

_UPSERT = """
INSERT INTO workflow_registrations AS r (
    id, customer_id, routing_key, repo_identifier, workflow_name, lock_entry, trigger_types, provider_context,
    commit_sha, source_file, is_global, created_at, updated_at)
VALUES (
    %(id)s, %(customer)s, %(routing_key)s, %(repo)s, %(name)s, %(lock_entry)s, %(trigger_types)s,
    %(provider_context)s, %(commit_sha)s, %(source_file)s, %(is_global)s, %(now)s, %(now)s)
ON CONFLICT (routing_key, repo_identifier, workflow_name) DO UPDATE SET
    customer_id = EXCLUDED.customer_id,
    lock_entry = EXCLUDED.lock_entry,
    trigger_types = EXCLUDED.trigger_types,
    provider_context = EXCLUDED.provider_context,
    commit_sha = EXCLUDED.commit_sha,
    source_file = EXCLUDED.source_file,
    is_global = EXCLUDED.is_global,
    updated_at = EXCLUDED.updated_at
RETURNING (xmax = 0) AS inserted
"""

_DELETE = """
DELETE FROM workflow_registrations
WHERE routing_key = %(routing_key)s AND repo_identifier = %(repo)s AND NOT (workflow_name = ANY(%(names)s))
RETURNING workflow_name
"""

_BUMP = "UPDATE registry_versions SET version = version + 1 RETURNING version"

_LIST = """
SELECT * FROM workflow_registrations
WHERE (%(routing_key)s::text IS NULL OR routing_key = %(routing_key)s)
  AND (%(repo)s::text IS NULL OR repo_identifier = %(repo)s)
ORDER BY routing_key, repo_identifier, workflow_name
"""


def _record(row: dict[str, Any]) -> RegistrationRecord:
    return RegistrationRecord(
        id=row["id"],
        customer_id=row["customer_id"],
        routing_key=row["routing_key"],
        repo_identifier=row["repo_identifier"],
        workflow=from_json(row["lock_entry"], LockWorkflow),
        trigger_types=tuple(row["trigger_types"]),
        provider_context=dict(row["provider_context"]),
        disabled=row["disabled"],
        commit_sha=row["commit_sha"],
        source_file=row["source_file"],
        is_global=row["is_global"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class PgRegistrationStore:
    """See :class:`kici.domain.store.RegistrationStore` and the module docstring."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def replace_all(self, batch: RegistrationSet, now: datetime) -> RegistrationReplace:
        require_aware(now)
        pair = {"routing_key": batch.routing_key, "repo": batch.repo_identifier}
        names = [reg.workflow_name for reg in batch.registrations]
        rows = [
            {
                **pair,
                "id": uuid.uuid4(),
                "customer": batch.customer_id,
                "name": reg.workflow_name,
                "lock_entry": Jsonb(to_json(reg.workflow)),
                "trigger_types": list(reg.trigger_types),
                "provider_context": Jsonb(dict(batch.provider_context)),
                "commit_sha": batch.commit_sha,
                "source_file": reg.source_file,
                "is_global": reg.is_global,
                "now": now,
            }
            for reg in batch.registrations
        ]

        def work(conn: Connection) -> RegistrationReplace:
            conn.execute(
                _HEAL,
                {"customer": batch.customer_id, "routing_key": batch.routing_key, "default": DEFAULT_ORG_ID},
            )
            inserted: list[str] = []
            updated: list[str] = []
            for name, params in zip(names, rows, strict=True):
                found = conn.execute(_UPSERT, params).fetchone()
                (inserted if found is not None and found["inserted"] else updated).append(name)
            gone = conn.execute(_DELETE, {**pair, "names": names}).fetchall()
            version = conn.execute(_BUMP).fetchone()
            if version is None:
                raise RuntimeError("registry_versions has no row (migration 0006 not applied?)")
            return RegistrationReplace(
                version=int(version["version"]),
                inserted=tuple(inserted),
                updated=tuple(updated),
                deleted=tuple(sorted(g["workflow_name"] for g in gone)),
            )

        return await self._db.run(work)

    async def registry_version(self) -> int:
        def work(conn: Connection) -> int:
            row = conn.execute("SELECT version FROM registry_versions").fetchone()
            return 0 if row is None else int(row["version"])

        return await self._db.run(work)

    async def list_registrations(
        self, *, routing_key: str | None = None, repo_identifier: str | None = None
    ) -> tuple[RegistrationRecord, ...]:
        params = {"routing_key": routing_key, "repo": repo_identifier}

        def work(conn: Connection) -> tuple[RegistrationRecord, ...]:
            return tuple(_record(row) for row in conn.execute(_LIST, params).fetchall())

        return await self._db.run(work)

    async def set_disabled(self, registration_id: uuid.UUID, disabled: bool, now: datetime) -> bool:
        require_aware(now)

        def work(conn: Connection) -> bool:
            cursor = conn.execute(
                "UPDATE workflow_registrations SET disabled = %s, updated_at = %s WHERE id = %s",
                (disabled, now, registration_id),
            )
            return cursor.rowcount == 1

        return await self._db.run(work)
