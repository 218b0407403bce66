"""The Platform's telemetry store on a real PostgreSQL (PRO-22): runs, jobs, steps and step logs per org.

The database is a fresh one migrated with the Platform's own migration set (tenancy, telemetry,
accounts); orgs are plain rows. What is proven: frames become rows keyed by org + message ids;
late, repeated and reordered frames never move a status back (for any arrival order the final state
is the one of the greatest (timestamp, rank)); two tenants reporting the same run id get two rows;
log chunks are stored once per messageId, numbered, capped per step, and read back by cursor or line.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import trio
from hypothesis import assume, given
from hypothesis import strategies as st

from kici.adapters.postgres.database import Database
from kici.adapters.postgres.platform_telemetry_store import (
    JOB_RANKS,
    RUN_RANKS,
    PgPlatformTelemetryStore,
    RunFilter,
    StatusChange,
    cap_lines,
    supersedes,
    truncation_line,
)
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
from kici.testing.postgres import PgTestDatabase

pytestmark = pytest.mark.pg

ORG_A = "org-a"
ORG_B = "org-b"
CONN = "conn-1"


@pytest.fixture
def platform_conninfo(pg_platform_database: PgTestDatabase) -> str:
    with psycopg.connect(pg_platform_database.conninfo, autocommit=True) as conn:
        for org in (ORG_A, ORG_B):
            conn.execute("INSERT INTO orgs (id, name) VALUES (%s, %s)", (org, f"name-{org}"))
    return pg_platform_database.conninfo


@pytest.fixture
async def store(platform_conninfo: str) -> AsyncIterator[PgPlatformTelemetryStore]:
    async with Database.open(platform_conninfo, min_size=1, max_size=4) as db:
        yield PgPlatformTelemetryStore(db, max_step_log_lines=10, max_step_log_bytes=200)


def status(run_id: str, state: RunState, ts: int, **extra: Any) -> ExecutionStatus:
    return ExecutionStatus(
        message_id=str(uuid.uuid4()),
        run_id=run_id,
        workflow_name="ci",
        status=state,
        started_at=1_000,
        timestamp=ts,
        **extra,
    )


def job_status(run_id: str, job_id: str, state: JobState, ts: int, **extra: Any) -> JobStatusForward:
    return JobStatusForward(
        message_id=str(uuid.uuid4()),
        run_id=run_id,
        job_id=job_id,
        job_name="build",
        status=state,
        timestamp=ts,
        **extra,
    )


def step_status(run_id: str, job_id: str, index: int, state: StepState, ts: int) -> StepStatusForward:
    return StepStatusForward(
        message_id=str(uuid.uuid4()),
        run_id=run_id,
        job_id=job_id,
        job_name="build",
        step_index=index,
        step_name=f"step {index}",
        state=state,
        timestamp=ts,
    )


def chunk(run_id: str, job_id: str, step: int, lines: list[str], message_id: str | None = None) -> LogChunk:
    return LogChunk(
        message_id=message_id or str(uuid.uuid4()),
        run_id=run_id,
        job_id=job_id,
        step_index=step,
        lines=lines,
        timestamp=5_000,
    )


# --- pure rules ----------------------------------------------------------------------------------


@pytest.mark.feature("PRO-22")
def test_supersedes_orders_by_timestamp_then_rank() -> None:
    assert supersedes(10, 0, None, None)
    assert supersedes(11, 0, 10, 9)
    assert not supersedes(9, 9, 10, 0)
    assert supersedes(10, 9, 10, 2)
    assert not supersedes(10, 2, 10, 9)
    assert supersedes(10, 2, 10, 2)


@pytest.mark.feature("PRO-22")
def test_every_terminal_state_outranks_every_live_one() -> None:
    terminal = {RunState.SUCCESS, RunState.FAILED, RunState.CANCELLED}
    assert min(RUN_RANKS[s] for s in terminal) > max(RUN_RANKS[s] for s in RunState if s not in terminal)
    assert JOB_RANKS[JobState.RUNNING] == JOB_RANKS[JobState.RECOVERING]


@pytest.mark.feature("PRO-22")
@given(
    lines=st.lists(st.text(max_size=30), max_size=30),
    line_count=st.integers(0, 12),
    byte_count=st.integers(0, 250),
    max_lines=st.integers(1, 12),
    max_bytes=st.integers(1, 250),
)
def test_cap_lines_keeps_a_prefix_then_one_truncation_line(
    lines: list[str], line_count: int, byte_count: int, max_lines: int, max_bytes: int
) -> None:
    assume(line_count <= max_lines and byte_count <= max_bytes)  # a step never holds more untruncated
    plan = cap_lines(
        lines,
        line_count=line_count,
        byte_count=byte_count,
        truncated=False,
        max_lines=max_lines,
        max_bytes=max_bytes,
    )
    marker = truncation_line(max_lines, max_bytes)
    if plan.truncated:
        kept = list(plan.stored[:-1])
        assert plan.stored[-1] == marker
        assert kept == lines[: len(kept)]
        assert plan.dropped == len(lines) - len(kept)
        assert plan.dropped >= 1
    else:
        assert list(plan.stored) == lines
        assert plan.dropped == 0
        assert line_count + len(lines) <= max_lines
    assert plan.byte_count == sum(len(line.encode()) for line in plan.stored)
    kept = list(plan.stored[:-1] if plan.truncated else plan.stored)
    assert line_count + len(kept) <= max_lines
    assert byte_count + sum(len(line.encode()) for line in kept) <= max_bytes or not kept
    after = cap_lines(
        ["more"], line_count=0, byte_count=0, truncated=True, max_lines=max_lines, max_bytes=max_bytes
    )
    assert after.stored == ()
    assert after.dropped == 1


# --- runs ------------------------------------------------------------------------------------------


@pytest.mark.feature("PRO-22")
async def test_execution_status_creates_then_updates_the_run(store: PgPlatformTelemetryStore) -> None:
    first = await store.apply_execution_status(ORG_A, CONN, status("r1", RunState.RUNNING, 2_000, sha="abc"))
    assert first == StatusChange(created=True, changed=True)
    again = await store.apply_execution_status(ORG_A, "conn-2", status("r1", RunState.SUCCESS, 3_000))
    assert again == StatusChange(created=False, changed=True)
    run = await store.get_run(ORG_A, "r1")
    assert run is not None
    assert (run.status, run.status_ts, run.sha, run.connection_id) == ("success", 3_000, "abc", "conn-2")


@pytest.mark.feature("PRO-22")
async def test_older_status_after_newer_does_not_regress(store: PgPlatformTelemetryStore) -> None:
    await store.apply_execution_status(ORG_A, CONN, status("r1", RunState.SUCCESS, 3_000, completed_at=3_000))
    late = await store.apply_execution_status(
        ORG_A, CONN, status("r1", RunState.RUNNING, 2_000, commit_message="fix")
    )
    assert late == StatusChange(created=False, changed=False)
    run = await store.get_run(ORG_A, "r1")
    assert run is not None
    assert (run.status, run.status_ts, run.completed_at) == ("success", 3_000, 3_000)
    assert run.commit_message == "fix", "a late frame still fills fields nobody reported yet"
    repeat = await store.apply_execution_status(ORG_A, CONN, status("r1", RunState.SUCCESS, 3_000))
    assert repeat == StatusChange(created=False, changed=False)


@pytest.mark.feature("PRO-22")
async def test_same_millisecond_terminal_state_wins_in_any_order(store: PgPlatformTelemetryStore) -> None:
    await store.apply_execution_status(ORG_A, CONN, status("r1", RunState.SUCCESS, 2_000))
    await store.apply_execution_status(ORG_A, CONN, status("r1", RunState.RUNNING, 2_000))
    run = await store.get_run(ORG_A, "r1")
    assert run is not None
    assert run.status == "success"


REPORT_SETS = [
    [(RunState.PENDING, 1), (RunState.RUNNING, 2), (RunState.SUCCESS, 2), (RunState.CANCELLING, 3)],
    [(RunState.CANCELLED, 4), (RunState.FAILED, 5), (RunState.RUNNING, 6), (RunState.RUNNING, 5)],
    [(RunState.PENDING, 7), (RunState.CANCELLING, 7), (RunState.SUCCESS, 6), (RunState.FAILED, 7)],
]


@pytest.mark.feature("PRO-22")
@pytest.mark.parametrize("reports", REPORT_SETS)
async def test_final_run_state_is_independent_of_arrival_order(
    store: PgPlatformTelemetryStore, reports: list[tuple[RunState, int]]
) -> None:
    best = max((ts, RUN_RANKS[state]) for state, ts in reports)
    winners = {state for state, ts in reports if (ts, RUN_RANKS[state]) == best}
    for order in itertools.permutations(reports):
        run_id = str(uuid.uuid4())
        for state, ts in order:
            await store.apply_execution_status(ORG_A, CONN, status(run_id, state, ts))
        run = await store.get_run(ORG_A, run_id)
        assert run is not None
        assert run.status_ts == best[0]
        assert run.status in winners


@pytest.mark.feature("PRO-22")
async def test_tenants_reporting_one_run_id_get_separate_rows(store: PgPlatformTelemetryStore) -> None:
    await store.apply_execution_status(ORG_A, CONN, status("shared", RunState.RUNNING, 2_000, sha="aaa"))
    created = await store.apply_execution_status(
        ORG_B, "conn-b", status("shared", RunState.FAILED, 9_000, sha="bbb")
    )
    assert created.created, "org B's orchestrator does not touch org A's row"
    a = await store.get_run(ORG_A, "shared")
    b = await store.get_run(ORG_B, "shared")
    assert a is not None
    assert b is not None
    assert (a.status, a.sha) == ("running", "aaa")
    assert (b.status, b.sha) == ("failed", "bbb")
    assert await store.run_orgs([ORG_A], "shared") == [ORG_A]
    assert await store.run_orgs([ORG_A, ORG_B], "shared") == [ORG_A, ORG_B]
    assert await store.run_orgs([], "shared") == []
    assert await store.run_orgs(["org-c"], "shared") == []


@pytest.mark.feature("PRO-22")
async def test_list_runs_filters_pages_and_stays_in_the_given_orgs(store: PgPlatformTelemetryStore) -> None:
    for i in range(5):
        message = ExecutionStatus(
            message_id=str(uuid.uuid4()),
            run_id=f"a{i}",
            workflow_name="ci" if i % 2 == 0 else "deploy",
            status=RunState.SUCCESS if i < 3 else RunState.RUNNING,
            started_at=1_000 + i,
            timestamp=2_000,
            repo_identifier="acme/app",
            ref="refs/heads/main" if i != 4 else "feature",
        )
        await store.apply_execution_status(ORG_A, CONN, message)
    await store.apply_execution_status(ORG_B, CONN, status("b0", RunState.SUCCESS, 2_000))
    runs, total = await store.list_runs([ORG_A], RunFilter(), limit=2, offset=0)
    assert total == 5
    assert [r.run_id for r in runs] == ["a4", "a3"]
    runs, _ = await store.list_runs([ORG_A], RunFilter(), limit=2, offset=4)
    assert [r.run_id for r in runs] == ["a0"]
    runs, total = await store.list_runs(
        [ORG_A], RunFilter(statuses=("success",), workflow="ci"), limit=10, offset=0
    )
    assert ([r.run_id for r in runs], total) == (["a2", "a0"], 2)
    runs, _ = await store.list_runs([ORG_A], RunFilter(branch="main"), limit=10, offset=0)
    assert {r.run_id for r in runs} == {"a0", "a1", "a2", "a3"}
    runs, _ = await store.list_runs([ORG_A], RunFilter(branch="feature", repo="acme/app"), limit=10, offset=0)
    assert [r.run_id for r in runs] == ["a4"]
    runs, total = await store.list_runs([ORG_B], RunFilter(), limit=10, offset=0)
    assert ([r.run_id for r in runs], total) == (["b0"], 1)


# --- jobs and steps --------------------------------------------------------------------------------


@pytest.mark.feature("PRO-22")
async def test_job_status_latest_wins_and_fields_merge(store: PgPlatformTelemetryStore) -> None:
    created = await store.apply_job_status(
        ORG_A,
        CONN,
        job_status("r1", "j1", JobState.RUNNING, 2_000, agent_id="ag-1", runs_on_labels=["linux"]),
    )
    assert created == StatusChange(created=True, changed=True)
    done = await store.apply_job_status(
        ORG_A, CONN, job_status("r1", "j1", JobState.SUCCESS, 4_000, completed_at=4_000, duration_ms=2_000.0)
    )
    assert done.changed
    late = await store.apply_job_status(ORG_A, CONN, job_status("r1", "j1", JobState.QUEUED, 1_000))
    assert not late.changed
    [job] = await store.list_jobs(ORG_A, "r1")
    assert (job.status, job.status_ts, job.agent_id, job.runs_on_labels) == (
        "success",
        4_000,
        "ag-1",
        ("linux",),
    )
    assert (job.completed_at, job.duration_ms) == (4_000, 2_000.0)
    assert await store.list_jobs(ORG_B, "r1") == []


@pytest.mark.feature("PRO-22")
async def test_a_step_before_its_job_leaves_a_job_without_status(store: PgPlatformTelemetryStore) -> None:
    change = await store.apply_step_status(ORG_A, CONN, step_status("r1", "j1", 0, StepState.RUNNING, 2_000))
    assert change.created
    [job] = await store.list_jobs(ORG_A, "r1")
    assert (job.job_name, job.status) == ("build", None)
    first_status = await store.apply_job_status(ORG_A, CONN, job_status("r1", "j1", JobState.RUNNING, 1_500))
    assert first_status == StatusChange(created=True, changed=True), "a placeholder's first status is new"
    await store.apply_step_status(ORG_A, CONN, step_status("r1", "j1", 0, StepState.SUCCESS, 3_000))
    late = await store.apply_step_status(ORG_A, CONN, step_status("r1", "j1", 0, StepState.RUNNING, 2_500))
    assert not late.changed
    [step] = await store.list_steps(ORG_A, "r1")
    assert (step.step_index, step.step_name, step.state, step.status_ts) == (0, "step 0", "success", 3_000)


@pytest.mark.feature("PRO-22")
async def test_nul_characters_from_the_wire_are_stored(store: PgPlatformTelemetryStore) -> None:
    message = StepStatusForward(
        message_id="m",
        run_id="r1",
        job_id="j1",
        job_name="bu\x00ild",
        step_index=0,
        step_name="st\x00ep",
        state=StepState.FAILED,
        timestamp=2_000,
        data={"out\x00": ["a\x00b", {"k": "\x00"}]},
        secrets_accessed=["TOK\x00EN"],
    )
    await store.apply_step_status(ORG_A, CONN, message)
    [step] = await store.list_steps(ORG_A, "r1")
    assert step.step_name == "st\ufffdep"
    assert step.data == {"out\ufffd": ["a\ufffdb", {"k": "\ufffd"}]}
    assert step.secrets_accessed == ("TOK\ufffdEN",)


@pytest.mark.feature("PRO-22")
async def test_state_replay_upserts_runs_and_jobs_without_regressing(store: PgPlatformTelemetryStore) -> None:
    await store.apply_job_status(ORG_A, CONN, job_status("r1", "j1", JobState.SUCCESS, 9_000))
    replay = StateReplay(
        message_id="rp",
        timestamp=5_000,
        runs=[
            RunSnapshot(
                run_id="r1",
                workflow_name="ci",
                status=RunState.RUNNING,
                started_at=1_000,
                job_count=2,
                routing_key="github:1",
                jobs=[
                    JobSnapshot(job_id="j1", job_name="build", status="running"),
                    JobSnapshot(job_id="j2", job_name="test", status="queued", agent_id="ag"),
                ],
            )
        ],
    )
    outcome = await store.apply_state_replay(ORG_A, CONN, replay)
    assert [change.created for _, change in outcome.runs] == [True]
    assert [(job.job_id, change.changed) for _, job, change in outcome.jobs] == [("j1", False), ("j2", True)]
    run = await store.get_run(ORG_A, "r1")
    assert run is not None
    assert (run.status, run.routing_key, run.job_count) == ("running", "github:1", 2)
    jobs = {job.job_id: job for job in await store.list_jobs(ORG_A, "r1")}
    assert (jobs["j1"].status, jobs["j2"].status, jobs["j2"].agent_id) == ("success", "queued", "ag")


# --- logs ------------------------------------------------------------------------------------------


@pytest.mark.feature("PRO-22")
async def test_log_chunks_are_numbered_and_stored_once_per_message_id(
    store: PgPlatformTelemetryStore,
) -> None:
    first = await store.append_log_chunk(ORG_A, CONN, chunk("r1", "j1", 0, ["a", "b"], message_id="m1"))
    second = await store.append_log_chunk(ORG_A, CONN, chunk("r1", "j1", 1, ["x"], message_id="m2"))
    third = await store.append_log_chunk(ORG_A, CONN, chunk("r1", "j1", 0, ["c\x00"], message_id="m3"))
    assert [(a.sequence, a.first_line, a.line_count) for a in (first, second, third)] == [
        (1, 0, 2),
        (2, 0, 1),
        (3, 2, 3),
    ]
    replayed = await store.append_log_chunk(ORG_A, CONN, chunk("r1", "j1", 0, ["a", "b"], message_id="m1"))
    assert replayed.duplicate
    assert replayed.sequence == 1
    page = await store.read_log_chunks(ORG_A, "r1", "j1")
    assert [(c.sequence, c.step_index, c.lines) for c in page.chunks] == [
        (1, 0, ("a", "b")),
        (2, 1, ("x",)),
        (3, 0, ("c\ufffd",)),
    ]
    assert page.next_cursor == 3
    step0 = await store.read_log_chunks(ORG_A, "r1", "j1", after=1, step_index=0)
    assert [c.sequence for c in step0.chunks] == [3]
    empty = await store.read_log_chunks(ORG_A, "r1", "j1", after=3)
    assert (empty.chunks, empty.next_cursor) == ((), 3)
    assert (await store.read_log_chunks(ORG_B, "r1", "j1")).chunks == ()


@pytest.mark.feature("PRO-22")
async def test_prepare_lines_are_stored_under_step_minus_one(store: PgPlatformTelemetryStore) -> None:
    """Clone, load and rule lines come before the first step (10 §3); the Platform keeps them too."""
    await store.append_log_chunk(ORG_A, CONN, chunk("r1", "j1", -1, ["cloning"], message_id="p1"))
    page = await store.read_log_chunks(ORG_A, "r1", "j1", step_index=-1)
    assert [(c.step_index, c.lines) for c in page.chunks] == [(-1, ("cloning",))]
    assert (await store.read_step_lines(ORG_A, "r1", "j1", -1)).lines == ("cloning",)


@pytest.mark.feature("PRO-22")
async def test_read_step_lines_resumes_inside_a_chunk(store: PgPlatformTelemetryStore) -> None:
    for lines in (["0", "1", "2"], ["3", "4"], ["5"]):
        await store.append_log_chunk(ORG_A, CONN, chunk("r1", "j1", 2, lines))
    for after in range(7):
        page = await store.read_step_lines(ORG_A, "r1", "j1", 2, after_line=after, limit=100)
        assert page.lines == tuple(str(n) for n in range(after, 6))
        assert page.line_count == 6
    limited = await store.read_step_lines(ORG_A, "r1", "j1", 2, after_line=1, limit=3)
    assert limited.lines == ("1", "2", "3")
    assert (await store.read_step_lines(ORG_A, "r1", "j1", 9)).line_count == 0


@pytest.mark.feature("PRO-22")
async def test_step_logs_are_capped_with_one_truncation_line(store: PgPlatformTelemetryStore) -> None:
    appended = []
    for start in range(0, 14, 4):
        lines = [f"line {n}" for n in range(start, start + 4)]
        appended.append(await store.append_log_chunk(ORG_A, CONN, chunk("r1", "j1", 0, lines)))
    marker = truncation_line(10, 200)
    assert [len(a.lines) for a in appended] == [4, 4, 3, 0]
    assert appended[2].lines[-1] == marker
    assert [a.dropped for a in appended] == [0, 0, 2, 4]
    stored = await store.read_step_lines(ORG_A, "r1", "j1", 0)
    assert stored.lines == (*[f"line {n}" for n in range(10)], marker)
    await store.apply_step_status(ORG_A, CONN, step_status("r1", "j1", 0, StepState.SUCCESS, 9_000))
    [step] = await store.list_steps(ORG_A, "r1")
    assert (step.log_lines, step.log_dropped_lines, step.log_truncated) == (11, 6, True)
    other = await store.append_log_chunk(ORG_A, CONN, chunk("r1", "j1", 1, ["fresh"]))
    assert other.lines == ("fresh",), "the cap is per step"


@pytest.mark.feature("PRO-22")
async def test_byte_cap_counts_utf8_bytes(store: PgPlatformTelemetryStore) -> None:
    wide = "é" * 60  # 120 bytes
    appended = await store.append_log_chunk(ORG_A, CONN, chunk("r1", "j1", 0, [wide, wide]))
    assert appended.lines == (wide, truncation_line(10, 200))
    assert appended.dropped == 1


@pytest.mark.feature("PRO-22")
async def test_concurrent_first_writers_of_one_run_both_land(store: PgPlatformTelemetryStore) -> None:
    states = [RunState.RUNNING, RunState.SUCCESS, RunState.PENDING, RunState.CANCELLING]
    async with trio.open_nursery() as nursery:
        for ts, state in zip(itertools.count(2_000, 10), states, strict=False):
            nursery.start_soon(store.apply_execution_status, ORG_A, CONN, status("race", state, ts))
    run = await store.get_run(ORG_A, "race")
    assert run is not None
    assert (run.status, run.status_ts) == ("cancelling", 2_030)
