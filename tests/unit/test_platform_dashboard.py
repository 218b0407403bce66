"""The dashboard REST API over real parts (PRO-22, PRO-28): PostgreSQL, the telemetry sink, the real
orchestrator hub on loopback with protocol-level fake orchestrators, hypercorn and httpx.

Tenants: ``acme`` and ``globex``. Users: alice (owner of acme), bob (member of acme), carol (owner of
globex), dave (member of both). Telemetry enters as it does in production, from an orchestrator
connection authenticated with its org's API key; the tests then read it back as each user.

The harness (`running_platform`, `platform`) is shared with ``test_platform_dashboard_ws.py``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs
import httpx
import psycopg
import pytest
import trio

from kici.adapters.postgres.database import Database
from kici.adapters.postgres.platform_accounts_store import PgPlatformAccountsStore, Role
from kici.adapters.postgres.platform_telemetry_store import PgPlatformTelemetryStore
from kici.adapters.ws.server import BoundServer, accept_websocket, create_app
from kici.domain.protocol import (
    ActorUser,
    DashboardErrorCode,
    DashboardRequest,
    ExecutionStatus,
    JobState,
    JobStatusForward,
    LogChunk,
    Message,
    RunCancelRequest,
    RunCancelResponse,
    RunState,
    StepState,
    StepStatusForward,
)
from kici.domain.tenancy import api_key_hash, api_key_prefix, new_api_key
from kici.services.platform.accounts import Accounts
from kici.services.platform.dashboard import DashboardDeps, register_dashboard
from kici.services.platform.hub import (
    NoOrchestratorError,
    OrchestratorGoneError,
    OrchestratorHub,
    UnsupportedRequestError,
)
from kici.services.platform.telemetry import Broadcaster, PlatformTelemetry
from kici.testing.fake_orchestrator import MemoryPlatformStore, open_fake_orchestrator, serve_app
from kici.testing.postgres import PgTestDatabase

pytestmark = pytest.mark.pg

T = TypeVar("T")
Script = Callable[[str, DashboardRequest], Awaitable[Message]]


@attrs.define
class ScriptedHub:
    """The dashboard's hub: the real orchestrator hub, unless a test scripts the answer."""

    real: OrchestratorHub
    script: Script | None = None
    calls: list[tuple[str, DashboardRequest, float]] = attrs.Factory(list)

    async def request(self, org_id: str, message: DashboardRequest, timeout_s: float = 10.0) -> Message:
        self.calls.append((org_id, message, timeout_s))
        if self.script is None:
            return await self.real.request(org_id, message, timeout_s)
        return await self.script(org_id, message)


@attrs.define
class Platform:
    bound: BoundServer
    http: httpx.AsyncClient
    deps: DashboardDeps
    sink: PlatformTelemetry
    broadcaster: Broadcaster
    accounts: Accounts
    hub: ScriptedHub
    orgs: dict[str, str]
    api_keys: dict[str, str]
    users: dict[str, str]
    tokens: dict[str, str]
    token_ids: dict[str, str]

    def bearer(self, who: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[who]}"}

    @property
    def orch_url(self) -> str:
        return self.bound.url("/ws", websocket=True)

    @property
    def browser_url(self) -> str:
        return self.bound.url("/ws/browser", websocket=True)


MEMBERS: dict[str, list[tuple[str, Role]]] = {
    "alice": [("acme", Role.OWNER)],
    "bob": [("acme", Role.MEMBER)],
    "carol": [("globex", Role.OWNER)],
    "dave": [("acme", Role.MEMBER), ("globex", Role.MEMBER)],
}


@asynccontextmanager
async def running_platform(
    conninfo: str, *, broadcaster: Broadcaster | None = None, **settings: Any
) -> AsyncIterator[Platform]:
    """The Platform's orchestrator endpoint (``/ws``) and the dashboard on one loopback server."""
    now = datetime.now(UTC)
    tenancy = MemoryPlatformStore()
    orgs: dict[str, str] = {}
    api_keys: dict[str, str] = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for name in ("acme", "globex"):
            org = await tenancy.create_org(name, now)
            key = new_api_key(os.urandom(32))
            await tenancy.create_api_key(org.id, "test", api_key_hash(key), api_key_prefix(key), now)
            conn.execute("INSERT INTO orgs (id, name) VALUES (%s, %s)", (org.id, name))
            orgs[name], api_keys[name] = org.id, key
    async with Database.open(conninfo, min_size=1, max_size=6) as db:
        store = PgPlatformTelemetryStore(db)
        fanout = broadcaster or Broadcaster()
        sink = PlatformTelemetry(store, fanout)
        orchestrators = OrchestratorHub(store=tenancy, telemetry=sink)
        hub = ScriptedHub(orchestrators)
        accounts = Accounts(PgPlatformAccountsStore(db), now=lambda: datetime.now(UTC))
        users: dict[str, str] = {}
        tokens: dict[str, str] = {}
        token_ids: dict[str, str] = {}
        for who, memberships in MEMBERS.items():
            user = await accounts.create_user(f"{who}@example.com")
            for org_name, role in memberships:
                await accounts.add_to_org(user.id, org_name, role)
            issued = await accounts.issue_token(user.id)
            users[who], tokens[who], token_ids[who] = user.id, issued.token, issued.info.id
        deps = DashboardDeps(accounts=accounts, telemetry=store, broadcaster=fanout, hub=hub, **settings)
        app = create_app("kici.platform.tests")
        register_dashboard(app, deps)

        @app.websocket("/ws")
        async def orchestrator_endpoint() -> None:
            conn = await accept_websocket()
            await orchestrators.serve(conn, conn.remote_addr.host)

        async with serve_app(app) as bound, httpx.AsyncClient(base_url=bound.url("")) as http:
            try:
                yield Platform(
                    bound=bound,
                    http=http,
                    deps=deps,
                    sink=sink,
                    broadcaster=fanout,
                    accounts=accounts,
                    hub=hub,
                    orgs=orgs,
                    api_keys=api_keys,
                    users=users,
                    tokens=tokens,
                    token_ids=token_ids,
                )
            finally:
                orchestrators.close_all()


@pytest.fixture
async def platform(pg_platform_database: PgTestDatabase) -> AsyncIterator[Platform]:
    async with running_platform(pg_platform_database.conninfo) as running:
        yield running


async def eventually(probe: Callable[[], Awaitable[T | None]], *, within: float = 5.0) -> T:
    """The first non-None result of ``probe``, polled until ``within`` seconds passed."""
    with trio.fail_after(within):
        while True:
            result = await probe()
            if result is not None:
                return result
            await trio.sleep(0.02)


# --- telemetry builders --------------------------------------------------------------------------


def run_status(run_id: str, state: RunState, ts: int, **extra: Any) -> ExecutionStatus:
    return ExecutionStatus(
        message_id=str(uuid.uuid4()),
        run_id=run_id,
        workflow_name=extra.pop("workflow_name", "ci"),
        status=state,
        started_at=extra.pop("started_at", 1_000),
        timestamp=ts,
        **extra,
    )


def job_status(run_id: str, job_id: str, state: JobState, ts: int, name: str = "build") -> JobStatusForward:
    return JobStatusForward(
        message_id=str(uuid.uuid4()), run_id=run_id, job_id=job_id, job_name=name, status=state, timestamp=ts
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


def log_chunk(run_id: str, job_id: str, step: int, lines: list[str]) -> LogChunk:
    return LogChunk(
        message_id=str(uuid.uuid4()),
        run_id=run_id,
        job_id=job_id,
        step_index=step,
        lines=lines,
        timestamp=3_000,
    )


async def seed(platform: Platform, org: str, run_id: str, **extra: Any) -> None:
    """A run with one job (``build``, id ``<run>-j``), one step and two log lines, recorded for ``org``."""
    connection = f"conn-{org}"
    org_id = platform.orgs[org]
    await platform.sink.record(org_id, connection, run_status(run_id, RunState.RUNNING, 2_000, **extra))
    await platform.sink.record(org_id, connection, job_status(run_id, f"{run_id}-j", JobState.RUNNING, 2_000))
    await platform.sink.record(
        org_id, connection, step_status(run_id, f"{run_id}-j", 0, StepState.RUNNING, 2_000)
    )
    await platform.sink.record(org_id, connection, log_chunk(run_id, f"{run_id}-j", 0, ["hello", "world"]))


async def get(platform: Platform, who: str, path: str, **params: str) -> httpx.Response:
    return await platform.http.get(path, headers=platform.bearer(who), params=params)


# --- telemetry in, REST out ----------------------------------------------------------------------


@pytest.mark.feature("PRO-22")
async def test_telemetry_from_an_orchestrator_connection_is_visible_through_rest(platform: Platform) -> None:
    async with open_fake_orchestrator(platform.orch_url, api_key=platform.api_keys["acme"]) as orch:
        await orch.send(run_status("run-1", RunState.RUNNING, 2_000, sha="abc", ref="refs/heads/main"))
        await orch.send(job_status("run-1", "job-1", JobState.RUNNING, 2_100))
        await orch.send(step_status("run-1", "job-1", 0, StepState.SUCCESS, 2_200))
        await orch.send(log_chunk("run-1", "job-1", 0, ["line 1", "line 2"]))
        await orch.send(step_status("run-1", "job-1", 1, StepState.RUNNING, 2_300))
        await orch.send(run_status("run-1", RunState.SUCCESS, 4_000, completed_at=4_000, duration_ms=3_000.0))

        async def finished() -> httpx.Response | None:
            response = await get(platform, "alice", "/api/v1/runs/run-1")
            return (
                response if response.status_code == 200 and response.json()["status"] == "success" else None
            )

        detail = (await eventually(finished)).json()
    assert detail["orgId"] == platform.orgs["acme"]
    assert (detail["sha"], detail["ref"], detail["completedAt"], detail["durationMs"]) == (
        "abc",
        "refs/heads/main",
        4_000,
        3_000.0,
    )
    [job] = detail["jobs"]
    assert (job["id"], job["name"], job["status"]) == ("job-1", "build", "running")
    assert [(s["index"], s["name"], s["status"], s["logLines"]) for s in job["steps"]] == [
        (0, "step 0", "success", 2),
        (1, "step 1", "running", 0),
    ]
    listing = (await get(platform, "alice", "/api/v1/runs")).json()
    assert (listing["total"], [r["id"] for r in listing["runs"]]) == (1, ["run-1"])
    for job_ref in ("job-1", "build"):
        logs = (await get(platform, "alice", f"/api/v1/runs/run-1/jobs/{job_ref}/logs")).json()
        assert logs["jobId"] == "job-1"
        assert [(c["sequence"], c["stepIndex"], c["firstLine"], c["lines"]) for c in logs["chunks"]] == [
            (1, 0, 0, ["line 1", "line 2"])
        ]
        assert logs["nextCursor"] == 1
    after = (await get(platform, "alice", "/api/v1/runs/run-1/jobs/job-1/logs", cursor="1")).json()
    assert (after["chunks"], after["nextCursor"]) == ([], 1)


@pytest.mark.feature("PRO-22")
async def test_out_of_order_telemetry_does_not_regress_what_rest_shows(platform: Platform) -> None:
    org = platform.orgs["acme"]
    await platform.sink.record(org, "c", run_status("r", RunState.SUCCESS, 5_000))
    await platform.sink.record(org, "c", run_status("r", RunState.RUNNING, 3_000))
    await platform.sink.record(org, "c", job_status("r", "j", JobState.FAILED, 5_000))
    await platform.sink.record(org, "c", job_status("r", "j", JobState.RUNNING, 4_000))
    await platform.sink.record(org, "c", step_status("r", "j", 0, StepState.FAILED, 5_000))
    await platform.sink.record(org, "c", step_status("r", "j", 0, StepState.RUNNING, 4_000))
    detail = (await get(platform, "alice", "/api/v1/runs/r")).json()
    assert detail["status"] == "success"
    assert detail["jobs"][0]["status"] == "failed"
    assert detail["jobs"][0]["steps"][0]["status"] == "failed"


@pytest.mark.feature("PRO-22")
async def test_an_orchestrator_cannot_report_into_another_org(platform: Platform) -> None:
    await seed(platform, "acme", "shared")
    async with open_fake_orchestrator(platform.orch_url, api_key=platform.api_keys["globex"]) as orch:
        await orch.send(run_status("shared", RunState.FAILED, 9_000, sha="evil"))
        await orch.send(log_chunk("shared", "shared-j", 0, ["injected"]))

        async def landed() -> bool | None:
            response = await get(platform, "carol", "/api/v1/runs/shared")
            return True if response.status_code == 200 else None

        await eventually(landed)
    mine = (await get(platform, "alice", "/api/v1/runs/shared")).json()
    assert (mine["status"], mine["sha"], mine["orgId"]) == ("running", None, platform.orgs["acme"])
    logs = (await get(platform, "alice", "/api/v1/runs/shared/jobs/build/logs")).json()
    assert [c["lines"] for c in logs["chunks"]] == [["hello", "world"]]


# --- authentication ------------------------------------------------------------------------------


ROUTES = [
    ("GET", "/api/v1/runs"),
    ("GET", "/api/v1/runs/r1"),
    ("GET", "/api/v1/runs/r1/jobs/build/logs"),
    ("POST", "/api/v1/runs/r1/cancel"),
]


@pytest.mark.feature("PRO-28")
async def test_every_route_needs_a_valid_token(platform: Platform) -> None:
    await seed(platform, "acme", "r1")
    await platform.accounts.revoke_token(platform.token_ids["bob"])
    headers: list[dict[str, str]] = [
        {},
        {"authorization": "Basic YWxpY2U6c2VjcmV0"},
        {"authorization": "Bearer"},
        {"authorization": "Bearer kdt_" + "0" * 64},
        platform.bearer("bob"),
    ]
    for method, path in ROUTES:
        for header in headers:
            response = await platform.http.request(method, path, headers=header)
            assert response.status_code == 401, (method, path, header)
            assert response.json() == {"error": "Invalid or expired token"}
            assert response.headers["www-authenticate"] == "Bearer"
    assert platform.hub.calls == []
    assert (await get(platform, "alice", "/api/v1/runs")).status_code == 200


# --- tenants -------------------------------------------------------------------------------------


@pytest.mark.feature("PRO-28")
async def test_a_member_of_one_org_cannot_list_read_or_cancel_another_orgs_runs(platform: Platform) -> None:
    await seed(platform, "acme", "a-run")
    await seed(platform, "globex", "g-run")
    listing = (await get(platform, "alice", "/api/v1/runs")).json()
    assert [r["id"] for r in listing["runs"]] == ["a-run"]
    foreign = await get(platform, "alice", "/api/v1/runs", org=platform.orgs["globex"])
    missing = await get(platform, "alice", "/api/v1/runs", org="no-such-org")
    assert foreign.status_code == missing.status_code == 404
    for path in ("/api/v1/runs/{}", "/api/v1/runs/{}/jobs/build/logs", "/api/v1/runs/{}/jobs/g-run-j/logs"):
        theirs = await get(platform, "alice", path.format("g-run"))
        nobodys = await get(platform, "alice", path.format("nobodys-run"))
        assert theirs.status_code == nobodys.status_code == 404
        assert theirs.json()["error"].replace("g-run", "X") == nobodys.json()["error"].replace(
            "nobodys-run", "X"
        )
    cancel = await platform.http.post("/api/v1/runs/g-run/cancel", headers=platform.bearer("alice"))
    assert cancel.status_code == 404
    assert platform.hub.calls == [], "nothing reaches another org's orchestrator"
    assert (await get(platform, "carol", "/api/v1/runs/g-run")).status_code == 200
    assert (await get(platform, "carol", "/api/v1/runs/a-run")).status_code == 404


@pytest.mark.feature("PRO-28")
async def test_a_member_of_both_orgs_sees_both_and_disambiguates_a_shared_run_id(platform: Platform) -> None:
    await seed(platform, "acme", "same", sha="from-acme")
    await seed(platform, "globex", "same", sha="from-globex")
    await seed(platform, "globex", "other")
    listing = (await get(platform, "dave", "/api/v1/runs")).json()
    assert sorted((r["id"], r["sha"]) for r in listing["runs"]) == [
        ("other", None),
        ("same", "from-acme"),
        ("same", "from-globex"),
    ]
    ambiguous = await get(platform, "dave", "/api/v1/runs/same")
    assert ambiguous.status_code == 409
    chosen = await get(platform, "dave", "/api/v1/runs/same", org=platform.orgs["globex"])
    assert chosen.json()["sha"] == "from-globex"
    only_acme = (await get(platform, "dave", "/api/v1/runs", org=platform.orgs["acme"])).json()
    assert [r["sha"] for r in only_acme["runs"]] == ["from-acme"]


# --- listing -------------------------------------------------------------------------------------


@pytest.mark.feature("PRO-22")
async def test_list_filters_and_pages(platform: Platform) -> None:
    org = platform.orgs["acme"]
    for i in range(5):
        message = run_status(
            f"r{i}",
            RunState.SUCCESS if i % 2 else RunState.FAILED,
            2_000,
            started_at=1_000 + i,
            workflow_name="deploy" if i == 4 else "ci",
            repo_identifier="acme/app",
            ref="refs/heads/main" if i < 3 else "refs/heads/dev",
        )
        await platform.sink.record(org, "c", message)
    page = (await get(platform, "alice", "/api/v1/runs", pageSize="2", page="2")).json()
    assert ([r["id"] for r in page["runs"]], page["total"], page["page"], page["pageSize"]) == (
        ["r2", "r1"],
        5,
        2,
        2,
    )
    failed = (await get(platform, "alice", "/api/v1/runs", status="failed,cancelled")).json()
    assert [r["id"] for r in failed["runs"]] == ["r4", "r2", "r0"]
    branch = (
        await get(platform, "alice", "/api/v1/runs", branch="dev", workflow="ci", repo="acme/app")
    ).json()
    assert [r["id"] for r in branch["runs"]] == ["r3"]
    for params in ({"status": "bogus"}, {"pageSize": "0"}, {"pageSize": "101"}, {"page": "x"}):
        assert (await get(platform, "alice", "/api/v1/runs", **params)).status_code == 400


# --- cancel through the orchestrator -------------------------------------------------------------


@pytest.mark.feature("PRO-28")
async def test_cancel_is_proxied_to_the_orgs_orchestrator_with_request_id_and_actor(
    platform: Platform,
) -> None:
    await seed(platform, "acme", "r1")

    def answer(request: DashboardRequest) -> Message:
        assert isinstance(request, RunCancelRequest)
        return RunCancelResponse(request_id=request.request_id, cancelled_jobs=2)

    async with (
        open_fake_orchestrator(
            platform.orch_url, api_key=platform.api_keys["globex"], dashboard=answer
        ) as other,
        open_fake_orchestrator(
            platform.orch_url, api_key=platform.api_keys["acme"], dashboard=answer
        ) as orch,
    ):
        response = await platform.http.post(
            "/api/v1/runs/r1/cancel", headers=platform.bearer("alice"), json={"force": True}
        )
    assert response.status_code == 202
    assert response.json() == {"runId": "r1", "cancelledJobs": 2}
    [request] = orch.dashboard_requests
    assert isinstance(request, RunCancelRequest)
    assert (request.run_id, request.force, request.actor) == (
        "r1",
        True,
        ActorUser(sub=platform.users["alice"]),
    )
    uuid.UUID(request.request_id)
    assert other.dashboard_requests == [], "only the run's own org's orchestrator is asked"
    assert [(org, timeout) for org, _, timeout in platform.hub.calls] == [(platform.orgs["acme"], 10.0)]


@pytest.mark.feature("PRO-28")
async def test_cancel_without_a_connected_orchestrator_is_503(platform: Platform) -> None:
    await seed(platform, "acme", "r1")
    response = await platform.http.post("/api/v1/runs/r1/cancel", headers=platform.bearer("alice"))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"


@pytest.mark.feature("PRO-28")
async def test_cancel_unanswered_within_the_window_is_504(pg_platform_database: PgTestDatabase) -> None:
    async with running_platform(pg_platform_database.conninfo, request_timeout_s=0.3) as platform:
        await seed(platform, "acme", "r1")
        async with open_fake_orchestrator(
            platform.orch_url, api_key=platform.api_keys["acme"], dashboard=None
        ) as orch:
            response = await platform.http.post("/api/v1/runs/r1/cancel", headers=platform.bearer("alice"))
        assert response.status_code == 504
        assert len(orch.dashboard_requests) == 1


@pytest.mark.feature("PRO-28")
async def test_a_member_may_read_but_not_cancel(platform: Platform) -> None:
    await seed(platform, "acme", "r1")
    assert (await get(platform, "bob", "/api/v1/runs/r1")).status_code == 200
    response = await platform.http.post("/api/v1/runs/r1/cancel", headers=platform.bearer("bob"))
    assert response.status_code == 403
    assert response.json() == {"error": "Insufficient permission: runs.write needed"}
    assert platform.hub.calls == []


def _raising(exc: Exception) -> Script:
    async def script(_org: str, _message: DashboardRequest) -> Message:
        raise exc

    return script


def _answering(request_id: str | None = None, **fields: Any) -> Script:
    async def script(_org: str, message: DashboardRequest) -> Message:
        return RunCancelResponse(request_id=request_id or message.request_id, **fields)

    return script


CANCEL_OUTCOMES: list[tuple[Script, int, dict[str, Any]]] = [
    (_raising(NoOrchestratorError("o")), 503, {"error": "no orchestrator of this org is connected"}),
    (
        _raising(OrchestratorGoneError("o")),
        502,
        {"error": "the orchestrator disconnected before answering"},
    ),
    (
        _raising(UnsupportedRequestError("run.cancel.request")),
        501,
        {"error": "no connected orchestrator of this org supports cancelling runs"},
    ),
    (_raising(trio.TooSlowError()), 504, {"error": "the orchestrator did not answer within 10s"}),
    (_answering(error="run already finished"), 409, {"error": "run already finished"}),
    (
        _answering(error="bad runId", code=DashboardErrorCode.INVALID_PAYLOAD),
        400,
        {"error": "bad runId", "code": "invalid_payload"},
    ),
    (
        _answering(error="unknown", code=DashboardErrorCode.UNSUPPORTED_REQUEST_TYPE),
        501,
        {"error": "unknown", "code": "unsupported_request_type"},
    ),
    (
        _answering(error="boom", code=DashboardErrorCode.INTERNAL_ERROR),
        502,
        {"error": "boom", "code": "internal_error"},
    ),
    (
        _answering(request_id="someone-else"),
        502,
        {"error": "unexpected answer 'run.cancel.response' from the orchestrator"},
    ),
    (_answering(), 202, {"runId": "r1", "cancelledJobs": None}),
]


@pytest.mark.feature("PRO-28")
async def test_cancel_outcomes_map_to_http(platform: Platform) -> None:
    await seed(platform, "acme", "r1")
    for script, status, body in CANCEL_OUTCOMES:
        platform.hub.script = script
        response = await platform.http.post("/api/v1/runs/r1/cancel", headers=platform.bearer("alice"))
        assert (response.status_code, response.json()) == (status, body)


@pytest.mark.feature("PRO-28")
async def test_cancel_body_is_checked(platform: Platform) -> None:
    await seed(platform, "acme", "r1")
    platform.hub.script = _answering(cancelled_jobs=1)
    headers = {**platform.bearer("alice"), "content-type": "application/json"}
    for content in (b"{", b"[]", b'{"force": "yes"}'):
        response = await platform.http.post("/api/v1/runs/r1/cancel", headers=headers, content=content)
        assert response.status_code == 400, content
    assert platform.hub.calls == []
    ok = await platform.http.post("/api/v1/runs/r1/cancel", headers=headers, content=b'{"force": false}')
    assert ok.status_code == 202
    [(_, request, _)] = platform.hub.calls
    assert isinstance(request, RunCancelRequest)
    assert request.force is None


@pytest.mark.feature("PRO-22")
async def test_unknown_job_and_bad_log_parameters(platform: Platform) -> None:
    await seed(platform, "acme", "r1")
    assert (await get(platform, "alice", "/api/v1/runs/r1/jobs/nope/logs")).status_code == 404
    for params in ({"step": "-2"}, {"cursor": "x"}, {"limit": "0"}, {"limit": "1001"}):
        response = await get(platform, "alice", "/api/v1/runs/r1/jobs/build/logs", **params)
        assert response.status_code == 400, params
    one_step = (await get(platform, "alice", "/api/v1/runs/r1/jobs/build/logs", step="1")).json()
    assert one_step["chunks"] == []
