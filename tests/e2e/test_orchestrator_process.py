"""The real ``kici-orchestrator`` process on loopback, with its embedded PostgreSQL in a temp data dir.

One orchestrator per test module run: a universal-git source (``github-repo`` preset, so deliveries
are GitHub-shaped and signed like GitHub's) whose repository is served by a real git server on
loopback. The tests drive it only from outside: HTTP, signals and its log lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from kici.adapters.postgres import embedded
from kici.domain.lockfile import LockFile, PushTrigger, dump_lock
from kici.domain.webhooks.models import LOCK_FILE_PATH
from kici.domain.webhooks.verification import sign_body
from kici.testing.git_http import GitHttpServer, commit_files, create_repo
from tests.contract.test_orch_pipeline import FIXTURES, lock_of

pytestmark = [pytest.mark.e2e, pytest.mark.pg]

REPO = "acme/app"
SECRET = "e2e-webhook-secret"
ADMIN = "kadm_e2e-admin-token"
GUARD = 60
MAX_BODY = 65_536


def config_text(data_dir: Path, git_url: str, secret: str = SECRET) -> str:
    return json.dumps(
        {
            "instance": {"mode": "independent"},
            "server": {"host": "127.0.0.1", "port": 0},
            "logging": {"format": "json"},
            "dataDir": str(data_dir),
            "sources": [
                {
                    "name": "app",
                    "provider": "universal-git",
                    "secret": secret,
                    "maxPayloadBytes": MAX_BODY,
                    "gitConfig": {"preset": "github-repo", "gitUrlTemplate": f"{git_url}/{{repo}}.git"},
                }
            ],
        }
    )


def command() -> list[str]:
    script = Path(sys.executable).with_name("kici-orchestrator")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "kici.services.orchestrator.main"]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
    env["KICI_BOOTSTRAP_ADMIN_TOKEN"] = ADMIN
    return env


@attrs.define
class Orchestrator:
    process: subprocess.Popen[bytes]
    log_path: Path
    config_path: Path
    data_dir: Path
    url: str = ""
    seen: int = 0

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    async def wait_for_log(self, message: str, *, after: int = 0) -> dict[str, Any]:
        with trio.fail_after(GUARD):
            while True:
                found = [entry for entry in self.lines()[after:] if entry.get("message") == message]
                if found:
                    return found[0]
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"orchestrator exited {self.process.returncode}:\n{self.log_path.read_text()}"
                    )
                await trio.sleep(0.05)


@pytest.fixture
def git_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kici-e2e-git-") as root:
        yield Path(root)


@pytest.fixture
async def orchestrator(
    pg_scratch_dir: Path, git_root: Path
) -> AsyncIterator[tuple[Orchestrator, str, GitHttpServer]]:
    bare = create_repo(git_root, REPO)
    sha = commit_files(bare, "main", {LOCK_FILE_PATH: dump_lock(ci_lock())})
    with GitHttpServer(git_root) as server:
        data_dir = pg_scratch_dir / "data"
        config_path = pg_scratch_dir / "orchestrator.yaml"
        config_path.write_text(config_text(data_dir, server.base_url))
        log_path = pg_scratch_dir / "orchestrator.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for below without blocking
                [*command(), "--config", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
            )
        orch = Orchestrator(process, log_path, config_path, data_dir)
        try:
            listening = await orch.wait_for_log("orchestrator listening")
            orch.url = listening["url"].rstrip("/")
            yield orch, sha, server
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def ci_lock() -> LockFile:
    return lock_of(("ci", [PushTrigger()]))


def push(
    sha: str, delivery: str, *, secret: str = SECRET, body: bytes | None = None
) -> tuple[dict[str, str], bytes]:
    data = json.loads((FIXTURES / "github_push.json").read_text())
    payload = data["payload"]
    payload["after"] = sha
    raw = body if body is not None else json.dumps(payload).encode()
    headers = {
        "x-github-event": "push",
        "x-github-delivery": delivery,
        "content-type": "application/json",
        "x-hub-signature-256": sign_body(raw, secret),
    }
    return headers, raw


async def total_runs(client: httpx.AsyncClient) -> int:
    response = await client.get("/api/v1/runs", headers={"authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200
    return int(response.json()["total"])


async def exited(orch: Orchestrator) -> None:
    with trio.fail_after(GUARD):
        await trio.to_thread.run_sync(orch.process.wait, abandon_on_cancel=True)


def postgres_processes(data_dir: Path) -> list[int]:
    pgdata = str(embedded.pgdata_for(data_dir).resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "postgres" in cmdline and pgdata in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.feature("HOOK-04", "HOOK-14", "OPS-09", "OPS-10", "OPS-17")
async def test_webhooks_api_operations_and_an_ordered_sigterm(
    orchestrator: tuple[Orchestrator, str, GitHttpServer],
) -> None:
    orch, sha, _ = orchestrator
    hook = "/webhooks/universal-git/app"
    async with httpx.AsyncClient(base_url=orch.url, timeout=GUARD) as client:
        health = (await client.get("/health")).json()
        assert health["status"] == "ok"
        assert (await client.get("/ready")).status_code == 200

        headers, body = push(sha, "e2e-1")
        accepted = await client.post(hook, content=body, headers=headers)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["status"] == "processed"
        (run_id,) = accepted.json()["runIds"]
        runs = (await client.get("/api/v1/runs", headers={"authorization": f"Bearer {ADMIN}"})).json()
        assert [r["id"] for r in runs["runs"]] == [run_id]
        shown = (
            await client.get(f"/api/v1/runs/{run_id}", headers={"authorization": f"Bearer {ADMIN}"})
        ).json()
        lint, *children = shown["jobs"]
        assert lint["status"] in ("pending", "queued")
        assert [j["status"] for j in children] == ["pending", "pending"]

        replay = await client.post(hook, content=body, headers=headers)
        assert (replay.status_code, replay.json()["duplicate"]) == (200, True)

        forged_headers, forged_body = push(sha, "e2e-forged", secret="wrong")
        assert (await client.post(hook, content=forged_body, headers=forged_headers)).status_code == 401
        big = b"{" + b" " * MAX_BODY + b"}"
        assert (
            await client.post(hook, content=big, headers=push(sha, "e2e-big", body=big)[0])
        ).status_code == 413
        bad = b"{not json"
        assert (
            await client.post(hook, content=bad, headers=push(sha, "e2e-bad", body=bad)[0])
        ).status_code == 400
        assert await total_runs(client) == 1

        metrics = (await client.get("/metrics")).text
        assert 'kici_orch_webhooks_received_total{event="push",source="app"} 2.0' in metrics
        assert 'kici_orch_webhooks_rejected_total{reason="signature"} 1.0' in metrics
        assert sum(f'kici_orch_runs{{status="{s}"}} 1.0' in metrics for s in ("pending", "running")) == 1
        assert "kici_orch_agents_active 0.0" in metrics

    assert postgres_processes(orch.data_dir)
    orch.process.send_signal(signal.SIGTERM)
    await exited(orch)
    assert orch.process.returncode == 0, orch.log_path.read_text()
    stopped = [e["part"] for e in orch.lines() if e.get("message") == "stopped"]
    assert stopped == ["reload", "execution", "http"]
    assert [e for e in orch.lines() if e.get("message") == "orchestrator stopped"]
    assert postgres_processes(orch.data_dir) == []
    assert not embedded.is_running(embedded.pgdata_for(orch.data_dir))
    assert SECRET not in orch.log_path.read_text()


@pytest.mark.feature("OPS-03", "OPS-01")
async def test_sighup_keeps_the_old_config_when_the_new_one_is_bad_and_swaps_a_good_one(
    orchestrator: tuple[Orchestrator, str, GitHttpServer],
) -> None:
    orch, sha, server = orchestrator
    hook = "/webhooks/universal-git/app"
    async with httpx.AsyncClient(base_url=orch.url, timeout=GUARD) as client:
        orch.config_path.write_text(
            config_text(orch.data_dir, server.base_url).replace('"maxPayloadBytes"', '"maxPayloadByte"')
        )
        mark = len(orch.lines())
        orch.process.send_signal(signal.SIGHUP)
        rejected = await orch.wait_for_log("config reload rejected; keeping the current config", after=mark)
        assert any("maxPayloadByte" in error for error in rejected["errors"])
        assert (await client.get("/ready")).status_code == 200
        headers, body = push(sha, "e2e-after-bad-reload")
        assert (await client.post(hook, content=body, headers=headers)).status_code == 202

        orch.config_path.write_text(config_text(orch.data_dir, server.base_url, secret="rotated-secret"))
        mark = len(orch.lines())
        orch.process.send_signal(signal.SIGHUP)
        reloaded = await orch.wait_for_log("config reloaded", after=mark)
        assert "sources" in reloaded["fields_changed"]
        old = push(sha, "e2e-old-secret")
        assert (await client.post(hook, content=old[1], headers=old[0])).status_code == 401
        new = push(sha, "e2e-new-secret", secret="rotated-secret")
        assert (await client.post(hook, content=new[1], headers=new[0])).status_code == 202

        created = subprocess.run(  # noqa: ASYNC221 - a short CLI call next to the running service
            [*command(), "agent-token", "create", "--labels", "linux,x64", "--config", str(orch.config_path)],
            capture_output=True,
            env=child_env(),
            check=False,
            timeout=GUARD,
        )
        assert created.returncode == 0, created.stderr.decode()
        token = created.stdout.decode().strip()
        assert token.startswith("kat_")
        assert len(token) == 68
        assert (await client.get("/ready")).status_code == 200
    orch.process.send_signal(signal.SIGINT)
    await exited(orch)
    assert orch.process.returncode == 0


@pytest.mark.feature("OPS-01")
def test_an_invalid_config_prints_every_problem_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        json.dumps(
            {
                "instance": {"mode": "independent"},
                "server": {"port": "many"},
                "sources": [{"name": "x", "provider": "github"}],
            }
        )
    )
    done = subprocess.run(
        [*command(), "--config", str(path)], capture_output=True, env=child_env(), check=False, timeout=GUARD
    )
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "server.port" in err
    assert "sources[0].appId: is required" in err
    assert "a GitHub source needs its webhook secret" in err
