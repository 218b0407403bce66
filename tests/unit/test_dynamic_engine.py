"""The ``run local`` engine with dynamic jobs and values, against a scripted executor (EXE-19/20/21/34).

The executor answers evaluations (``mode: dynamic`` / ``init``) and jobs by name, so these tests
prove the scheduling of evaluation nodes, group resolution, the frozen snapshot, the determinism
guard's drops and the dynamic matrix plan; the e2e tests run the real runner.
"""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from kici.domain.event_args import EventOptions, simulate_event
from kici.domain.lockfile import (
    ExactLabelMatcher,
    FrozenDict,
    LockDynamicJobFn,
    LockDynamicMatrix,
    LockFile,
    LockGeneratorSource,
    LockJob,
    LockMatrixSource,
    LockSource,
    LockStep,
    LockWorkflow,
    NeedsEntry,
    NeedsGroupEntry,
    PushTrigger,
)
from kici.domain.runner_ipc import ExecuteRequest, InitResult, JobComplete
from kici.services.local.checkout import Overlay
from kici.services.local.engine import (
    INTERRUPTED_REASON,
    JobControl,
    JobEvents,
    LocalRun,
    LocalRunOptions,
    PreparedWorkflow,
    prepare_run,
)
from kici.services.local.results import JobReport, RunReport, StepReport, WorkflowReport

FILE = ".kici/workflows/ci.py"
ON_SKIP = ("success", "skipped")

Answer = Callable[[ExecuteRequest], Awaitable[JobComplete]]


def job(name: str, *needs: Any, steps: tuple[str, ...] = ("step-1",), **extra: Any) -> LockJob:
    return LockJob(
        name=name,
        runs_on=(ExactLabelMatcher(value="linux"),),
        runs_on_pick="deterministic",
        needs=tuple(needs),
        steps=tuple(LockStep(name=s, has_outputs=False) for s in steps),
        **extra,
    )


def generator(index: int, group: str | None = None, *needs: Any) -> LockDynamicJobFn:
    return LockDynamicJobFn(
        source=LockGeneratorSource(file=FILE, index=index),
        group=group,
        needs=tuple(needs) or None,
        result_aware=bool(needs),
    )


def lock_of(*entries: LockJob | LockDynamicJobFn) -> LockFile:
    workflow = LockWorkflow(
        name="ci",
        source=LockSource(file=FILE, export="#ci"),
        content_hash="0" * 64,
        triggers=(PushTrigger(),),
        jobs=entries,
    )
    return LockFile(content_hash="0" * 64, workflows=(workflow,))


def raw(name: str, *needs: Any, **extra: Any) -> dict[str, Any]:
    """A generated job as the runner writes it."""
    return {
        "_type": "static",
        "name": name,
        "runsOn": [{"kind": "label", "value": "linux"}],
        "runsOnPick": "deterministic",
        "needs": list(needs),
        "steps": [{"name": "step-1", "hasOutputs": False}],
        **extra,
    }


def generated(*jobs: dict[str, Any]) -> Answer:
    async def answer(request: ExecuteRequest) -> JobComplete:
        return JobComplete(status="success", dynamic_jobs=jobs, dynamic_complete=True)

    return answer


def failed(message: str, **extra: Any) -> Answer:
    async def answer(request: ExecuteRequest) -> JobComplete:
        return JobComplete(status="failed", error=message, **extra)

    return answer


def succeeded(**extra: Any) -> Answer:
    async def answer(request: ExecuteRequest) -> JobComplete:
        return JobComplete(status="success", **extra)

    return answer


class Executor:
    """Answers by display name; everything unscripted succeeds."""

    def __init__(self, script: Mapping[str, Answer] | None = None) -> None:
        self.script = dict(script or {})
        self.requests: list[ExecuteRequest] = []
        self.controls: dict[str, JobControl] = {}

    def request(self, name: str) -> ExecuteRequest:
        return next(r for r in self.requests if (r.job_display_name or r.job_name) == name)

    @property
    def order(self) -> list[str]:
        return [r.job_display_name or r.job_name for r in self.requests]

    async def execute(
        self, request: ExecuteRequest, workspace: Path, events: JobEvents, control: JobControl
    ) -> JobComplete:
        self.requests.append(request)
        self.controls[request.job_display_name or request.job_name] = control
        await trio.sleep(0.001)
        answer = self.script.get(request.job_display_name or request.job_name)
        return await answer(request) if answer is not None else JobComplete(status="success")


class Recorder:
    def __init__(self) -> None:
        self.finished: list[JobReport] = []

    def workflow_started(self, workflow: str, jobs: Any) -> None: ...

    def job_started(self, workflow: str, job: str, checkout: str) -> None: ...

    def step_started(self, workflow: str, job: str, step: str, step_type: str) -> None: ...

    def log_line(self, workflow: str, job: str, line: str) -> None: ...

    def step_finished(self, workflow: str, job: str, step: StepReport) -> None: ...

    def job_finished(self, workflow: str, job: JobReport) -> None:
        self.finished.append(job)

    def workflow_finished(self, report: WorkflowReport) -> None: ...

    def notice(self, message: str) -> None: ...


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    for args in (
        ["init", "-q"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
    ):
        subprocess.run(["git", "-C", str(root), *args], check=True)
    return root


def engine_for(
    lock: LockFile, repo: Path, executor: Executor, *, job_filter: str | None = None, **extra: Any
) -> tuple[LocalRun, list[PreparedWorkflow]]:
    event = simulate_event("push", EventOptions(branch="main"))
    prepared, _ = prepare_run(lock, event, workflow_filter=None, job_filter=job_filter, raw_inputs={})
    (repo.parent / "runs").mkdir(exist_ok=True)
    settings: dict[str, Any] = {
        "repo_root": repo,
        "kici_dir": repo / ".kici",
        "run_root": repo.parent / "runs",
        "sha": None,
        "overlay": Overlay(),
        "concurrency": 1,
        **extra,
    }
    return LocalRun(LocalRunOptions(**settings), event, Recorder(), executor), prepared


async def run(
    lock: LockFile, repo: Path, executor: Executor, *, job_filter: str | None = None, **extra: Any
) -> RunReport:
    engine, prepared = engine_for(lock, repo, executor, job_filter=job_filter, **extra)
    with trio.fail_after(30):
        return await engine.run(prepared, handle_signals=False)


def jobs_of(report: RunReport) -> dict[str, JobReport]:
    return {j.name: j for w in report.workflows for j in w.jobs}


def statuses(report: RunReport) -> dict[str, str]:
    return {name: j.status for name, j in jobs_of(report).items()}


@pytest.mark.feature("EXE-19", "EXE-21", "SDK-20")
async def test_event_only_generator_adds_its_group_before_the_dependents_run(repo: Path) -> None:
    executor = Executor({"__dynamic__ci__1": generated(raw("build-a"), raw("build-b", "build-a", "lint"))})
    lock = lock_of(
        job("lint"),
        generator(1, "builds"),
        job("report", NeedsGroupEntry(group="builds", run_on=("success",))),
    )
    report = await run(lock, repo, executor)
    assert executor.order == ["lint", "__dynamic__ci__1", "build-a", "build-b", "report"]
    assert list(statuses(report)) == ["lint", "__dynamic__ci__1", "build-a", "build-b", "report"]
    assert set(statuses(report).values()) == {"success"}
    evaluation = executor.request("__dynamic__ci__1")
    assert evaluation.mode == "dynamic"
    assert evaluation.dynamic is not None
    assert (evaluation.dynamic.index, evaluation.dynamic.group, evaluation.dynamic.needs) == (
        1,
        "builds",
        None,
    )
    built = executor.request("build-b")
    assert built.job_name == "build-b"
    assert built.dynamic is not None
    assert (built.dynamic.index, built.dynamic.expected_job_names) == (1, ("build-a", "build-b"))
    assert set(built.upstream_job_statuses) == {"build-a", "lint"}
    assert set(executor.request("report").upstream_job_statuses) == {"build-a", "build-b"}
    assert report.exit_code == 0


@pytest.mark.feature("EXE-21", "SDK-20")
async def test_an_empty_group_lets_its_dependents_run(repo: Path) -> None:
    executor = Executor({"__dynamic__ci__0": generated()})
    lock = lock_of(generator(0, "g"), job("after", NeedsGroupEntry(group="g", run_on=("success",))))
    report = await run(lock, repo, executor)
    assert statuses(report) == {"__dynamic__ci__0": "success", "after": "success"}
    assert executor.request("after").upstream_job_statuses == {}


@pytest.mark.feature("EXE-19", "EXE-21")
async def test_a_failed_evaluation_fails_the_group_and_skips_its_dependents(repo: Path) -> None:
    executor = Executor(
        {"__dynamic__ci__0": failed("DynamicJobFn failed: ValueError: boom", dynamic_failed=True)}
    )
    lock = lock_of(
        generator(0, "g"),
        job("after", NeedsGroupEntry(group="g", run_on=("success",))),
        job("cleanup", NeedsGroupEntry(group="g", run_on=("failed",))),
    )
    report = await run(lock, repo, executor, keep_going=True)
    jobs = jobs_of(report)
    assert list(jobs) == ["__dynamic__ci__0", "dynamic-eval-failed-0", "after", "cleanup"]
    assert jobs["__dynamic__ci__0"].error == "DynamicJobFn failed: ValueError: boom"
    assert jobs["dynamic-eval-failed-0"].error == "dynamic_eval: DynamicJobFn failed: ValueError: boom"
    assert jobs["after"].status == "skipped"
    assert jobs["after"].reason == "upstream_unmet: dynamic-eval-failed-0 (failed)"
    assert jobs["cleanup"].status == "success", "an on-failure dependent runs after a failed evaluation"
    assert report.workflows[0].status == "failure"
    assert report.exit_code == 1


@pytest.mark.feature("EXE-19")
@pytest.mark.parametrize(
    ("jobs", "error"),
    [
        ((raw("a"), raw("a")), "Duplicate job name 'a' in DynamicJobFn output"),
        (
            (raw("static"),),
            "DynamicJobFn generated job 'static', but the workflow already has a job of that name",
        ),
        ((raw("a", "ghost"),), "Job 'a' in DynamicJobFn output needs unknown job 'ghost'"),
        ((raw("a", "b"), raw("b", "a")), "dependency cycle"),
    ],
)
async def test_output_the_run_cannot_take_fails_the_evaluation(
    repo: Path, jobs: tuple[dict[str, Any], ...], error: str
) -> None:
    executor = Executor({"__dynamic__ci__1": generated(*jobs)})
    lock = lock_of(
        job("static"), generator(1, "g"), job("after", NeedsGroupEntry(group="g", run_on=("success",)))
    )
    report = await run(lock, repo, executor, keep_going=True)
    found = jobs_of(report)
    problems = [j.error or "" for j in found.values() if j.status == "failure"]
    assert any(error in text for text in problems), problems
    assert found["after"].status == "skipped"
    assert report.exit_code == 1


@pytest.mark.feature("EXE-20", "SDK-32")
async def test_result_aware_generator_sees_the_frozen_snapshot(repo: Path) -> None:
    async def discover(request: ExecuteRequest) -> JobComplete:
        return JobComplete(status="success", outputs={"step-1": {"services": ["api", "web"]}})

    executor = Executor(
        {
            "discover": discover,
            "__dynamic__ci__1": generated(raw("deploy-api"), raw("deploy-web")),
        }
    )
    lock = lock_of(
        job("discover"),
        generator(1, "deploys", "discover"),
        job("report", NeedsGroupEntry(group="deploys", run_on=ON_SKIP)),
    )
    report = await run(lock, repo, executor)
    assert executor.order == ["discover", "__dynamic__ci__1", "deploy-api", "deploy-web", "report"]
    evaluation = executor.request("__dynamic__ci__1")
    assert evaluation.dynamic is not None
    assert evaluation.dynamic.result_aware is True
    assert evaluation.dynamic.needs == {
        "discover": {"name": "discover", "result": {"services": ["api", "web"]}, "status": "success"}
    }
    deploy = executor.request("deploy-web")
    assert deploy.dynamic is not None
    assert deploy.dynamic.needs == evaluation.dynamic.needs, "the generated job replays the same snapshot"
    assert statuses(report)["report"] == "success"


@pytest.mark.feature("EXE-20", "EXE-21")
async def test_a_skipped_result_aware_evaluation_leaves_an_empty_group(repo: Path) -> None:
    executor = Executor({"discover": failed("boom")})
    lock = lock_of(
        job("discover"),
        generator(1, "deploys", "discover"),
        job("report", NeedsGroupEntry(group="deploys", run_on=ON_SKIP)),
    )
    report = await run(lock, repo, executor, keep_going=True)
    assert statuses(report) == {"discover": "failure", "__dynamic__ci__1": "skipped", "report": "success"}
    assert "__dynamic__ci__1" not in executor.order


@pytest.mark.feature("EXE-19", "EXE-02")
async def test_dropped_siblings_end_drift_dropped_and_their_dependents_skip(repo: Path) -> None:
    executor = Executor(
        {
            "__dynamic__ci__0": generated(raw("a"), raw("b"), raw("c", "b")),
            "a": succeeded(generated_job_names=("a", "c"), dropped_jobs=("b",)),
        }
    )
    report = await run(lock_of(generator(0)), repo, executor, keep_going=True)
    jobs = jobs_of(report)
    assert executor.order == ["__dynamic__ci__0", "a"]
    assert jobs["b"].status == "failure"
    assert jobs["b"].error == "determinism drift: job dropped by re-evaluation on executing agent"
    assert jobs["c"].status == "skipped"
    assert jobs["c"].reason == "upstream_unmet: b (drift_dropped)"
    assert report.workflows[0].status == "failure"


@pytest.mark.feature("EXE-34", "SDK-18")
async def test_dynamic_matrix_and_env_come_from_the_init_evaluation(repo: Path) -> None:
    matrix = LockDynamicMatrix(source=LockMatrixSource(file=FILE, job_name="pkg"))
    executor = Executor(
        {
            "__init__pkg": succeeded(init_result=InitResult(matrix_values=["a", "b"], env={"K": "v"})),
            "__init__none": succeeded(init_result=InitResult(matrix_values=[])),
            "__init__broken": failed("job 'broken': matrix failed: ValueError: x", init_failed=True),
        }
    )
    lock = lock_of(
        job("pkg", matrix=matrix),
        job("none", matrix=LockDynamicMatrix(source=LockMatrixSource(file=FILE, job_name="none"))),
        job("broken", matrix=LockDynamicMatrix(source=LockMatrixSource(file=FILE, job_name="broken"))),
        job("after-pkg", "pkg"),
        job("after-none", "none"),
        job("envy", env=FrozenDict({"A": "1"}), dynamic_env=False),
    )
    report = await run(lock, repo, executor, keep_going=True)
    jobs = jobs_of(report)
    assert executor.order[:3] == ["__init__pkg", "__init__none", "__init__broken"]
    assert executor.request("__init__pkg").mode == "init"
    assert executor.request("__init__pkg").job_name == "pkg"
    child = executor.request("pkg (b)")
    assert (child.job_name, child.matrix, child.env, child.fanout_index, child.fanout_total) == (
        "pkg",
        {"value": "b"},
        {"K": "v"},
        1,
        2,
    )
    assert set(executor.request("after-pkg").upstream_job_statuses) == {"pkg (a)", "pkg (b)"}
    assert jobs["none"].status == "failure"
    assert jobs["none"].error == (
        "matrix_expansion: dynamic matrix of job 'none' produced no combinations (a matrix needs 1 to 256)"
    )
    assert jobs["after-none"].reason == "upstream_unmet: none (failed)"
    assert jobs["broken"].error == "__init__broken failed: job 'broken': matrix failed: ValueError: x"
    assert jobs["__init__pkg"].status == "success"
    assert "__init__envy" not in jobs, "a static env needs no evaluation"
    assert executor.request("envy").env == {"A": "1"}


@pytest.mark.feature("EXE-20", "EXE-21")
async def test_job_filter_keeps_the_generators_a_job_waits_for(repo: Path) -> None:
    executor = Executor({"__dynamic__ci__2": generated(raw("deploy-api"))})
    lock = lock_of(
        job("discover"),
        job("unrelated"),
        generator(2, "deploys", "discover"),
        job(
            "report",
            NeedsEntry(name="discover", run_on=("success",)),
            NeedsGroupEntry(group="deploys", run_on=ON_SKIP),
        ),
    )
    report = await run(lock, repo, executor, job_filter="report")
    assert executor.order == ["discover", "__dynamic__ci__2", "deploy-api", "report"]
    assert set(statuses(report).values()) == {"success"}


@pytest.mark.feature("EXE-14", "EXE-19")
async def test_ctrl_c_during_an_evaluation_cancels_it_and_what_waits_for_its_group(repo: Path) -> None:
    started = trio.Event()
    executor = Executor()

    async def hang(request: ExecuteRequest) -> JobComplete:
        aborted = trio.Event()

        async def abort(force: bool) -> None:
            aborted.set()

        executor.controls[request.job_name].on_abort(abort)
        started.set()
        await aborted.wait()
        return JobComplete(status="cancelled", error="cancelled (Ctrl-C)")

    executor.script["__dynamic__ci__0"] = hang
    lock = lock_of(generator(0, "g"), job("after", NeedsGroupEntry(group="g", run_on=("success",))))
    engine, prepared = engine_for(lock, repo, executor)
    reports: list[RunReport] = []

    async def go() -> None:
        reports.append(await engine.run(prepared, handle_signals=False))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(go)
            await started.wait()
            await engine.interrupt()
    (report,) = reports
    jobs = jobs_of(report)
    assert statuses(report) == {"__dynamic__ci__0": "cancelled", "after": "cancelled"}
    assert jobs["after"].reason == INTERRUPTED_REASON
    assert "dynamic-eval-failed-0" not in jobs, "a cancelled evaluation is not a failed one"
    assert report.exit_code == 130
