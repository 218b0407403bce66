"""The orchestrator's Platform link against a protocol-level fake Platform (PRO-20/21/22/28, HOOK-05).

Everything on the orchestrator side is real: the link over a trio-websocket connection on loopback,
the execution services and the webhook pipeline over a real PostgreSQL, a fake agent over the
agent WebSocket. The Platform is :mod:`kici.testing.fake_platform`; the GitHub lock fetch is the
contract suite's fake behind the ``LockFileFetcher`` port.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
import trio

from kici.adapters.clock import SystemClock
from kici.adapters.postgres.database import Database
from kici.adapters.ws.client import connect
from kici.domain.config.schema import AgentAuth
from kici.domain.config.sources import GITHUB_MAX_PAYLOAD_BYTES, SourceConfig
from kici.domain.execution.states import JobStatus, RunStatus
from kici.domain.lockfile import LockFile
from kici.domain.lockfile.frozen import thaw_json
from kici.domain.protocol import (
    PROTOCOL_VERSION,
    ActorUser,
    CloseCode,
    DashboardErrorCode,
    DashboardErrorFrame,
    ExecutionEvent,
    ExecutionEventKind,
    ExecutionStatus,
    GenericDashboardResponse,
    Heartbeat,
    JobDispatch,
    JobState,
    JobStatusForward,
    LogChunk,
    OrchCapabilitiesUpdate,
    OrchMode,
    RunCancelRequest,
    RunCancelResponse,
    RunState,
    SourceEntry,
    SourceProvider,
    SourceRegister,
    SourceSubtype,
    StateReplay,
    StepState,
    StepStatusForward,
    WebhookAck,
    WebhookRelayChunk,
    WebhookRelayStart,
    WebhookResult,
    encode,
)
from kici.domain.protocol.dashboard import DASHBOARD_REQUEST_CLASSES
from kici.domain.providers import Credentials, ProviderBundle
from kici.domain.relay import split_body
from kici.domain.store import CreatedRun, EventLogStatus, EventSource, NewJob, NewRun
from kici.domain.webhooks.lock_cache import LockCache
from kici.domain.webhooks.normalizers.github import GithubNormalizer
from kici.domain.webhooks.verification import sign_body
from kici.services.orchestrator.execution import ExecutionServices, Stores, build_execution
from kici.services.orchestrator.ingress import IngressState
from kici.services.orchestrator.metrics import OrchestratorMetrics
from kici.services.orchestrator.pipeline import PipelineDeps
from kici.services.orchestrator.platform_link import (
    LinkParts,
    LinkSettings,
    LinkState,
    PlatformLink,
    build_platform_link,
)
from kici.services.orchestrator.sources import build_source_book
from kici.services.orchestrator.upstream import PgReplayQueries, UpstreamForwarder
from kici.testing.fake_agent import open_fake_agent, serve_hub
from kici.testing.fake_platform import FakePlatform, open_fake_platform
from kici.testing.postgres import PgTestDatabase
from tests.contract.test_orch_engine_hub import FAST, job, pg_stores
from tests.contract.test_orch_pipeline import APP_KEY, CI_LOCK, SECRET, fixture, github_source

pytestmark = pytest.mark.pg

TOKEN = "kici-org-api-key"
INSTANCE = "orch-test-1"
WAIT_S = 15.0
SETTINGS = attrs.evolve(FAST, agent_auth=AgentAuth.NONE)


@attrs.define
class GatedFetcher:
    """A ``LockFileFetcher`` that returns ``lock`` once ``open`` is set (a slow provider API)."""

    lock: LockFile
    open: trio.Event = attrs.field(factory=trio.Event)
    calls: int = 0

    @property
    def provider(self) -> str:
        return "github"

    async def fetch_lock_file(self, repo: str, ref: str, creds: Credentials) -> LockFile | None:
        self.calls += 1
        await self.open.wait()
        return self.lock


@attrs.define
class Linked:
    platform: FakePlatform
    link: PlatformLink
    services: ExecutionServices
    stores: Stores
    db: Database
    fetcher: GatedFetcher
    agents_url: str

    async def create_run(self, jobs: Sequence[NewJob]) -> CreatedRun:
        run = NewRun(
            run_id=uuid.uuid4(),
            workflow_name="ci",
            created_at=datetime.now(UTC),
            repo_identifier="file:///repos/demo.git",
            ref="refs/heads/main",
            sha="0" * 40,
            event="push",
        )
        created = await self.stores.execution.create_run(run, jobs)
        self.services.dispatcher.wake()
        return created

    async def wait_run(self, run_id: uuid.UUID, *statuses: RunStatus) -> RunStatus:
        with trio.fail_after(WAIT_S):
            while True:
                run = await self.stores.execution.get_run(run_id)
                if run is not None and run.status in statuses:
                    return run.status
                await trio.sleep(0.02)

    async def run_ids(self) -> list[uuid.UUID]:
        rows = await self.db.run(lambda conn: conn.execute("SELECT id FROM execution_runs").fetchall())
        return [row["id"] for row in rows]

    async def wait_runs(self, count: int) -> list[uuid.UUID]:
        with trio.fail_after(WAIT_S):
            while len(ids := await self.run_ids()) < count:  # noqa: ASYNC110 - polls the database
                await trio.sleep(0.02)
        return ids


@asynccontextmanager
async def linked(
    database: PgTestDatabase,
    db: Database,
    *,
    tokens: Sequence[str] | None = (TOKEN,),
    sources: Sequence[SourceConfig] | None = None,
    gated: bool = False,
) -> AsyncIterator[Linked]:
    stores = pg_stores(db)
    clock = SystemClock()
    forwarder = UpstreamForwarder(
        execution=stores.execution, replay=PgReplayQueries(db), clock=clock, orchestrator_id=INSTANCE
    )
    services = build_execution(
        SETTINGS, stores, db_url_for_listener=database.conninfo, clock=clock, observer=forwarder
    )
    fetcher = GatedFetcher(CI_LOCK)
    if not gated:
        fetcher.open.set()
    configured = (github_source(max_payload_bytes=GITHUB_MAX_PAYLOAD_BYTES),) if sources is None else sources
    book = build_source_book(tuple(configured), environ={})
    for source in book.sources:
        if source.is_github:
            book.registry.register(
                source.routing_key, ProviderBundle(normalizer=GithubNormalizer(), lock_file_fetcher=fetcher)
            )
    metrics = OrchestratorMetrics()
    deps = PipelineDeps(
        registry=lambda: book.registry,
        execution=stores.execution,
        webhooks=stores.webhooks,
        lock_cache=LockCache(lambda: trio.current_time() * 1000),
        clock=clock,
        wake=services.dispatcher.wake,
        settle=services.tracker.settle,
        metrics=metrics,
    )
    ingress = IngressState(
        book=lambda: book, pipeline=deps, clock=clock, metrics=metrics, direct_enabled=False
    )
    async with open_fake_platform(tokens) as platform, trio.open_nursery() as nursery:
        link = build_platform_link(
            LinkParts(
                settings=LinkSettings(
                    url=platform.url,
                    token=TOKEN,
                    instance_id=INSTANCE,
                    heartbeat_interval_s=0.2,
                    auth_timeout_s=2.0,
                    max_reconnect_delay_ms=100.0,
                ),
                forwarder=forwarder,
                ingress=ingress,
                cancel_run=services.tracker.cancel_run,
                book=lambda: book,
                connector=connect,
                jitter=lambda: 0.0,
            )
        )
        await nursery.start(services.run)
        async with serve_hub(services.hub, graceful_timeout=0.5) as agents_url, trio.open_nursery() as links:
            await links.start(link.run)
            try:
                yield Linked(platform, link, services, stores, db, fetcher, agents_url)
            finally:
                link.stop()
        nursery.cancel_scope.cancel()


@pytest.fixture
async def world(pg_database: PgTestDatabase, pg_db: Database) -> AsyncIterator[Linked]:
    async with linked(pg_database, pg_db) as running:
        await running.platform.wait_connected()
        yield running


def push(
    secret: str = SECRET, *, padding: int = 0, delivery: str | None = None
) -> tuple[dict[str, str], bytes]:
    """GitHub's push fixture, signed like GitHub signs it; ``padding`` makes the body bigger."""
    headers, payload = fixture("github_push")
    if padding:
        payload = {**payload, "padding": "x" * padding}
    if delivery is not None:
        headers = {**headers, "x-github-delivery": delivery}
    body = json.dumps(payload).encode()
    return {**headers, "x-hub-signature-256": sign_body(body, secret)}, body


async def relay_push(world: Linked, headers: dict[str, str], body: bytes, **extra: Any) -> WebhookAck:
    return await world.platform.relay(
        APP_KEY,
        body,
        delivery_id=headers["x-github-delivery"],
        event=headers["x-github-event"],
        headers=headers,
        **extra,
    )


def for_run(run_id: uuid.UUID | str) -> Callable[[Any], bool]:
    return lambda message: message.run_id == str(run_id)


# --- handshake (PRO-20) -------------------------------------------------------------------------------


@pytest.mark.feature("PRO-20", "PRO-15")
async def test_the_handshake_authenticates_registers_sources_and_replays_state(world: Linked) -> None:
    (request,) = world.platform.auth_requests
    assert (request.token, request.protocol_version) == (TOKEN, PROTOCOL_VERSION)
    assert request.capabilities is not None
    assert request.capabilities.supported_dashboard_requests == ["run.cancel.request"]
    register = await world.platform.expect(SourceRegister)
    assert register.sources == [
        SourceEntry(
            provider=SourceProvider.GITHUB, routing_key=APP_KEY, name="gh", subtype=SourceSubtype.GITHUB_APP
        )
    ]
    assert (register.instance_id, register.mode) == (INSTANCE, OrchMode.PLATFORM)
    update = await world.platform.expect(OrchCapabilitiesUpdate)
    assert update.capabilities == request.capabilities
    replay = await world.platform.expect(StateReplay)
    assert replay.runs == []
    await world.platform.expect(Heartbeat)
    assert world.link.state is LinkState.AUTHENTICATED


@pytest.mark.feature("PRO-20")
async def test_source_register_is_sent_even_without_sources(
    pg_database: PgTestDatabase, pg_db: Database
) -> None:
    async with linked(pg_database, pg_db, sources=()) as running:
        register = await running.platform.expect(SourceRegister)
        assert register.sources == []
        await running.platform.expect(StateReplay)


@pytest.mark.feature("PRO-20", "PRO-22")
async def test_a_refused_key_is_retried_for_ever_and_the_buffer_is_kept(
    pg_database: PgTestDatabase, pg_db: Database
) -> None:
    async with linked(pg_database, pg_db, tokens=("another-key",)) as running:
        platform = running.platform
        await platform.wait_for(lambda: len(platform.auth_requests) >= 3)
        assert running.link.last_auth_failure == "Invalid API key"
        assert running.link.state is not LinkState.STOPPED
        created = await running.create_run([job("build")])
        with trio.fail_after(WAIT_S):
            while not len(running.link.forwarder.buffer):  # noqa: ASYNC110 - the buffer has no event
                await trio.sleep(0.02)
        platform.tokens = frozenset({TOKEN})
        await platform.wait_connected()
        status = await platform.expect(ExecutionStatus, for_run(created.run_id))
        assert status.status in {RunState.PENDING, RunState.RUNNING}
        queued = await platform.expect(JobStatusForward, for_run(created.run_id))
        assert (queued.job_name, queued.status, queued.orchestrator_id) == (
            "build",
            JobState.QUEUED,
            INSTANCE,
        )
        replay = await platform.expect(StateReplay)
        assert [run.run_id for run in replay.runs] == [str(created.run_id)]
        assert [j.job_name for j in replay.runs[0].jobs] == ["build"]


# --- relayed webhooks (PRO-21, HOOK-05) ---------------------------------------------------------------


@pytest.mark.feature("PRO-21", "HOOK-05", "HOOK-03", "PRO-22")
async def test_a_relayed_signed_push_is_acked_before_processing_and_creates_a_run(
    pg_database: PgTestDatabase, pg_db: Database
) -> None:
    async with linked(pg_database, pg_db, gated=True) as world:
        await world.platform.wait_connected()
        headers, body = push()
        ack = await relay_push(world, headers, body)
        assert (ack.result, ack.reason, ack.delivery_id) == (
            WebhookResult.ACCEPTED,
            None,
            headers["x-github-delivery"],
        )
        row = await world.stores.webhooks.get_delivery("__default__", headers["x-github-delivery"])
        assert row is not None
        assert (row.status, row.source) == (EventLogStatus.RECEIVED, EventSource.RELAY)
        assert await world.run_ids() == []
        world.fetcher.open.set()
        (run_id,) = await world.wait_runs(1)
        status = await world.platform.expect(ExecutionStatus, for_run(run_id))
        # The forwarder sends the run's state when it reads it, which may already be past pending.
        assert status.workflow_name == "ci"
        assert status.status in (RunState.PENDING, RunState.RUNNING)
        started = await world.platform.expect(ExecutionEvent, for_run(run_id))
        assert started.event is ExecutionEventKind.STARTED
        with trio.fail_after(WAIT_S):
            while True:
                row = await world.stores.webhooks.get_delivery("__default__", headers["x-github-delivery"])
                if row is not None and row.status is EventLogStatus.PROCESSED:
                    break
                await trio.sleep(0.02)
        assert row.run_id == run_id
        again = await relay_push(world, headers, body)
        assert again.result is WebhookResult.ACCEPTED
        await trio.sleep(0.3)
        assert await world.run_ids() == [run_id]


@pytest.mark.feature("PRO-21", "HOOK-05", "HOOK-03")
async def test_wrong_signatures_and_unknown_sources_are_refused_and_create_nothing(world: Linked) -> None:
    headers, body = push(secret="not-the-secret")
    ack = await relay_push(world, headers, body)
    assert ack.result is WebhookResult.REJECTED_SIGNATURE
    assert ack.reason == "signature does not match any active webhook secret"
    unsigned = {k: v for k, v in headers.items() if k != "x-hub-signature-256"}
    assert (await relay_push(world, unsigned, body)).result is WebhookResult.REJECTED_SIGNATURE
    unknown = await world.platform.relay(
        "github:999", body, delivery_id="d-unknown", event="push", headers=push()[0]
    )
    assert unknown.result is WebhookResult.REJECTED_UNKNOWN_SOURCE
    assert await world.stores.webhooks.get_delivery("__default__", headers["x-github-delivery"]) is None
    await trio.sleep(0.3)
    assert await world.run_ids() == []


@pytest.mark.feature("PRO-21", "HOOK-03")
async def test_a_signature_lifted_into_the_start_frame_verifies(world: Linked) -> None:
    headers, body = push(delivery="d0000001-0000-4000-8000-0000000000aa")
    signature = headers.pop("x-hub-signature-256")
    minimal = {"content-type": "application/json"}
    ack = await world.platform.relay(
        APP_KEY,
        body,
        delivery_id=headers["x-github-delivery"],
        event="push",
        headers=minimal,
        signature_header_name="x-hub-signature-256",
        signature_header=signature,
    )
    assert ack.result is WebhookResult.ACCEPTED
    assert len(await world.wait_runs(1)) == 1


@pytest.mark.feature("PRO-21")
async def test_a_signed_but_malformed_body_is_acknowledged_and_dropped(world: Linked) -> None:
    body = b"{not json"
    headers = {
        "x-github-event": "push",
        "x-github-delivery": "d-malformed",
        "x-hub-signature-256": sign_body(body, SECRET),
    }
    ack = await relay_push(world, headers, body)
    assert ack.result is WebhookResult.ACCEPTED
    assert ack.reason == "not processed: the body is not a JSON object"
    await trio.sleep(0.3)
    assert await world.run_ids() == []


@pytest.mark.feature("PRO-21", "HOOK-05")
async def test_corrupted_chunk_streams_are_rejected_misconfigured(world: Linked) -> None:
    platform = world.platform
    headers, body = push()
    split = split_body(body, 1024)

    def start(mid: str, **changes: Any) -> WebhookRelayStart:
        values: dict[str, Any] = {
            "message_id": mid,
            "routing_key": APP_KEY,
            "delivery_id": f"delivery-{mid}",
            "event": "push",
            "headers": headers,
            "total_size": split.total_size,
            "chunk_count": split.chunk_count,
        }
        return WebhookRelayStart(**{**values, **changes})

    async def verdict(mid: str) -> WebhookAck:
        return await platform.expect(WebhookAck, lambda ack: ack.message_id == mid)

    await platform.send(start("m-order"))
    await platform.send(
        WebhookRelayChunk(message_id="m-order", sequence=1, data=split.chunks[1].data, final=False)
    )
    ack = await verdict("m-order")
    assert (ack.result, ack.delivery_id) == (WebhookResult.REJECTED_MISCONFIGURED, "delivery-m-order")
    assert ack.reason == "chunk 1 out of order, expected 0"

    await platform.send(start("m-b64"))
    await platform.send(WebhookRelayChunk(message_id="m-b64", sequence=0, data="!!not base64!!", final=False))
    assert (await verdict("m-b64")).reason == "chunk 0 is not valid base64"

    await platform.send(start("m-size", total_size=split.total_size + 1))
    for chunk in split.chunks:
        await platform.send(
            WebhookRelayChunk(
                message_id="m-size", sequence=chunk.sequence, data=chunk.data, final=chunk.final
            )
        )
    assert "totalSize says" in ((await verdict("m-size")).reason or "")

    await platform.send(start("m-dup"))
    await platform.send(start("m-dup"))
    assert (await verdict("m-dup")).reason == "duplicate relay start"

    await platform.send(WebhookRelayChunk(message_id="m-orphan", sequence=0, data="", final=True))
    orphan = await verdict("m-orphan")
    assert (orphan.result, orphan.delivery_id) == (WebhookResult.REJECTED_MISCONFIGURED, "m-orphan")

    assert (await relay_push(world, headers, body, chunk_bytes=1024)).result is WebhookResult.ACCEPTED
    assert len(await world.wait_runs(1)) == 1


@pytest.mark.feature("PRO-21", "HOOK-05")
async def test_a_large_payload_crosses_the_relay_in_many_chunks_intact(world: Linked) -> None:
    headers, body = push(padding=1_500_000)
    assert split_body(body).chunk_count > 20
    ack = await relay_push(world, headers, body)
    assert ack.result is WebhookResult.ACCEPTED
    (run_id,) = await world.wait_runs(1)
    jobs = await world.stores.execution.list_jobs(run_id)
    config = thaw_json(jobs[0].config)
    assert config["event"]["payload"] == json.loads(body)


# --- telemetry (PRO-22) -------------------------------------------------------------------------------


@pytest.mark.feature("PRO-22", "PRO-20")
async def test_telemetry_flows_while_connected_and_is_replayed_after_a_reconnect(world: Linked) -> None:
    platform = world.platform
    async with open_fake_agent(
        world.agents_url, agent_id="a1", labels=["linux"], heartbeat_interval=0.1
    ) as agent:
        first = await world.create_run([job("build")])
        dispatch = await agent.expect(JobDispatch)
        await agent.ack(dispatch)
        await agent.run_job(dispatch, steps=("compile",))
        await world.wait_run(first.run_id, RunStatus.SUCCESS)
        step = await platform.expect(StepStatusForward, lambda m: m.state is StepState.SUCCESS)
        assert (step.run_id, step.job_name, step.step_name) == (str(first.run_id), "build", "compile")
        log = await platform.expect(LogChunk, for_run(first.run_id))
        assert log.lines == ["compile: working"]
        done = await platform.expect(
            JobStatusForward, lambda m: m.run_id == str(first.run_id) and m.status is JobState.SUCCESS
        )
        assert (done.agent_id, done.job_name) == ("a1", "build")
        final = await platform.expect(
            ExecutionStatus, lambda m: m.run_id == str(first.run_id) and m.status is RunState.SUCCESS
        )
        assert final.completed_at is not None

        platform.accepting = False
        attempts = len(platform.auth_requests)
        await platform.kick(CloseCode.AGENT_AUTH_FAILED, "a code an agent would stop on")
        await platform.wait_for(lambda: len(platform.auth_requests) >= attempts + 2)
        second = await world.create_run([job("test")])
        dispatch = await agent.expect(JobDispatch)
        await agent.ack(dispatch)
        await agent.run_job(dispatch, steps=("unit",))
        await world.wait_run(second.run_id, RunStatus.SUCCESS)

        def buffered_success() -> bool:
            return any(
                isinstance(m, ExecutionStatus)
                and m.run_id == str(second.run_id)
                and m.status is RunState.SUCCESS
                for m in world.link.forwarder.buffer
            )

        with trio.fail_after(WAIT_S):
            while not buffered_success():  # noqa: ASYNC110 - the buffer has no event
                await trio.sleep(0.02)
        sessions = platform.sessions
        platform.accepting = True
        await platform.wait_for(lambda: platform.sessions == sessions + 1)
        replayed = await platform.expect(
            ExecutionStatus, lambda m: m.run_id == str(second.run_id) and m.status is RunState.SUCCESS
        )
        assert replayed.workflow_name == "ci"
        assert (await platform.expect(LogChunk, for_run(second.run_id))).lines == ["unit: working"]
        replay = await platform.expect(
            StateReplay, lambda m: any(r.run_id == str(second.run_id) for r in m.runs)
        )
        statuses = {run.run_id: run.status for run in replay.runs}
        assert statuses[str(second.run_id)] is RunState.SUCCESS


# --- dashboard requests (PRO-28) ---------------------------------------------------------------------


ACTOR = ActorUser(sub="user-1")


@pytest.mark.feature("PRO-28", "PRO-22")
async def test_run_cancel_request_cancels_the_run_and_answers_once(world: Linked) -> None:
    created = await world.create_run([job("build")])
    run_id = str(created.run_id)
    response = await world.platform.request(RunCancelRequest(request_id="r1", actor=ACTOR, run_id=run_id))
    assert isinstance(response, RunCancelResponse)
    assert (response.error, response.cancelled_jobs) == (None, 1)
    assert await world.wait_run(created.run_id, RunStatus.CANCELLED) is RunStatus.CANCELLED
    await world.platform.expect(
        ExecutionStatus, lambda m: m.run_id == run_id and m.status is RunState.CANCELLED
    )
    run = await world.stores.execution.get_run(created.run_id)
    assert run is not None
    assert run.cancelled_by == "dashboard:user:user-1"
    jobs = await world.stores.execution.list_jobs(created.run_id)
    assert [j.status for j in jobs] == [JobStatus.CANCELLED]

    again = await world.platform.request(RunCancelRequest(request_id="r2", actor=ACTOR, run_id=run_id))
    assert isinstance(again, RunCancelResponse)
    assert again.error == "Run already cancelled"
    missing = await world.platform.request(
        RunCancelRequest(request_id="r3", actor=ACTOR, run_id=str(uuid.uuid4()))
    )
    assert isinstance(missing, RunCancelResponse)
    assert missing.error == "Run not found"
    bad = await world.platform.request(RunCancelRequest(request_id="r4", actor=ACTOR, run_id="not-a-uuid"))
    assert isinstance(bad, RunCancelResponse)
    assert bad.code is DashboardErrorCode.INVALID_PAYLOAD


@pytest.mark.feature("PRO-28")
async def test_unsupported_unknown_and_invalid_requests_get_structured_errors(world: Linked) -> None:
    platform = world.platform
    runs_list = DASHBOARD_REQUEST_CLASSES["dashboard.runs.list"](request_id="g1", actor=ACTOR)
    listed = await platform.request(runs_list)
    assert isinstance(listed, GenericDashboardResponse)
    assert (listed.code, listed.request_type) == (
        DashboardErrorCode.UNSUPPORTED_REQUEST_TYPE,
        "dashboard.runs.list",
    )

    await platform.send_text("{not json")
    actor = {"type": "user", "sub": "u"}
    await platform.send_text(json.dumps({"type": "dashboard.nope", "requestId": "u1", "actor": actor}))
    unknown = await platform.expect(DashboardErrorFrame, lambda m: m.request_id == "u1")
    assert (unknown.code, unknown.request_type) == (
        DashboardErrorCode.UNSUPPORTED_REQUEST_TYPE,
        "dashboard.nope",
    )
    assert encode(unknown).startswith('{"type":"dashboard.nope.response"')

    await platform.send_text(json.dumps({"type": "run.cancel.request", "requestId": "i1", "actor": actor}))
    invalid = await platform.expect(RunCancelResponse, lambda m: m.request_id == "i1")
    assert invalid.code is DashboardErrorCode.INVALID_PAYLOAD

    await platform.send_text(json.dumps({"type": "no.such.frame", "x": 1}))
    created = await world.create_run([job("build")])
    answer = await platform.request(
        RunCancelRequest(request_id="ok", actor=ACTOR, run_id=str(created.run_id))
    )
    assert isinstance(answer, RunCancelResponse)
    assert answer.error is None
    assert world.link.connections == 1


@pytest.mark.feature("PRO-20")
async def test_new_credentials_reconnect_and_reloaded_sources_register_again(world: Linked) -> None:
    platform, link = world.platform, world.link
    await platform.expect(SourceRegister)
    await platform.expect(StateReplay)
    link.sources_changed()
    again = await platform.expect(SourceRegister)
    assert [s.routing_key for s in again.sources] == [APP_KEY]
    await trio.sleep(0.2)
    assert platform.received(StateReplay) == []

    platform.tokens = frozenset({TOKEN, "rotated-key"})
    sessions = platform.sessions
    link.reconfigure(attrs.evolve(link.settings, token="rotated-key"))
    await platform.wait_for(lambda: platform.sessions == sessions + 1)
    assert platform.auth_requests[-1].token == "rotated-key"
    await platform.expect(StateReplay)
    link.reconfigure(attrs.evolve(link.settings, heartbeat_interval_s=0.5))
    await trio.sleep(0.3)
    assert platform.sessions == sessions + 1
