"""The orchestrator's deadline heap and clocks, under trio's MockClock (PRO-10, PRO-16, EXE-24)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing

from kici.adapters.clock import SystemClock, TrioClock
from kici.services.orchestrator.timers import DeadlineScheduler

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def recorder(log: list[tuple[str, float]], name: str) -> Callable[[], Awaitable[None]]:
    async def handler() -> None:
        log.append((name, trio.current_time()))

    return handler


@pytest.mark.feature("PRO-10", "PRO-16")
async def test_deadlines_fire_in_time_order_and_rearming_moves_them(
    mock_clock: trio.testing.MockClock,
) -> None:
    clock = TrioClock(START)
    scheduler = DeadlineScheduler(clock)
    fired: list[tuple[str, float]] = []
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        scheduler.arm_at(("ack", "b"), clock.now() + timedelta(seconds=10), recorder(fired, "b"))
        scheduler.arm_at(("ack", "a"), clock.now() + timedelta(seconds=5), recorder(fired, "a"))
        scheduler.arm_in(("recovery", "c"), 1, recorder(fired, "c"))
        scheduler.arm_in(("recovery", "c"), 20, recorder(fired, "c2"))
        scheduler.arm_in(("ack", "gone"), 2, recorder(fired, "gone"))
        assert scheduler.cancel(("ack", "gone"))
        assert not scheduler.cancel(("ack", "never"))
        assert len(scheduler) == 3
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert [(name, round(at - t0)) for name, at in fired] == [("a", 5), ("b", 10), ("c2", 20)]
    assert len(scheduler) == 0


@pytest.mark.feature("PRO-16")
async def test_a_past_deadline_fires_at_once_and_a_failing_handler_does_not_stop_the_rest(
    mock_clock: trio.testing.MockClock,
) -> None:
    clock = TrioClock(START)
    scheduler = DeadlineScheduler(clock)
    fired: list[tuple[str, float]] = []

    async def broken() -> None:
        raise RuntimeError("boom")

    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        t0 = trio.current_time()
        scheduler.arm_at(("x", "past"), clock.now() - timedelta(hours=1), broken)
        scheduler.arm_in(("x", "next"), 1, recorder(fired, "next"))
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert [(name, round(at - t0)) for name, at in fired] == [("next", 1)]


@pytest.mark.feature("EXE-24")
async def test_periodic_handlers_rearm_themselves(mock_clock: trio.testing.MockClock) -> None:
    scheduler = DeadlineScheduler(TrioClock(START))
    fired: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        t0 = trio.current_time()
        scheduler.every(("sweep", "periodic"), 2, recorder(fired, "sweep"))
        await trio.sleep(7)
        assert scheduler.armed(("sweep", "periodic"))
        nursery.cancel_scope.cancel()
    assert [round(at - t0) for _, at in fired] == [2, 4, 6]
    with pytest.raises(ValueError, match="interval"):
        scheduler.every(("sweep", "bad"), 0, recorder(fired, "x"))


@pytest.mark.feature("PRO-16")
async def test_the_trio_clock_follows_mocked_time(mock_clock: trio.testing.MockClock) -> None:
    clock = TrioClock(START)
    assert clock.now() == START
    await trio.sleep(90)
    assert clock.now() == START + timedelta(seconds=90)
    assert clock.monotonic() == trio.current_time()
    with pytest.raises(ValueError, match="aware"):
        TrioClock(datetime(2026, 1, 1))


@pytest.mark.feature("PRO-16")
async def test_the_system_clock_is_aware_utc() -> None:
    clock = SystemClock()
    assert clock.now().tzinfo is UTC
    before = trio.current_time()
    assert before <= clock.monotonic() <= trio.current_time()
