"""The lock-file document ``.kici/kici.lock.json`` as immutable attrs models (spec 00 §2.2).

Field conventions are those of :mod:`kici.domain.lockfile.triggers`: snake_case
attributes renamed to camelCase by the codec; ``_type``/``kind`` tags are implied
by the class; tuples and :class:`FrozenDict` keep every model hashable;
``None``/``False``/:data:`UNSET` defaults mark keys written only when set (see
:mod:`kici.domain.lockfile.fields`). Models are keyword-only.

Durations follow spec 00 §0: ``timeout`` (job, step, workflow, init) and retry
delays are milliseconds; ``grace_period`` and approval ``timeout_seconds`` are
seconds. ``contexts`` on a workflow is a legacy key that the codec accepts and
drops (it is never emitted), so it has no attribute here.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

import attrs

from kici.domain.execution.states import TERMINAL_JOB_STATES_ORDERED
from kici.domain.lockfile.frozen import FrozenDict, JsonValue
from kici.domain.lockfile.triggers import Inputs, Trigger

SCHEMA_VERSION: Final = 1
COMPILE_SCHEMA_VERSION: Final = 5

TERMINAL_JOB_STATUSES: Final[tuple[str, ...]] = tuple(s.value for s in TERMINAL_JOB_STATES_ORDERED)
"""The six terminal job statuses a ``needs`` edge's ``runOn`` may list (spec 10 §2), as plain strings."""

RunsOnPick = Literal["deterministic", "any"]
OnUnreachable = Literal["hold", "skip", "fail"]
Backoff = Literal["fixed", "exponential"]
ApprovalWhen = Literal["always", "drift"]
InitPreset = Literal["mise", "auto"]


# --- shared shapes -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LockSource:
    """``file`` is repo-relative POSIX; ``export`` is ``#<attr>`` or ``#<attr>[i]``."""

    file: str
    export: str


DEFAULT_LOCK_SOURCE: Final = LockSource(file=".kici/workflows", export="#default")
"""Top-level ``source`` of a lock without workflows."""


@attrs.frozen(kw_only=True)
class ExactLabelMatcher:
    value: str


@attrs.frozen(kw_only=True)
class RegexLabelMatcher:
    """``flags`` holds JS flag letters and is always written (possibly empty)."""

    source: str
    flags: str


LabelMatcher: TypeAlias = ExactLabelMatcher | RegexLabelMatcher


@attrs.frozen(kw_only=True)
class LockInlineValue:
    """A pure lambda compiled to source text, evaluated by the orchestrator (LOCK-08)."""

    expression: str


@attrs.frozen(kw_only=True)
class LockRuleSource:
    file: str
    index: int


@attrs.frozen(kw_only=True)
class LockRule:
    """Reference to a rule callable (``_type: dynamic``); see spec 00 §2.2 for ``index``."""

    label: str
    source: LockRuleSource


@attrs.frozen(kw_only=True)
class TeamClause:
    team: str


@attrs.frozen(kw_only=True)
class UserClause:
    user: str


ApproverClause: TypeAlias = TeamClause | UserClause


@attrs.frozen(kw_only=True)
class LockApproval:
    """An AND of clauses; an empty tuple means any approval-capable member."""

    clauses: tuple[ApproverClause, ...] = ()
    reason: str | None = None
    timeout_seconds: float | None = None
    when: ApprovalWhen = "always"


@attrs.frozen(kw_only=True)
class LockCache:
    key: str
    paths: tuple[str, ...]
    restore_keys: tuple[str, ...] | None = None


# --- steps ---------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LockRetry:
    max_attempts: int
    delay_ms: int
    backoff: Backoff
    max_delay_ms: int


@attrs.frozen(kw_only=True)
class LockSourceLocation:
    """1-based line and column of the ``step()`` call."""

    file: str
    line: int
    column: int


@attrs.frozen(kw_only=True)
class LockStep:
    """An ordinary step (``kind`` absent, or ``sequential``)."""

    name: str
    has_outputs: bool
    continue_on_error: bool | None = None
    timeout: int | None = None
    retry: LockRetry | None = None
    cache: tuple[LockCache, ...] | None = None
    source_location: LockSourceLocation | None = None
    has_rules: bool = False
    rules: tuple[LockRule, ...] | None = None
    has_on_cancel: bool = False
    has_cleanup: bool = False
    has_check: bool = False
    has_when_in_sync: bool = False
    approval: LockApproval | None = None


@attrs.frozen(kw_only=True)
class LockParallelStep:
    """A ``parallel()`` group (``kind: parallel``); children are plain steps, never groups."""

    name: str
    fail_fast: bool
    max_parallel: int | None = None
    children: tuple[LockStep, ...]


StepEntry: TypeAlias = LockStep | LockParallelStep


# --- jobs ----------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class NeedsEntry:
    """An edge to a static job with the terminal statuses that satisfy it."""

    name: str
    run_on: tuple[str, ...]


@attrs.frozen(kw_only=True)
class NeedsGroupEntry:
    """An edge to every job a tagged generator (``dynamic_group``) produces."""

    group: str
    run_on: tuple[str, ...]


Need: TypeAlias = str | NeedsEntry | NeedsGroupEntry
"""A plain name means ``runOn: [success]``."""


@attrs.frozen(kw_only=True)
class LockRunsOnAll:
    """Host fan-out predicate: OR of AND-groups in ``include``, minus any host matching ``exclude``."""

    include: tuple[tuple[LabelMatcher, ...], ...]
    exclude: tuple[LabelMatcher, ...] = ()


MatrixValues: TypeAlias = tuple[JsonValue, ...] | FrozenDict[str, tuple[JsonValue, ...]]


@attrs.frozen(kw_only=True)
class LockStaticMatrix:
    """A list (1-D, ``ctx.matrix.value``) or a mapping of dimension -> values."""

    values: MatrixValues


@attrs.frozen(kw_only=True)
class LockMatrixSource:
    file: str
    job_name: str


@attrs.frozen(kw_only=True)
class LockDynamicMatrix:
    source: LockMatrixSource


LockMatrix: TypeAlias = LockStaticMatrix | LockDynamicMatrix


@attrs.frozen(kw_only=True)
class LockContainer:
    image: str
    env: FrozenDict[str, str] | None = None


@attrs.frozen(kw_only=True)
class LockEnvironment:
    """One bound environment; an impure function is ``value=""``, ``dynamic=True``."""

    value: str | LockInlineValue
    dynamic: bool


@attrs.frozen(kw_only=True)
class LockResourceSpec:
    cpus: float | None = None
    memory: str | None = None


@attrs.frozen(kw_only=True)
class LockResources:
    requests: LockResourceSpec | None = None
    limits: LockResourceSpec | None = None


@attrs.frozen(kw_only=True)
class LockInitCommand:
    """A generic ``Init(run, ...)``; ``timeout`` in ms (SDK default 600 s)."""

    run: str
    shell: str = "bash"
    cache: tuple[LockCache, ...] | None = None
    timeout: int = 600_000
    env: FrozenDict[str, str] | None = None


@attrs.frozen(kw_only=True)
class LockMiseOptions:
    """``Mise(...)`` options; ``cache=False`` disables the tool cache, ``None`` keeps the default."""

    cache: LockCache | Literal[False] | None = None
    timeout: int | None = None
    env: FrozenDict[str, str] | None = None
    shell: str | None = None


@attrs.frozen(kw_only=True)
class LockMiseInit:
    """Written ``{"mise": {...}}``; the bare preset is the string ``"mise"``."""

    mise: LockMiseOptions


InitEntry: TypeAlias = InitPreset | LockInitCommand | LockMiseInit
LockInit: TypeAlias = InitEntry | Literal[False] | tuple[InitEntry, ...]
"""``False`` (init disabled) is kept in the lock; a tuple runs its entries in order."""


@attrs.frozen(kw_only=True)
class LockJob:
    """A static job (``_type: static``): everything the orchestrator needs to schedule it."""

    name: str
    runs_on: tuple[LabelMatcher, ...] | None = None
    exclude_labels: tuple[LabelMatcher, ...] | None = None
    runs_on_pick: RunsOnPick | None = None
    runs_on_all: LockRunsOnAll | None = None
    on_unreachable: OnUnreachable | None = None
    include_uninitialized: bool | None = None
    max_parallel: int | None = None
    fail_fast: bool | None = None
    needs: tuple[Need, ...] = ()
    depends_on_groups: tuple[str, ...] | None = None
    steps: tuple[StepEntry, ...] = ()
    matrix: LockMatrix | None = None
    include: tuple[FrozenDict[str, JsonValue], ...] | None = None
    exclude: tuple[FrozenDict[str, JsonValue], ...] | None = None
    rules: tuple[LockRule, ...] | None = None
    description: str | None = None
    checkout: bool | None = None
    cache: tuple[LockCache, ...] | None = None
    container: str | LockContainer | None = None
    environments: tuple[LockEnvironment, ...] | None = None
    env: FrozenDict[str, str] | LockInlineValue | None = None
    dynamic_env: bool = False
    concurrency_group: str | LockInlineValue | None = None
    dynamic_concurrency_group: bool = False
    has_on_cancel: bool = False
    has_cleanup: bool = False
    has_on_success: bool = False
    has_on_failure: bool = False
    has_before_step: bool = False
    has_after_step: bool = False
    grace_period: float | None = None
    timeout: int | None = None
    resources: LockResources | None = None
    init: LockInit | None = None
    approval: LockApproval | None = None


@attrs.frozen(kw_only=True)
class LockGeneratorSource:
    """``index`` is the generator's position in the workflow's ``jobs``."""

    file: str
    index: int


@attrs.frozen(kw_only=True)
class LockDynamicJobFn:
    """A job generator (``_type: dynamic``), evaluated on an agent (spec 10 §9)."""

    source: LockGeneratorSource
    group: str | None = None
    needs: tuple[Need, ...] | None = None
    result_aware: bool = False


JobEntry: TypeAlias = LockJob | LockDynamicJobFn


# --- workflow and file ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LockRegistry:
    """A private package index; ``token_secret`` is ``<environment>:<secret>``, never the token."""

    url: str
    scope: str | None = None
    token_secret: str
    always_auth: bool | None = None


@attrs.frozen(kw_only=True)
class LockConcurrency:
    """The group function is always runner-evaluated, so only its presence is recorded."""

    has_group: bool
    cancel_in_progress: bool | None = None
    max: int | None = None


@attrs.frozen(kw_only=True)
class LockWorkflow:
    name: str
    source: LockSource
    content_hash: str
    compile_schema_version: int = COMPILE_SCHEMA_VERSION
    triggers: tuple[Trigger, ...] = ()
    jobs: tuple[JobEntry, ...] = ()
    rules: tuple[LockRule, ...] | None = None
    description: str | None = None
    hash_files: tuple[str, ...] | None = None
    resolved_hash_files: tuple[str, ...] | None = None
    registries: tuple[LockRegistry, ...] | None = None
    install_env: tuple[str, ...] | None = None
    has_on_cancel: bool = False
    has_cleanup: bool = False
    has_on_success: bool = False
    has_on_failure: bool = False
    concurrency: LockConcurrency | None = None
    timeout: int | None = None
    approval: LockApproval | None = None


@attrs.frozen(kw_only=True)
class LockFile:
    schema_version: int = SCHEMA_VERSION
    source: LockSource = DEFAULT_LOCK_SOURCE
    content_hash: str
    lockfile_hash: str | None = None
    workflows: tuple[LockWorkflow, ...] = ()


__all__ = [
    "COMPILE_SCHEMA_VERSION",
    "DEFAULT_LOCK_SOURCE",
    "SCHEMA_VERSION",
    "TERMINAL_JOB_STATUSES",
    "ApprovalWhen",
    "ApproverClause",
    "Backoff",
    "ExactLabelMatcher",
    "InitEntry",
    "InitPreset",
    "Inputs",
    "JobEntry",
    "LabelMatcher",
    "LockApproval",
    "LockCache",
    "LockConcurrency",
    "LockContainer",
    "LockDynamicJobFn",
    "LockDynamicMatrix",
    "LockEnvironment",
    "LockFile",
    "LockGeneratorSource",
    "LockInit",
    "LockInitCommand",
    "LockInlineValue",
    "LockJob",
    "LockMatrix",
    "LockMatrixSource",
    "LockMiseInit",
    "LockMiseOptions",
    "LockParallelStep",
    "LockRegistry",
    "LockResourceSpec",
    "LockResources",
    "LockRetry",
    "LockRule",
    "LockRuleSource",
    "LockRunsOnAll",
    "LockSource",
    "LockSourceLocation",
    "LockStaticMatrix",
    "LockStep",
    "LockWorkflow",
    "MatrixValues",
    "Need",
    "NeedsEntry",
    "NeedsGroupEntry",
    "OnUnreachable",
    "RegexLabelMatcher",
    "RunsOnPick",
    "StepEntry",
    "TeamClause",
    "UserClause",
]
