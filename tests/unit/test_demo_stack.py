"""The pure parts of the demo's stack launcher: the configs it writes (read back by each tier's own
loader), the sandbox choice, the incremental log reader, the shutdown report and the leak scan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kici.demo.stack import (
    LogTail,
    Phases,
    Sandbox,
    ShutdownReport,
    Stack,
    StackError,
    StackOptions,
    agent_config,
    choose_sandbox,
    orchestrator_config,
    platform_config,
    postgres_data_dirs,
    stray_processes,
)
from kici.domain.config.schema import Mode
from kici.services.config_reload import load_agent, load_orchestrator
from kici.services.platform.config import load_platform_config

OPTIONS = StackOptions(git_url_template="http://127.0.0.1:9/{repo}.git", webhook_secret="s3cret")
TOKEN = "kat_" + "ab" * 32
API_KEY = "korg_" + "cd" * 32
NO_ENV: dict[str, str] = {}


def stack(root: Path, sandbox: Sandbox = Sandbox.BWRAP) -> Stack:
    made = Stack(root, OPTIONS, Phases(), sandbox=sandbox)
    made.platform_url = "http://127.0.0.1:3000"
    made.platform_ws_url = "ws://127.0.0.1:3000/ws"
    made.orchestrator_url = "http://127.0.0.1:4000"
    return made


@pytest.mark.feature("OPS-01", "OPS-04")
def test_the_tier_configs_pass_each_tiers_own_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("KICI_")]:
        monkeypatch.delenv(name)
    made = stack(tmp_path)
    platform = tmp_path / "platform.json"
    platform.write_text(json.dumps(platform_config(made)))
    assert load_platform_config(str(platform)).server.host == "127.0.0.1"

    orchestrator = tmp_path / "orchestrator.json"
    orchestrator.write_text(json.dumps(orchestrator_config(made, API_KEY)))
    loaded = load_orchestrator(str(orchestrator), NO_ENV).config
    assert loaded.server.mode is Mode.PLATFORM
    assert (loaded.platform.url, loaded.platform.token) == ("ws://127.0.0.1:3000/ws", API_KEY)
    (source,) = loaded.sources
    assert source.routing_key == OPTIONS.routing_key == "generic:__default__:app"

    agent = tmp_path / "agent.yaml"
    agent.write_text(agent_config(made, 1, TOKEN))
    config = load_agent(str(agent), NO_ENV).config
    assert config.connection.orchestrator_url == "ws://127.0.0.1:4000/ws"
    assert config.connection.token == TOKEN
    assert config.execution.sandbox is True
    agent.write_text(agent_config(stack(tmp_path, Sandbox.PROCESS), 1, TOKEN))
    assert load_agent(str(agent), NO_ENV).config.execution.sandbox is False
    assert made.webhook_url() == "http://127.0.0.1:3000/webhooks/generic/generic:__default__:app"


@pytest.mark.feature("ISO-11")
def test_bwrap_unless_it_cannot_run_then_the_process_sandbox_with_a_warning() -> None:
    assert choose_sandbox(Sandbox.AUTO, lambda: None) == (Sandbox.BWRAP, None)
    chosen, warning = choose_sandbox(Sandbox.AUTO, lambda: "no user namespaces")
    assert chosen is Sandbox.PROCESS
    assert warning is not None
    assert "no user namespaces" in warning
    with pytest.raises(StackError, match="no user namespaces"):
        choose_sandbox(Sandbox.BWRAP, lambda: "no user namespaces")
    assert choose_sandbox(Sandbox.PROCESS, lambda: pytest.fail("not probed")) == (Sandbox.PROCESS, None)


@pytest.mark.feature("OPS-12")
def test_the_log_reader_returns_whole_json_lines_only_once_each(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    tail = LogTail(path)
    assert tail.read() == []
    path.write_bytes(b'{"message": "a"}\nnot json\n{"message": "b", "n"')
    assert [e["message"] for e in tail.read()] == ["a"]
    with path.open("ab") as handle:
        handle.write(b': 1}\n["a list"]\n')
    assert tail.read() == [{"message": "a"}, {"message": "b", "n": 1}]
    assert tail.read() == [{"message": "a"}, {"message": "b", "n": 1}]
    assert "not json" in tail.tail()


@pytest.mark.feature("OPS-17")
def test_a_shutdown_is_clean_only_when_every_tier_exited_0_on_sigterm_and_nothing_was_left() -> None:
    assert ShutdownReport(exit_codes={"agent-1": 0, "platform": 0}).clean
    dirty = [
        ShutdownReport(exit_codes={"platform": 1}),
        ShutdownReport(exit_codes={"platform": -9}, killed=("platform",)),
        ShutdownReport(exit_codes={"platform": 0}, postgres_stopped=(Path("/r/platform/data/pg18"),)),
        ShutdownReport(exit_codes={"platform": 0}, stray_pids=(42,)),
    ]
    assert not any(report.clean for report in dirty)
    assert [len(report.problems()) for report in dirty] == [1, 2, 1, 1]
    assert "stray process 42" in dirty[3].problems()[0]


@pytest.mark.feature("OPS-17")
def test_the_leak_scan_finds_a_process_naming_the_root_and_the_data_dirs(tmp_path: Path) -> None:
    (tmp_path / "orchestrator" / "data" / "pg18").mkdir(parents=True)
    (tmp_path / "platform" / "data" / "pg18").mkdir(parents=True)
    assert postgres_data_dirs(tmp_path) == [
        tmp_path / "orchestrator" / "data" / "pg18",
        tmp_path / "platform" / "data" / "pg18",
    ]
    code = "import time; time.sleep(60)"
    with (
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)]) as naming,
        subprocess.Popen([sys.executable, "-c", code], start_new_session=True) as session,
    ):
        try:
            found = stray_processes(tmp_path, {session.pid})
            assert naming.pid in found
            assert session.pid in found
            assert stray_processes(tmp_path / "elsewhere", set()) == []
        finally:
            naming.kill()
            session.kill()
    assert stray_processes(tmp_path, {session.pid}) == []
