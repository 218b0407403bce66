"""The agent's job manager and job runner on real jobs: real git over HTTP, real runner processes.

Each test offers a ``job.dispatch`` built the way the orchestrator builds it to a running
:class:`JobManager` whose link is a :class:`RecordingOutbound`, and checks what left the agent:
``job.ack``, ``job.status`` (running, then exactly one terminal), ``step.status`` per step,
``log.chunk`` batches, heartbeats, ``agent.status``. Steps run under the process sandbox; the
isolation tests under bwrap are in ``test_agent_jobs_isolation.py``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import trio
import trio.testing

from kici.domain.config.schema import (
    AgentConfig,
    AgentScalerConfig,
    ConnectionConfig,
    ExecutionConfig,
    ExecutionMode,
    SandboxNetwork,
)
from kici.domain.execution.steps import PREPARE_STEP_INDEX as PREPARE
from kici.domain.execution_mode import AgentExecution, ContainerRequest
from kici.domain.protocol import (
    AgentStatus,
    InFlightJob,
    JobAck,
    JobCancel,
    JobContext,
    JobDispatch,
    JobHeartbeat,
    JobReject,
    JobState,
    JobStatus,
    LogChunk,
    RejectReason,
    StepState,
    StepStatus,
)
from kici.services.agent.job_runner import JobConfigError, JobSettings, parse_job_spec, unavailable_mode
from kici.testing.agent_outbound import RecordingOutbound
from tests.unit.test_agent_jobs_helpers import (
    API_KEY,
    DB_PASSWORD,
    TOKEN,
    Project,
    dispatch_for,
    lines_of,
    project,
    run_one,
    running_manager,
    steps_of,
    terminal,
)

__all__ = ["project"]


def _job_statuses(outbound: RecordingOutbound, job_id: str) -> list[str]:
    return [m.state.value for m in outbound.of(JobStatus) if m.job_id == job_id]


@pytest.mark.feature("EXE-06", "EXE-07", "EXE-08", "EXE-10", "EXE-22", "EXE-23", "PRO-11", "PRO-13")
async def test_a_multi_step_job_reports_every_phase(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "build")
    async with running_manager(tmp_path, outbound) as manager:
        status = await run_one(manager, outbound, dispatch)
        assert manager.active == 0

    assert status.state is JobState.SUCCESS
    assert _job_statuses(outbound, dispatch.job_id) == ["running", "success"]
    assert outbound.paths_of(JobStatus) == {"send_pinned"}
    assert outbound.paths_of(StepStatus) == {"send_pinned"}
    assert outbound.paths_of(LogChunk) == {"send"}
    # shorter than one heartbeat interval (60 s): `job.status running` was its only liveness report
    assert outbound.of(JobHeartbeat) == []
    assert outbound.paths_of(JobAck) == {"send_direct"}
    first = outbound.sent[0].message
    assert isinstance(first, JobAck)
    assert first.job_id == dispatch.job_id
    # step statuses: running then terminal per step, in step order (the parallel pair in any order)
    steps = [m for m in outbound.of(StepStatus) if m.job_id == dispatch.job_id]
    by_step: dict[tuple[int, str], list[str]] = {}
    for message in steps:
        by_step.setdefault((message.step_index, message.step_name), []).append(message.state.value)
    assert by_step == {
        (0, "compile"): ["running", "success"],
        (1, "left"): ["running", "success"],
        (2, "right"): ["running", "success"],
        (3, "use"): ["running", "success"],
    }
    assert [m.step_name for m in steps[:2]] == ["compile", "compile"]
    assert [m.step_name for m in steps[-2:]] == ["use", "use"]
    assert {m.group_id for m in steps if m.step_name in ("left", "right")} == {"parallel-0"}
    done = {m.step_name: m for m in steps if m.state is StepState.SUCCESS}
    assert done["compile"].data is not None
    assert done["compile"].data["outputs"] == {"version": "1.2.3"}
    assert done["compile"].log_bytes_streamed is not None
    assert done["compile"].log_bytes_streamed > 0
    # logs: batches of at most 50 lines, all 120 lines of step 0 in order, env chained step to step
    chunks = [c for c in outbound.of(LogChunk) if c.job_id == dispatch.job_id]
    assert all(len(c.lines) <= 50 for c in chunks)
    compile_lines = [
        line for line in lines_of(outbound, dispatch.job_id, 0) if line.startswith("compile line")
    ]
    assert compile_lines == [f"compile line {i}" for i in range(120)]
    assert lines_of(outbound, dispatch.job_id, 3) == ["greeting=hello-from-compile level=from-lock"]
    assert any("Created the mirror" in line for line in lines_of(outbound, dispatch.job_id, PREPARE))
    # job.context: where the job ran, the job env from the lock (values masked, no secrets)
    (context,) = outbound.of(JobContext)
    assert context.context.sandbox_type == "process"
    assert context.context.git_ref == "refs/heads/main"
    assert [(v.name, v.value) for v in context.context.env_vars or []] == [("JOB_LEVEL", "from-lock")]
    # terminal data: what the tracker reads
    assert status.data is not None
    assert status.data["outputs"] == {"compile": {"version": "1.2.3"}, "use": {"seen": "1.2.3"}}
    assert [r["name"] for r in status.data["stepResults"]] == ["compile", "left", "right", "use"]
    assert isinstance(status.data["durationMs"], int)
    assert "error" not in status.data
    # after the job: agent.status and no job directory left
    assert outbound.of(AgentStatus)[-1].active_jobs == 0
    assert list((tmp_path / "jobs").iterdir()) == []
    # the terminal status is the last thing the job sent
    last = [s.message for s in outbound.sent if getattr(s.message, "job_id", None) == dispatch.job_id][-1]
    assert last is status


@pytest.mark.feature("EXE-06", "EXE-07", "PRO-11")
async def test_a_failing_step_fails_the_job_and_skips_the_rest(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "fails")
    async with running_manager(tmp_path, outbound) as manager:
        status = await run_one(manager, outbound, dispatch)

    assert status.state is JobState.FAILED
    assert status.data is not None
    assert status.data["error"].startswith("Step 'bad' failed: Command failed with exit code 3")
    assert steps_of(outbound, dispatch.job_id) == {"ok": "success", "bad": "failed", "never": "skipped"}
    bad = next(m for m in outbound.of(StepStatus) if m.step_name == "bad" and m.state is StepState.FAILED)
    assert bad.data is not None
    assert bad.data["error"]["exitCode"] == 3
    assert "about to fail" in lines_of(outbound, dispatch.job_id, 1)
    assert "never printed" not in lines_of(outbound, dispatch.job_id)
    assert any(
        "[kici] Job failed: Step 'bad' failed" in line
        for line in lines_of(outbound, dispatch.job_id, PREPARE)
    )
    assert list((tmp_path / "jobs").iterdir()) == []


@pytest.mark.feature("EXE-06")
async def test_matrix_children_see_their_combination_and_share_the_warm_mirror(
    project: Project, tmp_path: Path
) -> None:
    outbound = RecordingOutbound()
    first, second = dispatch_for(project, "matrix (a)"), dispatch_for(project, "matrix (b)")
    assert second.job_config["matrixValues"] == {"flavor": "b"}
    async with running_manager(tmp_path, outbound) as manager:
        assert (await run_one(manager, outbound, first)).state is JobState.SUCCESS
        requests = len(project.server.requests)
        assert (await run_one(manager, outbound, second)).state is JobState.SUCCESS
    assert "flavor=a index=0 total=2" in lines_of(outbound, first.job_id, 0)
    assert "flavor=b index=1 total=2" in lines_of(outbound, second.job_id, 0)
    assert any("Created the mirror" in line for line in lines_of(outbound, first.job_id, PREPARE))
    assert any("Reusing the mirror" in line for line in lines_of(outbound, second.job_id, PREPARE))
    operational = [s.text for s in outbound.sent if s.path == "stream_log"]
    assert any(second.job_id in line and "warm mirror, already in the mirror" in line for line in operational)
    assert len(project.server.requests) == requests  # same commit: the second job never went to the forge


@pytest.mark.feature("EXE-22", "EXE-06")
async def test_upstream_outputs_reach_the_steps(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(
        project,
        "consume",
        upstream_job_outputs={"build": {"compile": {"version": "9.9.9"}}},
        upstream_job_statuses={"build": JobState.SUCCESS},
    )
    async with running_manager(tmp_path, outbound) as manager:
        status = await run_one(manager, outbound, dispatch)
    assert status.state is JobState.SUCCESS, status.data
    assert "upstream version 9.9.9 status success" in lines_of(outbound, dispatch.job_id, 0)
    assert status.data is not None
    assert status.data["outputs"] == {"read": {"got": "9.9.9"}}


@pytest.mark.feature("SEC-14", "SEC-15", "EXE-10")
async def test_secrets_are_masked_in_every_message(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(
        project,
        "secretive",
        secrets={"API_KEY": API_KEY},
        namespaced_secrets={"db": {"DB_PASSWORD": DB_PASSWORD}},
    )
    async with running_manager(tmp_path, outbound) as manager:
        status = await run_one(manager, outbound, dispatch)

    assert status.state is JobState.FAILED
    lines = lines_of(outbound, dispatch.job_id, 0)
    assert "plain ***" in lines
    assert "b64 ***" in lines
    assert "shell ***" in lines
    assert status.data is not None
    assert status.data["outputs"] == {"leak": {"echo": "***"}}
    assert status.data["error"] == "Step 'leak-error' failed: RuntimeError: boom ***"
    forbidden = [API_KEY, DB_PASSWORD, base64.b64encode(API_KEY.encode()).decode().rstrip("="), TOKEN]
    for text in outbound.texts():
        for secret in forbidden:
            assert secret not in text


@pytest.mark.feature("EXE-06")
async def test_a_runner_crash_is_a_failed_job_with_the_reason(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "crash")
    async with running_manager(tmp_path, outbound) as manager:
        status = await run_one(manager, outbound, dispatch)
    assert status.state is JobState.FAILED
    assert status.data is not None
    assert status.data["error"].startswith("Workflow runner crashed")
    # the step the runner never finished is closed by the agent
    assert steps_of(outbound, dispatch.job_id) == {"die": "failed"}
    assert any(
        "[kici] Job failed: Workflow runner crashed" in line for line in lines_of(outbound, dispatch.job_id)
    )
    assert list((tmp_path / "jobs").iterdir()) == []


@pytest.mark.feature("EXE-06")
async def test_a_bad_job_config_fails_without_running_anything(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "build", config={"source": {"export": "#ci"}, "timeout": "soon"})
    async with running_manager(tmp_path, outbound) as manager:
        status = await run_one(manager, outbound, dispatch)
    assert _job_statuses(outbound, dispatch.job_id) == ["running", "failed"]
    assert status.data is not None
    assert status.data["error"] == "invalid job.dispatch: jobConfig.source.file is required"
    assert outbound.of(StepStatus) == []
    assert any("jobConfig.source.file is required" in line for line in lines_of(outbound, dispatch.job_id))


@pytest.mark.feature("ISO-11", "EXE-06")
async def test_a_job_asking_for_a_container_fails_with_the_reason(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(
        project, "build", config={"container": {"image": "python:3.12", "env": {"A": "1"}}}
    )
    async with running_manager(tmp_path, outbound) as manager:
        status = await run_one(manager, outbound, dispatch)
    assert _job_statuses(outbound, dispatch.job_id) == ["running", "failed"]
    assert status.data is not None
    assert status.data["error"].startswith(
        "execution mode container (the job's container config, image 'python:3.12') is not available on "
        "this agent"
    )
    assert outbound.of(StepStatus) == []


@pytest.mark.feature("ISO-11")
def test_the_job_mode_follows_the_iso_11_rules() -> None:
    base = {"workflowName": "ci", "source": {"file": ".kici/workflows/ci.py"}, "lockJobName": "build"}
    plain = parse_job_spec(base)
    boxed = parse_job_spec({**base, "container": "python:3.12"})
    assert plain.container is None
    assert boxed.container == ContainerRequest(image="python:3.12")
    for execution in (
        AgentExecution(),
        AgentExecution(configured=ExecutionMode.BARE_METAL, sandbox=False),
        AgentExecution(scaler_managed=True, configured=ExecutionMode.BARE_METAL),
    ):
        assert unavailable_mode(execution, plain) is None
        assert "is not available on this agent" in (unavailable_mode(execution, boxed) or "")
    with pytest.raises(JobConfigError, match=r"jobConfig\.container\.image must be a non-empty string"):
        parse_job_spec({**base, "container": {"env": {}}})
    settings = JobSettings.from_config(
        AgentConfig(execution=ExecutionConfig(sandbox=False), scaler=AgentScalerConfig(managed=True)), "a"
    )
    assert settings.execution == AgentExecution(scaler_managed=True, sandbox=False)


@pytest.mark.feature("EXE-06", "HOOK-22")
async def test_a_bad_clone_token_fails_the_job_and_never_leaks(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    bad = "ghs_WrongToken9876543210"
    dispatch = dispatch_for(project, "build", token=bad)
    async with running_manager(tmp_path, outbound) as manager:
        status = await run_one(manager, outbound, dispatch)
    assert status.state is JobState.FAILED
    assert status.data is not None
    assert status.data["error"].startswith("clone failed: could not fetch")
    encoded = base64.b64encode(f"x-access-token:{bad}".encode()).decode()
    for text in outbound.texts():
        assert bad not in text
        assert encoded not in text
        assert TOKEN not in text
    assert outbound.of(StepStatus) == []


@pytest.mark.feature("EXE-36", "PRO-10", "EXE-27")
async def test_capacity_gate_rejects_busy_and_draining(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    slow = dispatch_for(project, "slow")
    second = dispatch_for(project, "build")
    async with running_manager(tmp_path, outbound, max_concurrency=1) as manager:
        manager.offer(slow)
        assert manager.active == 1
        assert manager.in_flight() == [InFlightJob(job_id=slow.job_id, run_id=slow.run_id)]
        manager.offer(second)
        rejected = outbound.of(JobReject)
        assert [(r.job_id, r.reason) for r in rejected] == [(second.job_id, RejectReason.BUSY)]
        busy_status = outbound.sent[-1].message
        assert isinstance(busy_status, AgentStatus)
        assert busy_status.active_jobs == 1
        # the same dispatch again (a lost ack) is acknowledged, not run twice
        manager.offer(slow)
        assert [a.job_id for a in outbound.of(JobAck)] == [slow.job_id, slow.job_id]
        assert manager.active == 1
        manager.drain()
        manager.offer(second)
        assert outbound.of(JobReject)[-1].reason is RejectReason.DRAINING
        await outbound.wait_for(StepStatus, lambda m: m.step_name == "wait")
        manager.cancel(_cancel(slow, force=True))
        await terminal(outbound, slow.job_id)
        with trio.fail_after(30):
            await manager.wait_idle()
        assert manager.in_flight() == []
    assert second.job_id not in {a.job_id for a in outbound.of(JobAck)}


@pytest.mark.feature("EXE-06", "PRO-11")
async def test_heartbeats_flow_while_the_job_runs(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "slow")
    async with running_manager(tmp_path, outbound, job_heartbeat_interval_ms=20) as manager:
        manager.offer(dispatch)
        with trio.fail_after(30):
            await outbound.wait_for(StepStatus, lambda m: m.step_name == "wait")
            await outbound.wait_until(lambda: len(outbound.of(JobHeartbeat)) >= 3)
        manager.cancel(_cancel(dispatch, force=True))
        await terminal(outbound, dispatch.job_id)
        with trio.fail_after(30):
            await manager.wait_idle()
        beats = len(outbound.of(JobHeartbeat))
        await trio.sleep(0.1)
        assert len(outbound.of(JobHeartbeat)) == beats
    assert {h.job_id for h in outbound.of(JobHeartbeat)} == {dispatch.job_id}
    assert outbound.paths_of(JobHeartbeat) == {"send"}
    # the first beat comes an interval after `job.status running`, which already stamped liveness
    kinds = [type(sent.message) for sent in outbound.sent]
    assert kinds.index(JobStatus) < kinds.index(JobHeartbeat)


@pytest.mark.feature("PRO-13", "EXE-10")
async def test_a_step_log_over_the_budget_is_truncated(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "build", max_log_size_bytes=300)
    async with running_manager(tmp_path, outbound) as manager:
        status = await run_one(manager, outbound, dispatch)
    assert status.state is JobState.SUCCESS
    lines = lines_of(outbound, dispatch.job_id, 0)
    assert lines[-1] == "[TRUNCATED: log output exceeded 300 bytes]"
    assert "compile line 119" not in lines
    compile_done = next(
        m for m in outbound.of(StepStatus) if m.step_name == "compile" and m.state is StepState.SUCCESS
    )
    assert compile_done.log_bytes_streamed is not None
    assert compile_done.log_bytes_streamed >= 300


def _cancel(dispatch: JobDispatch, *, force: bool, reason: str = "cancelled by test") -> JobCancel:
    return JobCancel(
        message_id="c-1", run_id=dispatch.run_id, job_id=dispatch.job_id, reason=reason, force=force
    )


@pytest.mark.feature("EXE-06")
def test_job_config_parsing_names_the_bad_key() -> None:
    good = {
        "workflowName": "ci",
        "source": {"file": "sub/.kici/workflows/ci.py", "export": "#ci"},
        "lockJobName": "test",
        "jobName": "test (a)",
        "matrixValues": {"value": "a"},
        "timeout": 5000,
        "gracePeriodS": 2,
        "env": {"A": "1"},
        "jobEnv": {"A": "2", "B": 3},
    }
    spec = parse_job_spec(good)
    assert (spec.kici_dir, spec.job_name, spec.lock_job_name) == ("sub/.kici", "test (a)", "test")
    assert spec.env == {"A": "2", "B": "3"}
    assert spec.timeout_ms == 5000
    assert spec.grace_period_s == 2.0
    dynamic = parse_job_spec({**good, "dynamicJobFn": True, "generatorIndex": 1, "group": "__dynamic__1"})
    assert dynamic.mode == "dynamic"
    assert dynamic.dynamic is not None
    assert dynamic.dynamic.group is None
    for bad, message in [
        ({**good, "timeout": True}, "jobConfig.timeout must be an integer"),
        ({**good, "timeout": 0}, "jobConfig.timeout must be > 0"),
        ({**good, "workflowName": ""}, "jobConfig.workflowName is required"),
        ({**good, "source": {"file": 3}}, "jobConfig.source.file is required"),
        ({**good, "checkMode": "maybe"}, "jobConfig.checkMode must be one of"),
        ({**good, "lockJobName": None, "jobName": None}, "jobConfig.jobName is required"),
        ({**good, "dynamicJobFn": True}, "jobConfig.generatorIndex is required"),
        ({**good, "initOnly": True}, "jobConfig.targetJobName is required"),
        ({**good, "env": ["A"]}, "jobConfig.env must be an object"),
    ]:
        with pytest.raises(JobConfigError, match=message.replace("(", r"\(")):
            parse_job_spec(bad)
    assert json.dumps(good)  # the config stays plain JSON


@pytest.mark.feature("EXE-36")
async def test_wait_idle_also_waits_for_jobs_accepted_while_waiting(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    first, second = dispatch_for(project, "matrix (a)"), dispatch_for(project, "matrix (b)")
    idle_after: list[int] = []
    async with (
        running_manager(tmp_path, outbound, max_concurrency=2) as manager,
        trio.open_nursery() as nursery,
    ):
        manager.offer(first)

        async def waiter() -> None:
            await manager.wait_idle()
            idle_after.append(len([m for m in outbound.of(JobStatus) if m.state is JobState.SUCCESS]))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert idle_after == []
        manager.offer(second)
        assert manager.active == 2
        with trio.fail_after(60):
            await manager.wait_idle()
    assert idle_after == [2]


@pytest.mark.feature("OPS-04", "EXE-36")
def test_settings_come_from_the_agent_config() -> None:
    token = "kat_" + "ab" * 32
    config = AgentConfig(
        connection=ConnectionConfig(token=token),
        execution=ExecutionConfig(
            max_concurrent_jobs=3, sandbox_network=SandboxNetwork.HOST, job_heartbeat_interval_ms=1234
        ),
    )
    job_settings = JobSettings.from_config(config, "agent-7")
    assert (job_settings.agent_id, job_settings.max_concurrency) == ("agent-7", 3)
    assert (job_settings.network, job_settings.job_heartbeat_interval_ms) == ("host", 1234)
    assert job_settings.masked == (token,)
    assert token not in repr(job_settings)
    assert JobSettings.from_config(AgentConfig(), "a").network == "isolated"
