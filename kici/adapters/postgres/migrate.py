"""Versioned SQL migrations, applied in order under an advisory lock.

Migrations are the files ``migrations/NNNN_name.sql`` of this package, numbered
from 1 without gaps (the Platform's own database has its own set, the files
``platform_migrations/NNNN_name.sql``: ``load_migrations(directory=...)``). Each
is applied in its own transaction that first takes
``pg_advisory_xact_lock(MIGRATION_LOCK_KEY)``, then re-reads
``schema_migrations``: several orchestrators starting against one database
therefore apply each migration exactly once, and a crash mid-way leaves the
schema at a clean migration boundary (PostgreSQL DDL is transactional).

Refusals, each a :class:`MigrationError`:

* an applied migration whose file changed (checksum mismatch): editing history
  would leave databases that ran the old text silently different;
* a database that has migrations this code does not know: it was migrated by a
  newer kici, and running older code against it could corrupt data.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from typing import Any

import attrs
import psycopg
import trio
from psycopg.rows import tuple_row

MIGRATION_LOCK_KEY = 0x6B6963695F6D6967  # "kici_mig"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migrations on disk or in the database are inconsistent; nothing further was applied."""


@attrs.frozen
class Migration:
    version: int
    name: str
    sql: str = attrs.field(repr=False)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(
    package: str = __package__ or "kici.adapters.postgres", directory: str = "migrations"
) -> tuple[Migration, ...]:
    """A migration set in version order; raises :class:`MigrationError` on a bad file set."""
    found: list[Migration] = []
    for entry in (resources.files(package) / directory).iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migrations must be numbered 1..n without gaps or duplicates, got {versions}")
    return tuple(found)


def apply_migrations(
    conn: psycopg.Connection[Any], migrations: tuple[Migration, ...] | None = None
) -> tuple[int, ...]:
    """Apply the missing migrations on an autocommit connection; returns the versions this call applied."""
    if not conn.autocommit:
        raise MigrationError("apply_migrations needs an autocommit connection (it manages transactions)")
    known = load_migrations() if migrations is None else migrations
    applied: list[int] = []
    for migration in known:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            conn.execute(_SCHEMA_MIGRATIONS)
            cursor = conn.cursor(row_factory=tuple_row)
            rows = cursor.execute("SELECT version, checksum FROM schema_migrations").fetchall()
            done = {int(version): str(checksum) for version, checksum in rows}
            unknown = sorted(set(done) - {m.version for m in known})
            if unknown:
                raise MigrationError(
                    f"the database has migrations {unknown} this kici does not know (newer kici?)"
                )
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} changed after it was applied"
                    )
                continue
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            applied.append(migration.version)
    return tuple(applied)


def migrate_conninfo(conninfo: str, migrations: tuple[Migration, ...] | None = None) -> tuple[int, ...]:
    """Connect, migrate (the orchestrator's set unless ``migrations`` is given), disconnect (blocking)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return apply_migrations(conn, migrations)


async def migrate(conninfo: str, migrations: tuple[Migration, ...] | None = None) -> tuple[int, ...]:
    """:func:`migrate_conninfo` in a worker thread; run it before the pool opens."""
    return await trio.to_thread.run_sync(migrate_conninfo, conninfo, migrations)
