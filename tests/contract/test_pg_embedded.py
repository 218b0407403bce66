"""The embedded PostgreSQL server: lifecycle owned by kici, data dir layout, reuse across restarts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from kici.adapters.postgres import embedded
from kici.adapters.postgres.migrate import load_migrations
from kici.adapters.postgres.runtime import EMBEDDED_DBNAME, open_postgres
from kici.testing.postgres import sweep_orphans

pytestmark = pytest.mark.pg


def _pids(pgdata: Path) -> list[int]:
    path = pgdata / ".handle_pids.json"
    return json.loads(path.read_text()) if path.exists() else []


@pytest.fixture
def data_dir(pg_scratch_dir: Path) -> Path:
    """A kici data dir; ``pg_scratch_dir`` stops its server after the test whatever happened."""
    return pg_scratch_dir


@pytest.mark.feature("OPS-15", "CFG-02")
def test_server_lives_in_pg18_and_keeps_data_across_restarts(data_dir: Path) -> None:
    pgdata = embedded.pgdata_for(data_dir)
    assert pgdata == data_dir / "pg18"
    server = embedded.start(pgdata)
    assert (pgdata / "PG_VERSION").read_text().strip() == "18"
    assert server.socket_dir == pgdata
    assert _pids(pgdata) == []
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    assert embedded.stop(pgdata) is True
    assert not embedded.is_running(pgdata)
    assert embedded.stop(pgdata) is False

    again = embedded.start(pgdata)
    with psycopg.connect(again.conninfo(), autocommit=True) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]
    embedded.stop(pgdata)
    assert not embedded.is_running(pgdata)
    assert _pids(pgdata) == []


@pytest.mark.feature("OPS-15")
def test_running_stops_the_server_when_the_block_fails(data_dir: Path) -> None:
    pgdata = embedded.pgdata_for(data_dir)

    def fail_inside() -> None:
        with embedded.running(pgdata):
            assert embedded.is_running(pgdata)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert not embedded.is_running(pgdata)


@pytest.mark.feature("OPS-15", "CFG-02")
async def test_open_postgres_without_url_starts_migrates_and_stops(data_dir: Path) -> None:
    async with open_postgres(None, data_dir) as pg:
        assert pg.embedded is not None
        assert pg.embedded.pgdata == data_dir / "pg18"

        def versions(conn: psycopg.Connection[dict[str, object]]) -> list[object]:
            return [r["version"] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]

        assert await pg.database.run(versions) == [m.version for m in load_migrations()]
        assert (await pg.database.run(lambda c: c.execute("SELECT current_database() AS d").fetchone()))[
            "d"
        ] == EMBEDDED_DBNAME
    assert not embedded.is_running(data_dir / "pg18")
    assert _pids(data_dir / "pg18") == []


@pytest.mark.feature("OPS-15")
def test_sweep_stops_servers_of_dead_test_processes(pg_scratch_dir: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    root = pg_scratch_dir
    home = root / f"{int(dead.stdout)}-gw9"
    pgdata = embedded.pgdata_for(home)
    try:
        embedded.start(pgdata)
        live = root / f"{os.getpid()}-gw8"
        live.mkdir()
        assert sweep_orphans(root) == [home]
        assert not home.exists()
        assert live.exists()
    finally:
        embedded.stop(pgdata)
    assert not embedded.is_running(pgdata)
