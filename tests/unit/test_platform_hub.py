"""The Platform's orchestrator endpoint over a real WebSocket on loopback, with the in-memory store
(which passes the same contract suite as PostgreSQL): the handshake and tenancy (PRO-20), invalid
input and close codes (PRO-03), revocation (PRO-36), telemetry (PRO-22), liveness (PRO-15), the rate
limiter (PRO-05) and dashboard requests (PRO-28, PRO-12).

The module also holds the harness the ingress tests use: :func:`running_platform` builds the hub and
the ingress over a `MemoryPlatformStore`, mounts them with the daemon's own ``build_app`` and serves
it on a free port.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime

import attrs
import httpx
import pytest
import trio
from structlog.testing import capture_logs

from kici.adapters.clock import SystemClock
from kici.adapters.ws.client import connect
from kici.adapters.ws.server import BoundServer
from kici.domain.liveness import LivenessThresholds
from kici.domain.ports import ConnectionClosed
from kici.domain.protocol import (
    DASHBOARD_REQUEST_CLASSES,
    DASHBOARD_RESPONSE_CLASSES,
    ActorUser,
    AuthRequest,
    CloseCode,
    DashboardRequest,
    ExecutionEvent,
    ExecutionEventKind,
    ExecutionStatus,
    JobState,
    JobStatusForward,
    LogChunk,
    Message,
    OrchCapabilities,
    OrchCapabilitiesUpdate,
    RunCancelRequest,
    RunCancelResponse,
    RunState,
    SourceDeregister,
    SourceDeregisterAck,
    SourceRegisterAck,
    StateReplay,
    StepState,
    StepStatusForward,
    encode,
)
from kici.domain.tenancy import (
    NOT_OWNED_REASON,
    Org,
    api_key_hash,
    api_key_prefix,
    new_api_key,
)
from kici.services.platform.hub import (
    HubSettings,
    NoOrchestratorError,
    OrchestratorGoneError,
    OrchestratorHub,
    UnsupportedRequestError,
)
from kici.services.platform.ingress import IngressSettings, IngressState
from kici.services.platform.main import AppParts, Intake, build_app
from kici.testing.fake_orchestrator import (
    FakeOrchestrator,
    MemoryPlatformStore,
    OrchestratorRefusedError,
    open_fake_orchestrator,
    serve_app,
    source,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WAIT_S = 10.0
FAST_HUB = HubSettings(
    auth_timeout_s=2.0,
    liveness=LivenessThresholds(unhealthy_after_ms=2_000, stale_after_ms=4_000),
    public_url="https://platform.example",
    request_timeout_s=2.0,
)


class RecordingSink:
    """A telemetry sink keeping what it got; it raises for the run ids in ``failing``."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, Message]] = []
        self.failing: set[str] = set()
        self.arrived = trio.Event()

    async def record(self, org_id: str, connection_id: str, message: Message) -> None:
        await trio.lowlevel.checkpoint()
        if getattr(message, "run_id", None) in self.failing:
            raise RuntimeError("sink broken")
        self.records.append((org_id, connection_id, message))
        self.arrived.set()
        self.arrived = trio.Event()

    async def wait_for(self, count: int) -> list[tuple[str, str, Message]]:
        with trio.fail_after(WAIT_S):
            while len(self.records) < count:
                await self.arrived.wait()
        return self.records


@attrs.frozen
class Tenant:
    org: Org
    api_key: str
    key_id: str


@attrs.define
class Platform:
    store: MemoryPlatformStore
    hub: OrchestratorHub
    ingress: IngressState
    sink: RecordingSink
    bound: BoundServer
    http: httpx.AsyncClient
    intake: Intake

    @property
    def ws_url(self) -> str:
        return self.bound.url("/ws", websocket=True)

    async def tenant(self, name: str, routing_keys: Sequence[str] = ()) -> Tenant:
        org = await self.store.create_org(name, NOW)
        return await self.key_for(org, routing_keys)

    async def key_for(self, org: Org, routing_keys: Sequence[str] = ()) -> Tenant:
        key = new_api_key(secrets.token_bytes(32))
        record = await self.store.create_api_key(org.id, "test", api_key_hash(key), api_key_prefix(key), NOW)
        for routing_key in routing_keys:
            await self.store.add_routing_key(org.id, routing_key, NOW)
        return Tenant(org, key, record.id)

    def orchestrator(
        self, tenant: Tenant, *routing_keys: str, **options: object
    ) -> AbstractAsyncContextManager[FakeOrchestrator]:
        sources = [source(key) for key in routing_keys]
        return open_fake_orchestrator(self.ws_url, api_key=tenant.api_key, sources=sources, **options)

    async def post(
        self, routing_key: str, body: bytes, headers: dict[str, str] | None = None, provider: str = "github"
    ) -> httpx.Response:
        return await self.http.post(
            f"/webhooks/{provider}/{routing_key}", content=body, headers=headers or {}
        )

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        with trio.fail_after(WAIT_S):
            while not predicate():  # noqa: ASYNC110 - polls state the code under test exposes no event for
                await trio.sleep(0.01)


@asynccontextmanager
async def running_platform(
    *, hub: HubSettings = FAST_HUB, ingress: IngressSettings | None = None
) -> AsyncIterator[Platform]:
    store = MemoryPlatformStore()
    sink = RecordingSink()
    clock = SystemClock()
    orchestrators = OrchestratorHub(store=store, telemetry=sink, settings=hub, clock=clock)
    store.revoked_listeners.append(orchestrators.key_revoked)
    state = IngressState(
        hub=orchestrators,
        store=store,
        settings=ingress or IngressSettings(max_body_bytes=26_214_400, ack_budget_s=2.0),
        clock=clock,
    )

    async def ready() -> bool:
        await trio.lowlevel.checkpoint()
        return True

    intake = Intake()
    app = build_app(
        AppParts(hub=orchestrators, ingress=state, ready=ready, clock=clock, started_at=0.0, intake=intake)
    )
    async with serve_app(app) as bound, httpx.AsyncClient(base_url=bound.url(""), timeout=30) as http:
        yield Platform(store, orchestrators, state, sink, bound, http, intake)


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def execution_status(run_id: str) -> ExecutionStatus:
    return ExecutionStatus(
        message_id=str(uuid.uuid4()),
        run_id=run_id,
        workflow_name="ci",
        status=RunState.RUNNING,
        started_at=now_ms(),
        timestamp=now_ms(),
    )


# --- handshake and tenancy ------------------------------------------------------------------------


@pytest.mark.feature("PRO-20")
async def test_an_org_key_authenticates_and_registers_only_the_orgs_routing_keys() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1", "generic:acme:hooks"])
        await platform.tenant("beta", ["github:2"])
        async with platform.orchestrator(acme, handshake=False) as orch:
            success = await orch.authenticate()
            assert success.org_id == acme.org.id
            assert success.connection_id
            ack = await orch.register(
                [
                    source("github:1"),
                    source("github:2"),
                    source("github:3"),
                    source("nonsense"),
                    source("github:1"),
                ]
            )
        assert [(a.routing_key, a.webhook_url) for a in ack.accepted] == [
            ("github:1", "https://platform.example/webhooks/github/github:1")
        ]
        rejected = {r.routing_key: r.reason for r in ack.rejected}
        assert rejected["github:2"] == NOT_OWNED_REASON
        assert rejected["github:3"] == NOT_OWNED_REASON
        assert rejected["nonsense"].startswith("invalid routing key")
        assert len(ack.rejected) == 3
        touched = platform.store.keys[acme.key_id]
        assert touched.last_used_at is not None


@pytest.mark.feature("PRO-20", "PRO-03")
@pytest.mark.parametrize("case", ["unknown", "revoked"])
async def test_an_unknown_or_revoked_key_gets_auth_failure_and_4001(case: str) -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme")
        key = acme.api_key
        if case == "unknown":
            key = new_api_key(secrets.token_bytes(32))
        else:
            await platform.store.revoke_api_key(acme.key_id, NOW)
        async with connect(platform.ws_url) as conn:
            await conn.send(encode(AuthRequest(token=key, protocol_version=1)))
            failure = json.loads(await conn.receive())
            assert failure == {"type": "auth.failure", "reason": "Invalid API key"}
            with pytest.raises(ConnectionClosed) as closed:
                await conn.receive()
            assert closed.value.code == CloseCode.UNAUTHORIZED
        assert platform.hub.connected_count() == 0


@pytest.mark.feature("PRO-36", "PRO-03")
async def test_revoking_a_key_closes_its_live_connections_with_4010_at_once() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        second = await platform.key_for(acme.org)
        async with (
            platform.orchestrator(acme, "github:1") as revoked,
            platform.orchestrator(second, "github:1") as kept,
        ):
            await platform.store.revoke_api_key(acme.key_id, NOW)
            closed = await revoked.wait_closed(within=2.0)
            assert (closed.code, closed.reason) == (CloseCode.AGENT_AUTH_FAILED, "API key revoked")
            assert kept.closed is None
            assert [link.key_id for link in platform.hub.links()] == [second.key_id]
            assert [link.key_id for link in platform.hub.routes("github:1", acme.org.id)] == [second.key_id]
        with pytest.raises(OrchestratorRefusedError) as refused:
            async with platform.orchestrator(acme, "github:1"):
                pass
        assert refused.value.reason == "Invalid API key"


@pytest.mark.feature("PRO-36")
async def test_the_sweep_closes_connections_whose_key_was_revoked_unnoticed() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        async with platform.orchestrator(acme, "github:1") as orch:
            platform.store.revoked_listeners.clear()
            await platform.store.revoke_api_key(acme.key_id, NOW)
            assert orch.closed is None
            assert await platform.hub.sweep_revoked() == 1
            closed = await orch.wait_closed()
            assert closed.code == CloseCode.AGENT_AUTH_FAILED


@pytest.mark.feature("PRO-20", "PRO-22")
async def test_the_tenant_comes_from_the_connection_never_from_message_fields() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        beta = await platform.tenant("beta", ["github:2"])
        async with (
            platform.orchestrator(beta, "github:2") as beta_orch,
            platform.orchestrator(acme) as acme_orch,
        ):
            frame = json.loads(encode(execution_status("run-1")))
            frame["orgId"] = beta.org.id
            await acme_orch.send_text(json.dumps(frame))
            ((org_id, connection_id, message),) = await platform.sink.wait_for(1)
            assert (org_id, connection_id) == (acme.org.id, acme_orch.connection_id)
            assert isinstance(message, ExecutionStatus)

            register = {
                "type": "source.register",
                "messageId": "m-1",
                "orgId": beta.org.id,
                "sources": [
                    {"provider": "github", "routingKey": "github:2", "name": "x", "subtype": "github_app"}
                ],
            }
            await acme_orch.send_text(json.dumps(register))
            ack = await acme_orch.expect(SourceRegisterAck, lambda a: a.message_id == "m-1")
            assert ack.accepted == []
            assert [r.routing_key for r in ack.rejected] == ["github:2"]
            assert platform.hub.routes("github:2", beta.org.id)[0].connection_id == beta_orch.connection_id
            assert platform.hub.routes("github:2", acme.org.id) == []
            assert ack.peers is None

            request = _detail_request()
            with pytest.raises(NoOrchestratorError):
                await platform.hub.request("no-such-org", request)
            assert acme_orch.dashboard_requests == []


def _detail_request(request_id: str | None = None) -> DashboardRequest:
    cls = DASHBOARD_REQUEST_CLASSES["dashboard.run.detail"]
    request = cls(
        request_id=request_id or str(uuid.uuid4()), actor=ActorUser(sub="user-1"), params={"runId": "r"}
    )  # type: ignore[call-arg]
    assert isinstance(request, DashboardRequest)
    return request


@pytest.mark.feature("PRO-20", "CLU-01")
async def test_peers_of_the_same_org_are_listed_and_split_clusters_are_warned_about() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        beta = await platform.tenant("beta", ["github:2"])
        cluster_a, cluster_b = str(uuid.uuid4()), str(uuid.uuid4())
        async with (
            platform.orchestrator(beta, "github:2"),
            platform.orchestrator(acme, "github:1", instance_id="one", cluster_id=cluster_a) as first,
        ):
            with capture_logs() as logs:
                async with platform.orchestrator(
                    acme, handshake=False, instance_id="two", cluster_id=cluster_b
                ) as second:
                    await second.authenticate()
                    ack = await second.register([source("github:1")])
            assert ack.peers is not None
            assert [(p.connection_id, p.instance_id, p.routing_keys) for p in ack.peers] == [
                (first.connection_id, "one", ["github:1"])
            ]
            warnings = [
                entry for entry in logs if entry["event"] == "two clusters registered one routing key"
            ]
            assert warnings
            assert warnings[0]["cluster_ids"] == sorted([cluster_a, cluster_b])


@pytest.mark.feature("PRO-20")
async def test_deregistered_keys_are_no_longer_routed() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1", "github:9"])
        async with platform.orchestrator(acme, "github:1", "github:9") as orch:
            assert len(platform.hub.routes("github:9", acme.org.id)) == 1
            await orch.send(SourceDeregister(message_id="d-1", routing_keys=["github:9", "github:77"]))
            ack = await orch.expect(SourceDeregisterAck)
            assert (ack.message_id, ack.removed) == ("d-1", ["github:9"])
            assert platform.hub.routes("github:9", acme.org.id) == []
            assert len(platform.hub.routes("github:1", acme.org.id)) == 1


# --- invalid input --------------------------------------------------------------------------------


@pytest.mark.feature("PRO-03")
@pytest.mark.parametrize(
    ("authenticated", "text", "code", "reason"),
    [
        (False, "{not json", CloseCode.INVALID_MESSAGE, "Malformed JSON"),
        (False, '{"type": "no.such.type"}', CloseCode.INVALID_MESSAGE, "Invalid message format"),
        (
            False,
            '{"type": "auth.request", "token": "", "protocolVersion": 1}',
            CloseCode.INVALID_MESSAGE,
            None,
        ),
        (False, '{"type": "heartbeat", "timestamp": 1}', CloseCode.UNAUTHORIZED, "Expected auth.request"),
        (True, "{not json", CloseCode.INVALID_MESSAGE, "Malformed JSON"),
        (True, '{"type": "source.register", "messageId": "m"}', CloseCode.INVALID_MESSAGE, None),
        (True, '{"type": "webhook.ack", "messageId": 5, "deliveryId": "d"}', CloseCode.INVALID_MESSAGE, None),
    ],
)
async def test_malformed_frames_close_with_the_right_code_and_the_daemon_keeps_serving(
    authenticated: bool, text: str, code: int, reason: str | None
) -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        async with platform.orchestrator(acme, "github:1", handshake=authenticated) as bad:
            await bad.send_text(text)
            closed = await bad.wait_closed()
            assert closed.code == code
            if reason is not None:
                assert closed.reason == reason
        async with platform.orchestrator(acme, "github:1") as good:
            await good.send(execution_status("run-after"))
            await platform.sink.wait_for(1)
            assert good.closed is None


@pytest.mark.feature("PRO-03", "PRO-02")
async def test_an_unknown_type_after_auth_is_ignored_not_fatal() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        async with platform.orchestrator(acme, "github:1") as orch:
            await orch.send_text('{"type": "orch.future.feature", "x": 1}')
            await orch.send(execution_status("run-1"))
            await platform.sink.wait_for(1)
            assert orch.closed is None


@pytest.mark.feature("PRO-03")
async def test_no_auth_request_within_the_timeout_closes_4002() -> None:
    hub = attrs.evolve(FAST_HUB, auth_timeout_s=0.3)
    async with running_platform(hub=hub) as platform:
        acme = await platform.tenant("acme")
        async with platform.orchestrator(acme, handshake=False) as silent:
            closed = await silent.wait_closed()
            assert (closed.code, closed.reason) == (CloseCode.AUTH_TIMEOUT, "Auth timeout")


@pytest.mark.feature("PRO-15")
async def test_a_silent_orchestrator_is_closed_4004_and_a_heartbeating_one_is_kept() -> None:
    hub = attrs.evolve(FAST_HUB, liveness=LivenessThresholds(unhealthy_after_ms=200, stale_after_ms=500))
    async with running_platform(hub=hub) as platform:
        acme = await platform.tenant("acme", ["github:1"])
        async with (
            platform.orchestrator(acme, "github:1") as silent,
            platform.orchestrator(acme, "github:1", heartbeat_interval=0.1) as alive,
        ):
            closed = await silent.wait_closed()
            assert closed.code == CloseCode.HEARTBEAT_TIMEOUT
            await trio.sleep(0.7)
            assert alive.closed is None
            assert [link.connection_id for link in platform.hub.links()] == [alive.connection_id]


@pytest.mark.feature("PRO-05")
async def test_an_oversized_frame_is_refused_by_the_rate_limiter() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        async with platform.orchestrator(acme, "github:1") as orch:
            chunk = LogChunk(
                message_id="m",
                run_id="r",
                job_id="j",
                step_index=0,
                lines=["x" * (5 * 1024 * 1024)],
                timestamp=1,
            )
            await orch.send(chunk)
            closed = await orch.wait_closed()
            assert (closed.code, closed.reason) == (CloseCode.INVALID_MESSAGE, "Message too large")
            assert platform.sink.records == []


# --- telemetry ------------------------------------------------------------------------------------


@pytest.mark.feature("PRO-22", "PRO-20")
async def test_every_telemetry_frame_reaches_the_sink_with_the_connections_org() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        stamp = now_ms()
        frames: list[Message] = [
            execution_status("run-1"),
            ExecutionEvent(
                message_id="e", run_id="run-1", event=ExecutionEventKind.STARTED, data={}, timestamp=stamp
            ),
            JobStatusForward(
                message_id="j",
                run_id="run-1",
                job_id="job",
                job_name="build",
                status=JobState.RUNNING,
                timestamp=stamp,
            ),
            StepStatusForward(
                message_id="s",
                run_id="run-1",
                job_id="job",
                job_name="build",
                step_index=0,
                step_name="compile",
                state=StepState.RUNNING,
                timestamp=stamp,
            ),
            LogChunk(
                message_id="l", run_id="run-1", job_id="job", step_index=0, lines=["hello"], timestamp=stamp
            ),
            StateReplay(message_id="r", runs=[], timestamp=stamp),
        ]
        async with platform.orchestrator(acme, "github:1") as orch:
            for frame in frames:
                await orch.send(frame)
            records = await platform.sink.wait_for(len(frames))
        assert [message for _, _, message in records] == frames
        assert {(org, conn) for org, conn, _ in records} == {(acme.org.id, orch.connection_id)}


@pytest.mark.feature("PRO-22")
async def test_a_failing_sink_drops_the_frame_and_keeps_the_connection() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        async with platform.orchestrator(acme, "github:1") as orch:
            platform.sink.failing.add("lost")
            await orch.send(execution_status("lost"))
            await orch.send(execution_status("kept"))
            ((_, _, message),) = await platform.sink.wait_for(1)
            assert isinstance(message, ExecutionStatus)
            assert message.run_id == "kept"
            assert orch.closed is None


# --- dashboard requests ---------------------------------------------------------------------------


def _cancel_response(request: DashboardRequest) -> Message | None:
    if isinstance(request, RunCancelRequest):
        return RunCancelResponse(request_id=request.request_id, cancelled_jobs=3)
    response = DASHBOARD_RESPONSE_CLASSES["dashboard.run.detail.response"]
    return response(request_id=request.request_id, body={"runId": "r"})  # type: ignore[call-arg]


@pytest.mark.feature("PRO-28", "PRO-12")
async def test_dashboard_requests_are_answered_by_one_of_the_orgs_orchestrators() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        beta = await platform.tenant("beta", ["github:2"])
        async with (
            platform.orchestrator(beta, "github:2", dashboard=_cancel_response) as other,
            platform.orchestrator(acme, "github:1", dashboard=_cancel_response) as orch,
        ):
            actor = ActorUser(sub="user-1")
            response = await platform.hub.request(
                acme.org.id, RunCancelRequest(request_id="q-1", actor=actor, run_id="run-1")
            )
            assert response == RunCancelResponse(request_id="q-1", cancelled_jobs=3)
            detail = await platform.hub.request(acme.org.id, _detail_request("q-2"))
            assert detail.wire_type() == "dashboard.run.detail.response"
            assert [r.request_id for r in orch.dashboard_requests] == ["q-1", "q-2"]
            assert other.dashboard_requests == []


@pytest.mark.feature("PRO-28", "PRO-12")
async def test_dashboard_request_failures_are_typed() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        with pytest.raises(NoOrchestratorError):
            await platform.hub.request(acme.org.id, _detail_request())
        async with platform.orchestrator(acme, "github:1") as orch:
            with pytest.raises(trio.TooSlowError):
                await platform.hub.request(acme.org.id, _detail_request(), timeout_s=0.2)

            async with trio.open_nursery() as nursery:

                async def drop_when_asked() -> None:
                    await platform.wait_until(lambda: len(orch.dashboard_requests) == 2)
                    await orch.disconnect()

                nursery.start_soon(drop_when_asked)
                with pytest.raises(OrchestratorGoneError):
                    await platform.hub.request(acme.org.id, _detail_request(), timeout_s=WAIT_S)


@pytest.mark.feature("PRO-28", "PRO-02")
async def test_a_request_type_left_out_of_the_manifest_is_not_forwarded() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        manifest = OrchCapabilities(supported_dashboard_requests=["run.cancel.request"])
        async with platform.orchestrator(
            acme, "github:1", capabilities=manifest, dashboard=_cancel_response
        ) as orch:
            with pytest.raises(UnsupportedRequestError):
                await platform.hub.request(acme.org.id, _detail_request())
            assert orch.dashboard_requests == []
            await orch.send(OrchCapabilitiesUpdate(capabilities=OrchCapabilities()))
            await platform.wait_until(lambda: platform.hub.links()[0].capabilities == OrchCapabilities())
            detail = await platform.hub.request(acme.org.id, _detail_request())
            assert detail.wire_type() == "dashboard.run.detail.response"


# --- shutdown -------------------------------------------------------------------------------------


@pytest.mark.feature("OPS-17")
async def test_shutdown_closes_orchestrators_with_1001() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        async with platform.orchestrator(acme, "github:1") as orch:
            platform.hub.close_all()
            closed = await orch.wait_closed()
            assert closed.code == CloseCode.GOING_AWAY
            async with connect(platform.ws_url) as late:
                with pytest.raises(ConnectionClosed) as refused:
                    await late.receive()
                assert refused.value.code == CloseCode.GOING_AWAY
