"""The orchestrator's Prometheus metrics (OPS-10), on a registry of its own.

Counters and histograms are updated where things happen (ingress, pipeline); the gauges that
describe state (runs by status, queue depth, connected agents, config version) are read when
``/metrics`` is scraped, from the database and the hub, so they are never stale and no background
task keeps them. An own ``CollectorRegistry`` keeps two orchestrators in one test process apart and
leaves out the client library's process/platform collectors, which are not kici's to define.

Names follow 50 §12 (``kici_orch_…``); beyond its list, ``webhooks_rejected_total{reason}`` counts
refusals at the door (``signature``, ``unknown_source``, ``misconfigured``, ``too_large``,
``malformed``), ``runs{status}`` is the number of runs per status, and
``dispatch_latency_seconds`` is the time from a job's enqueue to its dispatch, read from the queue
rows dispatched since the previous scrape.

Connections and recovery (PRO-37), also beyond 50 §12's list: ``agent_connections_opened_total``,
``agent_connections_closed_total{code}`` (the close code, ``error`` when the connection crashed),
``agent_handshake_failures_total{reason}`` (a fixed vocabulary, `HandshakeFailure`, never the
free-text close reason, which may name labels), ``jobs_recovery_started_total`` / ``jobs_reclaimed_total`` /
``jobs_recovery_expired_total`` (jobs entering, leaving by reclaim, leaving by expiry),
``dispatch_ack_timeouts_total`` and the gauge ``jobs_recovering``. The hub and the timer task update
them through `AgentHub.metrics` and `DeadlineScheduler.fired`, which :func:`instrument_execution` sets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kici.domain.execution.states import RunStatus

if TYPE_CHECKING:
    from kici.services.orchestrator.agent_hub import AgentHub
    from kici.services.orchestrator.timers import DeadlineScheduler, TimerKey

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class HandshakeFailure(StrEnum):
    """Why an agent's handshake failed: the bounded label set of ``agent_handshake_failures_total``."""

    PROTOCOL_VERSION = "protocol_version"
    INVALID_TOKEN = "invalid_token"
    TOKEN_STATE = "token_state"
    UNEXPECTED_MESSAGE = "unexpected_message"
    LABELS = "labels"
    PRIVILEGED_ROOT = "privileged_root"
    EPHEMERAL_ID = "ephemeral_id"
    TOKEN_CONFLICT = "token_conflict"
    BOOTSTRAP_USED = "bootstrap_used"
    AUTH_TIMEOUT = "auth_timeout"
    REGISTER_TIMEOUT = "register_timeout"


CLOSE_CODE_ERROR: Final = "error"
"""The ``code`` label of a connection that ended on an exception rather than a close."""


class OrchestratorMetrics:
    """Every metric of one orchestrator process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.webhooks_received = Counter(
            "kici_orch_webhooks_received_total", "Webhooks received", ["source", "event"], registry=r
        )
        self.webhooks_rejected = Counter(
            "kici_orch_webhooks_rejected_total", "Webhooks refused at ingress", ["reason"], registry=r
        )
        self.webhooks_processed = Counter(
            "kici_orch_webhooks_processed_total", "Webhooks through the pipeline", ["result"], registry=r
        )
        self.dedup_hits = Counter("kici_orch_dedup_hits_total", "Replayed deliveries dropped", registry=r)
        self.trigger_match_duration = Histogram(
            "kici_orch_trigger_match_duration_seconds", "Trigger matching time per webhook", registry=r
        )
        self.lockfile_cache_hits = Counter("kici_lockfile_cache_hits_total", "Lock cache hits", registry=r)
        self.lockfile_cache_misses = Counter(
            "kici_lockfile_cache_misses_total", "Lock cache misses", registry=r
        )
        self.executions = Counter("kici_orch_executions_total", "Runs created", registry=r)
        self.runs = Gauge("kici_orch_runs", "Runs by status", ["status"], registry=r)
        self.queue_depth = Gauge("kici_orch_dispatch_queue_depth", "Jobs waiting for an agent", registry=r)
        self.agents_active = Gauge("kici_orch_agents_active", "Connected agents", registry=r)
        self.dispatch_latency = Histogram(
            "kici_orch_dispatch_latency_seconds",
            "Time from a job becoming ready to its dispatch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.config_version = Gauge("kici_orch_config_version", "Config generation in use", registry=r)
        self.config_reloads = Counter(
            "kici_orch_config_reload_total", "Config reloads", ["result", "source"], registry=r
        )
        self.agent_connections_opened = Counter(
            "kici_orch_agent_connections_opened_total", "Agent connections accepted", registry=r
        )
        self.agent_connections_closed = Counter(
            "kici_orch_agent_connections_closed_total", "Agent connections ended", ["code"], registry=r
        )
        self.agent_handshake_failures = Counter(
            "kici_orch_agent_handshake_failures_total", "Agent handshakes refused", ["reason"], registry=r
        )
        self.jobs_recovering_entered = Counter(
            "kici_orch_jobs_recovery_started_total", "Jobs that entered a recovery window", registry=r
        )
        self.jobs_reclaimed = Counter(
            "kici_orch_jobs_reclaimed_total", "Recovering jobs reclaimed by their agent", registry=r
        )
        self.jobs_recovery_expired = Counter(
            "kici_orch_jobs_recovery_expired_total", "Recovery windows that closed unclaimed", registry=r
        )
        self.dispatch_ack_timeouts = Counter(
            "kici_orch_dispatch_ack_timeouts_total", "Dispatches not acknowledged in time", registry=r
        )
        self.jobs_recovering = Gauge(
            "kici_orch_jobs_recovering", "Jobs waiting in a recovery window now", registry=r
        )
        self._reload_seen: dict[tuple[str, str], int] = {}
        self._cache_seen = (0, 0)

    def sync_lock_cache(self, hits: int, misses: int) -> None:
        """Advance the cache counters to the cache's own totals (it counts, we export)."""
        seen_hits, seen_misses = self._cache_seen
        self.lockfile_cache_hits.inc(max(0, hits - seen_hits))
        self.lockfile_cache_misses.inc(max(0, misses - seen_misses))
        self._cache_seen = (max(hits, seen_hits), max(misses, seen_misses))

    def sync_reloads(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Advance ``config_reload_total`` to the reloader's ``(source, result)`` counts."""
        for (source, result), total in counts.items():
            seen = self._reload_seen.get((source, result), 0)
            if total > seen:
                self.config_reloads.labels(result=result, source=source).inc(total - seen)
                self._reload_seen[(source, result)] = total

    def set_runs(self, counts: Mapping[str, int]) -> None:
        for status in RunStatus:
            self.runs.labels(status=status.value).set(counts.get(status.value, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def timer_fired(self, key: TimerKey) -> None:
        """A deadline of the execution brain fired: an ack or a recovery window ran out.

        The handlers' timers are cancelled whenever their wait is settled otherwise (ack, reclaim,
        terminal status), so a firing is the timeout itself. The sweep's backstops, which cover rows
        this process holds no timer for, are not counted.
        """
        kind = key[0]
        if kind == "ack":
            self.dispatch_ack_timeouts.inc()
        elif kind == "recovery":
            self.jobs_recovery_expired.inc()


def instrument_execution(metrics: OrchestratorMetrics, hub: AgentHub, scheduler: DeadlineScheduler) -> None:
    """Wire the connection and recovery metrics into a built execution brain (the composition root calls
    this once; without it they stay at zero). The recovering gauge is read from the recovery book at
    scrape time, so it never drifts from the book."""
    hub.metrics = metrics
    scheduler.fired = metrics.timer_fired
    metrics.jobs_recovering.set_function(lambda: float(hub.recovering_count()))


Refresher = Callable[[OrchestratorMetrics], Awaitable[None]]
"""Reads the state gauges before a scrape (the app passes one that asks the stores and the hub)."""


class StateReads(Protocol):
    async def count_by_status(self) -> dict[str, int]: ...

    async def dispatch_latencies(self, since: datetime) -> tuple[list[float], datetime]: ...


def state_refresher(
    reads: StateReads,
    queue_depth: Callable[[], Awaitable[int]],
    agents: Callable[[], int],
    *,
    since: datetime,
    reload_counts: Callable[[], Mapping[tuple[str, str], int]] = dict,
) -> Refresher:
    """The scrape-time refresh: runs by status, queue depth, agents, reloads, and the dispatch
    latencies of every dispatch since the previous scrape (the first scrape starts at ``since``,
    the process start, so a restart does not replay history into the histogram)."""
    cursor = since

    async def refresh(metrics: OrchestratorMetrics) -> None:
        nonlocal cursor
        metrics.set_runs(await reads.count_by_status())
        metrics.queue_depth.set(await queue_depth())
        metrics.agents_active.set(agents())
        metrics.sync_reloads(reload_counts())
        latencies, cursor = await reads.dispatch_latencies(cursor)
        for seconds in latencies:
            metrics.dispatch_latency.observe(seconds)

    return refresh


__all__ = [
    "CLOSE_CODE_ERROR",
    "CONTENT_TYPE",
    "HandshakeFailure",
    "OrchestratorMetrics",
    "Refresher",
    "StateReads",
    "instrument_execution",
    "state_refresher",
]
