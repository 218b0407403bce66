"""Which hooks run after the step loop, and how their results fold into the job status (10 §5, EXE-11).

Standard library only (D1), pure functions of their inputs. ``kici.domain.hooks`` states the same rules
with attrs models for the agent side; the runner cannot import the domain, so the property suite
(tests/properties/test_hooks.py) drives both and checks they agree.

Choices where the spec is silent:
- Step-level ``on_cancel``/``cleanup`` run only on the graceful-cancel path, for the steps in flight when
  the cancel arrived (parallel children in list order), as the 10 §5 table lists them. A step that already
  finished has nothing left to cancel.
- A hook sees in ``ctx.outcome`` the fold of everything before it, so ``cleanup`` sees an ``on_success``
  failure as ``failed`` with its reason.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

BEFORE_STEP = "beforeStep"
AFTER_STEP = "afterStep"
ON_SUCCESS = "onSuccess"
ON_FAILURE = "onFailure"
ON_CANCEL = "onCancel"
CLEANUP = "cleanup"
STEP_ON_CANCEL = "stepOnCancel"
STEP_CLEANUP = "stepCleanup"

OBSERVERS = frozenset({BEFORE_STEP, AFTER_STEP})
JOB_HOOKS = (ON_SUCCESS, ON_FAILURE, ON_CANCEL, CLEANUP)
STEP_HOOKS = (STEP_ON_CANCEL, STEP_CLEANUP)

SUCCESS = "success"
FAILED = "failed"
CANCELLED = "cancelled"
OUTCOMES = (SUCCESS, FAILED, CANCELLED)

# The wire `step_type` of each hook run (ISO-02 `hook:onCancel`, `hook:cleanup`, ...).
STEP_TYPES = {
    BEFORE_STEP: "hook:beforeStep",
    AFTER_STEP: "hook:afterStep",
    ON_SUCCESS: "hook:onSuccess",
    ON_FAILURE: "hook:onFailure",
    ON_CANCEL: "hook:onCancel",
    CLEANUP: "hook:cleanup",
    STEP_ON_CANCEL: "hook:onCancel",
    STEP_CLEANUP: "hook:cleanup",
}

_CANCEL_FRAGMENTS = {
    ON_CANCEL: "cancelled (onCancel hook failed: {error})",
    STEP_ON_CANCEL: "cancelled (step onCancel hook failed: {error})",
    STEP_CLEANUP: "step cleanup hook failed: {error}",
    CLEANUP: "cleanup hook failed: {error}",
}


class HookPlanError(ValueError):
    """An outcome outside the vocabulary, or a hook result that cannot occur on that path."""


_PATH_HOOKS = {
    SUCCESS: frozenset({ON_SUCCESS, CLEANUP}),
    FAILED: frozenset({ON_FAILURE, CLEANUP}),
    CANCELLED: frozenset({STEP_ON_CANCEL, STEP_CLEANUP, ON_CANCEL, CLEANUP}),
}


@dataclass(frozen=True)
class HookRun:
    """One executed hook; ``error`` is ``None`` when it succeeded (timeouts are errors)."""

    type: str
    error: str | None = None


def completion_plan(
    outcome: str,
    job_hooks: Collection[str],
    *,
    in_flight: Sequence[Collection[str]] = (),
    force: bool = False,
    job_timeout: bool = False,
) -> list[tuple[str, int | None]]:
    """The hooks to run, in order, once the step loop ended with ``outcome``.

    ``job_hooks`` names the job hooks defined; ``in_flight`` lists, per step still running when a graceful
    cancel arrived, the step hooks it defines. Each entry is ``(hook type, in-flight ordinal or None)``.
    Force cancel and a job timeout run nothing: the job's time or the user's patience is up.
    """
    if outcome not in OUTCOMES:
        raise HookPlanError(f"unknown outcome {outcome!r}")
    if force or job_timeout:
        return []
    plan: list[tuple[str, int | None]] = []
    if outcome == CANCELLED:
        for ordinal, step_hooks in enumerate(in_flight):
            plan.extend((hook, ordinal) for hook in STEP_HOOKS if hook in step_hooks)
        order = (ON_CANCEL, CLEANUP)
    else:
        order = (ON_SUCCESS, CLEANUP) if outcome == SUCCESS else (ON_FAILURE, CLEANUP)
    plan.extend((hook, None) for hook in order if hook in job_hooks)
    return plan


def fold_hook_results(outcome: str, reason: str | None, results: Sequence[HookRun]) -> tuple[str, str | None]:
    """The job's final ``(status, reason)`` from the loop outcome and the completion-hook results.

    Observer hooks (before/after step) never change anything. On success/failure any ``on_success`` or
    ``cleanup`` failure makes the job ``failed`` (``on_failure`` failing leaves it failed), reasons joined
    with ``"; "``. On the cancel path every failure turns ``cancelled`` into ``failed`` with its fragment.
    """
    if outcome not in OUTCOMES:
        raise HookPlanError(f"unknown outcome {outcome!r}")
    for run in results:
        if run.type not in OBSERVERS and run.type not in _PATH_HOOKS[outcome]:
            raise HookPlanError(f"{run.type} does not run on the {outcome} path")
    failures = [run for run in results if run.error is not None and run.type not in OBSERVERS]
    if outcome == CANCELLED:
        fragments = [_CANCEL_FRAGMENTS[run.type].format(error=run.error) for run in failures]
        if fragments:
            return FAILED, "; ".join(fragments)
        return CANCELLED, reason or "cancelled"
    fragments = [f"Hook {run.type} failed: {run.error}" for run in failures]
    status = FAILED if outcome == FAILED or fragments else SUCCESS
    parts = ([reason] if reason else []) + fragments
    return status, ("; ".join(parts) if parts else None)


def observer_failure_line(hook_type: str, error: str) -> str:
    """The log line of a failed before/after-step hook; observers never change the job status."""
    return f"[kici] {hook_type} hook failed: {error} (continuing -- hooks are observers)"


def hook_timeout_message(name: str, timeout_ms: int) -> str:
    return f"Hook '{name}' timed out after {timeout_ms}ms"


def loop_continues(status: str, continue_on_error: bool) -> bool:
    """Whether the step loop goes on after a step ended with ``status`` (10 §4.1 (10))."""
    return status != FAILED or continue_on_error


def loop_outcome(statuses: Sequence[str]) -> str:
    """The step loop's outcome: any failed step (``continue_on_error`` included) fails the job."""
    return FAILED if FAILED in statuses else SUCCESS


__all__ = [
    "AFTER_STEP",
    "BEFORE_STEP",
    "CANCELLED",
    "CLEANUP",
    "FAILED",
    "JOB_HOOKS",
    "ON_CANCEL",
    "ON_FAILURE",
    "ON_SUCCESS",
    "STEP_CLEANUP",
    "STEP_HOOKS",
    "STEP_ON_CANCEL",
    "STEP_TYPES",
    "SUCCESS",
    "HookPlanError",
    "HookRun",
    "completion_plan",
    "fold_hook_results",
    "hook_timeout_message",
    "loop_continues",
    "loop_outcome",
    "observer_failure_line",
]
