"""Dispatch and tracking end to end: real PostgreSQL, real WebSocket, fake agents (EXE-16, EXE-36, PRO-10,
SCL-02, EXE-03/04/05/10/14, PRO-11, EXE-24/25/26)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import attrs
import pytest
import trio

from kici.adapters.postgres.database import Database
from kici.domain.execution.needs import NameNeed
from kici.domain.execution.states import JobStatus, RunStatus, StepStatus
from kici.domain.protocol import CloseCode, JobCancel, JobDispatch, JobState, RejectReason, StepState
from kici.domain.store import QUEUE_EXPIRED_MESSAGE, NewRun
from kici.testing.fake_agent import open_fake_agent
from kici.testing.postgres import PgTestDatabase
from tests.contract.test_orch_engine_hub import FAST, Engine, engine, job, running_engine

pytestmark = pytest.mark.pg

SLOW_SWEEP = attrs.evolve(FAST, stale_scan_interval_ms=60_000)
"""The periodic sweep out of the way: the deadline timers alone must do the work."""
__all__ = ["engine"]


@pytest.mark.feature("EXE-16", "SCL-02", "PRO-10")
async def test_a_job_goes_only_to_an_agent_with_its_labels(engine: Engine) -> None:
    token = await engine.token()
    async with (
        open_fake_agent(
            engine.url, agent_id="lin", token=token, labels=["linux"], heartbeat_interval=0.1
        ) as lin,
        open_fake_agent(
            engine.url, agent_id="win", token=token, labels=["windows"], heartbeat_interval=0.1
        ) as win,
    ):
        created = await engine.create_run([job("build", labels=["windows"])])
        dispatch = await win.expect(JobDispatch)
        assert dispatch.job_id == str(created.job_ids["build"])
        assert dispatch.job_config["jobName"] == "build"
        assert dispatch.job_config["workflow"] == "ci"
        assert dispatch.repo_url == "file:///repos/demo.git"
        await win.ack(dispatch)
        await win.run_job(dispatch)
        await engine.wait_run(created.run_id, RunStatus.SUCCESS)
        assert not lin.received(JobDispatch)


@pytest.mark.feature("EXE-36", "SCL-02")
async def test_an_agent_never_gets_more_jobs_than_its_concurrency(engine: Engine) -> None:
    token = await engine.token()
    async with open_fake_agent(
        engine.url, agent_id="a1", token=token, labels=["linux"], max_concurrency=2, heartbeat_interval=0.1
    ) as agent:
        created = await engine.create_run([job("one"), job("two"), job("three")])
        first = await agent.expect(JobDispatch)
        second = await agent.expect(JobDispatch)
        for dispatch in (first, second):
            await agent.ack(dispatch)
            await agent.status(dispatch, JobState.RUNNING)
        await trio.sleep(0.5)
        assert not agent.received(JobDispatch)
        await agent.status(first, JobState.SUCCESS)
        third = await agent.expect(JobDispatch)
        assert {first.job_id, second.job_id, third.job_id} == {str(j) for j in created.job_ids.values()}
        await agent.ack(third)
        for dispatch in (second, third):
            await agent.status(dispatch, JobState.RUNNING)
            await agent.status(dispatch, JobState.SUCCESS)
        await engine.wait_run(created.run_id, RunStatus.SUCCESS)


@pytest.mark.feature("PRO-10", "EXE-36")
async def test_an_unacknowledged_dispatch_closes_the_agent_4031_and_goes_elsewhere(
    pg_database: PgTestDatabase, pg_db: Database
) -> None:
    async with running_engine(pg_database, pg_db, SLOW_SWEEP) as engine:
        await _unacknowledged_dispatch(engine)


async def _unacknowledged_dispatch(engine: Engine) -> None:
    token = await engine.token()
    async with open_fake_agent(
        engine.url, agent_id="a-mute", token=token, labels=["linux"], heartbeat_interval=0.1
    ) as mute:
        created = await engine.create_run([job("build")])
        await mute.expect(JobDispatch)
        closed = await mute.wait_closed()
        assert closed.code == CloseCode.DISPATCH_ACK_TIMEOUT
    async with open_fake_agent(
        engine.url, agent_id="b-live", token=token, labels=["linux"], heartbeat_interval=0.1
    ) as live:
        dispatch = await live.expect(JobDispatch)
        assert dispatch.job_config["dispatchAttempt"] == 2
        await live.ack(dispatch)
        await live.run_job(dispatch)
        await engine.wait_run(created.run_id, RunStatus.SUCCESS)


@pytest.mark.feature("PRO-10", "EXE-36")
async def test_a_rejected_dispatch_is_requeued_and_a_draining_agent_gets_no_more(engine: Engine) -> None:
    token = await engine.token()
    async with open_fake_agent(
        engine.url, agent_id="a-drain", token=token, labels=["linux"], heartbeat_interval=0.1
    ) as draining:
        created = await engine.create_run([job("build")])
        dispatch = await draining.expect(JobDispatch)
        await draining.reject(dispatch, RejectReason.DRAINING)
        async with open_fake_agent(
            engine.url, agent_id="b-ok", token=token, labels=["linux"], heartbeat_interval=0.1
        ) as ok:
            again = await ok.expect(JobDispatch)
            assert again.job_id == dispatch.job_id
            assert again.job_config["dispatchAttempt"] == 2
            await ok.ack(again)
            await ok.run_job(again)
            await engine.wait_run(created.run_id, RunStatus.SUCCESS)
        assert not draining.received(JobDispatch)


@pytest.mark.feature("PRO-10")
async def test_five_rejections_fail_the_job(engine: Engine) -> None:
    token = await engine.token()
    async with open_fake_agent(
        engine.url, agent_id="busy", token=token, labels=["linux"], heartbeat_interval=0.1
    ) as busy:
        created = await engine.create_run([job("build")])
        for _ in range(5):
            await busy.reject(await busy.expect(JobDispatch), RejectReason.BUSY)
        record = await engine.wait_job(created.job_ids["build"], JobStatus.FAILED)
        assert record.error_message is not None
        assert "exhausted after 5 attempts" in record.error_message
        assert await engine.wait_run(created.run_id, RunStatus.FAILED) is RunStatus.FAILED


@pytest.mark.feature("EXE-03", "EXE-04", "EXE-05", "EXE-10", "PRO-11")
async def test_statuses_steps_and_logs_are_persisted(engine: Engine) -> None:
    token = await engine.token()
    async with open_fake_agent(
        engine.url, agent_id="a1", token=token, labels=["linux"], heartbeat_interval=0.1
    ) as agent:
        created = await engine.create_run([job("build")])
        dispatch = await agent.expect(JobDispatch)
        await agent.ack(dispatch)
        await agent.status(dispatch, JobState.RUNNING)
        await agent.step(dispatch, 0, "compile", StepState.RUNNING)
        await agent.log(dispatch, 0, ["gcc main.c", "ok"])
        await agent.log(dispatch, 0, ["linked"])
        await agent.job_heartbeat(dispatch)
        await agent.step(dispatch, 0, "compile", StepState.SUCCESS, {"durationMs": 12}, log_bytes=18)
        await agent.step(dispatch, 1, "test", StepState.RUNNING)
        await agent.step(
            dispatch, 1, "test", StepState.FAILED, {"error": {"message": "1 failed", "exitCode": 3}}
        )
        await agent.status(
            dispatch, JobState.FAILED, {"error": {"message": "step test failed"}, "outputs": {"x": 1}}
        )
        record = await engine.wait_job(created.job_ids["build"], JobStatus.FAILED)
        assert record.agent_id == "a1"
        assert record.error_message == "step test failed"
        assert record.started_at is not None
        assert record.last_heartbeat_at is not None
        steps = await engine.stores.execution.list_steps(created.job_ids["build"])
        assert [(s.step_name, s.status) for s in steps] == [
            ("compile", StepStatus.SUCCESS),
            ("test", StepStatus.FAILED),
        ]
        assert (steps[0].duration_ms, steps[0].log_bytes) == (12, 18)
        assert (steps[1].exit_code, steps[1].error_message) == (3, "1 failed")
        page = await engine.stores.logs.read_log_chunks(created.job_ids["build"])
        assert [line for chunk in page.chunks for line in chunk.lines] == ["gcc main.c", "ok", "linked"]
        assert await engine.wait_run(created.run_id, RunStatus.FAILED) is RunStatus.FAILED
        await agent.status(dispatch, JobState.SUCCESS)
        await agent.step(dispatch, 0, "compile", StepState.FAILED)
        await trio.sleep(0.3)
        assert (await engine.job(created.job_ids["build"])).status is JobStatus.FAILED
        assert (await engine.stores.execution.list_steps(created.job_ids["build"]))[
            0
        ].status is StepStatus.SUCCESS


@pytest.mark.feature("EXE-16")
async def test_a_downstream_job_waits_for_its_upstream_and_gets_its_outputs(engine: Engine) -> None:
    token = await engine.token()
    async with open_fake_agent(
        engine.url, agent_id="a1", token=token, labels=["linux"], max_concurrency=4, heartbeat_interval=0.1
    ) as agent:
        created = await engine.create_run([job("build"), job("deploy", NameNeed("build"))])
        build = await agent.expect(JobDispatch)
        assert build.job_id == str(created.job_ids["build"])
        await agent.ack(build)
        await agent.status(build, JobState.RUNNING)
        await trio.sleep(0.3)
        assert not agent.received(JobDispatch)
        await agent.status(build, JobState.SUCCESS, {"outputs": {"compile": {"artifact": "app.tar"}}})
        deploy = await agent.expect(JobDispatch)
        assert deploy.job_id == str(created.job_ids["deploy"])
        assert deploy.upstream_job_statuses == {"build": JobState.SUCCESS}
        assert deploy.upstream_job_outputs == {"build": {"compile": {"artifact": "app.tar"}}}
        await agent.ack(deploy)
        await agent.run_job(deploy)
        await engine.wait_run(created.run_id, RunStatus.SUCCESS)


@pytest.mark.feature("EXE-16", "EXE-03")
async def test_a_failed_upstream_skips_its_dependents(engine: Engine) -> None:
    token = await engine.token()
    async with open_fake_agent(
        engine.url, agent_id="a1", token=token, labels=["linux"], heartbeat_interval=0.1
    ) as agent:
        created = await engine.create_run(
            [job("build"), job("deploy", NameNeed("build")), job("notify", NameNeed("deploy"))]
        )
        build = await agent.expect(JobDispatch)
        await agent.ack(build)
        await agent.run_job(build, success=False)
        assert await engine.wait_run(created.run_id, RunStatus.FAILED) is RunStatus.FAILED
        assert (await engine.job(created.job_ids["deploy"])).status is JobStatus.SKIPPED
        assert (await engine.job(created.job_ids["notify"])).status is JobStatus.SKIPPED
        assert not agent.received(JobDispatch)


@pytest.mark.feature("EXE-14", "EXE-03")
async def test_cancel_is_graceful_first_and_forced_the_second_time(engine: Engine) -> None:
    token = await engine.token()
    async with open_fake_agent(
        engine.url, agent_id="a1", token=token, labels=["linux"], heartbeat_interval=0.1
    ) as agent:
        created = await engine.create_run([job("build"), job("deploy", NameNeed("build"))])
        build = await agent.expect(JobDispatch)
        await agent.ack(build)
        await agent.status(build, JobState.RUNNING)
        await engine.wait_job(created.job_ids["build"], JobStatus.RUNNING)
        first = await engine.services.tracker.cancel_run(
            created.run_id, force=False, reason="user asked", cancelled_by="alice"
        )
        assert (first.http_status, first.force, first.agents_notified) == (202, False, 1)
        assert first.run_status is RunStatus.CANCELLING
        graceful = await agent.expect(JobCancel)
        assert (graceful.job_id, graceful.force, graceful.reason) == (build.job_id, None, "user asked")
        assert (await engine.job(created.job_ids["build"])).status is JobStatus.CANCELLING
        assert (await engine.job(created.job_ids["deploy"])).status is JobStatus.CANCELLED
        second = await engine.services.tracker.cancel_run(
            created.run_id, force=False, reason="user asked", cancelled_by="alice"
        )
        assert second.force
        assert second.run_status is RunStatus.CANCELLED
        forced = await agent.expect(JobCancel)
        assert forced.force is True
        assert (await engine.job(created.job_ids["build"])).status is JobStatus.CANCELLED
        third = await engine.services.tracker.cancel_run(
            created.run_id, force=True, reason="again", cancelled_by="alice"
        )
        assert third.http_status == 409
        await agent.status(build, JobState.CANCELLED)
        run = await engine.stores.execution.get_run(created.run_id)
        assert run is not None
        assert run.cancelled_by == "alice"


@pytest.mark.feature("EXE-14")
async def test_an_agent_finishing_its_cancel_hooks_completes_the_run(engine: Engine) -> None:
    token = await engine.token()
    async with open_fake_agent(
        engine.url, agent_id="a1", token=token, labels=["linux"], heartbeat_interval=0.1
    ) as agent:
        created = await engine.create_run([job("build")])
        build = await agent.expect(JobDispatch)
        await agent.ack(build)
        await agent.status(build, JobState.RUNNING)
        await engine.wait_job(created.job_ids["build"], JobStatus.RUNNING)
        await engine.services.tracker.cancel_run(
            created.run_id, force=False, reason="stop", cancelled_by="bob"
        )
        await agent.expect(JobCancel)
        await agent.status(build, JobState.CANCELLED)
        assert await engine.wait_run(created.run_id, RunStatus.CANCELLED) is RunStatus.CANCELLED


@pytest.mark.feature("EXE-14")
async def test_unknown_and_queued_runs_cancel_without_agents(engine: Engine) -> None:
    created = await engine.create_run([job("build", labels=["nobody-has-this"])])
    await engine.wait_job(created.job_ids["build"], JobStatus.QUEUED)
    result = await engine.services.tracker.cancel_run(
        created.run_id, force=False, reason="r", cancelled_by="c"
    )
    assert (result.http_status, result.run_status) == (202, RunStatus.CANCELLED)
    unknown = await engine.services.tracker.cancel_run(
        created.job_ids["build"], force=False, reason="r", cancelled_by="c"
    )
    assert unknown.http_status == 404


@pytest.mark.feature("EXE-24")
async def test_a_job_without_heartbeats_times_out_stale(pg_database: PgTestDatabase, pg_db: Database) -> None:
    settings = attrs.evolve(FAST, job_heartbeat_interval_ms=150, stale_threshold_multiplier=2.0)
    async with running_engine(pg_database, pg_db, settings) as engine:
        token = await engine.token()
        async with open_fake_agent(
            engine.url, agent_id="a1", token=token, labels=["linux"], heartbeat_interval=0.1
        ) as agent:
            created = await engine.create_run([job("build"), job("fresh")])
            build = await agent.expect(JobDispatch)
            await agent.ack(build)
            await agent.status(build, JobState.RUNNING)
            record = await engine.wait_job(created.job_ids["build"], JobStatus.TIMED_OUT_STALE)
            assert record.error_message is not None
            assert record.error_message.startswith("No heartbeat received for")
            cancel = await agent.expect(JobCancel)
            assert (cancel.job_id, cancel.force) == (build.job_id, True)


@pytest.mark.feature("EXE-24")
async def test_job_heartbeats_keep_a_long_job_alive(pg_database: PgTestDatabase, pg_db: Database) -> None:
    settings = attrs.evolve(FAST, job_heartbeat_interval_ms=150, stale_threshold_multiplier=2.0)
    async with running_engine(pg_database, pg_db, settings) as engine:
        token = await engine.token()
        async with open_fake_agent(
            engine.url, agent_id="a1", token=token, labels=["linux"], heartbeat_interval=0.1
        ) as agent:
            created = await engine.create_run([job("build")])
            build = await agent.expect(JobDispatch)
            await agent.ack(build)
            await agent.status(build, JobState.RUNNING)
            for _ in range(10):
                await agent.job_heartbeat(build)
                await trio.sleep(0.08)
            assert (await engine.job(created.job_ids["build"])).status is JobStatus.RUNNING
            await agent.status(build, JobState.SUCCESS)
            await engine.wait_run(created.run_id, RunStatus.SUCCESS)


@pytest.mark.feature("EXE-25")
async def test_a_job_no_agent_can_take_expires_from_the_queue(
    pg_database: PgTestDatabase, pg_db: Database
) -> None:
    async with running_engine(pg_database, pg_db, attrs.evolve(FAST, queue_timeout_ms=300)) as engine:
        token = await engine.token()
        async with open_fake_agent(
            engine.url, agent_id="a1", token=token, labels=["linux"], heartbeat_interval=0.1
        ):
            created = await engine.create_run([job("build", labels=["gpu"])])
            record = await engine.wait_job(created.job_ids["build"], JobStatus.TIMED_OUT_STALE)
            assert record.error_message == QUEUE_EXPIRED_MESSAGE
            assert await engine.wait_run(created.run_id, RunStatus.FAILED) is RunStatus.FAILED


@pytest.mark.feature("EXE-26")
async def test_the_job_timeout_backstop_fails_a_job_its_agent_did_not_stop(
    pg_database: PgTestDatabase, pg_db: Database
) -> None:
    async with running_engine(pg_database, pg_db, attrs.evolve(FAST, job_timeout_grace_ms=100)) as engine:
        token = await engine.token()
        async with open_fake_agent(
            engine.url, agent_id="a1", token=token, labels=["linux"], heartbeat_interval=0.1
        ) as agent:
            created = await engine.create_run([job("build", config={"timeout": 200})])
            build = await agent.expect(JobDispatch)
            await agent.ack(build)
            await agent.status(build, JobState.RUNNING)
            record = await engine.wait_job(created.job_ids["build"], JobStatus.FAILED)
            assert record.error_message == "job_timeout: job exceeded its timeout of 200ms"
            assert (await agent.expect(JobCancel)).force is True


@pytest.mark.feature("EXE-26", "EXE-14")
async def test_the_workflow_deadline_cancels_the_run(engine: Engine) -> None:
    token = await engine.token()
    async with open_fake_agent(
        engine.url, agent_id="a1", token=token, labels=["linux"], heartbeat_interval=0.1
    ) as agent:
        created = await engine.create_run([job("build")], workflow_timeout_ms=300)
        build = await agent.expect(JobDispatch)
        await agent.ack(build)
        await agent.status(build, JobState.RUNNING)
        cancel = await agent.expect(JobCancel)
        assert cancel.reason == "workflow_timeout"
        await agent.status(build, JobState.CANCELLED)
        assert await engine.wait_run(created.run_id, RunStatus.CANCELLED) is RunStatus.CANCELLED
        run = await engine.stores.execution.get_run(created.run_id)
        assert run is not None
        assert run.failure_reason == "workflow_timeout"


@pytest.mark.feature("EXE-16", "SCL-02")
async def test_a_queued_job_waits_for_an_agent_that_fits(engine: Engine) -> None:
    token = await engine.token()
    created = await engine.create_run([job("train", labels=["gpu"])])
    async with open_fake_agent(
        engine.url, agent_id="cpu", token=token, labels=["linux"], heartbeat_interval=0.1
    ):
        await engine.wait_job(created.job_ids["train"], JobStatus.QUEUED)
        await trio.sleep(0.3)
        assert (await engine.job(created.job_ids["train"])).status is JobStatus.QUEUED
        async with open_fake_agent(
            engine.url, agent_id="gpu", token=token, labels=["gpu"], heartbeat_interval=0.1
        ) as gpu:
            dispatch = await gpu.expect(JobDispatch)
            await gpu.ack(dispatch)
            await gpu.run_job(dispatch)
            await engine.wait_run(created.run_id, RunStatus.SUCCESS)


@pytest.mark.feature("EXE-16")
async def test_a_run_written_by_another_process_is_dispatched_through_notify(engine: Engine) -> None:
    token = await engine.token()
    async with open_fake_agent(
        engine.url, agent_id="a1", token=token, labels=["linux"], heartbeat_interval=0.1
    ) as agent:
        run = NewRun(run_id=uuid.uuid4(), workflow_name="ci", created_at=datetime.now(UTC))
        await engine.stores.execution.create_run(run, [job("build")])
        dispatch = await agent.expect(JobDispatch)
        assert dispatch.run_id == str(run.run_id)


@pytest.mark.feature("EXE-14")
async def test_a_graceful_cancel_nobody_can_hear_is_forced(engine: Engine) -> None:
    token = await engine.token()
    async with open_fake_agent(
        engine.url, agent_id="a1", token=token, labels=["linux"], heartbeat_interval=0.1
    ) as agent:
        created = await engine.create_run([job("build")])
        build = await agent.expect(JobDispatch)
        await agent.ack(build)
        await agent.status(build, JobState.RUNNING)
        await engine.wait_job(created.job_ids["build"], JobStatus.RUNNING)
        held = engine.services.hub.registry.get("a1")
        assert held is not None
        assert engine.services.hub.registry.remove(held)
        result = await engine.services.tracker.cancel_run(
            created.run_id, force=False, reason="stop", cancelled_by="carol"
        )
        assert (result.force, result.agents_notified, result.run_status) == (True, 0, RunStatus.CANCELLED)
        assert (await engine.job(created.job_ids["build"])).status is JobStatus.CANCELLED
