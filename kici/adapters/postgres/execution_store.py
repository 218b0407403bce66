"""``ExecutionStore`` on PostgreSQL: runs, jobs, needs edges, steps, run completion.

Every method is one unit of work (:meth:`Database.run`). Job status writers lock
the run row first, then the job rows, then the dispatch-queue row: one lock
order everywhere, so concurrent writers queue instead of deadlocking.

A new run's jobs, edges and initial gate state come from the pure
``insert_edges_for_run`` (fan-out expansion, roots satisfied, cycle members
failed), written as rows; from then on the gate runs in SQL (:mod:`.gate`).
Job ids are generated here (uuid4), not by the database, so a run's rows are
written in one round trip without ``RETURNING``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from kici.adapters.postgres import channels
from kici.adapters.postgres.database import Connection, Database
from kici.adapters.postgres.gate import Gate, lock_run, notify
from kici.adapters.postgres.rows import (
    from_jsonb,
    init_failure_from_jsonb,
    init_failure_to_jsonb,
    to_jsonb,
)
from kici.domain.execution.machine import transition
from kici.domain.execution.needs import (
    Edge,
    GroupNeed,
    JobNeedsSpec,
    NameNeed,
    NotTerminalError,
    SchedulerState,
    format_run_on,
    insert_edges_for_run,
    parse_run_on_column,
)
from kici.domain.execution.run_status import (
    ApplyEvent,
    JobInput,
    RunEvent,
    RunFinalization,
    can_run_transition,
    completion_event,
    completion_from_rows,
    decide_job_input,
    finalize_run,
    is_run_terminal,
    run_transition,
)
from kici.domain.execution.states import (
    FAILING_JOB_STATES,
    TERMINAL_JOB_STATES,
    TERMINAL_JOB_STATES_ORDERED,
    CheckMode,
    CheckStepOutcome,
    JobStatus,
    RunStatus,
    StepConcurrencyKind,
    StepStatus,
    persisted_job_status,
)
from kici.domain.lockfile.frozen import FrozenDict
from kici.domain.store import (
    CreatedRun,
    DuplicateRunError,
    EdgeRecord,
    ForceStatusCommand,
    GateFailure,
    GateJob,
    GateOutcome,
    GateSkip,
    JobEventCommand,
    JobNotFoundError,
    JobRecord,
    JobTransition,
    NewJob,
    NewRun,
    RunCancellation,
    RunRecord,
    StepRecord,
    require_aware,
)

_RUN_COLUMNS = (
    "id, workflow_name, routing_key, org_id, repo_identifier, ref, sha, event, delivery_id, request_id, "
    "status, check_mode, is_test_run, fixture_id, workflow_timeout_ms, init_failure, parent_run_id, "
    "original_run_id, triggered_by, created_at, updated_at"
)

_INSERT_RUN = f"""
INSERT INTO execution_runs ({_RUN_COLUMNS})
VALUES (%(id)s, %(workflow_name)s, %(routing_key)s, %(org_id)s, %(repo_identifier)s, %(ref)s, %(sha)s,
        %(event)s, %(delivery_id)s, %(request_id)s, 'pending', %(check_mode)s, %(is_test_run)s,
        %(fixture_id)s, %(workflow_timeout_ms)s, %(init_failure)s, %(parent_run_id)s, %(original_run_id)s,
        %(triggered_by)s, %(now)s, %(now)s)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

_INSERT_JOB = """
INSERT INTO execution_jobs (
    id, run_id, name, ordinal, base_job_name, fanout_index, status, needs_satisfied, ready_at,
    pending_groups, wave_gated, wave_max_parallel, wave_fail_fast, config, routing, matrix_values,
    error_message, created_at, updated_at, completed_at)
VALUES (
    %(id)s, %(run_id)s, %(name)s, %(ordinal)s, %(base_job_name)s, %(fanout_index)s, %(status)s,
    %(needs_satisfied)s, %(ready_at)s, %(pending_groups)s, %(wave_gated)s, %(wave_max_parallel)s,
    %(wave_fail_fast)s, %(config)s, %(routing)s, %(matrix_values)s, %(error_message)s, %(now)s, %(now)s,
    %(completed_at)s)
"""

_INSERT_EDGE = """
INSERT INTO execution_job_needs (run_id, job_name, upstream_name, run_on, ordinal)
VALUES (%(run_id)s, %(job_name)s, %(upstream_name)s, %(run_on)s, %(ordinal)s)
ON CONFLICT DO NOTHING
"""

_APPLY_STATUS = """
UPDATE execution_jobs SET
    status = %(to)s,
    updated_at = %(now)s,
    started_at = CASE WHEN %(to)s = 'running' THEN COALESCE(started_at, %(now)s) ELSE started_at END,
    last_heartbeat_at = CASE WHEN %(to)s = 'running' THEN %(now)s ELSE last_heartbeat_at END,
    agent_id = COALESCE(%(agent_id)s, agent_id),
    completed_at = CASE WHEN kici_job_terminal(%(to)s) THEN %(now)s ELSE completed_at END,
    error_message = COALESCE(%(error)s, error_message),
    outputs = COALESCE(%(outputs)s, outputs)
WHERE id = %(id)s AND status = ANY(%(expected)s)
RETURNING run_id, name
"""

_ENQUEUE = """
INSERT INTO dispatch_queue (
    id, job_id, run_id, status, routing, enqueued_at, created_at, updated_at, expires_at, request_id)
SELECT %(queue_id)s, j.id, j.run_id, 'pending', j.routing, %(now)s, %(now)s, %(now)s, %(expires_at)s,
       %(request_id)s
FROM execution_jobs j WHERE j.id = %(job_id)s
"""

_FINISH_QUEUE_ROW = """
UPDATE dispatch_queue
SET status = %(queue_status)s, updated_at = %(now)s, ack_deadline = NULL, ack_agent_id = NULL,
    recovery_deadline = NULL, recovery_agent_id = NULL
WHERE job_id = %(job_id)s AND status IN ('pending', 'dispatched', 'recovering')
"""

_UPSERT_STEP = """
INSERT INTO execution_steps AS s (
    run_id, job_id, step_index, step_name, status, step_type, started_at, completed_at, duration_ms,
    exit_code, error_message, log_path, secrets_accessed, check_outcome, drift_summary, drift,
    concurrency_kind, group_id, log_bytes, updated_at)
VALUES (
    %(run_id)s, %(job_id)s, %(step_index)s, %(step_name)s, %(status)s, %(step_type)s, %(started_at)s,
    %(completed_at)s, %(duration_ms)s, %(exit_code)s, %(error_message)s, %(log_path)s,
    %(secrets_accessed)s, %(check_outcome)s, %(drift_summary)s, %(drift)s, %(concurrency_kind)s,
    %(group_id)s, %(log_bytes)s, %(updated_at)s)
ON CONFLICT (run_id, job_id, step_index) DO UPDATE SET
    step_name = EXCLUDED.step_name,
    status = EXCLUDED.status,
    step_type = EXCLUDED.step_type,
    started_at = COALESCE(s.started_at, EXCLUDED.started_at),
    completed_at = COALESCE(EXCLUDED.completed_at, s.completed_at),
    duration_ms = COALESCE(EXCLUDED.duration_ms, s.duration_ms),
    exit_code = COALESCE(EXCLUDED.exit_code, s.exit_code),
    error_message = COALESCE(EXCLUDED.error_message, s.error_message),
    log_path = COALESCE(EXCLUDED.log_path, s.log_path),
    secrets_accessed = CASE WHEN cardinality(EXCLUDED.secrets_accessed) > 0
                            THEN EXCLUDED.secrets_accessed ELSE s.secrets_accessed END,
    check_outcome = COALESCE(EXCLUDED.check_outcome, s.check_outcome),
    drift_summary = COALESCE(EXCLUDED.drift_summary, s.drift_summary),
    drift = COALESCE(EXCLUDED.drift, s.drift),
    concurrency_kind = COALESCE(EXCLUDED.concurrency_kind, s.concurrency_kind),
    group_id = COALESCE(EXCLUDED.group_id, s.group_id),
    log_bytes = COALESCE(EXCLUDED.log_bytes, s.log_bytes),
    updated_at = EXCLUDED.updated_at
WHERE s.status NOT IN ('success', 'failed', 'skipped', 'cancelled')
RETURNING step_index
"""

_TERMINAL_RUN_STATUSES = ("success", "failed", "cancelled")


def _duration_ms(started_at: datetime | None, now: datetime) -> int | None:
    return None if started_at is None else max(0, (now - started_at) // timedelta(milliseconds=1))


def _pending_groups(spec: JobNeedsSpec) -> list[dict[str, object]]:
    """The job's unresolved group needs, as ``insert_edges_for_run`` collects them (first entry wins)."""
    groups: dict[str, GroupNeed] = {}
    for need in spec.needs:
        if isinstance(need, GroupNeed):
            groups.setdefault(need.group, need)
    for group in spec.depends_on_groups:
        groups.setdefault(group, GroupNeed(group))
    return [
        {"group": g.group, "runOn": [s.value for s in TERMINAL_JOB_STATES_ORDERED if s in g.run_on]}
        for g in groups.values()
    ]


def _edges_in_insertion_order(specs: Sequence[JobNeedsSpec], state: SchedulerState) -> list[Edge]:
    """The run's edges in the order the model added them (its dependents and edges are walked in it)."""
    fanouts = {spec.name: spec.fanout for spec in specs if spec.fanout}
    ordered: list[Edge] = []
    seen: set[tuple[str, str]] = set()

    def take(edge: Edge) -> None:
        if (edge.job, edge.upstream) not in seen:
            seen.add((edge.job, edge.upstream))
            ordered.append(edge)

    for spec in specs:
        for need in spec.needs:
            if not isinstance(need, NameNeed):
                continue
            for upstream in fanouts.get(need.name, (need.name,)):
                for name in spec.job_names:
                    for edge in state.edges_of(name):
                        if edge.upstream == upstream:
                            take(edge)
    for edges in state.edges.values():
        for edge in edges:
            take(edge)
    return ordered


def _run_record(row: dict[str, Any]) -> RunRecord:
    return RunRecord(
        run_id=row["id"],
        workflow_name=row["workflow_name"],
        status=RunStatus(row["status"]),
        check_mode=CheckMode(row["check_mode"]),
        drift_detected=row["drift_detected"],
        is_test_run=row["is_test_run"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        routing_key=row["routing_key"],
        org_id=row["org_id"],
        repo_identifier=row["repo_identifier"],
        ref=row["ref"],
        sha=row["sha"],
        event=row["event"],
        delivery_id=row["delivery_id"],
        request_id=row["request_id"],
        fixture_id=row["fixture_id"],
        workflow_timeout_ms=row["workflow_timeout_ms"],
        init_failure=init_failure_from_jsonb(row["init_failure"]),
        failure_reason=row["failure_reason"],
        cancelled_by=row["cancelled_by"],
        log_bytes=row["log_bytes"],
        parent_run_id=row["parent_run_id"],
        original_run_id=row["original_run_id"],
        triggered_by=row["triggered_by"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        duration_ms=row["duration_ms"],
    )


def _job_record(row: dict[str, Any]) -> JobRecord:
    return JobRecord(
        job_id=row["id"],
        run_id=row["run_id"],
        name=row["name"],
        ordinal=row["ordinal"],
        status=JobStatus(row["status"]),
        needs_satisfied=row["needs_satisfied"],
        wave_gated=row["wave_gated"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        base_job_name=row["base_job_name"],
        fanout_index=row["fanout_index"],
        group_name=row["group_name"],
        pending_groups=tuple(g["group"] for g in row["pending_groups"]),
        wave_max_parallel=row["wave_max_parallel"],
        wave_fail_fast=row["wave_fail_fast"],
        ready_at=row["ready_at"],
        config=from_jsonb(row["config"]),
        routing=from_jsonb(row["routing"]),
        matrix_values=from_jsonb(row["matrix_values"]),
        outputs=from_jsonb(row["outputs"]),
        agent_id=row["agent_id"],
        error_message=row["error_message"],
        log_bytes=row["log_bytes"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        last_heartbeat_at=row["last_heartbeat_at"],
    )


def _step_record(row: dict[str, Any]) -> StepRecord:
    return StepRecord(
        run_id=row["run_id"],
        job_id=row["job_id"],
        step_index=row["step_index"],
        step_name=row["step_name"],
        status=StepStatus(row["status"]),
        updated_at=row["updated_at"],
        step_type=row["step_type"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        duration_ms=row["duration_ms"],
        exit_code=row["exit_code"],
        error_message=row["error_message"],
        log_path=row["log_path"],
        secrets_accessed=tuple(row["secrets_accessed"]),
        check_outcome=None if row["check_outcome"] is None else CheckStepOutcome(row["check_outcome"]),
        drift_summary=row["drift_summary"],
        drift=from_jsonb(row["drift"]),
        concurrency_kind=None
        if row["concurrency_kind"] is None
        else StepConcurrencyKind(row["concurrency_kind"]),
        group_id=row["group_id"],
        log_bytes=row["log_bytes"],
    )


def finish_queue_row(conn: Connection, job_id: uuid.UUID, status: JobStatus, now: datetime) -> None:
    """A terminal job leaves the queue: ``failed`` for a failing status, else ``completed``."""
    queue_status = "failed" if status in FAILING_JOB_STATES else "completed"
    conn.execute(_FINISH_QUEUE_ROW, {"queue_status": queue_status, "now": now, "job_id": job_id})


def run_event_locked(
    conn: Connection,
    run_id: uuid.UUID,
    event: RunEvent,
    now: datetime,
    *,
    reason: str | None = None,
    cancelled_by: str | None = None,
) -> RunStatus | None:
    """Apply a run event inside a transaction; the run row gets locked here if it is not already."""
    row = conn.execute(
        "SELECT status, started_at FROM execution_runs WHERE id = %s FOR NO KEY UPDATE", (run_id,)
    ).fetchone()
    if row is None:
        return None
    current = RunStatus(row["status"])
    if not can_run_transition(current, event):
        return None
    target = run_transition(current, event)
    started_at = (
        row["started_at"] if row["started_at"] is not None or target is not RunStatus.RUNNING else now
    )
    terminal = is_run_terminal(target)
    conn.execute(
        """
        UPDATE execution_runs SET
            status = %(status)s,
            updated_at = %(now)s,
            started_at = %(started_at)s,
            completed_at = CASE WHEN %(terminal)s THEN %(now)s ELSE completed_at END,
            duration_ms = CASE WHEN %(terminal)s THEN %(duration)s ELSE duration_ms END,
            failure_reason = COALESCE(failure_reason, %(reason)s),
            cancelled_by = COALESCE(%(cancelled_by)s, cancelled_by)
        WHERE id = %(id)s
        """,
        {
            "status": target.value,
            "now": now,
            "started_at": started_at,
            "terminal": terminal,
            "duration": _duration_ms(started_at, now) if terminal else None,
            "reason": reason,
            "cancelled_by": cancelled_by,
            "id": run_id,
        },
    )
    return target


def _gate_after_terminal(
    conn: Connection, run_id: uuid.UUID, job: GateJob, status: JobStatus, now: datetime
) -> GateOutcome:
    finish_queue_row(conn, job.job_id, status, now)
    gate = Gate(conn, run_id, now)
    gate.finished([job.name])
    gate.drain()
    return gate.outcome()


def force_status_locked(conn: Connection, command: ForceStatusCommand) -> JobTransition:
    """:meth:`PgExecutionStore.force_job_status` inside a caller's transaction."""
    job = conn.execute("SELECT run_id FROM execution_jobs WHERE id = %s", (command.job_id,)).fetchone()
    if job is None:
        raise JobNotFoundError(command.job_id)
    lock_run(conn, job["run_id"])
    row = conn.execute(
        _APPLY_STATUS,
        {
            "to": command.status.value,
            "now": command.now,
            "agent_id": None,
            "error": command.error_message,
            "outputs": None,
            "id": command.job_id,
            "expected": [s.value for s in command.expected],
        },
    ).fetchone()
    if row is None:
        return JobTransition(applied=False, status=_current_status(conn, command.job_id))
    gate = _gate_after_terminal(
        conn, row["run_id"], GateJob(command.job_id, row["name"]), command.status, command.now
    )
    return JobTransition(applied=True, status=command.status, gate=gate)


def _current_status(conn: Connection, job_id: uuid.UUID) -> JobStatus:
    row = conn.execute("SELECT status FROM execution_jobs WHERE id = %s", (job_id,)).fetchone()
    if row is None:
        raise JobNotFoundError(job_id)
    return JobStatus(row["status"])


class PgExecutionStore:
    """See :class:`kici.domain.store.ExecutionStore` for the contract."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_run(self, run: NewRun, jobs: Sequence[NewJob]) -> CreatedRun:
        specs = [job.spec for job in jobs]
        state, outcome = insert_edges_for_run(specs)
        now = run.created_at
        owners: dict[str, tuple[NewJob, int | None]] = {}
        for job in jobs:
            if job.spec.fanout:
                for index, child in enumerate(job.spec.fanout):
                    owners[child] = (job, index)
            else:
                owners[job.spec.name] = (job, None)
        job_ids = {name: uuid.uuid4() for name in state.jobs}
        job_rows: list[dict[str, object]] = []
        for ordinal, (name, node) in enumerate(state.jobs.items()):
            job, index = owners[name]
            wave = job.spec.wave if job.spec.fanout else None
            job_rows.append(
                {
                    "id": job_ids[name],
                    "run_id": run.run_id,
                    "name": name,
                    "ordinal": ordinal,
                    "base_job_name": node.base_job_name,
                    "fanout_index": index,
                    "status": (node.status or JobStatus.PENDING).value,
                    "needs_satisfied": node.needs_satisfied,
                    "ready_at": now if node.needs_satisfied else None,
                    "pending_groups": Jsonb(_pending_groups(job.spec)),
                    "wave_gated": node.wave_gated,
                    "wave_max_parallel": None if wave is None else wave.max_parallel,
                    "wave_fail_fast": None if wave is None else wave.fail_fast,
                    "config": to_jsonb(job.config),
                    "routing": to_jsonb(job.routing),
                    "matrix_values": to_jsonb(job.matrix_values.get(name)),
                    "error_message": node.reason,
                    "now": now,
                    "completed_at": now if node.status is not None else None,
                }
            )
        edge_rows = [
            {
                "run_id": run.run_id,
                "job_name": edge.job,
                "upstream_name": edge.upstream,
                "run_on": format_run_on(edge.run_on),
                "ordinal": ordinal,
            }
            for ordinal, edge in enumerate(_edges_in_insertion_order(specs, state))
        ]
        gate = GateOutcome(
            run_id=run.run_id,
            dispatched=tuple(GateJob(job_ids[n], n) for n in outcome.dispatched),
            skipped=tuple(GateSkip(job_ids[s.name], s.name, s.reason) for s in outcome.skipped),
            failed=tuple(GateFailure(job_ids[f.name], f.name, f.reason) for f in outcome.failed),
        )

        def work(conn: Connection) -> None:
            inserted = conn.execute(
                _INSERT_RUN,
                {
                    "id": run.run_id,
                    "workflow_name": run.workflow_name,
                    "routing_key": run.routing_key,
                    "org_id": run.org_id,
                    "repo_identifier": run.repo_identifier,
                    "ref": run.ref,
                    "sha": run.sha,
                    "event": run.event,
                    "delivery_id": run.delivery_id,
                    "request_id": run.request_id,
                    "check_mode": run.check_mode.value,
                    "is_test_run": run.is_test_run,
                    "fixture_id": run.fixture_id,
                    "workflow_timeout_ms": run.workflow_timeout_ms,
                    "init_failure": init_failure_to_jsonb(run.init_failure),
                    "parent_run_id": run.parent_run_id,
                    "original_run_id": run.original_run_id,
                    "triggered_by": run.triggered_by,
                    "now": now,
                },
            ).fetchone()
            if inserted is None:
                raise DuplicateRunError(run.run_id)
            with conn.cursor() as cursor:
                if job_rows:
                    cursor.executemany(_INSERT_JOB, job_rows)
                if edge_rows:
                    cursor.executemany(_INSERT_EDGE, edge_rows)
            if gate.dispatched:
                notify(conn, channels.JOB_READY, str(run.run_id))

        await self._db.run(work)
        return CreatedRun(run_id=run.run_id, job_ids=FrozenDict(job_ids), gate=gate)

    async def get_run(self, run_id: uuid.UUID) -> RunRecord | None:
        def work(conn: Connection) -> RunRecord | None:
            row = conn.execute("SELECT * FROM execution_runs WHERE id = %s", (run_id,)).fetchone()
            return None if row is None else _run_record(row)

        return await self._db.run(work)

    async def list_open_runs(self) -> tuple[RunRecord, ...]:
        def work(conn: Connection) -> tuple[RunRecord, ...]:
            rows = conn.execute(
                "SELECT * FROM execution_runs WHERE status <> ALL(%s) ORDER BY created_at, id",
                (list(_TERMINAL_RUN_STATUSES),),
            ).fetchall()
            return tuple(_run_record(row) for row in rows)

        return await self._db.run(work)

    async def get_job(self, job_id: uuid.UUID) -> JobRecord | None:
        def work(conn: Connection) -> JobRecord | None:
            row = conn.execute("SELECT * FROM execution_jobs WHERE id = %s", (job_id,)).fetchone()
            return None if row is None else _job_record(row)

        return await self._db.run(work)

    async def list_jobs(self, run_id: uuid.UUID) -> tuple[JobRecord, ...]:
        def work(conn: Connection) -> tuple[JobRecord, ...]:
            rows = conn.execute(
                "SELECT * FROM execution_jobs WHERE run_id = %s ORDER BY ordinal", (run_id,)
            ).fetchall()
            return tuple(_job_record(row) for row in rows)

        return await self._db.run(work)

    async def list_edges(self, run_id: uuid.UUID) -> tuple[EdgeRecord, ...]:
        def work(conn: Connection) -> tuple[EdgeRecord, ...]:
            rows = conn.execute(
                """
                SELECT job_name, upstream_name, run_on FROM execution_job_needs
                WHERE run_id = %s ORDER BY ordinal
                """,
                (run_id,),
            ).fetchall()
            return tuple(
                EdgeRecord(row["job_name"], row["upstream_name"], parse_run_on_column(row["run_on"]))
                for row in rows
            )

        return await self._db.run(work)

    async def apply_job_event(self, command: JobEventCommand) -> JobTransition:
        target = persisted_job_status(transition(command.expected, command.event))
        source = persisted_job_status(command.expected)
        return await self._db.run(partial(self._apply_event, command, source, target))

    @staticmethod
    def _apply_event(
        command: JobEventCommand, source: JobStatus, target: JobStatus, conn: Connection
    ) -> JobTransition:
        job = conn.execute("SELECT run_id FROM execution_jobs WHERE id = %s", (command.job_id,)).fetchone()
        if job is None:
            raise JobNotFoundError(command.job_id)
        lock_run(conn, job["run_id"])
        row = conn.execute(
            _APPLY_STATUS,
            {
                "to": target.value,
                "now": command.now,
                "agent_id": command.agent_id,
                "error": command.error_message,
                "outputs": to_jsonb(command.outputs),
                "id": command.job_id,
                "expected": [source.value],
            },
        ).fetchone()
        if row is None:
            return JobTransition(applied=False, status=_current_status(conn, command.job_id))
        run_id, name = row["run_id"], row["name"]
        gate = None
        if target is JobStatus.QUEUED and source is not JobStatus.QUEUED:
            conn.execute(
                _ENQUEUE,
                {
                    "queue_id": uuid.uuid4(),
                    "job_id": command.job_id,
                    "now": command.now,
                    "expires_at": command.queue_expires_at,
                    "request_id": command.request_id,
                },
            )
            run_event_locked(conn, run_id, RunEvent.JOB_QUEUED, command.now)
            notify(conn, channels.DISPATCH, str(command.job_id))
        elif target in TERMINAL_JOB_STATES:
            gate = _gate_after_terminal(conn, run_id, GateJob(command.job_id, name), target, command.now)
        return JobTransition(applied=True, status=target, gate=gate)

    async def force_job_status(self, command: ForceStatusCommand) -> JobTransition:
        return await self._db.run(lambda conn: force_status_locked(conn, command))

    async def on_job_terminal(
        self, run_id: uuid.UUID, job_name: str, status: JobStatus, now: datetime
    ) -> GateOutcome:
        if status not in TERMINAL_JOB_STATES:
            raise NotTerminalError(f"job {job_name!r}: {status} is not a terminal status")
        require_aware(now)

        def work(conn: Connection) -> GateOutcome:
            lock_run(conn, run_id)
            gate = Gate(conn, run_id, now)
            job_id = gate.record_terminal(job_name, status)
            if job_id is None:
                exists = conn.execute(
                    "SELECT 1 FROM execution_jobs WHERE run_id = %s AND name = %s", (run_id, job_name)
                ).fetchone()
                if exists is None:
                    raise JobNotFoundError(f"{job_name!r} of run {run_id}")
                return gate.outcome(ignored=True)
            finish_queue_row(conn, job_id, status, now)
            gate.drain()
            return gate.outcome()

        return await self._db.run(work)

    async def recompute_needs_satisfied(
        self, now: datetime, run_id: uuid.UUID | None = None
    ) -> tuple[GateOutcome, ...]:
        require_aware(now)
        if run_id is not None:
            run_ids = [run_id]
        else:

            def find(conn: Connection) -> list[uuid.UUID]:
                rows = conn.execute(
                    """
                    SELECT DISTINCT j.run_id FROM execution_jobs j
                    JOIN execution_runs r ON r.id = j.run_id
                    WHERE j.status = 'pending' AND NOT j.needs_satisfied AND r.status <> ALL(%s)
                    """,
                    (list(_TERMINAL_RUN_STATUSES),),
                ).fetchall()
                return [row["run_id"] for row in rows]

            run_ids = await self._db.run(find)
        outcomes: list[GateOutcome] = []
        for each in run_ids:

            def work(conn: Connection, run: uuid.UUID = each) -> GateOutcome:
                lock_run(conn, run)
                gate = Gate(conn, run, now)
                gate.recompute()
                return gate.outcome()

            outcomes.append(await self._db.run(work))
        return tuple(outcomes)

    async def list_ready_jobs(self, run_id: uuid.UUID | None = None) -> tuple[JobRecord, ...]:
        def work(conn: Connection) -> tuple[JobRecord, ...]:
            rows = conn.execute(
                """
                SELECT j.* FROM execution_jobs j JOIN execution_runs r ON r.id = j.run_id
                WHERE j.status = 'pending' AND j.needs_satisfied AND NOT j.wave_gated
                  AND r.status <> ALL(%(closed)s) AND (%(run)s::uuid IS NULL OR j.run_id = %(run)s::uuid)
                ORDER BY j.ready_at, j.run_id, j.ordinal
                """,
                {"closed": list(_TERMINAL_RUN_STATUSES), "run": run_id},
            ).fetchall()
            return tuple(_job_record(row) for row in rows)

        return await self._db.run(work)

    async def fail_stuck_jobs(self, run_id: uuid.UUID, now: datetime) -> GateOutcome:
        require_aware(now)

        def work(conn: Connection) -> GateOutcome:
            lock_run(conn, run_id)
            gate = Gate(conn, run_id, now)
            gate.fail_stuck()
            return gate.outcome()

        return await self._db.run(work)

    async def cancel_run(
        self,
        run_id: uuid.UUID,
        now: datetime,
        *,
        graceful: bool,
        reason: str | None = None,
        cancelled_by: str | None = None,
    ) -> RunCancellation:
        require_aware(now)
        job_input = JobInput.RUN_CANCEL_GRACEFUL if graceful else JobInput.RUN_CANCEL_FORCE
        run_event = RunEvent.CANCEL_GRACEFUL if graceful else RunEvent.CANCEL_FORCE

        def work(conn: Connection) -> RunCancellation:
            lock_run(conn, run_id)
            rows = conn.execute(
                """
                SELECT id, name, status FROM execution_jobs
                WHERE run_id = %s AND NOT kici_job_terminal(status) ORDER BY ordinal
                """,
                (run_id,),
            ).fetchall()
            cancelled: list[GateJob] = []
            cancelling: list[GateJob] = []
            for row in rows:
                current = JobStatus(row["status"])
                decision = decide_job_input(current, job_input)
                if not isinstance(decision, ApplyEvent):
                    continue
                target = persisted_job_status(decision.to)
                applied = conn.execute(
                    _APPLY_STATUS,
                    {
                        "to": target.value,
                        "now": now,
                        "agent_id": None,
                        "error": None,
                        "outputs": None,
                        "id": row["id"],
                        "expected": [current.value],
                    },
                ).fetchone()
                if applied is None:
                    continue
                if target in TERMINAL_JOB_STATES:
                    cancelled.append(GateJob(row["id"], row["name"]))
                    finish_queue_row(conn, row["id"], target, now)
                else:
                    cancelling.append(GateJob(row["id"], row["name"]))
            gate = Gate(conn, run_id, now)
            gate.finished(job.name for job in cancelled)
            gate.drain()
            status = run_event_locked(conn, run_id, run_event, now, reason=reason, cancelled_by=cancelled_by)
            return RunCancellation(
                run_status=status,
                cancelled=tuple(cancelled),
                cancelling=tuple(cancelling),
                gate=gate.outcome(),
            )

        return await self._db.run(work)

    async def record_heartbeat(self, job_id: uuid.UUID, now: datetime) -> bool:
        require_aware(now)

        def work(conn: Connection) -> bool:
            row = conn.execute(
                """
                UPDATE execution_jobs SET last_heartbeat_at = %s
                WHERE id = %s AND status IN ('running', 'cancelling')
                RETURNING id
                """,
                (now, job_id),
            ).fetchone()
            return row is not None

        return await self._db.run(work)

    async def apply_run_event(
        self,
        run_id: uuid.UUID,
        event: RunEvent,
        now: datetime,
        *,
        reason: str | None = None,
        cancelled_by: str | None = None,
    ) -> RunStatus | None:
        require_aware(now)
        return await self._db.run(
            partial(
                run_event_locked,
                run_id=run_id,
                event=event,
                now=now,
                reason=reason,
                cancelled_by=cancelled_by,
            )
        )

    async def complete_run_if_all_jobs_terminal(
        self, run_id: uuid.UUID, now: datetime
    ) -> RunFinalization | None:
        require_aware(now)

        def work(conn: Connection) -> RunFinalization | None:
            run = conn.execute(
                """
                SELECT status, check_mode, drift_detected, started_at, failure_reason
                FROM execution_runs WHERE id = %s FOR NO KEY UPDATE
                """,
                (run_id,),
            ).fetchone()
            if run is None:
                return None
            status = RunStatus(run["status"])
            if is_run_terminal(status):
                return None
            rows = conn.execute(
                "SELECT name, status FROM execution_jobs WHERE run_id = %s", (run_id,)
            ).fetchall()
            outcome = completion_from_rows(
                ((row["name"], row["status"]) for row in rows),
                CheckMode(run["check_mode"]),
                run["drift_detected"],
            )
            if outcome is None or not can_run_transition(status, completion_event(outcome)):
                return None
            final = finalize_run(outcome, run["started_at"], now, run["failure_reason"])
            conn.execute(
                """
                UPDATE execution_runs SET
                    status = %(status)s, completed_at = %(completed_at)s, duration_ms = %(duration_ms)s,
                    failure_reason = %(failure_reason)s, updated_at = %(completed_at)s,
                    log_bytes = (SELECT COALESCE(sum(log_bytes), 0) FROM execution_jobs WHERE run_id = %(id)s)
                WHERE id = %(id)s
                """,
                {
                    "status": final.status.value,
                    "completed_at": final.completed_at,
                    "duration_ms": final.duration_ms,
                    "failure_reason": final.failure_reason,
                    "id": run_id,
                },
            )
            return final

        return await self._db.run(work)

    async def upsert_step(self, step: StepRecord) -> bool:
        params = {
            "run_id": step.run_id,
            "job_id": step.job_id,
            "step_index": step.step_index,
            "step_name": step.step_name,
            "status": step.status.value,
            "step_type": step.step_type,
            "started_at": step.started_at,
            "completed_at": step.completed_at,
            "duration_ms": step.duration_ms,
            "exit_code": step.exit_code,
            "error_message": step.error_message,
            "log_path": step.log_path,
            "secrets_accessed": list(step.secrets_accessed),
            "check_outcome": None if step.check_outcome is None else step.check_outcome.value,
            "drift_summary": step.drift_summary,
            "drift": to_jsonb(step.drift),
            "concurrency_kind": None if step.concurrency_kind is None else step.concurrency_kind.value,
            "group_id": step.group_id,
            "log_bytes": step.log_bytes,
            "updated_at": step.updated_at,
        }

        def work(conn: Connection) -> bool:
            try:
                with conn.transaction():
                    return conn.execute(_UPSERT_STEP, params).fetchone() is not None
            except pg_errors.ForeignKeyViolation as exc:
                raise JobNotFoundError(step.job_id) from exc

        return await self._db.run(work)

    async def list_steps(self, job_id: uuid.UUID) -> tuple[StepRecord, ...]:
        def work(conn: Connection) -> tuple[StepRecord, ...]:
            rows = conn.execute(
                "SELECT * FROM execution_steps WHERE job_id = %s ORDER BY step_index", (job_id,)
            ).fetchall()
            return tuple(_step_record(row) for row in rows)

        return await self._db.run(work)
