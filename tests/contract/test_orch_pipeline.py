"""The webhook pipeline, the ingress route and the REST API over a real PostgreSQL (HOOK-14, HOOK-04).

GitHub-shaped deliveries come from ``tests/fixtures/webhooks``; the provider's lock fetcher is a
fake behind the ``LockFileFetcher`` port (the GitHub REST adapter does not exist yet; the real
fetchers are exercised in ``test_orch_pipeline_git.py``). Everything else is real: the stores, the
quart-trio app, the needs gate in SQL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from kici.adapters.clock import SystemClock
from kici.adapters.postgres.registration_store import PgRegistrationStore
from kici.domain.config.sources import SecretKind, SecretRef, SourceConfig, SourceProvider
from kici.domain.events import SimulatedEvent
from kici.domain.execution.states import Event, ExecutionState, InitFailureCategory, JobStatus, RunStatus
from kici.domain.lockfile import (
    ExactLabelMatcher,
    LockBranchPattern,
    LockFile,
    LockFileParseError,
    LockJob,
    LockSource,
    LockStaticMatrix,
    LockStep,
    LockWorkflow,
    PrTrigger,
    PushTrigger,
    TagTrigger,
    Trigger,
    dump_lock,
)
from kici.domain.lockfile.frozen import freeze_json
from kici.domain.providers import Credentials, ProviderBundle
from kici.domain.store import EventLogStatus, JobEventCommand, NewLogChunk
from kici.domain.webhooks.lock_cache import LockCache
from kici.domain.webhooks.models import ProviderType, WebhookInfo
from kici.domain.webhooks.normalizers.github import GithubNormalizer
from kici.domain.webhooks.verification import sign_body
from kici.services.orchestrator.api import AdminAuth, ApiState, PgRunQueries, token_digest
from kici.services.orchestrator.app import AppParts, Intake, build_app
from kici.services.orchestrator.execution import ExecutionSettings, Stores, build_execution
from kici.services.orchestrator.ingress import IngressState
from kici.services.orchestrator.metrics import OrchestratorMetrics, state_refresher
from kici.services.orchestrator.pipeline import PipelineDeps, process_webhook
from kici.services.orchestrator.sources import SourceBook, build_source_book
from kici.testing.postgres import PgStores

pytestmark = pytest.mark.pg

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks"
APP_KEY = "github:123456"
SECRET = "webhook-secret-value"
ADMIN = "kadm_test-admin-token"
LINUX = (ExactLabelMatcher(value="linux"),)


def fixture(name: str) -> tuple[dict[str, str], dict[str, Any]]:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    return {k.lower(): v for k, v in data["headers"].items()}, data["payload"]


def branches(*names: str) -> tuple[LockBranchPattern, ...]:
    return tuple(LockBranchPattern(type="glob", pattern=n) for n in names)


def job(name: str, *, needs: Sequence[str] = (), matrix: Any = None) -> LockJob:
    return LockJob(
        name=name,
        runs_on=LINUX,
        runs_on_pick="deterministic",
        needs=tuple(needs),
        steps=(LockStep(name="step-1", has_outputs=False),),
        matrix=LockStaticMatrix(values=freeze_json(matrix)) if matrix is not None else None,
    )


def lock_of(*workflows: tuple[str, Sequence[Trigger]]) -> LockFile:
    """One workflow per ``(name, triggers)``: lint, then a two-child test matrix needing it."""
    return LockFile(
        content_hash="cd" * 32,
        workflows=tuple(
            LockWorkflow(
                name=name,
                source=LockSource(file=f".kici/workflows/{name}.py", export=f"#{name}"),
                content_hash="ab" * 32,
                triggers=tuple(triggers),
                jobs=(job("lint"), job("test", needs=["lint"], matrix={"py": ["3.11", "3.12"]})),
            )
            for name, triggers in workflows
        ),
    )


CI_LOCK = lock_of(
    ("ci", [PushTrigger(branches=branches("main")), PrTrigger(target_branches=branches("main"))]),
    ("release", [TagTrigger(patterns=branches("v*"))]),
    ("docs", [PushTrigger(branches=branches("main"), paths=("docs/**",))]),
)


@attrs.define
class FakeFetcher:
    """``LockFileFetcher`` returning a lock (or raising) per ref; records every call."""

    by_ref: Mapping[str, LockFile | Exception | None] = attrs.field(factory=dict)
    default: LockFile | Exception | None = None
    calls: list[tuple[str, str]] = attrs.field(factory=list)

    @property
    def provider(self) -> str:
        return "github"

    async def fetch_lock_file(self, repo: str, ref: str, creds: Credentials) -> LockFile | None:
        self.calls.append((repo, ref))
        found = self.by_ref.get(ref, self.default)
        if isinstance(found, Exception):
            raise found
        return found


@attrs.define
class FakeChanged:
    files: list[str]
    calls: int = 0

    async def get_changed_files(
        self, repo: str, event: SimulatedEvent, payload: Mapping[str, Any], creds: Credentials
    ) -> list[str]:
        self.calls += 1
        return self.files


@attrs.define
class World:
    stores: PgStores
    fetcher: FakeFetcher
    changed: FakeChanged
    deps: PipelineDeps
    wakes: list[int]

    def info(self, name: str, delivery: str | None = None) -> WebhookInfo:
        headers, payload = fixture(name)
        return WebhookInfo(
            routing_key=APP_KEY,
            delivery_id=delivery or headers["x-github-delivery"],
            event=headers["x-github-event"],
            action=payload.get("action"),
            provider=ProviderType.GITHUB,
            payload=payload,
            request_id="req-1",
        )


def world(stores: PgStores, fetcher: FakeFetcher, changed: Sequence[str] = ()) -> World:
    changed_fetcher = FakeChanged(list(changed))
    book = build_source_book(())
    book.registry.register(
        APP_KEY,
        ProviderBundle(
            normalizer=GithubNormalizer(), lock_file_fetcher=fetcher, changed_files_fetcher=changed_fetcher
        ),
    )
    clock = SystemClock()
    wakes: list[int] = []
    deps = PipelineDeps(
        registry=lambda: book.registry,
        execution=stores.execution,
        webhooks=stores.webhooks,
        lock_cache=LockCache(lambda: trio.current_time() * 1000),
        clock=clock,
        wake=lambda: wakes.append(1),
        metrics=OrchestratorMetrics(),
    )
    return World(stores, fetcher, changed_fetcher, deps, wakes)


async def run_ids(stores: PgStores) -> list[uuid.UUID]:
    ids, _ = await PgRunQueries(stores.db).list_run_ids(statuses=(), workflow=None, limit=100, offset=0)
    return ids


# --- the pipeline -----------------------------------------------------------------------------


@pytest.mark.feature("HOOK-14", "HOOK-19")
async def test_a_push_creates_a_pending_run_with_roots_ready_and_logs_the_delivery(
    pg_stores: PgStores,
) -> None:
    w = world(pg_stores, FakeFetcher(default=CI_LOCK), changed=["src/app.py"])
    info = w.info("github_push")
    result = await process_webhook(info, w.deps)
    assert result.status is EventLogStatus.PROCESSED
    assert result.matched == 1
    assert w.fetcher.calls == [("acme/app", "0000000000000000000000000000000000000002")]
    assert w.changed.calls == 1
    assert w.wakes == [1]
    (run_id,) = result.run_ids
    run = await pg_stores.execution.get_run(run_id)
    assert run is not None
    assert (run.workflow_name, run.status, run.repo_identifier, run.ref) == (
        "ci",
        RunStatus.PENDING,
        "acme/app",
        "refs/heads/main",
    )
    assert (run.delivery_id, run.routing_key, run.request_id) == (info.delivery_id, APP_KEY, "req-1")
    jobs = {j.name: j for j in await pg_stores.execution.list_jobs(run_id)}
    assert set(jobs) == {"lint", "test (3.11)", "test (3.12)"}
    assert all(j.status is JobStatus.PENDING for j in jobs.values())
    assert jobs["lint"].needs_satisfied
    assert not jobs["test (3.11)"].needs_satisfied
    assert [j.name for j in await pg_stores.execution.list_ready_jobs(run_id)] == ["lint"]
    entry = await pg_stores.webhooks.get_delivery("__default__", info.delivery_id)
    assert entry is not None
    assert (entry.status, entry.matched_count, entry.run_id) == (EventLogStatus.PROCESSED, 1, run_id)
    assert (entry.repo_identifier, entry.ref, entry.event) == ("acme/app", "refs/heads/main", "push")


@pytest.mark.feature("HOOK-14", "HOOK-19")
async def test_a_replayed_delivery_dispatches_nothing(pg_stores: PgStores) -> None:
    w = world(pg_stores, FakeFetcher(default=CI_LOCK))
    first = await process_webhook(w.info("github_push"), w.deps)
    replay = await process_webhook(w.info("github_push"), w.deps)
    assert replay.status is EventLogStatus.DUPLICATE
    assert replay.run_ids == ()
    assert await run_ids(pg_stores) == list(first.run_ids)
    assert len(w.fetcher.calls) == 1
    entry = await pg_stores.webhooks.get_delivery("__default__", w.info("github_push").delivery_id)
    assert entry is not None
    assert (entry.status, entry.run_id, entry.matched_count) == (
        EventLogStatus.DUPLICATE,
        first.run_ids[0],
        1,
    )


@pytest.mark.feature("HOOK-14", "HOOK-15")
async def test_pull_requests_read_head_when_same_repo_and_base_when_forked(pg_stores: PgStores) -> None:
    w = world(pg_stores, FakeFetcher(default=CI_LOCK))
    opened = await process_webhook(w.info("github_pull_request_opened"), w.deps)
    assert opened.status is EventLogStatus.PROCESSED
    assert opened.matched == 1
    _, payload = fixture("github_pull_request_opened")
    assert w.fetcher.calls[-1] == ("acme/app", payload["pull_request"]["head"]["sha"])
    forked = await process_webhook(w.info("github_pull_request_synchronize_fork"), w.deps)
    _, fork_payload = fixture("github_pull_request_synchronize_fork")
    assert forked.status is EventLogStatus.PROCESSED
    assert w.fetcher.calls[-1] == ("acme/app", fork_payload["pull_request"]["base"]["ref"])
    assert fork_payload["pull_request"]["head"]["sha"] not in {ref for _, ref in w.fetcher.calls}


@pytest.mark.feature("HOOK-14")
async def test_a_tag_push_runs_the_tag_workflow(pg_stores: PgStores) -> None:
    w = world(pg_stores, FakeFetcher(default=CI_LOCK))
    result = await process_webhook(w.info("github_push_tag"), w.deps)
    assert result.status is EventLogStatus.PROCESSED
    runs = [await pg_stores.execution.get_run(r) for r in result.run_ids]
    assert [r.workflow_name for r in runs if r is not None] == ["release"]


@pytest.mark.feature("HOOK-14")
async def test_no_matching_trigger_is_processed_with_zero_runs(pg_stores: PgStores) -> None:
    w = world(pg_stores, FakeFetcher(default=lock_of(("ci", [PushTrigger(branches=branches("release/*"))]))))
    info = w.info("github_push")
    result = await process_webhook(info, w.deps)
    assert (result.status, result.matched, result.run_ids) == (EventLogStatus.PROCESSED, 0, ())
    assert await run_ids(pg_stores) == []
    assert w.wakes == []
    entry = await pg_stores.webhooks.get_delivery("__default__", info.delivery_id)
    assert entry is not None
    assert (entry.status, entry.matched_count, entry.run_id) == (EventLogStatus.PROCESSED, 0, None)


@pytest.mark.feature("HOOK-14")
@pytest.mark.parametrize("missing", [None, OSError("provider unreachable")])
async def test_an_absent_lock_or_a_transient_error_is_lockfile_missing(
    pg_stores: PgStores, missing: Exception | None
) -> None:
    w = world(pg_stores, FakeFetcher(default=missing))
    info = w.info("github_push")
    result = await process_webhook(info, w.deps)
    assert result.status is EventLogStatus.LOCKFILE_MISSING
    assert await run_ids(pg_stores) == []
    entry = await pg_stores.webhooks.get_delivery("__default__", info.delivery_id)
    assert entry is not None
    assert entry.status is EventLogStatus.LOCKFILE_MISSING


@pytest.mark.feature("HOOK-14")
@pytest.mark.parametrize(("name", "reason"), [("github_ping", "not matchable"), ("github_star_created", "")])
async def test_unmatchable_events_are_only_received(pg_stores: PgStores, name: str, reason: str) -> None:
    w = world(pg_stores, FakeFetcher(default=CI_LOCK))
    result = await process_webhook(w.info(name), w.deps)
    assert result.status in (EventLogStatus.RECEIVED, EventLogStatus.PROCESSED)
    assert reason in result.reason
    assert result.run_ids == ()


@pytest.mark.feature("HOOK-23", "HOOK-14")
async def test_a_corrupt_lock_is_a_visible_failed_run(pg_stores: PgStores) -> None:
    w = world(pg_stores, FakeFetcher(default=LockFileParseError("schemaVersion", "expected 1, got 99")))
    info = w.info("github_push")
    result = await process_webhook(info, w.deps)
    assert result.status is EventLogStatus.LOCKFILE_CORRUPT
    (run_id,) = result.run_ids
    run = await pg_stores.execution.get_run(run_id)
    assert run is not None
    assert (run.workflow_name, run.status) == ("(unresolved workflow)", RunStatus.FAILED)
    assert run.init_failure is not None
    assert run.init_failure.category is InitFailureCategory.LOCK_RESOLUTION
    assert "acme/app@0000000000000000000000000000000000000002" in run.init_failure.message
    assert await pg_stores.execution.list_jobs(run_id) == ()
    entry = await pg_stores.webhooks.get_delivery("__default__", info.delivery_id)
    assert entry is not None
    assert (entry.status, entry.run_id) == (EventLogStatus.LOCKFILE_CORRUPT, run_id)
    assert entry.error_message is not None
    assert "schemaVersion" in entry.error_message


@pytest.mark.feature("HOOK-14")
async def test_changed_files_are_fetched_only_for_paths_triggers_and_filter(pg_stores: PgStores) -> None:
    plain = world(pg_stores, FakeFetcher(default=lock_of(("ci", [PushTrigger()]))), changed=["x"])
    await process_webhook(plain.info("github_push", "d-plain"), plain.deps)
    assert plain.changed.calls == 0
    docs_lock = lock_of(("docs", [PushTrigger(paths=("docs/**",))]))
    hit = world(pg_stores, FakeFetcher(default=docs_lock), changed=["docs/index.md"])
    assert (await process_webhook(hit.info("github_push", "d-hit"), hit.deps)).matched == 1
    miss = world(pg_stores, FakeFetcher(default=docs_lock), changed=["src/app.py"])
    assert (await process_webhook(miss.info("github_push", "d-miss"), miss.deps)).matched == 0
    assert (hit.changed.calls, miss.changed.calls) == (1, 1)


@pytest.mark.feature("HOOK-18", "EVT-07")
async def test_a_default_branch_push_stores_registrations_other_pushes_and_local_do_not(
    pg_stores: PgStores,
) -> None:
    store = PgRegistrationStore(pg_stores.db)
    w = world(pg_stores, FakeFetcher(default=CI_LOCK))
    deps = attrs.evolve(w.deps, registrations=store)
    feature = w.info("github_push", "d-feature")
    feature = attrs.evolve(feature, payload={**feature.payload, "ref": "refs/heads/feature"})
    assert (await process_webhook(feature, deps)).status is EventLogStatus.PROCESSED
    local = attrs.evolve(w.info("github_push", "d-local"), provider=ProviderType.LOCAL)
    assert (await process_webhook(local, deps)).status is EventLogStatus.PROCESSED
    assert (await store.registry_version(), await store.list_registrations()) == (0, ())

    result = await process_webhook(w.info("github_push", "d-main"), deps)
    assert (result.status, result.matched) == (EventLogStatus.PROCESSED, 1)
    rows = await store.list_registrations(routing_key=APP_KEY, repo_identifier="acme/app")
    assert [r.workflow_name for r in rows] == ["ci", "docs", "release"]
    assert {r.commit_sha for r in rows} == {"0000000000000000000000000000000000000002"}
    assert {r.customer_id for r in rows} == {"__default__"}
    assert await store.registry_version() == 1

    w.fetcher.default = lock_of()
    await process_webhook(
        w.info("github_push", "d-empty"), attrs.evolve(deps, lock_cache=LockCache(lambda: 0.0))
    )
    assert (await store.registry_version(), await store.list_registrations()) == (2, ())


# --- ingress and API over the app ----------------------------------------------------------------


@attrs.define
class Service:
    client: Any
    stores: PgStores
    fetcher: FakeFetcher
    book: SourceBook
    intake: Intake

    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {ADMIN}"}


def github_source(**extra: Any) -> SourceConfig:
    values: dict[str, Any] = {
        "name": "gh",
        "provider": SourceProvider.GITHUB,
        "routing_key": APP_KEY,
        "secrets": (SecretRef(SecretKind.VALUE, "rotated-out"), SecretRef(SecretKind.VALUE, SECRET)),
        "max_payload_bytes": 64 * 1024,
        "app_id": "123456",
    }
    values.update(extra)
    return SourceConfig(**values)


def service(
    stores: PgStores, fetcher: FakeFetcher, *sources: SourceConfig, environ: Mapping[str, str] | None = None
) -> Service:
    book = build_source_book(sources or (github_source(),), environ=environ or {})
    for source in book.sources:
        if source.is_github:
            book.registry.register(
                source.routing_key, ProviderBundle(normalizer=GithubNormalizer(), lock_file_fetcher=fetcher)
            )
    clock = SystemClock()
    execution = build_execution(
        ExecutionSettings(),
        Stores(
            execution=stores.execution,
            queue=stores.queue,
            webhooks=stores.webhooks,
            agents=stores.agents,
            logs=stores.logs,
        ),
        db_url_for_listener=None,
        clock=clock,
    )
    lock_cache = LockCache(lambda: trio.current_time() * 1000)
    metrics = OrchestratorMetrics()
    queries = PgRunQueries(stores.db)
    deps = PipelineDeps(
        registry=lambda: book.registry,
        execution=stores.execution,
        webhooks=stores.webhooks,
        lock_cache=lock_cache,
        clock=clock,
        wake=execution.dispatcher.wake,
        metrics=metrics,
    )

    refresh = state_refresher(
        queries, stores.queue.depth, execution.hub.connected_count, since=clock.now() - timedelta(hours=1)
    )

    async def ready() -> bool:
        await stores.db.run(lambda conn: conn.execute("SELECT 1").fetchone())
        return True

    intake = Intake()
    app = build_app(
        AppParts(
            ingress=IngressState(book=lambda: book, pipeline=deps, clock=clock, metrics=metrics),
            api=ApiState(
                execution=stores.execution,
                logs=stores.logs,
                queries=queries,
                cancel_run=execution.tracker.cancel_run,
                auth=lambda: AdminAuth(frozenset({token_digest(ADMIN)})),
                book=lambda: book,
                lock_cache=lock_cache,
                clock=clock,
                wake=execution.dispatcher.wake,
            ),
            hub_serve=execution.hub.serve,
            ready=ready,
            metrics=metrics,
            refresh_metrics=refresh,
            clock=clock,
            started_at=clock.monotonic(),
            intake=intake,
        )
    )
    return Service(app.test_client(), stores, fetcher, book, intake)


def signed(
    name: str, *, secret: str = SECRET, body: bytes | None = None, **header: str
) -> tuple[dict[str, str], bytes]:
    headers, payload = fixture(name)
    raw = body if body is not None else json.dumps(payload).encode()
    headers = {**headers, "x-hub-signature-256": sign_body(raw, secret), **header}
    return headers, raw


async def post(svc: Service, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
    response = await svc.client.post(path, data=body, headers=dict(headers))
    return response.status_code, await response.get_json()


async def nothing_stored(svc: Service, delivery: str) -> None:
    assert await run_ids(svc.stores) == []
    assert await svc.stores.webhooks.get_delivery("__default__", delivery) is None
    assert await svc.stores.webhooks.mark_delivery(f"__default__:{delivery}", datetime.now(UTC))


@pytest.mark.feature("HOOK-04", "HOOK-03", "HOOK-14")
async def test_a_signed_webhook_is_accepted_and_its_run_listed_replays_are_duplicates(
    pg_stores: PgStores,
) -> None:
    svc = service(pg_stores, FakeFetcher(default=CI_LOCK))
    headers, body = signed("github_push")
    status, answer = await post(svc, f"/webhooks/github/{APP_KEY}", headers, body)
    assert status == 202
    assert (answer["accepted"], answer["deliveryId"], answer["status"]) == (
        True,
        headers["x-github-delivery"],
        "processed",
    )
    listed = await svc.client.get("/api/v1/runs", headers=svc.auth())
    runs = (await listed.get_json())["runs"]
    assert [r["id"] for r in runs] == answer["runIds"]
    assert runs[0]["workflowName"] == "ci"
    status, replay = await post(svc, "/webhooks/github/gh", headers, body)
    assert (status, replay["duplicate"]) == (200, True)
    assert len(await run_ids(pg_stores)) == 1


@pytest.mark.feature("HOOK-04", "HOOK-03")
async def test_forged_oversized_malformed_and_unknown_requests_store_nothing(pg_stores: PgStores) -> None:
    svc = service(pg_stores, FakeFetcher(default=CI_LOCK))
    headers, body = signed("github_push", secret="not-the-secret")
    delivery = headers["x-github-delivery"]
    assert (await post(svc, f"/webhooks/github/{APP_KEY}", headers, body))[0] == 401
    unsigned = {k: v for k, v in headers.items() if k != "x-hub-signature-256"}
    assert (await post(svc, f"/webhooks/github/{APP_KEY}", unsigned, body))[0] == 401
    big = b"{" + b" " * (64 * 1024) + b"}"
    status, answer = await post(svc, f"/webhooks/github/{APP_KEY}", signed("github_push", body=big)[0], big)
    assert (status, answer["maxBytes"]) == (413, 64 * 1024)
    malformed = b"{not json"
    assert (
        await post(svc, f"/webhooks/github/{APP_KEY}", signed("github_push", body=malformed)[0], malformed)
    )[0] == 400
    no_event = {k: v for k, v in signed("github_push")[0].items() if k != "x-github-event"}
    assert (await post(svc, f"/webhooks/github/{APP_KEY}", no_event, body))[0] == 400
    assert (await post(svc, "/webhooks/github/github:999", *signed("github_push")))[0] == 404
    assert (await post(svc, f"/webhooks/generic/{APP_KEY}", *signed("github_push")))[0] == 404
    await nothing_stored(svc, delivery)
    metrics = (await (await svc.client.get("/metrics")).get_data()).decode()
    assert 'kici_orch_webhooks_rejected_total{reason="signature"} 2.0' in metrics
    assert 'kici_orch_webhooks_rejected_total{reason="too_large"} 1.0' in metrics
    assert 'kici_orch_webhooks_rejected_total{reason="malformed"} 2.0' in metrics


@pytest.mark.feature("HOOK-03", "HOOK-04")
async def test_a_source_whose_secret_cannot_be_read_is_misconfigured(
    pg_stores: PgStores, tmp_path: Path
) -> None:
    gone = github_source(secrets=(SecretRef(SecretKind.FILE, str(tmp_path / "missing")),))
    svc = service(pg_stores, FakeFetcher(default=CI_LOCK), gone)
    status, answer = await post(svc, f"/webhooks/github/{APP_KEY}", *signed("github_push"))
    assert (status, answer["reason"]) == (500, "the webhook secret could not be read")
    (tmp_path / "missing").write_text(SECRET + "\n")
    assert (await post(svc, f"/webhooks/github/{APP_KEY}", *signed("github_push")))[0] == 202


@pytest.mark.feature("HOOK-23", "HOOK-14")
async def test_the_failed_run_of_a_corrupt_lock_is_visible_through_the_api(pg_stores: PgStores) -> None:
    svc = service(pg_stores, FakeFetcher(default=LockFileParseError("", "not valid JSON (boom)")))
    status, answer = await post(svc, f"/webhooks/github/{APP_KEY}", *signed("github_push"))
    assert (status, answer["status"]) == (202, "lockfile_corrupt")
    (run_id,) = answer["runIds"]
    shown = await (await svc.client.get(f"/api/v1/runs/{run_id}", headers=svc.auth())).get_json()
    assert (shown["status"], shown["workflowName"], shown["jobs"]) == ("failed", "(unresolved workflow)", [])
    assert shown["initFailure"]["category"] == "lock_resolution"
    assert "not valid JSON (boom)" in shown["initFailure"]["message"]
    failed = await (await svc.client.get("/api/v1/runs?status=failed", headers=svc.auth())).get_json()
    assert [r["id"] for r in failed["runs"]] == [run_id]


@pytest.mark.feature("CLI-14", "HOOK-14", "EXE-10")
async def test_runs_submitted_through_the_api_can_be_listed_shown_logged_and_cancelled(
    pg_stores: PgStores,
) -> None:
    svc = service(pg_stores, FakeFetcher())
    assert (await svc.client.get("/api/v1/runs")).status_code == 401
    assert (await svc.client.get("/api/v1/runs", headers={"authorization": "Bearer nope"})).status_code == 401
    lock = json.loads(json.dumps(_lock_json(CI_LOCK)))
    submitted = await svc.client.post(
        "/api/v1/runs",
        headers=svc.auth(),
        json={"event": "push", "repo": "http://git.example/acme/app.git", "branch": "main", "lock": lock},
    )
    assert submitted.status_code == 201
    (run_id,) = (await submitted.get_json())["runIds"]
    shown = await (await svc.client.get(f"/api/v1/runs/{run_id}", headers=svc.auth())).get_json()
    assert shown["workflowName"] == "ci"
    assert [j["name"] for j in shown["jobs"]] == ["lint", "test (3.11)", "test (3.12)"]
    lint = shown["jobs"][0]
    now = datetime.now(UTC)
    for lines in (("one", "two"), ("three",)):
        await pg_stores.logs.append_log_chunk(
            NewLogChunk(
                run_id=uuid.UUID(run_id),
                job_id=uuid.UUID(lint["id"]),
                step_index=0,
                lines=lines,
                logged_at=now,
                received_at=now,
            )
        )
    page = await (
        await svc.client.get(f"/api/v1/runs/{run_id}/jobs/lint/logs?limit=1", headers=svc.auth())
    ).get_json()
    assert [c["lines"] for c in page["chunks"]] == [["one", "two"]]
    rest = await (
        await svc.client.get(
            f"/api/v1/runs/{run_id}/jobs/{lint['id']}/logs?cursor={page['nextCursor']}", headers=svc.auth()
        )
    ).get_json()
    assert [c["lines"] for c in rest["chunks"]] == [["three"]]
    await pg_stores.logs.append_log_chunk(
        NewLogChunk(
            run_id=uuid.UUID(run_id),
            job_id=uuid.UUID(lint["id"]),
            step_index=-1,
            lines=("[kici] cloning",),
            logged_at=now,
            received_at=now,
        )
    )
    prepare = await (
        await svc.client.get(f"/api/v1/runs/{run_id}/jobs/lint/logs?step=-1", headers=svc.auth())
    ).get_json()
    assert [(c["stepIndex"], c["lines"]) for c in prepare["chunks"]] == [(-1, ["[kici] cloning"])]
    workflow_filter = await (
        await svc.client.get("/api/v1/runs?workflow=docs", headers=svc.auth())
    ).get_json()
    assert workflow_filter["runs"] == []
    cancelled = await svc.client.post(
        f"/api/v1/runs/{run_id}/cancel", headers=svc.auth(), json={"force": True}
    )
    assert cancelled.status_code == 202
    again = await svc.client.post(f"/api/v1/runs/{run_id}/cancel", headers=svc.auth(), json={})
    assert again.status_code == 409
    unknown = await svc.client.post(f"/api/v1/runs/{uuid.uuid4()}/cancel", headers=svc.auth(), json={})
    assert unknown.status_code == 404
    bad = await svc.client.post(
        "/api/v1/runs", headers=svc.auth(), json={"event": "push", "repo": "r", "lock": {}}
    )
    assert bad.status_code == 400


@pytest.mark.feature("OPS-09", "OPS-10")
async def test_health_ready_and_metrics_and_closed_intake(pg_stores: PgStores) -> None:
    svc = service(pg_stores, FakeFetcher(default=CI_LOCK))
    health = await (await svc.client.get("/health")).get_json()
    assert health["status"] == "ok"
    assert health["uptime"] >= 0
    datetime.fromisoformat(health["timestamp"])
    assert (await svc.client.get("/ready")).status_code == 200
    _, answer = await post(svc, f"/webhooks/github/{APP_KEY}", *signed("github_push"))
    (lint, *_) = await pg_stores.execution.list_jobs(uuid.UUID(answer["runIds"][0]))
    now = datetime.now(UTC)
    command = JobEventCommand(
        job_id=lint.job_id, expected=ExecutionState.PENDING, event=Event.ENQUEUE, now=now
    )
    await pg_stores.execution.apply_job_event(command)
    assert await pg_stores.queue.dequeue(lambda _: "agent-1", now + timedelta(seconds=2)) is not None
    metrics = (await (await svc.client.get("/metrics")).get_data()).decode()
    assert "kici_orch_dispatch_latency_seconds_count 1.0" in metrics
    assert 'kici_orch_dispatch_latency_seconds_bucket{le="2.5"} 1.0' in metrics
    again = (await (await svc.client.get("/metrics")).get_data()).decode()
    assert "kici_orch_dispatch_latency_seconds_count 1.0" in again
    assert 'kici_orch_webhooks_received_total{event="push",source="gh"} 1.0' in metrics
    assert 'kici_orch_webhooks_processed_total{result="processed"} 1.0' in metrics
    assert 'kici_orch_runs{status="running"} 1.0' in metrics
    assert "kici_orch_dispatch_queue_depth 0.0" in metrics
    assert "kici_orch_agents_active 0.0" in metrics
    svc.intake.open = False
    assert (await svc.client.get("/ready")).status_code == 503
    closed = await post(svc, f"/webhooks/github/{APP_KEY}", *signed("github_push"))
    assert closed[0] == 503


def _lock_json(lock: LockFile) -> Any:
    return json.loads(dump_lock(lock))
