"""``AgentStore`` on PostgreSQL: the agent registry and agent tokens.

Tokens are looked up by their SHA-256 hex only (the handshake hashes what the
agent sent); ``labels``/``mandatory_labels`` stay the raw JSON text the spec
stores, parsed and judged by the handshake. Consuming a bootstrap token is one
guarded UPDATE, so of two agents presenting it at once exactly one succeeds.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from kici.adapters.postgres.database import Connection, Database
from kici.adapters.postgres.rows import from_jsonb, to_jsonb
from kici.domain.lockfile.frozen import FrozenDict
from kici.domain.store import (
    AgentRecord,
    AgentStatus,
    AgentTokenRecord,
    AgentType,
    NewAgentToken,
    require_aware,
)

_UPSERT_AGENT = """
INSERT INTO agents AS a (
    agent_id, token_id, status, labels, max_concurrency, active_jobs, scaler_managed, platform, arch, version,
    hostname, properties, instance_id, registered_at, last_seen_at, disconnected_at)
VALUES (
    %(agent_id)s, %(token_id)s, %(status)s, %(labels)s, %(max_concurrency)s, %(active_jobs)s,
    %(scaler_managed)s, %(platform)s, %(arch)s, %(version)s, %(hostname)s, %(properties)s, %(instance_id)s,
    %(registered_at)s, %(last_seen_at)s, %(disconnected_at)s)
ON CONFLICT (agent_id) DO UPDATE SET
    token_id = EXCLUDED.token_id, status = EXCLUDED.status, labels = EXCLUDED.labels,
    max_concurrency = EXCLUDED.max_concurrency, active_jobs = EXCLUDED.active_jobs,
    scaler_managed = EXCLUDED.scaler_managed, platform = EXCLUDED.platform, arch = EXCLUDED.arch,
    version = EXCLUDED.version, hostname = EXCLUDED.hostname, properties = EXCLUDED.properties,
    instance_id = EXCLUDED.instance_id, registered_at = EXCLUDED.registered_at,
    last_seen_at = EXCLUDED.last_seen_at, disconnected_at = EXCLUDED.disconnected_at
"""

_INSERT_TOKEN = """
INSERT INTO agent_tokens (
    id, token_hash, token_prefix, labels, mandatory_labels, agent_type, created_at, created_by, expires_at)
VALUES (
    %(id)s, %(token_hash)s, %(token_prefix)s, %(labels)s, %(mandatory_labels)s, %(agent_type)s,
    %(created_at)s, %(created_by)s, %(expires_at)s)
RETURNING *
"""

_CONSUME = (
    "UPDATE agent_tokens SET consumed_at = %s WHERE id = %s AND consumed_at IS NULL AND revoked_at IS NULL "
    "RETURNING id"
)
_REVOKE = "UPDATE agent_tokens SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL RETURNING id"
_TOUCH = "UPDATE agent_tokens SET last_seen_at = %s WHERE id = %s RETURNING id"


def _agent(row: dict[str, Any]) -> AgentRecord:
    properties = from_jsonb(row["properties"])
    return AgentRecord(
        agent_id=row["agent_id"],
        status=AgentStatus(row["status"]),
        registered_at=row["registered_at"],
        last_seen_at=row["last_seen_at"],
        labels=tuple(row["labels"]),
        max_concurrency=row["max_concurrency"],
        active_jobs=row["active_jobs"],
        token_id=row["token_id"],
        scaler_managed=row["scaler_managed"],
        platform=row["platform"],
        arch=row["arch"],
        version=row["version"],
        hostname=row["hostname"],
        properties=properties if isinstance(properties, FrozenDict) else FrozenDict(),
        instance_id=row["instance_id"],
        disconnected_at=row["disconnected_at"],
    )


def _token(row: dict[str, Any]) -> AgentTokenRecord:
    return AgentTokenRecord(
        token_id=row["id"],
        token_hash=row["token_hash"],
        token_prefix=row["token_prefix"],
        agent_type=AgentType(row["agent_type"]),
        created_by=row["created_by"],
        created_at=row["created_at"],
        labels=row["labels"],
        mandatory_labels=row["mandatory_labels"],
        expires_at=row["expires_at"],
        last_seen_at=row["last_seen_at"],
        revoked_at=row["revoked_at"],
        consumed_at=row["consumed_at"],
    )


class PgAgentStore:
    """See :class:`kici.domain.store.AgentStore` and the module docstring."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def upsert_agent(self, agent: AgentRecord) -> None:
        params = {
            "agent_id": agent.agent_id,
            "token_id": agent.token_id,
            "status": agent.status.value,
            "labels": list(agent.labels),
            "max_concurrency": agent.max_concurrency,
            "active_jobs": agent.active_jobs,
            "scaler_managed": agent.scaler_managed,
            "platform": agent.platform,
            "arch": agent.arch,
            "version": agent.version,
            "hostname": agent.hostname,
            "properties": to_jsonb(agent.properties),
            "instance_id": agent.instance_id,
            "registered_at": agent.registered_at,
            "last_seen_at": agent.last_seen_at,
            "disconnected_at": agent.disconnected_at,
        }

        def work(conn: Connection) -> None:
            conn.execute(_UPSERT_AGENT, params)

        await self._db.run(work)

    async def set_agent_status(
        self, agent_id: str, status: AgentStatus, now: datetime, *, active_jobs: int | None = None
    ) -> bool:
        require_aware(now)

        def work(conn: Connection) -> bool:
            row = conn.execute(
                """
                UPDATE agents SET
                    status = %(status)s,
                    last_seen_at = %(now)s,
                    active_jobs = COALESCE(%(active_jobs)s, active_jobs),
                    disconnected_at = CASE WHEN %(status)s = 'disconnected' THEN %(now)s ELSE NULL END
                WHERE agent_id = %(agent_id)s
                RETURNING agent_id
                """,
                {"status": status.value, "now": now, "active_jobs": active_jobs, "agent_id": agent_id},
            ).fetchone()
            return row is not None

        return await self._db.run(work)

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        def work(conn: Connection) -> AgentRecord | None:
            row = conn.execute("SELECT * FROM agents WHERE agent_id = %s", (agent_id,)).fetchone()
            return None if row is None else _agent(row)

        return await self._db.run(work)

    async def list_agents(self, status: AgentStatus | None = None) -> tuple[AgentRecord, ...]:
        def work(conn: Connection) -> tuple[AgentRecord, ...]:
            rows = conn.execute(
                """
                SELECT * FROM agents WHERE %(status)s::text IS NULL OR status = %(status)s::text
                ORDER BY agent_id
                """,
                {"status": None if status is None else status.value},
            ).fetchall()
            return tuple(_agent(row) for row in rows)

        return await self._db.run(work)

    async def create_agent_token(self, token: NewAgentToken) -> AgentTokenRecord:
        params = {
            "id": uuid.uuid4(),
            "token_hash": token.token_hash,
            "token_prefix": token.token_prefix,
            "labels": token.labels,
            "mandatory_labels": token.mandatory_labels,
            "agent_type": token.agent_type.value,
            "created_at": token.created_at,
            "created_by": token.created_by,
            "expires_at": token.expires_at,
        }

        def work(conn: Connection) -> AgentTokenRecord:
            row = conn.execute(_INSERT_TOKEN, params).fetchone()
            assert row is not None
            return _token(row)

        return await self._db.run(work)

    async def find_agent_token(self, token_hash: str, now: datetime) -> AgentTokenRecord | None:
        require_aware(now)

        def work(conn: Connection) -> AgentTokenRecord | None:
            row = conn.execute(
                """
                SELECT * FROM agent_tokens
                WHERE token_hash = %s AND revoked_at IS NULL AND consumed_at IS NULL
                  AND (expires_at IS NULL OR expires_at > %s)
                """,
                (token_hash, now),
            ).fetchone()
            return None if row is None else _token(row)

        return await self._db.run(work)

    async def consume_agent_token(self, token_id: uuid.UUID, now: datetime) -> bool:
        return await self._stamp(_CONSUME, token_id, now)

    async def revoke_agent_token(self, token_id: uuid.UUID, now: datetime) -> bool:
        return await self._stamp(_REVOKE, token_id, now)

    async def touch_agent_token(self, token_id: uuid.UUID, now: datetime) -> None:
        await self._stamp(_TOUCH, token_id, now)

    async def _stamp(self, query: str, token_id: uuid.UUID, now: datetime) -> bool:
        require_aware(now)

        def work(conn: Connection) -> bool:
            return conn.execute(query, (now, token_id)).fetchone() is not None

        return await self._db.run(work)
