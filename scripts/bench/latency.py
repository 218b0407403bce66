"""``latency``: a signed push webhook -> the first step runs, with a warm agent (issue 7, target < 100 ms).

One orchestrator (independent mode: the webhook is POSTed to it directly; behind a Platform the
relay adds one WebSocket hop), one agent with one slot, the forge on loopback (a git smart-HTTP
server holding the repository and a fake GitHub API), and a workflow with one job of one step. The
source is a GitHub App (``--provider github``: the lock through the contents API) or universal-git
(``--provider universal-git``: the lock through a blob-less clone). Each run pushes a NEW commit
(as a real push does), so every run pays the orchestrator's lock fetch of that commit and the
agent's fetch of it into its warm mirror. One warm-up run (it creates the mirror) is not counted.

The step does what buildbot's does in ``vs-buildbot``: it runs ``python3 -c STAMP_SCRIPT`` (the
wall-clock time that command started, written to its stdout). Before that it prints the time its
own Python body was entered. So each run gives two figures, both against the moment before the POST:

* ``latency_ms``: POST -> the stamp of the ``python3`` command (the buildbot-equivalent figure);
* ``step_entry_ms``: POST -> the step function starts (what "first step starts" means in kici,
  without the extra interpreter a shell step costs).

Stage breakdown (medians, ms), from the JSON logs of the orchestrator and the agent:

* ``verify``: POST -> the pipeline starts (HTTP, routing, HMAC verification; the pipeline start is
  the ``webhook handled`` line's time minus its ``duration_ms``);
* ``pipeline``: dedup insert, lock fetch (``lock_fetch``, a sub-figure), trigger match and the run
  created (``run created``);
* ``dispatch``: ``run created`` -> ``job dispatched`` (enqueue, dequeue, building the message);
* ``to_agent``: ``job dispatched`` -> the agent's job started (``job phases``' ``received_at``);
* ``prepare``, ``clone``, ``load``, ``runner_start`` (sandbox + interpreter up to the runner's
  ``ready``): the agent's own ``job phases`` line;
* ``first_step``: the runner's ``ready`` -> the step function entered (the runner imports the SDK,
  loads the workflow module, plans the job);
* ``step_command``: the step entered -> the ``python3`` stamp;
* ``unaccounted``: the latency minus the stages above (rounding, log-line ordering).

Every process's log uses the same system clock as the benchmark, so the times line up.

Runs follow each other at once, as in buildbot's loop; ``--gap S`` waits S seconds between a run's
end and the next POST instead (the agent starts the pre-started runner of its next job when a job
ends, so with no gap the next run shares the 2 cores with that start).

``--sandbox both`` (the default) measures bubblewrap, the agent's default, then the plain-process
sandbox on a fresh stack; the difference of ``runner_start`` is what bwrap itself costs.

Prints ``{"bench":"latency","runs":N,"bwrap":{...},"process":{...},"load_before":[..],...}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
import trio
from _common import (
    ENTRY_MARK,
    PROVIDERS,
    STAMP_WORKFLOW,
    LogTail,
    Stack,
    api_client,
    background_busy_pct,
    emit,
    job_log_lines,
    latency_figures,
    load_average,
    log_time,
    machine,
    post_delivery,
    progress,
    running_stack,
    wait_run,
)

RUN_TIMEOUT_S: Final = 60.0
DEFAULT_GAP_S: Final = 0.0
POLL_S: Final = 0.005


AGENT_STAGES: Final = ("prepare", "clone", "load", "runner_start")
STAGES: Final = (
    "verify",
    "pipeline",
    "dispatch",
    "to_agent",
    *AGENT_STAGES,
    "first_step",
    "step_command",
)


@attrs.frozen
class Sample:
    """One measured run: the POST time, the run, and the two times the step wrote."""

    run_id: str
    posted: float
    entry: float
    stamp: float
    phases: Mapping[str, Any]


def stamps_of(lines: Sequence[str]) -> tuple[float, float]:
    """The step's entry time and the ``python3`` stamp, from the job's log lines."""
    entry = stamp = None
    for line in lines:
        text = line.strip()
        if text.startswith(ENTRY_MARK):
            entry = float(text.split()[-1])
            continue
        try:
            value = float(text)
        except ValueError:
            continue
        stamp = value
    if entry is None or stamp is None:
        raise RuntimeError(f"the step's stamps are missing from its log: {list(lines)[-10:]}")
    return entry, stamp


async def wait_phases(
    tails: Sequence[LogTail], run_id: str, seen: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The agents' ``job phases`` line of ``run_id``, polling their log files (never the orchestrator,
    which is being measured)."""
    while run_id not in seen:
        for tail in tails:
            for entry in tail.poll():
                if entry.get("message") == "job phases":
                    seen[str(entry.get("runId"))] = entry
        if run_id not in seen:
            await trio.sleep(POLL_S)
    return seen[run_id]


async def measure_runs(stack: Stack, runs: int, gap_s: float) -> list[Sample]:
    shas = stack.new_commits(runs + 1)
    tails = [LogTail(agent.log_path) for agent in stack.agents]
    seen: dict[str, dict[str, Any]] = {}
    samples = []
    async with api_client(stack.orch) as client:
        for index, sha in enumerate(shas):
            await trio.sleep(gap_s if index else 0.0)
            delivery = stack.push(sha)
            posted = time.time()
            run_id = await post_delivery(client, stack.webhook_url, delivery)
            with trio.fail_after(RUN_TIMEOUT_S):
                phases = await wait_phases(tails, run_id, seen)
                shown = await wait_run(client, run_id)
            if shown["status"] != "success":
                raise RuntimeError(f"run {run_id} ended {shown['status']}: {shown}")
            entry, stamp = stamps_of(await job_log_lines(client, run_id, "stamp"))
            if index == 0:
                progress(f"warm-up run: {(stamp - posted) * 1000:.0f} ms (not counted)")
                continue
            samples.append(Sample(run_id, posted, entry, stamp, phases))
            total, entered = (stamp - posted) * 1000, (entry - posted) * 1000
            progress(f"run {index}/{runs}: {total:.0f} ms (step entered after {entered:.0f} ms)")
    return samples


def _first(entries: Sequence[Mapping[str, Any]], message: str, key: str, value: str) -> Mapping[str, Any]:
    for entry in entries:
        if entry.get("message") == message and str(entry.get(key)) == value:
            return entry
    raise RuntimeError(f"no {message!r} log line with {key}={value}")


def stages_of(sample: Sample, orch_log: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The stage durations of one run in ms (see the module docstring)."""
    created = _first(orch_log, "run created", "runId", sample.run_id)
    handled = _first(orch_log, "webhook handled", "requestId", str(created.get("requestId")))
    dispatched = _first(orch_log, "job dispatched", "runId", sample.run_id)
    pipeline_start = log_time(handled) - float(handled["duration_ms"]) / 1000
    phases = sample.phases
    received = float(phases["received_at"])
    ready = received + sum(float(phases[f"{name}_ms"]) for name in AGENT_STAGES) / 1000
    stages = {
        "verify": pipeline_start - sample.posted,
        "pipeline": log_time(created) - pipeline_start,
        "lock_fetch": float(handled.get("lock_fetch_ms") or 0.0) / 1000,
        "dispatch": log_time(dispatched) - log_time(created),
        "to_agent": received - log_time(dispatched),
        **{name: float(phases[f"{name}_ms"]) / 1000 for name in AGENT_STAGES},
        "first_step": sample.entry - ready,
        "step_command": sample.stamp - sample.entry,
    }
    total = sample.stamp - sample.posted
    stages["unaccounted"] = total - sum(stages[name] for name in STAGES)
    return {name: value * 1000 for name, value in stages.items()}


def breakdown(samples: Sequence[Sample], orch_log: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The median of every stage over the runs, in ms (0.1 ms)."""
    per_run = [stages_of(sample, orch_log) for sample in samples]
    return {name: round(statistics.median(run[name] for run in per_run), 1) for name in per_run[0]}


def measure_latency(
    runs: int = 30, sandbox: str = "bwrap", provider: str = "github", gap_s: float = DEFAULT_GAP_S
) -> dict[str, Any]:
    """Start a stack with one ``sandbox`` agent, measure ``runs`` runs after a warm-up, stop it."""
    if runs < 1:
        raise ValueError("runs must be positive")
    busy_before = background_busy_pct()
    load_before = load_average()
    with running_stack(
        f"latency-{sandbox}", STAMP_WORKFLOW, agents=1, concurrency=1, sandbox=sandbox, provider=provider
    ) as stack:
        samples = trio.run(measure_runs, stack, runs, gap_s)
        time.sleep(0.2)
        orch_log = stack.orch.log_lines()
    return {
        "sandbox": sandbox,
        "provider": provider,
        "gap_s": gap_s,
        "latency_ms": latency_figures([s.stamp - s.posted for s in samples]),
        "step_entry_ms": latency_figures([s.entry - s.posted for s in samples]),
        "stages_median_ms": breakdown(samples, orch_log),
        "background_busy_pct": busy_before,
        "load_before": load_before,
        "load_after": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30, help="measured runs (after one warm-up)")
    parser.add_argument(
        "--sandbox", choices=("bwrap", "process", "both"), default="both", help="the agent's sandbox"
    )
    parser.add_argument(
        "--provider", choices=PROVIDERS, default="github", help="the source kind (see the docstring)"
    )
    parser.add_argument(
        "--gap", type=float, default=DEFAULT_GAP_S, help="seconds between a run's end and the next POST"
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be positive")
    sandboxes = ("bwrap", "process") if args.sandbox == "both" else (args.sandbox,)
    figures: dict[str, Any] = {"bench": "latency", "runs": args.runs}
    try:
        for sandbox in sandboxes:
            progress(f"latency with the {sandbox} sandbox: {args.runs} runs")
            figures[sandbox] = measure_latency(args.runs, sandbox, args.provider, args.gap)
    except (RuntimeError, TimeoutError, trio.TooSlowError) as exc:
        progress(f"latency failed: {exc}")
        sys.exit(1)
    emit({**figures, "machine": machine()})


if __name__ == "__main__":
    main()
