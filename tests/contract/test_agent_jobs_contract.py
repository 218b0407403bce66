"""The agent's two seams: what the orchestrator dispatches in, what the link carries out.

In: dispatches are built from a compiled lock by the orchestrator's own ``runs.build_run`` (plus what
its dispatcher adds), for a plain job, a failing one, a matrix child and a dynamic-job evaluation;
the agent must run each through a real runner. Out: every frame the agent hands the link must decode
on the orchestrator's side of the wire (``Direction.AGENT_TO_ORCH``) to the same message, every
``job.status`` state must be one the tracker accepts from an agent, the terminal ``data`` must carry
what the tracker reads (error message, duration, outputs), a dynamic evaluation's ``dynamicJobs``
must parse as the orchestrator parses them, and a log chunk must fit the rate limiter's frame burst.
The :class:`RecordingOutbound` spy used by every agent job test passes the ``Outbound`` contract
the real link passes; :class:`JobManager` offers every member of the ``Jobs`` port.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from kici.adapters.sandbox.process import ProcessSandbox
from kici.domain.dynamic import parse_generated_jobs
from kici.domain.execution.run_status import reported_job_input
from kici.domain.protocol import Direction, JobState, JobStatus, LogChunk, StepStatus, decode
from kici.services.agent.jobs import JobManager
from kici.services.agent.ports import Jobs, Outbound
from kici.services.local.plan import plan_workflow
from kici.services.orchestrator.tracker import _duration_ms, _error_message
from kici.testing.agent_outbound import OutboundContract, RecordingOutbound
from tests.unit.test_agent_jobs_helpers import (
    Project,
    dispatch_for,
    project,
    run_one,
    running_manager,
    settings,
)

__all__ = ["project"]

BYTE_BURST = 2_097_152


@pytest.mark.feature("PRO-11")
class TestRecordingOutbound(OutboundContract):
    @pytest.fixture
    def outbound(self) -> Outbound:
        return RecordingOutbound()


@pytest.mark.feature("EXE-36")
def test_the_job_manager_offers_the_whole_jobs_port(tmp_path: Path) -> None:
    manager = JobManager(settings(), RecordingOutbound(), ProcessSandbox(), tmp_path)
    members = {name for name in dir(Jobs) if not name.startswith("_")}
    assert members == {"active", "max_concurrency", "draining", "offer", "cancel", "in_flight"}
    for name in members:
        assert hasattr(manager, name)
        assert not inspect.iscoroutinefunction(getattr(manager, name, None))
    assert (manager.active, manager.max_concurrency, manager.draining, manager.in_flight()) == (
        0,
        1,
        False,
        [],
    )


def _generator_row(project: Project) -> str:
    """The evaluation row of the workflow's one generator (``__dynamic__ci__<index>``)."""
    return plan_workflow(project.lock.workflows[0]).generators[0].name


@pytest.mark.feature("EXE-06", "EXE-19", "PRO-01", "PRO-11")
async def test_what_the_orchestrator_dispatches_comes_back_as_it_reads_it(
    project: Project, tmp_path: Path
) -> None:
    outbound = RecordingOutbound()
    generator = _generator_row(project)
    dispatches = {name: dispatch_for(project, name) for name in ("build", "fails", "matrix (a)", generator)}
    statuses: dict[str, JobStatus] = {}
    async with running_manager(tmp_path, outbound) as manager:
        for name, dispatch in dispatches.items():
            statuses[name] = await run_one(manager, outbound, dispatch)

    for sent in outbound.sent:
        if sent.message is not None:
            assert decode(Direction.AGENT_TO_ORCH, sent.text) == sent.message
    for message in outbound.of(JobStatus):
        assert reported_job_input(message.state.value) is not None
    for sent in outbound.sent:
        if isinstance(sent.message, LogChunk):
            assert len(sent.text.encode()) < BYTE_BURST
    for dispatch in dispatches.values():
        states = [m.state for m in outbound.of(JobStatus) if m.job_id == dispatch.job_id]
        assert states[0] is JobState.RUNNING
        assert len([s for s in states if s is not JobState.RUNNING]) == 1

    build, fails = statuses["build"], statuses["fails"]
    assert build.state is JobState.SUCCESS
    assert _error_message(build.data) is None
    assert isinstance(_duration_ms(build.data), int)
    assert build.data is not None
    assert build.data["outputs"]["compile"] == {"version": "1.2.3"}
    assert fails.state is JobState.FAILED
    assert (_error_message(fails.data) or "").startswith("Step 'bad' failed")
    bad = next(m for m in outbound.of(StepStatus) if m.step_name == "bad" and m.state.value == "failed")
    assert _error_message(bad.data) is not None
    assert statuses["matrix (a)"].state is JobState.SUCCESS

    evaluation = statuses[generator]
    assert evaluation.state is JobState.SUCCESS, evaluation.data
    assert evaluation.data is not None
    assert evaluation.data["dynamicComplete"] is True
    jobs = parse_generated_jobs(evaluation.data["dynamicJobs"], existing={"build"}, upstreams={"build"})
    assert [job.name for job in jobs] == ["gen-a", "gen-b"]
