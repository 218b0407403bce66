"""``kici-platform admin ...`` through click's runner over a real PostgreSQL database (the Platform's own
migration set): orgs, API keys (printed once, stored as SHA-256), routing keys and deliveries."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg.conninfo import conninfo_to_dict

from kici.domain.tenancy import is_api_key
from kici.services.platform.main import main
from kici.testing.postgres import PgTestDatabase

pytestmark = pytest.mark.pg


def database_url(database: PgTestDatabase) -> str:
    parts = conninfo_to_dict(database.conninfo)
    return f"postgresql://{parts['user']}@/{parts['dbname']}?host={parts['host']}&port={parts['port']}"


@pytest.fixture
def config_file(pg_platform_database: PgTestDatabase, tmp_path: Path) -> Path:
    path = tmp_path / "platform.yaml"
    path.write_text(f"database:\n  url: {database_url(pg_platform_database)}\n")
    return path


def run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["admin", "--config", str(config), *args], catch_exceptions=False)


def ok(config: Path, *args: str) -> Result:
    result = run(config, *args)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.feature("PRO-20")
def test_orgs_are_created_and_listed(config_file: Path) -> None:
    created = json.loads(ok(config_file, "org", "create", "acme", "--json").stdout)
    ok(config_file, "org", "create", "beta")
    listed = json.loads(ok(config_file, "org", "list", "--json").stdout)
    assert [o["name"] for o in listed] == ["acme", "beta"]
    assert listed[0]["id"] == created["id"]
    assert ok(config_file, "org", "list").stdout.splitlines()[0] == f"{created['id']} acme"
    duplicate = run(config_file, "org", "create", "acme")
    assert duplicate.exit_code == 1
    assert "already exists" in duplicate.stderr
    bad = run(config_file, "org", "create", "Not Valid")
    assert bad.exit_code == 1
    assert "invalid organization name" in bad.stderr


@pytest.mark.feature("PRO-20", "PRO-36")
def test_an_api_key_is_printed_once_stored_as_sha256_listed_and_revoked(
    config_file: Path, pg_platform_database: PgTestDatabase
) -> None:
    ok(config_file, "org", "create", "acme")
    created = ok(config_file, "api-key", "create", "--org", "acme", "--name", "ci")
    key = created.stdout.strip()
    assert is_api_key(key)
    assert "shown once" in created.stderr
    with psycopg.connect(pg_platform_database.conninfo) as conn:
        rows = conn.execute("SELECT id, key_hash, key_prefix FROM api_keys").fetchall()
    ((key_id, key_hash, prefix),) = rows
    assert key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert prefix == key[:12]

    listed = json.loads(ok(config_file, "api-key", "list", "--org", "acme", "--json").stdout)
    assert [(k["id"], k["name"], k["prefix"], k["revokedAt"]) for k in listed] == [
        (str(key_id), "ci", prefix, None)
    ]
    assert key not in ok(config_file, "api-key", "list").stdout
    assert "active" in ok(config_file, "api-key", "list").stdout

    assert ok(config_file, "api-key", "revoke", str(key_id)).stdout.strip() == f"revoked {key_id}"
    listed = json.loads(ok(config_file, "api-key", "list", "--json").stdout)
    assert listed[0]["revokedAt"] is not None
    assert "revoked" in ok(config_file, "api-key", "list").stdout
    missing = run(config_file, "api-key", "revoke", str(uuid.uuid4()))
    assert missing.exit_code == 1
    assert "no API key" in missing.stderr
    no_org = run(config_file, "api-key", "create", "--org", "nobody")
    assert no_org.exit_code == 1
    assert "no organization" in no_org.stderr


@pytest.mark.feature("PRO-20")
def test_routing_keys_are_assigned_to_one_org(config_file: Path) -> None:
    acme = json.loads(ok(config_file, "org", "create", "acme", "--json").stdout)
    beta = json.loads(ok(config_file, "org", "create", "beta", "--json").stdout)
    assert ok(config_file, "routing-key", "add", "github:1", "--org", "acme").stdout.strip() == (
        f"github:1 -> {acme['id']}"
    )
    ok(config_file, "routing-key", "add", "generic:beta:hooks", "--org", beta["id"])
    taken = run(config_file, "routing-key", "add", "github:1", "--org", "beta")
    assert taken.exit_code == 1
    assert "already assigned" in taken.stderr
    bad = run(config_file, "routing-key", "add", "github", "--org", "acme")
    assert bad.exit_code == 1
    assert "invalid routing key" in bad.stderr
    listed = json.loads(ok(config_file, "routing-key", "list", "--json").stdout)
    assert [(k["routingKey"], k["orgId"]) for k in listed] == [
        ("generic:beta:hooks", beta["id"]),
        ("github:1", acme["id"]),
    ]
    assert ok(config_file, "routing-key", "list", "--org", "acme").stdout.strip() == f"github:1 {acme['id']}"
    ok(config_file, "routing-key", "remove", "github:1")
    assert run(config_file, "routing-key", "remove", "github:1").exit_code == 1
    ok(config_file, "routing-key", "add", "github:1", "--org", "beta")


@pytest.mark.feature("PRO-21")
def test_deliveries_are_listed_newest_first(config_file: Path, pg_platform_database: PgTestDatabase) -> None:
    acme = json.loads(ok(config_file, "org", "create", "acme", "--json").stdout)
    with psycopg.connect(pg_platform_database.conninfo) as conn:
        for minute, status in ((1, "no_orchestrator"), (2, "accepted")):
            at = datetime(2026, 3, 1, 12, minute, tzinfo=UTC)
            conn.execute(
                "INSERT INTO deliveries (id, org_id, routing_key, provider, delivery_id, event, body_sha256,"
                " body_size, status, http_status, received_at, completed_at)"
                " VALUES (%s, %s, 'github:1', 'github', %s, 'push', 'x', 2, %s, 200, %s, %s)",
                (uuid.uuid4(), acme["id"], f"d-{minute}", status, at, at),
            )
    listed = json.loads(ok(config_file, "delivery", "list", "--org", "acme", "--json").stdout)
    assert [(d["deliveryId"], d["status"]) for d in listed] == [
        ("d-2", "accepted"),
        ("d-1", "no_orchestrator"),
    ]
    assert len(ok(config_file, "delivery", "list", "--limit", "1").stdout.splitlines()) == 1


@pytest.mark.feature("OPS-01")
def test_a_bad_config_exits_2_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("database:\n  url: nope\nserver:\n  prot: 1\n")
    result = CliRunner().invoke(main, ["--config", str(path), "admin", "org", "list"])
    assert result.exit_code == 2
    assert "database.url" in result.stderr
    assert "did you mean server.port?" in result.stderr
