"""LISTEN/NOTIFY from trio: notifications arrive, a restart is survived with a catch-up, and the
stores' notifications drive a dispatcher without any polling loop."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg
import pytest
import trio

from kici.adapters.postgres import channels
from kici.adapters.postgres.listener import Listener, Notification
from kici.domain.execution.needs import JobNeedsSpec, NameNeed
from kici.domain.execution.states import Event, ExecutionState, JobStatus, RunStatus
from kici.domain.store import JobEventCommand, NewJob, NewRun
from kici.testing.postgres import PgStores, PgTestDatabase, PgTestServer

pytestmark = pytest.mark.pg

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def send_notify(conninfo: str, channel: str, payload: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


@pytest.mark.feature("EXE-16", "PRO-06")
async def test_notifications_arrive_and_a_restart_is_followed_by_a_catch_up(
    pg_server: PgTestServer, pg_database: PgTestDatabase
) -> None:
    send, receive = trio.open_memory_channel[Notification | str](100)

    async def on_notify(notification: Notification) -> None:
        await send.send(notification)

    async def on_catch_up() -> None:
        await send.send("catch-up")

    listener = Listener(pg_database.conninfo, channels.ALL, on_notify, on_catch_up, max_delay_ms=200)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.run)
            assert await receive.receive() == "catch-up"
            await trio.to_thread.run_sync(send_notify, pg_database.conninfo, channels.JOB_READY, "run-1")
            got = await receive.receive()
            assert isinstance(got, Notification)
            assert (got.channel, got.payload) == (channels.JOB_READY, "run-1")

            await trio.to_thread.run_sync(pg_server.restart)
            assert await receive.receive() == "catch-up"
            assert listener.connection_count == 2
            await trio.to_thread.run_sync(send_notify, pg_database.conninfo, channels.DISPATCH, "job-1")
            got = await receive.receive()
            assert isinstance(got, Notification)
            assert (got.channel, got.payload) == (channels.DISPATCH, "job-1")
            nursery.cancel_scope.cancel()


@pytest.mark.feature("EXE-16", "EXE-04")
async def test_store_notifications_drive_ready_jobs_through_the_queue(
    pg_database: PgTestDatabase, pg_stores: PgStores
) -> None:
    """A toy orchestrator: JOB_READY -> enqueue, DISPATCH -> dequeue and run; no loop ever polls."""
    run = NewRun(run_id=uuid.uuid4(), workflow_name="ci", created_at=NOW)
    specs = [
        JobNeedsSpec("a"),
        JobNeedsSpec("b", [NameNeed("a")]),
        JobNeedsSpec("c", [NameNeed("a")]),
        JobNeedsSpec("d", [NameNeed("b"), NameNeed("c")]),
    ]
    dispatched: list[str] = []
    done = trio.Event()
    execution, queue = pg_stores.execution, pg_stores.queue

    async def enqueue_ready() -> None:
        for ready in await execution.list_ready_jobs(run.run_id):
            await execution.apply_job_event(
                JobEventCommand(
                    job_id=ready.job_id, expected=ExecutionState.PENDING, event=Event.ENQUEUE, now=NOW
                )
            )

    async def dispatch_all() -> None:
        while (entry := await queue.dequeue(lambda _: "agent", NOW)) is not None:
            dispatched.append(entry.job_name)
            for expected, event in (
                (ExecutionState.QUEUED, Event.START),
                (ExecutionState.RUNNING, Event.SUCCEED),
            ):
                await execution.apply_job_event(
                    JobEventCommand(job_id=entry.job_id, expected=expected, event=event, now=NOW)
                )
            if await execution.complete_run_if_all_jobs_terminal(run.run_id, NOW) is not None:
                done.set()

    async def on_notify(notification: Notification) -> None:
        if notification.channel == channels.JOB_READY:
            await enqueue_ready()
        else:
            await dispatch_all()

    async def on_catch_up() -> None:
        await enqueue_ready()
        await dispatch_all()

    listener = Listener(pg_database.conninfo, channels.ALL, on_notify, on_catch_up)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.run)
            await execution.create_run(run, [NewJob(spec=s) for s in specs])
            await done.wait()
            nursery.cancel_scope.cancel()
    assert sorted(dispatched) == ["a", "b", "c", "d"]
    assert dispatched[0] == "a"
    assert dispatched[-1] == "d"
    stored = await execution.get_run(run.run_id)
    assert stored is not None
    assert stored.status is RunStatus.SUCCESS
    assert {j.status for j in await execution.list_jobs(run.run_id)} == {JobStatus.SUCCESS}
