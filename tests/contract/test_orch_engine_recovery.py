"""Agents that drop and come back, and an orchestrator that restarts: recovery, reclaim, grace expiry and
the startup sweep, over real PostgreSQL and a real WebSocket (PRO-16, PRO-17, PRO-19, EXE-27, PRO-09)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio

from kici.adapters.postgres.database import Connection, Database
from kici.domain.execution.states import JobStatus, RunStatus
from kici.domain.protocol import CloseCode, InFlightJob, JobCancel, JobDispatch, JobState, StepState
from kici.domain.recovery import RECOVERY_EXPIRED_MESSAGE, RECOVERY_STATE_LOST_MESSAGE
from kici.domain.store import QueueStatus
from kici.services.orchestrator.execution import ExecutionSettings
from kici.testing.fake_agent import open_fake_agent
from kici.testing.postgres import PgTestDatabase
from tests.contract.test_orch_engine_hub import FAST, Engine, engine, job, running_engine

pytestmark = pytest.mark.pg
__all__ = ["engine"]


@attrs.frozen
class Running:
    dispatch: JobDispatch
    run_id: uuid.UUID
    job_id: uuid.UUID

    @property
    def ref(self) -> InFlightJob:
        return InFlightJob(job_id=str(self.job_id), run_id=str(self.run_id))


async def _running_job(engine: Engine, token: str, agent_id: str = "a1") -> Running:
    """A run whose one job is running on ``agent_id``; the agent has disconnected again afterwards."""
    created = await engine.create_run([job("build")])
    async with open_fake_agent(
        engine.url, agent_id=agent_id, token=token, labels=["linux"], heartbeat_interval=0.1
    ) as agent:
        dispatch = await agent.expect(JobDispatch)
        await agent.ack(dispatch)
        await agent.status(dispatch, JobState.RUNNING)
        await agent.step(dispatch, 0, "compile", StepState.RUNNING)
        await agent.log(dispatch, 0, ["before the outage"])
        await engine.wait_job(created.job_ids["build"], JobStatus.RUNNING)
    return Running(dispatch, created.run_id, created.job_ids["build"])


@pytest.mark.feature("PRO-16", "EXE-27", "PRO-09", "PRO-19")
async def test_a_dropped_agent_reclaims_its_job_and_finishes_it_once(engine: Engine) -> None:
    token = await engine.token()
    ids = await _running_job(engine, token)
    job_id, dispatch = ids.job_id, ids.dispatch
    await engine.wait_job(job_id, JobStatus.RECOVERING)
    entry = await engine.stores.queue.get_entry(job_id)
    assert entry is not None
    assert (entry.status, entry.recovery_agent_id) == (QueueStatus.RECOVERING, "a1")
    async with open_fake_agent(
        engine.url, agent_id="a1", token=token, labels=["linux"], in_flight=[dispatch], heartbeat_interval=0.1
    ) as agent:
        await engine.wait_job(job_id, JobStatus.RUNNING)
        await agent.log(dispatch, 0, ["after the outage"])
        await agent.step(dispatch, 0, "compile", StepState.SUCCESS)
        await agent.status(dispatch, JobState.SUCCESS)
        await engine.wait_run(ids.run_id, RunStatus.SUCCESS)
        assert not agent.received(JobDispatch)
        assert not agent.received(JobCancel)
    entry = await engine.stores.queue.get_entry(job_id)
    assert entry is not None
    assert (entry.status, entry.dispatch_attempts) == (QueueStatus.COMPLETED, 1)
    page = await engine.stores.logs.read_log_chunks(job_id)
    assert [line for c in page.chunks for line in c.lines] == ["before the outage", "after the outage"]


@pytest.mark.feature("PRO-16", "EXE-27")
async def test_a_terminal_status_for_a_recovering_job_reclaims_it_then_applies(engine: Engine) -> None:
    token = await engine.token()
    ids = await _running_job(engine, token)
    dispatch = ids.dispatch
    await engine.wait_job(ids.job_id, JobStatus.RECOVERING)
    async with open_fake_agent(
        engine.url, agent_id="a1", token=token, labels=["linux"], heartbeat_interval=0.1
    ) as agent:
        await agent.status(dispatch, JobState.SUCCESS)
        await engine.wait_run(ids.run_id, RunStatus.SUCCESS)


@pytest.mark.feature("PRO-16", "EXE-27")
async def test_an_agent_that_never_returns_fails_its_job_after_the_grace(
    pg_database: PgTestDatabase, pg_db: Database
) -> None:
    async with running_engine(
        pg_database, pg_db, attrs.evolve(FAST, stale_scan_interval_ms=60_000)
    ) as engine:
        await _never_returns(engine)


async def _never_returns(engine: Engine) -> None:
    token = await engine.token()
    ids = await _running_job(engine, token)
    record = await engine.wait_job(ids.job_id, JobStatus.FAILED)
    assert record.error_message == RECOVERY_EXPIRED_MESSAGE
    assert await engine.wait_run(ids.run_id, RunStatus.FAILED) is RunStatus.FAILED
    async with open_fake_agent(
        engine.url, agent_id="a1", token=token, labels=["linux"], in_flight=[ids.ref], heartbeat_interval=0.1
    ) as late:
        cancel = await late.expect(JobCancel)
        assert (cancel.job_id, cancel.force) == (str(ids.job_id), True)


@pytest.mark.feature("PRO-10", "PRO-16")
async def test_an_unanswered_dispatch_of_a_dropped_agent_goes_to_the_next_agent(engine: Engine) -> None:
    token = await engine.token()
    created = await engine.create_run([job("build")])
    async with open_fake_agent(engine.url, agent_id="a1", token=token, labels=["linux"]) as first:
        await first.expect(JobDispatch)
    async with open_fake_agent(
        engine.url, agent_id="a2", token=token, labels=["linux"], heartbeat_interval=0.1
    ) as second:
        dispatch = await second.expect(JobDispatch)
        assert dispatch.job_config["dispatchAttempt"] == 2
        await second.ack(dispatch)
        await second.run_job(dispatch)
        await engine.wait_run(created.run_id, RunStatus.SUCCESS)


@pytest.mark.feature("PRO-16", "EXE-27")
async def test_an_acknowledged_job_that_never_started_is_requeued_when_its_window_closes(
    engine: Engine,
) -> None:
    token = await engine.token()
    created = await engine.create_run([job("build")])
    async with open_fake_agent(engine.url, agent_id="a1", token=token, labels=["linux"]) as first:
        await first.ack(await first.expect(JobDispatch))
        with trio.fail_after(5):
            while (entry := await engine.stores.queue.get_entry(created.job_ids["build"])) is None or (  # noqa: ASYNC110
                entry.ack_deadline is not None
            ):
                await trio.sleep(0.02)
    async with open_fake_agent(
        engine.url, agent_id="a2", token=token, labels=["linux"], heartbeat_interval=0.1
    ) as second:
        dispatch = await second.expect(JobDispatch)
        await second.ack(dispatch)
        await second.run_job(dispatch)
        await engine.wait_run(created.run_id, RunStatus.SUCCESS)


@pytest.mark.feature("PRO-09", "PRO-16")
async def test_a_newer_connection_replaces_an_older_one_of_the_same_agent(engine: Engine) -> None:
    token = await engine.token()
    async with (
        open_fake_agent(
            engine.url, agent_id="a1", token=token, labels=["linux"], heartbeat_interval=0.1
        ) as old,
        open_fake_agent(
            engine.url, agent_id="a1", token=token, labels=["linux"], heartbeat_interval=0.1
        ) as new,
    ):
        closed = await old.wait_closed()
        assert closed.code == CloseCode.NORMAL
        await trio.sleep(0.2)
        assert engine.services.hub.connected_count() == 1
        created = await engine.create_run([job("build")])
        dispatch = await new.expect(JobDispatch)
        await new.ack(dispatch)
        await new.run_job(dispatch)
        await engine.wait_run(created.run_id, RunStatus.SUCCESS)


@asynccontextmanager
async def stoppable_engine(
    database: PgTestDatabase, db: Database, settings: ExecutionSettings = FAST
) -> AsyncIterator[tuple[Engine, trio.CancelScope]]:
    """An engine whose lifetime the test ends (``scope.cancel()``) while its agents stay connected."""
    async with trio.open_nursery() as nursery:

        async def run(*, task_status: trio.TaskStatus[Engine] = trio.TASK_STATUS_IGNORED) -> None:
            async with running_engine(database, db, settings) as engine:
                task_status.started(engine)
                await trio.sleep_forever()

        scope = trio.CancelScope()

        async def owned(*, task_status: trio.TaskStatus[Engine] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await run(task_status=task_status)

        engine = await nursery.start(owned)
        yield engine, scope


@pytest.mark.feature("PRO-17", "EXE-27", "PRO-16")
async def test_a_restarted_orchestrator_lets_the_agent_finish_its_job(
    pg_database: PgTestDatabase, pg_db: Database
) -> None:
    async with stoppable_engine(pg_database, pg_db) as (first, stop):
        token = await first.token()
        created = await first.create_run([job("build")])
        async with open_fake_agent(
            first.url, agent_id="a1", token=token, labels=["linux"], heartbeat_interval=0.1
        ) as agent:
            dispatch = await agent.expect(JobDispatch)
            await agent.ack(dispatch)
            await agent.status(dispatch, JobState.RUNNING)
            await agent.log(dispatch, 0, ["line 1"])
            await first.wait_job(created.job_ids["build"], JobStatus.RUNNING)
            with trio.fail_after(5):
                while not (await first.stores.logs.read_log_chunks(created.job_ids["build"])).chunks:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            stop.cancel()
            await agent.wait_closed()
    async with running_engine(pg_database, pg_db) as second:
        assert (await second.job(created.job_ids["build"])).status is JobStatus.RECOVERING
        async with open_fake_agent(
            second.url,
            agent_id="a1",
            token=token,
            labels=["linux"],
            in_flight=[dispatch],
            heartbeat_interval=0.1,
        ) as agent:
            await second.wait_job(created.job_ids["build"], JobStatus.RUNNING)
            await agent.log(dispatch, 0, ["line 2"])
            await agent.status(dispatch, JobState.SUCCESS)
            await second.wait_run(created.run_id, RunStatus.SUCCESS)
            assert not agent.received(JobCancel)
        page = await second.stores.logs.read_log_chunks(created.job_ids["build"])
        assert [line for c in page.chunks for line in c.lines] == ["line 1", "line 2"]


@pytest.mark.feature("PRO-17", "EXE-27")
async def test_a_restart_during_recovery_keeps_the_stored_deadline(
    pg_database: PgTestDatabase, pg_db: Database
) -> None:
    settings = attrs.evolve(FAST, recovery_grace_ms=1_200)
    async with running_engine(pg_database, pg_db, settings) as first:
        token = await first.token()
        ids = await _running_job(first, token)
        await first.wait_job(ids.job_id, JobStatus.RECOVERING)
        entry = await first.stores.queue.get_entry(ids.job_id)
        assert entry is not None
        assert entry.recovery_deadline is not None
        deadline = entry.recovery_deadline
    async with running_engine(pg_database, pg_db, settings) as second:
        entry = await second.stores.queue.get_entry(ids.job_id)
        assert entry is not None
        assert entry.recovery_deadline == deadline
        record = await second.wait_job(ids.job_id, JobStatus.FAILED)
        assert record.error_message == RECOVERY_EXPIRED_MESSAGE


@pytest.mark.feature("PRO-17", "EXE-27")
async def test_a_recovery_without_a_stored_deadline_fails_at_boot(
    pg_database: PgTestDatabase, pg_db: Database
) -> None:
    async with running_engine(pg_database, pg_db, attrs.evolve(FAST, recovery_grace_ms=60_000)) as first:
        token = await first.token()
        ids = await _running_job(first, token)
        await first.wait_job(ids.job_id, JobStatus.RECOVERING)

    def lose_deadline(conn: Connection) -> None:
        conn.execute("UPDATE dispatch_queue SET recovery_deadline = NULL WHERE job_id = %s", (ids.job_id,))

    await pg_db.run(lose_deadline)
    async with running_engine(pg_database, pg_db) as second:
        record = await second.wait_job(ids.job_id, JobStatus.FAILED)
        assert record.error_message == RECOVERY_STATE_LOST_MESSAGE
        assert await second.wait_run(ids.run_id, RunStatus.FAILED) is RunStatus.FAILED
