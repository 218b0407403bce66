"""The ``kici run local`` engine: matched workflows → needs graph → one sandboxed runner per job (CLI-08).

Per matched workflow (one after the other, so their logs do not interleave), the jobs go through
the pure needs scheduler of :mod:`kici.domain.execution.needs` (EXE-16): roots start at once,
a finished job's status decides its dependents (``runOn`` gating, skip cascade), at most
``concurrency`` jobs are in flight. Each job gets its own isolated checkout
(:mod:`kici.services.local.checkout`) and its own runner process through a :class:`JobExecutor`.

Failure policy (00 §3.3): without ``--keep-going`` no new job starts after the first failure.
The failed job's dependents are ``skipped`` as the needs gate decides (their upstream failed);
every other job that has not started is reported ``cancelled``, all of them at once, so their
own dependents are cancelled too rather than skipped, as in a run cancel (P-CAN4). Ctrl-C
(EXE-14): the first one cancels gracefully — unstarted jobs are cancelled, a job whose runner
has not started yet is cancelled without starting it (10 §6), and every running runner gets
``abort{force: false}``, so cancel and cleanup hooks run — and the second one forces
(``abort{force: true}``, the runner's process group is killed, hooks die). The run then reports
``interrupted`` (exit 130).

Dynamic jobs and values (EXE-19/20/21/34) run through the same runners, in their special modes
(10 §4): first the ``__init__<job>`` evaluation of every job with a dynamic matrix or env, one after
the other, so the job can be planned (:mod:`kici.services.local.plan`); then the scheduler drives the
``__dynamic__<workflow>__<index>`` evaluation nodes like jobs — event-only ones start with the roots,
result-aware ones when their needs are terminal, with the frozen upstream snapshot. Their output
becomes lock jobs (:mod:`kici.domain.dynamic`) that join the run as the generator's group; each
generated job's runner re-evaluates its generator and reports what the determinism guard saw, and
dropped siblings that have not started yet end ``drift_dropped``. A failed evaluation fails the
group (the synthetic ``dynamic-eval-failed-<index>`` job), so the group's dependents skip; a skipped
one leaves the group empty, so they run. Jobs still open when nothing can move any more (a group
that was never resolved) are reported cancelled.

Checkouts of successful jobs are deleted when the job ends; failed, cancelled and ``--keep`` ones
are kept and their path is reported. The run directory itself is removed when nothing in it is kept.

Check mode (``--check``, CLI-09 / EXE-09) is the runner's ``runMode``: it runs only the ``check`` of
checked steps and skips plain ones. A step reported ``would change`` is drift; under
``check-fail-on-drift`` a workflow with drift fails with the domain's drift reason, unless a job
failed, which decides first (see :mod:`kici.services.local.results` for the exit codes).
"""

from __future__ import annotations

import math
import shutil
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from kici.domain.dynamic import (
    DEFAULT_EVAL_TIMEOUT_MS,
    DRIFT_DROPPED_REASON,
    DYNAMIC_EVAL,
    INIT_VALUE_TIMEOUT_MS,
    DynamicEvalError,
    GuardVerdict,
    determinism_guard,
    freeze_snapshot,
    init_job_name,
    needs_view_json,
    parse_generated_jobs,
)
from kici.domain.event_args import InputError, coerce_inputs
from kici.domain.events import SimulatedEvent, WorkflowDecision
from kici.domain.execution.needs import (
    DuplicateJobError,
    GroupNeed,
    InvalidNeedError,
    NameNeed,
    SchedulerOutcome,
    SchedulerState,
    apply_terminal,
    apply_terminals,
    eval_failed_job_name,
    fail_group_eval,
    insert_edges_for_run,
    resolve_group_edges,
)
from kici.domain.execution.run_status import compute_run_status
from kici.domain.execution.states import CheckMode, JobStatus, RunStatus
from kici.domain.lockfile import (
    DispatchTrigger,
    FrozenDict,
    InputDescriptor,
    LockFile,
    LockJob,
    LockParallelStep,
    LockWorkflow,
    ScheduleTrigger,
)
from kici.domain.runner_ipc import (
    DynamicRequest,
    ExecuteRequest,
    JobComplete,
    RunMode,
    StepComplete,
    StepStart,
    event_to_json,
)
from kici.domain.triggers import match_lock
from kici.sdk.masking import Masker
from kici.services.local.checkout import CheckoutError, Overlay, create_checkout, slug
from kici.services.local.plan import (
    Generator,
    InitOutcome,
    Origin,
    PlannedJob,
    UnknownJobError,
    WorkflowPlan,
    is_flat,
    needs_init,
    plan_generated,
    plan_workflow,
)
from kici.services.local.results import (
    DRIFT_OUTCOME,
    JobReport,
    JobState,
    RunObserver,
    RunReport,
    StepReport,
    WorkflowReport,
    WorkflowState,
)

FAILED_TO_START_REASON = "not started: an earlier job failed (use --keep-going to run independent jobs)"
INTERRUPTED_REASON = "not started: the run was interrupted (Ctrl-C)"
UNRESOLVED_GROUP_REASON = "not started: the dynamic group it needs was never resolved"
EVALUATE_STEP = "evaluate"


class LocalRunError(RuntimeError):
    """The run cannot start (bad ``--input``, unknown ``--job``); nothing has run yet (exit 1)."""


class JobControl:
    """The engine's handle on one running job: the executor registers how to abort it."""

    def __init__(self) -> None:
        self._abort: Callable[[bool], Awaitable[None]] | None = None
        self.requested: bool | None = None

    def on_abort(self, abort: Callable[[bool], Awaitable[None]]) -> None:
        self._abort = abort

    async def abort(self, force: bool) -> None:
        self.requested = force if self.requested is None else (self.requested or force)
        if self._abort is not None:
            await self._abort(force)


class JobEvents(Protocol):
    """What an executor reports while a job runs (all masked by the engine before display)."""

    def step_started(self, message: StepStart) -> None: ...

    def log_line(self, step_index: int, line: str) -> None: ...

    def step_finished(self, message: StepComplete) -> None: ...


class JobExecutor(Protocol):
    """Runs one job in a runner process over ``workspace``.

    Returns the runner's ``job.complete``, or one synthesized for a runner that crashed or never
    started (``failed``, or ``cancelled`` when an abort was under way).
    """

    async def execute(
        self, request: ExecuteRequest, workspace: Path, events: JobEvents, control: JobControl
    ) -> JobComplete: ...


@attrs.frozen(kw_only=True)
class LocalRunOptions:
    repo_root: Path
    kici_dir: Path
    run_root: Path
    sha: str | None
    overlay: Overlay
    concurrency: int = 1
    keep_going: bool = False
    keep: bool = False
    secrets: Mapping[str, str] = attrs.field(factory=dict)
    default_step_timeout_ms: int | None = None
    run_mode: RunMode = "apply"


@attrs.frozen(kw_only=True)
class PreparedWorkflow:
    plan: WorkflowPlan
    decision: WorkflowDecision
    dispatch_inputs: Mapping[str, Any]
    job_filter: str | None = None


def _descriptors(workflow: LockWorkflow, decision: WorkflowDecision) -> Mapping[str, InputDescriptor] | None:
    if decision.matched_trigger is None:
        return None
    trigger = workflow.triggers[decision.matched_trigger]
    if isinstance(trigger, DispatchTrigger | ScheduleTrigger):
        return trigger.inputs
    return None


def prepare_run(
    lock: LockFile,
    event: SimulatedEvent,
    *,
    workflow_filter: str | None,
    job_filter: str | None,
    raw_inputs: Mapping[str, str],
) -> tuple[list[PreparedWorkflow], list[WorkflowDecision]]:
    """Match, filter, validate inputs and plan every workflow before any job runs.

    Returns the prepared workflows and every decision (for the skip report). Raises
    :class:`LocalRunError` on an ``--input`` problem, or when no matched workflow has the
    ``--job``: both must fail before the first job starts. ``--job`` narrows each workflow that
    has such a job and drops the others.
    """
    match = match_lock(lock, event)
    prepared: list[PreparedWorkflow] = []
    problems: list[str] = []
    missing_job: list[str] = []
    for workflow, decision in zip(lock.workflows, match.decisions, strict=True):
        if not decision.matched or (workflow_filter is not None and workflow.name != workflow_filter):
            continue
        try:
            plan = plan_workflow(workflow, job_filter)
        except UnknownJobError as exc:
            missing_job.append(str(exc))
            continue
        try:
            inputs = coerce_inputs(raw_inputs, _descriptors(workflow, decision))
        except InputError as exc:
            problems.extend(f'workflow "{workflow.name}": {p}' for p in exc.problems)
            continue
        prepared.append(
            PreparedWorkflow(plan=plan, decision=decision, dispatch_inputs=inputs, job_filter=job_filter)
        )
    if missing_job and not prepared and not problems:
        problems.extend(missing_job)
    if problems:
        raise LocalRunError("\n".join(problems))
    return prepared, list(match.decisions)


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _cli_status(status: JobStatus) -> JobState:
    if status is JobStatus.SUCCESS:
        return "success"
    if status is JobStatus.SKIPPED:
        return "skipped"
    if status is JobStatus.CANCELLED:
        return "cancelled"
    return "failure"


def step_names(job: LockJob) -> list[str]:
    """The job's steps in the runner's index order (parallel children flattened, as in ``naming``)."""
    names: list[str] = []
    for entry in job.steps:
        if isinstance(entry, LockParallelStep):
            names.extend(child.name for child in entry.children)
        else:
            names.append(entry.name)
    return names


class _Events:
    """Collects one job's step events and forwards them, masked, to the observer.

    Step names come from the lock up front: a step the runner skips without starting it (a rule
    that did not pass, ``no check`` in check mode, the rest after a failure) has only a
    ``step.complete``, which carries an index and no name.
    """

    def __init__(
        self, workflow: str, job: str, observer: RunObserver, masker: Masker, names: Sequence[str] = ()
    ) -> None:
        self.workflow, self.job = workflow, job
        self.observer, self.masker = observer, masker
        self.names: dict[int, tuple[str, str]] = {index: (name, "step") for index, name in enumerate(names)}
        self.seen: list[tuple[int, str]] = []
        self.steps: dict[tuple[int, str], StepReport] = {}

    def _saw(self, key: tuple[int, str]) -> None:
        """Report order is first sight (start, or completion for a step never started): execution order."""
        if key not in self.seen:
            self.seen.append(key)

    def step_started(self, message: StepStart) -> None:
        step_type = message.step_type or "step"
        self.names[message.step_index] = (message.step_name, step_type)
        self._saw((message.step_index, step_type))
        if message.state != "pending":
            self.observer.step_started(self.workflow, self.job, message.step_name, step_type)

    def log_line(self, step_index: int, line: str) -> None:
        self.observer.log_line(self.workflow, self.job, self.masker.mask(line))

    def step_finished(self, message: StepComplete) -> None:
        name, step_type = self.names.get(message.step_index, (f"step-{message.step_index + 1}", "step"))
        step_type = message.step_type or step_type
        report = StepReport(
            name=name,
            status=message.status,
            duration_ms=message.duration_ms,
            error=self.masker.mask(message.error.message) if message.error is not None else None,
            outcome=message.check_outcome,
            step_type=step_type,
        )
        self.steps[(message.step_index, step_type)] = report
        self._saw((message.step_index, step_type))
        self.observer.step_finished(self.workflow, self.job, report)

    def reports(self, complete: JobComplete) -> tuple[StepReport, ...]:
        ordered = [self.steps[key] for key in self.seen if key in self.steps]
        seen = {r.name for r in ordered if r.step_type == "step"}
        ordered += [
            StepReport(
                name=result.name,
                status=result.status,
                duration_ms=result.duration_ms,
                error=self.masker.mask(result.error) if result.error else None,
            )
            for result in complete.step_results
            if result.name not in seen
        ]
        return tuple(ordered)


_JOB_STATES: Mapping[str, JobState] = {"success": "success", "failed": "failure", "cancelled": "cancelled"}
_WORKFLOW_STATES: Mapping[RunStatus, WorkflowState] = {
    RunStatus.SUCCESS: "success",
    RunStatus.CANCELLED: "cancelled",
}


def _rules_skipped(complete: JobComplete) -> str | None:
    """A rule-skipped job (the runner reports ``success`` with every step skipped): the failed rule."""
    failed = [r for r in complete.rule_results or () if not r.passed]
    if complete.status != "success" or not failed:
        return None
    rule = failed[0]
    return f"rule '{rule.label}' did not pass" + (f": {rule.error}" if rule.error else "")


class LocalRun:
    """One ``kici run local`` invocation; see the module docstring."""

    def __init__(
        self,
        options: LocalRunOptions,
        event: SimulatedEvent,
        observer: RunObserver,
        executor: JobExecutor,
    ) -> None:
        self.options = options
        self.event = event
        self.observer = observer
        self.executor = executor
        self.masker = Masker(options.secrets.values())
        self.interrupts = 0
        self.controls: dict[tuple[str, str], JobControl] = {}
        self.wakeups: trio.MemorySendChannel[_Message] | None = None
        self.kept: list[Path] = []

    # -- Ctrl-C

    async def _watch_signals(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            task_status.started()
            async for _ in signals:
                await self.interrupt()

    async def interrupt(self) -> None:
        """A Ctrl-C: the first cancels gracefully, any later one forces."""
        self.interrupts += 1
        force = self.interrupts > 1
        if force:
            self.observer.notice("Force-cancelling: killing the runners (hooks will not run).")
        else:
            self.observer.notice("Cancelling: cancel and cleanup hooks run; press Ctrl-C again to force.")
        if self.wakeups is not None:
            self.wakeups.send_nowait(_Wake())
        for control in list(self.controls.values()):
            await control.abort(force)

    # -- the run

    async def run(self, workflows: list[PreparedWorkflow], *, handle_signals: bool = True) -> RunReport:
        reports: list[WorkflowReport] = []
        async with trio.open_nursery() as nursery:
            if handle_signals:
                await nursery.start(self._watch_signals)
            for prepared in workflows:
                reports.append(await self._run_workflow(prepared))
            nursery.cancel_scope.cancel()
        if not self.kept:
            await trio.to_thread.run_sync(shutil.rmtree, self.options.run_root, True)
        return RunReport(
            workflows=tuple(reports), interrupted=self.interrupts > 0, run_mode=self.options.run_mode
        )

    async def _run_workflow(self, prepared: PreparedWorkflow) -> WorkflowReport:
        plan = prepared.plan
        name = plan.workflow.name
        started = trio.current_time()
        targets = _init_targets(plan)
        names = [init_job_name(t) for t in targets] + [job.name for job in plan.jobs]
        self.observer.workflow_started(name, names + [gen.name for gen in plan.generators])
        preludes: list[JobReport] = []
        if targets and not self.interrupts:
            outcomes, preludes = await self._run_inits(prepared, targets)
            plan = plan_workflow(plan.workflow, prepared.job_filter, outcomes)
        scheduler = _Scheduler(plan, self, preludes)
        if self.interrupts:
            scheduler.cancel_unstarted(INTERRUPTED_REASON)
        else:
            await scheduler.drive(prepared)
        statuses = scheduler.statuses()
        jobs = tuple(scheduler.reports[n] for n in scheduler.order if n in scheduler.reports)
        drift = any(step.outcome == DRIFT_OUTCOME for job in jobs for step in job.steps)
        run_status, reason = compute_run_status(statuses, CheckMode.APPLY, False)
        if run_status is RunStatus.SUCCESS:
            run_status, reason = compute_run_status(statuses, CheckMode(self.options.run_mode), drift)
        report = WorkflowReport(
            name=name,
            status=_WORKFLOW_STATES.get(run_status, "failure"),
            duration_ms=_ms(trio.current_time() - started),
            jobs=jobs,
            reason=reason,
            drift=drift,
        )
        self.observer.workflow_finished(report)
        return report

    # -- requests

    def _request(self, prepared: PreparedWorkflow, job_name: str, display: str) -> ExecuteRequest:
        """What every runner of this workflow gets; ``workspace`` is set once the checkout exists."""
        workflow = prepared.plan.workflow
        try:
            kici_dir = self.options.kici_dir.relative_to(self.options.repo_root).as_posix()
        except ValueError:
            kici_dir = ".kici"
        return ExecuteRequest(
            workflow_file=workflow.source.file,
            workflow_export=workflow.source.export,
            workflow_name=workflow.name,
            job_name=job_name,
            job_display_name=display,
            workspace="",
            kici_dir=kici_dir,
            content_hash=workflow.content_hash,
            resolved_hash_files=workflow.resolved_hash_files,
            event=event_to_json(self.event),
            secrets=dict(self.options.secrets),
            dispatch_inputs=dict(prepared.dispatch_inputs),
            default_step_timeout_ms=self.options.default_step_timeout_ms,
            provider="local",
            is_test_run=False,
            run_mode=self.options.run_mode,
        )

    def _job_request(
        self, prepared: PreparedWorkflow, job: PlannedJob, scheduler: _Scheduler
    ) -> ExecuteRequest:
        upstreams = [edge.upstream for edge in scheduler.state.edges_of(job.name)]
        lock_job = job.job
        if job.env is not None:
            env = dict(job.env)
        else:
            env = dict(lock_job.env) if isinstance(lock_job.env, FrozenDict) else {}
        origin = job.origin
        return attrs.evolve(
            self._request(prepared, job.base, job.name),
            matrix=job.matrix,
            env={str(k): str(v) for k, v in env.items()},
            upstream_job_outputs={u: scheduler.outputs[u] for u in upstreams if u in scheduler.outputs},
            upstream_job_statuses={
                u: str(s) for u in upstreams if (s := scheduler.state.jobs[u].status) is not None
            },
            grace_period_s=lock_job.grace_period,
            job_timeout_ms=lock_job.timeout,
            fanout_index=job.fanout_index,
            fanout_total=job.fanout_total,
            dynamic=None
            if origin is None
            else DynamicRequest(
                index=origin.index,
                group=origin.group,
                result_aware=origin.result_aware or None,
                timeout_ms=DEFAULT_EVAL_TIMEOUT_MS,
                needs=origin.needs,
                expected_job_names=origin.expected,
            ),
        )

    # -- one runner

    async def run_job(
        self, prepared: PreparedWorkflow, job: PlannedJob, scheduler: _Scheduler
    ) -> tuple[JobReport, JobComplete | None]:
        if job.failure is not None:
            report = JobReport(name=job.name, status="failure", error=job.failure, matrix_values=job.matrix)
            return report, None
        request = self._job_request(prepared, job, scheduler)
        return await self._execute(prepared, job.name, request, step_names(job.job), job.matrix)

    async def run_eval(
        self, prepared: PreparedWorkflow, gen: Generator, scheduler: _Scheduler
    ) -> tuple[JobReport, JobComplete | None]:
        """A generator's ``__dynamic__`` evaluation; a result-aware one sees its frozen snapshot."""
        needs = None
        if gen.result_aware:
            needs = needs_view_json(scheduler.snapshot(gen))
            scheduler.views[gen.name] = needs
        request = attrs.evolve(
            self._request(prepared, gen.name, gen.name),
            mode="dynamic",
            dynamic=DynamicRequest(
                index=gen.index,
                group=gen.group,
                result_aware=gen.result_aware or None,
                timeout_ms=DEFAULT_EVAL_TIMEOUT_MS,
                needs=needs,
            ),
        )
        return await self._execute(prepared, gen.name, request, [EVALUATE_STEP], None)

    async def _run_inits(
        self, prepared: PreparedWorkflow, targets: Sequence[str]
    ) -> tuple[dict[str, InitOutcome], list[JobReport]]:
        """The ``__init__<job>`` evaluations (EXE-34), one after the other, before any job starts."""
        workflow = prepared.plan.workflow.name
        outcomes: dict[str, InitOutcome] = {}
        reports: list[JobReport] = []
        for target in targets:
            if self.interrupts:
                break
            name = init_job_name(target)
            request = attrs.evolve(
                self._request(prepared, target, name), mode="init", init_timeout_ms=INIT_VALUE_TIMEOUT_MS
            )
            report, complete = await self._execute(prepared, name, request, [EVALUATE_STEP], None)
            self.observer.job_finished(workflow, report)
            reports.append(report)
            result = complete.init_result if complete is not None else None
            if complete is not None and complete.status == "success":
                outcomes[target] = InitOutcome(
                    matrix=None if result is None else result.matrix_values,
                    env=None if result is None else result.env,
                )
            else:
                why = report.error or report.reason or report.status
                outcomes[target] = InitOutcome(error=f"{name} failed: {why}")
        return outcomes, reports

    async def _execute(
        self,
        prepared: PreparedWorkflow,
        name: str,
        request: ExecuteRequest,
        names: Sequence[str],
        matrix: Mapping[str, Any] | None,
    ) -> tuple[JobReport, JobComplete | None]:
        """Run ``request`` in a fresh checkout through the executor and report it as job ``name``."""
        workflow = prepared.plan.workflow.name
        started = trio.current_time()
        checkout = self.options.run_root / slug(workflow) / slug(name)
        try:
            checkout.parent.mkdir(parents=True, exist_ok=True)
            await trio.to_thread.run_sync(
                create_checkout, self.options.repo_root, checkout, self.options.sha, self.options.overlay
            )
        except (CheckoutError, OSError) as exc:
            return JobReport(name=name, status="failure", error=str(exc), matrix_values=matrix), None
        if self.interrupts:
            await trio.to_thread.run_sync(shutil.rmtree, checkout, True)
            return JobReport(
                name=name, status="cancelled", reason=INTERRUPTED_REASON, matrix_values=matrix
            ), None
        self.observer.job_started(workflow, name, str(checkout))
        events = _Events(workflow, name, self.observer, self.masker, names)
        control = JobControl()
        key = (workflow, name)
        self.controls[key] = control
        try:
            complete = await self.executor.execute(
                attrs.evolve(request, workspace=str(checkout)), checkout, events, control
            )
        finally:
            del self.controls[key]
        duration = _ms(trio.current_time() - started)
        status: JobState = _JOB_STATES[complete.status]
        error = self.masker.mask(complete.error) if complete.error else None
        reason = _rules_skipped(complete)
        if reason is not None:
            status = "skipped"
        keep = self.options.keep or status in ("failure", "cancelled")
        if keep:
            self.kept.append(checkout)
        else:
            await trio.to_thread.run_sync(shutil.rmtree, checkout, True)
        report = JobReport(
            name=name,
            status=status,
            duration_ms=duration,
            steps=events.reports(complete),
            matrix_values=matrix,
            error=error,
            reason=reason,
            checkout_dir=str(checkout) if keep else None,
        )
        return report, complete


def _init_targets(plan: WorkflowPlan) -> list[str]:
    """The jobs whose dynamic matrix or env must be evaluated before they can be planned."""
    return list(dict.fromkeys(job.base for job in plan.jobs if job.origin is None and needs_init(job.job)))


@attrs.frozen
class _Finished:
    name: str
    report: JobReport
    complete: JobComplete | None


@attrs.frozen
class _Wake:
    """Sent on Ctrl-C so the scheduler loop cancels unstarted jobs at once."""


_Message = _Finished | _Wake


class _Scheduler:
    """The needs gate driven for one workflow: what may start, what finished, what was cancelled.

    Evaluation nodes (``__dynamic__…``) are jobs of the gate like any other; when one succeeds, the
    jobs it generated join the run as its group (``resolve_group_edges``); when it fails, the group
    fails (``fail_group_eval``) so its dependents skip; when it is skipped, the group is empty.
    """

    def __init__(self, plan: WorkflowPlan, run: LocalRun, preludes: Sequence[JobReport] = ()) -> None:
        self.plan = plan
        self.run = run
        self.jobs = plan.by_name
        self.generators = {gen.name: gen for gen in plan.generators}
        self.order: list[str] = [r.name for r in preludes]
        self.order += [name for spec in plan.specs for name in spec.job_names]
        self.reports: dict[str, JobReport] = {r.name: r for r in preludes}
        self.outputs: dict[str, Mapping[str, Any]] = {}
        self.views: dict[str, Mapping[str, Any]] = {}
        self.ready: deque[str] = deque()
        self.running: set[str] = set()
        self.stopped: str | None = None
        state, outcome = insert_edges_for_run(plan.specs)
        self.state: SchedulerState = state
        self._absorb(outcome)

    def _absorb(self, outcome: SchedulerOutcome) -> None:
        for name in outcome.dispatched:
            if self.stopped is None:
                self.ready.append(name)
        for skipped in outcome.skipped:
            self._record(
                JobReport(
                    name=skipped.name,
                    status="skipped",
                    reason=skipped.reason,
                    matrix_values=self._matrix(skipped.name),
                )
            )
        for failed in outcome.failed:
            if failed.name not in self.order:
                self.order.append(failed.name)
            self._record(JobReport(name=failed.name, status="failure", error=failed.reason))
        for skipped in outcome.skipped:
            gen = self.generators.get(skipped.name)
            if gen is not None and gen.tag not in self.state.resolved_groups:
                self.state, emptied = resolve_group_edges(self.state, gen.tag, ())
                self._absorb(emptied)

    def _matrix(self, name: str) -> Mapping[str, Any] | None:
        job = self.jobs.get(name)
        return job.matrix if job is not None else None

    def _record(self, report: JobReport) -> None:
        if report.name not in self.reports:
            self.reports[report.name] = report
            self.run.observer.job_finished(self.plan.workflow.name, report)

    def statuses(self) -> dict[str, JobStatus]:
        found = {name: node.status for name, node in self.state.jobs.items()}
        return {name: status if status is not None else JobStatus.CANCELLED for name, status in found.items()}

    def cancel_unstarted(self, reason: str) -> None:
        """Cancel every job that is neither finished nor running, all at once (P-CAN4)."""
        if self.stopped is None:
            self.stopped = reason
        self.ready.clear()
        pending = {
            name: JobStatus.CANCELLED
            for name, node in self.state.jobs.items()
            if node.status is None and name not in self.running
        }
        if not pending:
            return
        self.state, outcome = apply_terminals(self.state, pending)
        for name in pending:
            self._record(
                JobReport(name=name, status="cancelled", reason=reason, matrix_values=self._matrix(name))
            )
        self._absorb(outcome)

    async def drive(self, prepared: PreparedWorkflow) -> None:
        limit = max(1, self.run.options.concurrency)
        send, receive = trio.open_memory_channel[_Message](math.inf)
        self.run.wakeups = send

        async def one(name: str) -> None:
            gen = self.generators.get(name)
            if gen is not None:
                report, complete = await self.run.run_eval(prepared, gen, self)
            else:
                report, complete = await self.run.run_job(prepared, self.jobs[name], self)
            send.send_nowait(_Finished(name, report, complete))

        try:
            async with trio.open_nursery() as nursery:
                while True:
                    if self.run.interrupts and self.stopped is None:
                        self.cancel_unstarted(INTERRUPTED_REASON)
                    while self.ready and len(self.running) < limit and self.stopped is None:
                        name = self.ready.popleft()
                        self.running.add(name)
                        nursery.start_soon(one, name)
                    if not self.running:
                        break
                    message = await receive.receive()
                    if isinstance(message, _Finished):
                        self._finish(message.name, message.report, message.complete)
        finally:
            self.run.wakeups = None
        if any(node.status is None for node in self.state.jobs.values()):
            self.cancel_unstarted(self.stopped or UNRESOLVED_GROUP_REASON)

    def _finish(self, name: str, report: JobReport, complete: JobComplete | None) -> None:
        self.running.discard(name)
        gen = self.generators.get(name)
        if gen is not None:
            self._finish_eval(gen, report, complete)
            return
        if complete is not None and complete.outputs is not None:
            self.outputs[name] = complete.outputs
        self._record(report)
        status = {
            "success": JobStatus.SUCCESS,
            "skipped": JobStatus.SUCCESS,
            "cancelled": JobStatus.CANCELLED,
        }.get(report.status, JobStatus.FAILED)
        self.state, outcome = apply_terminal(self.state, name, status)
        self._absorb(outcome)
        planned = self.jobs.get(name)
        if planned is not None and complete is not None and complete.generated_job_names is not None:
            self._drop_drifted(planned, complete.generated_job_names)
        if report.status == "failure" and not self.run.options.keep_going:
            self.cancel_unstarted(FAILED_TO_START_REASON)

    # -- dynamic jobs

    def _upstream_names(self) -> set[str]:
        """What a generated job may need: the run's jobs and fan-out bases."""
        bases = {node.base_job_name for node in self.state.jobs.values() if node.base_job_name}
        return set(self.state.jobs) | {b for b in bases if b is not None}

    def snapshot(self, gen: Generator) -> Any:
        """The frozen upstream snapshot of a result-aware evaluation (EXE-20), taken at dispatch."""
        upstreams = [edge.upstream for edge in self.state.edges_of(gen.name)]
        statuses = {u: str(status) for u in upstreams if (status := self.state.jobs[u].status) is not None}
        groups = {
            need.group: [n for n, node in self.state.jobs.items() if node.group_name == need.group]
            for need in gen.needs
            if isinstance(need, GroupNeed)
        }
        fanouts = {
            need.name: children
            for need in gen.needs
            if isinstance(need, NameNeed)
            and (children := [n for n, node in self.state.jobs.items() if node.base_job_name == need.name])
        }
        flat = {self.jobs[u].base for u in upstreams if u in self.jobs and is_flat(self.jobs[u].job)}
        outputs = {u: self.outputs.get(u) for u in upstreams}
        return freeze_snapshot(outputs, statuses, groups=groups, fanouts=fanouts, flat=flat)

    def _finish_eval(self, gen: Generator, report: JobReport, complete: JobComplete | None) -> None:
        if report.status == "success" and complete is not None:
            origin_needs = self.views.get(gen.name)
            try:
                jobs = parse_generated_jobs(
                    list(complete.dynamic_jobs or ()),
                    existing=set(self.state.jobs),
                    upstreams=self._upstream_names(),
                )
                origin = Origin(
                    index=gen.index,
                    group=gen.group,
                    result_aware=gen.result_aware,
                    expected=tuple(job.name for job in jobs),
                    needs=origin_needs,
                )
                members: list[PlannedJob] = []
                specs = []
                for job in jobs:
                    children, spec = plan_generated(job, origin)
                    members.extend(children)
                    specs.append(spec)
                resolved_state, resolved = resolve_group_edges(self.state, gen.tag, specs)
            except (DynamicEvalError, DuplicateJobError, InvalidNeedError) as exc:
                report = attrs.evolve(report, status="failure", error=self.run.masker.mask(str(exc)))
            else:
                for member in members:
                    self.jobs[member.name] = member
                at = self.order.index(gen.name) + 1 if gen.name in self.order else len(self.order)
                self.order[at:at] = [m.name for m in members if m.name not in self.order]
                self._record(report)
                self.state, done = apply_terminal(resolved_state, gen.name, JobStatus.SUCCESS)
                self._absorb(resolved)
                self._absorb(done)
                return
        self._record(report)
        failed = report.status != "cancelled"
        self.state, outcome = apply_terminal(
            self.state, gen.name, JobStatus.FAILED if failed else JobStatus.CANCELLED
        )
        self._absorb(outcome)
        if not failed:
            return
        reason = f"{DYNAMIC_EVAL}: {report.error or 'the evaluation failed'}"
        at = self.order.index(gen.name) + 1 if gen.name in self.order else len(self.order)
        self.order.insert(at, eval_failed_job_name(gen.index))
        self.state, outcome = fail_group_eval(self.state, gen.index, gen.group, reason)
        self._absorb(outcome)
        if not self.run.options.keep_going:
            self.cancel_unstarted(FAILED_TO_START_REASON)

    def _drop_drifted(self, planned: PlannedJob, actual: Sequence[str]) -> None:
        """The determinism guard's verdict (EXE-19): dropped siblings that have not started become
        ``drift_dropped``; their dependents skip and the run fails."""
        if planned.origin is None:
            return
        verdict = determinism_guard(planned.origin.expected, actual, planned.base)
        if verdict.verdict is not GuardVerdict.WARN:
            return
        dropped = set(verdict.dropped)
        targets = {
            name: JobStatus.DRIFT_DROPPED
            for name, job in self.jobs.items()
            if job.base in dropped
            and job.origin is not None
            and job.origin.index == planned.origin.index
            and name not in self.running
            and name in self.state.jobs
            and self.state.jobs[name].status is None
        }
        if not targets:
            return
        self.ready = deque(name for name in self.ready if name not in targets)
        self.state, outcome = apply_terminals(self.state, targets)
        for name in targets:
            self._record(
                JobReport(
                    name=name, status="failure", error=DRIFT_DROPPED_REASON, matrix_values=self._matrix(name)
                )
            )
        self._absorb(outcome)
