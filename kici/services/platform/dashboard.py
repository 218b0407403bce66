"""The dashboard API of the Platform: REST over the stored telemetry, cancel through the owning
orchestrator, and the browser WebSocket for live logs and status (PRO-28, PRO-30).

``register_dashboard(app, deps)`` mounts, on an app made by ``kici.adapters.ws.server.create_app``:

=========================================  =========================================================
``GET /api/v1/runs``                       ``?org=&status=&workflow=&repo=&branch=&page=&pageSize=``
``GET /api/v1/runs/{id}``                  the run, its jobs and their steps (``?org=``)
``GET /api/v1/runs/{id}/jobs/{job}/logs``  ``?step=&cursor=&limit=`` chunks after ``cursor`` (``?org=``)
``POST /api/v1/runs/{id}/cancel``          ``{force?}`` -> ``run.cancel.request`` to the org's orchestrator
``/ws/browser``                            the browser stream (PRO-30 subset, below)
=========================================  =========================================================

Every REST call needs ``Authorization: Bearer <dashboard token>`` (``accounts.py``): 401 without a
valid one. The token is checked and the user's memberships are read on every request. Every run is
looked up only among the orgs the user belongs to, so a run of another org answers 404 exactly like a
run that does not exist: the API never tells whether someone else's run exists. Cancelling needs the
``owner`` role in the run's org (RBAC-03: members read runs, ``runs.write`` is the owner's; 403).

Cancel is forwarded as REST-over-WS (PRO-28): ``run.cancel.request{requestId, actor: user, runId,
force}`` to one of the org's connected orchestrators through the hub, waiting ``request_timeout_s``
(10 s). No orchestrator connected: 503 with ``Retry-After``; no answer in time: 504; the link dropped
while waiting: 502; every connected orchestrator's manifest leaves the type out: 501 (the hub's
pre-flight). The response frame maps: no ``error`` -> 202 ``{runId, cancelledJobs}``;
``invalid_payload`` -> 400; ``unsupported_request_type`` / ``unsupported_message_type`` -> 501;
``internal_error`` -> 502; any other refusal (already finished, unknown there) -> 409 with its text.

Choices where the spec is silent: ``page`` is 1-based, ``pageSize`` 20 by default and at most 100;
runs come newest first by start time; ``branch`` matches ``ref`` with or without ``refs/heads/``;
``{job}`` is a job id or name; without ``?org=`` a run id present in several of the user's orgs answers
409 (pass ``?org=``). Timestamps are epoch milliseconds as on the wire.

The browser stream (``/ws/browser``) speaks the browser<->Platform messages of 20a §6.7:
``auth.request{token}`` within ``browser_auth_timeout_s`` (5 s, else close 4002) -> ``auth.success
{connectionId}``, or ``auth.failure`` + close 4001. ``auth.refresh`` swaps in a new token of the same
user (answered ``auth.success``; another user's or a bad token: failure + 4001). ``log.subscribe``
sends the stored lines after ``afterLineCount`` and then live lines as they are recorded, each
``log.lines`` carrying the cumulative ``lineCount``; ``log.gap`` reports lines dropped because the
browser read too slowly. ``status.subscribe{scope: org, orgId}`` streams ``run.new``/``run.status``/
``job.*``/``step.status``/``run.event``/``job.context`` of that org. Every subscription re-validates
the token and reads the memberships again; the org of a log stream comes from the user's
memberships, never from the wire. A run the user cannot see (or that does not exist) and an org the
user is not a member of both answer ``error{code: NOT_FOUND}`` (the connection stays open: one
browser multiplexes many streams, so closing it with 4030 would end the others too). An open stream
re-validates its token every ``browser_reauth_interval_s`` (60 s): a revoked token is cut with
``auth.failure`` + 4001. ``ping`` -> ``pong``; a browser silent for 180 s (it pings every 25 s) is
closed 4004. Malformed frames answer ``error{INVALID_MESSAGE}``. Status updates a slow browser could
not take are reported as ``error{STATUS_GAP}`` (reload the runs; ``log.gap`` has no status twin); a run
id present in several of the user's orgs answers ``error{AMBIGUOUS_RUN}`` (``log.subscribe`` carries no
org); a database outage answers ``error{UNAVAILABLE}``. ``event-log.payload.fetch`` answers one final
chunk with an error: the Platform keeps no payloads.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Protocol

import attrs
import structlog
import trio
from quart import Quart, Response, request

from kici.adapters.postgres.platform_accounts_store import Principal, Role
from kici.adapters.postgres.platform_telemetry_store import (
    PlatformJob,
    PlatformLogPage,
    PlatformRun,
    PlatformStep,
    RunFilter,
    StepLines,
)
from kici.adapters.ws.server import accept_websocket
from kici.domain.liveness import DEFAULT_THRESHOLDS, LivenessThresholds
from kici.domain.ports import ConnectionClosed, WsConnection
from kici.domain.protocol import (
    ActorUser,
    AuthFailure,
    AuthRefresh,
    AuthSuccess,
    BrowserAuthRequest,
    CloseCode,
    DashboardErrorCode,
    DashboardRequest,
    DashboardResponse,
    Direction,
    ErrorMessage,
    EventLogPayloadChunk,
    EventLogPayloadFetch,
    LogGap,
    LogLines,
    LogSubscribe,
    LogUnsubscribe,
    Message,
    Ping,
    Pong,
    RunCancelRequest,
    RunCancelResponse,
    RunState,
    StatusSubscribe,
    StatusUnsubscribe,
)
from kici.domain.ratelimit import WsRateLimiter
from kici.domain.store import StoreUnavailableError
from kici.services.connection import (
    INVALID_MESSAGE_REPLY,
    ConnectionEnd,
    DecodeErrorTable,
    HandlerBase,
    Reply,
    Session,
    run_connection,
)
from kici.services.platform.accounts import bearer_token
from kici.services.platform.hub import NoOrchestratorError, OrchestratorGoneError, UnsupportedRequestError
from kici.services.platform.telemetry import Broadcaster, Dropped

_log = structlog.get_logger(__name__)

PREFIX: Final = "/api/v1"
BROWSER_PATH: Final = "/ws/browser"
DEFAULT_PAGE_SIZE: Final = 20
MAX_PAGE_SIZE: Final = 100
DEFAULT_LOG_LIMIT: Final = 500
MAX_LOG_LIMIT: Final = 1000
BACKLOG_PAGE_LINES: Final = 1000
MAX_CANCEL_BODY_BYTES: Final = 64 * 1024

UNAUTHORIZED_REASON: Final = "Invalid or expired token"
NOT_FOUND: Final = "NOT_FOUND"
UNAVAILABLE: Final = "UNAVAILABLE"
AMBIGUOUS_RUN: Final = "AMBIGUOUS_RUN"
STATUS_GAP: Final = "STATUS_GAP"

BROWSER_INPUT_POLICY: Final = DecodeErrorTable(
    bad_json=Reply(INVALID_MESSAGE_REPLY),
    unknown_type=Reply(INVALID_MESSAGE_REPLY),
    invalid=Reply(INVALID_MESSAGE_REPLY),
)
"""A browser's bad frame is answered and the stream goes on: a dashboard bug must not cut live logs."""


class Authenticator(Protocol):
    async def authenticate(self, token: str | None) -> Principal | None: ...


class TelemetryReader(Protocol):
    """The read side of the telemetry store (``PgPlatformTelemetryStore``)."""

    async def run_orgs(self, org_ids: Sequence[str], run_id: str) -> list[str]: ...

    async def get_run(self, org_id: str, run_id: str) -> PlatformRun | None: ...

    async def list_runs(
        self, org_ids: Sequence[str], run_filter: RunFilter, *, limit: int, offset: int
    ) -> tuple[list[PlatformRun], int]: ...

    async def list_jobs(self, org_id: str, run_id: str) -> list[PlatformJob]: ...

    async def list_steps(self, org_id: str, run_id: str) -> list[PlatformStep]: ...

    async def read_log_chunks(
        self,
        org_id: str,
        run_id: str,
        job_id: str,
        *,
        after: int = 0,
        limit: int = 500,
        step_index: int | None = None,
    ) -> PlatformLogPage: ...

    async def read_step_lines(
        self,
        org_id: str,
        run_id: str,
        job_id: str,
        step_index: int,
        *,
        after_line: int = 0,
        limit: int = 1000,
    ) -> StepLines: ...


class DashboardHub(Protocol):
    """The orchestrator hub's REST-over-WS entry (``kici.services.platform.hub``).

    Raises ``NoOrchestratorError`` when the org has no orchestrator connected (its subclass
    ``OrchestratorGoneError`` when the chosen one left before answering), ``UnsupportedRequestError``
    when every connected one's manifest leaves the type out, ``trio.TooSlowError`` after ``timeout_s``.
    """

    async def request(self, org_id: str, message: DashboardRequest, timeout_s: float = 10) -> Message: ...


def _new_id() -> str:
    return str(uuid.uuid4())


@attrs.frozen(kw_only=True)
class DashboardDeps:
    accounts: Authenticator
    telemetry: TelemetryReader
    broadcaster: Broadcaster
    hub: DashboardHub
    new_id: Callable[[], str] = _new_id
    request_timeout_s: float = 10.0
    browser_auth_timeout_s: float = 5.0
    browser_reauth_interval_s: float = 60.0
    browser_liveness: LivenessThresholds | None = DEFAULT_THRESHOLDS
    browser_rate_limit: Callable[[], WsRateLimiter | None] = WsRateLimiter


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


def json_response(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body), status=status, headers=dict(headers or {}), content_type="application/json"
    )


# --- JSON views ----------------------------------------------------------------------------------


def run_view(run: PlatformRun) -> dict[str, Any]:
    return {
        "id": run.run_id,
        "orgId": run.org_id,
        "workflowName": run.workflow_name,
        "status": run.status,
        "statusAt": run.status_ts,
        "startedAt": run.started_at,
        "completedAt": run.completed_at,
        "durationMs": run.duration_ms,
        "repoIdentifier": run.repo_identifier,
        "sha": run.sha,
        "ref": run.ref,
        "triggerEvent": run.trigger_event,
        "commitMessage": run.commit_message,
        "jobCount": run.job_count,
        "routingKey": run.routing_key,
        "parentRunId": run.parent_run_id,
        "originalRunId": run.original_run_id,
        "triggeredBy": run.triggered_by,
        "failureReason": run.failure_reason,
    }


def step_view(step: PlatformStep) -> dict[str, Any]:
    return {
        "index": step.step_index,
        "name": step.step_name,
        "status": step.state,
        "statusAt": step.status_ts,
        "data": step.data,
        "secretsAccessed": list(step.secrets_accessed) if step.secrets_accessed is not None else None,
        "logLines": step.log_lines,
        "logDroppedLines": step.log_dropped_lines,
        "logTruncated": step.log_truncated,
    }


def job_view(job: PlatformJob, steps: Sequence[PlatformStep]) -> dict[str, Any]:
    return {
        "id": job.job_id,
        "name": job.job_name,
        "status": job.status,
        "statusAt": job.status_ts,
        "matrixValues": job.matrix_values,
        "startedAt": job.started_at,
        "completedAt": job.completed_at,
        "durationMs": job.duration_ms,
        "errorMessage": job.error_message,
        "agentId": job.agent_id,
        "orchestratorId": job.orchestrator_id,
        "runsOnLabels": list(job.runs_on_labels) if job.runs_on_labels is not None else None,
        "steps": [step_view(s) for s in steps],
    }


# --- REST handlers -------------------------------------------------------------------------------


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be from {low} to {high}")
    return value


def _orgs_in_scope(principal: Principal) -> tuple[str, ...]:
    """The user's orgs, narrowed to ``?org=``; an org the user is not in reads as unknown (404)."""
    wanted = request.args.get("org") or None
    if wanted is None:
        return principal.org_ids
    if wanted not in principal.memberships:
        raise ApiError(404, f"unknown org {wanted!r}")
    return (wanted,)


async def _run_org(deps: DashboardDeps, principal: Principal, run_id: str) -> str:
    orgs = _orgs_in_scope(principal)
    found = await deps.telemetry.run_orgs(orgs, run_id) if orgs else []
    if not found:
        raise ApiError(404, f"unknown run {run_id!r}")
    if len(found) > 1:
        raise ApiError(409, f"run {run_id!r} exists in several of your orgs: pass ?org=<org id>")
    return found[0]


async def list_runs(deps: DashboardDeps, principal: Principal) -> Response:
    orgs = _orgs_in_scope(principal)
    statuses = tuple(s for s in request.args.get("status", "").split(",") if s)
    unknown = [s for s in statuses if s not in {v.value for v in RunState}]
    if unknown:
        raise ApiError(400, f"unknown status {', '.join(unknown)}")
    page = _int_arg("page", 1, 1, 1_000_000)
    size = _int_arg("pageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    run_filter = RunFilter(
        statuses=statuses,
        workflow=request.args.get("workflow") or None,
        repo=request.args.get("repo") or None,
        branch=request.args.get("branch") or None,
    )
    runs, total = (
        await deps.telemetry.list_runs(orgs, run_filter, limit=size, offset=(page - 1) * size)
        if orgs
        else ([], 0)
    )
    body = {"runs": [run_view(r) for r in runs], "page": page, "pageSize": size, "total": total}
    return json_response(200, body)


async def show_run(deps: DashboardDeps, principal: Principal, run_id: str) -> Response:
    org = await _run_org(deps, principal, run_id)
    run = await deps.telemetry.get_run(org, run_id)
    if run is None:
        raise ApiError(404, f"unknown run {run_id!r}")
    steps = await deps.telemetry.list_steps(org, run_id)
    jobs = [
        job_view(job, [s for s in steps if s.job_id == job.job_id])
        for job in await deps.telemetry.list_jobs(org, run_id)
    ]
    return json_response(200, {**run_view(run), "jobs": jobs})


async def job_logs(deps: DashboardDeps, principal: Principal, run_id: str, job: str) -> Response:
    org = await _run_org(deps, principal, run_id)
    record = next(
        (j for j in await deps.telemetry.list_jobs(org, run_id) if job in (j.job_id, j.job_name)), None
    )
    if record is None:
        raise ApiError(404, f"unknown job {job!r} in run {run_id!r}")
    step_arg = request.args.get("step")
    step = _int_arg("step", 0, -1, 10_000_000) if step_arg not in (None, "") else None
    cursor = _int_arg("cursor", 0, 0, 2**62)
    limit = _int_arg("limit", DEFAULT_LOG_LIMIT, 1, MAX_LOG_LIMIT)
    page = await deps.telemetry.read_log_chunks(
        org, run_id, record.job_id, after=cursor, limit=limit, step_index=step
    )
    chunks = [
        {
            "sequence": c.sequence,
            "stepIndex": c.step_index,
            "firstLine": c.first_line,
            "lines": list(c.lines),
            "timestamp": c.timestamp,
        }
        for c in page.chunks
    ]
    body = {"runId": run_id, "jobId": record.job_id, "chunks": chunks, "nextCursor": page.next_cursor}
    return json_response(200, body)


async def _cancel_body() -> bool:
    raw = await request.get_data(cache=False)
    if len(raw) > MAX_CANCEL_BODY_BYTES:
        raise ApiError(413, "request body too large")
    if not raw.strip():
        return False
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise ApiError(400, "force must be true or false")
    return force


_ERROR_STATUS: Final[Mapping[DashboardErrorCode, int]] = {
    DashboardErrorCode.INVALID_PAYLOAD: 400,
    DashboardErrorCode.UNSUPPORTED_REQUEST_TYPE: 501,
    DashboardErrorCode.UNSUPPORTED_MESSAGE_TYPE: 501,
    DashboardErrorCode.INTERNAL_ERROR: 502,
}


async def cancel(deps: DashboardDeps, principal: Principal, run_id: str) -> Response:
    org = await _run_org(deps, principal, run_id)
    if principal.memberships.get(org) is not Role.OWNER:
        raise ApiError(403, "Insufficient permission: runs.write needed")
    force = await _cancel_body()
    message = RunCancelRequest(
        request_id=deps.new_id(),
        actor=ActorUser(sub=principal.user_id),
        run_id=run_id,
        force=True if force else None,
    )
    try:
        answer = await deps.hub.request(org, message, timeout_s=deps.request_timeout_s)
    except OrchestratorGoneError:
        raise ApiError(502, "the orchestrator disconnected before answering") from None
    except NoOrchestratorError:
        raise ApiError(503, "no orchestrator of this org is connected", {"retry-after": "5"}) from None
    except UnsupportedRequestError:
        raise ApiError(501, "no connected orchestrator of this org supports cancelling runs") from None
    except trio.TooSlowError:
        raise ApiError(504, f"the orchestrator did not answer within {deps.request_timeout_s:g}s") from None
    if not isinstance(answer, DashboardResponse) or answer.request_id != message.request_id:
        raise ApiError(502, f"unexpected answer {answer.wire_type()!r} from the orchestrator")
    if answer.error is not None:
        status = _ERROR_STATUS.get(answer.code, 409) if answer.code is not None else 409
        body: dict[str, Any] = {"error": answer.error}
        if answer.code is not None:
            body["code"] = answer.code.value
        return json_response(status, body)
    jobs = answer.cancelled_jobs if isinstance(answer, RunCancelResponse) else None
    return json_response(202, {"runId": run_id, "cancelledJobs": jobs})


Handler = Callable[..., Awaitable[Response]]


def _guarded(deps: DashboardDeps, handler: Handler) -> Handler:
    async def route(**params: str) -> Response:
        try:
            principal = await deps.accounts.authenticate(bearer_token(request.headers.get("authorization")))
            if principal is None:
                return json_response(401, {"error": UNAUTHORIZED_REASON}, {"www-authenticate": "Bearer"})
            return await handler(deps, principal, **params)
        except ApiError as exc:
            return json_response(exc.status, {"error": str(exc)}, exc.headers)
        except StoreUnavailableError as exc:
            _log.warning("dashboard request failed: database unavailable", error=str(exc))
            return json_response(503, {"error": "database unavailable"}, {"retry-after": "5"})

    route.__name__ = handler.__name__
    return route


# --- browser stream ------------------------------------------------------------------------------


LogKey = tuple[str, str, int]


class BrowserStream(HandlerBase):
    """One browser connection (see the module docstring); runs inside `serve_browser`."""

    def __init__(self, deps: DashboardDeps, nursery: trio.Nursery, connection_id: str) -> None:
        self._deps = deps
        self._nursery = nursery
        self.connection_id = connection_id
        self.principal: Principal | None = None
        self._token: str | None = None
        self._logs: dict[LogKey, trio.CancelScope] = {}
        self._status: dict[str, trio.CancelScope] = {}

    async def on_open(self, session: Session) -> None:
        session.arm_timer(self._deps.browser_auth_timeout_s, CloseCode.AUTH_TIMEOUT, "Auth timeout")
        self._nursery.start_soon(self._reauthenticate_periodically, session)

    async def on_message(self, session: Session, message: Message) -> None:
        try:
            await self._handle(session, message)
        except StoreUnavailableError as exc:
            _log.warning("browser request failed: database unavailable", error=str(exc))
            await session.send(ErrorMessage(code=UNAVAILABLE, message="the Platform database is unavailable"))

    async def _handle(self, session: Session, message: Message) -> None:
        if isinstance(message, Ping):
            await session.send(Pong())
        elif isinstance(message, BrowserAuthRequest | AuthRefresh):
            await self._authenticate(session, message.token)
        elif self.principal is None:
            await self._refuse(session, "Authentication required")
        elif isinstance(message, LogSubscribe):
            await self._subscribe_logs(session, message)
        elif isinstance(message, LogUnsubscribe):
            self._cancel(self._logs.pop((message.run_id, message.job_id, message.step_index), None))
        elif isinstance(message, StatusSubscribe):
            await self._subscribe_status(session, message)
        elif isinstance(message, StatusUnsubscribe):
            for scope in self._status.values():
                scope.cancel()
            self._status.clear()
        elif isinstance(message, EventLogPayloadFetch):
            await session.send(
                EventLogPayloadChunk(
                    request_id=message.request_id,
                    seq=0,
                    data="",
                    is_last=True,
                    error="event-log payloads are not kept by the Platform",
                )
            )

    # --- authentication --------------------------------------------------------------------------

    async def _authenticate(self, session: Session, token: str) -> None:
        principal = await self._deps.accounts.authenticate(token)
        if principal is None or (self.principal is not None and principal.user_id != self.principal.user_id):
            await self._refuse(session, UNAUTHORIZED_REASON)
            return
        first = self.principal is None
        self.principal, self._token = principal, token
        if first:
            session.disarm_timer()
        await session.send(AuthSuccess(connection_id=self.connection_id))

    async def _refuse(self, session: Session, reason: str) -> None:
        await session.send(AuthFailure(reason=reason))
        session.close(CloseCode.UNAUTHORIZED, reason)

    async def _fresh_principal(self, session: Session) -> Principal | None:
        """The token re-validated and the memberships re-read; refuses the connection if revoked."""
        principal = await self._deps.accounts.authenticate(self._token)
        if principal is None:
            await self._refuse(session, UNAUTHORIZED_REASON)
            return None
        self.principal = principal
        return principal

    async def _reauthenticate_periodically(self, session: Session) -> None:
        while not session.closing:
            await trio.sleep(self._deps.browser_reauth_interval_s)
            if self.principal is None:
                continue
            try:
                await self._fresh_principal(session)
            except ConnectionClosed:
                return
            except StoreUnavailableError as exc:
                _log.warning("browser token re-check skipped: database unavailable", error=str(exc))

    # --- subscriptions ---------------------------------------------------------------------------

    async def _subscribe_logs(self, session: Session, message: LogSubscribe) -> None:
        principal = await self._fresh_principal(session)
        if principal is None:
            return
        orgs = await self._deps.telemetry.run_orgs(principal.org_ids, message.run_id)
        if not orgs:
            await session.send(ErrorMessage(code=NOT_FOUND, message=f"unknown run {message.run_id!r}"))
            return
        if len(orgs) > 1:
            text = f"run {message.run_id!r} exists in several of your orgs"
            await session.send(ErrorMessage(code=AMBIGUOUS_RUN, message=text))
            return
        key = (message.run_id, message.job_id, message.step_index)
        self._cancel(self._logs.pop(key, None))
        scope = trio.CancelScope()
        self._logs[key] = scope
        await self._nursery.start(self._pump_logs, session, scope, orgs[0], message)

    async def _subscribe_status(self, session: Session, message: StatusSubscribe) -> None:
        principal = await self._fresh_principal(session)
        if principal is None:
            return
        if message.org_id not in principal.memberships:
            await session.send(ErrorMessage(code=NOT_FOUND, message=f"unknown org {message.org_id!r}"))
            return
        if message.org_id in self._status:
            return
        scope = trio.CancelScope()
        self._status[message.org_id] = scope
        await self._nursery.start(self._pump_status, session, scope, message.org_id)

    @staticmethod
    def _cancel(scope: trio.CancelScope | None) -> None:
        if scope is not None:
            scope.cancel()

    async def _pump_logs(
        self,
        session: Session,
        scope: trio.CancelScope,
        org_id: str,
        message: LogSubscribe,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Stored lines after ``afterLineCount``, then live ones; line numbers keep them from overlapping."""
        run_id, job_id, step = message.run_id, message.job_id, message.step_index
        with scope, self._deps.broadcaster.log_subscription(org_id, run_id, job_id, step) as sub:
            task_status.started()
            sent = message.after_line_count or 0
            try:
                while True:
                    page = await self._deps.telemetry.read_step_lines(
                        org_id, run_id, job_id, step, after_line=sent, limit=BACKLOG_PAGE_LINES
                    )
                    if page.lines:
                        sent += len(page.lines)
                        await session.send(
                            LogLines(
                                run_id=run_id,
                                job_id=job_id,
                                step_index=step,
                                lines=list(page.lines),
                                line_count=sent,
                            )
                        )
                    if len(page.lines) < BACKLOG_PAGE_LINES:
                        break
                while True:
                    for item in await sub.get():
                        if isinstance(item, Dropped):
                            await session.send(
                                LogGap(
                                    run_id=run_id,
                                    job_id=job_id,
                                    step_index=step,
                                    dropped_line_count=item.count,
                                )
                            )
                        elif item.line_count > sent:
                            fresh = item.lines[max(0, sent - item.first_line) :]
                            sent = item.line_count
                            await session.send(
                                LogLines(
                                    run_id=run_id,
                                    job_id=job_id,
                                    step_index=step,
                                    lines=list(fresh),
                                    line_count=sent,
                                )
                            )
            except (ConnectionClosed, trio.EndOfChannel):
                return
            except StoreUnavailableError as exc:
                _log.warning("log stream ended: database unavailable", error=str(exc))
                await self._send_quietly(session, ErrorMessage(code=UNAVAILABLE, message="log stream ended"))
            finally:
                if self._logs.get((run_id, job_id, step)) is scope:
                    del self._logs[(run_id, job_id, step)]

    async def _pump_status(
        self,
        session: Session,
        scope: trio.CancelScope,
        org_id: str,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with scope, self._deps.broadcaster.status_subscription(org_id) as sub:
            task_status.started()
            try:
                while True:
                    for item in await sub.get():
                        if isinstance(item, Dropped):
                            text = (
                                f"{item.count} status updates of org {org_id!r} were dropped; reload the runs"
                            )
                            await session.send(ErrorMessage(code=STATUS_GAP, message=text))
                        else:
                            await session.send(item)
            except (ConnectionClosed, trio.EndOfChannel):
                return
            finally:
                if self._status.get(org_id) is scope:
                    del self._status[org_id]

    @staticmethod
    async def _send_quietly(session: Session, message: Message) -> None:
        try:
            await session.send(message)
        except ConnectionClosed:
            return


async def serve_browser(deps: DashboardDeps, conn: WsConnection) -> ConnectionEnd:
    """Run one browser connection until it closes; its streams end with it."""
    async with trio.open_nursery() as nursery:
        stream = BrowserStream(deps, nursery, deps.new_id())
        try:
            return await run_connection(
                conn,
                stream,
                direction=Direction.BROWSER_TO_PLATFORM,
                policy=BROWSER_INPUT_POLICY,
                rate_limiter=deps.browser_rate_limit(),
                liveness=deps.browser_liveness,
            )
        finally:
            nursery.cancel_scope.cancel()


def register_dashboard(app: Quart, deps: DashboardDeps) -> None:
    """Mount the dashboard's REST routes and the browser WebSocket on ``app``."""
    routes: list[tuple[str, Handler, str]] = [
        (f"{PREFIX}/runs", list_runs, "GET"),
        (f"{PREFIX}/runs/<run_id>", show_run, "GET"),
        (f"{PREFIX}/runs/<run_id>/jobs/<path:job>/logs", job_logs, "GET"),
        (f"{PREFIX}/runs/<run_id>/cancel", cancel, "POST"),
    ]
    for path, handler, method in routes:
        app.add_url_rule(
            path,
            f"dashboard_{handler.__name__}_{method.lower()}",
            _guarded(deps, handler),
            methods=[method],
        )

    async def browser() -> None:
        conn = await accept_websocket()
        await serve_browser(deps, conn)

    app.add_websocket(BROWSER_PATH, "dashboard_browser", browser)


__all__ = [
    "BROWSER_PATH",
    "PREFIX",
    "Authenticator",
    "BrowserStream",
    "DashboardDeps",
    "DashboardHub",
    "TelemetryReader",
    "job_view",
    "register_dashboard",
    "run_view",
    "serve_browser",
    "step_view",
]
