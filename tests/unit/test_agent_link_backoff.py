"""The agent link's reconnect loop and idle behaviour under MockClock over the in-memory transport:
delays from the spec's backoff table with injected jitter, reset after ``register.ack``, and an idle
registered link that heartbeats every 30 s and is never torn down (PRO-06, PRO-15)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from kici.adapters.ws.memory import MemoryListener
from kici.domain.backoff import delay_ms
from kici.domain.protocol import AgentRegister, ConfigAck, Heartbeat
from kici.services.agent.link import LinkSettings
from tests.unit.test_agent_link import TOKEN, ScriptedOrchestrator, running_link

SPEC = LinkSettings(token=TOKEN)
"""Every interval at its spec default (20 §17): heartbeat 30 s, reconnect cap 60 s."""


@asynccontextmanager
async def memory_orchestrator(listener: MemoryListener) -> AsyncIterator[ScriptedOrchestrator]:
    orch = ScriptedOrchestrator()

    async def accept() -> None:
        async with trio.open_nursery() as nursery:
            while True:
                conn = await listener.accept()
                nursery.start_soon(orch.serve, conn, "memory")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        yield orch
        nursery.cancel_scope.cancel()


@pytest.mark.feature("PRO-06")
async def test_reconnect_delays_follow_the_backoff_table_and_reset_after_register_ack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    listener = MemoryListener(exact_peer_codes=True)
    listener.refusing = True
    draws = [0.0, 0.5, 0.99, 0.25, 0.0, 0.7, 0.1, 0.0, 0.0, 0.3, 0.6, 0.9, 0.2, 0.4]
    jitter = iter(draws)
    async with (
        memory_orchestrator(listener) as orch,
        running_link(listener.connect, settings=SPEC, jitter=jitter.__next__) as running,
    ):
        delays = running.link.supervisor.delays_ms
        while len(delays) < 12:  # noqa: ASYNC110 - virtual time jumps
            await trio.sleep(1)
        listener.refusing = False
        first = await orch.connection(0, within=120)
        await first.wait_for(ConfigAck, within=120)
        assert running.link.supervisor.attempt == 0
        await first.close(1001, "orchestrator restarting")
        second = await orch.connection(1, within=120)
        await second.wait_for(AgentRegister, within=120)
    expected = [delay_ms(attempt, 60_000, r) for attempt, r in enumerate(draws[:12])]
    assert delays[:12] == expected
    assert delays[:4] == [1000.0, 1875.0, pytest.approx(3363.75), 3796.875]
    assert delays[9:12] == [pytest.approx(44_209.86328125), 60_000, 60_000]
    assert delays[12] == delay_ms(0, 60_000, 0.2) == pytest.approx(1100.0)


@pytest.mark.feature("PRO-15", "PRO-06")
async def test_an_idle_registered_link_heartbeats_and_stays_up_for_an_hour(
    autojump_clock: trio.testing.MockClock,
) -> None:
    listener = MemoryListener(exact_peer_codes=True)
    async with (
        memory_orchestrator(listener) as orch,
        running_link(listener.connect, settings=SPEC) as running,
    ):
        conn = await orch.connection(0)
        await conn.wait_for(ConfigAck)
        began = trio.current_time()
        await trio.sleep(3600)
        assert conn.closed is None
        assert len(orch.connections) == 1
        assert running.link.connected
        beats = len(conn.of(Heartbeat))
        assert trio.current_time() - began == pytest.approx(3600)
    assert 119 <= beats <= 121
    assert running.link.supervisor.delays_ms == []
