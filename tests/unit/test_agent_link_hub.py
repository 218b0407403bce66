"""The agent's link against the real orchestrator side: ``AgentHub`` with its dispatcher and tracker over
a real PostgreSQL, on loopback (PRO-08, PRO-09, PRO-10, PRO-14, PRO-16, EXE-27, EXE-36).

A `FakeJobs` plays the jobs, so what is proven is the link: registration with automatic labels, a
dispatch routed by label and acknowledged, a job finished while the orchestrator could not be reached
and reclaimed after the reconnect with its logs (gap marker first) and terminal status, and a refusal
by the hub's label gate that stops the agent for good.
"""

from __future__ import annotations

import urllib.parse

import attrs
import pytest
import trio

from kici.domain.execution.states import JobStatus, RunStatus
from kici.domain.protocol import CloseCode, JobState, StepState
from kici.services.agent.identity import AgentIdentity, register_labels
from kici.services.agent.link import LinkState
from kici.testing.tcp_proxy import open_tcp_proxy
from tests.contract.test_orch_engine_hub import Engine, engine, job
from tests.unit.test_agent_link import FACTS, FAST, WAIT_S, running_link, wait_state, ws

pytestmark = pytest.mark.pg
__all__ = ["engine"]

IDENTITY = AgentIdentity(agent_id="a1", labels=register_labels(["linux"], FACTS), facts=FACTS)


async def wait_agent(engine: Engine, agent_id: str) -> None:
    with trio.fail_after(WAIT_S):
        # Routable means registered: the hub stores the agent and queues register.ack first.
        while not _routable(engine, agent_id):  # noqa: ASYNC110 - no event to wait on
            await trio.sleep(0.01)


def _routable(engine: Engine, agent_id: str) -> bool:
    agent = engine.services.hub.registry.get(agent_id)
    return agent is not None and agent.routable


@pytest.mark.feature("PRO-08", "PRO-09", "PRO-10", "EXE-36", "OPS-04")
async def test_the_link_registers_with_the_hub_and_runs_a_dispatched_job(engine: Engine) -> None:
    token = await engine.token()
    settings = attrs.evolve(FAST, token=token)
    async with running_link(ws(engine.url), settings=settings, identity=IDENTITY) as running:
        await wait_agent(engine, "a1")
        record = await engine.stores.agents.get_agent("a1")
        assert record is not None
        assert {"linux", "kici:os:linux", "kici:arch:x64", "kici:host:build-1"} <= set(record.labels)
        assert (record.platform, record.arch, record.hostname) == ("linux", "x64", "Build-1")
        created = await engine.create_run([job("build")])
        dispatch = await running.jobs.wait_for_offer()
        assert dispatch.job_id == str(created.job_ids["build"])
        await engine.wait_job(created.job_ids["build"], JobStatus.RUNNING)
        running.jobs.step(dispatch, 0, "compile", StepState.RUNNING)
        running.jobs.log(dispatch, 0, ["compiling"])
        running.jobs.step(dispatch, 0, "compile", StepState.SUCCESS, {"durationMs": 3})
        running.jobs.finish(dispatch, JobState.SUCCESS)
        assert await engine.wait_run(created.run_id, RunStatus.SUCCESS) is RunStatus.SUCCESS
    page = await engine.stores.logs.read_log_chunks(created.job_ids["build"])
    assert [line for chunk in page.chunks for line in chunk.lines] == ["compiling"]


@pytest.mark.feature("PRO-14", "PRO-16", "EXE-27", "PRO-09")
async def test_a_job_finished_during_an_outage_is_reclaimed_and_completed(engine: Engine) -> None:
    token = await engine.token()
    settings = attrs.evolve(FAST, token=token)
    port = urllib.parse.urlsplit(engine.url).port
    assert port is not None
    async with open_tcp_proxy("127.0.0.1", port) as proxy:
        url = engine.url.replace(f":{port}/", f":{proxy.port}/")
        async with running_link(ws(url), settings=settings, identity=IDENTITY) as running:
            created = await engine.create_run([job("build")])
            job_id = created.job_ids["build"]
            dispatch = await running.jobs.wait_for_offer()
            await engine.wait_job(job_id, JobStatus.RUNNING)
            running.jobs.step(dispatch, 0, "compile", StepState.RUNNING)
            running.jobs.log(dispatch, 0, ["before the outage"])
            assert await running.link.flush(WAIT_S)
            proxy.refusing = True
            proxy.reset()
            await wait_state(running.link, LinkState.DISCONNECTED)
            await engine.wait_job(job_id, JobStatus.RECOVERING)
            running.jobs.log(dispatch, 0, ["during the outage"])
            running.jobs.step(dispatch, 0, "compile", StepState.SUCCESS, {"durationMs": 9})
            running.jobs.finish(dispatch, JobState.SUCCESS)
            proxy.refusing = False
            assert await engine.wait_run(created.run_id, RunStatus.SUCCESS) is RunStatus.SUCCESS
            assert running.link.registrations == 2
    page = await engine.stores.logs.read_log_chunks(job_id)
    lines = [line for chunk in page.chunks for line in chunk.lines]
    assert lines[0] == "before the outage"
    assert lines[1].startswith("--- Orchestrator offline for ")
    assert "Replaying 3 buffered events and 0 buffered log lines." in lines[1]
    assert lines[2:] == ["during the outage"]
    assert not running.jobs.cancels


@pytest.mark.feature("PRO-08", "PRO-03")
async def test_labels_outside_the_token_scope_stop_the_agent_for_good(engine: Engine) -> None:
    token = await engine.token(["linux"])
    settings = attrs.evolve(FAST, token=token)
    async with running_link(ws(engine.url), settings=settings, identity=IDENTITY) as running:
        outcome = await running.wait_exit()
    assert outcome.refused
    assert outcome.code == CloseCode.AGENT_AUTH_FAILED
    assert "kici:role:builder" in outcome.reason
    assert running.link.supervisor.delays_ms == []


@pytest.mark.feature("PRO-08")
async def test_a_scoped_token_accepts_the_self_reported_labels(engine: Engine) -> None:
    token = await engine.token(["linux"])
    identity = attrs.evolve(IDENTITY, labels=register_labels(["linux"], FACTS, roles=[]))
    settings = attrs.evolve(FAST, token=token)
    async with running_link(ws(engine.url), settings=settings, identity=identity) as running:
        await wait_agent(engine, "a1")
        await wait_state(running.link, LinkState.REGISTERED)
        assert running.exit is None
