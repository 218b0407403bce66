"""From a matched lock workflow to the jobs ``kici run local`` schedules (CLI-08, EXE-16).

Static matrices expand into their children (``test (3.11)``), which the needs scheduler of
:mod:`kici.domain.execution.needs` treats as a fan-out: every child inherits the job's needs and a
job needing ``test`` waits for all children. ``--job X`` keeps X and its transitive upstreams.

Choices where the spec is silent (each reported, never silently dropped):

* Dynamic matrices and job generators need the runner's evaluation modes, which the local
  runner does not offer yet: such a job fails with a reason saying so, and a generator becomes
  the scheduler's synthetic failed job, so its dependents skip as they would after a failed
  evaluation.
* ``runs_on_all`` fans out over hosts; locally there is one host, so the job runs once under
  its own name.
* ``--job`` accepts a job name or one matrix child's name (then only that child runs).
* A job ``env`` given as a function (an inline expression or a dynamic value in the lock) is
  not evaluated locally yet: the job runs with its static env only. Workflow-level hooks
  (``on_success``/``cleanup``... of ``workflow()``) run on the orchestrator's synthetic hook
  job, which a local run does not have; job and step hooks run as everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

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
    LockWorkflow,
    NeedsEntry,
    NeedsGroupEntry,
    thaw_json,
)
from kici.domain.lockfile import Need as LockNeed
from kici.domain.matrix import expand_job_matrix

DYNAMIC_MATRIX_UNSUPPORTED = (
    "dynamic matrices are evaluated by an agent's init phase, which `kici run local` does not run yet"
)
GENERATOR_UNSUPPORTED = "job generators (dynamic jobs) are not supported by `kici run local` yet"


class UnknownJobError(ValueError):
    """``--job`` names no job of the workflow."""


@attrs.frozen(kw_only=True)
class PlannedJob:
    """One schedulable job: a static job or one of its matrix children."""

    name: str
    base: str
    job: LockJob
    matrix: Mapping[str, Any] | None = None
    fanout_index: int | None = None
    fanout_total: int | None = None
    unsupported: str | None = None


@attrs.frozen(kw_only=True)
class Generator:
    index: int
    group: str | None


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


def _upstreams(job: LockJob) -> list[str]:
    return [n.name for n in map(to_need, job.needs) if isinstance(n, NameNeed)]


def _closure(jobs: Mapping[str, LockJob], start: str) -> set[str]:
    keep: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in keep or name not in jobs:
            continue
        keep.add(name)
        todo.extend(_upstreams(jobs[name]))
    return keep


def _children(job: LockJob) -> list[PlannedJob]:
    if isinstance(job.matrix, LockDynamicMatrix):
        return [PlannedJob(name=job.name, base=job.name, job=job, unsupported=DYNAMIC_MATRIX_UNSUPPORTED)]
    if not isinstance(job.matrix, LockStaticMatrix):
        return [PlannedJob(name=job.name, base=job.name, job=job)]
    children = expand_job_matrix(
        job.name,
        thaw_json(job.matrix.values),  # type: ignore[arg-type]
        [thaw_json(entry) for entry in job.include or ()],
        [thaw_json(entry) for entry in job.exclude or ()],
    )
    total = len(children)
    return [
        PlannedJob(
            name=child.name,
            base=job.name,
            job=job,
            matrix=dict(child.combination),
            fanout_index=index,
            fanout_total=total,
        )
        for index, child in enumerate(children)
    ]


def _spec(job: LockJob, children: Sequence[PlannedJob]) -> JobNeedsSpec:
    fanout = tuple(c.name for c in children) if isinstance(job.matrix, LockStaticMatrix) else ()
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


def plan_workflow(workflow: LockWorkflow, job_filter: str | None = None) -> WorkflowPlan:
    """The jobs to schedule, in lock order, with their needs specs."""
    static = {entry.name: entry for entry in workflow.jobs if isinstance(entry, LockJob)}
    generators = [
        Generator(index=entry.source.index, group=entry.group)
        for entry in workflow.jobs
        if isinstance(entry, LockDynamicJobFn)
    ]
    only_child: tuple[str, str] | None = None
    keep: set[str] | None = None
    if job_filter is not None:
        base = job_filter
        if job_filter not in static:
            owner = next((j for j in static.values() for c in _children(j) if c.name == job_filter), None)
            if owner is None:
                shown = ", ".join(static) or "none"
                raise UnknownJobError(
                    f'No job named "{job_filter}" in workflow "{workflow.name}" (jobs: {shown})'
                )
            base = owner.name
            only_child = (base, job_filter)
        keep = _closure(static, base)
        wanted_groups = {
            n.group for name in keep for n in map(to_need, static[name].needs) if isinstance(n, GroupNeed)
        }
        wanted_groups |= {g for name in keep for g in static[name].depends_on_groups or ()}
        generators = [g for g in generators if g.group is not None and g.group in wanted_groups]
    jobs: list[PlannedJob] = []
    specs: list[JobNeedsSpec] = []
    for name, job in static.items():
        if keep is not None and name not in keep:
            continue
        children = _children(job)
        if only_child is not None and name == only_child[0]:
            children = [c for c in children if c.name == only_child[1]]
        jobs.extend(children)
        specs.append(_spec(job, children))
    return WorkflowPlan(workflow=workflow, jobs=tuple(jobs), specs=tuple(specs), generators=tuple(generators))
