"""The trio-facing pool: one transaction per unit of work, retried after a lost connection, and
recovering after a PostgreSQL restart."""

from __future__ import annotations

import pytest
import trio

from kici.adapters.postgres.database import Connection, Database
from kici.domain.store import StoreUnavailableError
from kici.testing.postgres import PgTestDatabase, PgTestServer

pytestmark = pytest.mark.pg


def select_one(conn: Connection) -> object:
    row = conn.execute("SELECT 1 AS one").fetchone()
    assert row is not None
    return row["one"]


@pytest.mark.feature("CFG-02")
async def test_a_unit_of_work_commits_or_rolls_back_as_a_whole(pg_db: Database) -> None:
    await pg_db.run(lambda conn: conn.execute("CREATE TABLE t (x int)"))

    def half_done(conn: Connection) -> None:
        conn.execute("INSERT INTO t VALUES (1)")
        raise LookupError("changed my mind")

    with pytest.raises(LookupError):
        await pg_db.run(half_done)
    await pg_db.run(lambda conn: conn.execute("INSERT INTO t VALUES (2)"))
    rows = await pg_db.run(lambda conn: conn.execute("SELECT x FROM t").fetchall())
    assert rows == [{"x": 2}]


@pytest.mark.feature("CFG-02")
async def test_a_connection_lost_mid_transaction_is_retried_on_a_fresh_one(pg_db: Database) -> None:
    await pg_db.run(lambda conn: conn.execute("CREATE TABLE t (x int)"))
    attempts: list[int] = []

    def flaky(conn: Connection) -> str:
        attempts.append(len(attempts) + 1)
        conn.execute("INSERT INTO t VALUES (%s)", (len(attempts),))
        if len(attempts) == 1:
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return "done"

    assert await pg_db.run(flaky) == "done"
    assert attempts == [1, 2]
    assert await pg_db.run(lambda conn: conn.execute("SELECT x FROM t").fetchall()) == [{"x": 2}]


@pytest.mark.feature("CFG-02")
@pytest.mark.parametrize("sqlstate", ["40P01", "40001"])
async def test_a_deadlock_or_serialization_failure_is_retried(pg_db: Database, sqlstate: str) -> None:
    """The server rolled the work back, so running it again is safe (two replace_all calls deadlocked)."""
    await pg_db.run(lambda conn: conn.execute("CREATE TABLE t (x int)"))
    attempts: list[int] = []

    def contended(conn: Connection) -> str:
        attempts.append(len(attempts) + 1)
        conn.execute("INSERT INTO t VALUES (%s)", (len(attempts),))
        if len(attempts) == 1:
            conn.execute(f"DO $$ BEGIN RAISE EXCEPTION 'contended' USING ERRCODE = '{sqlstate}'; END $$")
        return "done"

    assert await pg_db.run(contended) == "done"
    assert attempts == [1, 2]
    assert await pg_db.run(lambda conn: conn.execute("SELECT x FROM t").fetchall()) == [{"x": 2}]


@pytest.mark.feature("CFG-02")
async def test_the_pool_recovers_after_a_server_restart(pg_server: PgTestServer, pg_db: Database) -> None:
    assert await pg_db.run(select_one) == 1
    await trio.to_thread.run_sync(pg_server.restart)
    assert await pg_db.run(select_one) == 1
    assert await pg_db.run(select_one) == 1


@pytest.mark.feature("CFG-02")
async def test_every_dead_pooled_connection_is_replaced_after_a_restart(
    pg_server: PgTestServer, pg_database: PgTestDatabase
) -> None:
    # more dead connections than retries: the first lost one sweeps the pool, nothing fails
    async with Database.open(pg_database.conninfo, min_size=6, max_size=6) as db:
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(db.run, lambda conn: conn.execute("SELECT pg_sleep(0.05)"))
        await trio.to_thread.run_sync(pg_server.restart)
        for _ in range(8):
            assert await db.run(select_one) == 1
        await trio.to_thread.run_sync(pg_server.restart)
        assert await db.run_autocommit(select_one) == 1
        assert await db.run_autocommit(select_one) == 1


@pytest.mark.feature("CFG-02")
async def test_a_stopped_server_is_unavailable_until_it_is_back(
    pg_server: PgTestServer, pg_database: PgTestDatabase
) -> None:
    async with Database.open(pg_database.conninfo, max_size=2, pool_timeout=1) as db:
        assert await db.run(select_one) == 1
        await trio.to_thread.run_sync(pg_server.stop)
        try:
            with pytest.raises(StoreUnavailableError):
                await db.run(select_one)
        finally:
            await trio.to_thread.run_sync(pg_server.restart)
        with trio.fail_after(30):
            while True:
                try:
                    assert await db.run(select_one) == 1
                    break
                except StoreUnavailableError:
                    await trio.sleep(0.1)


@pytest.mark.feature("CFG-02")
async def test_opening_an_unreachable_database_is_store_unavailable(pg_server: PgTestServer) -> None:
    conninfo = pg_server.conninfo("no_such_database")
    with pytest.raises(StoreUnavailableError):
        async with Database.open(conninfo, pool_timeout=0.5):
            pass
