"""DispatchQueue on real PostgreSQL: FIFO with a chooser, SKIP LOCKED, ack deadlines, requeue, expiry."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import trio

from kici.domain.dispatch_ack import MAX_DISPATCH_ATTEMPTS, exhausted_message
from kici.domain.execution.needs import JobNeedsSpec, NameNeed
from kici.domain.execution.states import Event, ExecutionState, JobStatus
from kici.domain.lockfile.frozen import freeze_json
from kici.domain.store import (
    QUEUE_EXPIRED_MESSAGE,
    JobEventCommand,
    NewJob,
    NewRun,
    QueueCandidate,
    QueueStatus,
)
from kici.testing.postgres import PgStores

pytestmark = pytest.mark.pg

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def anyone(_: QueueCandidate) -> str:
    return "agent-1"


async def queued_run(
    stores: PgStores,
    names: list[str],
    *,
    expires_at: datetime | None = None,
    extra: list[NewJob] | None = None,
) -> dict[str, uuid.UUID]:
    """A run whose root jobs ``names`` are enqueued in that order (routing = the job's label)."""
    run = NewRun(run_id=uuid.uuid4(), workflow_name="ci", created_at=NOW)
    jobs = [NewJob(spec=JobNeedsSpec(n), routing=freeze_json({"label": n[0]})) for n in names]
    created = await stores.execution.create_run(run, [*jobs, *(extra or [])])
    for name in names:
        result = await stores.execution.apply_job_event(
            JobEventCommand(
                job_id=created.job_ids[name],
                expected=ExecutionState.PENDING,
                event=Event.ENQUEUE,
                now=NOW,
                queue_expires_at=expires_at,
            )
        )
        assert result.applied
    return dict(created.job_ids)


@pytest.mark.feature("EXE-04")
async def test_dequeue_takes_the_oldest_row_the_chooser_accepts(pg_stores: PgStores) -> None:
    jobs = await queued_run(pg_stores, ["x1", "y1", "x2", "y2"])
    seen: list[str] = []

    def only_y(candidate: QueueCandidate) -> str | None:
        seen.append(candidate.job_name)
        assert isinstance(candidate.routing, type(freeze_json({})))
        return "agent-y" if candidate.routing == freeze_json({"label": "y"}) else None

    first = await pg_stores.queue.dequeue(only_y, later(1))
    assert first is not None
    assert (first.job_name, first.status, first.agent_id, first.dispatch_attempts, first.dispatched_at) == (
        "y1",
        QueueStatus.DISPATCHED,
        "agent-y",
        1,
        later(1),
    )
    assert seen == ["x1", "y1"]
    second = await pg_stores.queue.dequeue(only_y, later(2), batch=1)
    assert second is not None
    assert second.job_name == "y2"
    assert await pg_stores.queue.dequeue(only_y, later(3)) is None
    assert await pg_stores.queue.depth() == 2
    rest = [await pg_stores.queue.dequeue(anyone, later(4)) for _ in range(3)]
    assert [r.job_name if r else None for r in rest] == ["x1", "x2", None]
    assert {e.job_id for e in await pg_stores.queue.in_flight()} == set(jobs.values())


@pytest.mark.feature("EXE-04")
async def test_two_concurrent_dequeuers_take_each_row_once(pg_stores: PgStores) -> None:
    names = [f"j{i:02d}" for i in range(30)]
    await queued_run(pg_stores, names)
    taken: dict[str, list[str]] = {"a": [], "b": []}

    async def dispatcher(agent: str) -> None:
        while (entry := await pg_stores.queue.dequeue(lambda _: agent, later(1), batch=4)) is not None:
            taken[agent].append(entry.job_name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatcher, "a")
        nursery.start_soon(dispatcher, "b")
    together = taken["a"] + taken["b"]
    assert sorted(together) == names
    assert len(set(together)) == len(names)
    assert taken["a"] == sorted(taken["a"])
    assert taken["b"] == sorted(taken["b"])


@pytest.mark.feature("PRO-10")
async def test_ack_deadlines_are_armed_resolved_and_swept(pg_stores: PgStores) -> None:
    jobs = await queued_run(pg_stores, ["a", "b"])
    await pg_stores.queue.dequeue(anyone, later(1))
    await pg_stores.queue.dequeue(anyone, later(1))
    assert await pg_stores.queue.arm_ack_deadline(jobs["a"], "agent-1", later(11))
    assert await pg_stores.queue.arm_ack_deadline(jobs["b"], "agent-1", later(12))
    assert [e.job_name for e in await pg_stores.queue.due_ack_deadlines(later(11))] == ["a"]
    assert await pg_stores.queue.resolve_ack(jobs["a"])
    assert not await pg_stores.queue.resolve_ack(jobs["a"])
    due = await pg_stores.queue.due_ack_deadlines(later(20))
    assert [(e.job_name, e.ack_agent_id, e.ack_deadline) for e in due] == [("b", "agent-1", later(12))]


@pytest.mark.feature("PRO-10", "EXE-04")
async def test_requeue_keeps_the_place_and_fails_the_job_after_five_dispatches(pg_stores: PgStores) -> None:
    jobs = await queued_run(
        pg_stores, ["a", "b"], extra=[NewJob(spec=JobNeedsSpec("after", [NameNeed("a")]))]
    )
    failure = exhausted_message(MAX_DISPATCH_ATTEMPTS, "agent agent-1 rejected it: busy")
    for attempt in range(1, MAX_DISPATCH_ATTEMPTS + 1):
        entry = await pg_stores.queue.dequeue(anyone, later(attempt))
        assert entry is not None
        assert (entry.job_name, entry.dispatch_attempts) == ("a", attempt)
        await pg_stores.queue.arm_ack_deadline(jobs["a"], "agent-1", later(attempt + 10))
        result = await pg_stores.queue.requeue(jobs["a"], later(attempt), failure)
        if attempt < MAX_DISPATCH_ATTEMPTS:
            assert (result.requeued, result.attempts, result.failed) == (True, attempt, None)
            requeued = await pg_stores.queue.get_entry(jobs["a"])
            assert requeued is not None
            assert (requeued.status, requeued.agent_id, requeued.ack_deadline) == (
                QueueStatus.PENDING,
                None,
                None,
            )
    assert (result.requeued, result.attempts) == (False, MAX_DISPATCH_ATTEMPTS)
    assert result.failed is not None
    assert (result.failed.applied, result.failed.status) == (True, JobStatus.FAILED)
    assert result.failed.gate is not None
    assert [s.name for s in result.failed.gate.skipped] == ["after"]
    job = await pg_stores.execution.get_job(jobs["a"])
    assert job is not None
    assert (job.status, job.error_message) == (JobStatus.FAILED, failure)
    entry = await pg_stores.queue.get_entry(jobs["a"])
    assert entry is not None
    assert entry.status is QueueStatus.FAILED


@pytest.mark.feature("PRO-10")
async def test_a_started_job_is_not_requeued(pg_stores: PgStores) -> None:
    jobs = await queued_run(pg_stores, ["a"])
    await pg_stores.queue.dequeue(anyone, later(1))
    await pg_stores.execution.apply_job_event(
        JobEventCommand(job_id=jobs["a"], expected=ExecutionState.QUEUED, event=Event.START, now=later(2))
    )
    result = await pg_stores.queue.requeue(jobs["a"], later(3), "x")
    assert (result.requeued, result.failed) == (False, None)
    pending = await queued_run(pg_stores, ["p"])
    assert (await pg_stores.queue.requeue(pending["p"], later(3), "x")).requeued is False


@pytest.mark.feature("EXE-25")
async def test_expired_rows_time_the_job_out_and_skip_its_dependents(pg_stores: PgStores) -> None:
    jobs = await queued_run(
        pg_stores,
        ["a", "b"],
        expires_at=later(60),
        extra=[NewJob(spec=JobNeedsSpec("after", [NameNeed("a")]))],
    )
    assert await pg_stores.queue.dequeue(anyone, later(61)) is None
    assert await pg_stores.queue.expire(later(59)) == ()
    await pg_stores.queue.dequeue(lambda c: "agent-1" if c.job_name == "b" else None, later(30))
    expired = await pg_stores.queue.expire(later(60))
    assert [e.job_id for e in expired] == [jobs["a"]]
    assert [(s.name, s.reason) for s in expired[0].gate.skipped] == [
        ("after", "upstream_unmet: a (timed_out_stale)")
    ]
    job = await pg_stores.execution.get_job(jobs["a"])
    assert job is not None
    assert (job.status, job.error_message) == (JobStatus.TIMED_OUT_STALE, QUEUE_EXPIRED_MESSAGE)
    entry = await pg_stores.queue.get_entry(jobs["a"])
    assert entry is not None
    assert (entry.status, entry.error_message) == (QueueStatus.EXPIRED, QUEUE_EXPIRED_MESSAGE)
    assert await pg_stores.queue.expire(later(120)) == ()


@pytest.mark.feature("EXE-27", "PRO-16", "PRO-17")
async def test_recovery_columns_move_between_dispatched_and_recovering(pg_stores: PgStores) -> None:
    jobs = await queued_run(pg_stores, ["a", "b"])
    await pg_stores.queue.dequeue(anyone, later(1))
    assert not await pg_stores.queue.start_recovery(jobs["b"], "agent-1", later(120), later(5))
    assert await pg_stores.queue.start_recovery(jobs["a"], "agent-1", later(120), later(5))
    assert not await pg_stores.queue.start_recovery(jobs["a"], "agent-1", later(120), later(5))
    flight = await pg_stores.queue.in_flight()
    assert [(e.job_name, e.status, e.recovery_agent_id, e.recovery_deadline) for e in flight] == [
        ("a", QueueStatus.RECOVERING, "agent-1", later(120))
    ]
    assert await pg_stores.queue.reclaim(jobs["a"], "agent-2", later(9))
    assert not await pg_stores.queue.reclaim(jobs["a"], "agent-2", later(9))
    entry = await pg_stores.queue.get_entry(jobs["a"])
    assert entry is not None
    assert (entry.status, entry.agent_id, entry.recovery_deadline) == (
        QueueStatus.DISPATCHED,
        "agent-2",
        None,
    )
