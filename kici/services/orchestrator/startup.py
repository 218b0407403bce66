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
4. every open run is settled (stuck jobs failed, the run completed if all its jobs are terminal): a node
   that died between a run's last terminal job write and the run's completion left it open, and no job
   event will visit it again. Its workflow deadline (EXE-26) is re-armed first, so a run that stays open
   is still bounded and one that completes here disarms it at once;
5. a dispatch pass enqueues every ready job and fills the agents that are already back.
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
    open_runs = await execution.list_open_runs()
    for run in open_runs:
        await tracker.watch_run(run.run_id)
        await tracker.settle(run.run_id, None)
    _log.info(
        "startup sweep done",
        in_flight=len(rows),
        recovering=len(tracker.book.recovering()),
        runs_recomputed=len(outcomes),
        open_runs=len(open_runs),
    )
    dispatcher.wake()
