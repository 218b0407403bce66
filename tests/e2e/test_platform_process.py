"""The real ``kici-platform`` process on loopback with its embedded PostgreSQL in a temp data dir.

Tenancy is set up with the real admin commands (separate processes against the daemon's running
database); a protocol-level fake orchestrator connects over the WebSocket. The tests drive the
daemon only from outside: HTTP, the WebSocket, admin commands, signals and its log lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from kici.domain.protocol import CloseCode
from kici.domain.webhooks.verification import sign_body
from kici.testing.fake_orchestrator import open_fake_orchestrator, source

pytestmark = [pytest.mark.e2e, pytest.mark.pg]

GUARD = 60
SECRET = "e2e-secret"


def command() -> list[str]:
    script = Path(sys.executable).with_name("kici-platform")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "kici.services.platform.main"]


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}


@attrs.define
class Daemon:
    process: subprocess.Popen[bytes]
    log_path: Path
    config_path: Path
    url: str = ""
    ws_url: str = ""

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    async def wait_for_log(self, message: str) -> dict[str, Any]:
        with trio.fail_after(GUARD):
            while True:
                found = [entry for entry in self.lines() if entry.get("message") == message]
                if found:
                    return found[0]
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"platform exited {self.process.returncode}:\n{self.log_path.read_text()}"
                    )
                await trio.sleep(0.05)

    async def admin(self, *args: str) -> str:
        """Run ``kici-platform admin ARGS`` as its own process; its stdout."""
        done = await trio.run_process(
            [*command(), "admin", "--config", str(self.config_path), *args],
            capture_stdout=True,
            capture_stderr=True,
            env=child_env(),
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()


@pytest.fixture
async def daemon(pg_scratch_dir: Path) -> AsyncIterator[Daemon]:
    config_path = pg_scratch_dir / "platform.yaml"
    config_path.write_text(
        json.dumps(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "dataDir": str(pg_scratch_dir),
                "logging": {"format": "json"},
                "webhooks": {"ackTimeoutMs": 3000},
            }
        )
    )
    log_path = pg_scratch_dir / "platform.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for below without blocking
            [*command(), "--config", str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=child_env()
        )
    running = Daemon(process, log_path, config_path)
    try:
        listening = await running.wait_for_log("platform listening")
        running.url = listening["url"].rstrip("/")
        running.ws_url = listening["ws_url"]
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def exited(daemon: Daemon) -> int:
    with trio.fail_after(GUARD):
        return await trio.to_thread.run_sync(daemon.process.wait, abandon_on_cancel=True)


@pytest.mark.feature("PRO-20", "PRO-21", "PRO-36", "OPS-17")
async def test_relay_tenancy_revocation_and_an_ordered_sigterm(daemon: Daemon) -> None:
    await daemon.admin("org", "create", "acme")
    key = (await daemon.admin("api-key", "create", "--org", "acme")).strip()
    await daemon.admin("routing-key", "add", "github:1", "--org", "acme")
    await daemon.admin("routing-key", "add", "github:2", "--org", "acme")

    body = json.dumps({"ref": "refs/heads/main", "padding": "x" * 1_500_000}).encode()
    headers = {
        "x-github-event": "push",
        "x-github-delivery": "e2e-1",
        "content-type": "application/json",
        "x-hub-signature-256": sign_body(body, SECRET),
    }
    async with httpx.AsyncClient(base_url=daemon.url, timeout=GUARD) as client:
        assert (await client.get("/ready")).status_code == 200
        async with open_fake_orchestrator(daemon.ws_url, api_key=key, sources=[source("github:1")]) as orch:
            accepted = await client.post("/webhooks/github/github:1", content=body, headers=headers)
            assert accepted.status_code == 200, accepted.text
            (relay,) = orch.relays
            assert relay.body == body
            assert relay.start.signature_header == headers["x-hub-signature-256"]

            offline = await client.post("/webhooks/github/github:2", content=b"{}", headers=headers)
            assert offline.status_code == 503
            assert offline.headers["retry-after"] == "5"
            unknown = await client.post("/webhooks/github/github:3", content=b"{}", headers=headers)
            assert unknown.status_code == 404

            deliveries = json.loads(await daemon.admin("delivery", "list", "--json"))
            assert [(d["routingKey"], d["status"], d["httpStatus"]) for d in deliveries] == [
                ("github:2", "no_orchestrator", 503),
                ("github:1", "accepted", 200),
            ]

            (listed,) = json.loads(await daemon.admin("api-key", "list", "--json"))
            await daemon.admin("api-key", "revoke", listed["id"])
            closed = await orch.wait_closed(within=5)
            assert (closed.code, closed.reason) == (CloseCode.AGENT_AUTH_FAILED, "API key revoked")

    daemon.process.send_signal(signal.SIGTERM)
    assert await exited(daemon) == 0
    messages = [entry.get("message") for entry in daemon.lines()]
    assert "platform stopped" in messages
