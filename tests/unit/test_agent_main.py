"""The ``kici-agent`` composition root in-process: startup errors (what, where, fix; exit 2), the sandbox
choice, the agent id, the signal lifecycle (drain, shutdown, forced stop) and SIGHUP reload against a
scripted orchestrator on loopback, with a `FakeJobs` for the jobs (OPS-04, EXE-36, OPS-03, OPS-17)."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
from structlog.testing import capture_logs

from kici.adapters.sandbox.bwrap import BwrapSandbox
from kici.adapters.sandbox.process import ProcessSandbox
from kici.domain.config import load_agent_config
from kici.domain.config.schema import AgentConfig
from kici.domain.ports import Sandbox
from kici.domain.protocol import (
    AgentRegister,
    ConfigAck,
    JobAck,
    JobReject,
    JobState,
    JobStatus,
    RejectReason,
)
from kici.services.agent import main as agent_main
from kici.services.agent.main import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_REFUSED,
    LIFECYCLE,
    Cue,
    Lifecycle,
    Phase,
    StartupError,
    choose_sandbox,
    link_settings,
    resolve_agent_id,
    run_agent,
    start,
)
from kici.services.agent.ports import Outbound
from kici.testing.fake_jobs import FakeJobs
from tests.unit.test_agent_link import FACTS, TOKEN, WAIT_S, Running, dispatch, running_link, scripted, ws

pytestmark = pytest.mark.feature("OPS-04")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No KICI_* variable of the test runner reaches the agent's loader; no default config file."""
    for name in list(os.environ):
        if name.startswith("KICI_"):
            monkeypatch.delenv(name)
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    monkeypatch.setenv("KICI_CONFIG", str(empty))


def config_of(**tree: object) -> AgentConfig:
    return load_agent_config(tree, {}).config


# --- startup errors -----------------------------------------------------------------------------


def test_a_missing_orchestrator_url_is_a_startup_error(
    clean_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(f"dataDir: {tmp_path}\n", encoding="utf-8")
    assert start(str(path)) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "kici-agent cannot start: the configuration is invalid" in err
    assert f"where: --config {path}" in err
    assert "KICI_ORCHESTRATOR_URL" in err
    assert "is required" in err


def test_a_malformed_token_is_named_but_not_echoed(
    clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KICI_ORCHESTRATOR_URL", "ws://127.0.0.1:1/ws")
    monkeypatch.setenv("KICI_AGENT_TOKEN", "not-a-token-secret")
    monkeypatch.setenv("KICI_DATA_DIR", str(tmp_path))
    assert start(None) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "KICI_AGENT_TOKEN" in err
    assert "kat_ followed by 64 hex digits" in err
    assert "not-a-token-secret" not in err


def test_a_named_config_file_that_does_not_exist_is_a_startup_error(
    clean_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    assert start(str(missing)) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "the config file cannot be read" in err
    assert str(missing) in err
    assert "fix:" in err


def test_a_reserved_label_is_a_startup_error(
    clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KICI_ORCHESTRATOR_URL", "ws://127.0.0.1:1/ws")
    monkeypatch.setenv("KICI_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KICI_SANDBOX", "false")
    monkeypatch.setenv("KICI_LABELS", "linux,kici:os:windows")
    assert start(None) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "reserved kici: namespace" in err
    assert "KICI_LABELS" in err


@pytest.mark.feature("ISO-11")
def test_an_execution_mode_without_a_backend_is_refused() -> None:
    for mode in ("container", "firecracker"):
        with pytest.raises(StartupError) as raised:
            choose_sandbox(config_of(orchestratorUrl="ws://h:4000/ws", executionMode=mode))
        assert "KICI_EXECUTION_MODE" in raised.value.where
        assert mode in raised.value.what
        assert "bare-metal" in raised.value.fix


@pytest.mark.feature("ISO-11")
def test_a_scaler_managed_agent_without_a_mode_would_be_firecracker() -> None:
    with pytest.raises(StartupError) as raised:
        choose_sandbox(config_of(orchestratorUrl="ws://h:4000/ws", scaler={"managed": True}))
    assert "'firecracker'" in raised.value.what
    assert "KICI_SCALER_MANAGED" in raised.value.where
    explicit = config_of(
        orchestratorUrl="ws://h:4000/ws",
        scaler={"managed": True},
        executionMode="bare-metal",
        sandbox={"enabled": False},
    )
    assert isinstance(choose_sandbox(explicit), ProcessSandbox)


@pytest.mark.feature("ISO-07")
def test_sandboxing_is_on_by_default_and_needs_bwrap() -> None:
    config = config_of(orchestratorUrl="ws://h:4000/ws")
    with pytest.raises(StartupError) as missing:
        choose_sandbox(config, which=lambda: None)
    assert str(missing.value).startswith("kici-agent cannot start: Bubblewrap (bwrap) not found")
    assert "KICI_SANDBOX=false" in missing.value.fix
    with pytest.raises(StartupError) as broken:
        choose_sandbox(config, which=lambda: "/usr/bin/bwrap", check=lambda path: "no user namespaces")
    assert "no user namespaces" in broken.value.what
    chosen = choose_sandbox(config, which=lambda: "/usr/bin/bwrap", check=lambda path: None)
    assert isinstance(chosen, BwrapSandbox)
    assert chosen.bwrap == "/usr/bin/bwrap"


@pytest.mark.feature("ISO-06")
def test_sandbox_false_picks_the_process_sandbox_with_a_warning() -> None:
    with capture_logs() as logs:
        chosen = choose_sandbox(config_of(orchestratorUrl="ws://h:4000/ws", sandbox={"enabled": False}))
    assert isinstance(chosen, ProcessSandbox)
    assert any("sandbox disabled" in entry["event"] for entry in logs if entry["log_level"] == "warning")


def test_the_agent_id_is_configured_or_generated_once_and_kept(tmp_path: Path) -> None:
    configured = config_of(orchestratorUrl="ws://h/ws", agentId="fixed")
    assert resolve_agent_id(configured, tmp_path, "host") == "fixed"
    generated = resolve_agent_id(config_of(orchestratorUrl="ws://h/ws"), tmp_path, "build-7")
    assert generated.startswith("build-7-")
    assert len(generated) == len("build-7-") + 8
    assert resolve_agent_id(config_of(orchestratorUrl="ws://h/ws"), tmp_path, "other") == generated
    assert (tmp_path / "agent-id").read_text(encoding="utf-8").strip() == generated


def test_link_settings_follow_the_config() -> None:
    config = config_of(
        orchestratorUrl="ws://h/ws",
        agentToken=TOKEN,
        link={
            "heartbeatIntervalMs": 5000,
            "maxReconnectDelayMs": 2000,
            "eventBufferSize": 7,
            "logBufferLines": 9,
        },
    )
    settings = link_settings(config)
    assert (settings.token, settings.heartbeat_interval_s, settings.probe_interval_s) == (TOKEN, 5.0, 5.0)
    assert (settings.max_reconnect_delay_ms, settings.event_buffer_size, settings.log_buffer_lines) == (
        2000,
        7,
        9,
    )
    assert link_settings(config_of(orchestratorUrl="ws://h/ws")).heartbeat_interval_s == 30.0


# --- the lifecycle ------------------------------------------------------------------------------


def test_the_lifecycle_table() -> None:
    assert LIFECYCLE[Phase.RUNNING, Cue.DRAIN] is Phase.DRAINING
    assert LIFECYCLE[Phase.RUNNING, Cue.TERMINATE] is Phase.STOPPING
    assert LIFECYCLE[Phase.DRAINING, Cue.TERMINATE] is Phase.STOPPING
    assert LIFECYCLE[Phase.STOPPING, Cue.TERMINATE] is Phase.FORCED
    assert (Phase.DRAINING, Cue.DRAIN) not in LIFECYCLE
    assert (Phase.STOPPING, Cue.DRAIN) not in LIFECYCLE


@asynccontextmanager
async def registered_link() -> AsyncIterator[tuple[Running, object]]:
    async with scripted() as (orch, url), running_link(ws(url), max_concurrency=2) as running:
        conn = await orch.connection(0)
        await conn.wait_for(ConfigAck)
        yield running, conn


@pytest.mark.feature("EXE-36", "OPS-17")
async def test_drain_refuses_new_jobs_lets_running_ones_finish_then_stops() -> None:
    async with registered_link() as (running, conn), trio.open_nursery() as nursery:
        job = dispatch()
        await conn.send(job)  # type: ignore[attr-defined]
        await conn.wait_for(JobAck)  # type: ignore[attr-defined]
        life = Lifecycle(running.link, running.jobs, grace_s=1.0, flush_s=2.0)
        life.cue(Cue.DRAIN, nursery)
        life.cue(Cue.DRAIN, nursery)
        assert life.phase is Phase.DRAINING
        await trio.sleep(0.05)
        assert running.jobs.draining
        late = dispatch()
        await conn.send(late)  # type: ignore[attr-defined]
        reject = await conn.wait_for(JobReject)  # type: ignore[attr-defined]
        assert (reject.job_id, reject.reason) == (late.job_id, RejectReason.DRAINING)
        assert running.exit is None
        running.jobs.finish(job, JobState.SUCCESS)
        outcome = await running.wait_exit()
        assert not outcome.refused
        final = await conn.wait_for(JobStatus, lambda s: s.state is JobState.SUCCESS)  # type: ignore[attr-defined]
        assert final.job_id == job.job_id


@pytest.mark.feature("OPS-17")
async def test_terminate_gives_running_jobs_the_grace_then_reports_them_and_stops() -> None:
    async with registered_link() as (running, conn), trio.open_nursery() as nursery:
        job = dispatch()
        await conn.send(job)  # type: ignore[attr-defined]
        await conn.wait_for(JobAck)  # type: ignore[attr-defined]
        life = Lifecycle(running.link, running.jobs, grace_s=0.2, flush_s=2.0)
        life.cue(Cue.TERMINATE, nursery)
        outcome = await running.wait_exit()
        assert not outcome.refused
        assert running.jobs.shutdown_grace == 0.2
        final = await conn.wait_for(JobStatus, lambda s: s.state is JobState.CANCELLED)  # type: ignore[attr-defined]
        assert final.job_id == job.job_id


@pytest.mark.feature("OPS-17")
async def test_a_drain_interrupted_by_terminate_and_a_second_terminate_stop_at_once() -> None:
    async with registered_link() as (running, conn), trio.open_nursery() as nursery:
        await conn.send(dispatch())  # type: ignore[attr-defined]
        await conn.wait_for(JobAck)  # type: ignore[attr-defined]
        life = Lifecycle(running.link, running.jobs, grace_s=30.0, flush_s=2.0)
        life.cue(Cue.DRAIN, nursery)
        life.cue(Cue.TERMINATE, nursery)
        assert life.phase is Phase.STOPPING
        life.cue(Cue.TERMINATE, nursery)
        assert life.phase is Phase.FORCED
        outcome = await running.wait_exit(within=5)
        assert not outcome.refused
        nursery.cancel_scope.cancel()


# --- the daemon in-process, with real signals ---------------------------------------------------


@attrs.define
class Made:
    jobs: list[FakeJobs] = attrs.field(factory=list)

    def __call__(
        self, config: AgentConfig, agent_id: str, outbound: Outbound, sandbox: Sandbox, work_dir: Path
    ) -> FakeJobs:
        made = FakeJobs(outbound, agent_id=agent_id, max_concurrency=config.execution.max_concurrent_jobs)
        self.jobs.append(made)
        return made


def agent_yaml(url: str, data_dir: Path, *, concurrency: int | str = 1, labels: str = "[linux]") -> str:
    return (
        f"orchestratorUrl: {url}\nagentToken: {TOKEN}\nagentId: agent-9\ndataDir: {data_dir}\n"
        f"maxConcurrentJobs: {concurrency}\nlabels: {labels}\nsandbox:\n  enabled: false\n"
        "link:\n  heartbeatIntervalMs: 200\n  maxReconnectDelayMs: 50\n"
    )


@pytest.mark.feature("EXE-36", "OPS-17")
async def test_run_agent_drains_on_sigusr1_and_returns_0(clean_env: None, tmp_path: Path) -> None:
    made = Made()
    async with scripted() as (orch, url):
        path = tmp_path / "agent.yaml"
        path.write_text(agent_yaml(url, tmp_path), encoding="utf-8")
        config = agent_main.load_config(str(path))
        codes: list[int] = []

        async def daemon() -> None:
            codes.append(
                await run_agent(
                    config,
                    agent_id="agent-9",
                    data_dir=tmp_path,
                    sandbox=ProcessSandbox(),
                    make_jobs=made,
                    config_path=str(path),
                    facts=FACTS,
                )
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon)
            conn = await orch.connection(0)
            register = await conn.wait_for(AgentRegister)
            await conn.wait_for(ConfigAck)
            assert "linux" in register.labels
            assert (tmp_path / "work").is_dir()
            os.kill(os.getpid(), signal.SIGUSR1)
            with trio.fail_after(WAIT_S):
                while not codes:  # noqa: ASYNC110 - waits for the daemon task's result
                    await trio.sleep(0.01)
    assert codes == [EXIT_OK]
    assert made.jobs[0].draining


@pytest.mark.feature("OPS-03", "PRO-09")
async def test_sighup_applies_concurrency_by_re_registering_and_keeps_the_old_config_when_invalid(
    clean_env: None, tmp_path: Path
) -> None:
    made = Made()
    async with scripted() as (orch, url):
        path = tmp_path / "agent.yaml"
        path.write_text(agent_yaml(url, tmp_path), encoding="utf-8")
        config = agent_main.load_config(str(path))
        codes: list[int] = []

        async def daemon() -> None:
            codes.append(
                await run_agent(
                    config,
                    agent_id="agent-9",
                    data_dir=tmp_path,
                    sandbox=ProcessSandbox(),
                    make_jobs=made,
                    config_path=str(path),
                    facts=FACTS,
                )
            )

        with capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(daemon)
                conn = await orch.connection(0)
                first = await conn.wait_for(AgentRegister)
                await conn.wait_for(ConfigAck)
                assert first.max_concurrency == 1
                path.write_text(agent_yaml(url, tmp_path, concurrency=3, labels="[linux, gpu]"), "utf-8")
                os.kill(os.getpid(), signal.SIGHUP)
                again = await conn.wait_for(AgentRegister, count=2)
                assert again.max_concurrency == 3
                assert "gpu" not in again.labels
                assert made.jobs[0].max_concurrency == 3
                path.write_text(agent_yaml(url, tmp_path, concurrency=0), "utf-8")
                os.kill(os.getpid(), signal.SIGHUP)
                with trio.fail_after(WAIT_S):
                    while not [e for e in logs if e["event"].startswith("config reload rejected")]:  # noqa: ASYNC110
                        await trio.sleep(0.02)
                assert made.jobs[0].max_concurrency == 3
                os.kill(os.getpid(), signal.SIGTERM)
                with trio.fail_after(WAIT_S):
                    while not codes:  # noqa: ASYNC110 - waits for the daemon task's result
                        await trio.sleep(0.01)
    assert codes == [EXIT_OK]
    restart = [e for e in logs if e["event"].startswith("Config fields changed but require restart")]
    assert restart
    assert "labels" in restart[0]["fields"]
    assert len(conn.of(AgentRegister)) == 2


@pytest.mark.feature("PRO-08")
async def test_run_agent_returns_3_when_the_orchestrator_refuses_the_token(
    clean_env: None, tmp_path: Path
) -> None:
    made = Made()
    async with scripted(auth="reject") as (_orch, url):
        config = config_of(orchestratorUrl=url, agentToken=TOKEN, link={"maxReconnectDelayMs": 50})
        code = await run_agent(
            config,
            agent_id="agent-9",
            data_dir=tmp_path,
            sandbox=ProcessSandbox(),
            make_jobs=made,
            facts=FACTS,
        )
    assert code == EXIT_REFUSED
    assert made.jobs[0].shutdown_grace == 0.0
