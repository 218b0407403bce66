"""The Platform store contract: orgs, API keys, routing keys and deliveries behave the same in the
PostgreSQL store and in the in-memory fake the hub and ingress tests use.

The PostgreSQL-only cases check what only a database can: the Platform's own migration set, that a
key is stored as its SHA-256 alone, and that a revocation NOTIFYs running daemons.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import trio

from kici.adapters.postgres.database import Database
from kici.adapters.postgres.listener import Listener, Notification
from kici.adapters.postgres.migrate import migrate_conninfo
from kici.adapters.postgres.platform_store import (
    API_KEY_REVOKED_CHANNEL,
    PgPlatformStore,
    load_platform_migrations,
)
from kici.domain.tenancy import (
    ApiKeyNotFoundError,
    BadRoutingKeyError,
    DeliveryStatus,
    InvalidOrgNameError,
    NewDelivery,
    OrgExistsError,
    OrgNotFoundError,
    RoutingKeyNotFoundError,
    RoutingKeyTakenError,
    api_key_hash,
    api_key_prefix,
    new_api_key,
)
from kici.services.platform.ports import PlatformStore
from kici.testing.fake_orchestrator import MemoryPlatformStore
from kici.testing.postgres import PgTestDatabase

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def delivery(
    org_id: str, *, at: datetime = NOW, status: DeliveryStatus = DeliveryStatus.ACCEPTED
) -> NewDelivery:
    body = b'{"zen": "relay"}'
    return NewDelivery(
        id=str(uuid.uuid4()),
        org_id=org_id,
        routing_key="github:1",
        provider="github",
        delivery_id=str(uuid.uuid4()),
        event="push",
        headers={"x-github-event": "push", "authorization": "[redacted]"},
        body_sha256=hashlib.sha256(body).hexdigest(),
        body_size=len(body),
        status=status,
        reason="signature verified",
        http_status=200,
        connection_id="c-1",
        received_at=at,
        completed_at=at + timedelta(milliseconds=3),
    )


class StoreContract:
    """The cases; subclasses provide the ``store`` fixture."""

    @pytest.mark.feature("PRO-20")
    async def test_orgs_are_created_listed_and_found_by_id_or_name(self, store: PlatformStore) -> None:
        beta = await store.create_org("beta", NOW)
        acme = await store.create_org("acme", NOW)
        assert [org.name for org in await store.list_orgs()] == ["acme", "beta"]
        assert await store.find_org(acme.id) == acme
        assert await store.find_org("beta") == beta
        assert await store.find_org("nobody") is None
        with pytest.raises(OrgExistsError):
            await store.create_org("acme", NOW)
        with pytest.raises(InvalidOrgNameError):
            await store.create_org("Not A Slug", NOW)

    @pytest.mark.feature("PRO-20")
    async def test_an_api_key_is_found_by_its_hash_only_while_active(self, store: PlatformStore) -> None:
        org = await store.create_org("acme", NOW)
        key = new_api_key(bytes(range(32)))
        record = await store.create_api_key(org.id, "ci", api_key_hash(key), api_key_prefix(key), NOW)
        assert (record.org_id, record.name, record.prefix, record.revoked_at) == (
            org.id,
            "ci",
            key[:12],
            None,
        )
        identity = await store.find_active_key(api_key_hash(key))
        assert identity is not None
        assert (identity.key_id, identity.org_id, identity.org_name) == (record.id, org.id, "acme")
        assert await store.find_active_key(api_key_hash(key + "x")) is None
        assert await store.active_key_ids([record.id, str(uuid.uuid4()), "not-a-uuid"]) == {record.id}

        later = NOW + timedelta(minutes=5)
        revoked = await store.revoke_api_key(record.id, later)
        assert revoked.revoked_at == later
        assert not revoked.active
        assert await store.find_active_key(api_key_hash(key)) is None
        assert await store.active_key_ids([record.id]) == frozenset()
        again = await store.revoke_api_key(record.id, later + timedelta(hours=1))
        assert again.revoked_at == later

    @pytest.mark.feature("PRO-20")
    async def test_api_keys_are_listed_per_org_and_touched(self, store: PlatformStore) -> None:
        acme = await store.create_org("acme", NOW)
        beta = await store.create_org("beta", NOW)
        first = await store.create_api_key(acme.id, "a", "a" * 64, "korg_aaaaaaa", NOW)
        second = await store.create_api_key(
            beta.id, "b", "b" * 64, "korg_bbbbbbb", NOW + timedelta(seconds=1)
        )
        assert [k.id for k in await store.list_api_keys()] == [first.id, second.id]
        assert [k.id for k in await store.list_api_keys(beta.id)] == [second.id]
        await store.touch_api_key(first.id, NOW + timedelta(hours=1))
        (touched,) = await store.list_api_keys(acme.id)
        assert touched.last_used_at == NOW + timedelta(hours=1)
        with pytest.raises(OrgNotFoundError):
            await store.create_api_key("no-such-org", "x", "c" * 64, "korg_ccccccc", NOW)
        with pytest.raises(ApiKeyNotFoundError):
            await store.revoke_api_key(str(uuid.uuid4()), NOW)
        with pytest.raises(ApiKeyNotFoundError):
            await store.revoke_api_key("not-a-uuid", NOW)

    @pytest.mark.feature("PRO-20")
    async def test_a_routing_key_has_one_owner(self, store: PlatformStore) -> None:
        acme = await store.create_org("acme", NOW)
        beta = await store.create_org("beta", NOW)
        added = await store.add_routing_key(acme.id, "github:42", NOW)
        assert (added.routing_key, added.org_id) == ("github:42", acme.id)
        assert await store.add_routing_key(acme.id, "github:42", NOW + timedelta(days=1)) == added
        with pytest.raises(RoutingKeyTakenError) as taken:
            await store.add_routing_key(beta.id, "github:42", NOW)
        assert taken.value.owner_org_id == acme.id
        with pytest.raises(BadRoutingKeyError):
            await store.add_routing_key(acme.id, "github", NOW)
        with pytest.raises(OrgNotFoundError):
            await store.add_routing_key("no-such-org", "github:7", NOW)
        await store.add_routing_key(beta.id, "generic:beta:hooks", NOW)
        owners = await store.routing_key_owners(["github:42", "generic:beta:hooks", "github:404"])
        assert dict(owners) == {"github:42": acme.id, "generic:beta:hooks": beta.id}
        assert [a.routing_key for a in await store.list_routing_keys()] == ["generic:beta:hooks", "github:42"]
        assert [a.routing_key for a in await store.list_routing_keys(acme.id)] == ["github:42"]
        removed = await store.remove_routing_key("github:42")
        assert removed.org_id == acme.id
        assert await store.routing_key_owners(["github:42"]) == {}
        with pytest.raises(RoutingKeyNotFoundError):
            await store.remove_routing_key("github:42")
        assert (await store.add_routing_key(beta.id, "github:42", NOW)).org_id == beta.id

    @pytest.mark.feature("PRO-21")
    async def test_deliveries_are_recorded_and_listed_newest_first(self, store: PlatformStore) -> None:
        acme = await store.create_org("acme", NOW)
        beta = await store.create_org("beta", NOW)
        old = delivery(acme.id, status=DeliveryStatus.NO_ORCHESTRATOR)
        new = delivery(acme.id, at=NOW + timedelta(minutes=1))
        other = delivery(beta.id, at=NOW + timedelta(minutes=2), status=DeliveryStatus.ACK_TIMEOUT)
        for item in (old, new, other):
            await store.record_delivery(item)
        assert await store.list_deliveries() == [other, new, old]
        assert await store.list_deliveries(acme.id) == [new, old]
        assert await store.list_deliveries(acme.id, limit=1) == [new]
        assert (await store.list_deliveries(beta.id))[0].headers == other.headers


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> PlatformStore:
        return MemoryPlatformStore()


@pytest.mark.pg
class TestPgStore(StoreContract):
    @pytest.fixture
    def store(self, pg_platform_db: Database) -> PlatformStore:
        return PgPlatformStore(pg_platform_db)

    @pytest.mark.feature("PRO-20")
    async def test_only_the_sha256_of_a_key_is_stored(
        self, store: PgPlatformStore, pg_platform_db: Database
    ) -> None:
        org = await store.create_org("acme", NOW)
        key = new_api_key(bytes(32))
        await store.create_api_key(org.id, "", api_key_hash(key), api_key_prefix(key), NOW)
        row = await pg_platform_db.run(lambda conn: conn.execute("SELECT * FROM api_keys").fetchone())
        assert row is not None
        assert row["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
        assert key not in {str(value) for value in row.values()}

    @pytest.mark.feature("PRO-36")
    async def test_a_revocation_notifies_listening_daemons(
        self, store: PgPlatformStore, pg_platform_database: PgTestDatabase
    ) -> None:
        org = await store.create_org("acme", NOW)
        record = await store.create_api_key(org.id, "", "d" * 64, "korg_ddddddd", NOW)
        send, receive = trio.open_memory_channel[Notification | str](10)

        async def on_notify(notification: Notification) -> None:
            await send.send(notification)

        async def on_catch_up() -> None:
            await send.send("catch-up")

        listener = Listener(pg_platform_database.conninfo, [API_KEY_REVOKED_CHANNEL], on_notify, on_catch_up)
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(listener.run)
                assert await receive.receive() == "catch-up"
                await store.revoke_api_key(record.id, NOW)
                got = await receive.receive()
                assert isinstance(got, Notification)
                assert (got.channel, got.payload) == (API_KEY_REVOKED_CHANNEL, record.id)
                nursery.cancel_scope.cancel()

    @pytest.mark.feature("PRO-20")
    async def test_the_platform_migration_set_is_its_own(self, pg_platform_database: PgTestDatabase) -> None:
        migrations = load_platform_migrations()
        assert [m.version for m in migrations][:1] == [1]
        assert migrate_conninfo(pg_platform_database.conninfo, migrations) == ()
        with psycopg.connect(pg_platform_database.conninfo) as conn:
            tables = {
                row[0]
                for row in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                ).fetchall()
            }
        assert {"orgs", "api_keys", "routing_keys", "deliveries"} <= tables
        assert "execution_runs" not in tables
