"""How the agent notices a dead orchestrator (PRO-15) and keeps a status that fell into it (PRO-14, PRO-16).

The orchestrator sends nothing periodic to agents, so the link probes with WebSocket pings instead of
watching inbound silence: an idle but healthy link is never torn down (the server's pongs keep it
alive), while a black-holed one (``kici.testing.tcp_proxy`` swallowing every byte, no FIN, no RST) is
closed with 4004 past the stale threshold and reconnected. A status written into the black hole was
never proven delivered, so it is replayed after the reconnect and its job listed in ``inFlightJobs``.
Thresholds are shrunk (ping every 0.1 s, unhealthy 0.3 s, stale 0.6 s); the tests assert order and
outcome, never tight timing.
"""

from __future__ import annotations

import urllib.parse

import pytest
import trio
from structlog.testing import capture_logs

from kici.adapters.ws.client import TrioWsConnection
from kici.adapters.ws.memory import MemoryWsConnection
from kici.domain.protocol import (
    AgentLog,
    AgentRegister,
    CloseCode,
    ConfigAck,
    InFlightJob,
    JobState,
    JobStatus,
    StepState,
    StepStatus,
)
from kici.services.agent.link import PONG_TIMEOUT_REASON, LinkState, SupportsPing
from kici.services.agent.main import orchestrator_connector
from kici.services.connection import ConnectionEnd
from kici.testing.tcp_proxy import open_tcp_proxy
from tests.unit.test_agent_link import FAST, dispatch, running_link, scripted, wait_state


def proxied(url: str, port: int) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, f"127.0.0.1:{port}", parts.path, "", ""))


@pytest.mark.feature("PRO-15")
async def test_an_idle_healthy_link_outlives_many_stale_thresholds() -> None:
    async with scripted() as (orch, url), running_link(orchestrator_connector(url), settings=FAST) as running:
        conn = await orch.connection(0)
        await conn.wait_for(ConfigAck)
        await trio.sleep(2.0)
        assert conn.closed is None
        assert len(orch.connections) == 1
        assert running.link.connected
        assert running.link.supervisor.delays_ms == []


@pytest.mark.feature("PRO-14", "PRO-15")
async def test_statuses_proven_delivered_by_a_pong_are_not_replayed() -> None:
    async with scripted() as (orch, url), running_link(orchestrator_connector(url), settings=FAST) as running:
        first = await orch.connection(0)
        await first.wait_for(ConfigAck)
        job = dispatch()
        await first.send(job)
        await first.wait_for(JobStatus)
        running.jobs.finish(job)
        await first.wait_for(JobStatus, lambda s: s.state is JobState.SUCCESS)
        await trio.sleep(0.5)
        await first.close(1001, "restart")
        second = await orch.connection(1)
        register = await second.wait_for(AgentRegister)
        await second.wait_for(ConfigAck)
        await trio.sleep(0.1)
    assert register.in_flight_jobs is None
    assert not second.of(JobStatus)
    assert not second.of(AgentLog)


@pytest.mark.feature("PRO-15", "PRO-14", "PRO-16", "EXE-27")
async def test_a_black_holed_orchestrator_is_noticed_and_its_lost_statuses_replayed() -> None:
    async with scripted() as (orch, url):
        port = urllib.parse.urlsplit(url).port
        assert port is not None
        async with open_tcp_proxy("127.0.0.1", port) as proxy:
            connector = orchestrator_connector(proxied(url, proxy.port), close_timeout=0.2)
            with capture_logs() as logs:
                async with running_link(connector, settings=FAST) as running:
                    first = await orch.connection(0)
                    await first.wait_for(ConfigAck)
                    job = dispatch()
                    await first.send(job)
                    await first.wait_for(JobStatus)
                    await trio.sleep(0.3)
                    proxy.blackhole = True
                    proxy.refusing = True
                    running.jobs.step(job, 0, "build", StepState.SUCCESS)
                    running.jobs.finish(job, JobState.SUCCESS)
                    await wait_state(running.link, LinkState.DISCONNECTED)
                    assert running.link.supervisor.last_attempt == ConnectionEnd(
                        CloseCode.HEARTBEAT_TIMEOUT, PONG_TIMEOUT_REASON, by_peer=False
                    )
                    assert not [s for s in first.of(JobStatus) if s.state is JobState.SUCCESS]
                    proxy.blackhole = False
                    proxy.refusing = False
                    second = await orch.connection(1)
                    register = await second.wait_for(AgentRegister)
                    final = await second.wait_for(JobStatus, lambda s: s.state is JobState.SUCCESS)
                    step = await second.wait_for(StepStatus)
    assert register.in_flight_jobs == [InFlightJob(job_id=job.job_id, run_id=job.run_id)]
    assert final.job_id == job.job_id
    assert (step.step_index, step.state) == (0, StepState.SUCCESS)
    states = [entry["liveness"] for entry in logs if entry["event"] == "orchestrator link liveness"]
    assert states[:2] == ["unhealthy", "stale"]


@pytest.mark.feature("PRO-15", "PRO-33")
async def test_the_daemon_transport_and_the_memory_pair_can_ping() -> None:
    assert issubclass(TrioWsConnection, SupportsPing)
    assert issubclass(MemoryWsConnection, SupportsPing)
    async with scripted() as (_orch, url), orchestrator_connector(url)() as conn:
        assert isinstance(conn, SupportsPing)
        with trio.fail_after(10):
            await conn.ping()
