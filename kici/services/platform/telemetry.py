"""The Platform's telemetry sink: store each frame from an orchestrator, then fan changes out live.

`PlatformTelemetry.record` is the ``TelemetrySink`` the orchestrator hub calls for every telemetry
frame of an authenticated connection (PRO-22). The org is the connection's tenant, passed in by the
hub; an ``orgId`` inside a message is never consulted. Frames and what becomes of them:

=========================  ======================================  =====================================
frame                      stored (platform_telemetry_store)       broadcast to the org's subscribers
=========================  ======================================  =====================================
``execution.status``       run upsert, latest state wins           ``run.new`` / ``run.status``
``job.status.forward``     job upsert                              ``job.new`` / ``job.status``
``step.status.forward``    step upsert                             ``step.status``
``state.replay``           every run and job of the snapshot       as the single messages above
``log.chunk``              lines, once per messageId, capped       ``log.lines`` to the step's watchers
``run.event``/``job.context``  not stored                          forwarded as they are
others (``execution.event``, metrics, ...)  ignored               --
=========================  ======================================  =====================================

Only what the store actually changed is broadcast: a late or repeated frame reaches no browser.

Live fan-out never slows ingestion down. Each subscriber owns a bounded `Subscription` queue that
`Broadcaster.publish_*` fills without waiting; what does not fit is dropped and the subscriber is told
how much in order, by a `Dropped` entry (the browser gateway turns it into ``log.gap``). A slow
browser therefore loses live lines (the REST log API still has them), never the Platform's
throughput. A frame the store refuses (database down, malformed data) is logged and dropped: one bad
telemetry frame must not close the orchestrator connection that also carries webhook relays, and the
sender's next ``state.replay`` restores run and job state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, Generic, Protocol, TypeVar

import attrs
import structlog
import trio

from kici.adapters.postgres.platform_telemetry_store import LogAppend, ReplayOutcome, StatusChange
from kici.domain.protocol import (
    BrowserJobStatus,
    BrowserStepStatus,
    ExecutionStatus,
    JobContext,
    JobNew,
    JobSnapshot,
    JobState,
    JobStatusForward,
    LogChunk,
    Message,
    RunEvent,
    RunNew,
    RunSnapshot,
    RunStatus,
    StateReplay,
    StepStatusForward,
    camel,
)

_log = structlog.get_logger(__name__)

DEFAULT_LOG_QUEUE_LINES: Final = 5000
DEFAULT_STATUS_QUEUE_MESSAGES: Final = 1000

T = TypeVar("T")


# --- bounded subscriber queues -------------------------------------------------------------------


@attrs.frozen
class Dropped:
    """Entries a subscriber lost because its queue was full (lines for logs, messages for status)."""

    count: int


class Subscription(Generic[T]):
    """One subscriber's queue: `offer` never waits; overflow becomes an in-order `Dropped` entry.

    ``capacity`` is in cost units (``cost(item)``: lines of a log batch, 1 per status message); an item
    is queued whole or dropped whole. Consecutive drops merge into one `Dropped`.
    """

    def __init__(self, capacity: int, cost: Callable[[T], int]) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._cost = cost
        self._items: deque[T | Dropped] = deque()
        self._used = 0
        self._dropped_total = 0
        self._closed = False
        self._wake = trio.Event()

    @property
    def dropped_total(self) -> int:
        return self._dropped_total

    @property
    def closed(self) -> bool:
        return self._closed

    def offer(self, item: T) -> bool:
        """Queue ``item`` if it fits (True); else count it as dropped (False)."""
        if self._closed:
            return False
        cost = self._cost(item)
        fits = self._used + cost <= self._capacity
        if fits:
            self._items.append(item)
            self._used += cost
        else:
            self._dropped_total += cost
            last = self._items[-1] if self._items else None
            if isinstance(last, Dropped):
                self._items[-1] = Dropped(last.count + cost)
            else:
                self._items.append(Dropped(cost))
        self._wake.set()
        return fits

    async def get(self) -> list[T | Dropped]:
        """Everything queued so far, in order (waits while empty); `trio.EndOfChannel` once closed."""
        while not self._items:
            if self._closed:
                raise trio.EndOfChannel
            self._wake = trio.Event()
            await self._wake.wait()
        batch = list(self._items)
        self._items.clear()
        self._used = 0
        return batch

    def close(self) -> None:
        self._closed = True
        self._wake.set()


@attrs.frozen
class LogEvent:
    """Lines just stored for one step; ``line_count`` is the step's stored total after them."""

    run_id: str
    job_id: str
    step_index: int
    lines: tuple[str, ...]
    line_count: int

    @property
    def first_line(self) -> int:
        return self.line_count - len(self.lines)


LogTopic = tuple[str, str, str, int]


def _lines_cost(event: LogEvent) -> int:
    return len(event.lines)


def _one(_message: Message) -> int:
    return 1


class Broadcaster:
    """In-process fan-out of live log lines (per step) and status changes (per org)."""

    def __init__(
        self,
        *,
        log_queue_lines: int = DEFAULT_LOG_QUEUE_LINES,
        status_queue_messages: int = DEFAULT_STATUS_QUEUE_MESSAGES,
    ) -> None:
        self._log_queue_lines = log_queue_lines
        self._status_queue_messages = status_queue_messages
        self._logs: dict[LogTopic, set[Subscription[LogEvent]]] = {}
        self._status: dict[str, set[Subscription[Message]]] = {}

    @contextmanager
    def log_subscription(
        self, org_id: str, run_id: str, job_id: str, step_index: int
    ) -> Iterator[Subscription[LogEvent]]:
        topic = (org_id, run_id, job_id, step_index)
        sub: Subscription[LogEvent] = Subscription(self._log_queue_lines, _lines_cost)
        with self._registered(self._logs, topic, sub):
            yield sub

    @contextmanager
    def status_subscription(self, org_id: str) -> Iterator[Subscription[Message]]:
        sub: Subscription[Message] = Subscription(self._status_queue_messages, _one)
        with self._registered(self._status, org_id, sub):
            yield sub

    def publish_log(self, org_id: str, event: LogEvent) -> None:
        for sub in tuple(self._logs.get((org_id, event.run_id, event.job_id, event.step_index), ())):
            sub.offer(event)

    def publish_status(self, org_id: str, message: Message) -> None:
        for sub in tuple(self._status.get(org_id, ())):
            sub.offer(message)

    def subscriber_count(self) -> int:
        return sum(map(len, self._logs.values())) + sum(map(len, self._status.values()))

    @staticmethod
    @contextmanager
    def _registered(
        table: dict[Any, set[Subscription[Any]]], topic: Any, sub: Subscription[Any]
    ) -> Iterator[None]:
        table.setdefault(topic, set()).add(sub)
        try:
            yield
        finally:
            sub.close()
            subs = table.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del table[topic]


# --- the sink ------------------------------------------------------------------------------------


class TelemetryWriter(Protocol):
    """The write side of the telemetry store (``PgPlatformTelemetryStore``)."""

    async def apply_execution_status(
        self, org_id: str, connection_id: str, message: ExecutionStatus
    ) -> StatusChange: ...

    async def apply_job_status(
        self, org_id: str, connection_id: str, message: JobStatusForward
    ) -> StatusChange: ...

    async def apply_step_status(
        self, org_id: str, connection_id: str, message: StepStatusForward
    ) -> StatusChange: ...

    async def apply_state_replay(
        self, org_id: str, connection_id: str, message: StateReplay
    ) -> ReplayOutcome: ...

    async def append_log_chunk(self, org_id: str, connection_id: str, message: LogChunk) -> LogAppend: ...


def _present(**fields: Any) -> dict[str, Any]:
    """The non-None fields as wire keys, for the passthrough ``extra`` of browser messages."""
    return {camel(name): value for name, value in fields.items() if value is not None}


def run_message(org_id: str, run: ExecutionStatus | RunSnapshot, change: StatusChange) -> Message | None:
    if change.created:
        return RunNew(
            run_id=run.run_id,
            status=run.status,
            workflow_name=run.workflow_name,
            job_count=run.job_count or 0,
            started_at=run.started_at,
            org_id=org_id,
            extra=_present(
                repo_identifier=run.repo_identifier,
                sha=run.sha,
                ref=run.ref,
                trigger_event=run.trigger_event,
                commit_message=run.commit_message,
                triggered_by=run.triggered_by,
                completed_at=run.completed_at,
                duration_ms=run.duration_ms,
            ),
        )
    if change.changed:
        return RunStatus(
            run_id=run.run_id, status=run.status, completed_at=run.completed_at, duration_ms=run.duration_ms
        )
    return None


def job_message(run_id: str, job: JobStatusForward | JobSnapshot, change: StatusChange) -> Message | None:
    if not change.changed:
        return None
    try:
        status = JobState(job.status)
    except ValueError:
        return None
    extra = _present(
        started_at=job.started_at,
        completed_at=job.completed_at,
        duration_ms=job.duration_ms,
        error_message=job.error_message,
        agent_id=job.agent_id,
    )
    cls = JobNew if change.created else BrowserJobStatus
    return cls(run_id=run_id, job_id=job.job_id, job_name=job.job_name, status=status, extra=extra)


def step_message(step: StepStatusForward, change: StatusChange) -> Message | None:
    if not change.changed:
        return None
    return BrowserStepStatus(
        run_id=step.run_id,
        job_id=step.job_id,
        step_index=step.step_index,
        extra=_present(
            job_name=step.job_name, step_name=step.step_name, state=step.state.value, timestamp=step.timestamp
        ),
    )


class PlatformTelemetry:
    """The ``TelemetrySink`` of the Platform (see the module docstring)."""

    def __init__(self, store: TelemetryWriter, broadcaster: Broadcaster) -> None:
        self._store = store
        self.broadcaster = broadcaster
        self.refused_frames = 0

    async def record(self, org_id: str, connection_id: str, message: Message) -> None:
        try:
            await self._record(org_id, connection_id, message)
        except Exception:
            self.refused_frames += 1
            _log.exception(
                "telemetry frame not stored",
                org_id=org_id,
                connection_id=connection_id,
                type=message.wire_type(),
            )

    async def _record(self, org_id: str, connection_id: str, message: Message) -> None:
        if isinstance(message, ExecutionStatus):
            change = await self._store.apply_execution_status(org_id, connection_id, message)
            self._send(org_id, run_message(org_id, message, change))
        elif isinstance(message, JobStatusForward):
            change = await self._store.apply_job_status(org_id, connection_id, message)
            self._send(org_id, job_message(message.run_id, message, change))
        elif isinstance(message, StepStatusForward):
            change = await self._store.apply_step_status(org_id, connection_id, message)
            self._send(org_id, step_message(message, change))
        elif isinstance(message, StateReplay):
            outcome = await self._store.apply_state_replay(org_id, connection_id, message)
            for run, change in outcome.runs:
                self._send(org_id, run_message(org_id, run, change))
            for run, job, change in outcome.jobs:
                self._send(org_id, job_message(run.run_id, job, change))
        elif isinstance(message, LogChunk):
            appended = await self._store.append_log_chunk(org_id, connection_id, message)
            if not appended.duplicate and appended.lines:
                event = LogEvent(
                    run_id=message.run_id,
                    job_id=message.job_id,
                    step_index=appended.step_index,
                    lines=appended.lines,
                    line_count=appended.line_count,
                )
                self.broadcaster.publish_log(org_id, event)
        elif isinstance(message, RunEvent | JobContext):
            self.broadcaster.publish_status(org_id, message)

    def _send(self, org_id: str, message: Message | None) -> None:
        if message is not None:
            self.broadcaster.publish_status(org_id, message)


__all__ = [
    "DEFAULT_LOG_QUEUE_LINES",
    "DEFAULT_STATUS_QUEUE_MESSAGES",
    "Broadcaster",
    "Dropped",
    "LogEvent",
    "PlatformTelemetry",
    "Subscription",
    "TelemetryWriter",
    "job_message",
    "run_message",
    "step_message",
]
