"""``fanout``: one run with a 100-job matrix and a job that needs it, through 2 agents x 4 slots (issue 7).

One orchestrator, two bubblewrap agents with 4 slots each, the forge on loopback. The workflow has a
job ``wide`` with a 100-entry matrix (100 jobs ``wide (0)`` ... ``wide (99)``) and a job ``after``
that needs all of them; every step is an empty Python function, so what is measured is kici's own
path: the needs gate, the queue, dispatch, the agents' clone / runner / report per job, the tracker.
One warm-up run (the same workflow; it warms both agents' mirrors) is not counted.

Figures (seconds unless named ``_ms``), all from the orchestrator's own records:

* ``dispatch_to_terminal_s``: the run's first ``job dispatched`` log line -> the last job's
  ``completedAt`` (the figure of issue 7);
* ``post_to_terminal_s``: the webhook POST -> the last job's ``completedAt``;
* ``jobs_per_s``: the 101 jobs over ``dispatch_to_terminal_s``;
* ``matrix_s``: the first dispatch -> the last matrix job's ``completedAt``;
* ``needs_gate_ms``: the last matrix job's ``completedAt`` -> ``after`` dispatched (the needs gate,
  the queue and the dispatch of a dependent job).

Prints ``{"bench":"fanout","jobs":101,"dispatch_to_terminal_s":..,...}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Final

import trio
from _common import (
    Stack,
    api_client,
    background_busy_pct,
    emit,
    load_average,
    log_time,
    machine,
    parse_time,
    post_delivery,
    progress,
    running_stack,
    wait_run,
)

AGENTS: Final = 2
CONCURRENCY: Final = 4
RUN_TIMEOUT_S: Final = 600.0


def fanout_workflow(width: int) -> str:
    return f"""\
from kici.sdk import job, push, step, workflow


def noop(ctx):
    pass


wide = job("wide", runs_on="linux", matrix={{"i": list(range({width}))}}, steps=[step("noop", noop)])
after = job("after", runs_on="linux", needs=[wide], steps=[step("noop", noop)])
bench = workflow("fanout", on=push(), jobs=[wide, after])
"""


async def one_run(stack: Stack, sha: str) -> tuple[float, str, dict[str, Any]]:
    async with api_client(stack.orch) as client:
        posted = time.time()
        run_id = await post_delivery(client, stack.webhook_url, stack.push(sha))
        with trio.fail_after(RUN_TIMEOUT_S):
            shown = await wait_run(client, run_id, poll_s=0.25)
    return posted, run_id, shown


def figures_of(
    posted: float, run_id: str, shown: dict[str, Any], orch_log: list[dict[str, Any]]
) -> dict[str, Any]:
    dispatched = {
        str(entry.get("jobId")): log_time(entry)
        for entry in orch_log
        if entry.get("message") == "job dispatched" and entry.get("runId") == run_id
    }
    jobs = shown["jobs"]
    done = {job["id"]: parse_time(job.get("completedAt")) or 0.0 for job in jobs}
    matrix = [job for job in jobs if job["name"] != "after"]
    after = next(job for job in jobs if job["name"] == "after")
    first, last = min(dispatched.values()), max(done.values())
    matrix_done = max(done[job["id"]] for job in matrix)
    return {
        "jobs": len(jobs),
        "failed_jobs": sum(1 for job in jobs if job["status"] != "success"),
        "dispatch_to_terminal_s": round(last - first, 2),
        "post_to_terminal_s": round(last - posted, 2),
        "jobs_per_s": round(len(jobs) / (last - first), 2),
        "matrix_s": round(matrix_done - first, 2),
        "needs_gate_ms": round((dispatched[after["id"]] - matrix_done) * 1000, 1),
    }


def measure_fanout(width: int = 100, sandbox: str = "bwrap") -> dict[str, Any]:
    """Start the stack (2 agents x 4), one warm-up run, one measured run; the figures as a dict."""
    if width < 1:
        raise ValueError("width must be positive")
    busy_before = background_busy_pct()
    with running_stack(
        f"fanout-{sandbox}", fanout_workflow(width), agents=AGENTS, concurrency=CONCURRENCY, sandbox=sandbox
    ) as stack:
        warm_sha, sha = stack.new_commits(2)
        progress(f"warm-up run of {width + 1} jobs")
        trio.run(one_run, stack, warm_sha)
        load_before = load_average()
        progress(f"measured run of {width + 1} jobs")
        posted, run_id, shown = trio.run(one_run, stack, sha)
        load_after = load_average()
        time.sleep(0.2)
        figures = figures_of(posted, run_id, shown, stack.orch.log_lines())
    return {
        "bench": "fanout",
        "width": width,
        "agents": AGENTS,
        "concurrency": CONCURRENCY,
        "sandbox": sandbox,
        **figures,
        "background_busy_pct": busy_before,
        "load_before": load_before,
        "load_after": load_after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=100, help="matrix entries of the fanned-out job")
    parser.add_argument(
        "--sandbox", choices=("bwrap", "process"), default="bwrap", help="the agents' sandbox"
    )
    args = parser.parse_args()
    if args.width < 1:
        parser.error("--width must be positive")
    try:
        figures = measure_fanout(args.width, args.sandbox)
    except (RuntimeError, TimeoutError, trio.TooSlowError) as exc:
        progress(f"fanout failed: {exc}")
        sys.exit(1)
    emit({**figures, "machine": machine()})


if __name__ == "__main__":
    main()
