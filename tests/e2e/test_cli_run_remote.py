"""``kici run remote`` as a user runs it: a real ``kici`` process against the real ``kici-orchestrator``.

There is no agent yet, so the runs never finish here: the orchestrator tests submit with
``--no-wait``; following a run (log cursors, summary, exit code) is driven against a scripted
transport instead.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from kici.cli.remote_cmd import OrchestratorClient, watch
from kici.cli.templates import HELLO_WORLD
from tests.e2e.test_orchestrator_process import ADMIN, GUARD, Orchestrator, child_env, command, config_text

DEAD_GIT = "http://127.0.0.1:9"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    workflows = tmp_path / "app" / ".kici" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "hello_world.py").write_text(HELLO_WORLD)
    return (tmp_path / "app").resolve()


def kici(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
    clean["NO_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "kici.cli.main", "run", "remote", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=GUARD,
    )


async def kici_async(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(lambda: kici(cwd, *args, env=env))


@pytest.fixture
async def orchestrator(pg_scratch_dir: Path) -> AsyncIterator[Orchestrator]:
    data_dir = pg_scratch_dir / "data"
    config_path = pg_scratch_dir / "orchestrator.yaml"
    config_path.write_text(config_text(data_dir, DEAD_GIT))
    log_path = pg_scratch_dir / "orchestrator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for below without blocking
            [*command(), "--config", str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=child_env()
        )
    orch = Orchestrator(process, log_path, config_path, data_dir)
    try:
        listening = await orch.wait_for_log("orchestrator listening")
        orch.url = listening["url"].rstrip("/")
        yield orch
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.e2e
@pytest.mark.pg
@pytest.mark.feature("CLI-14")
async def test_submits_the_lock_inline_and_the_runs_appear_in_the_api(
    orchestrator: Orchestrator, project: Path
) -> None:
    done = await kici_async(
        project, "push", "--url", orchestrator.url, "--token", ADMIN, "--no-wait", "--json"
    )
    assert done.returncode == 0, done.stderr
    (run_id,) = json.loads(done.stdout)["runIds"]

    env = {"KICI_ORCHESTRATOR_API_URL": orchestrator.url, "KICI_ADMIN_TOKEN": ADMIN}
    again = await kici_async(project, "push", "--branch", "main", "--no-wait", "-q", env=env)
    assert again.returncode == 0, again.stderr
    (second_id,) = again.stdout.split()

    auth = {"authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=orchestrator.url, timeout=GUARD, headers=auth) as client:
        runs = (await client.get("/api/v1/runs")).json()
        assert {r["id"] for r in runs["runs"]} == {run_id, second_id}
        shown = (await client.get(f"/api/v1/runs/{run_id}")).json()
    assert shown["workflowName"] == "hello-world"
    assert shown["repoIdentifier"] == str(project)
    assert [job["name"] for job in shown["jobs"]] == ["hello"]

    missing = await kici_async(
        project, "push", "--url", orchestrator.url, "--token", ADMIN, "--workflow", "nope", "--no-wait"
    )
    assert missing.returncode == 1
    assert 'No workflow named "nope"' in missing.stderr


@pytest.mark.e2e
@pytest.mark.pg
@pytest.mark.feature("CLI-14")
async def test_a_bad_token_is_unauthorized_and_submits_nothing(
    orchestrator: Orchestrator, project: Path
) -> None:
    done = await kici_async(project, "push", "--url", orchestrator.url, "--token", "kadm_wrong", "--no-wait")
    assert done.returncode == 1
    assert "unauthorized" in done.stderr
    auth = {"authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=orchestrator.url, timeout=GUARD, headers=auth) as client:
        assert (await client.get("/api/v1/runs")).json()["total"] == 0


@pytest.mark.e2e
@pytest.mark.feature("CLI-14")
def test_an_unreachable_orchestrator_is_one_error_line_and_exit_1(project: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = kici(project, "push", "--url", url, "--token", ADMIN, "--quiet")
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"Error: cannot reach the orchestrator at {url}")


@pytest.mark.e2e
@pytest.mark.feature("CLI-14")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["push", "--token", "t"], "missing --url"),
        (["push", "--url", "http://127.0.0.1:1"], "missing --token"),
        (["nonsense", "--url", "http://127.0.0.1:1", "--token", "t"], "nonsense"),
        (["push", "--url", "ftp://x", "--token", "t"], "--url must start with"),
    ],
)
def test_usage_errors_exit_2(project: Path, args: list[str], message: str) -> None:
    done = kici(project, *args)
    assert done.returncode == 2
    assert message in done.stderr


class ScriptedOrchestrator:
    """Answers GET run and logs: the run finishes on the third poll, logs arrive in two pages."""

    def __init__(self, final: str) -> None:
        self.final = final
        self.polls = 0
        self.cursors: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/logs"):
            cursor = int(request.url.params["cursor"])
            self.cursors.append(cursor)
            chunks: list[dict[str, Any]] = []
            if cursor == 0:
                chunks = [{"sequence": 1, "stepIndex": 0, "lines": ["one", "two"]}]
            elif cursor == 1 and self.polls >= 2:
                chunks = [{"sequence": 2, "stepIndex": 0, "lines": ["three"]}]
            next_cursor = chunks[-1]["sequence"] if chunks else cursor
            return httpx.Response(200, json={"jobId": "j1", "chunks": chunks, "nextCursor": next_cursor})
        self.polls += 1
        status = self.final if self.polls >= 3 else "running"
        job = {"id": "j1", "name": "build", "status": status}
        return httpx.Response(200, json={"id": "r1", "workflowName": "ci", "status": status, "jobs": [job]})


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kici.cli.remote_cmd.POLL_INTERVAL_S", 0.0)


@pytest.mark.e2e
@pytest.mark.feature("CLI-14")
@pytest.mark.parametrize("final", ["success", "failed"])
def test_following_a_run_streams_each_log_line_once_until_terminal(
    final: str, no_sleep: None, capsys: pytest.CaptureFixture[str]
) -> None:
    script = ScriptedOrchestrator(final)
    with OrchestratorClient("http://orch", "t", transport=httpx.MockTransport(script)) as client:
        runs, interrupted = watch(client, ["r1"], json_mode=False, quiet=False)
    assert not interrupted
    assert [run["status"] for run in runs] == [final]
    assert script.polls == 3
    out = capsys.readouterr().out.splitlines()
    assert out == ["[build] one", "[build] two", "[build] three"]
    assert script.cursors == [0, 1, 2]


class InterruptedOrchestrator:
    """The user presses Ctrl-C ``presses`` times while the run is being polled."""

    def __init__(self, presses: int) -> None:
        self.presses = presses
        self.cancels: list[bool] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/cancel"):
            self.cancels.append(json.loads(request.content)["force"])
            return httpx.Response(202, json={"runId": "r1", "outcome": "cancelling"})
        if request.url.path.endswith("/logs"):
            return httpx.Response(200, json={"jobId": "j1", "chunks": [], "nextCursor": 0})
        if self.presses:
            self.presses -= 1
            raise KeyboardInterrupt
        status = "cancelled" if self.cancels else "running"
        return httpx.Response(200, json={"id": "r1", "workflowName": "ci", "status": status, "jobs": []})


@pytest.mark.e2e
@pytest.mark.feature("CLI-14")
@pytest.mark.parametrize(("presses", "cancels"), [(1, [False]), (2, [False, True])])
def test_the_first_ctrl_c_cancels_and_the_second_forces(
    presses: int, cancels: list[bool], no_sleep: None
) -> None:
    script = InterruptedOrchestrator(presses)
    with OrchestratorClient("http://orch", "t", transport=httpx.MockTransport(script)) as client:
        _, interrupted = watch(client, ["r1"], json_mode=True, quiet=False)
    assert interrupted
    assert script.cancels == cancels
