"""The startup sweep (PRO-17, EXE-27): rebuild the execution state of this node from the database.

It runs once at boot, before agents may register and before the first stale scan:

1. agents recorded ``connected`` by the previous process are marked ``disconnected`` (they re-register);
2. in-flight queue rows: ``dispatched`` ones go ``recovering`` for their dispatch agent with a fresh
   deadline (the agent may still be running the job and reclaim it with ``inFlightJobs``); stored
   recovery deadlines are re-armed for the remainder (past ones expire on the first sweep); only a
   recovery without a deadline fails the job (20 §19). Dispatches whose ack was pending at the crash
   take the same road: their agent lists them if it started them, and a recovery window that closes
   on a never-started job requeues it (tracker);
3. the needs gate is recomputed for every open run (jobs whose upstreams finished while the node was
   down become ready, or are skipped);
4. a dispatch pass enqueues every ready job and fills the agents that are already back.
"""

from __future__ import annotations

import structlog

from kici.adapters.clock import Clock
from kici.domain.store import AgentStatus, AgentStore, DispatchQueue, ExecutionStore
from kici.services.orchestrator.dispatcher import Dispatcher
from kici.services.orchestrator.tracker import Tracker

_log = structlog.get_logger(__name__)


async def startup_sweep(
    *,
    execution: ExecutionStore,
    queue: DispatchQueue,
    agents: AgentStore,
    tracker: Tracker,
    dispatcher: Dispatcher,
    clock: Clock,
) -> None:
    for agent in await agents.list_agents(AgentStatus.CONNECTED):
        await agents.set_agent_status(agent.agent_id, AgentStatus.DISCONNECTED, clock.now())
    rows = await queue.in_flight()
    await tracker.restore(rows)
    outcomes = await execution.recompute_needs_satisfied(clock.now())
    for outcome in outcomes:
        if outcome.changed:
            await tracker.settle(outcome.run_id, outcome)
    _log.info(
        "startup sweep done",
        in_flight=len(rows),
        recovering=len(tracker.book.recovering()),
        runs_recomputed=len(outcomes),
    )
    dispatcher.wake()
