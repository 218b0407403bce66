"""Opening the orchestrator's PostgreSQL: the configured one, or the embedded one in the data dir.

With a URL (``KICI_DATABASE_URL`` / ``database.url``) kici uses that server.
Without one it starts the embedded PostgreSQL in ``<data_dir>/pg18`` (kept
across restarts) and uses its ``kici`` database. Either way the migrations run
before the pool opens, and on the way out the pool closes and the embedded
server stops, in that order, even when the owner is cancelled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import attrs
import psycopg
import trio

from kici.adapters.postgres.database import Database
from kici.adapters.postgres.embedded import EmbeddedServer, ensure_database, open_embedded, pgdata_for
from kici.adapters.postgres.migrate import migrate
from kici.domain.store import StoreUnavailableError

EMBEDDED_DBNAME = "kici"


@attrs.frozen
class Postgres:
    conninfo: str
    database: Database
    embedded: EmbeddedServer | None


@asynccontextmanager
async def open_postgres(
    url: str | None, data_dir: Path, *, min_size: int = 1, max_size: int = 8
) -> AsyncIterator[Postgres]:
    """The database for a service's lifetime; ``url`` None (or empty) means embedded."""
    async with AsyncExitStack() as stack:
        server: EmbeddedServer | None = None
        if url:
            conninfo = url
        else:
            server = await stack.enter_async_context(open_embedded(pgdata_for(data_dir)))
            await trio.to_thread.run_sync(ensure_database, server, EMBEDDED_DBNAME)
            conninfo = server.conninfo(EMBEDDED_DBNAME)
        try:
            await migrate(conninfo)
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(f"cannot migrate the database: {exc}") from exc
        db = await stack.enter_async_context(Database.open(conninfo, min_size=min_size, max_size=max_size))
        yield Postgres(conninfo, db, server)
