"""The ``run local`` engine against a scripted executor: needs gating, failure policy, Ctrl-C, masking.

The executor is the engine's port to the runner process; here it is replaced by a script that
answers per job name, so these tests prove the scheduling decisions. The e2e tests run the real
runner in real sandboxes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from kici.domain.event_args import EventOptions, simulate_event
from kici.domain.lockfile import (
    DispatchTrigger,
    ExactLabelMatcher,
    FrozenDict,
    InputDescriptor,
    LockFile,
    LockJob,
    LockSource,
    LockStaticMatrix,
    LockStep,
    LockWorkflow,
    NeedsEntry,
    PushTrigger,
    freeze_json,
)
from kici.domain.runner_ipc import (
    ExecuteRequest,
    JobComplete,
    RuleResultData,
    StepComplete,
    StepError,
    StepResult,
    StepStart,
)
from kici.services.local.checkout import Overlay
from kici.services.local.engine import (
    FAILED_TO_START_REASON,
    JobControl,
    JobEvents,
    LocalRun,
    LocalRunError,
    LocalRunOptions,
    prepare_run,
)
from kici.services.local.results import JobReport, RunReport, StepReport, WorkflowReport

pytestmark = pytest.mark.feature("CLI-08")


def job(name: str, *needs: str | NeedsEntry, matrix: Any = None, max_parallel: int | None = None) -> LockJob:
    return LockJob(
        name=name,
        runs_on=(ExactLabelMatcher(value="kici:os:linux"),),
        runs_on_pick="deterministic",
        needs=tuple(needs),
        steps=(LockStep(name="run", has_outputs=False),),
        matrix=LockStaticMatrix(values=freeze_json(matrix)) if matrix is not None else None,
        max_parallel=max_parallel,
    )


def lock_of(*jobs: LockJob, triggers: tuple[Any, ...] = (PushTrigger(),), name: str = "ci") -> LockFile:
    workflow = LockWorkflow(
        name=name,
        source=LockSource(file=".kici/workflows/ci.py", export="#ci"),
        content_hash="0" * 64,
        triggers=triggers,
        jobs=jobs,
    )
    return LockFile(content_hash="0" * 64, workflows=(workflow,))


Script = Callable[[ExecuteRequest, JobEvents, JobControl], Any]


class ScriptedExecutor:
    """Answers each job by its display name; records what ran and the peak concurrency."""

    def __init__(self, script: Mapping[str, Script] | None = None, default: str = "success") -> None:
        self.script = dict(script or {})
        self.default = default
        self.requests: list[ExecuteRequest] = []
        self.running = 0
        self.peak = 0
        self.aborts: list[tuple[str, bool]] = []

    async def execute(
        self, request: ExecuteRequest, workspace: Path, events: JobEvents, control: JobControl
    ) -> JobComplete:
        name = request.job_display_name or request.job_name
        self.requests.append(request)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            events.step_started(StepStart(step_index=0, step_name="run"))
            await trio.sleep(0.01)
            action = self.script.get(name)
            if action is not None:
                result = await action(request, events, control)
                if result is not None:
                    return result
            status = self.default
            events.step_finished(
                StepComplete(
                    step_index=0, status="success" if status == "success" else "failed", duration_ms=1
                )
            )
            return JobComplete(
                status=status, step_results=(StepResult(name="run", status="success", duration_ms=1),)
            )  # type: ignore[arg-type]
        finally:
            self.running -= 1


class Recorder:
    """A RunObserver that keeps everything it is told."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.finished: list[JobReport] = []
        self.notices: list[str] = []

    def workflow_started(self, workflow: str, jobs: Any) -> None: ...

    def job_started(self, workflow: str, job: str, checkout: str) -> None: ...

    def step_started(self, workflow: str, job: str, step: str, step_type: str) -> None: ...

    def log_line(self, workflow: str, job: str, line: str) -> None:
        self.lines.append(f"[{job}] {line}")

    def step_finished(self, workflow: str, job: str, step: StepReport) -> None:
        if step.error:
            self.lines.append(step.error)

    def job_finished(self, workflow: str, job: JobReport) -> None:
        self.finished.append(job)

    def workflow_finished(self, report: WorkflowReport) -> None: ...

    def notice(self, message: str) -> None:
        self.notices.append(message)


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


def options(repo: Path, **extra: Any) -> LocalRunOptions:
    sha = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    run_root = repo.parent / "runs"
    run_root.mkdir(exist_ok=True)
    defaults: dict[str, Any] = {
        "repo_root": repo,
        "kici_dir": repo / ".kici",
        "run_root": run_root,
        "sha": sha,
        "overlay": Overlay(),
        "concurrency": 4,
    }
    defaults.update(extra)
    return LocalRunOptions(**defaults)


async def run(
    lock: LockFile, repo: Path, executor: ScriptedExecutor, *, job_filter: str | None = None, **extra: Any
) -> tuple[RunReport, Recorder]:
    event = simulate_event("push", EventOptions(branch="main"))
    prepared, _ = prepare_run(lock, event, workflow_filter=None, job_filter=job_filter, raw_inputs={})
    recorder = Recorder()
    engine = LocalRun(options(repo, **extra), event, recorder, executor)
    report = await engine.run(prepared, handle_signals=False)
    return report, recorder


def statuses(report: RunReport) -> dict[str, str]:
    return {j.name: j.status for w in report.workflows for j in w.jobs}


def failing(message: str = "boom") -> Script:
    async def act(request: ExecuteRequest, events: JobEvents, control: JobControl) -> JobComplete:
        events.step_finished(
            StepComplete(step_index=0, status="failed", duration_ms=1, error=StepError(message=message))
        )
        return JobComplete(status="failed", error=message)

    return act


@pytest.mark.feature("EXE-16")
async def test_needs_order_and_success(repo: Path) -> None:
    executor = ScriptedExecutor()
    report, _ = await run(lock_of(job("a"), job("b", "a"), job("c", "b")), repo, executor)
    assert [r.job_name for r in executor.requests] == ["a", "b", "c"]
    assert statuses(report) == {"a": "success", "b": "success", "c": "success"}
    assert report.exit_code == 0
    assert report.to_json()["success"] is True
    assert not (repo.parent / "runs").exists(), "a run without kept checkouts leaves nothing behind"


@pytest.mark.feature("EXE-16")
async def test_first_failure_cancels_unstarted_jobs(repo: Path) -> None:
    executor = ScriptedExecutor({"a": failing()})
    report, _ = await run(lock_of(job("a"), job("b", "a"), job("c")), repo, executor, concurrency=1)
    assert statuses(report) == {"a": "failure", "b": "skipped", "c": "cancelled"}
    reasons = {j.name: j.reason for j in report.workflows[0].jobs}
    assert reasons == {"a": None, "b": "upstream_unmet: a (failed)", "c": FAILED_TO_START_REASON}
    assert report.exit_code == 1
    kept = report.workflows[0].jobs[0].checkout_dir
    assert kept is not None
    assert await trio.Path(kept).is_dir(), "a failed job's checkout is kept"


@pytest.mark.feature("EXE-16")
async def test_keep_going_skips_dependents_and_runs_the_rest(repo: Path) -> None:
    always = NeedsEntry(
        name="a", run_on=("success", "failed", "cancelled", "skipped", "timed_out_stale", "drift_dropped")
    )
    executor = ScriptedExecutor({"a": failing()})
    lock = lock_of(job("a"), job("b", "a"), job("c"), job("d", "b"), job("notify", always))
    report, _ = await run(lock, repo, executor, keep_going=True, concurrency=1)
    assert statuses(report) == {
        "a": "failure",
        "b": "skipped",
        "c": "success",
        "d": "skipped",
        "notify": "success",
    }
    reasons = {j.name: j.reason for j in report.workflows[0].jobs}
    assert reasons["b"] == "upstream_unmet: a (failed)"
    notify = next(r for r in executor.requests if r.job_name == "notify")
    assert notify.upstream_job_statuses == {"a": "failed"}


@pytest.mark.feature("EXE-16", "SDK-17")
async def test_matrix_children_fan_out_and_gate_their_dependents(repo: Path) -> None:
    executor = ScriptedExecutor()
    lock = lock_of(job("test", matrix={"py": ["3.11", "3.12"], "os": ["linux"]}), job("deploy", "test"))
    report, _ = await run(lock, repo, executor)
    names = [r.job_display_name for r in executor.requests]
    assert sorted(names[:2]) == ["test (linux, 3.11)", "test (linux, 3.12)"]
    assert names[2] == "deploy"
    first = next(r for r in executor.requests if r.job_display_name == "test (linux, 3.11)")
    assert (first.job_name, first.matrix, first.fanout_index, first.fanout_total) == (
        "test",
        {"os": "linux", "py": "3.11"},
        0,
        2,
    )
    assert report.workflows[0].jobs[0].to_json()["matrixValues"] == {"os": "linux", "py": "3.11"}
    assert set(executor.requests[2].upstream_job_statuses) == {"test (linux, 3.11)", "test (linux, 3.12)"}


@pytest.mark.parametrize("limit", [1, 2, 3, 6])
async def test_concurrency_limit_is_respected(repo: Path, limit: int) -> None:
    """A job holds until ``limit`` jobs run at once (or every job has started): an engine running
    more would exceed the limit, one running fewer would never release them."""
    executor = ScriptedExecutor()

    async def hold(request: ExecuteRequest, events: JobEvents, control: JobControl) -> None:
        while executor.running < limit and len(executor.requests) < 6:  # noqa: ASYNC110 - polls two counters
            await trio.sleep(0.001)

    executor.script = {f"j{i}": hold for i in range(6)}
    with trio.fail_after(20):
        report, _ = await run(lock_of(*(job(f"j{i}") for i in range(6))), repo, executor, concurrency=limit)
    assert executor.peak == limit
    assert set(statuses(report).values()) == {"success"}


async def test_job_filter_runs_the_job_and_its_upstreams(repo: Path) -> None:
    executor = ScriptedExecutor()
    report, _ = await run(
        lock_of(job("a"), job("b", "a"), job("c"), job("d", "b")), repo, executor, job_filter="b"
    )
    assert statuses(report) == {"a": "success", "b": "success"}
    with pytest.raises(LocalRunError, match='No job named "zzz"'):
        await run(lock_of(job("a")), repo, executor, job_filter="zzz")


@pytest.mark.feature("CLI-11")
async def test_secrets_reach_the_request_and_are_masked_in_every_line(repo: Path) -> None:
    secret = "hunter2-very-secret"

    async def leak(request: ExecuteRequest, events: JobEvents, control: JobControl) -> JobComplete:
        assert request.secrets == {"TOKEN": secret}
        events.log_line(0, f"token is {secret}")
        return JobComplete(status="failed", error=f"bad token {secret}")

    executor = ScriptedExecutor({"a": leak})
    report, recorder = await run(lock_of(job("a")), repo, executor, secrets={"TOKEN": secret})
    assert recorder.lines == ["[a] token is ***"]
    assert secret not in str(report.to_json())
    assert report.workflows[0].jobs[0].error == "bad token ***"


@pytest.mark.feature("EXE-14")
async def test_interrupt_aborts_running_jobs_gracefully_then_forcefully(repo: Path) -> None:
    started = trio.Event()
    aborts: list[bool] = []

    async def slow(request: ExecuteRequest, events: JobEvents, control: JobControl) -> JobComplete:
        done = trio.Event()

        async def abort(force: bool) -> None:
            aborts.append(force)
            if force:
                done.set()

        control.on_abort(abort)
        started.set()
        await done.wait()
        return JobComplete(status="cancelled", error="cancelled")

    executor = ScriptedExecutor({"a": slow})
    event = simulate_event("push", EventOptions(branch="main"))
    lock = lock_of(job("a"), job("b", "a"), job("c"))
    prepared, _ = prepare_run(lock, event, workflow_filter=None, job_filter=None, raw_inputs={})
    engine = LocalRun(options(repo, concurrency=1), event, Recorder(), executor)
    result: list[RunReport] = []
    async with trio.open_nursery() as nursery:

        async def go() -> None:
            result.append(await engine.run(prepared, handle_signals=False))

        nursery.start_soon(go)
        await started.wait()
        await engine.interrupt()
        await trio.sleep(0.05)
        await engine.interrupt()
    report = result[0]
    assert aborts == [False, True]
    assert statuses(report) == {"a": "cancelled", "b": "cancelled", "c": "cancelled"}
    assert report.interrupted
    assert report.exit_code == 130


@pytest.mark.feature("SDK-12")
async def test_inputs_are_validated_before_any_job_runs(repo: Path) -> None:
    inputs = FrozenDict({"retries": InputDescriptor(type="integer", optional=False, nullable=False)})
    lock = lock_of(job("a"), triggers=(DispatchTrigger(inputs=inputs),))
    event = simulate_event("dispatch", EventOptions())
    with pytest.raises(LocalRunError, match="expected integer"):
        prepare_run(lock, event, workflow_filter=None, job_filter=None, raw_inputs={"retries": "abc"})
    prepared, _ = prepare_run(lock, event, workflow_filter=None, job_filter=None, raw_inputs={"retries": "3"})
    assert prepared[0].dispatch_inputs == {"retries": 3}


async def test_rule_skipped_job_reports_skipped_but_lets_dependents_run(repo: Path) -> None:
    async def ruled(request: ExecuteRequest, events: JobEvents, control: JobControl) -> JobComplete:
        rule = RuleResultData(label="only main", passed=False, duration_ms=0)
        return JobComplete(status="success", rule_results=(rule,))

    executor = ScriptedExecutor({"a": ruled})
    report, _ = await run(lock_of(job("a"), job("b", "a")), repo, executor)
    assert statuses(report) == {"a": "skipped", "b": "success"}
    assert report.workflows[0].jobs[0].reason == "rule 'only main' did not pass"
    assert report.exit_code == 0


async def test_keep_keeps_successful_checkouts(repo: Path) -> None:
    report, _ = await run(lock_of(job("a")), repo, ScriptedExecutor(), keep=True)
    kept = report.workflows[0].jobs[0].checkout_dir
    assert kept is not None
    assert await trio.Path(kept).is_dir()
    assert report.exit_code == 0
