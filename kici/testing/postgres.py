"""PostgreSQL for tests: one embedded server per test process, one fresh migrated database per test.

Each pytest process (each xdist worker) starts its own server in
``<tmp>/kici-test-pg/<pid>-<worker>/pg18`` with durability off (fsync,
synchronous_commit, full_page_writes: a crashed test server is thrown away
anyway), migrates a template database once, and gives every test a database
cloned from it (``CREATE DATABASE ... TEMPLATE``), dropped afterwards.

The server is stopped and its directory removed when the session ends, even
after failures. A test process that was killed cannot do that, so every start
first sweeps ``<tmp>/kici-test-pg`` for directories whose owner process is gone,
stops their servers and deletes them: a killed run never leaves a server behind
for longer than the next run's start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import psycopg
from psycopg import sql

from kici.adapters.postgres import embedded
from kici.adapters.postgres.agent_store import PgAgentStore
from kici.adapters.postgres.database import Database
from kici.adapters.postgres.execution_store import PgExecutionStore
from kici.adapters.postgres.log_store import PgLogStore
from kici.adapters.postgres.migrate import migrate_conninfo
from kici.adapters.postgres.queue_store import PgDispatchQueue
from kici.adapters.postgres.webhook_store import PgWebhookStore

ROOT_NAME = "kici-test-pg"
TEMPLATE_DB = "kici_template"
TEST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def test_root() -> Path:
    return Path(tempfile.gettempdir()) / ROOT_NAME


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def scratch_dir(worker: str) -> Iterator[Path]:
    """An empty directory under the test root, named so that :func:`sweep_orphans` can reclaim it;
    the server of ``<dir>/pg18``, if any, is stopped and the directory removed on the way out."""
    root = test_root()
    root.mkdir(mode=0o755, exist_ok=True)
    path = root / f"{os.getpid()}-{worker}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        try:
            embedded.stop(embedded.pgdata_for(path))
        finally:
            shutil.rmtree(path, ignore_errors=True)


def sweep_orphans(root: Path) -> list[Path]:
    """Stop and delete the test servers of processes that no longer exist; returns what was removed."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for home in root.iterdir():
        owner = home.name.split("-", 1)[0]
        if not owner.isdigit() or _alive(int(owner)):
            continue
        with contextlib.suppress(embedded.EmbeddedPostgresError):
            embedded.stop(embedded.pgdata_for(home))
        shutil.rmtree(home, ignore_errors=True)
        removed.append(home)
    return removed


@attrs.frozen
class PgStores:
    """Every PostgreSQL store over one database, as a composition root would build them."""

    db: Database
    execution: PgExecutionStore
    queue: PgDispatchQueue
    webhooks: PgWebhookStore
    agents: PgAgentStore
    logs: PgLogStore

    @classmethod
    def over(cls, db: Database) -> PgStores:
        return cls(
            db,
            PgExecutionStore(db),
            PgDispatchQueue(db),
            PgWebhookStore(db),
            PgAgentStore(db),
            PgLogStore(db),
        )


@attrs.frozen
class PgTestDatabase:
    name: str
    conninfo: str


class PgTestServer:
    """The embedded server of one test process."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.pgdata = embedded.pgdata_for(home)
        self._server: embedded.EmbeddedServer | None = None

    @classmethod
    def start(cls, worker: str) -> PgTestServer:
        root = test_root()
        root.mkdir(mode=0o755, exist_ok=True)
        sweep_orphans(root)
        home = root / f"{os.getpid()}-{worker}"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir()
        server = cls(home)
        try:
            server._server = embedded.start(server.pgdata, settings=TEST_SETTINGS)
            server._create_template()
        except BaseException:
            server.close()
            raise
        return server

    @property
    def server(self) -> embedded.EmbeddedServer:
        if self._server is None:
            raise RuntimeError("the test PostgreSQL server is stopped")
        return self._server

    def conninfo(self, dbname: str = "postgres") -> str:
        return self.server.conninfo(dbname)

    def _admin(self, statement: sql.Composable) -> None:
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(statement)

    def _create_template(self) -> None:
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
        migrate_conninfo(self.conninfo(TEMPLATE_DB))

    def create_database(self, *, migrated: bool = True) -> PgTestDatabase:
        """A new database: a clone of the migrated template, or an empty one (``migrated=False``)."""
        name = f"t_{uuid.uuid4().hex[:20]}"
        template = TEMPLATE_DB if migrated else "template0"
        self._admin(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
        return PgTestDatabase(name, self.conninfo(name))

    def drop_database(self, name: str) -> None:
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def stop(self) -> None:
        """Stop the server, keeping its data (a test that needs it down restarts it with :meth:`restart`)."""
        self._server = None
        embedded.stop(self.pgdata)

    def restart(self) -> None:
        """Stop and start again on the same data dir (sessions are cut, as after a real restart)."""
        self.stop()
        self._server = embedded.start(self.pgdata)

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self._server = None
        try:
            embedded.stop(self.pgdata)
        finally:
            shutil.rmtree(self.home, ignore_errors=True)
