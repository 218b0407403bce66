"""The Platform's copy of its tenants' runs, jobs, steps and step logs, on PostgreSQL (PRO-22).

Tables: ``platform_migrations/0002_telemetry.sql``. Every write takes the org of the orchestrator
connection that sent the frame; ids in the message are only keys *within* that org, so a tenant's
orchestrator that reports a run id another tenant also has gets its own row and never touches theirs.

Latest state wins. Orchestrators buffer telemetry while the Platform is away and replay it, a cluster
has several senders, and ``state.replay`` repeats what was already sent: frames can arrive late, twice,
or out of order. A row therefore keeps the ``(timestamp, rank)`` of the message that set its status
and takes a new status only from a message whose pair is not lower (`supersedes`). The rank orders
the states of one timestamp along the life cycle (queued < running < terminal), so a run that went
``running`` and ``success`` within one millisecond ends ``success`` whatever the arrival order.
Descriptive fields (commit message, sha, completion time...) are merged: a newer message overwrites
the fields it carries; an older one only fills fields still unknown.

Logs: chunks are stored once per ``messageId`` (a replayed chunk is recognised), numbered with a
gap-free per-job sequence (the counter row lock orders commits, as in the orchestrator's log store)
and with the step-relative number of their first line. Each step is capped (`cap_lines`): past the
cap one truncation line is stored and later lines are only counted. PostgreSQL text cannot hold NUL,
so every string from the wire goes through ``text_safe`` (jsonb included).

The record classes live here rather than in ``kici.domain`` because nothing pure uses them yet; the
Platform services import them from this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs
from psycopg import sql
from psycopg.types.json import Jsonb

from kici.adapters.postgres.database import Connection, Database
from kici.adapters.postgres.rows import text_safe
from kici.domain.protocol import (
    ExecutionStatus,
    JobSnapshot,
    JobState,
    JobStatusForward,
    LogChunk,
    RunSnapshot,
    RunState,
    StateReplay,
    StepState,
    StepStatusForward,
)
from kici.domain.store import InvalidStoreInputError

DEFAULT_MAX_STEP_LOG_LINES: Final = 100_000
DEFAULT_MAX_STEP_LOG_BYTES: Final = 16 * 1024 * 1024
"""Above the agent's own 10 MiB step budget (PRO-13), so a well-behaved agent's log, truncation line
included, is kept whole; the cap only protects the Platform from a misbehaving sender."""
MAX_READ_LIMIT: Final = 5000

_TERMINAL_RANK: Final = 9
RUN_RANKS: Final[Mapping[str, int]] = {
    RunState.PENDING: 0,
    RunState.HELD: 1,
    RunState.RUNNING: 2,
    RunState.CANCELLING: 3,
    RunState.SUCCESS: _TERMINAL_RANK,
    RunState.FAILED: _TERMINAL_RANK,
    RunState.CANCELLED: _TERMINAL_RANK,
}
JOB_RANKS: Final[Mapping[str, int]] = {
    JobState.PENDING: 0,
    JobState.QUEUED: 1,
    JobState.RUNNING: 2,
    JobState.RECOVERING: 2,
    JobState.CANCELLING: 3,
    **dict.fromkeys(
        (
            JobState.SUCCESS,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.SKIPPED,
            JobState.TIMED_OUT_STALE,
            JobState.DRIFT_DROPPED,
        ),
        _TERMINAL_RANK,
    ),
}
STEP_RANKS: Final[Mapping[str, int]] = {
    StepState.PENDING: 0,
    StepState.RUNNING: 1,
    **dict.fromkeys(
        (StepState.SUCCESS, StepState.FAILED, StepState.SKIPPED, StepState.CANCELLED), _TERMINAL_RANK
    ),
}
"""Life-cycle order of the states within one timestamp. ``running`` and ``recovering`` share a rank:
a job moves both ways between them, so on a tie the later arrival wins. Unknown snapshot states
(``JobSnapshot.status`` is free text) rank lowest."""


def rank_of(ranks: Mapping[str, int], state: str) -> int:
    return ranks.get(state, 0)


def supersedes(timestamp: int, rank: int, old_timestamp: int | None, old_rank: int | None) -> bool:
    """Whether a status reported at ``timestamp`` replaces the stored one (none stored: always)."""
    if old_timestamp is None or old_rank is None:
        return True
    return (timestamp, rank) >= (old_timestamp, old_rank)


# --- records -------------------------------------------------------------------------------------


@attrs.frozen
class StatusChange:
    """What one status message did: ``created`` a row (or gave a placeholder job its first status),
    ``changed`` the stored status. A late or repeated message changes nothing."""

    created: bool
    changed: bool


NO_CHANGE: Final = StatusChange(created=False, changed=False)


@attrs.frozen(kw_only=True)
class PlatformRun:
    org_id: str
    run_id: str
    workflow_name: str
    status: str
    status_ts: int
    started_at: int
    completed_at: int | None = None
    duration_ms: float | None = None
    repo_identifier: str | None = None
    sha: str | None = None
    ref: str | None = None
    trigger_event: str | None = None
    commit_message: str | None = None
    job_count: float | None = None
    routing_key: str | None = None
    parent_run_id: str | None = None
    original_run_id: str | None = None
    triggered_by: str | None = None
    failure_reason: str | None = None
    connection_id: str


@attrs.frozen(kw_only=True)
class PlatformJob:
    org_id: str
    run_id: str
    job_id: str
    job_name: str
    status: str | None
    status_ts: int | None
    matrix_values: dict[str, Any] | None = None
    started_at: int | None = None
    completed_at: int | None = None
    duration_ms: float | None = None
    error_message: str | None = None
    agent_id: str | None = None
    orchestrator_id: str | None = None
    runs_on_labels: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class PlatformStep:
    org_id: str
    run_id: str
    job_id: str
    step_index: int
    step_name: str
    state: str
    status_ts: int
    data: dict[str, Any] | None = None
    secrets_accessed: tuple[str, ...] | None = None
    log_lines: int = 0
    log_dropped_lines: int = 0
    log_truncated: bool = False


@attrs.frozen(kw_only=True)
class PlatformLogChunk:
    sequence: int
    step_index: int
    first_line: int
    lines: tuple[str, ...]
    timestamp: int


@attrs.frozen
class PlatformLogPage:
    chunks: tuple[PlatformLogChunk, ...]
    next_cursor: int


@attrs.frozen
class StepLines:
    """Lines ``first_line ..`` of one step, and how many the step has stored in all."""

    first_line: int
    lines: tuple[str, ...]
    line_count: int


@attrs.frozen
class LogAppend:
    """The outcome of one ``log.chunk``: the lines stored (a truncation line included), their
    step-relative number, and how many the cap dropped. ``duplicate``: seen before, nothing stored."""

    duplicate: bool
    step_index: int
    first_line: int
    lines: tuple[str, ...]
    dropped: int
    sequence: int | None

    @property
    def line_count(self) -> int:
        """The step's stored line count after this chunk (what ``log.lines.lineCount`` carries)."""
        return self.first_line + len(self.lines)


@attrs.frozen(kw_only=True)
class ReplayOutcome:
    runs: tuple[tuple[RunSnapshot, StatusChange], ...]
    jobs: tuple[tuple[RunSnapshot, JobSnapshot, StatusChange], ...]


@attrs.frozen(kw_only=True)
class RunFilter:
    """``branch`` matches ``ref`` given either as the branch name or as ``refs/heads/<branch>``."""

    statuses: tuple[str, ...] = ()
    workflow: str | None = None
    repo: str | None = None
    branch: str | None = None


@attrs.frozen
class CapPlan:
    stored: tuple[str, ...]
    byte_count: int
    dropped: int
    truncated: bool


def truncation_line(max_lines: int, max_bytes: int) -> str:
    return f"[TRUNCATED: the Platform keeps at most {max_lines} lines / {max_bytes} bytes per step]"


def cap_lines(
    lines: Sequence[str],
    *,
    line_count: int,
    byte_count: int,
    truncated: bool,
    max_lines: int,
    max_bytes: int,
) -> CapPlan:
    """Which of ``lines`` a step that already holds ``line_count`` lines / ``byte_count`` bytes keeps.

    Lines are kept in order while both budgets hold; the first line that would break one is replaced
    by the truncation line and it and every later line (in this and later chunks) are dropped.
    """
    if truncated:
        return CapPlan((), 0, len(lines), True)
    kept: list[str] = []
    size = 0
    for index, line in enumerate(lines):
        n = len(line.encode("utf-8"))
        if line_count + len(kept) >= max_lines or byte_count + size + n > max_bytes:
            marker = truncation_line(max_lines, max_bytes)
            kept.append(marker)
            return CapPlan(tuple(kept), size + len(marker.encode("utf-8")), len(lines) - index, True)
        kept.append(line)
        size += n
    return CapPlan(tuple(kept), size, 0, False)


# --- helpers -------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return text_safe(value)
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Mapping):
        return {text_safe(str(k)): _clean(v) for k, v in value.items()}
    return value


def _json(value: Mapping[str, Any] | None) -> Jsonb | None:
    return None if value is None else Jsonb(_clean(value))


def _params(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, Jsonb) else _clean(v) for k, v in values.items()}


@attrs.frozen
class _Table:
    name: str
    keys: tuple[str, ...]
    state: str


_RUNS: Final = _Table("platform_runs", ("org_id", "run_id"), "status")
_JOBS: Final = _Table("platform_jobs", ("org_id", "run_id", "job_id"), "status")
_STEPS: Final = _Table("platform_steps", ("org_id", "run_id", "job_id", "step_index"), "state")


def _where(keys: Iterable[str]) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in keys
    )


def _apply_status(
    conn: Connection,
    table: _Table,
    key: Mapping[str, Any],
    *,
    state: str,
    timestamp: int,
    rank: int,
    connection_id: str,
    fields: Mapping[str, Any],
) -> StatusChange:
    """Insert the row, or move it to ``state`` if the message `supersedes` the stored status.

    One transaction: the row lock taken by ``SELECT ... FOR UPDATE`` orders concurrent writers of
    one row, and the insert race of two first writers is settled by ``ON CONFLICT DO NOTHING``.
    """
    name = sql.Identifier(table.name)
    state_col = sql.Identifier(table.state)
    params = _params({**key, **fields})
    params.update(state=text_safe(state), ts=timestamp, rank=rank, conn_id=text_safe(connection_id))
    select = sql.SQL(
        "SELECT {state} AS state, status_ts, status_rank FROM {table} WHERE {where} FOR UPDATE"
    ).format(state=state_col, table=name, where=_where(table.keys))
    row = conn.execute(select, params).fetchone()
    if row is None:
        columns = [*table.keys, *fields]
        insert = sql.SQL(
            "INSERT INTO {table} ({columns}, {state}, status_ts, status_rank, connection_id) "
            "VALUES ({values}, %(state)s, %(ts)s, %(rank)s, %(conn_id)s) ON CONFLICT DO NOTHING RETURNING 1"
        ).format(
            table=name,
            columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
            state=state_col,
            values=sql.SQL(", ").join(map(sql.Placeholder, columns)),
        )
        if conn.execute(insert, params).fetchone() is not None:
            return StatusChange(created=True, changed=True)
        row = conn.execute(select, params).fetchone()
        if row is None:
            raise RuntimeError(f"{table.name} row vanished inside its transaction")
    newer = supersedes(timestamp, rank, row["status_ts"], row["status_rank"])
    params["newer"] = newer
    take_new = [
        sql.SQL("{col} = CASE WHEN %(newer)s THEN {value} ELSE {col} END").format(
            col=sql.Identifier(col), value=sql.SQL(value)
        )
        for col, value in (
            (table.state, "%(state)s"),
            ("status_ts", "%(ts)s"),
            ("status_rank", "%(rank)s"),
            ("connection_id", "%(conn_id)s"),
        )
    ]
    merge = [
        sql.SQL(
            "{col} = CASE WHEN %(newer)s THEN COALESCE({value}, {col}) ELSE COALESCE({col}, {value}) END"
        ).format(col=sql.Identifier(col), value=sql.Placeholder(col))
        for col in fields
    ]
    update = sql.SQL("UPDATE {table} SET {sets}, updated_at = now() WHERE {where}").format(
        table=name, sets=sql.SQL(", ").join([*take_new, *merge]), where=_where(table.keys)
    )
    conn.execute(update, params)
    if not newer:
        return NO_CHANGE
    changed = row["state"] != state or row["status_ts"] != timestamp
    return StatusChange(created=row["state"] is None, changed=changed)


def _run_fields(message: ExecutionStatus | RunSnapshot) -> dict[str, Any]:
    return {
        "workflow_name": message.workflow_name,
        "started_at": message.started_at,
        "completed_at": message.completed_at,
        "duration_ms": message.duration_ms,
        "repo_identifier": message.repo_identifier,
        "sha": message.sha,
        "ref": message.ref,
        "trigger_event": message.trigger_event,
        "commit_message": message.commit_message,
        "job_count": message.job_count,
        "parent_run_id": message.parent_run_id,
        "original_run_id": message.original_run_id,
        "triggered_by": message.triggered_by,
        "failure_reason": message.failure_reason,
        "routing_key": message.routing_key if isinstance(message, RunSnapshot) else None,
    }


def _job_fields(message: JobStatusForward | JobSnapshot) -> dict[str, Any]:
    forward = message if isinstance(message, JobStatusForward) else None
    return {
        "job_name": message.job_name,
        "matrix_values": _json(forward.matrix_values) if forward is not None else None,
        "started_at": message.started_at,
        "completed_at": message.completed_at,
        "duration_ms": message.duration_ms,
        "error_message": message.error_message,
        "agent_id": message.agent_id,
        "orchestrator_id": forward.orchestrator_id if forward is not None else None,
        "runs_on_labels": list(message.runs_on_labels) if message.runs_on_labels is not None else None,
    }


def _run(row: Mapping[str, Any]) -> PlatformRun:
    return PlatformRun(
        org_id=row["org_id"],
        run_id=row["run_id"],
        workflow_name=row["workflow_name"],
        status=row["status"],
        status_ts=row["status_ts"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        duration_ms=row["duration_ms"],
        repo_identifier=row["repo_identifier"],
        sha=row["sha"],
        ref=row["ref"],
        trigger_event=row["trigger_event"],
        commit_message=row["commit_message"],
        job_count=row["job_count"],
        routing_key=row["routing_key"],
        parent_run_id=row["parent_run_id"],
        original_run_id=row["original_run_id"],
        triggered_by=row["triggered_by"],
        failure_reason=row["failure_reason"],
        connection_id=row["connection_id"],
    )


def _job(row: Mapping[str, Any]) -> PlatformJob:
    labels = row["runs_on_labels"]
    return PlatformJob(
        org_id=row["org_id"],
        run_id=row["run_id"],
        job_id=row["job_id"],
        job_name=row["job_name"],
        status=row["status"],
        status_ts=row["status_ts"],
        matrix_values=row["matrix_values"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        duration_ms=row["duration_ms"],
        error_message=row["error_message"],
        agent_id=row["agent_id"],
        orchestrator_id=row["orchestrator_id"],
        runs_on_labels=tuple(labels) if labels is not None else None,
    )


def _step(row: Mapping[str, Any]) -> PlatformStep:
    secrets = row["secrets_accessed"]
    return PlatformStep(
        org_id=row["org_id"],
        run_id=row["run_id"],
        job_id=row["job_id"],
        step_index=row["step_index"],
        step_name=row["step_name"],
        state=row["state"],
        status_ts=row["status_ts"],
        data=row["data"],
        secrets_accessed=tuple(secrets) if secrets is not None else None,
        log_lines=row["line_count"] or 0,
        log_dropped_lines=row["dropped_lines"] or 0,
        log_truncated=bool(row["truncated"]),
    )


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_READ_LIMIT:
        raise InvalidStoreInputError(f"limit must be in [1, {MAX_READ_LIMIT}], got {limit}")


# --- the store -----------------------------------------------------------------------------------


class PgPlatformTelemetryStore:
    """See the module docstring. ``max_step_log_lines`` / ``max_step_log_bytes`` cap each step's log."""

    def __init__(
        self,
        db: Database,
        *,
        max_step_log_lines: int = DEFAULT_MAX_STEP_LOG_LINES,
        max_step_log_bytes: int = DEFAULT_MAX_STEP_LOG_BYTES,
    ) -> None:
        if max_step_log_lines < 1 or max_step_log_bytes < 1:
            raise InvalidStoreInputError("the per-step log caps must be positive")
        self._db = db
        self._max_lines = max_step_log_lines
        self._max_bytes = max_step_log_bytes

    # --- writes ----------------------------------------------------------------------------------

    async def apply_execution_status(
        self, org_id: str, connection_id: str, message: ExecutionStatus
    ) -> StatusChange:
        def work(conn: Connection) -> StatusChange:
            return _apply_status(
                conn,
                _RUNS,
                {"org_id": org_id, "run_id": message.run_id},
                state=message.status.value,
                timestamp=message.timestamp,
                rank=rank_of(RUN_RANKS, message.status),
                connection_id=connection_id,
                fields=_run_fields(message),
            )

        return await self._db.run(work)

    async def apply_job_status(
        self, org_id: str, connection_id: str, message: JobStatusForward
    ) -> StatusChange:
        def work(conn: Connection) -> StatusChange:
            return _apply_status(
                conn,
                _JOBS,
                {"org_id": org_id, "run_id": message.run_id, "job_id": message.job_id},
                state=message.status.value,
                timestamp=message.timestamp,
                rank=rank_of(JOB_RANKS, message.status),
                connection_id=connection_id,
                fields=_job_fields(message),
            )

        return await self._db.run(work)

    async def apply_step_status(
        self, org_id: str, connection_id: str, message: StepStatusForward
    ) -> StatusChange:
        key = {"org_id": org_id, "run_id": message.run_id, "job_id": message.job_id}
        placeholder = _params({**key, "job_name": message.job_name, "conn_id": connection_id})

        def work(conn: Connection) -> StatusChange:
            conn.execute(
                "INSERT INTO platform_jobs (org_id, run_id, job_id, job_name, connection_id) "
                "VALUES (%(org_id)s, %(run_id)s, %(job_id)s, %(job_name)s, %(conn_id)s) "
                "ON CONFLICT DO NOTHING",
                placeholder,
            )
            return _apply_status(
                conn,
                _STEPS,
                {**key, "step_index": message.step_index},
                state=message.state.value,
                timestamp=message.timestamp,
                rank=rank_of(STEP_RANKS, message.state),
                connection_id=connection_id,
                fields={
                    "step_name": message.step_name,
                    "data": _json(message.data),
                    "secrets_accessed": list(message.secrets_accessed)
                    if message.secrets_accessed is not None
                    else None,
                },
            )

        return await self._db.run(work)

    async def apply_state_replay(
        self, org_id: str, connection_id: str, message: StateReplay
    ) -> ReplayOutcome:
        """Each snapshot counts as reported at the replay's ``timestamp``: it is the sender's state then."""

        def work(conn: Connection) -> ReplayOutcome:
            runs: list[tuple[RunSnapshot, StatusChange]] = []
            jobs: list[tuple[RunSnapshot, JobSnapshot, StatusChange]] = []
            for snapshot in message.runs:
                change = _apply_status(
                    conn,
                    _RUNS,
                    {"org_id": org_id, "run_id": snapshot.run_id},
                    state=snapshot.status.value,
                    timestamp=message.timestamp,
                    rank=rank_of(RUN_RANKS, snapshot.status),
                    connection_id=connection_id,
                    fields=_run_fields(snapshot),
                )
                runs.append((snapshot, change))
                for job in snapshot.jobs:
                    job_change = _apply_status(
                        conn,
                        _JOBS,
                        {"org_id": org_id, "run_id": snapshot.run_id, "job_id": job.job_id},
                        state=job.status,
                        timestamp=message.timestamp,
                        rank=rank_of(JOB_RANKS, job.status),
                        connection_id=connection_id,
                        fields=_job_fields(job),
                    )
                    jobs.append((snapshot, job, job_change))
            return ReplayOutcome(runs=tuple(runs), jobs=tuple(jobs))

        return await self._db.run(work)

    async def append_log_chunk(self, org_id: str, connection_id: str, message: LogChunk) -> LogAppend:
        key = _params({"org_id": org_id, "run_id": message.run_id, "job_id": message.job_id})
        step_key = {**key, "step_index": message.step_index}
        lines = [text_safe(line) for line in message.lines]
        message_id = text_safe(message.message_id)

        def work(conn: Connection) -> LogAppend:
            conn.execute(
                "INSERT INTO platform_job_logs (org_id, run_id, job_id) "
                "VALUES (%(org_id)s, %(run_id)s, %(job_id)s) ON CONFLICT DO NOTHING",
                key,
            )
            job_row = conn.execute(
                "SELECT sequence FROM platform_job_logs "
                "WHERE org_id = %(org_id)s AND run_id = %(run_id)s AND job_id = %(job_id)s FOR UPDATE",
                key,
            ).fetchone()
            seen = conn.execute(
                "SELECT sequence, step_index, first_line, lines FROM platform_log_chunks "
                "WHERE org_id = %(org_id)s AND run_id = %(run_id)s AND job_id = %(job_id)s "
                "AND message_id = %(message_id)s",
                {**key, "message_id": message_id},
            ).fetchone()
            if job_row is None:
                raise RuntimeError("platform_job_logs row vanished inside its transaction")
            if seen is not None:
                return LogAppend(
                    duplicate=True,
                    step_index=seen["step_index"],
                    first_line=seen["first_line"],
                    lines=tuple(seen["lines"]),
                    dropped=0,
                    sequence=seen["sequence"],
                )
            conn.execute(
                "INSERT INTO platform_step_logs (org_id, run_id, job_id, step_index) "
                "VALUES (%(org_id)s, %(run_id)s, %(job_id)s, %(step_index)s) ON CONFLICT DO NOTHING",
                step_key,
            )
            step_row = conn.execute(
                "SELECT line_count, byte_count, truncated FROM platform_step_logs "
                "WHERE org_id = %(org_id)s AND run_id = %(run_id)s AND job_id = %(job_id)s "
                "AND step_index = %(step_index)s FOR UPDATE",
                step_key,
            ).fetchone()
            if step_row is None:
                raise RuntimeError("platform_step_logs row vanished inside its transaction")
            plan = cap_lines(
                lines,
                line_count=step_row["line_count"],
                byte_count=step_row["byte_count"],
                truncated=step_row["truncated"],
                max_lines=self._max_lines,
                max_bytes=self._max_bytes,
            )
            first_line = int(step_row["line_count"])
            sequence: int | None = None
            if plan.stored:
                sequence = int(job_row["sequence"]) + 1
                conn.execute(
                    "UPDATE platform_job_logs SET sequence = %(sequence)s "
                    "WHERE org_id = %(org_id)s AND run_id = %(run_id)s AND job_id = %(job_id)s",
                    {**key, "sequence": sequence},
                )
                conn.execute(
                    """
                    INSERT INTO platform_log_chunks (org_id, run_id, job_id, sequence, step_index, first_line,
                        lines, logged_at, message_id, connection_id)
                    VALUES (%(org_id)s, %(run_id)s, %(job_id)s, %(sequence)s, %(step_index)s, %(first_line)s,
                        %(lines)s, %(logged_at)s, %(message_id)s, %(conn_id)s)
                    """,
                    {
                        **step_key,
                        "sequence": sequence,
                        "first_line": first_line,
                        "lines": list(plan.stored),
                        "logged_at": message.timestamp,
                        "message_id": message_id,
                        "conn_id": text_safe(connection_id),
                    },
                )
            conn.execute(
                """
                UPDATE platform_step_logs
                SET line_count = line_count + %(n)s, byte_count = byte_count + %(bytes)s,
                    dropped_lines = dropped_lines + %(dropped)s, truncated = %(truncated)s
                WHERE org_id = %(org_id)s AND run_id = %(run_id)s AND job_id = %(job_id)s
                  AND step_index = %(step_index)s
                """,
                {
                    **step_key,
                    "n": len(plan.stored),
                    "bytes": plan.byte_count,
                    "dropped": plan.dropped,
                    "truncated": plan.truncated,
                },
            )
            return LogAppend(
                duplicate=False,
                step_index=message.step_index,
                first_line=first_line,
                lines=plan.stored,
                dropped=plan.dropped,
                sequence=sequence,
            )

        return await self._db.run(work)

    # --- reads -----------------------------------------------------------------------------------

    async def run_orgs(self, org_ids: Sequence[str], run_id: str) -> list[str]:
        """Which of ``org_ids`` have a run ``run_id`` (normally none or one)."""
        params = {"orgs": list(org_ids), "run_id": run_id}

        def work(conn: Connection) -> list[str]:
            rows = conn.execute(
                "SELECT org_id FROM platform_runs "
                "WHERE run_id = %(run_id)s AND org_id = ANY(%(orgs)s::text[]) ORDER BY org_id",
                params,
            ).fetchall()
            return [row["org_id"] for row in rows]

        return await self._db.run(work)

    async def get_run(self, org_id: str, run_id: str) -> PlatformRun | None:
        def work(conn: Connection) -> PlatformRun | None:
            row = conn.execute(
                "SELECT * FROM platform_runs WHERE org_id = %s AND run_id = %s", (org_id, run_id)
            ).fetchone()
            return None if row is None else _run(row)

        return await self._db.run(work)

    async def list_runs(
        self, org_ids: Sequence[str], run_filter: RunFilter, *, limit: int, offset: int
    ) -> tuple[list[PlatformRun], int]:
        """Newest first (by start time) across ``org_ids``, and the total matching count."""
        _check_limit(limit)
        where = (
            "WHERE org_id = ANY(%(orgs)s::text[]) "
            "AND (cardinality(%(statuses)s::text[]) = 0 OR status = ANY(%(statuses)s::text[])) "
            "AND (%(workflow)s::text IS NULL OR workflow_name = %(workflow)s::text) "
            "AND (%(repo)s::text IS NULL OR repo_identifier = %(repo)s::text) "
            "AND (%(branch)s::text IS NULL OR ref = %(branch)s::text "
            "OR ref = 'refs/heads/' || %(branch)s::text)"
        )
        params = _params(
            {
                "orgs": list(org_ids),
                "statuses": list(run_filter.statuses),
                "workflow": run_filter.workflow,
                "repo": run_filter.repo,
                "branch": run_filter.branch,
                "limit": limit,
                "offset": offset,
            }
        )

        def work(conn: Connection) -> tuple[list[PlatformRun], int]:
            total = conn.execute(f"SELECT count(*) AS n FROM platform_runs {where}", params).fetchone()
            rows = conn.execute(
                f"SELECT * FROM platform_runs {where} "
                "ORDER BY started_at DESC, run_id DESC LIMIT %(limit)s OFFSET %(offset)s",
                params,
            ).fetchall()
            return [_run(row) for row in rows], int(total["n"]) if total else 0

        return await self._db.run(work)

    async def list_jobs(self, org_id: str, run_id: str) -> list[PlatformJob]:
        def work(conn: Connection) -> list[PlatformJob]:
            rows = conn.execute(
                "SELECT * FROM platform_jobs WHERE org_id = %s AND run_id = %s "
                "ORDER BY COALESCE(started_at, 9223372036854775807), job_name, job_id",
                (org_id, run_id),
            ).fetchall()
            return [_job(row) for row in rows]

        return await self._db.run(work)

    async def list_steps(self, org_id: str, run_id: str) -> list[PlatformStep]:
        def work(conn: Connection) -> list[PlatformStep]:
            rows = conn.execute(
                """
                SELECT s.*, l.line_count, l.dropped_lines, l.truncated
                FROM platform_steps s
                LEFT JOIN platform_step_logs l USING (org_id, run_id, job_id, step_index)
                WHERE s.org_id = %s AND s.run_id = %s
                ORDER BY s.job_id, s.step_index
                """,
                (org_id, run_id),
            ).fetchall()
            return [_step(row) for row in rows]

        return await self._db.run(work)

    async def read_log_chunks(
        self,
        org_id: str,
        run_id: str,
        job_id: str,
        *,
        after: int = 0,
        limit: int = 500,
        step_index: int | None = None,
    ) -> PlatformLogPage:
        """Chunks of one job with a sequence above ``after``, in order (optionally of one step)."""
        _check_limit(limit)
        params = {
            "org_id": org_id,
            "run_id": run_id,
            "job_id": job_id,
            "after": after,
            "step": step_index,
            "limit": limit,
        }

        def work(conn: Connection) -> PlatformLogPage:
            rows = conn.execute(
                """
                SELECT sequence, step_index, first_line, lines, logged_at FROM platform_log_chunks
                WHERE org_id = %(org_id)s AND run_id = %(run_id)s AND job_id = %(job_id)s
                  AND sequence > %(after)s AND (%(step)s::integer IS NULL OR step_index = %(step)s::integer)
                ORDER BY sequence LIMIT %(limit)s
                """,
                params,
            ).fetchall()
            chunks = tuple(
                PlatformLogChunk(
                    sequence=row["sequence"],
                    step_index=row["step_index"],
                    first_line=row["first_line"],
                    lines=tuple(row["lines"]),
                    timestamp=row["logged_at"],
                )
                for row in rows
            )
            return PlatformLogPage(chunks, chunks[-1].sequence if chunks else after)

        return await self._db.run(work)

    async def read_step_lines(
        self,
        org_id: str,
        run_id: str,
        job_id: str,
        step_index: int,
        *,
        after_line: int = 0,
        limit: int = 1000,
    ) -> StepLines:
        """Up to ``limit`` stored lines of one step from line number ``after_line`` (0-based) on."""
        _check_limit(limit)
        if after_line < 0:
            raise InvalidStoreInputError(f"after_line must be >= 0, got {after_line}")
        params = {
            "org_id": org_id,
            "run_id": run_id,
            "job_id": job_id,
            "step": step_index,
            "after": after_line,
            "limit": limit,
        }

        def work(conn: Connection) -> StepLines:
            rows = conn.execute(
                """
                SELECT first_line, lines FROM platform_log_chunks
                WHERE org_id = %(org_id)s AND run_id = %(run_id)s AND job_id = %(job_id)s
                  AND step_index = %(step)s
                  AND first_line >= COALESCE((
                      SELECT max(first_line) FROM platform_log_chunks
                      WHERE org_id = %(org_id)s AND run_id = %(run_id)s AND job_id = %(job_id)s
                        AND step_index = %(step)s AND first_line <= %(after)s), 0)
                ORDER BY first_line LIMIT %(limit)s
                """,
                params,
            ).fetchall()
            total = conn.execute(
                "SELECT line_count FROM platform_step_logs WHERE org_id = %(org_id)s AND run_id = %(run_id)s "
                "AND job_id = %(job_id)s AND step_index = %(step)s",
                params,
            ).fetchone()
            out: list[str] = []
            for row in rows:
                start = int(row["first_line"])
                for offset, line in enumerate(row["lines"]):
                    if start + offset >= after_line and len(out) < limit:
                        out.append(line)
            return StepLines(after_line, tuple(out), int(total["line_count"]) if total else 0)

        return await self._db.run(work)


__all__ = [
    "DEFAULT_MAX_STEP_LOG_BYTES",
    "DEFAULT_MAX_STEP_LOG_LINES",
    "JOB_RANKS",
    "MAX_READ_LIMIT",
    "NO_CHANGE",
    "RUN_RANKS",
    "STEP_RANKS",
    "CapPlan",
    "LogAppend",
    "PgPlatformTelemetryStore",
    "PlatformJob",
    "PlatformLogChunk",
    "PlatformLogPage",
    "PlatformRun",
    "PlatformStep",
    "ReplayOutcome",
    "RunFilter",
    "StatusChange",
    "StepLines",
    "cap_lines",
    "rank_of",
    "supersedes",
    "truncation_line",
]
