"""The orchestrator's execution brain, assembled: agent hub, dispatcher, tracker, timers, startup sweep.

``build_execution(settings, stores, db_url_for_listener=..., clock=...)`` wires the parts over the
store ports; ``await nursery.start(services.run)`` then runs them until cancelled:

1. the timer task (one deadline heap: ack, recovery, job timeout, workflow deadline, periodic sweeps);
2. the startup sweep (``startup.py``): dispatched rows go ``recovering`` with deadlines, stored
   recovery deadlines are re-armed, the needs gate is recomputed, ready jobs are enqueued;
3. only then agents may register (``hub.serve`` holds ``agent.register`` until the sweep is done, so
   ``inFlightJobs`` meet a settled recovery book);
4. the dispatcher: LISTEN ``kici_dispatch`` / ``kici_job_ready`` plus ``wake()``; every reconnect of
   the listener runs a catch-up pass, so no polling loop exists beyond the timer sweeps.

What the front door (FRONT) uses:

* ``services.hub.serve(conn, remote_addr)`` inside the ``/ws`` route (returns when the agent leaves);
  ``services.hub.connected_count()`` for metrics;
* ``services.tracker.cancel_run(run_id, force=, reason=, cancelled_by=)`` -> :class:`CancelResult`
  (``http_status``: 202 accepted, 404 unknown run, 409 run already terminal);
* ``services.dispatcher.wake()`` after ``store.create_run``; when the creation already decided jobs
  (``created.gate.failed`` / ``skipped``: a needs cycle), also ``services.tracker.settle(run_id, gate)``
  so the run completes.

Job rows FRONT creates carry two opaque JSON values this package reads back:

* ``NewJob.routing`` = :func:`kici.services.orchestrator.dispatcher.routing_json` of the lock job's
  ``runs_on`` / ``exclude_labels`` (``{"runsOn": [matcher], "exclude": [matcher]}``, matchers in the
  lock's JSON form); absent or null means "any agent without mandatory labels";
* ``NewJob.config`` = a JSON object sent as ``job.dispatch.jobConfig``; the dispatcher adds
  ``jobName``, ``baseJobName``, ``matrixValues`` and ``dispatchAttempt``. Its ``timeout`` (ms), when
  present, arms the orchestrator's job-timeout backstop.

Clone URL and credentials come from an optional :class:`DispatchSourceResolver` (FRONT builds one
from the provider registry); without one the run's ``repo_identifier`` is the clone URL.
"""

from __future__ import annotations

from typing import Any

import attrs
import structlog
import trio

from kici.adapters.clock import Clock
from kici.domain.config.schema import AgentAuth, OrchestratorConfig
from kici.domain.dispatch_ack import effective_ack_timeout_ms
from kici.domain.liveness import DEFAULT_THRESHOLDS, LivenessThresholds
from kici.domain.ratelimit import RateLimitConfig
from kici.domain.recovery import COMPLETED_GRACE_MS, recovery_grace_ms
from kici.domain.store import AgentStore, DispatchQueue, ExecutionStore, LogStore, WebhookStore
from kici.services.orchestrator.agent_hub import AgentHub, AgentRegistry, HubSettings
from kici.services.orchestrator.dispatcher import (
    Dispatcher,
    DispatcherSettings,
    DispatchSource,
    DispatchSourceResolver,
    routing_json,
)
from kici.services.orchestrator.startup import startup_sweep
from kici.services.orchestrator.timers import DeadlineScheduler, Sweeper
from kici.services.orchestrator.tracker import (
    NO_OBSERVER,
    CancelOutcome,
    CancelResult,
    ExecutionObserver,
    Tracker,
    TrackerSettings,
)

_log = structlog.get_logger(__name__)


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


@attrs.frozen(kw_only=True)
class ExecutionSettings:
    """Every interval of the execution brain, in milliseconds (spec 20 §17, 10 §11 defaults).

    Tests shrink them; production builds them with :meth:`from_config`. ``queue_timeout_ms`` 0 means
    queued jobs never expire. ``job_timeout_grace_ms`` is how long past a job's own ``timeout`` the
    orchestrator waits for the agent's ``failed`` report before failing the job itself.
    """

    agent_auth: AgentAuth = AgentAuth.TOKEN
    auth_timeout_ms: int = attrs.field(default=5_000, validator=_positive)
    register_timeout_ms: int = attrs.field(default=10_000, validator=_positive)
    ack_timeout_ms: int = attrs.field(default=10_000, validator=_positive)
    recovery_grace_ms: int = attrs.field(default=recovery_grace_ms(), validator=_positive)
    completed_grace_ms: int = attrs.field(default=COMPLETED_GRACE_MS, validator=_non_negative)
    liveness: LivenessThresholds = DEFAULT_THRESHOLDS
    rate_limit: RateLimitConfig = attrs.field(factory=RateLimitConfig)
    stale_scan_interval_ms: int = attrs.field(default=60_000, validator=_positive)
    stale_threshold_multiplier: float = attrs.field(default=2.0, validator=_positive)
    job_heartbeat_interval_ms: int = attrs.field(default=60_000, validator=_positive)
    queue_timeout_ms: int = attrs.field(default=3_600_000, validator=_non_negative)
    job_timeout_grace_ms: int = attrs.field(default=30_000, validator=_non_negative)

    @property
    def stale_threshold_ms(self) -> float:
        """A running job is stale after this much heartbeat silence (interval x multiplier)."""
        return self.job_heartbeat_interval_ms * self.stale_threshold_multiplier

    @classmethod
    def from_config(cls, cfg: OrchestratorConfig) -> ExecutionSettings:
        """The settings of a validated orchestrator config; the rate limiter and liveness keep 20 §7/§10."""
        return cls(
            agent_auth=cfg.agents.auth,
            ack_timeout_ms=effective_ack_timeout_ms(None, cfg.agents.dispatch_ack_timeout_ms),
            recovery_grace_ms=recovery_grace_ms(cfg.agents.max_reconnect_delay_ms),
            stale_scan_interval_ms=cfg.stale_detector.scan_interval_ms,
            stale_threshold_multiplier=cfg.stale_detector.threshold_multiplier,
            job_heartbeat_interval_ms=cfg.stale_detector.heartbeat_interval_ms,
            queue_timeout_ms=cfg.queue.timeout_ms,
        )


@attrs.frozen(kw_only=True)
class Stores:
    """The five store ports one orchestrator works on (the composition root builds the adapters)."""

    execution: ExecutionStore
    queue: DispatchQueue
    webhooks: WebhookStore
    agents: AgentStore
    logs: LogStore


class ExecutionServices:
    """The running parts; see the module docstring for what the front door calls."""

    def __init__(
        self,
        *,
        hub: AgentHub,
        tracker: Tracker,
        dispatcher: Dispatcher,
        scheduler: DeadlineScheduler,
        sweeper: Sweeper,
        stores: Stores,
        clock: Clock,
        sweep_interval_s: float,
    ) -> None:
        self.hub = hub
        self.tracker = tracker
        self.dispatcher = dispatcher
        self._scheduler = scheduler
        self._sweeper = sweeper
        self._stores = stores
        self._clock = clock
        self._sweep_interval_s = sweep_interval_s

    @property
    def scheduler(self) -> DeadlineScheduler:
        """The deadline heap, exposed so the composition root can instrument it (PRO-37)."""
        return self._scheduler

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start timers, run the startup sweep, open the hub, start dispatching; return only when cancelled.

        Cancellation is the ordered shutdown: agent connections are asked to close (1001) first, so
        their jobs are left ``dispatched`` for the next boot's sweep rather than failed here.
        """
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._scheduler.run)
                await startup_sweep(
                    execution=self._stores.execution,
                    queue=self._stores.queue,
                    agents=self._stores.agents,
                    tracker=self.tracker,
                    dispatcher=self.dispatcher,
                    clock=self._clock,
                )
                self._scheduler.every(("sweep", "periodic"), self._sweep_interval_s, self._sweeper.sweep)
                self.hub.open()
                await nursery.start(self.dispatcher.run)
                _log.info("execution services started")
                task_status.started()
        finally:
            self.hub.close_all()


def build_execution(
    settings: ExecutionSettings,
    stores: Stores,
    *,
    db_url_for_listener: str | None,
    clock: Clock,
    source_resolver: DispatchSourceResolver | None = None,
    observer: ExecutionObserver = NO_OBSERVER,
) -> ExecutionServices:
    """Wire the execution brain over ``stores``.

    ``db_url_for_listener`` is the conninfo of the LISTEN connection (None: no listener, the
    dispatcher moves only on ``wake()`` and its own writes, which suits tests with a single writer).
    ``observer`` hears about every status the tracker writes (the Platform link's upstream telemetry).
    """
    registry = AgentRegistry()
    scheduler = DeadlineScheduler(clock)
    dispatcher = Dispatcher(
        execution=stores.execution,
        queue=stores.queue,
        registry=registry,
        scheduler=scheduler,
        clock=clock,
        settings=DispatcherSettings(
            ack_timeout_ms=settings.ack_timeout_ms, queue_timeout_ms=settings.queue_timeout_ms
        ),
        listener_conninfo=db_url_for_listener,
        source_resolver=source_resolver,
    )
    tracker = Tracker(
        execution=stores.execution,
        queue=stores.queue,
        logs=stores.logs,
        registry=registry,
        dispatcher=dispatcher,
        scheduler=scheduler,
        clock=clock,
        settings=TrackerSettings(
            recovery_grace_ms=settings.recovery_grace_ms,
            completed_grace_ms=settings.completed_grace_ms,
            stale_threshold_ms=settings.stale_threshold_ms,
            job_timeout_grace_ms=settings.job_timeout_grace_ms,
        ),
        observer=observer,
    )
    hub = AgentHub(
        agents=stores.agents,
        registry=registry,
        tracker=tracker,
        dispatcher=dispatcher,
        clock=clock,
        settings=HubSettings(
            agent_auth=settings.agent_auth,
            auth_timeout_s=settings.auth_timeout_ms / 1000,
            register_timeout_s=settings.register_timeout_ms / 1000,
            liveness=settings.liveness,
            rate_limit=settings.rate_limit,
        ),
    )
    sweeper = Sweeper(tracker=tracker, dispatcher=dispatcher)
    return ExecutionServices(
        hub=hub,
        tracker=tracker,
        dispatcher=dispatcher,
        scheduler=scheduler,
        sweeper=sweeper,
        stores=stores,
        clock=clock,
        sweep_interval_s=settings.stale_scan_interval_ms / 1000,
    )


__all__ = [
    "CancelOutcome",
    "CancelResult",
    "DispatchSource",
    "DispatchSourceResolver",
    "ExecutionObserver",
    "ExecutionServices",
    "ExecutionSettings",
    "Stores",
    "build_execution",
    "routing_json",
]
