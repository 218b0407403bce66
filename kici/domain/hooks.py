"""Job and step hooks: execution order and the failure fold (10 §5, EXE-11; P-HOOK1..4).

Pure. The sandboxed runner cannot import the domain (D1), so it carries a standard-library twin of the
plan and fold in ``kici.services.runner.hooks``; the property suite drives both and checks they agree.
``simulate_job`` composes the step loop with the plan and fold so the properties can talk about a whole
job: which units ran, in which order, and the final status.

Choices where the spec is silent (the same in the runner):
- step ``on_cancel``/``cleanup`` run only on the graceful-cancel path, for the step(s) in flight;
- a cancel that arrives while step ``i`` runs interrupts it: no ``afterStep`` for it;
- a job timeout, like a force cancel, runs no hook at all.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Sequence

import attrs


class HookType(enum.StrEnum):
    BEFORE_STEP = "beforeStep"
    AFTER_STEP = "afterStep"
    ON_SUCCESS = "onSuccess"
    ON_FAILURE = "onFailure"
    ON_CANCEL = "onCancel"
    CLEANUP = "cleanup"
    STEP_ON_CANCEL = "stepOnCancel"
    STEP_CLEANUP = "stepCleanup"


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"


OBSERVERS = frozenset({HookType.BEFORE_STEP, HookType.AFTER_STEP})
STEP_HOOKS = (HookType.STEP_ON_CANCEL, HookType.STEP_CLEANUP)
JOB_TIMEOUT_REASON = "job_timeout"

_CANCEL_FRAGMENTS = {
    HookType.ON_CANCEL: "cancelled (onCancel hook failed: {error})",
    HookType.STEP_ON_CANCEL: "cancelled (step onCancel hook failed: {error})",
    HookType.STEP_CLEANUP: "step cleanup hook failed: {error}",
    HookType.CLEANUP: "cleanup hook failed: {error}",
}


class HookPlanError(ValueError):
    """A hook result that cannot occur on the given path (e.g. ``onSuccess`` after a cancel)."""


_PATH_HOOKS = {
    Outcome.SUCCESS: frozenset({HookType.ON_SUCCESS, HookType.CLEANUP}),
    Outcome.FAILED: frozenset({HookType.ON_FAILURE, HookType.CLEANUP}),
    Outcome.CANCELLED: frozenset(
        {HookType.STEP_ON_CANCEL, HookType.STEP_CLEANUP, HookType.ON_CANCEL, HookType.CLEANUP}
    ),
}


@attrs.frozen
class HookRun:
    """One executed hook; ``error`` is ``None`` when it succeeded (a timeout is an error)."""

    type: HookType = attrs.field(converter=HookType)
    error: str | None = None


@attrs.frozen
class PlannedHook:
    type: HookType
    in_flight: int | None = None
    """Ordinal of the in-flight step a step hook belongs to; ``None`` for job hooks."""


def completion_plan(
    outcome: Outcome,
    job_hooks: Collection[HookType],
    *,
    in_flight: Sequence[Collection[HookType]] = (),
    force: bool = False,
    job_timeout: bool = False,
) -> tuple[PlannedHook, ...]:
    """Hooks to run after the step loop, in order (see ``kici.services.runner.hooks.completion_plan``)."""
    outcome = Outcome(outcome)
    if force or job_timeout:
        return ()
    plan: list[PlannedHook] = []
    if outcome is Outcome.CANCELLED:
        for ordinal, step_hooks in enumerate(in_flight):
            plan.extend(PlannedHook(hook, ordinal) for hook in STEP_HOOKS if hook in step_hooks)
        order: tuple[HookType, ...] = (HookType.ON_CANCEL, HookType.CLEANUP)
    elif outcome is Outcome.SUCCESS:
        order = (HookType.ON_SUCCESS, HookType.CLEANUP)
    else:
        order = (HookType.ON_FAILURE, HookType.CLEANUP)
    plan.extend(PlannedHook(hook) for hook in order if hook in job_hooks)
    return tuple(plan)


def fold_hook_results(
    outcome: Outcome, reason: str | None, results: Iterable[HookRun]
) -> tuple[Outcome, str | None]:
    """The final ``(status, reason)``: observers never count; any completion-hook failure means ``failed``.

    Success/failure path fragments are ``Hook <type> failed: <err>`` joined with ``"; "`` after the loop's
    own reason; cancel-path fragments use the 10 §5 wording.
    """
    outcome = Outcome(outcome)
    runs = list(results)
    for run in runs:
        if run.type not in OBSERVERS and run.type not in _PATH_HOOKS[outcome]:
            raise HookPlanError(f"{run.type.value} does not run on the {outcome.value} path")
    failures = [run for run in runs if run.error is not None and run.type not in OBSERVERS]
    if outcome is Outcome.CANCELLED:
        fragments = [_CANCEL_FRAGMENTS[run.type].format(error=run.error) for run in failures]
        if fragments:
            return Outcome.FAILED, "; ".join(fragments)
        return Outcome.CANCELLED, reason or "cancelled"
    fragments = [f"Hook {run.type.value} failed: {run.error}" for run in failures]
    status = Outcome.FAILED if outcome is Outcome.FAILED or fragments else Outcome.SUCCESS
    parts = ([reason] if reason else []) + fragments
    return status, ("; ".join(parts) if parts else None)


def loop_continues(failed: bool, continue_on_error: bool) -> bool:
    """The loop stops after a failed step unless it has ``continue_on_error`` (10 §4.1 (10))."""
    return not failed or continue_on_error


@attrs.frozen(kw_only=True)
class StepSpec:
    failed: bool = False
    continue_on_error: bool = False
    hooks: frozenset[HookType] = attrs.field(default=frozenset(), converter=frozenset)
    """Step-level hooks defined (``STEP_ON_CANCEL`` / ``STEP_CLEANUP``)."""


@attrs.frozen(kw_only=True)
class JobSpec:
    """A job to simulate: its steps, hooks, which hooks fail, and where a cancel or timeout hits.

    ``cancel_at``/``timeout_at`` name the step that is running when the cancel or the job deadline
    arrives; ``force`` makes that cancel a force cancel.
    """

    steps: tuple[StepSpec, ...] = ()
    hooks: frozenset[HookType] = attrs.field(default=frozenset(), converter=frozenset)
    failing_hooks: frozenset[HookType] = attrs.field(default=frozenset(), converter=frozenset)
    cancel_at: int | None = None
    force: bool = False
    timeout_at: int | None = None


Unit = tuple[str, int | None]
"""An executed unit: ``("step", i)``, ``("beforeStep", i)``, a hook type with its step or ``None``."""


@attrs.frozen
class JobTrace:
    units: tuple[Unit, ...]
    status: Outcome
    reason: str | None
    interrupted: str | None = None
    """``"cancel"`` or ``"timeout"`` when the cancel / deadline hit a running step, else ``None``."""


def simulate_job(spec: JobSpec) -> JobTrace:
    """Run ``spec`` through the loop, the completion plan and the fold, recording every unit."""
    units: list[Unit] = []
    failed = False
    interrupted: int | None = None
    timed_out = False
    for i, step in enumerate(spec.steps):
        if HookType.BEFORE_STEP in spec.hooks:
            units.append((HookType.BEFORE_STEP.value, i))
        units.append(("step", i))
        if spec.timeout_at == i:
            timed_out = True
            break
        if spec.cancel_at == i:
            interrupted = i
            break
        if HookType.AFTER_STEP in spec.hooks:
            units.append((HookType.AFTER_STEP.value, i))
        failed = failed or step.failed
        if not loop_continues(step.failed, step.continue_on_error):
            break
    if timed_out:
        return JobTrace(tuple(units), Outcome.FAILED, JOB_TIMEOUT_REASON, "timeout")
    if interrupted is not None:
        outcome = Outcome.CANCELLED
        in_flight: list[frozenset[HookType]] = [spec.steps[interrupted].hooks]
    else:
        outcome = Outcome.FAILED if failed else Outcome.SUCCESS
        in_flight = []
    reason = "step failed" if outcome is Outcome.FAILED else None
    force = spec.force and interrupted is not None
    plan = completion_plan(outcome, spec.hooks, in_flight=in_flight, force=force)
    results: list[HookRun] = []
    for planned in plan:
        step_index = interrupted if planned.in_flight is not None else None
        units.append((planned.type.value, step_index))
        results.append(HookRun(planned.type, "boom" if planned.type in spec.failing_hooks else None))
    status, final_reason = fold_hook_results(outcome, reason, results)
    return JobTrace(tuple(units), status, final_reason, None if interrupted is None else "cancel")


__all__ = [
    "JOB_TIMEOUT_REASON",
    "HookPlanError",
    "HookRun",
    "HookType",
    "JobSpec",
    "JobTrace",
    "Outcome",
    "PlannedHook",
    "StepSpec",
    "completion_plan",
    "fold_hook_results",
    "loop_continues",
    "simulate_job",
]
