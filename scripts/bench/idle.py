"""``idle``: the orchestrator's memory per idle agent connection (issue 7, target < 200 KiB each).

Starts a real ``kici-orchestrator`` (embedded PostgreSQL, no sources), creates ONE static agent
token and opens ``--agents`` connections of the protocol-level fake agent, all in this one trio
process, each authenticating with that token under its own agent id (the hub allows it: a static
token may register any number of distinct agent ids; only one id held by two tokens is refused).
Each agent heartbeats every 30 s like a real idle agent; none gets work.

RSS is the orchestrator process's ``VmRSS`` (its PostgreSQL runs in processes of its own and is not
counted): once before the agents connect and once after they all registered and things settled.
One agent connects and leaves before the first reading, so the one-time cost of the first
connection's code paths (imports, caches, the first pool checkout) is not charged to the others.

Prints ``{"bench":"idle","agents":N,"rss_before_kib":..,"rss_after_kib":..,"kib_per_connection":..,
"connect_s":..,...}``; ``connect_s`` is the wall time for all N to connect, authenticate and register
with ``--concurrency`` handshakes in flight.
"""

from __future__ import annotations

import argparse
import re
import time

import httpx
import trio
from _common import (
    ADMIN_TOKEN,
    Orchestrator,
    bench_workdir,
    emit,
    machine,
    progress,
    raise_fd_limit,
    rss_kib,
    running_orchestrator,
)

from kici.testing.fake_agent import open_fake_agent

HEARTBEAT_S = 30.0
SETTLE_S = 2.0
FDS_PER_AGENT = 2


async def agents_active(orch: Orchestrator) -> int:
    """What the orchestrator itself counts as connected (``kici_orch_agents_active``)."""
    async with httpx.AsyncClient(base_url=orch.url, timeout=30) as client:
        text = (await client.get("/metrics", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})).text
    found = re.search(r"^kici_orch_agents_active (\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else -1


async def hold_idle_agents(orch: Orchestrator, agents: int, concurrency: int) -> dict[str, float | int]:
    token = await trio.to_thread.run_sync(orch.create_agent_token)
    async with open_fake_agent(orch.ws_url, agent_id="bench-idle-warmup", token=token, labels=["linux"]):
        pass
    await trio.sleep(SETTLE_S)
    before = rss_kib(orch.pid)
    progress(f"orchestrator RSS before: {before} KiB; connecting {agents} agents")

    handshakes = trio.Semaphore(concurrency)
    release = trio.Event()
    all_up = trio.Event()
    up = 0

    async def hold(index: int) -> None:
        nonlocal up
        await handshakes.acquire()
        acquired = True
        try:
            async with open_fake_agent(
                orch.ws_url,
                agent_id=f"bench-idle-{index:05d}",
                token=token,
                labels=["linux"],
                heartbeat_interval=HEARTBEAT_S,
            ):
                handshakes.release()
                acquired = False
                up += 1
                if up == agents:
                    all_up.set()
                await release.wait()
        finally:
            if acquired:
                handshakes.release()

    async with trio.open_nursery() as nursery:
        started = time.perf_counter()
        for index in range(agents):
            nursery.start_soon(hold, index)
        await all_up.wait()
        connect_s = time.perf_counter() - started
        progress(f"{agents} agents registered in {connect_s:.2f}s; settling")
        await trio.sleep(SETTLE_S)
        after = rss_kib(orch.pid)
        active = await agents_active(orch)
        progress(f"orchestrator RSS after: {after} KiB; agents active: {active}")
        release.set()
    return {
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": round((after - before) / agents, 1),
        "connect_s": round(connect_s, 3),
        "agents_active": active,
    }


def measure_idle(agents: int = 1000, concurrency: int = 50) -> dict[str, object]:
    raise_fd_limit(FDS_PER_AGENT * agents + 1024)
    with bench_workdir("idle") as workdir, running_orchestrator(workdir) as orch:
        progress(f"orchestrator pid {orch.pid} at {orch.url}")
        figures = trio.run(hold_idle_agents, orch, agents, concurrency)
    return {"bench": "idle", "agents": agents, **figures, "machine": machine()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=1000, help="idle agent connections to open")
    parser.add_argument("--concurrency", type=int, default=50, help="handshakes in flight while connecting")
    args = parser.parse_args()
    if args.agents < 1 or args.concurrency < 1:
        parser.error("--agents and --concurrency must be positive")
    emit(measure_idle(args.agents, args.concurrency))


if __name__ == "__main__":
    main()
