"""``process_webhook(info, deps)``: one verified delivery -> runs (30 §3, HOOK-14).

The phases that apply to a single orchestrator in independent mode, each ending the delivery with
the ``event_log`` status of 30 §4:

* **A** dedup: one atomic insert of ``<org>:<deliveryId>`` (``mark_delivery``); a replay stops here
  as ``duplicate`` and dispatches nothing (P1). The provider bundle comes from the routing key; no
  bundle, or an event the normalizer cannot match, stops as ``received``.
* **C** the repository identifier; none (a generic event) stops as ``received``.
* **D** trust (HOOK-15): which lock decides. Non-PR events read the lock at the event's own commit
  (``head``). There is no contributor resolver in independent mode yet, so a pull request's tier is
  decided from the payload alone: a PR whose head lives in the base repository was pushed by
  someone with write access and reads ``head``; a fork PR (or one whose head repository is gone)
  reads the base branch's lock (fail closed), and the head lock is never evaluated (P4).
* **E** the lock through the :class:`LockCache`: absent (or a transient fetch error, or a bundle
  without a fetcher) stops as ``lockfile_missing``; a corrupt lock (bad JSON, wrong
  ``schemaVersion``, unsafe regex...) becomes a visible failed run -- workflow
  ``(unresolved workflow)``, init failure ``lock_resolution`` with the parse message -- and
  ``lockfile_corrupt`` (HOOK-23).
* **G** registrations (HOOK-18): a push to the default branch (not from the ``local`` provider)
  replaces the repository's stored registrations with the registerable workflows of its lock, even
  when none are left, and bumps the registry version in the same transaction. There is no org policy
  store yet, so global workflows are not permitted (spec 30 §7: no settings row denies) unless
  ``globals_permitted`` says otherwise. A failing store is logged and the delivery still matches and
  runs: a registration outage must not stop the push's own CI. The in-memory index, the cron cache
  and the ``registration.updated`` event are not built yet; peers read the version. Phase G runs
  after phase I (the push's own runs are created and the dispatcher woken first): its outcome
  never changes what this delivery matches, so its transaction is kept off the path from webhook
  to first step (issue 7).
* **H** changed files, fetched only when a ``push``/``pr`` trigger of the event's kind has
  ``paths`` (HOOK-13); a failing fetch counts as "no files" (paths triggers then do not match) and
  is logged. Then every workflow is matched (``match_lock``).
* **I** one run per matched workflow, each created in one transaction with its jobs ``pending``
  and roots ready (:mod:`.runs`), then one ``dispatcher.wake()``.
* **K** the ``event_log`` row: ``processed`` with ``matched_count`` and the first ``run_id``.

The ``webhook handled`` log line carries ``duration_ms`` (the phases from the dedup insert up to
that line) and ``lock_fetch_ms`` (phase E alone, when it ran): the pipeline's share of the
webhook-to-step latency, which ``scripts/bench/latency.py`` reads back from the JSON log.

Phases B (cross-source dispatch), F (security hold) and J (global workflows)
belong to features this orchestrator does not have yet. The delivery-log row is written once, when
the delivery's outcome is known, so it carries the repository and ref; an exception in any phase
writes ``failed`` with the error and the ingress answers 500. A delivery that failed after its mark
is not processed again on redelivery (the mark is the guard against double runs); the operator
reruns it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from typing import Any, Final

import attrs
import structlog

from kici.adapters.clock import Clock
from kici.domain.events import SimulatedEvent
from kici.domain.execution.run_status import RunEvent
from kici.domain.lockfile import LockFile, LockFileParseError
from kici.domain.providers import ProviderBundle, ProviderRegistry
from kici.domain.registrations import SKIPPED_GLOBAL_MESSAGE, registers, registration_set
from kici.domain.store import (
    EventLogEntry,
    EventLogStatus,
    EventSource,
    ExecutionStore,
    GateOutcome,
    RegistrationStore,
    WebhookStore,
)
from kici.domain.triggers import match_lock
from kici.domain.webhooks.changed_files import changed_files_needed
from kici.domain.webhooks.lock_cache import LockCache
from kici.domain.webhooks.models import ProviderType, WebhookInfo
from kici.domain.webhooks.payload import dig, text
from kici.services.orchestrator.logging import request_scope, run_scope
from kici.services.orchestrator.metrics import OrchestratorMetrics
from kici.services.orchestrator.runs import RunContext, build_run, lock_failure_run
from kici.services.orchestrator.sources import org_of

_log = structlog.get_logger(__name__)

PR_LIKE: Final = frozenset({"pull_request", "review", "review_comment"})
_ERROR_MAX: Final = 2000
_ERROR_STATUSES: Final = frozenset({EventLogStatus.LOCKFILE_CORRUPT, EventLogStatus.FAILED})


class LockSide(StrEnum):
    HEAD = "head"
    BASE = "base"


def lock_side(event: SimulatedEvent) -> LockSide:
    """Phase D without a contributor resolver (see the module docstring)."""
    if event.type not in PR_LIKE or event.is_fork_pr is False:
        return LockSide.HEAD
    return LockSide.BASE


def lock_ref(event: SimulatedEvent, head_ref: str) -> str:
    """The ref whose lock decides: the event's commit, or the base branch of an untrusted PR."""
    if lock_side(event) is LockSide.HEAD:
        return head_ref
    return event.base_branch or event.target_branch


def _no_globals(routing_key: str, repo: str) -> bool:
    return False


@attrs.frozen(kw_only=True)
class PipelineDeps:
    """The ports the pipeline drives; ``registry`` is read per delivery (it is swapped on reload)."""

    registry: Callable[[], ProviderRegistry]
    execution: ExecutionStore
    webhooks: WebhookStore
    lock_cache: LockCache
    clock: Clock
    wake: Callable[[], None]
    settle: Callable[[uuid.UUID, GateOutcome], Awaitable[None]] | None = None
    """The tracker's ``settle``: a run whose creation already failed or skipped jobs (a needs cycle)
    must be completed by it, or it would never finish."""
    metrics: OrchestratorMetrics | None = None
    new_run_id: Callable[[], uuid.UUID] = uuid.uuid4
    event_source: EventSource = EventSource.DIRECT
    registrations: RegistrationStore | None = None
    """Phase G is skipped without a store."""
    globals_permitted: Callable[[str, str], bool] = _no_globals
    """Whether the org policy lets ``(routing_key, repo)`` author global workflows (GLB-03)."""


@attrs.frozen(kw_only=True)
class PipelineResult:
    """How one delivery ended; ``run_ids`` in lock order (the corrupt-lock run included)."""

    status: EventLogStatus
    run_ids: tuple[uuid.UUID, ...] = ()
    matched: int = 0
    reason: str = ""
    repo_identifier: str | None = None
    ref: str | None = None
    lock_fetch_ms: float | None = None


def _received(reason: str, repo: str | None = None) -> PipelineResult:
    return PipelineResult(status=EventLogStatus.RECEIVED, reason=reason, repo_identifier=repo)


def _human_ref(info: WebhookInfo, event: SimulatedEvent) -> str | None:
    return text(info.payload.get("ref")) or event.target_branch or None


def _run_context(
    info: WebhookInfo, event: SimulatedEvent, bundle: ProviderBundle, *, repo: str, org: str, sha: str
) -> RunContext:
    repo_url = ""
    if bundle.repo_url_builder is not None:
        try:
            repo_url = bundle.repo_url_builder.build_clone_url(repo)
        except ValueError:
            repo_url = ""
    return RunContext(
        event=event,
        event_name=info.event,
        repo_identifier=repo,
        repo_url=repo_url,
        ref=_human_ref(info, event),
        sha=sha,
        routing_key=info.routing_key,
        org_id=org,
        provider=info.provider.value,
        provider_context=dict(bundle.normalizer.extract_credentials(info.payload)),
        delivery_id=info.delivery_id,
        request_id=info.request_id,
        triggered_by=f"webhook:{info.event}",
    )


async def _changed_files(
    bundle: ProviderBundle, lock: LockFile, event: SimulatedEvent, repo: str, info: WebhookInfo
) -> list[str] | None:
    fetcher = bundle.changed_files_fetcher
    if fetcher is None or not changed_files_needed(lock.workflows, event, fetcher_available=True):
        return None
    try:
        return await fetcher.get_changed_files(
            repo, event, info.payload, bundle.normalizer.extract_credentials(info.payload)
        )
    except Exception as exc:
        _log.warning("changed files unavailable; paths filters see none", repo=repo, error=str(exc))
        return []


async def _corrupt(deps: PipelineDeps, ctx: RunContext, error: LockFileParseError) -> PipelineResult:
    run_id = deps.new_run_id()
    now = deps.clock.now()
    message = str(error)
    with run_scope(run_id):
        await deps.execution.create_run(lock_failure_run(ctx, message, run_id=run_id, now=now), [])
        await deps.execution.apply_run_event(run_id, RunEvent.COMPLETE_FAILED, now, reason=message)
        _log.warning("lock file unusable; failed run recorded", repo=ctx.repo_identifier, error=message)
    return PipelineResult(
        status=EventLogStatus.LOCKFILE_CORRUPT,
        run_ids=(run_id,),
        reason=message,
        repo_identifier=ctx.repo_identifier,
        ref=ctx.ref,
    )


async def _register(
    info: WebhookInfo,
    deps: PipelineDeps,
    bundle: ProviderBundle,
    lock: LockFile,
    event: SimulatedEvent,
    *,
    org: str,
    repo: str,
    head_ref: str,
) -> None:
    store = deps.registrations
    if store is None or not registers(
        local=info.provider is ProviderType.LOCAL,
        event_type=event.type,
        target_branch=event.target_branch,
        default_branches=(
            bundle.normalizer.extract_default_branch(info.payload),
            text(dig(info.payload, "repository", "default_branch")),
        ),
    ):
        return
    batch = registration_set(
        lock,
        customer_id=org,
        routing_key=info.routing_key,
        repo_identifier=repo,
        ref=head_ref,
        provider_context=bundle.normalizer.extract_credentials(info.payload),
        globals_permitted=deps.globals_permitted(info.routing_key, repo),
    )
    for name in batch.skipped_globals:
        _log.warning(SKIPPED_GLOBAL_MESSAGE, workflow=name, repo=repo)
    try:
        replaced = await store.replace_all(batch, deps.clock.now())
    except Exception as exc:
        _log.error("registrations not updated", repo=repo, error=str(exc))
        return
    _log.info(
        "registrations updated",
        repo=repo,
        workflow_count=len(batch.registrations),
        workflows=list(batch.workflow_names),
        version=replaced.version,
    )


async def _process(info: WebhookInfo, deps: PipelineDeps, org: str) -> PipelineResult:
    bundle = deps.registry().get_by_routing_key(info.routing_key)
    if bundle is None:
        return _received("no provider is registered for this routing key")
    normalizer = bundle.normalizer
    event = normalizer.normalize_event(info.event, info.action, info.payload)
    if event is None:
        return _received(f"event {info.event!r} is not matchable")
    repo = normalizer.extract_repo_identifier(info.payload)
    if repo is None:
        return _received("the event names no repository")
    head_ref = normalizer.extract_ref(info.event, info.payload)
    ctx = _run_context(info, event, bundle, repo=repo, org=org, sha=head_ref)
    ref = lock_ref(event, head_ref)
    fetcher = bundle.lock_file_fetcher
    lock: LockFile | None = None
    lock_fetch_ms: float | None = None
    if fetcher is not None:
        fetch_started = time.perf_counter()
        try:
            lock = await deps.lock_cache.fetch(
                fetcher, repo, ref, normalizer.extract_credentials(info.payload)
            )
        except LockFileParseError as exc:
            return await _corrupt(deps, ctx, exc)
        lock_fetch_ms = round((time.perf_counter() - fetch_started) * 1000, 2)
    if lock is None:
        return PipelineResult(
            status=EventLogStatus.LOCKFILE_MISSING,
            reason=f"no lock file in {repo} at {ref}",
            repo_identifier=repo,
            ref=ctx.ref,
            lock_fetch_ms=lock_fetch_ms,
        )
    changed = await _changed_files(bundle, lock, event, repo, info)
    event = attrs.evolve(event, changed_files=changed, source_repo=repo)
    started = time.perf_counter()
    match = match_lock(lock, event)
    if deps.metrics is not None:
        deps.metrics.trigger_match_duration.observe(time.perf_counter() - started)
    ctx = attrs.evolve(ctx, event=event)
    run_ids: list[uuid.UUID] = []
    for workflow in match.matched:
        run_id = deps.new_run_id()
        with run_scope(run_id):
            run, jobs = build_run(workflow, ctx, run_id=run_id, now=deps.clock.now())
            created = await deps.execution.create_run(run, jobs)
            _log.info("run created", workflow=workflow.name, jobs=len(jobs), repo=repo, ref=ctx.ref)
            if deps.settle is not None and (created.gate.failed or created.gate.skipped):
                await deps.settle(run_id, created.gate)
        run_ids.append(run_id)
    if run_ids:
        deps.wake()
        if deps.metrics is not None:
            deps.metrics.executions.inc(len(run_ids))
    await _register(info, deps, bundle, lock, event, org=org, repo=repo, head_ref=head_ref)
    return PipelineResult(
        status=EventLogStatus.PROCESSED,
        run_ids=tuple(run_ids),
        matched=len(run_ids),
        reason=f"{len(run_ids)} of {len(match.decisions)} workflows matched",
        repo_identifier=repo,
        ref=ctx.ref,
        lock_fetch_ms=lock_fetch_ms,
    )


def _entry(info: WebhookInfo, deps: PipelineDeps, org: str, result: PipelineResult) -> EventLogEntry:
    error = result.reason if result.status in _ERROR_STATUSES else None
    return EventLogEntry(
        org_id=org,
        delivery_id=info.delivery_id,
        status=result.status,
        received_at=deps.clock.now(),
        routing_key=info.routing_key,
        event=info.event,
        action=info.action,
        source=deps.event_source,
        provider=info.provider.value,
        repo_identifier=result.repo_identifier,
        ref=result.ref,
        matched_count=result.matched,
        run_id=result.run_ids[0] if result.run_ids else None,
        error_message=error[:_ERROR_MAX] if error else None,
    )


async def process_webhook(info: WebhookInfo, deps: PipelineDeps) -> PipelineResult:
    """Run the phases for one verified delivery; never raises for a delivery's own problems.

    An unexpected error (database down, a bug) is recorded as ``failed`` and returned as such, so
    the caller answers 500 and the sender retries.
    """
    org = org_of(info.routing_key)
    started = time.perf_counter()
    with request_scope(info.request_id, delivery_id=info.delivery_id, routing_key=info.routing_key):
        try:
            first = await deps.webhooks.mark_delivery(
                f"{org}:{info.delivery_id}", deps.clock.now(), routing_key=info.routing_key
            )
        except Exception as exc:
            _log.error("dedup unavailable; delivery not processed", error=str(exc))
            return PipelineResult(status=EventLogStatus.FAILED, reason=f"dedup unavailable: {exc}")
        if not first:
            if deps.metrics is not None:
                deps.metrics.dedup_hits.inc()
            result = PipelineResult(status=EventLogStatus.DUPLICATE, reason="delivery already received")
        else:
            try:
                result = await _process(info, deps, org)
            except Exception as exc:
                _log.exception("webhook processing failed")
                result = PipelineResult(status=EventLogStatus.FAILED, reason=f"{type(exc).__name__}: {exc}")
        _log.info(
            "webhook handled",
            status=result.status.value,
            matched=result.matched,
            reason=result.reason,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            lock_fetch_ms=result.lock_fetch_ms,
        )
        if deps.metrics is not None:
            deps.metrics.webhooks_processed.labels(result=result.status.value).inc()
            deps.metrics.sync_lock_cache(deps.lock_cache.hits, deps.lock_cache.misses)
        try:
            await deps.webhooks.record_delivery(_entry(info, deps, org, result))
        except Exception as exc:
            _log.error("delivery log write failed", error=str(exc))
        return result


def webhook_summary(result: PipelineResult) -> Mapping[str, Any]:
    """The JSON the ingress returns about a processed delivery."""
    body: dict[str, Any] = {"status": result.status.value, "matched": result.matched}
    if result.run_ids:
        body["runIds"] = [str(r) for r in result.run_ids]
    return body


__all__ = [
    "PR_LIKE",
    "LockSide",
    "PipelineDeps",
    "PipelineResult",
    "lock_ref",
    "lock_side",
    "process_webhook",
    "webhook_summary",
]
