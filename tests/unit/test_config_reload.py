"""The reload service with real files: results, log lines, callbacks, failures (OPS-03, CFG-07, CFG-08)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from kici.domain.config.reload import RESTART_MESSAGE, ReloadPlan
from kici.domain.config.schema import OrchestratorConfig
from kici.domain.config.validate import Loaded
from kici.services.config_reload import (
    TRIGGER_BUFFER,
    ConfigHolder,
    ConfigReloader,
    load_agent,
    load_orchestrator,
    threaded,
)

BASE = "instance:\n  mode: independent\nserver:\n  port: 4100\nqueue:\n  maxDepth: 10\n"


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "orchestrator.yaml"
    write(path, BASE)
    return path


def reloader_for(path: Path, **kwargs: Any) -> ConfigReloader[OrchestratorConfig]:
    env = {"KICI_CONFIG": str(path)}
    holder = ConfigHolder(load_orchestrator(environ=env).config)
    return ConfigReloader(holder, threaded(lambda: load_orchestrator(environ=env)), **kwargs)


@pytest.mark.feature("OPS-01", "OPS-04", "CFG-01")
def test_loaders_read_the_located_file_and_env(tmp_path: Path, config_file: Path) -> None:
    loaded = load_orchestrator(environ={"KICI_CONFIG": str(config_file), "KICI_QUEUE_MAX_DEPTH": "11"})
    assert (loaded.config.server.port, loaded.config.queue.max_depth) == (4100, 11)
    agent_file = tmp_path / "agent.yaml"
    write(agent_file, "orchestratorUrl: ws://o.example:4000\nlabels: [linux]\n")
    agent = load_agent(str(agent_file), environ={"KICI_LABELS": "linux,gpu"}).config
    assert agent.identity.labels == ("linux", "gpu")


@pytest.mark.feature("OPS-03", "CFG-07", "CFG-08")
async def test_a_valid_change_is_swapped_in(config_file: Path) -> None:
    reloader = reloader_for(config_file)
    write(config_file, BASE.replace("maxDepth: 10", "maxDepth: 20"))
    with capture_logs() as logs:
        result = await reloader.execute_reload("cli")
    assert result.success
    assert (result.version, result.fields_changed, result.restart_required) == (2, ("queue.maxDepth",), ())
    assert reloader.holder.current.queue.max_depth == 20
    assert reloader.counts == {("cli", "attempted"): 1, ("cli", "success"): 1}
    assert [entry["event"] for entry in logs] == ["config reloaded"]


@pytest.mark.feature("OPS-03", "CFG-08")
async def test_restart_only_fields_keep_their_value_and_are_logged(config_file: Path) -> None:
    reloader = reloader_for(config_file)
    write(
        config_file,
        BASE.replace("port: 4100", "port: 4200")
        + "database:\n  url: postgresql://db.example/kici\nstorage:\n  prefix: team-b\n",
    )
    with capture_logs() as logs:
        result = await reloader.execute_reload("sighup")
    assert result.success
    assert result.restart_required == ("server.port", "database.url", "storage.prefix")
    current = reloader.holder.current
    assert (current.server.port, current.database.url, current.storage.prefix) == (4100, None, "")
    warning = next(entry for entry in logs if entry["log_level"] == "warning")
    assert warning["event"] == f"{RESTART_MESSAGE}: [server.port, database.url, storage.prefix]"


@pytest.mark.feature("OPS-03", "CFG-07")
@pytest.mark.parametrize(
    ("text", "error"),
    [
        (BASE + "queue:\n  maxDepth: 5\n", ":7:1: found duplicate key"),
        (BASE.replace("maxDepth: 10", "maxDepth: lots"), 'queue.maxDepth: expected an integer, got "lots"'),
        (BASE + "qeue: {}\n", "qeue: unknown key. Did you mean queue?"),
    ],
)
async def test_an_invalid_file_is_rejected_and_the_old_config_stays(
    config_file: Path, text: str, error: str
) -> None:
    reloader = reloader_for(config_file)
    before = reloader.holder.current
    write(config_file, text)
    with capture_logs() as logs:
        result = await reloader.execute_reload("http")
    assert not result.success
    assert result.version == 1
    assert error in result.errors[0]
    assert reloader.holder.current is before
    assert reloader.counts["http", "failed"] == 1
    assert logs[0]["event"] == "config reload rejected; keeping the current config"
    assert logs[0]["log_level"] == "error"


@pytest.mark.feature("OPS-03")
async def test_a_deleted_named_file_is_rejected(config_file: Path) -> None:
    reloader = reloader_for(config_file)
    await trio.Path(config_file).unlink()
    result = await reloader.execute_reload("sighup")
    assert not result.success
    assert "file not found" in result.errors[0]


@pytest.mark.feature("OPS-03", "CFG-08")
async def test_callbacks_see_the_plan_and_one_failure_does_not_stop_the_others(config_file: Path) -> None:
    seen: list[tuple[tuple[str, ...], int]] = []

    async def broken(plan: ReloadPlan[OrchestratorConfig], old: OrchestratorConfig) -> None:
        raise RuntimeError("scaler backend refused")

    async def record(plan: ReloadPlan[OrchestratorConfig], old: OrchestratorConfig) -> None:
        seen.append((plan.applied_changes, old.queue.max_depth))

    reloader = reloader_for(config_file, on_applied=[broken, record])
    write(config_file, BASE.replace("maxDepth: 10", "maxDepth: 30"))
    with capture_logs() as logs:
        result = await reloader.execute_reload("cli")
    assert result.success
    assert seen == [(("queue.maxDepth",), 10)]
    assert any(entry["event"] == "config reload callback failed" for entry in logs)


@pytest.mark.feature("OPS-03")
async def test_an_unexpected_loader_failure_never_escapes() -> None:
    async def explode() -> Loaded[OrchestratorConfig]:
        raise KeyError("bug")

    reloader = ConfigReloader(ConfigHolder(OrchestratorConfig()), explode)
    with capture_logs():
        result = await reloader.execute_reload("cli")
    assert (result.success, result.errors) == (False, ("KeyError: 'bug'",))


@pytest.mark.feature("OPS-03", "CFG-07")
async def test_triggers_beyond_the_buffer_are_dropped_not_raised(
    autojump_clock: trio.testing.MockClock,
) -> None:
    loads = 0

    async def load() -> Loaded[OrchestratorConfig]:
        nonlocal loads
        loads += 1
        return Loaded(OrchestratorConfig())

    reloader = ConfigReloader(ConfigHolder(OrchestratorConfig()), load)
    for _ in range(TRIGGER_BUFFER * 2):
        reloader.trigger_reload("sighup")
    async with trio.open_nursery() as nursery:
        await nursery.start(reloader.run)
        result = await reloader.wait_for_reloads(1)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert result is not None
    assert result.success
    assert loads == 1
