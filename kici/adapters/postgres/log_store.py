"""``LogStore`` on PostgreSQL: step log chunks with a per-job, gap-free sequence.

Appending bumps ``execution_jobs.log_sequence`` (and ``log_bytes``) and inserts
the chunk in one statement. The bump row-locks the job until commit, so chunks
of one job commit in sequence order and a reader polling with ``after=<last
sequence>`` never skips a chunk that commits later with a smaller number.
NUL characters, which PostgreSQL text cannot hold, become U+FFFD.
"""

from __future__ import annotations

import uuid
from typing import Any

from kici.adapters.postgres.database import Connection, Database
from kici.adapters.postgres.rows import text_safe
from kici.domain.store import InvalidStoreInputError, JobNotFoundError, LogChunk, LogPage, NewLogChunk

_APPEND = """
WITH bumped AS (
    UPDATE execution_jobs
    SET log_sequence = log_sequence + 1, log_bytes = log_bytes + %(bytes)s
    WHERE id = %(job_id)s AND run_id = %(run_id)s
    RETURNING log_sequence
)
INSERT INTO log_chunks (run_id, job_id, sequence, step_index, lines, byte_count, logged_at, received_at)
SELECT %(run_id)s, %(job_id)s, bumped.log_sequence, %(step_index)s, %(lines)s, %(bytes)s, %(logged_at)s,
       %(received_at)s
FROM bumped
RETURNING sequence
"""

MAX_READ_LIMIT = 5000


def _chunk(row: dict[str, Any]) -> LogChunk:
    return LogChunk(
        run_id=row["run_id"],
        job_id=row["job_id"],
        step_index=row["step_index"],
        sequence=row["sequence"],
        lines=tuple(row["lines"]),
        logged_at=row["logged_at"],
        received_at=row["received_at"],
    )


class PgLogStore:
    """See :class:`kici.domain.store.LogStore` and the module docstring."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def append_log_chunk(self, chunk: NewLogChunk) -> int:
        lines = [text_safe(line) for line in chunk.lines]
        params = {
            "run_id": chunk.run_id,
            "job_id": chunk.job_id,
            "step_index": chunk.step_index,
            "lines": lines,
            "bytes": sum(len(line.encode()) for line in lines),
            "logged_at": chunk.logged_at,
            "received_at": chunk.received_at,
        }

        def work(conn: Connection) -> int:
            row = conn.execute(_APPEND, params).fetchone()
            if row is None:
                raise JobNotFoundError(f"{chunk.job_id} of run {chunk.run_id}")
            return int(row["sequence"])

        return await self._db.run(work)

    async def read_log_chunks(
        self, job_id: uuid.UUID, *, after: int = 0, limit: int = 500, step_index: int | None = None
    ) -> LogPage:
        if not 1 <= limit <= MAX_READ_LIMIT:
            raise InvalidStoreInputError(f"limit must be in [1, {MAX_READ_LIMIT}], got {limit}")

        def work(conn: Connection) -> LogPage:
            rows = conn.execute(
                """
                SELECT * FROM log_chunks
                WHERE job_id = %(job_id)s AND sequence > %(after)s
                  AND (%(step)s::integer IS NULL OR step_index = %(step)s::integer)
                ORDER BY sequence
                LIMIT %(limit)s
                """,
                {"job_id": job_id, "after": after, "step": step_index, "limit": limit},
            ).fetchall()
            chunks = tuple(_chunk(row) for row in rows)
            return LogPage(chunks=chunks, next_cursor=chunks[-1].sequence if chunks else after)

        return await self._db.run(work)
