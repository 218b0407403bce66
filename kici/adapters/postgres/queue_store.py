"""``DispatchQueue`` on PostgreSQL: FIFO dequeue, ack deadlines, requeue, expiry, recovery columns.

Rows are created by the job's ``ENQUEUE`` transition (:mod:`.execution_store`),
ordered by ``seq``. A requeued row keeps its place: a job bounced by a busy
agent is not sent behind work that arrived after it.

Dequeue with a predicate: which row an agent can take depends on labels,
mandatory labels and free capacity, which only the dispatcher knows, so the
dispatcher passes a chooser (candidate -> agent id or None). The store reads
the oldest pending rows (unlocked, in batches), asks the chooser in FIFO order,
and claims the first accepted row with ``FOR UPDATE SKIP LOCKED`` plus a
``status = 'pending'`` re-check. Only the claimed row is ever locked, so two
dispatchers never block each other on rows neither takes, and a row claimed by
one is skipped by the other: each row is dispatched once. The chooser runs in a
worker thread while the transaction is open; it must be quick and must not
touch trio (pass it an immutable snapshot of the agents).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from kici.adapters.postgres import channels
from kici.adapters.postgres.database import Connection, Database
from kici.adapters.postgres.execution_store import force_status_locked
from kici.adapters.postgres.gate import Gate, lock_run, notify
from kici.adapters.postgres.rows import from_jsonb
from kici.domain.dispatch_ack import MAX_DISPATCH_ATTEMPTS
from kici.domain.execution.states import JobStatus
from kici.domain.store import (
    QUEUE_EXPIRED_MESSAGE,
    Chooser,
    ExpiredJob,
    ForceStatusCommand,
    JobNotFoundError,
    QueueCandidate,
    QueueEntry,
    QueueStatus,
    RequeueResult,
    require_aware,
)

_ENTRY = """
SELECT q.*, j.name AS job_name FROM dispatch_queue q JOIN execution_jobs j ON j.id = q.job_id
"""

_CANDIDATES = """
SELECT q.id, q.job_id, q.run_id, j.name AS job_name, q.routing, q.dispatch_attempts, q.enqueued_at,
       q.expires_at, q.seq
FROM dispatch_queue q JOIN execution_jobs j ON j.id = q.job_id
WHERE q.status = 'pending' AND q.seq > %(after)s AND (q.expires_at IS NULL OR q.expires_at > %(now)s)
ORDER BY q.seq
LIMIT %(batch)s
"""

_CLAIM = """
SELECT id FROM dispatch_queue WHERE id = %(id)s AND status = 'pending' FOR UPDATE SKIP LOCKED
"""

_DISPATCH = """
UPDATE dispatch_queue
SET status = 'dispatched', agent_id = %(agent)s, dispatched_at = %(now)s, updated_at = %(now)s,
    dispatch_attempts = dispatch_attempts + 1
WHERE id = %(id)s
"""


def _entry(row: dict[str, Any]) -> QueueEntry:
    return QueueEntry(
        queue_id=row["id"],
        job_id=row["job_id"],
        run_id=row["run_id"],
        job_name=row["job_name"],
        status=QueueStatus(row["status"]),
        routing=from_jsonb(row["routing"]),
        dispatch_attempts=row["dispatch_attempts"],
        enqueued_at=row["enqueued_at"],
        agent_id=row["agent_id"],
        dispatched_at=row["dispatched_at"],
        expires_at=row["expires_at"],
        error_message=row["error_message"],
        request_id=row["request_id"],
        ack_deadline=row["ack_deadline"],
        ack_agent_id=row["ack_agent_id"],
        recovery_deadline=row["recovery_deadline"],
        recovery_agent_id=row["recovery_agent_id"],
    )


def _fetch_entry(conn: Connection, job_id: uuid.UUID) -> QueueEntry | None:
    row = conn.execute(_ENTRY + " WHERE q.job_id = %s", (job_id,)).fetchone()
    return None if row is None else _entry(row)


class PgDispatchQueue:
    """See :class:`kici.domain.store.DispatchQueue` and the module docstring."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def dequeue(self, choose: Chooser, now: datetime, *, batch: int = 32) -> QueueEntry | None:
        require_aware(now)
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")

        def work(conn: Connection) -> QueueEntry | None:
            after = 0
            while True:
                rows = conn.execute(_CANDIDATES, {"after": after, "now": now, "batch": batch}).fetchall()
                for row in rows:
                    agent = choose(
                        QueueCandidate(
                            queue_id=row["id"],
                            job_id=row["job_id"],
                            run_id=row["run_id"],
                            job_name=row["job_name"],
                            routing=from_jsonb(row["routing"]),
                            dispatch_attempts=row["dispatch_attempts"],
                            enqueued_at=row["enqueued_at"],
                            expires_at=row["expires_at"],
                        )
                    )
                    if agent is None:
                        continue
                    if conn.execute(_CLAIM, {"id": row["id"]}).fetchone() is None:
                        continue
                    conn.execute(_DISPATCH, {"id": row["id"], "agent": agent, "now": now})
                    return _fetch_entry(conn, row["job_id"])
                if len(rows) < batch:
                    return None
                after = rows[-1]["seq"]

        return await self._db.run(work)

    async def get_entry(self, job_id: uuid.UUID) -> QueueEntry | None:
        return await self._db.run(lambda conn: _fetch_entry(conn, job_id))

    async def arm_ack_deadline(self, job_id: uuid.UUID, agent_id: str, deadline: datetime) -> bool:
        require_aware(deadline, "deadline")
        return await self._update_one(
            """
            UPDATE dispatch_queue SET ack_deadline = %(deadline)s, ack_agent_id = %(agent)s
            WHERE job_id = %(job)s AND status = 'dispatched'
            RETURNING id
            """,
            {"deadline": deadline, "agent": agent_id, "job": job_id},
        )

    async def resolve_ack(self, job_id: uuid.UUID) -> bool:
        return await self._update_one(
            """
            UPDATE dispatch_queue SET ack_deadline = NULL, ack_agent_id = NULL
            WHERE job_id = %(job)s AND ack_deadline IS NOT NULL
            RETURNING id
            """,
            {"job": job_id},
        )

    async def due_ack_deadlines(self, now: datetime) -> tuple[QueueEntry, ...]:
        require_aware(now)

        def work(conn: Connection) -> tuple[QueueEntry, ...]:
            rows = conn.execute(
                _ENTRY + " WHERE q.status = 'dispatched' AND q.ack_deadline <= %s ORDER BY q.ack_deadline",
                (now,),
            ).fetchall()
            return tuple(_entry(row) for row in rows)

        return await self._db.run(work)

    async def requeue(self, job_id: uuid.UUID, now: datetime, failure_message: str) -> RequeueResult:
        require_aware(now)

        def work(conn: Connection) -> RequeueResult:
            job = conn.execute("SELECT run_id FROM execution_jobs WHERE id = %s", (job_id,)).fetchone()
            if job is None:
                raise JobNotFoundError(job_id)
            lock_run(conn, job["run_id"])
            row = conn.execute(
                """
                SELECT q.dispatch_attempts, j.status AS job_status
                FROM dispatch_queue q JOIN execution_jobs j ON j.id = q.job_id
                WHERE q.job_id = %s AND q.status IN ('dispatched', 'recovering')
                FOR UPDATE OF q
                """,
                (job_id,),
            ).fetchone()
            if row is None:
                entry = _fetch_entry(conn, job_id)
                return RequeueResult(requeued=False, attempts=0 if entry is None else entry.dispatch_attempts)
            attempts = row["dispatch_attempts"]
            if row["job_status"] != JobStatus.QUEUED.value:
                return RequeueResult(requeued=False, attempts=attempts)
            if attempts >= MAX_DISPATCH_ATTEMPTS:
                conn.execute(
                    "UPDATE dispatch_queue SET error_message = %s, updated_at = %s WHERE job_id = %s",
                    (failure_message, now, job_id),
                )
                failed = force_status_locked(
                    conn,
                    ForceStatusCommand(
                        job_id=job_id,
                        status=JobStatus.FAILED,
                        expected=(JobStatus.QUEUED,),
                        now=now,
                        error_message=failure_message,
                    ),
                )
                return RequeueResult(requeued=False, attempts=attempts, failed=failed)
            conn.execute(
                """
                UPDATE dispatch_queue
                SET status = 'pending', agent_id = NULL, updated_at = %s, ack_deadline = NULL,
                    ack_agent_id = NULL, recovery_deadline = NULL, recovery_agent_id = NULL
                WHERE job_id = %s
                """,
                (now, job_id),
            )
            notify(conn, channels.DISPATCH, str(job_id))
            return RequeueResult(requeued=True, attempts=attempts)

        return await self._db.run(work)

    async def expire(self, now: datetime) -> tuple[ExpiredJob, ...]:
        require_aware(now)

        def due(conn: Connection) -> list[dict[str, Any]]:
            return conn.execute(
                """
                SELECT job_id, run_id FROM dispatch_queue
                WHERE status = 'pending' AND expires_at <= %s ORDER BY seq
                """,
                (now,),
            ).fetchall()

        expired: list[ExpiredJob] = []
        for row in await self._db.run(due):
            job_id, run_id = row["job_id"], row["run_id"]

            def work(
                conn: Connection, job_id: uuid.UUID = job_id, run_id: uuid.UUID = run_id
            ) -> ExpiredJob | None:
                lock_run(conn, run_id)
                claimed = conn.execute(
                    """
                    UPDATE dispatch_queue SET status = 'expired', error_message = %s, updated_at = %s
                    WHERE job_id = %s AND status = 'pending' AND expires_at <= %s
                    RETURNING id
                    """,
                    (QUEUE_EXPIRED_MESSAGE, now, job_id, now),
                ).fetchone()
                if claimed is None:
                    return None
                forced = force_status_locked(
                    conn,
                    ForceStatusCommand(
                        job_id=job_id,
                        status=JobStatus.TIMED_OUT_STALE,
                        expected=(JobStatus.PENDING, JobStatus.QUEUED),
                        now=now,
                        error_message=QUEUE_EXPIRED_MESSAGE,
                    ),
                )
                gate = forced.gate if forced.gate is not None else Gate(conn, run_id, now).outcome()
                return ExpiredJob(job_id=job_id, run_id=run_id, gate=gate)

            result = await self._db.run(work)
            if result is not None:
                expired.append(result)
        return tuple(expired)

    async def start_recovery(
        self, job_id: uuid.UUID, agent_id: str, deadline: datetime, now: datetime
    ) -> bool:
        require_aware(deadline, "deadline")
        require_aware(now)
        return await self._update_one(
            """
            UPDATE dispatch_queue
            SET status = 'recovering', recovery_deadline = %(deadline)s, recovery_agent_id = %(agent)s,
                ack_deadline = NULL, ack_agent_id = NULL, updated_at = %(now)s
            WHERE job_id = %(job)s AND status = 'dispatched'
            RETURNING id
            """,
            {"deadline": deadline, "agent": agent_id, "now": now, "job": job_id},
        )

    async def reclaim(self, job_id: uuid.UUID, agent_id: str, now: datetime) -> bool:
        require_aware(now)
        return await self._update_one(
            """
            UPDATE dispatch_queue
            SET status = 'dispatched', agent_id = %(agent)s, recovery_deadline = NULL,
                recovery_agent_id = NULL, updated_at = %(now)s
            WHERE job_id = %(job)s AND status = 'recovering'
            RETURNING id
            """,
            {"agent": agent_id, "now": now, "job": job_id},
        )

    async def in_flight(self) -> tuple[QueueEntry, ...]:
        def work(conn: Connection) -> tuple[QueueEntry, ...]:
            rows = conn.execute(
                _ENTRY + " WHERE q.status IN ('dispatched', 'recovering') ORDER BY q.seq"
            ).fetchall()
            return tuple(_entry(row) for row in rows)

        return await self._db.run(work)

    async def depth(self) -> int:
        def work(conn: Connection) -> int:
            row = conn.execute("SELECT count(*) AS n FROM dispatch_queue WHERE status = 'pending'").fetchone()
            return 0 if row is None else int(row["n"])

        return await self._db.run(work)

    async def _update_one(self, query: str, params: dict[str, Any]) -> bool:
        def work(conn: Connection) -> bool:
            return conn.execute(query, params).fetchone() is not None

        return await self._db.run(work)
