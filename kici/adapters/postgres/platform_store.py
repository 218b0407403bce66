"""The Platform's PostgreSQL: its own database, its own migration set, and the tenancy/delivery store.

The Platform never shares a database with an orchestrator: it keeps tenants and API-key hashes, an
orchestrator keeps webhook secrets and runs, and neither should be able to read the other's tables.
Its migrations are ``platform_migrations/NNNN_name.sql`` (applied like the orchestrator's, under the
advisory lock, tracked in that database's ``schema_migrations``). Without a configured URL the
embedded server lives in ``<platform data dir>/pg18`` and the tables in its ``kici_platform`` database.

Revoking an API key NOTIFYs `API_KEY_REVOKED_CHANNEL` (payload: the key id) in the revoking
transaction, so a running daemon closes the key's live connections at once even when the revocation
came from another process (the admin CLI). A daemon that was not listening at that moment catches up
by re-checking its connections' keys (``OrchestratorHub.sweep_revoked``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import psycopg
import trio
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from kici.adapters.postgres import embedded
from kici.adapters.postgres.database import Connection, Database
from kici.adapters.postgres.migrate import Migration, load_migrations, migrate
from kici.adapters.postgres.rows import text_safe
from kici.adapters.postgres.runtime import Postgres
from kici.domain.store import StoreUnavailableError
from kici.domain.tenancy import (
    ApiKey,
    ApiKeyNotFoundError,
    DeliveryRecord,
    DeliveryStatus,
    KeyIdentity,
    NewDelivery,
    Org,
    OrgExistsError,
    OrgNotFoundError,
    RoutingKeyAssignment,
    RoutingKeyNotFoundError,
    RoutingKeyTakenError,
    check_org_name,
    check_routing_key,
)

PLATFORM_MIGRATIONS_DIR: Final = "platform_migrations"
PLATFORM_DBNAME: Final = "kici_platform"
API_KEY_REVOKED_CHANNEL: Final = "kici_platform_api_key_revoked"


def load_platform_migrations() -> tuple[Migration, ...]:
    return load_migrations(directory=PLATFORM_MIGRATIONS_DIR)


async def migrate_platform(conninfo: str) -> tuple[int, ...]:
    """Apply the Platform's migrations to the database at ``conninfo``."""
    try:
        return await migrate(conninfo, load_platform_migrations())
    except psycopg.OperationalError as exc:
        raise StoreUnavailableError(f"cannot migrate the Platform database: {exc}") from exc


@asynccontextmanager
async def open_platform_postgres(
    url: str | None,
    data_dir: Path,
    *,
    min_size: int = 1,
    max_size: int = 8,
    leave_running: bool = False,
) -> AsyncIterator[Postgres]:
    """The Platform database, migrated, for the block; ``url`` None (or empty) means embedded.

    ``leave_running`` (the admin commands): an embedded server that is already running (the daemon's)
    is used and left running; otherwise an embedded server started here is stopped on the way out.
    """
    async with AsyncExitStack() as stack:
        server: embedded.EmbeddedServer | None = None
        if url:
            conninfo = url
        else:
            pgdata = embedded.pgdata_for(data_dir)
            if leave_running and embedded.is_running(pgdata):
                server = await trio.to_thread.run_sync(embedded.start, pgdata)
            else:
                server = await stack.enter_async_context(embedded.open_embedded(pgdata))
            await trio.to_thread.run_sync(embedded.ensure_database, server, PLATFORM_DBNAME)
            conninfo = server.conninfo(PLATFORM_DBNAME)
        await migrate_platform(conninfo)
        db = await stack.enter_async_context(
            Database.open(conninfo, min_size=min_size, max_size=max_size, name="kici-platform")
        )
        yield Postgres(conninfo, db, server)


# --- rows ---------------------------------------------------------------------------------------


def _org(row: Mapping[str, Any]) -> Org:
    return Org(id=row["id"], name=row["name"], created_at=row["created_at"])


def _api_key(row: Mapping[str, Any]) -> ApiKey:
    return ApiKey(
        id=str(row["id"]),
        org_id=row["org_id"],
        name=row["name"],
        prefix=row["key_prefix"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


def _assignment(row: Mapping[str, Any]) -> RoutingKeyAssignment:
    return RoutingKeyAssignment(
        routing_key=row["routing_key"], org_id=row["org_id"], created_at=row["created_at"]
    )


def _delivery(row: Mapping[str, Any]) -> DeliveryRecord:
    return DeliveryRecord(
        id=str(row["id"]),
        org_id=row["org_id"],
        routing_key=row["routing_key"],
        provider=row["provider"],
        delivery_id=row["delivery_id"],
        event=row["event"],
        headers=dict(row["headers"] or {}),
        body_sha256=row["body_sha256"],
        body_size=int(row["body_size"]),
        status=DeliveryStatus(row["status"]),
        reason=row["reason"],
        http_status=int(row["http_status"]),
        connection_id=row["connection_id"],
        received_at=row["received_at"],
        completed_at=row["completed_at"],
    )


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


class PgPlatformStore:
    """`kici.services.platform.ports.PlatformStore` over PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # --- orgs -------------------------------------------------------------------------------------

    async def create_org(self, name: str, now: datetime) -> Org:
        check_org_name(name)

        def work(conn: Connection) -> Org:
            try:
                row = conn.execute(
                    "INSERT INTO orgs (id, name, created_at) VALUES (%s, %s, %s) RETURNING *",
                    (str(uuid.uuid4()), name, now),
                ).fetchone()
            except pg_errors.UniqueViolation:
                raise OrgExistsError(name) from None
            assert row is not None
            return _org(row)

        return await self._db.run(work)

    async def list_orgs(self) -> list[Org]:
        rows = await self._db.run(
            lambda conn: conn.execute('SELECT * FROM orgs ORDER BY name COLLATE "C"').fetchall()
        )
        return [_org(row) for row in rows]

    async def find_org(self, ref: str) -> Org | None:
        def work(conn: Connection) -> Org | None:
            row = conn.execute(
                "SELECT * FROM orgs WHERE id = %s OR name = %s ORDER BY (id = %s) DESC LIMIT 1",
                (ref, ref, ref),
            ).fetchone()
            return None if row is None else _org(row)

        return await self._db.run(work)

    # --- API keys ---------------------------------------------------------------------------------

    async def create_api_key(
        self, org_id: str, name: str, key_hash: str, prefix: str, now: datetime
    ) -> ApiKey:
        def work(conn: Connection) -> ApiKey:
            try:
                row = conn.execute(
                    "INSERT INTO api_keys (id, org_id, name, key_hash, key_prefix, created_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s) RETURNING *",
                    (uuid.uuid4(), org_id, name, key_hash, prefix, now),
                ).fetchone()
            except pg_errors.ForeignKeyViolation:
                raise OrgNotFoundError(org_id) from None
            assert row is not None
            return _api_key(row)

        return await self._db.run(work)

    async def list_api_keys(self, org_id: str | None = None) -> list[ApiKey]:
        def work(conn: Connection) -> list[ApiKey]:
            rows = conn.execute(
                "SELECT * FROM api_keys WHERE %(org)s::text IS NULL OR org_id = %(org)s"
                " ORDER BY created_at, id",
                {"org": org_id},
            ).fetchall()
            return [_api_key(row) for row in rows]

        return await self._db.run(work)

    async def revoke_api_key(self, key_id: str, now: datetime) -> ApiKey:
        parsed = _uuid(key_id)
        if parsed is None:
            raise ApiKeyNotFoundError(key_id)

        def work(conn: Connection) -> ApiKey:
            row = conn.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s) WHERE id = %s RETURNING *",
                (now, parsed),
            ).fetchone()
            if row is None:
                raise ApiKeyNotFoundError(key_id)
            conn.execute("SELECT pg_notify(%s, %s)", (API_KEY_REVOKED_CHANNEL, str(parsed)))
            return _api_key(row)

        return await self._db.run(work)

    async def find_active_key(self, key_hash: str) -> KeyIdentity | None:
        def work(conn: Connection) -> KeyIdentity | None:
            row = conn.execute(
                "SELECT k.id, k.org_id, o.name FROM api_keys k JOIN orgs o ON o.id = k.org_id"
                " WHERE k.key_hash = %s AND k.revoked_at IS NULL",
                (key_hash,),
            ).fetchone()
            if row is None:
                return None
            return KeyIdentity(key_id=str(row["id"]), org_id=row["org_id"], org_name=row["name"])

        return await self._db.run(work)

    async def touch_api_key(self, key_id: str, now: datetime) -> None:
        parsed = _uuid(key_id)
        if parsed is None:
            return
        await self._db.run(
            lambda conn: conn.execute("UPDATE api_keys SET last_used_at = %s WHERE id = %s", (now, parsed))
        )

    async def active_key_ids(self, key_ids: Collection[str]) -> frozenset[str]:
        parsed = [u for u in (_uuid(k) for k in key_ids) if u is not None]
        if not parsed:
            return frozenset()

        def work(conn: Connection) -> frozenset[str]:
            rows = conn.execute(
                "SELECT id FROM api_keys WHERE id = ANY(%s) AND revoked_at IS NULL", (parsed,)
            ).fetchall()
            return frozenset(str(row["id"]) for row in rows)

        return await self._db.run(work)

    # --- routing keys -----------------------------------------------------------------------------

    async def add_routing_key(self, org_id: str, routing_key: str, now: datetime) -> RoutingKeyAssignment:
        check_routing_key(routing_key)

        def work(conn: Connection) -> RoutingKeyAssignment:
            try:
                row = conn.execute(
                    "INSERT INTO routing_keys (routing_key, org_id, created_at) VALUES (%s, %s, %s)"
                    " ON CONFLICT (routing_key) DO NOTHING RETURNING *",
                    (routing_key, org_id, now),
                ).fetchone()
            except pg_errors.ForeignKeyViolation:
                raise OrgNotFoundError(org_id) from None
            if row is None:
                row = conn.execute(
                    "SELECT * FROM routing_keys WHERE routing_key = %s", (routing_key,)
                ).fetchone()
                assert row is not None
                if row["org_id"] != org_id:
                    raise RoutingKeyTakenError(routing_key, row["org_id"])
            return _assignment(row)

        return await self._db.run(work)

    async def list_routing_keys(self, org_id: str | None = None) -> list[RoutingKeyAssignment]:
        def work(conn: Connection) -> list[RoutingKeyAssignment]:
            rows = conn.execute(
                "SELECT * FROM routing_keys WHERE %(org)s::text IS NULL OR org_id = %(org)s"
                ' ORDER BY routing_key COLLATE "C"',
                {"org": org_id},
            ).fetchall()
            return [_assignment(row) for row in rows]

        return await self._db.run(work)

    async def remove_routing_key(self, routing_key: str) -> RoutingKeyAssignment:
        def work(conn: Connection) -> RoutingKeyAssignment:
            row = conn.execute(
                "DELETE FROM routing_keys WHERE routing_key = %s RETURNING *", (routing_key,)
            ).fetchone()
            if row is None:
                raise RoutingKeyNotFoundError(routing_key)
            return _assignment(row)

        return await self._db.run(work)

    async def routing_key_owners(self, routing_keys: Collection[str]) -> Mapping[str, str]:
        keys = list(routing_keys)
        if not keys:
            return {}

        def work(conn: Connection) -> dict[str, str]:
            rows = conn.execute(
                "SELECT routing_key, org_id FROM routing_keys WHERE routing_key = ANY(%s)", (keys,)
            ).fetchall()
            return {row["routing_key"]: row["org_id"] for row in rows}

        return await self._db.run(work)

    # --- deliveries -------------------------------------------------------------------------------

    async def record_delivery(self, delivery: NewDelivery) -> None:
        headers = {text_safe(k): text_safe(v) for k, v in delivery.headers.items()}
        await self._db.run(
            lambda conn: conn.execute(
                "INSERT INTO deliveries (id, org_id, routing_key, provider, delivery_id, event, headers,"
                " body_sha256, body_size, status, reason, http_status, connection_id, received_at,"
                " completed_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    uuid.UUID(delivery.id),
                    delivery.org_id,
                    text_safe(delivery.routing_key),
                    text_safe(delivery.provider),
                    text_safe(delivery.delivery_id),
                    text_safe(delivery.event),
                    Jsonb(headers),
                    delivery.body_sha256,
                    delivery.body_size,
                    delivery.status.value,
                    None if delivery.reason is None else text_safe(delivery.reason),
                    delivery.http_status,
                    delivery.connection_id,
                    delivery.received_at,
                    delivery.completed_at,
                ),
            )
        )

    async def list_deliveries(self, org_id: str | None = None, limit: int = 100) -> list[DeliveryRecord]:
        def work(conn: Connection) -> list[DeliveryRecord]:
            rows = conn.execute(
                "SELECT * FROM deliveries WHERE %(org)s::text IS NULL OR org_id = %(org)s"
                " ORDER BY received_at DESC, id DESC LIMIT %(limit)s",
                {"org": org_id, "limit": max(0, limit)},
            ).fetchall()
            return [_delivery(row) for row in rows]

        return await self._db.run(work)


__all__ = [
    "API_KEY_REVOKED_CHANNEL",
    "PLATFORM_DBNAME",
    "PLATFORM_MIGRATIONS_DIR",
    "PgPlatformStore",
    "load_platform_migrations",
    "migrate_platform",
    "open_platform_postgres",
]
