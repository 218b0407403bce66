"""The status vocabularies of runs, jobs and steps (EXE-01, EXE-02).

Two vocabularies describe a job on purpose: ``ExecutionState`` is what the state
machine reasons about (it knows ``held`` and ``waiting``), ``JobStatus`` is what
``execution_jobs.status`` and ``job.status.state`` carry (held and waiting jobs
persist as ``pending`` plus a ``held_runs`` row, and the two forced terminal
statuses ``timed_out_stale`` / ``drift_dropped`` are written by guarded updates,
never by a machine transition).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

import attrs


class ExecutionState(StrEnum):
    """The 11 states of the job state machine; the last four are terminal."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    RECOVERING = "recovering"
    CANCELLING = "cancelling"
    HELD = "held"
    WAITING = "waiting"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


class Event(StrEnum):
    """The 16 events of the job state machine.

    ``CANCEL`` is immediate (no hooks); ``CANCEL_GRACEFUL`` enters ``cancelling``
    where the cancel hooks run; ``COMPLETE`` means those hooks finished.
    """

    ENQUEUE = "ENQUEUE"
    START = "START"
    SUCCEED = "SUCCEED"
    FAIL = "FAIL"
    CANCEL = "CANCEL"
    CANCEL_GRACEFUL = "CANCEL_GRACEFUL"
    CANCEL_FORCE = "CANCEL_FORCE"
    COMPLETE = "COMPLETE"
    SKIP = "SKIP"
    RECOVER = "RECOVER"
    HOLD = "HOLD"
    APPROVE = "APPROVE"
    REJECT = "REJECT"
    EXPIRE = "EXPIRE"
    WAIT = "WAIT"
    TIMER_DONE = "TIMER_DONE"


TERMINAL_EXECUTION_STATES: frozenset[ExecutionState] = frozenset(
    {ExecutionState.SUCCESS, ExecutionState.FAILED, ExecutionState.CANCELLED, ExecutionState.SKIPPED}
)


class JobStatus(StrEnum):
    """``execution_jobs.status``: the machine states minus held/waiting, plus two forced statuses."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    RECOVERING = "recovering"
    CANCELLING = "cancelling"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    TIMED_OUT_STALE = "timed_out_stale"
    DRIFT_DROPPED = "drift_dropped"


TERMINAL_JOB_STATES: frozenset[JobStatus] = frozenset(
    {
        JobStatus.SUCCESS,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
        JobStatus.SKIPPED,
        JobStatus.TIMED_OUT_STALE,
        JobStatus.DRIFT_DROPPED,
    }
)

# The order the lock file and the ``run_on`` column list terminal statuses in.
TERMINAL_JOB_STATES_ORDERED: tuple[JobStatus, ...] = (
    JobStatus.SUCCESS,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
    JobStatus.SKIPPED,
    JobStatus.TIMED_OUT_STALE,
    JobStatus.DRIFT_DROPPED,
)

# Terminal job statuses that make a run fail (and trip a fan-out's fail-fast).
FAILING_JOB_STATES: frozenset[JobStatus] = frozenset(
    {JobStatus.FAILED, JobStatus.TIMED_OUT_STALE, JobStatus.DRIFT_DROPPED}
)

# The tracker's view of a job: a machine state, or a forced terminal status.
TrackedJobState = ExecutionState | JobStatus


def persisted_job_status(state: TrackedJobState) -> JobStatus:
    """The ``execution_jobs.status`` a tracked state is stored as (held and waiting persist as pending)."""
    if isinstance(state, JobStatus):
        return state
    if state in (ExecutionState.HELD, ExecutionState.WAITING):
        return JobStatus.PENDING
    return JobStatus(state.value)


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CANCELLING = "cancelling"
    HELD = "held"


TERMINAL_RUN_STATES: frozenset[RunStatus] = frozenset(
    {RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.CANCELLED}
)


class StepStatus(StrEnum):
    """``pending`` is a parallel child awaiting a slot; ``cancelled`` a fail-fast sibling (not a failure)."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"
    PENDING = "pending"
    CANCELLED = "cancelled"


TERMINAL_STEP_STATES: frozenset[StepStatus] = frozenset(
    {StepStatus.SUCCESS, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED}
)


class StepType(StrEnum):
    """``execution_steps.step_type``; the open family ``init:<n>`` is built by :func:`init_step_type`."""

    STEP = "step"
    HOOK_ON_CANCEL = "hook:onCancel"
    HOOK_CLEANUP = "hook:cleanup"
    HOOK_ON_SUCCESS = "hook:onSuccess"
    HOOK_ON_FAILURE = "hook:onFailure"
    HOOK_BEFORE_STEP = "hook:beforeStep"
    HOOK_AFTER_STEP = "hook:afterStep"
    CACHE_RESTORE = "cache:restore"
    CACHE_SAVE = "cache:save"


_INIT_PREFIX = "init:"
_STEP_TYPE_VALUES = frozenset(t.value for t in StepType)


def init_step_type(number: int) -> str:
    """The step type of the init spec ``number`` (0-based, the order the job declares them)."""
    if number < 0:
        raise ValueError(f"init step number must be >= 0, got {number}")
    return f"{_INIT_PREFIX}{number}"


def init_step_number(step_type: str) -> int | None:
    """The init spec number of an ``init:<n>`` step type, or None for any other string.

    Only the canonical spelling counts (``init:7``, not ``init:07`` or ``init:+7``),
    so that :func:`init_step_type` and this function are inverse.
    """
    if not step_type.startswith(_INIT_PREFIX):
        return None
    digits = step_type[len(_INIT_PREFIX) :]
    if not digits.isascii() or not digits.isdigit() or (len(digits) > 1 and digits[0] == "0"):
        return None
    return int(digits)


def is_step_type(value: str) -> bool:
    """True for every value ``execution_steps.step_type`` may hold."""
    return value in _STEP_TYPE_VALUES or init_step_number(value) is not None


class StepConcurrencyKind(StrEnum):
    SEQUENTIAL = "sequential"
    PARALLEL_CHILD = "parallel-child"
    PARALLEL_GROUP = "parallel-group"


class TimeoutReason(StrEnum):
    JOB_TIMEOUT = "job_timeout"
    WORKFLOW_TIMEOUT = "workflow_timeout"


class InitFailureScope(StrEnum):
    RUN = "run"
    JOB = "job"


class InitFailureCategory(StrEnum):
    """Why a run or job never ran a step; the first four are run-scoped, the rest job-scoped."""

    SECRET_RESOLUTION = "secret_resolution"
    INSTALL_SECRETS = "install_secrets"
    LOCK_RESOLUTION = "lock_resolution"
    BUILD_COORDINATION = "build_coordination"
    ENVIRONMENT_RULES = "environment_rules"
    DYNAMIC_EVAL = "dynamic_eval"
    NO_AGENT = "no_agent"
    MATRIX_EXPANSION = "matrix_expansion"


INIT_FAILURE_CATEGORIES: Mapping[InitFailureScope, frozenset[InitFailureCategory]] = MappingProxyType(
    {
        InitFailureScope.RUN: frozenset(
            {
                InitFailureCategory.SECRET_RESOLUTION,
                InitFailureCategory.INSTALL_SECRETS,
                InitFailureCategory.LOCK_RESOLUTION,
                InitFailureCategory.BUILD_COORDINATION,
            }
        ),
        InitFailureScope.JOB: frozenset(
            {
                InitFailureCategory.ENVIRONMENT_RULES,
                InitFailureCategory.DYNAMIC_EVAL,
                InitFailureCategory.NO_AGENT,
                InitFailureCategory.MATRIX_EXPANSION,
            }
        ),
    }
)

INIT_FAILURE_MESSAGE_MAX = 2000


class CheckMode(StrEnum):
    APPLY = "apply"
    CHECK = "check"
    CHECK_FAIL_ON_DRIFT = "check-fail-on-drift"


class CheckStepOutcome(StrEnum):
    """``skipped`` means "in sync"; ``dry-run`` means "would change" (check mode, run never called)."""

    SKIPPED = "skipped"
    APPLIED = "applied"
    DECLINED = "declined"
    DRY_RUN = "dry-run"
    NO_CHECK = "no_check"


class InvalidInitFailureError(ValueError):
    """An ``InitFailure`` violating its schema (category outside its scope, message too long)."""


def _check_category(instance: InitFailure, _: attrs.Attribute[InitFailureCategory], value: object) -> None:
    if value not in INIT_FAILURE_CATEGORIES[instance.scope]:
        raise InvalidInitFailureError(f"category {value!s} is not a {instance.scope} init failure category")


def _check_message(_: object, __: attrs.Attribute[str], value: str) -> None:
    if len(value) > INIT_FAILURE_MESSAGE_MAX:
        raise InvalidInitFailureError(
            f"init failure message is {len(value)} characters, the limit is {INIT_FAILURE_MESSAGE_MAX}"
        )


def _check_job_name(_: object, __: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and not value:
        raise InvalidInitFailureError("init failure job_name must be non-empty when given")


@attrs.frozen
class InitFailure:
    """A run or job that never ran a step, and why.

    The message limit is enforced, not silently applied: callers wrapping an
    arbitrary exception text use :meth:`of`, which truncates explicitly.
    """

    scope: InitFailureScope = attrs.field(converter=InitFailureScope)
    category: InitFailureCategory = attrs.field(converter=InitFailureCategory, validator=_check_category)
    message: str = attrs.field(validator=_check_message)
    job_name: str | None = attrs.field(default=None, validator=_check_job_name)

    @classmethod
    def of(
        cls,
        scope: InitFailureScope,
        category: InitFailureCategory,
        message: str,
        job_name: str | None = None,
    ) -> InitFailure:
        """Build one from an unbounded message, keeping its first 2000 characters."""
        return cls(scope, category, message[:INIT_FAILURE_MESSAGE_MAX], job_name)
