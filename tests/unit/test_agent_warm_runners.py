"""Pre-started runners (``kici.services.agent.warm``) and the ``job phases`` log line of a job.

The pool is driven with the process sandbox and real runner processes; the job tests offer real
dispatches (real git over HTTP) to a :class:`JobManager` with ``warm_runners=1`` and read what left
the agent and its ``job phases`` line.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from kici.adapters.sandbox.process import ProcessSandbox
from kici.domain.protocol import JobState
from kici.services.agent.job_runner import JobSettings, remove_tree, runner_env
from kici.services.agent.jobs import JobManager, warm_key
from kici.services.agent.warm import WarmKey, WarmRunner, WarmRunners
from kici.testing.agent_outbound import RecordingOutbound
from tests.unit.test_agent_jobs_helpers import (
    TIMEOUT_S,
    Project,
    dispatch_for,
    project,
    run_one,
    running_manager,
    steps_of,
)

__all__ = ["project"]

KEY = warm_key(JobSettings(agent_id="warm-test"))


def pool(root: Path, key: WarmKey = KEY) -> WarmRunners:
    sandbox = ProcessSandbox()
    return WarmRunners(
        sandbox,
        root,
        env=runner_env(sandbox, dict(os.environ)),
        key=key,
        remove=remove_tree,
        retry_delay_s=0.1,
    )


def warm_of(manager: JobManager) -> WarmRunners:
    assert manager.warm is not None
    return manager.warm


async def ready(runners: WarmRunners, count: int = 1) -> None:
    with trio.fail_after(TIMEOUT_S):
        while runners.idle < count:  # noqa: ASYNC110 - the pool has no event to wait on
            await trio.sleep(0.02)


async def entries(path: Path) -> list[str]:
    return await trio.to_thread.run_sync(lambda: sorted(p.name for p in path.iterdir()))


async def reaped(warm: WarmRunner) -> None:
    with trio.fail_after(TIMEOUT_S):
        await warm.finished.wait()
    assert warm.client.process.returncode is not None


@pytest.mark.feature("EXE-06", "ISO-01", "ISO-02")
async def test_a_taken_runner_is_ready_in_a_fresh_empty_directory_and_reaped_on_release(
    tmp_path: Path,
) -> None:
    runners = pool(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(runners.run)
        await ready(runners)
        warm = runners.take()
        assert warm is not None
        assert (warm.taken, warm.alive, warm.key) == (True, True, KEY)
        assert warm.directory.parent == tmp_path
        assert warm.workspace.is_dir()
        assert await entries(warm.workspace) == []
        assert runners.take() is None
        warm.release()
        await reaped(warm)
        assert warm.directory.exists(), "a taken runner's directory is the job's to remove"
        await ready(runners)
        nursery.cancel_scope.cancel()


@pytest.mark.feature("EXE-06", "ISO-01")
async def test_new_settings_and_stop_discard_idle_runners_and_their_directories(tmp_path: Path) -> None:
    runners = pool(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(runners.run)
        await ready(runners)
        stale = runners.waiting()[0]
        host = WarmKey(network="host", python=None, ready_timeout_s=KEY.ready_timeout_s)
        runners.reconfigure(host, 1)
        await reaped(stale)
        assert not stale.directory.exists()
        await ready(runners)
        fresh = runners.waiting()[0]
        assert fresh.key == host
        runners.stop()
        await reaped(fresh)
        assert not fresh.directory.exists()
        assert runners.idle == 0
        assert runners.take() is None
        nursery.cancel_scope.cancel()
    assert await entries(tmp_path) == []


@pytest.mark.feature("EXE-06", "ISO-01")
async def test_a_runner_that_dies_while_idle_is_replaced_and_never_handed_out(tmp_path: Path) -> None:
    runners = pool(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(runners.run)
        await ready(runners)
        dead = runners.waiting()[0]
        os.killpg(dead.client.pid, signal.SIGKILL)
        await reaped(dead)
        assert not dead.directory.exists()
        await ready(runners)
        taken = runners.take()
        assert taken is not None
        assert taken is not dead
        assert taken.alive
        taken.release()
        await reaped(taken)
        nursery.cancel_scope.cancel()


@pytest.mark.feature("EXE-06", "EXE-07", "ISO-02")
async def test_a_job_runs_on_the_pre_started_runner_and_logs_its_phases(
    project: Project, tmp_path: Path
) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "build")
    async with running_manager(tmp_path, outbound, warm_runners=1) as manager:
        await ready(warm_of(manager))
        with capture_logs() as logs:
            status = await run_one(manager, outbound, dispatch)
        await ready(warm_of(manager))
        leftovers = await entries(manager.jobs_root)
    assert status.state is JobState.SUCCESS
    assert steps_of(outbound, dispatch.job_id) == {
        "compile": "success",
        "left": "success",
        "right": "success",
        "use": "success",
    }
    (phases,) = [entry for entry in logs if entry["event"] == "job phases"]
    assert (phases["run_id"], phases["job_id"], phases["state"]) == (
        dispatch.run_id,
        dispatch.job_id,
        "success",
    )
    assert phases["warm_runner"] is True
    assert phases["runner_start_ms"] == 0.0
    for name in ("prepare_ms", "clone_ms", "load_ms", "first_step_ms", "total_ms"):
        assert phases[name] >= 0.0, name
    assert phases["received_at"] > 0
    assert len(leftovers) == 1, "the job's directory is gone; only the refilled runner's is there"
    assert leftovers[0].startswith("warm.")


@pytest.mark.feature("EXE-06")
async def test_without_a_warm_runner_the_phases_show_the_runner_start(
    project: Project, tmp_path: Path
) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "build")
    async with running_manager(tmp_path, outbound) as manager:
        with capture_logs() as logs:
            status = await run_one(manager, outbound, dispatch)
        assert manager.warm is None
    assert status.state is JobState.SUCCESS
    (phases,) = [entry for entry in logs if entry["event"] == "job phases"]
    assert phases["warm_runner"] is False
    assert phases["runner_start_ms"] > 0.0


@pytest.mark.feature("EXE-06", "HOOK-22")
async def test_a_job_that_fails_before_its_runner_starts_hands_the_warm_runner_back(
    project: Project, tmp_path: Path
) -> None:
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "build", repo_url=project.url.replace("acme/app", "acme/gone"))
    async with running_manager(tmp_path, outbound, warm_runners=1) as manager:
        await ready(warm_of(manager))
        taken = warm_of(manager).waiting()[0]
        with capture_logs() as logs:
            status = await run_one(manager, outbound, dispatch)
        await reaped(taken)
        assert not taken.directory.exists()
        await ready(warm_of(manager))
    assert status.state is JobState.FAILED
    assert "clone failed" in (status.data or {}).get("error", "")
    (phases,) = [entry for entry in logs if entry["event"] == "job phases"]
    assert phases["warm_runner"] is False
    assert "runner_start_ms" not in phases


@pytest.mark.feature("EXE-36")
async def test_draining_stops_the_pool(project: Project, tmp_path: Path) -> None:
    outbound = RecordingOutbound()
    async with running_manager(tmp_path, outbound, warm_runners=1) as manager:
        await ready(warm_of(manager))
        idle = warm_of(manager).waiting()[0]
        manager.drain()
        await reaped(idle)
        assert warm_of(manager).idle == 0
        assert await entries(manager.jobs_root) == []
