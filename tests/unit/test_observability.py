"""Reconnect observability of the client supervisor (PRO-37): the structlog keyword fields of every
scheduled reconnect and of the registration that ends a series, and the same facts through the
observer hook a tier counts reconnects with."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from kici.adapters.ws.memory import MemoryListener
from kici.domain.ports import WsConnection
from kici.services.connection import ConnectionEnd
from kici.services.supervisor import ReconnectScheduled, Supervisor
from kici.testing.ws_contract import expect_closed

pytestmark = pytest.mark.feature("PRO-37", "PRO-06")


class Recorder:
    def __init__(self) -> None:
        self.scheduled: list[ReconnectScheduled] = []
        self.registrations: list[tuple[str, int]] = []

    def reconnect_scheduled(self, event: ReconnectScheduled) -> None:
        self.scheduled.append(event)

    def registered(self, link: str, attempts: int) -> None:
        self.registrations.append((link, attempts))


async def _run_closing_sessions(
    register_on: int, observer: Recorder | None, *, stop_after: int
) -> Supervisor:
    """Sessions that each close 1001 after a second; the ``register_on``-th registers first."""
    listener = MemoryListener(exact_peer_codes=True)
    sessions = 0

    async def session(conn: WsConnection) -> ConnectionEnd:
        nonlocal sessions
        sessions += 1
        if sessions == register_on:
            supervisor.registered()
        if sessions == stop_after:
            supervisor.stop()
        await trio.sleep(1)
        await conn.close(1001, "server restarting")
        return ConnectionEnd(1001, "server restarting", by_peer=True)

    async def drain_server() -> None:
        while True:
            server = await listener.accept()
            await expect_closed(server)

    supervisor = Supervisor(listener.connect, session, jitter=lambda: 0.0, name="agent", observer=observer)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_server)
        with trio.fail_after(60):
            await supervisor.run()
        nursery.cancel_scope.cancel()
    return supervisor


async def test_every_scheduled_reconnect_logs_attempt_delay_and_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with capture_logs() as logs:
        await _run_closing_sessions(register_on=4, observer=None, stop_after=5)
    scheduled = [entry for entry in logs if entry["event"] == "link reconnect scheduled"]
    assert [(e["attempt"], e["delay_ms"]) for e in scheduled] == [(1, 1000), (2, 1500), (3, 2250), (1, 1000)]
    for entry in scheduled:
        assert entry["link"] == "agent"
        assert entry["log_level"] == "info"
        assert (entry["close_code"], entry["close_reason"]) == (1001, "server restarting")
        assert entry["connect_error"] is None
    registered = [entry for entry in logs if entry["event"] == "link registered"]
    assert [(e["link"], e["attempts"]) for e in registered] == [("agent", 3)]


async def test_a_failed_connect_logs_its_error_and_no_close_code(
    autojump_clock: trio.testing.MockClock,
) -> None:
    listener = MemoryListener()
    listener.refusing = True
    recorder = Recorder()
    supervisor = Supervisor(listener.connect, _never_called, jitter=lambda: 0.0, observer=recorder)
    with capture_logs() as logs, trio.move_on_after(3):
        await supervisor.run()
    scheduled = [entry for entry in logs if entry["event"] == "link reconnect scheduled"]
    assert len(scheduled) == 3
    assert scheduled[0]["close_code"] is None
    assert scheduled[0]["close_reason"] is None
    assert scheduled[0]["connect_error"]
    assert [e.attempt for e in recorder.scheduled] == [1, 2, 3]
    assert recorder.scheduled[0].connect_error == scheduled[0]["connect_error"]


async def test_the_observer_sees_what_the_logs_say(autojump_clock: trio.testing.MockClock) -> None:
    recorder = Recorder()
    supervisor = await _run_closing_sessions(register_on=3, observer=recorder, stop_after=4)
    assert [e.attempt for e in recorder.scheduled] == [1, 2, 1]
    assert [e.delay_ms for e in recorder.scheduled] == supervisor.delays_ms
    assert {(e.close_code, e.close_reason) for e in recorder.scheduled} == {(1001, "server restarting")}
    assert recorder.registrations == [("agent", 2)]


async def test_a_first_try_registration_took_no_reconnects(autojump_clock: trio.testing.MockClock) -> None:
    recorder = Recorder()
    await _run_closing_sessions(register_on=1, observer=recorder, stop_after=1)
    assert recorder.registrations == [("agent", 0)]
    assert recorder.scheduled == []


async def _never_called(conn: WsConnection) -> ConnectionEnd:
    raise AssertionError("a refused connect runs no session")
