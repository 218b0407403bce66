"""Stopping jobs on the agent: graceful and forced cancel, timeouts, drain and shutdown (EXE-13, ISO-10).

Real runner processes under the process sandbox. Whether a step's process group is really gone is
checked in ``/proc`` by the step's unusual ``sleep`` argument. Nothing asserts on wall-clock time;
every wait is bounded only to fail instead of hang.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import trio

from kici.domain.protocol import (
    JobCancel,
    JobDispatch,
    JobReject,
    JobState,
    JobStatus,
    RejectReason,
    StepStatus,
)
from kici.services.agent.job_runner import SHUTDOWN_REASON
from kici.testing.agent_outbound import RecordingOutbound
from tests.unit.test_agent_jobs_helpers import (
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

WAIT_S = 30

STUCK_RUNNER = """
import socket, sys, time
fd = int(sys.argv[sys.argv.index("--ipc-fd") + 1])
sock = socket.socket(fileno=fd)
sock.sendall(b'{"type": "ready"}\\n')
time.sleep(120)
"""


def cancel(dispatch: JobDispatch, *, force: bool = False, reason: str = "cancelled by a test") -> JobCancel:
    return JobCancel(
        message_id="c", run_id=dispatch.run_id, job_id=dispatch.job_id, reason=reason, force=force
    )


def sleeping(argument: str, under: Path) -> bool:
    """Whether a ``sleep <argument>`` process runs in a directory below ``under`` (this test's work dir,
    so a parallel test's sleeper does not count)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "stat").read_text()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if not cwd.startswith(str(under)):
            continue
        zombie = status[status.rfind(")") + 2 :].startswith("Z")
        if cmdline[:2] == [b"sleep", argument.encode()] and not zombie:
            return True
    return False


async def started(outbound: RecordingOutbound, dispatch: JobDispatch, step: str = "wait") -> None:
    with trio.fail_after(WAIT_S):
        await outbound.wait_for(StepStatus, lambda m: m.job_id == dispatch.job_id and m.step_name == step)
        await outbound.wait_until(lambda: "started" in lines_of(outbound, dispatch.job_id))


def hook_steps(outbound: RecordingOutbound, job_id: str) -> list[tuple[str, str]]:
    return [
        (m.step_type.value, m.state.value)
        for m in outbound.of(StepStatus)
        if m.job_id == job_id and m.step_type is not None and m.step_type.value.startswith("hook:")
    ]


@pytest.mark.feature("EXE-13", "EXE-11", "ISO-10")
async def test_graceful_cancel_runs_the_cancel_hooks(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "slow", config={"gracePeriodS": 0.3})
    async with running_manager(tmp_path, outbound) as manager:
        manager.offer(dispatch)
        await started(outbound, dispatch)
        manager.cancel(cancel(dispatch))
        status = await terminal(outbound, dispatch.job_id)
        with trio.fail_after(WAIT_S):
            await manager.wait_idle()

    assert status.state is JobState.CANCELLED
    assert status.data is not None
    assert status.data["error"] == "cancelled by a test"
    states = steps_of(outbound, dispatch.job_id)
    assert states["wait"] == "cancelled"
    assert states["after"] == "cancelled"
    assert hook_steps(outbound, dispatch.job_id) == [
        ("hook:onCancel", "running"),
        ("hook:onCancel", "success"),
        ("hook:cleanup", "running"),
        ("hook:cleanup", "success"),
    ]
    assert "hook on_cancel cancelled" in lines_of(outbound, dispatch.job_id)
    assert not sleeping("61.25", tmp_path)
    assert list((tmp_path / "jobs").iterdir()) == []


@pytest.mark.feature("EXE-13", "ISO-10")
async def test_force_cancel_kills_the_process_group_without_hooks(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "slow")
    async with running_manager(tmp_path, outbound) as manager:
        manager.offer(dispatch)
        await started(outbound, dispatch)
        assert sleeping("61.25", tmp_path)
        manager.cancel(cancel(dispatch, force=True, reason="stop now"))
        status = await terminal(outbound, dispatch.job_id)
        with trio.fail_after(WAIT_S):
            await manager.wait_idle()

    assert status.state is JobState.CANCELLED
    assert status.data is not None
    assert status.data["error"] == "stop now"
    assert hook_steps(outbound, dispatch.job_id) == []
    # The abort reaches the runner just before the kill: it may still report the step that never ran.
    states = steps_of(outbound, dispatch.job_id)
    assert states in ({"wait": "cancelled"}, {"wait": "cancelled", "after": "cancelled"})
    assert not sleeping("61.25", tmp_path)
    assert list((tmp_path / "jobs").iterdir()) == []


@pytest.mark.feature("EXE-13")
async def test_a_second_cancel_forces_a_hanging_cancel_hook(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "stubborn", config={"gracePeriodS": 0.2})
    async with running_manager(tmp_path, outbound) as manager:
        manager.offer(dispatch)
        await started(outbound, dispatch)
        manager.cancel(cancel(dispatch))
        with trio.fail_after(WAIT_S):
            await outbound.wait_until(lambda: "hook-started" in lines_of(outbound, dispatch.job_id))
        assert sleeping("62.5", tmp_path)
        manager.cancel(cancel(dispatch, reason="again"))
        status = await terminal(outbound, dispatch.job_id)
        with trio.fail_after(WAIT_S):
            await manager.wait_idle()

    assert status.state is JobState.CANCELLED
    assert ("hook:onCancel", "cancelled") in hook_steps(outbound, dispatch.job_id)
    assert not sleeping("62.5", tmp_path)
    assert not sleeping("61.75", tmp_path)


@pytest.mark.feature("EXE-13", "EXE-06")
async def test_a_cancel_before_the_runner_started_runs_nothing(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "build")
    async with running_manager(tmp_path, outbound) as manager:
        manager.offer(dispatch)
        manager.cancel(cancel(dispatch))
        status = await terminal(outbound, dispatch.job_id)
        with trio.fail_after(WAIT_S):
            await manager.wait_idle()
    assert status.state is JobState.CANCELLED
    assert outbound.of(StepStatus) == []
    assert not any("Checked out" in line for line in lines_of(outbound, dispatch.job_id))


@pytest.mark.feature("EXE-06", "EXE-26")
async def test_the_job_timeout_fails_the_job_and_skips_hooks(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "slow", config={"timeout": 700, "gracePeriodS": 0.2})
    async with running_manager(tmp_path, outbound) as manager:
        status = await run_one(manager, outbound, dispatch)
    assert status.state is JobState.FAILED
    assert status.data is not None
    assert status.data["error"] == "job_timeout: job exceeded its timeout of 700ms"
    assert status.data["timeoutReason"] == "job_timeout"
    assert hook_steps(outbound, dispatch.job_id) == []
    assert not sleeping("61.25", tmp_path)


@pytest.mark.feature("EXE-06", "EXE-26", "ISO-10")
async def test_the_agent_backstop_stops_a_runner_past_the_deadline(project: Project, tmp_path: Path) -> None:
    stuck = tmp_path / "stuck-python"
    stuck.write_text(f"#!{sys.executable}\n{STUCK_RUNNER}")
    stuck.chmod(stuck.stat().st_mode | stat.S_IEXEC)
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "build", config={"timeout": 300})
    async with running_manager(
        tmp_path / "work", outbound, python=str(stuck), timeout_margin_s=0.1
    ) as manager:
        status = await run_one(manager, outbound, dispatch)
    assert status.state is JobState.FAILED
    assert status.data is not None
    assert status.data["error"] == "job_timeout: job exceeded its timeout of 300ms"
    assert status.data["timeoutReason"] == "job_timeout"


@pytest.mark.feature("EXE-36", "EXE-06")
async def test_drain_finishes_running_jobs_and_takes_no_new_one(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    first = dispatch_for(project, "build")
    later = dispatch_for(project, "fails")
    async with running_manager(tmp_path, outbound) as manager:
        manager.offer(first)
        manager.drain()
        assert manager.draining
        manager.offer(later)
        with trio.fail_after(WAIT_S):
            await manager.wait_idle()
        stopped = await manager.shutdown(grace_s=5)
    assert stopped == []
    assert [m.state for m in outbound.of(JobStatus) if m.job_id == first.job_id][-1] is JobState.SUCCESS
    assert [(r.job_id, r.reason) for r in outbound.of(JobReject)] == [(later.job_id, RejectReason.DRAINING)]


@pytest.mark.feature("EXE-06", "EXE-13")
async def test_shutdown_stops_jobs_still_running_after_the_grace(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "slow")
    async with running_manager(tmp_path, outbound) as manager:
        manager.offer(dispatch)
        await started(outbound, dispatch)
        with trio.fail_after(WAIT_S):
            stopped = await manager.shutdown(grace_s=0.2)
        assert stopped == [dispatch.job_id]
        assert manager.active == 0
    status = [m for m in outbound.of(JobStatus) if m.job_id == dispatch.job_id][-1]
    assert status.state is JobState.FAILED
    assert status.data is not None
    assert status.data["error"] == SHUTDOWN_REASON
    assert hook_steps(outbound, dispatch.job_id) == []
    assert not sleeping("61.25", tmp_path)
    assert list((tmp_path / "jobs").iterdir()) == []


@pytest.mark.feature("EXE-06")
async def test_an_agent_cancelled_mid_job_still_reports_and_cleans_up(
    project: Project, tmp_path: Path
) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "slow")
    async with running_manager(tmp_path, outbound) as manager:
        manager.offer(dispatch)
        await started(outbound, dispatch)
    status = [m for m in outbound.of(JobStatus) if m.job_id == dispatch.job_id][-1]
    assert status.state is JobState.FAILED
    assert status.data is not None
    assert status.data["error"] == "agent stopped before the job finished"
    assert not sleeping("61.25", tmp_path)
    assert list((tmp_path / "jobs").iterdir()) == []
