"""The orchestrator's clock port and its two implementations.

Stores take ``now`` as an aware datetime and timers sleep on trio's clock, so a
clock hands out both. :class:`SystemClock` is production: wall time from the
system, elapsed time from trio. :class:`TrioClock` derives wall time from trio's
clock too, so under ``trio.testing.MockClock`` every deadline (ack, recovery,
stale, queue) moves with the mocked time and a test never waits for real.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

import trio


class Clock(Protocol):
    def now(self) -> datetime:
        """The current wall time, timezone-aware (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on trio's clock: what ``trio.sleep_until`` compares against."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return trio.current_time()


class TrioClock:
    """Wall time = ``start`` + seconds elapsed on trio's clock since the first reading inside trio."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError(f"start must be timezone-aware, got {start!r}")
        self._start = start
        self._origin: float | None = None

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self.monotonic() - self._origin_time())

    def monotonic(self) -> float:
        return trio.current_time()

    def _origin_time(self) -> float:
        if self._origin is None:
            self._origin = trio.current_time()
        return self._origin
