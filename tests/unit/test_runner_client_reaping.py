"""Ending a runner cheaply and completely (ISO-10): the session scan and the single reap.

``kill_tree`` reads every process's ``/proc/<pid>/stat`` to find the process groups a job left in the
runner's session; these tests pin what that scan finds and that a runner is scanned and killed once
however many exit paths call ``aclose``. They also pin ``bind``, with which a runner started ahead
of its job (the agent's pre-started runners) gets that job's callbacks, and that the sandbox is
forked from the trio thread, which lives as long as the agent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trio

from kici.adapters.sandbox.process import ProcessSandbox
from kici.domain.runner_ipc import ExecuteRequest, StepStart
from kici.services import runner_client
from kici.services.runner_client import AbortLadder, RunnerCallbacks, open_runner, session_members

pytestmark = pytest.mark.feature("ISO-10", "ISO-03")

LEADER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], process_group=0)
print(child.pid, flush=True)
time.sleep(60)
"""


def test_the_session_scan_finds_the_leader_and_a_job_in_its_own_process_group() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", LEADER], stdout=subprocess.PIPE, start_new_session=True, text=True
    ) as leader:
        try:
            assert leader.stdout is not None
            child = int(leader.stdout.readline())
            found = dict(session_members(leader.pid))
            assert found[leader.pid] == leader.pid
            assert found[child] == child, "the child leads a group of its own inside the session"
            assert set(found) == {leader.pid, child}
        finally:
            runner_client.kill_tree(leader.pid, 9)


def test_no_process_is_in_a_session_that_does_not_exist() -> None:
    assert session_members(2**22 + 12345) == []


async def test_a_runner_is_scanned_and_killed_once_whatever_calls_aclose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kills: list[int] = []
    real = runner_client.kill_tree

    def counting(pid: int, sig: int) -> None:
        kills.append(pid)
        real(pid, sig)

    monkeypatch.setattr(runner_client, "kill_tree", counting)
    async with open_runner(ProcessSandbox(), workspace=str(tmp_path), env=dict(os.environ)) as client:
        await client.aclose()
        assert client.process.returncode is not None
        await client.aclose()
    assert kills == [client.pid]


@pytest.mark.feature("ISO-02", "EXE-06")
async def test_a_runner_bound_after_it_started_reports_to_the_job_s_callbacks(tmp_path: Path) -> None:
    (tmp_path / ".kici" / "workflows").mkdir(parents=True)
    (tmp_path / ".kici" / "workflows" / "w.py").write_text(
        "from kici.sdk import job, push, step, workflow\n"
        "j = job('j', runs_on='linux', steps=[step('s', lambda ctx: None)])\n"
        "w = workflow('w', on=push(), jobs=[j])\n"
    )
    started: list[StepStart] = []

    async def on_step_start(message: StepStart) -> None:
        started.append(message)

    async with open_runner(ProcessSandbox(), workspace=str(tmp_path), env=dict(os.environ)) as client:
        client.bind(RunnerCallbacks(on_step_start=on_step_start), AbortLadder(term_wait_s=1.0))
        request = ExecuteRequest(
            workflow_file=".kici/workflows/w.py",
            workflow_name="w",
            job_name="j",
            workspace=str(tmp_path),
        )
        with trio.fail_after(60):
            complete = await client.execute(request)
        with trio.fail_after(60):
            await client.wait_closed()
    assert complete.status == "success", complete.error
    assert [m.step_name for m in started] == ["s"]


@pytest.mark.feature("ISO-07", "ISO-03")
async def test_the_sandbox_is_forked_from_the_trio_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bwrap's ``--die-with-parent`` follows the forking *thread*; trio retires idle worker threads
    after 10 s, so a runner forked from one was killed 10 s later on a quiet agent."""
    forked_in: list[int] = []
    real = subprocess.Popen

    class Recording(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            forked_in.append(threading.get_ident())
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Recording)
    async with open_runner(ProcessSandbox(), workspace=str(tmp_path), env=dict(os.environ)) as client:
        assert client.process.returncode is None
    assert forked_in == [threading.get_ident()]
    assert client.process.returncode is not None
