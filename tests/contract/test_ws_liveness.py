"""Liveness over real sockets (PRO-15): the quart/hypercorn server end of a connection whose traffic a TCP
proxy black-holes notices the silence and closes with 4004, with the intervals shrunk as 20 §21 says
(heartbeat 0.2 s, unhealthy 0.6 s, close 1.2 s). No timing is asserted, only the order of events."""

from __future__ import annotations

import pytest
import trio

from kici.domain.liveness import Liveness, LivenessThresholds
from kici.domain.protocol import Direction, Message
from kici.services.connection import ConnectionEnd, HandlerBase, Session, run_connection
from kici.testing.tcp_proxy import TcpProxy
from kici.testing.ws_contract import open_real_pair

THRESHOLDS = LivenessThresholds(unhealthy_after_ms=600, stale_after_ms=1200)


class Watcher(HandlerBase):
    def __init__(self, *, heartbeats: bool) -> None:
        self.heartbeats = heartbeats
        self.messages: list[Message] = []
        self.liveness: list[Liveness] = []
        self.heard_four = trio.Event()

    async def on_open(self, session: Session) -> None:
        if self.heartbeats:
            session.start_heartbeats()

    async def on_message(self, session: Session, message: Message) -> None:
        self.messages.append(message)
        if len(self.messages) >= 4:
            self.heard_four.set()

    def on_liveness(self, session: Session, liveness: Liveness) -> None:
        self.liveness.append(liveness)


@pytest.mark.feature("PRO-15", "PRO-33", "PRO-03")
async def test_black_holed_link_turns_unhealthy_then_closes_4004() -> None:
    proxies: list[TcpProxy] = []
    agent, orchestrator = Watcher(heartbeats=True), Watcher(heartbeats=False)
    ends: dict[str, ConnectionEnd] = {}
    orchestrator_closed = trio.Event()
    with trio.fail_after(15):
        async with open_real_pair(proxy_hook=proxies.append, close_timeout=0.3) as pair:

            async def run_agent() -> None:
                ends["agent"] = await run_connection(
                    pair.client,
                    agent,
                    direction=Direction.ORCH_TO_AGENT,
                    heartbeat_interval=0.2,
                    liveness=None,
                )

            async def run_orchestrator() -> None:
                ends["orchestrator"] = await run_connection(
                    pair.server, orchestrator, direction=Direction.AGENT_TO_ORCH, liveness=THRESHOLDS
                )
                orchestrator_closed.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_agent)
                nursery.start_soon(run_orchestrator)
                await orchestrator.heard_four.wait()
                assert orchestrator.liveness == []
                proxies[0].blackhole = True
                await orchestrator_closed.wait()
                proxies[0].reset()
    assert orchestrator.liveness == [Liveness.UNHEALTHY, Liveness.STALE]
    assert ends["orchestrator"] == ConnectionEnd(4004, "Heartbeat timeout", by_peer=False)
    assert ends["agent"].by_peer
    assert ends["agent"].code == 1006
