"""Versioned migrations under an advisory lock: each applied once, in order, even by concurrent migrators."""

from __future__ import annotations

import threading

import psycopg
import pytest

from kici.adapters.postgres.migrate import (
    Migration,
    MigrationError,
    apply_migrations,
    load_migrations,
    migrate_conninfo,
)
from kici.testing.postgres import PgTestDatabase

pytestmark = pytest.mark.pg


@pytest.mark.feature("CFG-02")
def test_migration_files_are_numbered_without_gaps() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert all(m.sql.strip() for m in migrations)


@pytest.mark.feature("CFG-02")
def test_two_concurrent_migrators_apply_each_migration_once(pg_blank_database: PgTestDatabase) -> None:
    results: list[tuple[int, ...]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def migrator() -> None:
        try:
            with psycopg.connect(pg_blank_database.conninfo, autocommit=True) as conn:
                barrier.wait()
                results.append(apply_migrations(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrator) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    applied = [v for result in results for v in result]
    assert sorted(applied) == [m.version for m in load_migrations()]
    with psycopg.connect(pg_blank_database.conninfo) as conn:
        rows = conn.execute("SELECT version, checksum FROM schema_migrations ORDER BY version").fetchall()
    assert rows == [(m.version, m.checksum) for m in load_migrations()]
    assert migrate_conninfo(pg_blank_database.conninfo) == ()


@pytest.mark.feature("CFG-02")
def test_an_edited_applied_migration_is_refused(pg_database: PgTestDatabase) -> None:
    edited = (Migration(1, load_migrations()[0].name, "SELECT 1"), *load_migrations()[1:])
    with (
        psycopg.connect(pg_database.conninfo, autocommit=True) as conn,
        pytest.raises(MigrationError, match="changed"),
    ):
        apply_migrations(conn, edited)


@pytest.mark.feature("CFG-02")
def test_a_database_migrated_by_a_newer_kici_is_refused(pg_database: PgTestDatabase) -> None:
    with psycopg.connect(pg_database.conninfo, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')")
        with pytest.raises(MigrationError, match="9999"):
            apply_migrations(conn)


@pytest.mark.feature("CFG-02")
def test_a_failing_migration_leaves_the_previous_ones_applied(pg_blank_database: PgTestDatabase) -> None:
    good = load_migrations()[0]
    broken = Migration(2, "broken", "CREATE TABLE half (x int); SELECT no_such_function();")
    with psycopg.connect(pg_blank_database.conninfo, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedFunction):
            apply_migrations(conn, (good, broken))
        assert conn.execute("SELECT version FROM schema_migrations").fetchall() == [(1,)]
        assert conn.execute("SELECT to_regclass('half')").fetchone() == (None,)
