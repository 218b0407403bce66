"""The real ``kici-orchestrator`` process in platform mode against the fake Platform (PRO-20/21/22/28).

The orchestrator runs with its embedded PostgreSQL and a universal-git source (``github-repo``
preset) whose repository a real git server serves on loopback; the Platform is
:mod:`kici.testing.fake_platform` in the test process. The test drives the orchestrator only from
outside: over the Platform link, HTTP, signals and its log lines.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import httpx
import pytest

from kici.domain.lockfile import dump_lock
from kici.domain.protocol import (
    ActorUser,
    CloseCode,
    ExecutionStatus,
    OrchMode,
    RunCancelRequest,
    RunCancelResponse,
    RunState,
    SourceRegister,
    SourceSubtype,
    StateReplay,
    WebhookResult,
)
from kici.domain.webhooks.models import LOCK_FILE_PATH
from kici.testing.fake_platform import FakePlatform, open_fake_platform
from kici.testing.git_http import GitHttpServer, commit_files, create_repo
from tests.e2e.test_orchestrator_process import (
    ADMIN,
    GUARD,
    MAX_BODY,
    REPO,
    SECRET,
    Orchestrator,
    child_env,
    ci_lock,
    command,
    exited,
    push,
)

pytestmark = [pytest.mark.e2e, pytest.mark.pg]

TOKEN = "kici-e2e-org-api-key"
ROUTING_KEY = "generic:__default__:app"


def config_text(data_dir: Path, git_url: str, platform_url: str) -> str:
    return json.dumps(
        {
            "instance": {"mode": "platform", "id": "orch-e2e"},
            "server": {"host": "127.0.0.1", "port": 0},
            "platform": {"url": platform_url, "token": TOKEN},
            "logging": {"format": "json"},
            "dataDir": str(data_dir),
            "sources": [
                {
                    "name": "app",
                    "provider": "universal-git",
                    "secret": SECRET,
                    "maxPayloadBytes": MAX_BODY,
                    "gitConfig": {"preset": "github-repo", "gitUrlTemplate": f"{git_url}/{{repo}}.git"},
                }
            ],
        }
    )


@attrs.frozen
class World:
    orch: Orchestrator
    platform: FakePlatform
    sha: str


@pytest.fixture
async def world(pg_scratch_dir: Path) -> AsyncIterator[World]:
    with tempfile.TemporaryDirectory(prefix="kici-e2e-git-") as root:
        bare = create_repo(Path(root), REPO)
        sha = commit_files(bare, "main", {LOCK_FILE_PATH: dump_lock(ci_lock())})
        async with open_fake_platform([TOKEN]) as platform:
            platform.accepting = False
            with GitHttpServer(Path(root)) as server:
                data_dir = pg_scratch_dir / "data"
                config_path = pg_scratch_dir / "orchestrator.yaml"
                config_path.write_text(config_text(data_dir, server.base_url, platform.url))
                log_path = pg_scratch_dir / "orchestrator.log"
                with log_path.open("wb") as log:
                    process = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for without blocking
                        [*command(), "--config", str(config_path)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=child_env(),
                    )
                orch = Orchestrator(process, log_path, config_path, data_dir)
                try:
                    listening = await orch.wait_for_log("orchestrator listening")
                    orch.url = listening["url"].rstrip("/")
                    yield World(orch, platform, sha)
                finally:
                    if process.poll() is None:
                        process.kill()
                        process.wait()


@pytest.mark.feature("PRO-20", "PRO-21", "PRO-22", "PRO-28", "HOOK-05")
async def test_platform_mode_end_to_end(world: World) -> None:
    orch, platform = world.orch, world.platform

    await platform.wait_for(lambda: len(platform.auth_requests) >= 2, within=GUARD)
    assert {request.token for request in platform.auth_requests} == {TOKEN}
    platform.accepting = True
    await platform.wait_connected(within=GUARD)
    register = await platform.expect(SourceRegister, within=GUARD)
    assert [(s.routing_key, s.name, s.subtype) for s in register.sources] == [
        (ROUTING_KEY, "app", SourceSubtype.UNIVERSAL_GIT)
    ]
    assert (register.mode, register.instance_id) == (OrchMode.PLATFORM, "orch-e2e")
    assert (await platform.expect(StateReplay, within=GUARD)).runs == []

    headers, body = push(world.sha, "e2e-relay-1")
    async with httpx.AsyncClient(base_url=orch.url, timeout=GUARD) as client:
        direct = await client.post("/webhooks/universal-git/app", content=body, headers=headers)
        assert direct.status_code == 403
        assert "platform mode" in direct.json()["reason"]

        forged_headers, forged_body = push(world.sha, "e2e-forged", secret="wrong")
        forged = await platform.relay(
            ROUTING_KEY,
            forged_body,
            delivery_id="e2e-forged",
            event="push",
            headers=forged_headers,
            within=GUARD,
        )
        assert forged.result is WebhookResult.REJECTED_SIGNATURE

        ack = await platform.relay(
            ROUTING_KEY, body, delivery_id="e2e-relay-1", event="push", headers=headers, within=GUARD
        )
        assert (ack.result, ack.delivery_id) == (WebhookResult.ACCEPTED, "e2e-relay-1")
        status = await platform.expect(ExecutionStatus, within=GUARD)
        assert status.workflow_name == "ci"
        assert status.repo_identifier == REPO
        runs = (await client.get("/api/v1/runs", headers={"authorization": f"Bearer {ADMIN}"})).json()
        assert [r["id"] for r in runs["runs"]] == [status.run_id]

        cancelled = await platform.request(
            RunCancelRequest(request_id="cancel-1", actor=ActorUser(sub="e2e"), run_id=status.run_id),
            within=GUARD,
        )
        assert isinstance(cancelled, RunCancelResponse)
        assert cancelled.error is None
        assert (cancelled.cancelled_jobs or 0) >= 1
        await platform.expect(
            ExecutionStatus,
            lambda m: m.run_id == status.run_id and m.status is RunState.CANCELLED,
            within=GUARD,
        )

    sessions = platform.sessions
    await platform.kick(CloseCode.GOING_AWAY)
    await platform.wait_for(lambda: platform.sessions == sessions + 1, within=GUARD)
    replay = await platform.expect(StateReplay, lambda m: bool(m.runs), within=GUARD)
    assert [(r.run_id, r.status) for r in replay.runs] == [(status.run_id, RunState.CANCELLED)]

    orch.process.send_signal(signal.SIGTERM)
    await exited(orch)
    assert orch.process.returncode == 0, orch.log_path.read_text()
    stopped = [e["part"] for e in orch.lines() if e.get("message") == "stopped"]
    assert stopped == ["reload", "platform", "execution", "http"]
    await platform.wait_for(lambda: platform.current is None, within=GUARD)
    text = orch.log_path.read_text()
    assert TOKEN not in text
    assert SECRET not in text
