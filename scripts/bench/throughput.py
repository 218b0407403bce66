"""``throughput``: a burst of one-job webhooks through 2 agents x 4 slots (issue 7: >= 20 jobs/s,
>= 10x buildbot, orchestrator CPU < 20 ms per job).

One orchestrator (independent mode) with a GitHub App source, two bubblewrap agents with 4 slots
each, the forge (git server + fake GitHub API) on loopback, everything on this box. ``--burst``
pushes of distinct commits (real commits: the orchestrator reads each one's lock through the
contents API, the agents fetch each one into their warm mirrors) are POSTed 8 at a time, as
``vs-buildbot`` does for buildbot; each yields one run of one job whose step is the one of
``latency`` (``python3 -c STAMP_SCRIPT``, the buildbot-equivalent step).

Before the burst, two runs at once warm both agents' mirrors, then the box is left quiet long
enough for PostgreSQL to publish its counters (backends flush their statistics within ~10 s of
going idle).

Figures:

* ``throughput_per_s``: jobs per second from the first POST to the last job's ``completedAt``
  (the orchestrator's own record, read through the API once everything is terminal);
* ``orchestrator_cpu_ms_per_job``: the orchestrator process's user + system CPU over the burst
  (``/proc/<pid>/stat``), per job; ``orchestrator_children_cpu_ms_per_job``: processes it ran
  (none with a GitHub source; git for a universal-git one), apart because the target counts the
  process;
* ``agents_cpu_ms_per_job`` (the agent processes) and ``agents_children_cpu_ms_per_job`` (their
  sandboxes, runners, steps and git), ``forge_cpu_ms_per_job`` (git server and fake GitHub API):
  where the rest of the box went, which bounds the throughput on 2 cores; ``box_cpu_ms_per_job``
  and ``box_busy_pct``: every core's busy time over the burst (``/proc/stat``: PostgreSQL and the
  sandboxed runners included, and whatever else ran on the box);
* ``pg_transactions_per_job``: ``xact_commit + xact_rollback`` of the orchestrator's database over
  the burst, ``raw`` and ``net`` of the idle rate measured just before (heartbeats, sweeps);
* ``webhooks_accepted_s``: when the last webhook was answered (the orchestrator's intake pace).

Prints ``{"bench":"throughput","burst":N,"throughput_per_s":..,...}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Final

import httpx
import trio
from _common import (
    STAMP_WORKFLOW,
    LogTail,
    Stack,
    api_client,
    background_busy_pct,
    box_cpu_seconds,
    children_cpu_seconds,
    cpu_seconds,
    emit,
    load_average,
    machine,
    parse_time,
    pg_conninfo,
    pg_transactions,
    post_burst,
    post_delivery,
    progress,
    running_stack,
    show_run,
    wait_run,
)

AGENTS: Final = 2
CONCURRENCY: Final = 4
POST_CONCURRENCY: Final = 8
STATS_SETTLE_S: Final = 11.0
IDLE_WINDOW_S: Final = 10.0
POLL_S: Final = 0.1
API_POLL_S: Final = 0.05
TIMEOUT_PER_JOB_S: Final = 2.0


def cpu_snapshot(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of every process of the stack that is not PostgreSQL."""
    agents = [agent.pid for agent in stack.agents]
    return {
        "orchestrator": cpu_seconds(stack.orch.pid),
        "orchestrator_children": children_cpu_seconds(stack.orch.pid),
        "agents": sum(cpu_seconds(pid) for pid in agents),
        "agents_children": sum(children_cpu_seconds(pid) for pid in agents),
        "forge": cpu_seconds(stack.forge.process.pid) + children_cpu_seconds(stack.forge.process.pid),
    }


async def agents_finished(tails: list[LogTail], run_ids: set[str]) -> None:
    """Until the agents logged ``job phases`` (a job's end) for every run of the burst; read from
    their log files, so waiting costs the orchestrator nothing."""
    while run_ids:
        for tail in tails:
            for entry in tail.poll():
                if entry.get("message") == "job phases":
                    run_ids.discard(str(entry.get("runId")))
        await trio.sleep(POLL_S)


async def terminal_count(client: httpx.AsyncClient) -> int:
    response = await client.get("/api/v1/runs", params={"status": "success,failed,cancelled", "pageSize": 1})
    response.raise_for_status()
    return int(response.json()["total"])


async def warm_up(stack: Stack, client: httpx.AsyncClient) -> int:
    """Two runs at once, so each agent (least-loaded first) gets one and warms its mirror."""
    run_ids: list[str] = []
    async with trio.open_nursery() as nursery:
        for sha in stack.new_commits(AGENTS):

            async def one(sha: str = sha) -> None:
                run_ids.append(await post_delivery(client, stack.webhook_url, stack.push(sha)))

            nursery.start_soon(one)
    with trio.fail_after(120):
        for run_id in run_ids:
            await wait_run(client, run_id)
    return len(run_ids)


async def measure(stack: Stack, burst: int) -> dict[str, Any]:
    conninfo = pg_conninfo(stack.orch)
    shas = stack.new_commits(burst)
    deliveries = [stack.push(sha) for sha in shas]
    async with api_client(stack.orch) as client:
        before_runs = await warm_up(stack, client)
        progress(f"warm-up done; {STATS_SETTLE_S + IDLE_WINDOW_S:.0f}s of quiet for PostgreSQL's counters")
        await trio.sleep(STATS_SETTLE_S)
        idle_start, idle_xacts = time.time(), await trio.to_thread.run_sync(pg_transactions, conninfo)
        await trio.sleep(IDLE_WINDOW_S)
        burst_xacts_start = await trio.to_thread.run_sync(pg_transactions, conninfo)
        idle_rate = (burst_xacts_start - idle_xacts - 1) / (time.time() - idle_start)
        xacts_read_at = time.time()
        load_before = load_average()
        tails = [LogTail(agent.log_path, offset=agent.log_path.stat().st_size) for agent in stack.agents]
        cpu_before = cpu_snapshot(stack)
        box_before = box_cpu_seconds()
        run_ids: list[str] = []

        def collect(_index: int, response: httpx.Response) -> None:
            run_ids.extend(str(r) for r in response.json().get("runIds") or ())

        progress(f"burst of {burst} webhooks, {POST_CONCURRENCY} in flight")
        result = await post_burst(
            client, stack.webhook_url, deliveries, concurrency=POST_CONCURRENCY, on_answer=collect
        )
        if result.failures or len(run_ids) != burst:
            raise RuntimeError(f"{result.failures} webhooks refused; {len(run_ids)} runs for {burst} pushes")
        progress(
            f"{burst} webhooks answered in {result.last_answer - result.first_post:.2f}s; waiting for jobs"
        )
        with trio.fail_after(60 + burst * TIMEOUT_PER_JOB_S):
            await agents_finished(tails, set(run_ids))
            while await terminal_count(client) < before_runs + burst:  # noqa: ASYNC110 - polls the API
                await trio.sleep(API_POLL_S)
        cpu_after = cpu_snapshot(stack)
        box_after = box_cpu_seconds()
        load_after = load_average()
        shown = [await show_run(client, run_id) for run_id in run_ids]
        await trio.sleep(STATS_SETTLE_S)
        xacts_end = await trio.to_thread.run_sync(pg_transactions, conninfo)
        xacts_window = time.time() - xacts_read_at
    jobs = [job for run in shown for job in run["jobs"]]
    failed = sum(1 for job in jobs if job["status"] != "success")
    last = max(parse_time(job.get("completedAt")) or 0.0 for job in jobs)
    elapsed = last - result.first_post
    raw = xacts_end - burst_xacts_start - 1
    cpu = {name: (cpu_after[name] - cpu_before[name]) * 1000 / burst for name in cpu_before}
    box_busy = box_after[0] - box_before[0]
    return {
        "jobs": len(jobs),
        "failed_jobs": failed,
        "burst_s": round(elapsed, 2),
        "webhooks_accepted_s": round(result.last_answer - result.first_post, 2),
        "throughput_per_s": round(len(jobs) / elapsed, 2),
        "orchestrator_cpu_ms_per_job": round(cpu["orchestrator"], 2),
        "orchestrator_children_cpu_ms_per_job": round(cpu["orchestrator_children"], 2),
        "agents_cpu_ms_per_job": round(cpu["agents"], 2),
        "agents_children_cpu_ms_per_job": round(cpu["agents_children"], 2),
        "forge_cpu_ms_per_job": round(cpu["forge"], 2),
        "box_cpu_ms_per_job": round(box_busy * 1000 / burst, 1),
        "box_busy_pct": round(100 * box_busy / (box_after[1] - box_before[1]), 1),
        "pg_transactions_per_job": {
            "raw": round(raw / burst, 2),
            "net": round((raw - idle_rate * xacts_window) / burst, 2),
            "idle_per_s": round(idle_rate, 2),
        },
        "load_before": load_before,
        "load_after": load_after,
    }


def measure_throughput(burst: int = 200, sandbox: str = "bwrap") -> dict[str, Any]:
    """Start the stack (2 agents x 4), run the burst, stop everything; the figures as a dict."""
    if burst < 1:
        raise ValueError("burst must be positive")
    busy_before = background_busy_pct()
    with running_stack(
        f"throughput-{sandbox}", STAMP_WORKFLOW, agents=AGENTS, concurrency=CONCURRENCY, sandbox=sandbox
    ) as stack:
        figures = trio.run(measure, stack, burst)
    return {
        "bench": "throughput",
        "burst": burst,
        "agents": AGENTS,
        "concurrency": CONCURRENCY,
        "sandbox": sandbox,
        "background_busy_pct": busy_before,
        **figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--burst", type=int, default=200, help="webhooks in the burst, one job each")
    parser.add_argument(
        "--sandbox", choices=("bwrap", "process"), default="bwrap", help="the agents' sandbox"
    )
    args = parser.parse_args()
    if args.burst < 1:
        parser.error("--burst must be positive")
    try:
        figures = measure_throughput(args.burst, args.sandbox)
    except (RuntimeError, TimeoutError, trio.TooSlowError) as exc:
        progress(f"throughput failed: {exc}")
        sys.exit(1)
    emit({**figures, "machine": machine()})


if __name__ == "__main__":
    main()
