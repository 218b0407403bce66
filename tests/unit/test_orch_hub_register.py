"""The order of a registration in the agent hub (PRO-09, 20 §5.2 and §13): the agent is in the registry
while its ``inFlightJobs`` are reconciled, but it is routed work only once its ``register.ack`` is
queued, so the ack is the first frame it reads.

The hub runs over the in-memory pair with fakes for the agent store, the tracker (whose
reconciliation the test holds open) and a dispatcher that sends a ``job.dispatch`` to every routable
agent whenever it is asked to.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from kici.adapters.clock import SystemClock
from kici.adapters.ws.memory import memory_pair
from kici.domain.config.schema import AgentAuth
from kici.domain.protocol import (
    AgentRegister,
    Direction,
    InFlightJob,
    JobCancel,
    JobDispatch,
    RegisterAck,
    decode,
    encode,
)
from kici.domain.store import AgentRecord
from kici.services.orchestrator.agent_hub import AgentHub, AgentRegistry, ConnectedAgent, HubSettings

pytestmark = pytest.mark.feature("PRO-09")


@attrs.define
class FakeAgents:
    rows: list[AgentRecord] = attrs.field(factory=list)

    async def upsert_agent(self, record: AgentRecord) -> None:
        self.rows.append(record)

    async def set_agent_status(self, agent_id: str, status: Any, now: Any) -> None:
        return None


@attrs.define
class EmptyBook:
    def recovering(self) -> list[Any]:
        return []


@attrs.define
class HeldTracker:
    """Reconciliation waits for ``release``; meanwhile ``reconciling`` is set."""

    book: EmptyBook = attrs.field(factory=EmptyBook)
    reconciling: trio.Event = attrs.field(factory=trio.Event)
    release: trio.Event = attrs.field(factory=trio.Event)
    generations: int = 0

    def connect(self, agent_id: str) -> int:
        self.generations += 1
        return self.generations

    async def reconcile(
        self, agent: ConnectedAgent, in_flight: Iterable[InFlightJob]
    ) -> tuple[JobCancel, ...]:
        self.reconciling.set()
        await self.release.wait()
        return ()

    async def agent_disconnected(self, agent: ConnectedAgent) -> None:
        return None


@attrs.define
class EagerDispatcher:
    """Sends one dispatch to every routable agent each time :meth:`dispatch_now` runs."""

    registry: AgentRegistry
    woken: int = 0

    def wake(self) -> None:
        self.woken += 1

    def dispatch_now(self) -> list[str]:
        sent = []
        for slot in self.registry.routable_slots():
            agent = self.registry.get(slot.agent_id)
            assert agent is not None
            agent.session.try_send(_dispatch())
            sent.append(slot.agent_id)
        return sent

    async def agent_gone(self, agent: ConnectedAgent) -> None:
        return None


def _dispatch() -> JobDispatch:
    return JobDispatch(
        message_id=str(uuid.uuid4()),
        run_id=str(uuid.uuid4()),
        job_id=str(uuid.uuid4()),
        repo_url="file:///repos/app.git",
        ref="refs/heads/main",
        sha="0" * 40,
        lock_file_url="",
        job_config={},
        timestamp=0,
    )


async def test_an_agent_is_routed_work_only_after_its_register_ack() -> None:
    registry = AgentRegistry()
    tracker = HeldTracker()
    dispatcher = EagerDispatcher(registry)
    hub = AgentHub(
        agents=FakeAgents(),  # type: ignore[arg-type]
        registry=registry,
        tracker=tracker,  # type: ignore[arg-type]
        dispatcher=dispatcher,  # type: ignore[arg-type]
        clock=SystemClock(),
        settings=HubSettings(agent_auth=AgentAuth.NONE),
    )
    hub.open()
    agent_end, hub_end = memory_pair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.serve, hub_end, "memory")
            await agent_end.send(encode(AgentRegister(message_id="m1", agent_id="a1", labels=["linux"])))
            await tracker.reconciling.wait()
            assert registry.get("a1") is not None
            assert registry.routable_slots() == ()
            assert dispatcher.dispatch_now() == []
            tracker.release.set()
            first = decode(Direction.ORCH_TO_AGENT, await agent_end.receive())
            await trio.testing.wait_all_tasks_blocked()
            assert [slot.agent_id for slot in registry.routable_slots()] == ["a1"]
            assert dispatcher.dispatch_now() == ["a1"]
            second = decode(Direction.ORCH_TO_AGENT, await agent_end.receive())
            nursery.cancel_scope.cancel()
    assert isinstance(first, RegisterAck)
    assert isinstance(second, JobDispatch)
    assert dispatcher.woken == 1


async def test_a_re_register_on_the_live_connection_keeps_the_agent_routable() -> None:
    registry = AgentRegistry()
    tracker = HeldTracker()
    tracker.release.set()
    dispatcher = EagerDispatcher(registry)
    hub = AgentHub(
        agents=FakeAgents(),  # type: ignore[arg-type]
        registry=registry,
        tracker=tracker,  # type: ignore[arg-type]
        dispatcher=dispatcher,  # type: ignore[arg-type]
        clock=SystemClock(),
        settings=HubSettings(agent_auth=AgentAuth.NONE),
    )
    hub.open()
    agent_end, hub_end = memory_pair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.serve, hub_end, "memory")
            register = AgentRegister(message_id="m1", agent_id="a1", labels=["linux"])
            await agent_end.send(encode(register))
            assert isinstance(decode(Direction.ORCH_TO_AGENT, await agent_end.receive()), RegisterAck)
            tracker.release = trio.Event()
            tracker.reconciling = trio.Event()
            await agent_end.send(encode(attrs.evolve(register, message_id="m2", max_concurrency=2)))
            await tracker.reconciling.wait()
            assert [slot.agent_id for slot in registry.routable_slots()] == ["a1"]
            tracker.release.set()
            assert isinstance(decode(Direction.ORCH_TO_AGENT, await agent_end.receive()), RegisterAck)
            nursery.cancel_scope.cancel()
    agent = registry.get("a1")
    assert agent is not None
    assert (agent.routable, agent.max_concurrency) == (True, 2)
