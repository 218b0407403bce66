"""The orchestrator's REST API (``/api/v1``): submit, list, show, logs and cancel of runs.

Every route needs ``Authorization: Bearer <admin token>``. The accepted tokens are kept as SHA-256
digests and compared in constant time: ``KICI_BOOTSTRAP_ADMIN_TOKEN`` when set, else the token the
orchestrator generated on its first boot (printed once, its digest kept in the data directory; see
``main.py``). Roles (50 §10) are not modelled yet: the token is the owner's.

=========================================  ===================================================
``POST /api/v1/runs``                      submit an event (``kici run remote``): 201 ``{runIds}``
``GET /api/v1/runs``                       ``?status=&workflow=&page=&pageSize=`` newest first
``GET /api/v1/runs/{id}``                  the run, its jobs and their steps
``GET /api/v1/runs/{id}/jobs/{job}/logs``  ``?step=&cursor=&limit=`` log chunks after ``cursor``
``POST /api/v1/runs/{id}/cancel``          ``{force?, reason?}``: 202, 404 unknown, 409 terminal
=========================================  ===================================================

``POST /api/v1/runs`` body (camelCase): ``event`` (an event argument of 00 §3.3: ``push``,
``pr:open``, ``tag`` ...), ``repo`` (the repository identifier), and either ``lock`` (the lock file
inline, as a JSON object or its text) or ``source`` (a configured source's name or routing key,
whose provider fetches the lock at ``sha`` or ``branch``). Optional: ``branch``, ``currentBranch``,
``sha``, ``files``, ``payload``, ``inputs``, ``workflow`` (run only that workflow), ``checkMode``.
The event is built exactly as ``kici run local`` builds it, matched against the lock, and one run
is created per matched workflow; none matching answers 200 with no run ids. A run without a source
clones ``repo`` as given (a URL for runs submitted with an inline lock).

Choices where the spec is silent: ``page`` is 1-based, ``pageSize`` 20 by default (the CLI's page)
and at most 100; ``{job}`` is a job id or a job name of the run; a lock fetched through a source that
turns out corrupt answers 422 here (an interactive caller sees the error; no failed run is left).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from enum import Enum
from typing import Any, Final, Protocol

import attrs
import structlog
from quart import Quart, Response, request

from kici.adapters.clock import Clock
from kici.adapters.postgres.database import Connection, Database
from kici.domain.event_args import EventArgError, EventOptions, parse_event_arg, simulate_event
from kici.domain.execution.states import CheckMode, RunStatus
from kici.domain.lockfile import LockFile, LockFileParseError, load_lock
from kici.domain.providers import ProviderRegistry
from kici.domain.store import ExecutionStore, GateOutcome, JobRecord, LogStore, RunRecord, StepRecord
from kici.domain.triggers import match_lock
from kici.domain.webhooks.lock_cache import LockCache
from kici.domain.webhooks.models import HEAD_REF
from kici.services.orchestrator.ingress import json_response
from kici.services.orchestrator.logging import run_scope
from kici.services.orchestrator.runs import RunContext, build_run
from kici.services.orchestrator.sources import SourceBook
from kici.services.orchestrator.tracker import CancelResult

_log = structlog.get_logger(__name__)

PREFIX: Final = "/api/v1"
DEFAULT_PAGE_SIZE: Final = 20
MAX_PAGE_SIZE: Final = 100
MAX_LOG_LIMIT: Final = 1000
MAX_SUBMIT_BYTES: Final = 10 * 1024 * 1024


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@attrs.frozen
class AdminAuth:
    """The SHA-256 digests of the accepted admin tokens."""

    digests: frozenset[str]

    def allows(self, authorization: str | None) -> bool:
        if not authorization or authorization[:7].lower() != "bearer ":
            return False
        given = token_digest(authorization[7:].strip())
        return any(hmac.compare_digest(given, digest) for digest in self.digests)


class RunQueries(Protocol):
    """Reads the stores have no method for: run lists, counts and dispatch latencies."""

    async def list_run_ids(
        self, *, statuses: tuple[str, ...], workflow: str | None, limit: int, offset: int
    ) -> tuple[list[uuid.UUID], int]: ...

    async def count_by_status(self) -> dict[str, int]: ...

    async def dispatch_latencies(self, since: datetime) -> tuple[list[float], datetime]: ...


class PgRunQueries:
    """:class:`RunQueries` on PostgreSQL (``execution_runs``).

    Read-only SQL that would belong in ``kici.adapters.postgres`` as ``ExecutionStore.list_runs``;
    it lives here until the store port grows that method.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def list_run_ids(
        self, *, statuses: tuple[str, ...], workflow: str | None, limit: int, offset: int
    ) -> tuple[list[uuid.UUID], int]:
        where = "WHERE (cardinality(%(statuses)s::text[]) = 0 OR status = ANY(%(statuses)s::text[])) "
        where += "AND (%(workflow)s::text IS NULL OR workflow_name = %(workflow)s::text)"
        params = {"statuses": list(statuses), "workflow": workflow, "limit": limit, "offset": offset}

        def work(conn: Connection) -> tuple[list[uuid.UUID], int]:
            total = conn.execute(f"SELECT count(*) AS n FROM execution_runs {where}", params).fetchone()
            rows = conn.execute(
                f"SELECT id FROM execution_runs {where} "
                "ORDER BY created_at DESC, id DESC LIMIT %(limit)s OFFSET %(offset)s",
                params,
            ).fetchall()
            return [row["id"] for row in rows], int(total["n"]) if total else 0

        return await self._db.run(work)

    async def count_by_status(self) -> dict[str, int]:
        def work(conn: Connection) -> dict[str, int]:
            rows = conn.execute("SELECT status, count(*) AS n FROM execution_runs GROUP BY status").fetchall()
            return {row["status"]: int(row["n"]) for row in rows}

        return await self._db.run(work)

    async def dispatch_latencies(self, since: datetime) -> tuple[list[float], datetime]:
        """Seconds from enqueue to dispatch of every dispatch after ``since``, and the new cursor."""

        def work(conn: Connection) -> tuple[list[float], datetime]:
            rows = conn.execute(
                """
                SELECT EXTRACT(EPOCH FROM dispatched_at - enqueued_at)::float8 AS seconds, dispatched_at
                FROM dispatch_queue WHERE dispatched_at > %s ORDER BY dispatched_at
                """,
                (since,),
            ).fetchall()
            cursor = rows[-1]["dispatched_at"] if rows else since
            return [max(0.0, float(row["seconds"])) for row in rows], cursor

        return await self._db.run(work)


Canceller = Callable[..., Awaitable[CancelResult]]


@attrs.frozen(kw_only=True)
class ApiState:
    execution: ExecutionStore
    logs: LogStore
    queries: RunQueries
    cancel_run: Canceller
    auth: Callable[[], AdminAuth]
    book: Callable[[], SourceBook]
    lock_cache: LockCache
    clock: Clock
    wake: Callable[[], None]
    settle: Callable[[uuid.UUID, GateOutcome], Awaitable[None]] | None = None
    new_run_id: Callable[[], uuid.UUID] = uuid.uuid4


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- JSON views ---------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _view(record: Any, *, drop: Iterable[str] = ()) -> dict[str, Any]:
    skipped = set(drop)
    data = attrs.asdict(record, recurse=False)
    return {_camel(k): _plain(v) for k, v in data.items() if k not in skipped}


def run_view(run: RunRecord) -> dict[str, Any]:
    view = _view(run, drop=("init_failure",))
    view["id"] = view.pop("runId")
    if run.init_failure is not None:
        view["initFailure"] = _plain(attrs.asdict(run.init_failure))
    return view


def job_view(job: JobRecord, steps: Iterable[StepRecord]) -> dict[str, Any]:
    view = _view(job, drop=("config", "routing"))
    view["id"] = view.pop("jobId")
    view["steps"] = [_view(step, drop=("run_id", "job_id")) for step in steps]
    return view


# --- handlers -----------------------------------------------------------------------------------


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


def _uuid(text: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ApiError(404, f"unknown {what} {text!r}") from None


async def list_runs(state: ApiState) -> Response:
    statuses = tuple(s for s in request.args.get("status", "").split(",") if s)
    unknown = [s for s in statuses if s not in {v.value for v in RunStatus}]
    if unknown:
        raise ApiError(400, f"unknown status {', '.join(unknown)}")
    page = _int_arg("page", 1, 1, 1_000_000)
    size = _int_arg("pageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    workflow = request.args.get("workflow") or None
    ids, total = await state.queries.list_run_ids(
        statuses=statuses, workflow=workflow, limit=size, offset=(page - 1) * size
    )
    runs = [run for run_id in ids if (run := await state.execution.get_run(run_id)) is not None]
    body = {"runs": [run_view(r) for r in runs], "page": page, "pageSize": size, "total": total}
    return json_response(200, body)


async def show_run(state: ApiState, run_id: str) -> Response:
    rid = _uuid(run_id, "run")
    run = await state.execution.get_run(rid)
    if run is None:
        raise ApiError(404, f"unknown run {run_id}")
    jobs = [
        job_view(job, await state.execution.list_steps(job.job_id))
        for job in await state.execution.list_jobs(rid)
    ]
    return json_response(200, {**run_view(run), "jobs": jobs})


async def _job(state: ApiState, run_id: uuid.UUID, job: str) -> JobRecord:
    for record in await state.execution.list_jobs(run_id):
        if str(record.job_id) == job or record.name == job:
            return record
    raise ApiError(404, f"unknown job {job!r} in run {run_id}")


async def job_logs(state: ApiState, run_id: str, job: str) -> Response:
    rid = _uuid(run_id, "run")
    record = await _job(state, rid, job)
    step_arg = request.args.get("step")
    step = _int_arg("step", 0, -1, 10_000_000) if step_arg not in (None, "") else None
    cursor = _int_arg("cursor", 0, 0, 2**62)
    limit = _int_arg("limit", 500, 1, MAX_LOG_LIMIT)
    page = await state.logs.read_log_chunks(record.job_id, after=cursor, limit=limit, step_index=step)
    chunks = [
        {
            "sequence": c.sequence,
            "stepIndex": c.step_index,
            "lines": list(c.lines),
            "loggedAt": c.logged_at.isoformat(),
        }
        for c in page.chunks
    ]
    return json_response(200, {"jobId": str(record.job_id), "chunks": chunks, "nextCursor": page.next_cursor})


async def _json_body() -> Mapping[str, Any]:
    raw = await request.get_data(cache=False)
    if len(raw) > MAX_SUBMIT_BYTES:
        raise ApiError(413, "request body too large")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the body must be a JSON object")
    return value


async def cancel(state: ApiState, run_id: str) -> Response:
    rid = _uuid(run_id, "run")
    body = await _json_body()
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise ApiError(400, "force must be true or false")
    reason = body.get("reason") if isinstance(body.get("reason"), str) else "Cancelled via API"
    result = await state.cancel_run(rid, force=force, reason=reason, cancelled_by="api")
    view = {
        "runId": str(result.run_id),
        "outcome": result.outcome.value,
        "runStatus": result.run_status.value if result.run_status else None,
        "force": result.force,
        "jobsCancelled": result.jobs_cancelled,
    }
    return json_response(result.http_status, view)


# --- submission ---------------------------------------------------------------------------------


def _text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"{key} must be a non-empty string")
    return value


def _required(body: Mapping[str, Any], key: str) -> str:
    value = _text(body, key)
    if value is None:
        raise ApiError(400, f"{key} is required")
    return value


def _inline_lock(raw: Any) -> LockFile:
    text = raw if isinstance(raw, str) else json.dumps(raw)
    try:
        return load_lock(text)
    except LockFileParseError as exc:
        raise ApiError(400, f"the lock file is invalid: {exc}") from None


async def _fetched_lock(
    state: ApiState, registry: ProviderRegistry, key: str, repo: str, ref: str
) -> LockFile:
    bundle = registry.get(key)
    if bundle is None or bundle.lock_file_fetcher is None:
        raise ApiError(422, "the source cannot fetch lock files")
    try:
        lock = await state.lock_cache.fetch(bundle.lock_file_fetcher, repo, ref, {})
    except LockFileParseError as exc:
        raise ApiError(422, f"the lock file is invalid: {exc}") from None
    if lock is None:
        raise ApiError(422, f"no lock file in {repo} at {ref}")
    return lock


def _options(body: Mapping[str, Any]) -> EventOptions:
    files = body.get("files")
    payload = body.get("payload")
    inputs = body.get("inputs") or {}
    if files is not None and (not isinstance(files, list) or not all(isinstance(f, str) for f in files)):
        raise ApiError(400, "files must be a list of strings")
    if payload is not None and not isinstance(payload, dict):
        raise ApiError(400, "payload must be a JSON object")
    if not isinstance(inputs, dict):
        raise ApiError(400, "inputs must be a JSON object")
    extra: dict[str, Any] = {}
    if current := _text(body, "currentBranch"):
        extra["current_branch"] = current
    if sha := _text(body, "sha"):
        extra["sha"] = sha
    return EventOptions(
        branch=_text(body, "branch"),
        changed_files=files,
        payload=payload,
        inputs={str(k): str(v) for k, v in inputs.items()},
        **extra,
    )


def _check_mode(body: Mapping[str, Any]) -> CheckMode:
    try:
        return CheckMode(body.get("checkMode") or CheckMode.APPLY.value)
    except ValueError:
        raise ApiError(400, f"checkMode must be one of {', '.join(m.value for m in CheckMode)}") from None


async def submit(state: ApiState) -> Response:
    body = await _json_body()
    repo = _required(body, "repo")
    try:
        arg = parse_event_arg(_required(body, "event"))
    except EventArgError as exc:
        raise ApiError(400, str(exc)) from None
    options = _options(body)
    event = simulate_event(arg, options)
    source_key = _text(body, "source")
    book = state.book()
    source = None
    if source_key is not None:
        source = next((s for s in book.sources if source_key in (s.name, s.routing_key)), None)
        if source is None:
            raise ApiError(404, f"unknown source {source_key!r}")
    ref = options.sha if "sha" in body else (options.branch or options.current_branch or HEAD_REF)
    if body.get("lock") is not None:
        lock = _inline_lock(body["lock"])
    elif source is not None:
        lock = await _fetched_lock(state, book.registry, source.routing_key, repo, ref)
    else:
        raise ApiError(400, "give the lock inline (lock) or a source to fetch it from (source)")
    provider = source.provider.value if source is not None else event.provider
    event = attrs.evolve(event, source_repo=repo, provider=provider)
    match = match_lock(lock, event)
    wanted = _text(body, "workflow")
    matched = [w for w in match.matched if wanted is None or w.name == wanted]
    if wanted is not None and not matched:
        raise ApiError(422, f'No workflow named "{wanted}" matched the event')
    bundle = book.registry.get(source.routing_key) if source is not None else None
    repo_url = repo
    if bundle is not None and bundle.repo_url_builder is not None:
        try:
            repo_url = bundle.repo_url_builder.build_clone_url(repo)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
    ctx = RunContext(
        event=event,
        event_name=event.type,
        repo_identifier=repo,
        repo_url=repo_url,
        ref=event.payload.get("ref") if isinstance(event.payload.get("ref"), str) else event.target_branch,
        sha=options.sha,
        routing_key=source.routing_key if source is not None else None,
        provider=provider,
        triggered_by="api",
        check_mode=_check_mode(body),
        request_id=request.headers.get("x-request-id"),
    )
    run_ids: list[uuid.UUID] = []
    for workflow in matched:
        run_id = state.new_run_id()
        with run_scope(run_id):
            run, jobs = build_run(workflow, ctx, run_id=run_id, now=state.clock.now())
            created = await state.execution.create_run(run, jobs)
            _log.info("run submitted through the API", workflow=workflow.name, jobs=len(jobs))
            if state.settle is not None and (created.gate.failed or created.gate.skipped):
                await state.settle(run_id, created.gate)
        run_ids.append(run_id)
    if run_ids:
        state.wake()
    decisions = [
        {"workflow": d.workflow_name, "matched": d.matched, "summary": d.summary} for d in match.decisions
    ]
    body_out = {"runIds": [str(r) for r in run_ids], "matched": len(run_ids), "decisions": decisions}
    return json_response(201 if run_ids else 200, body_out)


# --- mounting -----------------------------------------------------------------------------------


def _guarded(
    state: ApiState, handler: Callable[..., Awaitable[Response]]
) -> Callable[..., Awaitable[Response]]:
    async def route(**params: str) -> Response:
        if not state.auth().allows(request.headers.get("authorization")):
            return json_response(401, {"error": "unauthorized"}, {"www-authenticate": "Bearer"})
        try:
            return await handler(state, **params)
        except ApiError as exc:
            return json_response(exc.status, {"error": str(exc)})

    route.__name__ = handler.__name__
    return route


def register_api(app: Quart, state: ApiState) -> None:
    """Mount the ``/api/v1`` routes on ``app``."""
    routes: list[tuple[str, Callable[..., Awaitable[Response]], str]] = [
        (f"{PREFIX}/runs", submit, "POST"),
        (f"{PREFIX}/runs", list_runs, "GET"),
        (f"{PREFIX}/runs/<run_id>", show_run, "GET"),
        (f"{PREFIX}/runs/<run_id>/jobs/<path:job>/logs", job_logs, "GET"),
        (f"{PREFIX}/runs/<run_id>/cancel", cancel, "POST"),
    ]
    for path, handler, method in routes:
        app.add_url_rule(
            path, f"api_{handler.__name__}_{method.lower()}", _guarded(state, handler), methods=[method]
        )


__all__ = [
    "PREFIX",
    "AdminAuth",
    "ApiState",
    "PgRunQueries",
    "RunQueries",
    "job_view",
    "register_api",
    "run_view",
    "token_digest",
]
