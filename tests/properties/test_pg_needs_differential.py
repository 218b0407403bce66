"""The PostgreSQL needs gate is the pure model (``kici.domain.execution.needs``) in SQL.

Random runs (fan-outs, waves with fail-fast, dynamic-group needs, cycles are
excluded by the strategy) are created in both, then random terminal statuses
are delivered in random order, duplicates included, to both. After every
delivery the newly ready jobs and the skipped jobs (with reasons, in order)
must be identical, and so must the final state of every job; a final force
cancel must match ``apply_terminals``. Statuses written without their hooks
(a crash, a peer) must be recovered by ``recompute_needs_satisfied`` and the L3
stuck-job backstop exactly as the model does. One database is reused across
examples; each example gets a fresh run id.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import attrs
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kici.adapters.postgres.database import Connection, Database
from kici.adapters.postgres.execution_store import PgExecutionStore
from kici.domain.execution.needs import (
    SchedulerOutcome,
    SchedulerState,
    apply_terminal,
    apply_terminals,
    fail_stuck_jobs,
    insert_edges_for_run,
    parse_run_on_column,
    recompute_needs_satisfied,
)
from kici.domain.execution.states import TERMINAL_JOB_STATES, JobStatus
from kici.domain.store import GateOutcome, JobRecord, NewJob, NewRun
from kici.testing.postgres import PgTestDatabase
from tests.strategies.execution import (
    RunScenario,
    malformed_run_ons,
    run_scenarios,
    terminal_job_statuses,
    whens,
)

pytestmark = pytest.mark.pg

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

_EXAMPLES = min(50, max(25, settings.default.max_examples // 3))
_PG_SETTINGS = settings(
    max_examples=_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def model_view(outcome: SchedulerOutcome) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    return outcome.dispatched, tuple((s.name, s.reason) for s in outcome.skipped)


def pg_view(gate: GateOutcome) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    return tuple(d.name for d in gate.dispatched), tuple((s.name, s.reason) for s in gate.skipped)


def model_rows(state: SchedulerState) -> dict[str, tuple[JobStatus, bool, bool, str | None]]:
    return {
        name: (node.status or JobStatus.PENDING, node.needs_satisfied, node.wave_gated, node.reason)
        for name, node in state.jobs.items()
    }


def pg_rows(rows: tuple[JobRecord, ...]) -> dict[str, tuple[JobStatus, bool, bool, str | None]]:
    return {r.name: (r.status, r.needs_satisfied, r.wave_gated, r.error_message) for r in rows}


async def create_both(store: PgExecutionStore, scenario: RunScenario) -> tuple[uuid.UUID, SchedulerState]:
    run = NewRun(run_id=uuid.uuid4(), workflow_name="diff", created_at=NOW)
    created = await store.create_run(run, [NewJob(spec=spec) for spec in scenario.specs])
    state, outcome = insert_edges_for_run(scenario.specs)
    assert pg_view(created.gate) == model_view(outcome)
    assert tuple(f.name for f in created.gate.failed) == tuple(f.name for f in outcome.failed)
    return run.run_id, state


@pytest.mark.feature("EXE-14", "EXE-16", "EXE-17", "EXE-18", "EXE-21")
@_PG_SETTINGS
@given(scenario=run_scenarios(max_jobs=6), data=st.data())
async def test_terminal_deliveries_decide_the_same_in_sql_and_in_the_model(
    pg_database: PgTestDatabase, scenario: RunScenario, data: st.DataObject
) -> None:
    async with Database.open(pg_database.conninfo, min_size=1, max_size=2) as db:
        store = PgExecutionStore(db)
        run_id, state = await create_both(store, scenario)
        dispatched_ever: list[str] = []
        for _ in range(data.draw(st.integers(0, 14), label="deliveries")):
            open_jobs = [name for name, node in state.jobs.items() if not node.terminal]
            pool = open_jobs if open_jobs and data.draw(st.integers(0, 5)) else list(state.jobs)
            job = data.draw(st.sampled_from(pool), label="job")
            status = data.draw(terminal_job_statuses, label="status")
            state, outcome = apply_terminal(state, job, status)
            gate = await store.on_job_terminal(run_id, job, status, NOW)
            assert pg_view(gate) == model_view(outcome)
            assert gate.ignored == (job in outcome.ignored)
            dispatched_ever.extend(d.name for d in gate.dispatched)
            rows = {r.name: r for r in await store.list_jobs(run_id)}
            for name in (d.name for d in gate.dispatched):
                for edge in state.edges_of(name):
                    assert rows[edge.upstream].status in TERMINAL_JOB_STATES
        assert len(dispatched_ever) == len(set(dispatched_ever))
        assert pg_rows(await store.list_jobs(run_id)) == model_rows(state)
        if data.draw(st.booleans(), label="force cancel"):
            still_open = {name: JobStatus.CANCELLED for name, node in state.jobs.items() if not node.terminal}
            state, outcome = apply_terminals(state, still_open)
            cancellation = await store.cancel_run(run_id, NOW, graceful=False)
            assert tuple(j.name for j in cancellation.cancelled) == tuple(still_open)
            assert pg_view(cancellation.gate) == model_view(outcome)
            assert pg_rows(await store.list_jobs(run_id)) == model_rows(state)


@pytest.mark.feature("EXE-16", "EXE-17")
@_PG_SETTINGS
@given(scenario=run_scenarios(max_jobs=6), data=st.data())
async def test_recompute_after_lost_hooks_decides_the_same_in_sql_and_in_the_model(
    pg_database: PgTestDatabase, scenario: RunScenario, data: st.DataObject
) -> None:
    async with Database.open(pg_database.conninfo, min_size=1, max_size=2) as db:
        store = PgExecutionStore(db)
        run_id, state = await create_both(store, scenario)
        open_jobs = [name for name, node in state.jobs.items() if not node.terminal]
        lost = data.draw(
            st.dictionaries(st.sampled_from(open_jobs), terminal_job_statuses) if open_jobs else st.just({})
        )
        jobs = dict(state.jobs)
        for name, status in lost.items():
            jobs[name] = attrs.evolve(jobs[name], status=status)
        state = attrs.evolve(state, jobs=jobs)

        def write_without_hooks(conn: Connection) -> None:
            for name, status in lost.items():
                conn.execute(
                    "UPDATE execution_jobs SET status = %s WHERE run_id = %s AND name = %s",
                    (status.value, run_id, name),
                )

        await db.run(write_without_hooks)
        state, outcome = recompute_needs_satisfied(state)
        gates = await store.recompute_needs_satisfied(NOW, run_id)
        assert [pg_view(g) for g in gates] == [model_view(outcome)]
        assert pg_rows(await store.list_jobs(run_id)) == model_rows(state)
        state, outcome = fail_stuck_jobs(state)
        stuck = await store.fail_stuck_jobs(run_id, NOW)
        assert [(f.name, f.reason) for f in stuck.failed] == [(f.name, f.reason) for f in outcome.failed]
        assert pg_view(stuck) == model_view(outcome)
        assert pg_rows(await store.list_jobs(run_id)) == model_rows(state)


def _stored_forms(value: object) -> str:
    return json.dumps(value)


run_on_texts = st.one_of(
    whens.map(_stored_forms),
    malformed_run_ons.map(_stored_forms),
    st.text(max_size=20),
    st.sampled_from(
        ['["success",]', "[", '"always"', ' ["failed"] ', '["skipped","skipped"]', "null", "NaN"]
    ),
).filter(lambda text: "\x00" not in text)


@pytest.mark.feature("EXE-16")
@_PG_SETTINGS
@given(texts=st.lists(run_on_texts, min_size=1, max_size=12))
def test_the_sql_run_on_reader_agrees_with_the_model(pg_database: PgTestDatabase, texts: list[str]) -> None:
    with psycopg.connect(pg_database.conninfo) as conn:
        rows = conn.execute(
            "SELECT kici_run_on(t) FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n", (texts,)
        ).fetchall()
    assert [frozenset(JobStatus(s) for s in row[0]) for row in rows] == [
        parse_run_on_column(t) for t in texts
    ]


@pytest.mark.feature("EXE-02")
def test_the_sql_terminal_set_and_status_vocabulary_agree_with_the_domain(
    pg_database: PgTestDatabase,
) -> None:
    with psycopg.connect(pg_database.conninfo) as conn:
        terminal = conn.execute(
            "SELECT s, kici_job_terminal(s) FROM unnest(%s::text[]) AS u(s)", ([s.value for s in JobStatus],)
        ).fetchall()
        checked = conn.execute(
            """
            SELECT pg_get_constraintdef(oid) FROM pg_constraint
            WHERE conrelid = 'execution_jobs'::regclass AND contype = 'c'
              AND pg_get_constraintdef(oid) LIKE '%%status%%'
            """
        ).fetchone()
    assert {s for s, is_terminal in terminal if is_terminal} == {s.value for s in TERMINAL_JOB_STATES}
    assert checked is not None
    assert all(f"'{s.value}'" in checked[0] for s in JobStatus)
