"""The real ``kici-orchestrator`` process survives a SIGKILL in the middle of a job (issue 4).

A ``local`` source reads the lock from a working tree in a temp dir; the embedded PostgreSQL lives in a
temp data dir. A fake agent (a real WebSocket client) runs the job; the orchestrator is SIGKILLed while
the job runs, so its PostgreSQL is left running and the restarted process, on the same data dir and port,
adopts it. The agent reconnects with the job in ``inFlightJobs`` and finishes it. Everything is asserted
from outside: the REST API, signals, ``/proc``.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from kici.adapters.postgres import embedded
from kici.domain.lockfile import (
    ExactLabelMatcher,
    LockFile,
    LockJob,
    LockSource,
    LockStep,
    LockWorkflow,
    PushTrigger,
    dump_lock,
)
from kici.domain.protocol import JobDispatch, JobState, StepState
from kici.domain.webhooks.models import LOCK_FILE_PATH
from kici.testing.fake_agent import open_fake_agent
from tests.e2e.test_orchestrator_process import (
    ADMIN,
    GUARD,
    Orchestrator,
    child_env,
    command,
    exited,
    postgres_processes,
)

pytestmark = [pytest.mark.e2e, pytest.mark.pg]

REPO = "acme/app"
AUTH = {"authorization": f"Bearer {ADMIN}"}
BEFORE = ["compiling", "linking"]
AFTER = ["testing", "done"]


def restart_lock() -> LockFile:
    """One workflow, one job on ``linux``, started by any push."""
    return LockFile(
        content_hash="cd" * 32,
        workflows=(
            LockWorkflow(
                name="ci",
                source=LockSource(file=".kici/workflows/ci.py", export="#ci"),
                content_hash="ab" * 32,
                triggers=(PushTrigger(),),
                jobs=(
                    LockJob(
                        name="build",
                        runs_on=(ExactLabelMatcher(value="linux"),),
                        runs_on_pick="deterministic",
                        steps=(LockStep(name="make", has_outputs=False),),
                    ),
                ),
            ),
        ),
    )


def free_port() -> int:
    """A port the restarted process can bind again (the first one is gone with its process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@attrs.define
class Site:
    config_path: Path
    data_dir: Path
    log_dir: Path
    started: list[Orchestrator] = attrs.field(factory=list)

    async def start(self) -> Orchestrator:
        log_path = self.log_dir / f"orchestrator-{len(self.started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(  # noqa: ASYNC220 - waited for below without blocking
                [*command(), "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
            )
        orch = Orchestrator(process, log_path, self.config_path, self.data_dir)
        self.started.append(orch)
        listening = await orch.wait_for_log("orchestrator listening")
        orch.url = listening["url"].rstrip("/")
        return orch


@pytest.fixture
def site(pg_scratch_dir: Path) -> Iterator[Site]:
    repos = pg_scratch_dir / "repos"
    lock_path = repos / REPO / LOCK_FILE_PATH
    lock_path.parent.mkdir(parents=True)
    lock_path.write_text(dump_lock(restart_lock()))
    data_dir = pg_scratch_dir / "data"
    config_path = pg_scratch_dir / "orchestrator.yaml"
    config = {
        "instance": {"mode": "independent"},
        "server": {"host": "127.0.0.1", "port": free_port()},
        "logging": {"format": "json"},
        "dataDir": str(data_dir),
        "sources": [{"name": "repos", "provider": "local", "repoBasePath": str(repos)}],
    }
    config_path.write_text(json.dumps(config))
    site = Site(config_path, data_dir, pg_scratch_dir)
    try:
        yield site
    finally:
        for orch in site.started:
            if orch.process.poll() is None:
                orch.process.kill()
                orch.process.wait()
        embedded.stop(embedded.pgdata_for(data_dir))


def agent_token(site: Site) -> str:
    created = subprocess.run(
        [*command(), "agent-token", "create", "--labels", "linux", "--config", str(site.config_path)],
        capture_output=True,
        env=child_env(),
        check=False,
        timeout=GUARD,
    )
    assert created.returncode == 0, created.stderr.decode()
    return created.stdout.decode().strip()


async def push(client: httpx.AsyncClient) -> str:
    payload = {"ref": "refs/heads/main", "after": "1" * 40, "repository": {"full_name": REPO}}
    headers = {"x-event-type": "push", "x-delivery-id": "restart-1", "content-type": "application/json"}
    accepted = await client.post("/webhooks/local/repos", content=json.dumps(payload), headers=headers)
    assert accepted.status_code == 202, accepted.text
    (run_id,) = accepted.json()["runIds"]
    return str(run_id)


async def show_run(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/runs/{run_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    shown: dict[str, Any] = response.json()
    return shown


async def wait_states(client: httpx.AsyncClient, run_id: str, run: str, job: str) -> None:
    with trio.fail_after(GUARD):
        while True:
            shown = await show_run(client, run_id)
            if (shown["status"], [j["status"] for j in shown["jobs"]]) == (run, [job]):
                return
            await trio.sleep(0.05)


async def log_lines(client: httpx.AsyncClient, run_id: str) -> list[str]:
    response = await client.get(f"/api/v1/runs/{run_id}/jobs/build/logs", headers=AUTH)
    assert response.status_code == 200, response.text
    return [line for chunk in response.json()["chunks"] for line in chunk["lines"]]


async def wait_logs(client: httpx.AsyncClient, run_id: str, expected: list[str]) -> None:
    with trio.fail_after(GUARD):
        while await log_lines(client, run_id) != expected:  # noqa: ASYNC110 - the API has no push
            await trio.sleep(0.05)


@pytest.mark.feature("EXE-27", "PRO-16", "PRO-17", "EXE-03")
async def test_a_sigkilled_orchestrator_comes_back_and_the_job_finishes_with_its_logs(site: Site) -> None:
    token = agent_token(site)
    first = await site.start()
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=GUARD) as client,
        open_fake_agent(
            f"{first.url.replace('http', 'ws', 1)}/ws",
            agent_id="agent-1",
            token=token,
            labels=["linux"],
            heartbeat_interval=0.2,
        ) as agent,
    ):
        run_id = await push(client)
        dispatch = await agent.expect(JobDispatch, within=GUARD)
        await agent.ack(dispatch)
        await agent.status(dispatch, JobState.RUNNING)
        await agent.step(dispatch, 0, "make", StepState.RUNNING)
        await agent.log(dispatch, 0, BEFORE)
        await wait_states(client, run_id, "running", "running")
        await wait_logs(client, run_id, BEFORE)
        postgres = postgres_processes(site.data_dir)
        assert postgres
        first.process.send_signal(signal.SIGKILL)
        await exited(first)
        await agent.wait_closed(within=GUARD)
    assert postgres_processes(site.data_dir) == postgres

    second = await site.start()
    assert second.url == first.url
    async with httpx.AsyncClient(base_url=second.url, timeout=GUARD) as client:
        await wait_states(client, run_id, "running", "recovering")
        async with open_fake_agent(
            f"{second.url.replace('http', 'ws', 1)}/ws",
            agent_id="agent-1",
            token=token,
            labels=["linux"],
            in_flight=[dispatch],
            heartbeat_interval=0.2,
        ) as agent:
            await wait_states(client, run_id, "running", "running")
            await agent.log(dispatch, 0, AFTER)
            await agent.step(dispatch, 0, "make", StepState.SUCCESS, {"durationMs": 5})
            await agent.status(dispatch, JobState.SUCCESS)
            await wait_states(client, run_id, "success", "success")
        await wait_logs(client, run_id, BEFORE + AFTER)
        (job,) = (await show_run(client, run_id))["jobs"]
        assert [(s["stepName"], s["status"]) for s in job["steps"]] == [("make", "success")]

    second.process.send_signal(signal.SIGTERM)
    await exited(second)
    assert second.process.returncode == 0, second.log_path.read_text()
    assert postgres_processes(site.data_dir) == []
    assert not embedded.is_running(embedded.pgdata_for(site.data_dir))
