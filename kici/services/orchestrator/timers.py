"""One timer task for the whole execution brain: a deadline heap slept on with ``trio.sleep_until``.

Every deadline the orchestrator keeps (dispatch acks, recovery windows, job timeouts, workflow
deadlines, the periodic sweep) is an entry keyed by ``(kind, id)``: arming a key again moves it,
cancelling drops it, and the handler runs in the timer task, one at a time. A handler that raises is
logged and the task carries on: one failing job must not stop every other deadline.

Deadlines are given as wall-clock datetimes (they are persisted as such) and converted to trio time
when armed, through the injected clock; a past deadline fires at once.

The :class:`Sweeper` is the periodic part (spec 10 §11, 20 §13 "leader sweeps"): stale job
heartbeats and acknowledged-but-never-started dispatches, queue expiry, overdue ack and recovery
deadlines, the recently-completed ownership window, and a dispatch pass (the safety net for a pass
that failed on a database error).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

import attrs
import structlog
import trio

from kici.adapters.clock import Clock

if TYPE_CHECKING:
    from kici.services.orchestrator.dispatcher import Dispatcher
    from kici.services.orchestrator.tracker import Tracker

_log = structlog.get_logger(__name__)

TimerKey = tuple[str, str]
Handler = Callable[[], Awaitable[None]]


@attrs.frozen
class _Entry:
    seq: int
    at: float
    handler: Handler


class DeadlineScheduler:
    """Keyed one-shot deadlines (plus self-re-arming periodic ones) run by :meth:`run`."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, TimerKey]] = []
        self._entries: dict[TimerKey, _Entry] = {}
        self._seq = itertools.count()
        self._changed = trio.Event()
        self.fired: Callable[[TimerKey], None] | None = None
        """Told the key of every deadline that fires, before its handler runs (metrics)."""

    def __len__(self) -> int:
        return len(self._entries)

    def armed(self, key: TimerKey) -> bool:
        return key in self._entries

    def deadline_of(self, key: TimerKey) -> float | None:
        """The trio time ``key`` fires at, or None when it is not armed."""
        entry = self._entries.get(key)
        return None if entry is None else entry.at

    def arm_at(self, key: TimerKey, when: datetime, handler: Handler) -> None:
        """Run ``handler`` at wall time ``when`` (replacing any deadline already armed under ``key``)."""
        delay = (when - self._clock.now()).total_seconds()
        self.arm_in(key, max(0.0, delay), handler)

    def arm_in(self, key: TimerKey, seconds: float, handler: Handler) -> None:
        at = self._clock.monotonic() + max(0.0, seconds)
        entry = _Entry(next(self._seq), at, handler)
        self._entries[key] = entry
        heapq.heappush(self._heap, (at, entry.seq, key))
        self._changed.set()

    def every(self, key: TimerKey, interval_s: float, handler: Handler) -> None:
        """Run ``handler`` every ``interval_s`` seconds, the first time one interval from now."""
        if not interval_s > 0:
            raise ValueError(f"interval must be > 0, got {interval_s}")

        async def tick() -> None:
            self.arm_in(key, interval_s, tick)
            await handler()

        self.arm_in(key, interval_s, tick)

    def cancel(self, key: TimerKey) -> bool:
        return self._entries.pop(key, None) is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self._changed = trio.Event()
            due = self._pop_due()
            if due is not None:
                key, handler = due
                await self._fire(key, handler)
                continue
            if self._heap:
                with trio.move_on_at(self._heap[0][0]):
                    await self._changed.wait()
            else:
                await self._changed.wait()

    def _pop_due(self) -> tuple[TimerKey, Handler] | None:
        now = self._clock.monotonic()
        while self._heap:
            at, seq, key = self._heap[0]
            entry = self._entries.get(key)
            if entry is None or entry.seq != seq:
                heapq.heappop(self._heap)
                continue
            if at > now:
                return None
            heapq.heappop(self._heap)
            del self._entries[key]
            return key, entry.handler
        return None

    async def _fire(self, key: TimerKey, handler: Handler) -> None:
        try:
            if self.fired is not None:
                self.fired(key)
            await handler()
        except Exception:
            _log.exception("timer handler failed", timer=f"{key[0]}:{key[1]}")


class Sweeper:
    """The periodic sweep; each part is guarded by the stores, so a sweep racing a live input is safe."""

    def __init__(self, *, tracker: Tracker, dispatcher: Dispatcher) -> None:
        self._tracker = tracker
        self._dispatcher = dispatcher

    async def sweep(self) -> None:
        await self._tracker.expire_recoveries()
        await self._tracker.detect_stale()
        await self._dispatcher.expire_queue()
        await self._dispatcher.sweep_ack_deadlines()
        self._tracker.sweep_completed()
        self._dispatcher.wake()
