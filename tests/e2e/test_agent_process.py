"""The real ``kici-agent`` process against a real agent hub on loopback (OPS-04, OPS-03, OPS-17, EXE-36).

The orchestrator side is the production ``AgentHub`` with its dispatcher and tracker over a real
PostgreSQL (``running_engine`` of the engine contract suite, mounted at ``/ws`` by ``serve_hub``); the
agent is the console script (or ``python -m kici.services.agent``) with the real job manager and the
default bubblewrap sandbox, configured by a YAML file. The tests drive it only from outside: signals,
its config file, its JSON log lines, its exit code, and what the hub sees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from kici.adapters.sandbox.bwrap import probe
from tests.contract.test_orch_engine_hub import Engine, engine

pytestmark = [pytest.mark.e2e]
__all__ = ["engine"]

GUARD = 60
AGENT_ID = "e2e-agent"
needs_bwrap = pytest.mark.skipif(probe() is not None, reason=f"bubblewrap cannot sandbox here: {probe()}")


def command() -> list[str]:
    script = Path(sys.executable).with_name("kici-agent")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "kici.services.agent"]


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}


def agent_yaml(url: str, token: str, data_dir: Path, *, concurrency: int | str = 1) -> str:
    return (
        f"orchestratorUrl: {url}\n"
        f"agentToken: {token}\n"
        f"agentId: {AGENT_ID}\n"
        f"dataDir: {data_dir}\n"
        "labels: [linux]\n"
        f"maxConcurrentJobs: {concurrency}\n"
        "logging:\n  format: json\n"
        "link:\n  heartbeatIntervalMs: 500\n  maxReconnectDelayMs: 200\n"
    )


@attrs.define
class AgentProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    async def wait_for_log(self, message: str) -> dict[str, Any]:
        with trio.fail_after(GUARD):
            while True:
                found = [entry for entry in self.lines() if entry.get("message") == message]
                if found:
                    return found[0]
                if self.process.poll() is not None:
                    raise AssertionError(f"agent exited {self.process.returncode}:\n{self.text()}")
                await trio.sleep(0.05)

    async def wait_exit(self) -> int:
        with trio.fail_after(GUARD):
            while self.process.poll() is None:  # noqa: ASYNC110 - polls a child process
                await trio.sleep(0.05)
        return self.process.returncode

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)


@asynccontextmanager
async def agent_process(config_path: Path, log_path: Path) -> AsyncIterator[AgentProcess]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, polled below without blocking
            [*command(), "--config", str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=child_env()
        )
    try:
        yield AgentProcess(process, log_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def wait_registered(engine: Engine, *, concurrency: int = 1) -> None:
    with trio.fail_after(GUARD):
        while True:
            agent = engine.services.hub.registry.get(AGENT_ID)
            if agent is not None and agent.routable and agent.max_concurrency == concurrency:
                return
            await trio.sleep(0.05)


async def wait_gone(engine: Engine) -> None:
    with trio.fail_after(GUARD):
        while engine.services.hub.registry.get(AGENT_ID) is not None:  # noqa: ASYNC110 - no event to wait on
            await trio.sleep(0.05)


@pytest.mark.pg
@needs_bwrap
@pytest.mark.feature("OPS-04", "OPS-03", "EXE-36", "PRO-09", "PRO-08")
async def test_sighup_reloads_and_re_registers_then_sigusr1_drains_and_exits_0(
    engine: Engine, tmp_path: Path
) -> None:
    token = await engine.token()
    config = tmp_path / "agent.yaml"
    config.write_text(agent_yaml(engine.url, token, tmp_path / "data"), encoding="utf-8")
    async with agent_process(config, tmp_path / "agent.log") as agent:
        started = await agent.wait_for_log("agent started")
        assert started["sandbox"] == "bwrap"
        assert started["service"] == "agent"
        assert "kici:os:linux" in started["labels"]
        await agent.wait_for_log("registered with the orchestrator")
        await wait_registered(engine, concurrency=1)
        record = await engine.stores.agents.get_agent(AGENT_ID)
        assert record is not None
        assert "linux" in record.labels
        config.write_text(agent_yaml(engine.url, token, tmp_path / "data", concurrency=3), encoding="utf-8")
        agent.signal(signal.SIGHUP)
        await wait_registered(engine, concurrency=3)
        await agent.wait_for_log("config reloaded")
        agent.signal(signal.SIGUSR1)
        assert await agent.wait_exit() == 0
        exiting = await agent.wait_for_log("agent exiting")
        assert exiting["how"] == "drained"
        await wait_gone(engine)
        assert token not in agent.text()


@pytest.mark.pg
@needs_bwrap
@pytest.mark.feature("OPS-17", "OPS-04")
async def test_sigterm_closes_the_link_cleanly_and_exits_0(engine: Engine, tmp_path: Path) -> None:
    token = await engine.token()
    config = tmp_path / "agent.yaml"
    config.write_text(agent_yaml(engine.url, token, tmp_path / "data"), encoding="utf-8")
    async with agent_process(config, tmp_path / "agent.log") as agent:
        await wait_registered(engine)
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
        exiting = await agent.wait_for_log("agent exiting")
        assert (exiting["how"], exiting["outbound_flushed"]) == ("stopped", True)
        await wait_gone(engine)


@pytest.mark.pg
@needs_bwrap
@pytest.mark.feature("OPS-03", "OPS-04")
async def test_an_invalid_reload_keeps_the_agent_running_on_its_old_config(
    engine: Engine, tmp_path: Path
) -> None:
    token = await engine.token()
    config = tmp_path / "agent.yaml"
    config.write_text(agent_yaml(engine.url, token, tmp_path / "data"), encoding="utf-8")
    async with agent_process(config, tmp_path / "agent.log") as agent:
        await wait_registered(engine)
        config.write_text(
            agent_yaml(engine.url, token, tmp_path / "data", concurrency="lots"), encoding="utf-8"
        )
        agent.signal(signal.SIGHUP)
        rejected = await agent.wait_for_log("config reload rejected; keeping the current config")
        assert any("maxConcurrentJobs" in error for error in rejected["errors"])
        assert agent.process.poll() is None
        await wait_registered(engine, concurrency=1)
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0


@pytest.mark.pg
@needs_bwrap
@pytest.mark.feature("PRO-08", "PRO-36")
async def test_an_unknown_token_is_refused_for_good_and_the_agent_exits_3(
    engine: Engine, tmp_path: Path
) -> None:
    token = "kat_" + "0" * 64
    config = tmp_path / "agent.yaml"
    config.write_text(agent_yaml(engine.url, token, tmp_path / "data"), encoding="utf-8")
    async with agent_process(config, tmp_path / "agent.log") as agent:
        assert await agent.wait_exit() == 3
        refused = await agent.wait_for_log("orchestrator refused this agent; not reconnecting")
    assert refused["reason"] == "Invalid or expired token"
    assert "kici-orchestrator agent-token create" in refused["fix"]
    assert refused["level"] == "error"
    assert not [entry for entry in agent.lines() if entry.get("message") == "link reconnect scheduled"]
    assert token not in agent.text()


@pytest.mark.feature("OPS-04")
async def test_a_config_without_an_orchestrator_url_exits_2_saying_what_where_and_how(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"dataDir: {tmp_path / 'data'}\nlabels: [linux]\n", encoding="utf-8")
    async with agent_process(config, tmp_path / "agent.log") as agent:
        assert await agent.wait_exit() == 2
        text = agent.text()
    assert "kici-agent cannot start: the configuration is invalid" in text
    assert f"where: --config {config}" in text
    assert "KICI_ORCHESTRATOR_URL" in text
    assert "fix:" in text
