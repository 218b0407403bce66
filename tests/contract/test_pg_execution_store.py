"""ExecutionStore on real PostgreSQL: run creation, guarded transitions, the needs gate, completion, steps."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import trio

from kici.adapters.postgres import channels
from kici.adapters.postgres.database import Connection, Database
from kici.domain.execution.machine import InvalidTransitionError
from kici.domain.execution.needs import (
    STUCK_REASON,
    WAVE_HALTED_REASON,
    GroupNeed,
    JobNeedsSpec,
    NameNeed,
    NotTerminalError,
    WaveConfig,
    insert_edges_for_run,
)
from kici.domain.execution.run_status import RunEvent
from kici.domain.execution.states import (
    CheckMode,
    CheckStepOutcome,
    Event,
    ExecutionState,
    JobStatus,
    RunStatus,
    StepStatus,
)
from kici.domain.lockfile.frozen import FrozenDict, freeze_json
from kici.domain.store import (
    DuplicateRunError,
    ForceStatusCommand,
    InvalidStoreInputError,
    JobEventCommand,
    JobNotFoundError,
    NewJob,
    NewRun,
    RunNotFoundError,
    StepRecord,
)
from kici.testing.postgres import PgStores, PgTestDatabase
from tests.contract.test_orch_engine_hub import running_engine

pytestmark = pytest.mark.pg

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
S = JobStatus


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def new_run(**kwargs: object) -> NewRun:
    return NewRun(run_id=uuid.uuid4(), workflow_name="ci", created_at=NOW, **kwargs)  # type: ignore[arg-type]


def job(name: str, *needs: str | NameNeed | GroupNeed, **kwargs: object) -> NewJob:
    parsed = [NameNeed(n) if isinstance(n, str) else n for n in needs]
    return NewJob(spec=JobNeedsSpec(name, parsed, **kwargs))  # type: ignore[arg-type]


@pytest.fixture
def listener(pg_database: PgTestDatabase) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(pg_database.conninfo, autocommit=True) as conn:
        conn.execute(f"LISTEN {channels.JOB_READY}; LISTEN {channels.DISPATCH}")
        yield conn


def received(conn: psycopg.Connection[tuple[object, ...]], count: int = 1) -> list[tuple[str, str]]:
    """The next ``count`` notifications (fewer if they do not come within 2 s)."""
    return [(n.channel, n.payload) for n in conn.notifies(timeout=2, stop_after=count)]


async def ids(stores: PgStores, run_id: uuid.UUID) -> dict[str, uuid.UUID]:
    return {j.name: j.job_id for j in await stores.execution.list_jobs(run_id)}


async def statuses(stores: PgStores, run_id: uuid.UUID) -> dict[str, JobStatus]:
    return {j.name: j.status for j in await stores.execution.list_jobs(run_id)}


async def drive(stores: PgStores, job_id: uuid.UUID, *steps: tuple[ExecutionState, Event]) -> None:
    for expected, event in steps:
        result = await stores.execution.apply_job_event(
            JobEventCommand(job_id=job_id, expected=expected, event=event, now=NOW)
        )
        assert result.applied, (expected, event, result)


TO_RUNNING = ((ExecutionState.PENDING, Event.ENQUEUE), (ExecutionState.QUEUED, Event.START))


# -- creation


@pytest.mark.feature("EXE-03", "EXE-16")
async def test_create_run_writes_jobs_edges_and_dispatches_roots(
    pg_stores: PgStores, listener: psycopg.Connection[tuple[object, ...]]
) -> None:
    run = new_run(routing_key="github:1", repo_identifier="o/r", check_mode=CheckMode.CHECK)
    jobs = [job("build"), job("lint"), job("test", "build", NameNeed("lint", {S.SUCCESS, S.SKIPPED}))]
    created = await pg_stores.execution.create_run(run, jobs)
    assert [g.name for g in created.gate.dispatched] == ["build", "lint"]
    assert set(created.job_ids) == {"build", "lint", "test"}
    assert received(listener) == [(channels.JOB_READY, str(run.run_id))]

    stored = await pg_stores.execution.get_run(run.run_id)
    assert stored is not None
    assert (stored.status, stored.check_mode, stored.routing_key, stored.created_at) == (
        RunStatus.PENDING,
        CheckMode.CHECK,
        "github:1",
        NOW,
    )
    rows = await pg_stores.execution.list_jobs(run.run_id)
    assert [(r.name, r.status, r.needs_satisfied, r.ready_at) for r in rows] == [
        ("build", S.PENDING, True, NOW),
        ("lint", S.PENDING, True, NOW),
        ("test", S.PENDING, False, None),
    ]
    edges = await pg_stores.execution.list_edges(run.run_id)
    assert [(e.job_name, e.upstream_name, e.run_on) for e in edges] == [
        ("test", "build", frozenset({S.SUCCESS})),
        ("test", "lint", frozenset({S.SUCCESS, S.SKIPPED})),
    ]


@pytest.mark.feature("EXE-16", "EXE-18")
async def test_fan_out_edges_and_waves_match_the_pure_model(pg_stores: PgStores) -> None:
    specs = [
        JobNeedsSpec("setup"),
        JobNeedsSpec(
            "test", [NameNeed("setup")], fanout=("test (a)", "test (b)", "test (c)"), wave=WaveConfig(2, True)
        ),
        JobNeedsSpec("report", [NameNeed("test", {S.SUCCESS, S.FAILED})]),
    ]
    matrix = FrozenDict({"test (a)": freeze_json({"py": "3.11"}), "test (b)": freeze_json({"py": "3.12"})})
    jobs = [NewJob(spec=specs[0]), NewJob(spec=specs[1], matrix_values=matrix), NewJob(spec=specs[2])]
    run = new_run()
    await pg_stores.execution.create_run(run, jobs)
    model, _ = insert_edges_for_run(specs)
    edges = await pg_stores.execution.list_edges(run.run_id)
    expected = [(e.job, e.upstream, e.run_on) for name in model.jobs for e in model.edges_of(name)]
    assert sorted((e.job_name, e.upstream_name, e.run_on) for e in edges) == sorted(expected)
    rows = {r.name: r for r in await pg_stores.execution.list_jobs(run.run_id)}
    assert [n for n in rows if rows[n].wave_gated] == ["test (c)"]
    assert rows["test (b)"].matrix_values == freeze_json({"py": "3.12"})
    assert rows["test (c)"].matrix_values is None
    assert (
        rows["test (a)"].base_job_name,
        rows["test (a)"].fanout_index,
        rows["test (a)"].wave_max_parallel,
    ) == (
        "test",
        0,
        2,
    )


@pytest.mark.feature("EXE-17")
async def test_a_cycle_in_a_new_run_fails_its_jobs_and_skips_dependents(pg_stores: PgStores) -> None:
    run = new_run()
    created = await pg_stores.execution.create_run(
        run, [job("a", "b"), job("b", "a"), job("c", "a"), job("d")]
    )
    assert sorted(f.name for f in created.gate.failed) == ["a", "b"]
    assert [(s.name, s.reason) for s in created.gate.skipped] == [("c", "upstream_unmet: a (failed)")]
    assert [d.name for d in created.gate.dispatched] == ["d"]
    rows = {r.name: r for r in await pg_stores.execution.list_jobs(run.run_id)}
    assert rows["a"].status is S.FAILED
    assert rows["a"].error_message is not None
    assert rows["a"].error_message.startswith("dependency cycle: ")
    assert rows["c"].completed_at == NOW


@pytest.mark.feature("EXE-03")
async def test_a_run_id_is_created_once(pg_stores: PgStores) -> None:
    run = new_run()
    await pg_stores.execution.create_run(run, [job("a")])
    with pytest.raises(DuplicateRunError):
        await pg_stores.execution.create_run(run, [job("b")])
    assert [j.name for j in await pg_stores.execution.list_jobs(run.run_id)] == ["a"]


@pytest.mark.feature("EXE-21")
async def test_group_needs_hold_the_job_back(pg_stores: PgStores) -> None:
    run = new_run()
    created = await pg_stores.execution.create_run(run, [job("a"), job("b", "a", GroupNeed("g"))])
    a = created.job_ids["a"]
    await drive(pg_stores, a, *TO_RUNNING, (ExecutionState.RUNNING, Event.SUCCEED))
    rows = {r.name: r for r in await pg_stores.execution.list_jobs(run.run_id)}
    assert (rows["b"].status, rows["b"].needs_satisfied, rows["b"].pending_groups) == (
        S.PENDING,
        False,
        ("g",),
    )


# -- transitions


@pytest.mark.feature("EXE-01", "EXE-04")
async def test_enqueue_start_succeed_write_the_lifecycle_columns(
    pg_stores: PgStores, listener: psycopg.Connection[tuple[object, ...]]
) -> None:
    run = new_run()
    created = await pg_stores.execution.create_run(run, [job("a"), job("b", "a")])
    received(listener)
    a = created.job_ids["a"]
    enq = await pg_stores.execution.apply_job_event(
        JobEventCommand(
            job_id=a,
            expected=ExecutionState.PENDING,
            event=Event.ENQUEUE,
            now=later(1),
            queue_expires_at=later(3600),
            request_id="req-1",
        )
    )
    assert (enq.applied, enq.status, enq.gate) == (True, S.QUEUED, None)
    assert received(listener) == [(channels.DISPATCH, str(a))]
    entry = await pg_stores.queue.get_entry(a)
    assert entry is not None
    assert (entry.status.value, entry.expires_at, entry.request_id, entry.enqueued_at) == (
        "pending",
        later(3600),
        "req-1",
        later(1),
    )
    run_row = await pg_stores.execution.get_run(run.run_id)
    assert run_row is not None
    assert (run_row.status, run_row.started_at) == (RunStatus.RUNNING, later(1))

    start = await pg_stores.execution.apply_job_event(
        JobEventCommand(
            job_id=a, expected=ExecutionState.QUEUED, event=Event.START, now=later(2), agent_id="ag"
        )
    )
    assert start.status is S.RUNNING
    row = await pg_stores.execution.get_job(a)
    assert row is not None
    assert (row.started_at, row.last_heartbeat_at, row.agent_id) == (later(2), later(2), "ag")

    done = await pg_stores.execution.apply_job_event(
        JobEventCommand(
            job_id=a,
            expected=ExecutionState.RUNNING,
            event=Event.SUCCEED,
            now=later(5),
            outputs=freeze_json({"build": {"sha": "abc"}}),
        )
    )
    assert done.status is S.SUCCESS
    assert done.gate is not None
    assert [g.name for g in done.gate.dispatched] == ["b"]
    row = await pg_stores.execution.get_job(a)
    assert row is not None
    assert (row.completed_at, row.outputs) == (later(5), freeze_json({"build": {"sha": "abc"}}))
    entry = await pg_stores.queue.get_entry(a)
    assert entry is not None
    assert entry.status.value == "completed"
    assert received(listener) == [(channels.JOB_READY, str(run.run_id))]


@pytest.mark.feature("EXE-01", "EXE-04")
async def test_guards_drop_late_inputs_and_keep_terminal_rows(pg_stores: PgStores) -> None:
    created = await pg_stores.execution.create_run(new_run(), [job("a")])
    a = created.job_ids["a"]
    stale = await pg_stores.execution.apply_job_event(
        JobEventCommand(job_id=a, expected=ExecutionState.QUEUED, event=Event.START, now=NOW)
    )
    assert (stale.applied, stale.status) == (False, S.PENDING)
    await drive(pg_stores, a, *TO_RUNNING, (ExecutionState.RUNNING, Event.FAIL))
    late = await pg_stores.execution.apply_job_event(
        JobEventCommand(job_id=a, expected=ExecutionState.RUNNING, event=Event.SUCCEED, now=later(9))
    )
    assert (late.applied, late.status) == (False, S.FAILED)
    forced = await pg_stores.execution.force_job_status(
        ForceStatusCommand(job_id=a, status=S.TIMED_OUT_STALE, expected=(S.RUNNING,), now=later(9))
    )
    assert (forced.applied, forced.status) == (False, S.FAILED)
    row = await pg_stores.execution.get_job(a)
    assert row is not None
    assert (row.status, row.completed_at) == (S.FAILED, NOW)


@pytest.mark.feature("EXE-01")
async def test_invalid_events_and_unknown_jobs_are_typed_errors(pg_stores: PgStores) -> None:
    created = await pg_stores.execution.create_run(new_run(), [job("a")])
    with pytest.raises(InvalidTransitionError):
        await pg_stores.execution.apply_job_event(
            JobEventCommand(
                job_id=created.job_ids["a"], expected=ExecutionState.PENDING, event=Event.SUCCEED, now=NOW
            )
        )
    with pytest.raises(JobNotFoundError):
        await pg_stores.execution.apply_job_event(
            JobEventCommand(job_id=uuid.uuid4(), expected=ExecutionState.PENDING, event=Event.SKIP, now=NOW)
        )
    with pytest.raises(InvalidStoreInputError):
        JobEventCommand(
            job_id=uuid.uuid4(), expected=ExecutionState.PENDING, event=Event.SKIP, now=datetime(2026, 1, 1)
        )
    with pytest.raises(InvalidStoreInputError):
        ForceStatusCommand(job_id=uuid.uuid4(), status=S.DRIFT_DROPPED, expected=(S.SUCCESS,), now=NOW)
    with pytest.raises(InvalidStoreInputError):
        ForceStatusCommand(job_id=uuid.uuid4(), status=S.RUNNING, expected=(S.PENDING,), now=NOW)


@pytest.mark.feature("EXE-02", "EXE-24")
async def test_forced_status_applies_under_its_guard_and_cascades(pg_stores: PgStores) -> None:
    created = await pg_stores.execution.create_run(new_run(), [job("a"), job("b", "a")])
    a = created.job_ids["a"]
    await drive(pg_stores, a, *TO_RUNNING)
    assert await pg_stores.execution.record_heartbeat(a, later(30))
    forced = await pg_stores.execution.force_job_status(
        ForceStatusCommand(
            job_id=a,
            status=S.TIMED_OUT_STALE,
            expected=(S.RUNNING, S.CANCELLING),
            now=later(200),
            error_message="No heartbeat received for 170s",
        )
    )
    assert (forced.applied, forced.status) == (True, S.TIMED_OUT_STALE)
    assert forced.gate is not None
    assert [(s.name, s.reason) for s in forced.gate.skipped] == [("b", "upstream_unmet: a (timed_out_stale)")]
    row = await pg_stores.execution.get_job(a)
    assert row is not None
    assert (row.error_message, row.last_heartbeat_at, row.completed_at) == (
        "No heartbeat received for 170s",
        later(30),
        later(200),
    )
    assert not await pg_stores.execution.record_heartbeat(a, later(300))
    entry = await pg_stores.queue.get_entry(a)
    assert entry is not None
    assert entry.status.value == "failed"


# -- the gate


@pytest.mark.feature("EXE-16")
async def test_skip_cascades_through_the_graph(pg_stores: PgStores) -> None:
    run = new_run()
    await pg_stores.execution.create_run(
        run,
        [
            job("a"),
            job("b", "a"),
            job("c", "b"),
            job("cleanup", NameNeed("c", {S.SKIPPED})),
            job("notify", NameNeed("a", {S.FAILED, S.TIMED_OUT_STALE})),
        ],
    )
    gate = await pg_stores.execution.on_job_terminal(run.run_id, "a", S.FAILED, later(1))
    assert [(s.name, s.reason) for s in gate.skipped] == [
        ("b", "upstream_unmet: a (failed)"),
        ("c", "upstream_unmet: b (skipped)"),
    ]
    assert [d.name for d in gate.dispatched] == ["notify", "cleanup"]
    assert await statuses(pg_stores, run.run_id) == {
        "a": S.FAILED,
        "b": S.SKIPPED,
        "c": S.SKIPPED,
        "cleanup": S.PENDING,
        "notify": S.PENDING,
    }
    again = await pg_stores.execution.on_job_terminal(run.run_id, "a", S.SUCCESS, later(2))
    assert again.ignored
    assert not again.changed


@pytest.mark.feature("EXE-16")
async def test_a_job_waits_for_every_upstream_and_is_dispatched_once(pg_stores: PgStores) -> None:
    run = new_run()
    await pg_stores.execution.create_run(
        run, [job("a"), job("b"), job("c", "a", NameNeed("b", {S.SUCCESS, S.FAILED}))]
    )
    first = await pg_stores.execution.on_job_terminal(run.run_id, "a", S.SUCCESS, later(1))
    assert first.dispatched == ()
    second = await pg_stores.execution.on_job_terminal(run.run_id, "b", S.FAILED, later(2))
    assert [d.name for d in second.dispatched] == ["c"]
    row = next(j for j in await pg_stores.execution.list_jobs(run.run_id) if j.name == "c")
    assert (row.needs_satisfied, row.ready_at) == (True, later(2))
    replays = await pg_stores.execution.recompute_needs_satisfied(later(3), run.run_id)
    assert [o.dispatched for o in replays] == [()]


@pytest.mark.feature("EXE-16")
async def test_concurrent_upstream_completions_release_the_dependent_exactly_once(
    pg_stores: PgStores,
) -> None:
    for _ in range(5):
        run = new_run()
        names = [f"u{i}" for i in range(6)]
        await pg_stores.execution.create_run(run, [*(job(n) for n in names), job("join", *names)])
        dispatched: list[str] = []

        async def finish(name: str, run_id: uuid.UUID = run.run_id, out: list[str] = dispatched) -> None:
            gate = await pg_stores.execution.on_job_terminal(run_id, name, S.SUCCESS, later(1))
            out.extend(d.name for d in gate.dispatched)

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(finish, name)
        assert dispatched == ["join"]


@pytest.mark.feature("EXE-18")
async def test_waves_release_one_child_per_finished_child_and_fail_fast_skips_the_rest(
    pg_stores: PgStores,
) -> None:
    fan = ("t (a)", "t (b)", "t (c)", "t (d)")
    run = new_run()
    created = await pg_stores.execution.create_run(
        run, [NewJob(spec=JobNeedsSpec("t", fanout=fan, wave=WaveConfig(1, fail_fast=True)))]
    )
    assert [d.name for d in created.gate.dispatched] == ["t (a)"]
    released = await pg_stores.execution.on_job_terminal(run.run_id, "t (a)", S.SUCCESS, later(1))
    assert [d.name for d in released.dispatched] == ["t (b)"]
    halted = await pg_stores.execution.on_job_terminal(run.run_id, "t (b)", S.FAILED, later(2))
    assert [(s.name, s.reason) for s in halted.skipped] == [
        ("t (c)", WAVE_HALTED_REASON),
        ("t (d)", WAVE_HALTED_REASON),
    ]
    assert halted.dispatched == ()


@pytest.mark.feature("EXE-16")
async def test_on_job_terminal_rejects_open_statuses_and_unknown_targets(pg_stores: PgStores) -> None:
    run = new_run()
    await pg_stores.execution.create_run(run, [job("a")])
    with pytest.raises(NotTerminalError):
        await pg_stores.execution.on_job_terminal(run.run_id, "a", S.RUNNING, NOW)
    with pytest.raises(JobNotFoundError):
        await pg_stores.execution.on_job_terminal(run.run_id, "nope", S.SUCCESS, NOW)
    with pytest.raises(RunNotFoundError):
        await pg_stores.execution.on_job_terminal(uuid.uuid4(), "a", S.SUCCESS, NOW)


@pytest.mark.feature("EXE-16", "EXE-17")
async def test_recompute_decides_jobs_whose_hooks_never_ran(pg_stores: PgStores) -> None:
    run = new_run()
    await pg_stores.execution.create_run(
        run, [job("a"), job("b"), job("c", "a"), job("d", "b"), job("e", "c")]
    )

    def crash_before_hooks(conn: Connection) -> None:
        conn.execute(
            """
            UPDATE execution_jobs SET status = CASE name WHEN 'a' THEN 'success' ELSE 'cancelled' END
            WHERE run_id = %s AND name IN ('a', 'b')
            """,
            (run.run_id,),
        )

    await pg_stores.db.run(crash_before_hooks)
    outcomes = await pg_stores.execution.recompute_needs_satisfied(later(1))
    mine = [o for o in outcomes if o.run_id == run.run_id]
    assert len(mine) == 1
    assert [d.name for d in mine[0].dispatched] == ["c"]
    assert [(s.name, s.reason) for s in mine[0].skipped] == [("d", "upstream_unmet: b (cancelled)")]
    ready = await pg_stores.execution.list_ready_jobs(run.run_id)
    assert [r.name for r in ready] == ["c"]


@pytest.mark.feature("EXE-16")
async def test_list_ready_jobs_skips_enqueued_gated_and_closed_runs(pg_stores: PgStores) -> None:
    open_run, closed_run = new_run(), new_run()
    created = await pg_stores.execution.create_run(
        open_run,
        [
            job("a"),
            job("b"),
            NewJob(spec=JobNeedsSpec("w", fanout=("w (1)", "w (2)"), wave=WaveConfig(1, False))),
        ],
    )
    await pg_stores.execution.create_run(closed_run, [job("x")])
    await drive(pg_stores, created.job_ids["a"], (ExecutionState.PENDING, Event.ENQUEUE))
    await pg_stores.execution.apply_run_event(closed_run.run_id, RunEvent.CANCEL_FORCE, NOW)
    ready = await pg_stores.execution.list_ready_jobs()
    assert [(r.run_id, r.name) for r in ready] == [(open_run.run_id, "b"), (open_run.run_id, "w (1)")]


@pytest.mark.feature("EXE-17")
async def test_stuck_jobs_are_failed_before_the_run_completes(pg_stores: PgStores) -> None:
    run = new_run()
    await pg_stores.execution.create_run(run, [job("a"), job("b", "a"), job("c", "b")])

    def lost_hook(conn: Connection) -> None:
        conn.execute(
            "UPDATE execution_jobs SET status = 'success' WHERE run_id = %s AND name = 'a'", (run.run_id,)
        )

    await pg_stores.db.run(lost_hook)
    gate = await pg_stores.execution.fail_stuck_jobs(run.run_id, later(1))
    assert [(f.name, f.reason) for f in gate.failed] == [("b", STUCK_REASON)]
    assert [(s.name, s.reason) for s in gate.skipped] == [("c", "upstream_unmet: b (failed)")]
    final = await pg_stores.execution.complete_run_if_all_jobs_terminal(run.run_id, later(2))
    assert final is not None
    assert final.status is RunStatus.FAILED
    assert (await pg_stores.execution.fail_stuck_jobs(run.run_id, later(3))).failed == ()


@pytest.mark.feature("EXE-14")
async def test_a_graceful_run_cancel_cancels_waiting_jobs_and_lets_running_ones_clean_up(
    pg_stores: PgStores,
) -> None:
    run = new_run()
    created = await pg_stores.execution.create_run(
        run,
        [job("run"), job("queued"), job("after", "run"), job("always", NameNeed("queued", {S.CANCELLED}))],
    )
    await drive(pg_stores, created.job_ids["run"], *TO_RUNNING)
    await drive(pg_stores, created.job_ids["queued"], (ExecutionState.PENDING, Event.ENQUEUE))
    graceful = await pg_stores.execution.cancel_run(
        run.run_id, later(1), graceful=True, reason="Cancelled by user", cancelled_by="alice"
    )
    assert graceful.run_status is RunStatus.CANCELLING
    assert [j.name for j in graceful.cancelling] == ["run"]
    assert [j.name for j in graceful.cancelled] == ["queued", "after", "always"]
    assert graceful.gate.skipped == ()
    assert await statuses(pg_stores, run.run_id) == {
        "run": S.CANCELLING,
        "queued": S.CANCELLED,
        "after": S.CANCELLED,
        "always": S.CANCELLED,
    }
    entry = await pg_stores.queue.get_entry(created.job_ids["queued"])
    assert entry is not None
    assert entry.status.value == "completed"
    forced = await pg_stores.execution.cancel_run(run.run_id, later(2), graceful=False)
    assert (forced.run_status, [j.name for j in forced.cancelled]) == (RunStatus.CANCELLED, ["run"])
    stored = await pg_stores.execution.get_run(run.run_id)
    assert stored is not None
    assert (stored.status, stored.failure_reason, stored.cancelled_by, stored.completed_at) == (
        RunStatus.CANCELLED,
        "Cancelled by user",
        "alice",
        later(2),
    )


# -- runs


@pytest.mark.feature("EXE-03")
async def test_run_completes_from_rows_once_every_job_is_terminal(pg_stores: PgStores) -> None:
    run = new_run()
    created = await pg_stores.execution.create_run(run, [job("a"), job("b"), job("c", "b")])
    await drive(pg_stores, created.job_ids["a"], *TO_RUNNING)
    assert await pg_stores.execution.complete_run_if_all_jobs_terminal(run.run_id, later(1)) is None
    await drive(pg_stores, created.job_ids["a"], (ExecutionState.RUNNING, Event.SUCCEED))
    await drive(
        pg_stores,
        created.job_ids["b"],
        (ExecutionState.PENDING, Event.ENQUEUE),
        (ExecutionState.QUEUED, Event.FAIL),
    )
    final = await pg_stores.execution.complete_run_if_all_jobs_terminal(run.run_id, later(61))
    assert final is not None
    assert (final.status, final.failure_reason, final.duration_ms) == (
        RunStatus.FAILED,
        "Failed jobs: b",
        61_000,
    )
    stored = await pg_stores.execution.get_run(run.run_id)
    assert stored is not None
    assert (stored.status, stored.completed_at, stored.duration_ms) == (RunStatus.FAILED, later(61), 61_000)
    assert await pg_stores.execution.complete_run_if_all_jobs_terminal(run.run_id, later(99)) is None


@pytest.mark.feature("EXE-03")
async def test_run_events_follow_the_run_table_and_keep_the_first_reason(pg_stores: PgStores) -> None:
    run = new_run()
    created = await pg_stores.execution.create_run(run, [job("a")])
    assert await pg_stores.execution.apply_run_event(run.run_id, RunEvent.RESUME, NOW) is None
    assert (
        await pg_stores.execution.apply_run_event(run.run_id, RunEvent.JOB_QUEUED, later(1))
        is RunStatus.RUNNING
    )
    assert (
        await pg_stores.execution.apply_run_event(
            run.run_id, RunEvent.CANCEL_GRACEFUL, later(2), reason="workflow_timeout", cancelled_by="system"
        )
        is RunStatus.CANCELLING
    )
    await pg_stores.execution.on_job_terminal(run.run_id, "a", S.CANCELLED, later(3))
    final = await pg_stores.execution.complete_run_if_all_jobs_terminal(run.run_id, later(4))
    assert final is not None
    assert (final.status, final.failure_reason, final.duration_ms) == (
        RunStatus.CANCELLED,
        "workflow_timeout",
        3000,
    )
    stored = await pg_stores.execution.get_run(run.run_id)
    assert stored is not None
    assert stored.cancelled_by == "system"
    assert created.job_ids


@pytest.mark.feature("EXE-03")
async def test_a_run_without_jobs_never_completes(pg_stores: PgStores) -> None:
    run = new_run()
    await pg_stores.execution.create_run(run, [])
    assert await pg_stores.execution.complete_run_if_all_jobs_terminal(run.run_id, later(1)) is None


@pytest.mark.feature("EXE-03", "EXE-27")
async def test_open_runs_are_listed_oldest_first_until_they_complete(pg_stores: PgStores) -> None:
    older = NewRun(run_id=uuid.uuid4(), workflow_name="ci", created_at=NOW)
    newer = NewRun(run_id=uuid.uuid4(), workflow_name="ci", created_at=later(5))
    done = NewRun(run_id=uuid.uuid4(), workflow_name="ci", created_at=later(1))
    await pg_stores.execution.create_run(newer, [job("a")])
    await pg_stores.execution.create_run(older, [job("a")])
    finished = await pg_stores.execution.create_run(done, [job("a")])
    await pg_stores.execution.apply_run_event(older.run_id, RunEvent.JOB_QUEUED, later(2))
    await drive(pg_stores, finished.job_ids["a"], *TO_RUNNING, (ExecutionState.RUNNING, Event.SUCCEED))
    assert await pg_stores.execution.complete_run_if_all_jobs_terminal(done.run_id, later(3)) is not None
    listed = await pg_stores.execution.list_open_runs()
    assert [(r.run_id, r.status) for r in listed] == [
        (older.run_id, RunStatus.RUNNING),
        (newer.run_id, RunStatus.PENDING),
    ]


@pytest.mark.feature("EXE-03", "EXE-27", "PRO-17")
async def test_the_startup_sweep_completes_a_run_left_open_by_a_crash(
    pg_database: PgTestDatabase, pg_db: Database
) -> None:
    """The node died after the last job's terminal write and before the run's completion."""
    stores = PgStores.over(pg_db)
    left_open = new_run()
    waiting = NewRun(run_id=uuid.uuid4(), workflow_name="ci", created_at=later(1))
    created = await stores.execution.create_run(left_open, [job("a"), job("b", "a")])
    await stores.execution.create_run(waiting, [job("later")])
    await drive(stores, created.job_ids["a"], *TO_RUNNING, (ExecutionState.RUNNING, Event.SUCCEED))
    await drive(stores, created.job_ids["b"], *TO_RUNNING, (ExecutionState.RUNNING, Event.SUCCEED))
    assert [r.run_id for r in await stores.execution.list_open_runs()] == [
        left_open.run_id,
        waiting.run_id,
    ]
    async with running_engine(pg_database, pg_db) as engine:
        assert await engine.wait_run(left_open.run_id, RunStatus.SUCCESS) is RunStatus.SUCCESS
        assert [r.run_id for r in await stores.execution.list_open_runs()] == [waiting.run_id]


# -- steps


@pytest.mark.feature("EXE-05")
async def test_step_rows_are_keyed_merged_and_frozen_once_terminal(pg_stores: PgStores) -> None:
    run = new_run()
    created = await pg_stores.execution.create_run(run, [job("a")])
    a = created.job_ids["a"]

    def step(index: int, status: StepStatus, **kwargs: object) -> StepRecord:
        return StepRecord(
            run_id=run.run_id,
            job_id=a,
            step_index=index,
            step_name=f"s{index}",
            status=status,
            updated_at=NOW,
            **kwargs,
        )  # type: ignore[arg-type]

    assert await pg_stores.execution.upsert_step(
        step(1, StepStatus.RUNNING, started_at=later(1), secrets_accessed=["K"])
    )
    assert await pg_stores.execution.upsert_step(step(-1, StepStatus.RUNNING, step_type="init:0"))
    assert await pg_stores.execution.upsert_step(
        step(
            1,
            StepStatus.FAILED,
            completed_at=later(3),
            duration_ms=2000,
            exit_code=2,
            check_outcome=CheckStepOutcome.APPLIED,
        )
    )
    assert not await pg_stores.execution.upsert_step(step(1, StepStatus.SUCCESS, completed_at=later(4)))
    rows = await pg_stores.execution.list_steps(a)
    assert [r.step_index for r in rows] == [-1, 1]
    done = rows[1]
    assert (done.status, done.started_at, done.completed_at, done.exit_code, done.secrets_accessed) == (
        StepStatus.FAILED,
        later(1),
        later(3),
        2,
        ("K",),
    )
    assert done.check_outcome is CheckStepOutcome.APPLIED
    assert rows[0].step_type == "init:0"
    with pytest.raises(JobNotFoundError):
        await pg_stores.execution.upsert_step(
            StepRecord(
                run_id=run.run_id,
                job_id=uuid.uuid4(),
                step_index=0,
                step_name="x",
                status=StepStatus.RUNNING,
                updated_at=NOW,
            )
        )
    with pytest.raises(InvalidStoreInputError):
        step(2, StepStatus.RUNNING, step_type="init:07")
