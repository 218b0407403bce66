"""From a matched lock workflow to the jobs ``kici run local`` schedules (CLI-08, EXE-16/19/20/21/34).

Static matrices expand into their children (``test (3.11)``), which the needs scheduler of
:mod:`kici.domain.execution.needs` treats as a fan-out: every child inherits the job's needs and a
job needing ``test`` waits for all children. ``--job X`` keeps X and its transitive upstreams.

Dynamic parts are evaluated by the runner's special job types (10 §4) and planned here from what
they returned:

* a job with a dynamic matrix or a dynamic ``env`` is planned again once its ``__init__<job>``
  evaluation answered (:class:`InitOutcome`): the matrix expands like a static one, except that 0 or
  more than 256 children fail the job with the ``matrix_expansion`` category; a failed evaluation
  fails the job with its error. Without an outcome the job fails with
  :data:`DYNAMIC_MATRIX_UNSUPPORTED` (its evaluation never ran, e.g. after Ctrl-C);
* every generator is an evaluation node ``__dynamic__<workflow>__<index>`` (:class:`Generator`):
  event-only ones have no needs and start with the roots, result-aware ones wait for their declared
  needs; the jobs they produce are planned by :func:`plan_generated` and join the run as the
  members of the generator's group.

Choices where the spec is silent (each reported, never silently dropped):

* ``runs_on_all`` fans out over hosts; locally there is one host, so the job runs once under
  its own name.
* ``--job`` accepts a job name or one child of a static matrix (then only that child runs); the
  generators of the groups the kept jobs need are kept with their own upstreams. A generated job
  needing a job that ``--job`` left out fails its generator's evaluation (unknown job).
* A job ``env`` given as an inline expression is not evaluated locally: the job runs with its static
  env only. Workflow-level hooks (``on_success``/``cleanup``... of ``workflow()``) run on the
  orchestrator's synthetic hook job, which a local run does not have; job and step hooks run as
  everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from kici.domain.dynamic import (
    FLAT_STEP,
    MatrixExpansionError,
    eval_job_name,
    expand_dynamic_matrix,
    group_tag,
)
from kici.domain.execution.needs import (
    GroupNeed,
    JobNeedsSpec,
    NameNeed,
    Need,
    WaveConfig,
    resolve_run_on,
)
from kici.domain.lockfile import (
    LockDynamicJobFn,
    LockDynamicMatrix,
    LockJob,
    LockStaticMatrix,
    LockStep,
    LockWorkflow,
    NeedsEntry,
    NeedsGroupEntry,
    thaw_json,
)
from kici.domain.lockfile import Need as LockNeed
from kici.domain.matrix import MatrixChild, expand_job_matrix

DYNAMIC_MATRIX_UNSUPPORTED = "dynamic matrix not evaluated: the job's __init__ evaluation did not run"


class UnknownJobError(ValueError):
    """``--job`` names no job of the workflow."""


@attrs.frozen(kw_only=True)
class InitOutcome:
    """What a job's ``__init__`` evaluation answered: matrix values and env, or why it failed."""

    matrix: Any = None
    env: Mapping[str, str] | None = None
    error: str | None = None


@attrs.frozen(kw_only=True)
class Origin:
    """How a generated job's runner finds it again: its generator, the names that generator produced
    and the ``ctx.needs`` view it saw (10 §9 ``dynamicSource``)."""

    index: int
    group: str | None
    result_aware: bool
    expected: tuple[str, ...]
    needs: Mapping[str, Any] | None = attrs.field(default=None, eq=False)


@attrs.frozen(kw_only=True)
class PlannedJob:
    """One schedulable job: a static job, one of its matrix children, or a generated job.

    ``failure`` set: the job fails with that reason without running (an evaluation said so).
    """

    name: str
    base: str
    job: LockJob
    matrix: Mapping[str, Any] | None = None
    fanout_index: int | None = None
    fanout_total: int | None = None
    failure: str | None = None
    env: Mapping[str, str] | None = None
    origin: Origin | None = None

    @property
    def unsupported(self) -> str | None:
        return self.failure


@attrs.frozen(kw_only=True)
class Generator:
    """A generator's evaluation node; ``needs`` are its declared needs (result-aware) or none."""

    index: int
    group: str | None
    name: str = ""
    needs: tuple[Need, ...] = ()
    result_aware: bool = False

    @property
    def tag(self) -> str:
        return group_tag(self.index, self.group)


@attrs.frozen(kw_only=True)
class WorkflowPlan:
    workflow: LockWorkflow
    jobs: tuple[PlannedJob, ...]
    specs: tuple[JobNeedsSpec, ...]
    generators: tuple[Generator, ...] = ()

    @property
    def by_name(self) -> dict[str, PlannedJob]:
        return {job.name: job for job in self.jobs}


def to_need(need: LockNeed) -> Need:
    """A lock ``needs`` entry as the scheduler's edge description."""
    if isinstance(need, str):
        return NameNeed(need)
    if isinstance(need, NeedsEntry):
        return NameNeed(need.name, resolve_run_on(list(need.run_on)))
    if isinstance(need, NeedsGroupEntry):
        return GroupNeed(need.group, resolve_run_on(list(need.run_on)))
    raise TypeError(f"unknown needs entry {need!r}")


def needs_init(job: LockJob) -> bool:
    """Does the job have values only an ``__init__`` evaluation can give (matrix, env)?"""
    return isinstance(job.matrix, LockDynamicMatrix) or job.dynamic_env


def is_flat(job: LockJob) -> bool:
    """A job whose only step is the unnamed ``step-1`` (``run=``): its result reads flat."""
    return len(job.steps) == 1 and isinstance(job.steps[0], LockStep) and job.steps[0].name == FLAT_STEP


def _names(needs: Sequence[Need]) -> list[str]:
    return [n.name for n in needs if isinstance(n, NameNeed)]


def _groups(needs: Sequence[Need]) -> set[str]:
    return {n.group for n in needs if isinstance(n, GroupNeed)}


def _closure(jobs: Mapping[str, LockJob], start: Sequence[str]) -> set[str]:
    keep: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in keep or name not in jobs:
            continue
        keep.add(name)
        todo.extend(_names([to_need(n) for n in jobs[name].needs]))
    return keep


def _fanout(
    job: LockJob,
    children: Sequence[MatrixChild],
    **extra: Any,
) -> list[PlannedJob]:
    total = len(children)
    return [
        PlannedJob(
            name=child.name,
            base=job.name,
            job=job,
            matrix=dict(child.combination),
            fanout_index=index,
            fanout_total=total,
            **extra,
        )
        for index, child in enumerate(children)
    ]


def _runtime_children(job: LockJob, values: Any, **extra: Any) -> list[PlannedJob]:
    """Children of a matrix known only at run time: a matrix_expansion problem fails the job."""
    try:
        children = expand_dynamic_matrix(
            job.name,
            values,
            [thaw_json(entry) for entry in job.include or ()],
            [thaw_json(entry) for entry in job.exclude or ()],
        )
    except MatrixExpansionError as exc:
        return [PlannedJob(name=job.name, base=job.name, job=job, failure=str(exc), **extra)]
    return _fanout(job, children, **extra)


def _children(job: LockJob, init: InitOutcome | None) -> list[PlannedJob]:
    extra: dict[str, Any] = {}
    if init is not None and init.env is not None:
        extra["env"] = dict(init.env)
    if init is not None and init.error is not None:
        return [PlannedJob(name=job.name, base=job.name, job=job, failure=init.error)]
    if isinstance(job.matrix, LockDynamicMatrix):
        if init is None:
            return [PlannedJob(name=job.name, base=job.name, job=job, failure=DYNAMIC_MATRIX_UNSUPPORTED)]
        return _runtime_children(job, init.matrix if init.matrix is not None else [], **extra)
    if not isinstance(job.matrix, LockStaticMatrix):
        return [PlannedJob(name=job.name, base=job.name, job=job, **extra)]
    children = expand_job_matrix(
        job.name,
        thaw_json(job.matrix.values),  # type: ignore[arg-type]
        [thaw_json(entry) for entry in job.include or ()],
        [thaw_json(entry) for entry in job.exclude or ()],
    )
    return _fanout(job, children, **extra)


def _spec(job: LockJob, children: Sequence[PlannedJob]) -> JobNeedsSpec:
    fanout = tuple(c.name for c in children if c.fanout_total is not None)
    wave = None
    if fanout and job.max_parallel is not None:
        wave = WaveConfig(max_parallel=job.max_parallel, fail_fast=job.fail_fast is not False)
    return JobNeedsSpec(
        name=job.name,
        needs=tuple(to_need(n) for n in job.needs),
        depends_on_groups=tuple(job.depends_on_groups or ()),
        fanout=fanout,
        wave=wave,
    )


def _generator(workflow: LockWorkflow, entry: LockDynamicJobFn) -> Generator:
    return Generator(
        index=entry.source.index,
        group=entry.group,
        name=eval_job_name(workflow.name, entry.source.index),
        needs=tuple(to_need(n) for n in entry.needs or ()),
        result_aware=entry.result_aware,
    )


def _kept(
    static: Mapping[str, LockJob], generators: Sequence[Generator], base: str
) -> tuple[set[str], list[Generator]]:
    """``--job``: the job's upstreams, the generators of the groups they need, and those generators'
    own upstreams, until nothing new is needed."""
    keep = _closure(static, [base])
    chosen: list[Generator] = []
    while True:
        wanted = {g for name in keep for g in _groups([to_need(n) for n in static[name].needs])}
        wanted |= {g for name in keep for g in static[name].depends_on_groups or ()}
        wanted |= {g for gen in chosen for g in _groups(gen.needs)}
        more = [g for g in generators if g.group in wanted and g not in chosen]
        if not more:
            return keep, chosen
        chosen.extend(more)
        keep |= _closure(static, [n for gen in more for n in _names(gen.needs)])


def plan_workflow(
    workflow: LockWorkflow,
    job_filter: str | None = None,
    inits: Mapping[str, InitOutcome] | None = None,
) -> WorkflowPlan:
    """The jobs and evaluation nodes to schedule, in lock order, with their needs specs."""
    inits = inits or {}
    static = {entry.name: entry for entry in workflow.jobs if isinstance(entry, LockJob)}
    generators = [_generator(workflow, e) for e in workflow.jobs if isinstance(e, LockDynamicJobFn)]
    only_child: tuple[str, str] | None = None
    keep: set[str] | None = None
    if job_filter is not None:
        base = job_filter
        if job_filter not in static:
            owner = next(
                (j for j in static.values() for c in _children(j, inits.get(j.name)) if c.name == job_filter),
                None,
            )
            if owner is None:
                shown = ", ".join(static) or "none"
                raise UnknownJobError(
                    f'No job named "{job_filter}" in workflow "{workflow.name}" (jobs: {shown})'
                )
            base = owner.name
            only_child = (base, job_filter)
        keep, generators = _kept(static, generators, base)
    jobs: list[PlannedJob] = []
    specs: list[JobNeedsSpec] = []
    by_index = {g.index: g for g in generators}
    for entry in workflow.jobs:
        if isinstance(entry, LockDynamicJobFn):
            gen = by_index.get(entry.source.index)
            if gen is not None:
                specs.append(JobNeedsSpec(name=gen.name, needs=gen.needs))
            continue
        if keep is not None and entry.name not in keep:
            continue
        children = _children(entry, inits.get(entry.name))
        if only_child is not None and entry.name == only_child[0]:
            children = [c for c in children if c.name == only_child[1]]
        jobs.extend(children)
        specs.append(_spec(entry, children))
    return WorkflowPlan(workflow=workflow, jobs=tuple(jobs), specs=tuple(specs), generators=tuple(generators))


def plan_generated(job: LockJob, origin: Origin) -> tuple[list[PlannedJob], JobNeedsSpec]:
    """A generated job's schedulable children and needs spec; its matrix follows the runtime cap."""
    if job.matrix is None:
        children = [PlannedJob(name=job.name, base=job.name, job=job, origin=origin)]
    elif isinstance(job.matrix, LockStaticMatrix):
        values = thaw_json(job.matrix.values)  # type: ignore[arg-type]
        children = _runtime_children(job, values, origin=origin)
    else:
        children = [
            PlannedJob(
                name=job.name, base=job.name, job=job, failure=DYNAMIC_MATRIX_UNSUPPORTED, origin=origin
            )
        ]
    return children, _spec(job, children)


__all__ = [
    "DYNAMIC_MATRIX_UNSUPPORTED",
    "Generator",
    "InitOutcome",
    "Origin",
    "PlannedJob",
    "UnknownJobError",
    "WorkflowPlan",
    "is_flat",
    "needs_init",
    "plan_generated",
    "plan_workflow",
    "to_need",
]
