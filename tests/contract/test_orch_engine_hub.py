"""The agent hub over a real WebSocket on loopback and a real PostgreSQL: the handshake (PRO-08, PRO-09),
invalid input (PRO-03, 20 §2), the rate limiter before auth (PRO-05) and liveness (PRO-15).

The module also holds the harness the other engine contract suites use: :func:`running_engine` builds
the execution services over the PostgreSQL stores, runs them, and mounts the hub at ``/ws`` of a
minimal quart-trio app (``kici.testing.fake_agent.serve_hub``).
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import attrs
import pytest
import trio

from kici.adapters.clock import SystemClock
from kici.adapters.postgres.agent_store import PgAgentStore
from kici.adapters.postgres.database import Database
from kici.adapters.postgres.execution_store import PgExecutionStore
from kici.adapters.postgres.log_store import PgLogStore
from kici.adapters.postgres.queue_store import PgDispatchQueue
from kici.adapters.postgres.webhook_store import PgWebhookStore
from kici.domain.config.schema import AgentAuth
from kici.domain.execution.needs import JobNeedsSpec
from kici.domain.execution.states import JobStatus, RunStatus
from kici.domain.liveness import LivenessThresholds
from kici.domain.lockfile.frozen import freeze_json
from kici.domain.lockfile.model import ExactLabelMatcher
from kici.domain.protocol import (
    AuthFailure,
    AuthSuccess,
    CloseCode,
    ErrorMessage,
    InFlightJob,
    JobDispatch,
    JobState,
    RateLimitWarning,
    RegisterAck,
)
from kici.domain.ratelimit import RateLimitConfig
from kici.domain.store import AgentStatus, AgentType, CreatedRun, JobRecord, NewAgentToken, NewJob, NewRun
from kici.services.orchestrator.agent_hub import token_hash
from kici.services.orchestrator.dispatcher import routing_json
from kici.services.orchestrator.execution import ExecutionServices, ExecutionSettings, Stores, build_execution
from kici.services.orchestrator.metrics import OrchestratorMetrics, instrument_execution
from kici.testing.fake_agent import AgentClosedError, open_fake_agent, serve_hub
from kici.testing.postgres import PgTestDatabase

pytestmark = pytest.mark.pg

FAST = ExecutionSettings(
    auth_timeout_ms=400,
    register_timeout_ms=400,
    ack_timeout_ms=1_000,
    recovery_grace_ms=1_500,
    stale_scan_interval_ms=100,
    job_heartbeat_interval_ms=60_000,
    queue_timeout_ms=0,
    liveness=LivenessThresholds(unhealthy_after_ms=300, stale_after_ms=600),
)
"""Shrunk intervals; a test that needs other ones evolves these."""

WAIT_S = 15.0


def job(
    name: str, *needs: object, labels: Sequence[str] = ("linux",), config: dict[str, object] | None = None
) -> NewJob:
    """A lock job as FRONT's pipeline would create it: needs, label routing, a dispatch config."""
    return NewJob(
        spec=JobNeedsSpec(name, needs=needs),
        routing=routing_json([ExactLabelMatcher(value=label) for label in labels]),
        config=freeze_json({"workflow": "ci", **(config or {})}),
    )


@attrs.define
class Engine:
    services: ExecutionServices
    stores: Stores
    url: str

    async def create_run(
        self, jobs: Sequence[NewJob], *, workflow_timeout_ms: int | None = None
    ) -> CreatedRun:
        run = NewRun(
            run_id=uuid.uuid4(),
            workflow_name="ci",
            created_at=datetime.now(UTC),
            repo_identifier="file:///repos/demo.git",
            ref="refs/heads/main",
            sha="0" * 40,
            event="push",
            workflow_timeout_ms=workflow_timeout_ms,
        )
        created = await self.stores.execution.create_run(run, jobs)
        self.services.dispatcher.wake()
        return created

    async def job(self, job_id: uuid.UUID) -> JobRecord:
        record = await self.stores.execution.get_job(job_id)
        assert record is not None
        return record

    async def wait_job(self, job_id: uuid.UUID, *statuses: JobStatus, within: float = WAIT_S) -> JobRecord:
        with trio.fail_after(within):
            while (record := await self.job(job_id)).status not in statuses:  # noqa: ASYNC110 - polls the DB
                await trio.sleep(0.02)
        return record

    async def wait_run(self, run_id: uuid.UUID, *statuses: RunStatus, within: float = WAIT_S) -> RunStatus:
        with trio.fail_after(within):
            while True:
                run = await self.stores.execution.get_run(run_id)
                assert run is not None
                if run.status in statuses:
                    return run.status
                await trio.sleep(0.02)

    async def token(
        self,
        labels: Sequence[str] | None = None,
        *,
        agent_type: AgentType = AgentType.STATIC,
        created_by: str = "test",
    ) -> str:
        token = "kat_" + secrets.token_hex(32)
        await self.stores.agents.create_agent_token(
            NewAgentToken(
                token_hash=token_hash(token),
                token_prefix=token[:12],
                agent_type=agent_type,
                created_by=created_by,
                created_at=datetime.now(UTC),
                labels=None if labels is None else json.dumps(list(labels)),
            )
        )
        return token


def pg_stores(db: Database) -> Stores:
    return Stores(
        execution=PgExecutionStore(db),
        queue=PgDispatchQueue(db),
        webhooks=PgWebhookStore(db),
        agents=PgAgentStore(db),
        logs=PgLogStore(db),
    )


@asynccontextmanager
async def running_engine(
    database: PgTestDatabase, db: Database, settings: ExecutionSettings = FAST
) -> AsyncIterator[Engine]:
    stores = pg_stores(db)
    services = build_execution(settings, stores, db_url_for_listener=database.conninfo, clock=SystemClock())
    async with trio.open_nursery() as nursery:
        await nursery.start(services.run)
        async with serve_hub(services.hub, graceful_timeout=0.5) as url:
            yield Engine(services, stores, url)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def engine(pg_database: PgTestDatabase, pg_db: Database) -> AsyncIterator[Engine]:
    async with running_engine(pg_database, pg_db) as running:
        yield running


# --- handshake ------------------------------------------------------------------------------------


@pytest.mark.feature("PRO-08", "PRO-09")
async def test_a_good_token_registers_and_the_agent_is_recorded(engine: Engine) -> None:
    token = await engine.token(["linux", "gpu"])
    async with open_fake_agent(
        engine.url, agent_id="a1", token=token, labels=["Linux", "kici:os:linux"]
    ) as agent:
        assert agent.closed is None
        assert engine.services.hub.connected_count() == 1
        record = await engine.stores.agents.get_agent("a1")
        assert record is not None
        assert record.status is AgentStatus.CONNECTED
        assert record.labels == ("kici:os:linux", "linux")
    # The hub forgets the connection first and records the disconnect right after: wait for both.
    with trio.fail_after(WAIT_S):
        while engine.services.hub.connected_count():  # noqa: ASYNC110 - the hub exposes no event
            await trio.sleep(0.02)
        record = await engine.stores.agents.get_agent("a1")
        while record is not None and record.status is not AgentStatus.DISCONNECTED:
            await trio.sleep(0.02)
            record = await engine.stores.agents.get_agent("a1")
    assert record is not None
    assert record.status is AgentStatus.DISCONNECTED


@pytest.mark.feature("PRO-08", "PRO-03")
async def test_an_unknown_token_gets_auth_failure_and_4010(engine: Engine) -> None:
    async with open_fake_agent(engine.url, agent_id="a1", token="kat_" + "0" * 64, register=False) as agent:
        await agent.send_auth()
        failure = await agent.expect(AuthFailure)
        assert failure.reason == "Invalid or expired token"
        assert (await agent.wait_closed()).code == CloseCode.AGENT_AUTH_FAILED


@pytest.mark.feature("PRO-08")
async def test_a_revoked_token_is_refused(engine: Engine) -> None:
    token = await engine.token()
    record = await engine.stores.agents.find_agent_token(token_hash(token), datetime.now(UTC))
    assert record is not None
    await engine.stores.agents.revoke_agent_token(record.token_id, datetime.now(UTC))
    with pytest.raises(AgentClosedError):
        async with open_fake_agent(engine.url, agent_id="a1", token=token):
            pass


@pytest.mark.feature("PRO-08", "PRO-03")
async def test_no_auth_request_in_time_closes_4002(engine: Engine) -> None:
    async with open_fake_agent(engine.url, agent_id="a1", register=False) as agent:
        assert (await agent.wait_closed()).code == CloseCode.AUTH_TIMEOUT


@pytest.mark.feature("PRO-08", "PRO-03")
async def test_no_register_after_auth_closes_4002(engine: Engine) -> None:
    token = await engine.token()
    async with open_fake_agent(engine.url, agent_id="a1", token=token, register=False) as agent:
        await agent.send_auth()
        await agent.expect(AuthSuccess)
        closed = await agent.wait_closed()
        assert (closed.code, closed.reason) == (CloseCode.AUTH_TIMEOUT, "Registration timeout")


@pytest.mark.feature("PRO-08", "PRO-03")
async def test_register_before_auth_is_refused_with_4010(engine: Engine) -> None:
    async with open_fake_agent(engine.url, agent_id="a1", register=False) as agent:
        await agent.send_register()
        await agent.expect(AuthFailure)
        assert (await agent.wait_closed()).code == CloseCode.AGENT_AUTH_FAILED


@pytest.mark.feature("PRO-02", "PRO-03")
async def test_an_auth_request_with_protocol_version_zero_is_invalid_4003(engine: Engine) -> None:
    token = await engine.token()
    async with open_fake_agent(engine.url, agent_id="a1", token=token, register=False) as agent:
        await agent.send_text(json.dumps({"type": "auth.request", "token": token, "protocolVersion": 0}))
        closed = await agent.wait_closed()
        assert closed.code == CloseCode.INVALID_MESSAGE


@pytest.mark.feature("PRO-03")
async def test_garbage_json_closes_4003(engine: Engine) -> None:
    async with open_fake_agent(engine.url, agent_id="a1", register=False) as agent:
        await agent.send_text("{not json")
        closed = await agent.wait_closed()
        assert (closed.code, closed.reason) == (CloseCode.INVALID_MESSAGE, "Malformed JSON")


@pytest.mark.feature("PRO-03", "PRO-11")
async def test_an_unknown_message_from_a_registered_agent_gets_an_error_then_4003(engine: Engine) -> None:
    token = await engine.token()
    async with open_fake_agent(engine.url, agent_id="a1", token=token) as agent:
        await agent.send_text(json.dumps({"type": "no.such.type"}))
        error = await agent.expect(ErrorMessage)
        assert error.code == "INVALID_MESSAGE"
        assert (await agent.wait_closed()).code == CloseCode.INVALID_MESSAGE


@pytest.mark.feature("PRO-08")
async def test_labels_outside_the_token_scope_are_refused(engine: Engine) -> None:
    token = await engine.token(["linux"])
    async with open_fake_agent(
        engine.url, agent_id="a1", token=token, labels=["linux", "gpu", "kici:arch:x64"], register=False
    ) as agent:
        await agent.send_auth()
        await agent.expect(AuthSuccess)
        await agent.send_register()
        closed = await agent.wait_closed()
        assert closed.code == CloseCode.AGENT_AUTH_FAILED
        assert "gpu" in closed.reason
        assert "kici:arch:x64" not in closed.reason


@pytest.mark.feature("PRO-08")
async def test_an_ephemeral_token_binds_the_agent_id(engine: Engine) -> None:
    token = await engine.token(agent_type=AgentType.EPHEMERAL, created_by="runner-7")
    async with open_fake_agent(engine.url, agent_id="someone-else", token=token, register=False) as agent:
        await agent.send_auth()
        await agent.expect(AuthSuccess)
        await agent.send_register()
        assert (await agent.wait_closed()).code == CloseCode.AGENT_AUTH_FAILED
    async with open_fake_agent(engine.url, agent_id="runner-7", token=token) as agent:
        assert agent.closed is None


@pytest.mark.feature("PRO-09")
async def test_none_mode_registers_without_a_token(pg_database: PgTestDatabase, pg_db: Database) -> None:
    settings = attrs.evolve(FAST, agent_auth=AgentAuth.NONE)
    async with (
        running_engine(pg_database, pg_db, settings) as engine,
        open_fake_agent(engine.url, agent_id="dev", labels=["linux"]) as agent,
    ):
        assert agent.closed is None
        assert engine.services.hub.connected_count() == 1


@pytest.mark.feature("PRO-05")
async def test_the_rate_limiter_judges_the_first_frame_before_auth(
    pg_database: PgTestDatabase, pg_db: Database
) -> None:
    settings = attrs.evolve(FAST, auth_timeout_ms=5_000, rate_limit=RateLimitConfig(max_message_bytes=200))
    async with running_engine(pg_database, pg_db, settings) as engine:
        token = await engine.token()
        async with open_fake_agent(engine.url, agent_id="a1", register=False) as agent:
            frame = {"type": "auth.request", "token": token, "protocolVersion": 1, "pad": "x" * 300}
            await agent.send_text(json.dumps(frame))
            closed = await agent.wait_closed()
            assert (closed.code, closed.reason) == (CloseCode.INVALID_MESSAGE, "Message too large")
            assert not agent.received(AuthSuccess)


@pytest.mark.feature("PRO-05")
async def test_a_flood_during_the_handshake_is_warned_and_dropped(
    pg_database: PgTestDatabase, pg_db: Database
) -> None:
    settings = attrs.evolve(FAST, rate_limit=RateLimitConfig(message_capacity=1, messages_per_s=0.01))
    async with running_engine(pg_database, pg_db, settings) as engine:
        token = await engine.token()
        async with open_fake_agent(engine.url, agent_id="a1", token=token, register=False) as agent:
            await agent.send_auth()
            await agent.expect(AuthSuccess)
            await agent.send_register()
            warning = await agent.expect(RateLimitWarning)
            assert warning.retry_after_ms > 0
            assert (await agent.wait_closed()).code == CloseCode.AUTH_TIMEOUT
            assert not agent.received(RegisterAck)


@pytest.mark.feature("PRO-15", "PRO-03")
async def test_a_silent_agent_is_closed_4004(engine: Engine) -> None:
    token = await engine.token()
    async with open_fake_agent(engine.url, agent_id="a1", token=token) as agent:
        closed = await agent.wait_closed()
        assert (closed.code, closed.reason) == (CloseCode.HEARTBEAT_TIMEOUT, "Heartbeat timeout")


@pytest.mark.feature("PRO-15")
async def test_heartbeats_keep_an_agent_connected(engine: Engine) -> None:
    token = await engine.token()
    async with open_fake_agent(engine.url, agent_id="a1", token=token, heartbeat_interval=0.1) as agent:
        await trio.sleep(1.0)
        assert agent.closed is None
        assert not agent.received(RegisterAck)


@pytest.mark.feature("PRO-08")
async def test_a_bootstrap_token_registers_once(engine: Engine) -> None:
    token = await engine.token(created_by="bootstrap:a9")
    async with open_fake_agent(engine.url, agent_id="a9", token=token) as agent:
        assert agent.closed is None
    with pytest.raises(AgentClosedError):
        async with open_fake_agent(engine.url, agent_id="a9", token=token):
            pass


# --- observability (PRO-37) ----------------------------------------------------------------------


async def _wait_metric(metrics: OrchestratorMetrics, name: str, value: float, **labels: str) -> None:
    with trio.fail_after(WAIT_S):
        while metrics.registry.get_sample_value(name, labels or None) != value:  # noqa: ASYNC110
            await trio.sleep(0.02)


@pytest.mark.feature("PRO-37", "OPS-10", "PRO-16")
async def test_connection_and_recovery_metrics_after_a_scripted_session(engine: Engine) -> None:
    metrics = OrchestratorMetrics()
    instrument_execution(metrics, engine.services.hub, engine.services.scheduler)
    value = metrics.registry.get_sample_value
    async with open_fake_agent(engine.url, agent_id="a1", token="kat_" + "0" * 64, register=False) as agent:
        await agent.send_auth()
        await agent.wait_closed()
    await _wait_metric(metrics, "kici_orch_agent_handshake_failures_total", 1, reason="invalid_token")
    await _wait_metric(metrics, "kici_orch_agent_connections_closed_total", 1, code="4010")

    token = await engine.token()
    created = await engine.create_run([job("build")])
    job_id = created.job_ids["build"]
    async with open_fake_agent(
        engine.url, agent_id="a1", token=token, labels=["linux"], heartbeat_interval=0.1
    ) as agent:
        dispatch = await agent.expect(JobDispatch)
        await agent.ack(dispatch)
        await agent.status(dispatch, JobState.RUNNING)
        await engine.wait_job(job_id, JobStatus.RUNNING)
    await engine.wait_job(job_id, JobStatus.RECOVERING)
    await _wait_metric(metrics, "kici_orch_jobs_recovery_started_total", 1)
    assert value("kici_orch_jobs_recovering") == 1
    in_flight = InFlightJob(job_id=str(job_id), run_id=str(created.run_id))
    async with open_fake_agent(
        engine.url,
        agent_id="a1",
        token=token,
        labels=["linux"],
        in_flight=[in_flight],
        heartbeat_interval=0.1,
    ) as agent:
        await engine.wait_job(job_id, JobStatus.RUNNING)
        assert value("kici_orch_jobs_reclaimed_total") == 1
        assert value("kici_orch_jobs_recovering") == 0
        await agent.status(dispatch, JobState.SUCCESS)
        await engine.wait_run(created.run_id, RunStatus.SUCCESS)

    silent = await engine.create_run([job("test")])
    async with open_fake_agent(
        engine.url, agent_id="a2", token=token, labels=["linux"], heartbeat_interval=0.1
    ) as agent:
        await agent.expect(JobDispatch)
        await _wait_metric(metrics, "kici_orch_dispatch_ack_timeouts_total", 1)
        assert (await agent.wait_closed()).code == 4031
    async with open_fake_agent(
        engine.url, agent_id="a3", token=token, labels=["linux"], heartbeat_interval=0.1
    ) as agent:
        retry = await agent.expect(JobDispatch)
        await agent.ack(retry)
        await agent.status(retry, JobState.RUNNING)
        await engine.wait_job(silent.job_ids["test"], JobStatus.RUNNING)
    await engine.wait_job(silent.job_ids["test"], JobStatus.FAILED)
    await _wait_metric(metrics, "kici_orch_jobs_recovery_expired_total", 1)
    await _wait_metric(metrics, "kici_orch_jobs_recovering", 0)

    assert value("kici_orch_jobs_recovery_started_total") == 2
    assert value("kici_orch_agent_connections_opened_total") == 5
    assert value("kici_orch_agent_connections_closed_total", {"code": "4031"}) == 1
    text = metrics.render().decode()
    assert 'kici_orch_agent_handshake_failures_total{reason="invalid_token"} 1.0' in text
    assert "kici_orch_jobs_reclaimed_total 1.0" in text
