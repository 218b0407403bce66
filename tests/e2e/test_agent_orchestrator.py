"""Real ``kici-agent`` processes against a real ``kici-orchestrator`` process (issue 5, item 6).

One orchestrator (embedded PostgreSQL, universal-git source over a real git server) and two agents under
bubblewrap, ``e2e-agent-a`` (label ``e2e-a``, three slots) and ``e2e-agent-b`` (label ``e2e-b``), are
shared by the module; the tests that cut a link or kill an agent start an agent of their own. Runs are
started by signed push webhooks and observed only through the REST API, the processes' log lines,
signals and the job workspace (see ``agent_stack.py``). Timers are shortened through config: the
orchestrator's ``agentMaxReconnectDelayMs`` is 3 s (recovery grace 6 s), the agents reconnect within
300 ms.
"""

from __future__ import annotations

import base64
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from kici.adapters.sandbox.bwrap import probe
from kici.testing.postgres import scratch_dir
from kici.testing.tcp_proxy import open_tcp_proxy
from tests.e2e.agent_stack import (
    CLONE_TOKEN,
    GUARD,
    LABEL_A,
    LABEL_B,
    LABEL_DOOMED,
    LABEL_PROXIED,
    Agent,
    Api,
    Stack,
    running_stack,
)

needs_bwrap = pytest.mark.skipif(probe() is not None, reason=f"bubblewrap cannot sandbox here: {probe()}")
pytestmark = [pytest.mark.e2e, pytest.mark.pg, needs_bwrap]

AGENT_A = "e2e-agent-a"
AGENT_B = "e2e-agent-b"
GAP_MARKER = "--- Orchestrator offline for "
RECOVERY_EXPIRED = "Job failed: agent disconnected and did not reconnect within the recovery window"
DOOMED_SLEEP = "sleep 97.25"
PREPARE = -1
SANDBOX_ENV = frozenset(("PATH", "HOME", "SHELL", "LANG", "TERM", "TMPDIR", "FORCE_COLOR"))
"""ISO-04's allowlist as far as this host sets it, plus FORCE_COLOR; the runner adds its step env files and
the shell its own variables (:data:`STEP_ENV`)."""
STEP_ENV = frozenset(("KICI_ENV", "KICI_PATH", "PWD", "SHLVL", "_"))


@pytest.fixture(scope="module")
def stack(pg_server: object) -> Iterator[Stack]:
    """The orchestrator and the two shared agents, registered; the agents also hold their token in env.

    ``pg_server`` is asked for its skip: without embedded PostgreSQL the orchestrator cannot start either.
    """
    with scratch_dir(os.environ.get("PYTEST_XDIST_WORKER", "main")) as home, running_stack(home) as site:
        secret_env = {"KICI_AGENT_TOKEN": site.token, "KICI_ORCHESTRATOR_URL": site.ws_url}
        site.launch_agent(AGENT_A, [LABEL_A], concurrency=3, env=secret_env)
        site.launch_agent(AGENT_B, [LABEL_B], env=secret_env)
        for agent in site.agents:
            agent.service.wait_for_log_sync("registered with the orchestrator")
        yield site


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=GUARD) as client:
        yield Api(client, stack)


def agent(stack: Stack, agent_id: str) -> Agent:
    return next(a for a in stack.agents if a.agent_id == agent_id)


def by_step(chunks: list[dict[str, Any]]) -> dict[int, list[str]]:
    """Stored lines per step index, as the agent streamed them."""
    out: dict[int, list[str]] = {}
    for chunk in chunks:
        out.setdefault(chunk["stepIndex"], []).extend(chunk["lines"])
    return out


def step_lines(chunks: list[dict[str, Any]]) -> dict[int, list[str]]:
    """What each step printed: every index but the prepare bucket."""
    return {index: lines for index, lines in by_step(chunks).items() if index != PREPARE}


def prepare_lines(chunks: list[dict[str, Any]]) -> list[str]:
    """The agent's own lines (job header, clone, job outcome), streamed as the prepare bucket."""
    return by_step(chunks).get(PREPARE, [])


def steps_of(job: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["stepName"], s["status"]) for s in job["steps"]]


async def registered_again(agent: Agent, mark: int) -> dict[str, Any]:
    """The agent's first registration logged after line ``mark``."""
    return await agent.service.wait_for_log("registered with the orchestrator", after=mark)


def processes_running(needle: str) -> list[int]:
    """Pids whose command line contains ``needle`` (the sandbox's processes are host processes too)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry.name))
    return found


# --- jobs that simply run -------------------------------------------------------------------------


@pytest.mark.feature(
    "EXE-06", "EXE-10", "EXE-22", "EXE-23", "PRO-09", "PRO-10", "PRO-11", "OPS-04", "ISO-02", "ISO-03"
)
async def test_a_job_with_several_steps_reports_every_step_status_and_log_line(
    stack: Stack, api: Api
) -> None:
    run_id = await api.push("steps")
    run = await api.wait_run(run_id)
    assert run["status"] == "success", run
    (job,) = run["jobs"]
    assert (job["name"], job["status"], job["agentId"]) == ("build", "success", AGENT_A)
    assert steps_of(job) == [("compile", "success"), ("package", "success"), ("report", "success")]
    assert all(s["completedAt"] and s["durationMs"] is not None for s in job["steps"])
    assert job["outputs"] == {"compile": {"version": "1.2.3"}}
    chunks = await api.chunks(run_id, "build")
    assert step_lines(chunks) == {
        0: ["compile line 0", "compile line 1", "compile line 2"],
        1: ["greeting=hello-from-compile", "packaging version 1.2.3"],
        2: ["report done"],
    }
    phases = prepare_lines(chunks)
    assert phases[0] == f"[kici] Job 'build' of workflow 'steps' on {AGENT_A}"
    assert any(line.startswith("[kici] Checked out ") for line in phases)
    streamed = by_step(chunks)
    assert [s["logBytes"] for s in job["steps"]] == [
        sum(len(line.encode()) for line in streamed[i]) for i in range(3)
    ]
    requests = stack.git.requests
    assert requests
    assert all(authorized and CLONE_TOKEN not in path for _method, path, authorized in requests)
    dispatched = [e for e in stack.orchestrator.lines() if e.get("jobId") == job["id"]]
    assert [e["attempt"] for e in dispatched if e["message"] == "job dispatched"] == [1]
    assert not [e for e in dispatched if e["message"] == "dispatch not taken"]
    assert CLONE_TOKEN not in repr(chunks)


@pytest.mark.feature("EXE-06", "EXE-07", "EXE-10", "PRO-11")
async def test_a_failing_step_fails_the_job_and_the_run_and_skips_the_later_steps(api: Api) -> None:
    run_id = await api.push("failing")
    run = await api.wait_run(run_id)
    assert (run["status"], run["failureReason"]) == ("failed", "Failed jobs: build")
    (job,) = run["jobs"]
    assert job["status"] == "failed"
    assert steps_of(job) == [("ok", "success"), ("bad", "failed"), ("never", "skipped")]
    bad = job["steps"][1]
    assert "exit code 3" in bad["errorMessage"]
    assert job["errorMessage"].startswith("Step 'bad' failed: ")
    assert "exit code 3" in job["errorMessage"]
    chunks = await api.chunks(run_id, "build")
    assert step_lines(chunks) == {0: ["fine so far"], 1: ["about to fail"]}
    reported = [line for line in prepare_lines(chunks) if line.startswith("[kici] Job failed: ")]
    assert reported == [
        "[kici] Job failed: Step 'bad' failed: Command failed with exit code 3: echo about to fail; exit 3"
    ]
    assert "never printed" not in repr(chunks)


@pytest.mark.feature("EXE-06", "EXE-10")
async def test_a_matrix_runs_three_children_each_with_its_value(api: Api) -> None:
    run_id = await api.push("matrix")
    run = await api.wait_run(run_id)
    assert run["status"] == "success", run
    jobs = {job["name"]: job for job in run["jobs"]}
    flavors = ("red", "green", "blue")
    assert set(jobs) == {f"test ({flavor})" for flavor in flavors}
    for flavor in flavors:
        job = jobs[f"test ({flavor})"]
        assert (job["status"], job["agentId"], job["matrixValues"]) == (
            "success",
            AGENT_A,
            {"flavor": flavor},
        )
        assert steps_of(job) == [("show", "success")]
        assert step_lines(await api.chunks(run_id, job["name"])) == {0: [f"flavor={flavor}"]}


@pytest.mark.feature("EXE-06", "EXE-22", "PRO-09", "PRO-11")
async def test_needs_across_two_agents_run_each_job_on_its_label_and_carry_the_output(api: Api) -> None:
    run_id = await api.push("needs")
    run = await api.wait_run(run_id)
    assert run["status"] == "success", run
    jobs = {job["name"]: job for job in run["jobs"]}
    produce, consume = jobs["produce"], jobs["consume"]
    assert (produce["agentId"], consume["agentId"]) == (AGENT_A, AGENT_B)
    assert produce["outputs"] == {"make": {"artifact": "pkg-42"}}
    assert consume["outputs"] == {"use": {"got": "pkg-42"}}
    assert consume["startedAt"] >= produce["completedAt"]
    consumed = await api.chunks(run_id, "consume")
    assert step_lines(consumed) == {0: ["consumed pkg-42 from an upstream that ended success"]}
    assert prepare_lines(consumed)[0] == f"[kici] Job 'consume' of workflow 'needs' on {AGENT_B}"
    produced = await api.chunks(run_id, "produce")
    assert prepare_lines(produced)[0] == f"[kici] Job 'produce' of workflow 'needs' on {AGENT_A}"


@pytest.mark.feature("EXE-10", "SEC-15")
async def test_a_credential_a_step_prints_is_masked_in_everything_the_orchestrator_stores(
    stack: Stack, api: Api
) -> None:
    """The orchestrator has no secret store yet, so the dispatch's clone token is the secret here."""
    run_id = await api.push("secret")
    run = await api.wait_run(run_id)
    (job,) = run["jobs"]
    assert job["status"] == "failed"
    encoded = base64.b64encode(CLONE_TOKEN.encode()).decode()
    chunks = await api.chunks(run_id, "leak")
    logs = step_lines(chunks)
    assert logs[0] == ["plain ***", "b64 ***", "shell ***"]
    assert "RuntimeError: boom ***" in logs[1]
    assert "[kici] Job failed: Step 'leak-error' failed: RuntimeError: boom ***" in prepare_lines(chunks)
    assert job["outputs"] == {"leak": {"echo": "***"}}
    assert job["errorMessage"] == "Step 'leak-error' failed: RuntimeError: boom ***"
    assert job["steps"][1]["errorMessage"] == "RuntimeError: boom ***"
    stored = repr(run) + repr(chunks)
    for value in (CLONE_TOKEN, encoded):
        assert value not in stored
        assert value not in stack.orchestrator.text()
        assert value not in agent(stack, AGENT_A).service.text()


@pytest.mark.feature("ISO-01", "ISO-04", "ISO-07")
async def test_a_sandboxed_step_sees_neither_the_agent_config_nor_its_token_nor_its_environment(
    stack: Stack, api: Api
) -> None:
    host = agent(stack, AGENT_A)
    paths = [
        str(host.config_path),
        str(host.data_dir / "agent-id"),
        f"/proc/{host.service.process.pid}/environ",
    ]
    assert stack.token in host.config_path.read_text()
    run_id = await api.push("isolation", probe={"paths": paths})
    run = await api.wait_run(run_id)
    assert run["status"] == "success", run
    chunks = await api.chunks(run_id, "peek")
    seen = step_lines(chunks)[0]
    for path in paths:
        assert f"unreadable: {path}" in seen
    assert "uid=65534" in seen
    env = seen[seen.index("--- env") + 1 : seen.index("--- environ of every visible process")]
    assert {line.split("=", 1)[0] for line in env} <= SANDBOX_ENV | STEP_ENV
    everything = "\n".join(line for chunk in chunks for line in chunk["lines"])
    for leaked in (stack.token, "KICI_AGENT_TOKEN", "KICI_ORCHESTRATOR_URL", "agentToken", "***"):
        assert leaked not in everything
    assert stack.token not in stack.orchestrator.text()
    assert stack.token not in host.service.text()


# --- outages ----------------------------------------------------------------------------------------


async def ride_through(api: Api, run_id: str) -> list[str]:
    """The ``ride`` job's lines once the run ended; asserts the outage left its marks in order."""
    run = await api.wait_run(run_id)
    assert run["status"] == "success", run
    (job,) = run["jobs"]
    assert steps_of(job) == [("through", "success")]
    lines = step_lines(await api.chunks(run_id, "ride"))[0]
    markers = [i for i, line in enumerate(lines) if line.startswith(GAP_MARKER)]
    assert len(markers) == 1, lines
    assert "Replaying" in lines[markers[0]]
    assert lines[: markers[0]] == ["before the outage"]
    assert lines[markers[0] + 1 :] == [
        "during the outage 0",
        "during the outage 1",
        "during the outage 2",
        "shell line during the outage",
    ]
    return lines


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
@pytest.mark.feature("EXE-27", "PRO-09", "PRO-14", "PRO-16", "PRO-17")
async def test_an_orchestrator_restart_mid_job_delivers_the_status_and_logs_after_reconnect(
    stack: Stack, signum: int
) -> None:
    rider = agent(stack, AGENT_A)
    async with httpx.AsyncClient(base_url=stack.url, timeout=GUARD) as client:
        api = Api(client, stack)
        run_id = await api.push("outage-restart")
        await api.wait_line(run_id, "ride", "before the outage")
        workspace = await rider.workspace(api, run_id)
    mark = len(rider.service.lines())
    stack.orchestrator.stop(signum)
    (workspace / "release").touch()
    await rider.wait_removed(workspace)
    await stack.launch_orchestrator().wait_for_log("orchestrator listening")
    again = await registered_again(rider, mark)
    assert again["gap_marker"] is True
    assert again["replay_statuses"] >= 1
    async with httpx.AsyncClient(base_url=stack.url, timeout=GUARD) as client:
        await ride_through(Api(client, stack), run_id)


@pytest.mark.feature("EXE-27", "PRO-09", "PRO-14", "PRO-16", "PRO-11")
async def test_a_cut_connection_mid_job_delivers_the_status_and_logs_after_reconnect(
    stack: Stack, api: Api
) -> None:
    async with open_tcp_proxy("127.0.0.1", stack.port) as proxy:
        rider = stack.launch_agent(
            "e2e-agent-proxied", [LABEL_PROXIED], url=f"ws://127.0.0.1:{proxy.port}/ws"
        )
        try:
            await rider.service.wait_for_log("registered with the orchestrator")
            run_id = await api.push("outage-proxy")
            await api.wait_line(run_id, "ride", "before the outage")
            workspace = await rider.workspace(api, run_id)
            mark = len(rider.service.lines())
            proxy.refusing = True
            proxy.reset()
            await api.wait_job(run_id, "ride", "recovering")
            (workspace / "release").touch()
            await rider.wait_removed(workspace)
            assert (await api.job(run_id, "ride"))["status"] == "recovering"
            assert await api.lines(run_id, "ride", step=0) == ["before the outage"]
            proxy.refusing = False
            again = await registered_again(rider, mark)
            assert again["gap_marker"] is True
            assert again["replay_statuses"] >= 1
            await ride_through(api, run_id)
        finally:
            rider.service.stop()


@pytest.mark.feature("EXE-27", "PRO-16", "ISO-07")
async def test_an_agent_killed_mid_job_has_its_job_failed_after_the_recovery_grace(
    stack: Stack, api: Api
) -> None:
    doomed = stack.launch_agent("e2e-agent-doomed", [LABEL_DOOMED])
    await doomed.service.wait_for_log("registered with the orchestrator")
    run_id = await api.push("doomed")
    await api.wait_line(run_id, "orphan", "doomed step started")
    with trio.fail_after(GUARD):
        while not processes_running(DOOMED_SLEEP):  # noqa: ASYNC110 - /proc has no change event
            await trio.sleep(0.02)
    doomed.service.stop(signal.SIGKILL)
    await api.wait_job(run_id, "orphan", "recovering")
    run = await api.wait_run(run_id)
    assert (run["status"], run["failureReason"]) == ("failed", "Failed jobs: orphan")
    (job,) = run["jobs"]
    assert (job["status"], job["errorMessage"], job["agentId"]) == (
        "failed",
        RECOVERY_EXPIRED,
        doomed.agent_id,
    )
    assert await api.lines(run_id, "orphan", step=0) == ["doomed step started"]
    with trio.fail_after(GUARD):
        while processes_running(DOOMED_SLEEP):  # noqa: ASYNC110 - /proc has no change event
            await trio.sleep(0.05)


@pytest.mark.feature("ISO-07", "EXE-06")
async def test_a_step_running_longer_than_ten_seconds_on_an_idle_agent_is_not_killed(api: Api) -> None:
    """bwrap's ``--die-with-parent`` follows the *thread* that forked it; a runner forked by a trio worker
    thread was SIGKILLed when that thread retired after 10 s idle ("Workflow runner crashed: exit status
    -9"). Agent B is idle, so nothing else keeps a worker thread alive while the step runs."""
    run_id = await api.push("long-step")
    run = await api.wait_run(run_id)
    (job,) = run["jobs"]
    assert (job["status"], job["errorMessage"]) == ("success", None), job
    assert step_lines(await api.chunks(run_id, "marathon")) == {
        0: ["marathon started", "still alive after 13 s"]
    }
