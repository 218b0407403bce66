"""Names of unnamed jobs, steps and parallel groups: one rule for the compiler and the runner (D3).

The lock refers to jobs and steps by name and the runner finds them again by the
same names, so both must derive them from the same function:

* jobs: an unnamed job is ``job-N``, counting unnamed jobs only, per workflow, in
  ``jobs`` order; generator callables (bare functions and ``dynamic_job``) are not
  jobs and take no number;
* steps: one counter per job over the flattened sequence (``parallel()`` children
  included, in order); only unnamed steps consume it, so naming a step never
  renumbers the others;
* parallel groups: an unnamed group is ``parallel-<k>``, ``k`` being its 0-based
  ordinal among the job's parallel groups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from kici.sdk.steps import Parallel, Step

if TYPE_CHECKING:
    from kici.sdk.jobs import Job
    from kici.sdk.workflow import Workflow


@dataclass(frozen=True)
class NamedEntry:
    """A job's step entry with its effective name; a parallel group lists its named children."""

    name: str
    entry: Step | Parallel
    children: tuple[NamedEntry, ...] = ()

    @property
    def is_parallel(self) -> bool:
        return isinstance(self.entry, Parallel)


def name_steps(steps: Sequence[Step | Parallel]) -> list[NamedEntry]:
    counter = 0
    groups = 0

    def named(item: Step) -> NamedEntry:
        nonlocal counter
        if item.name is not None:
            return NamedEntry(item.name, item)
        counter += 1
        return NamedEntry(f"step-{counter}", item)

    entries: list[NamedEntry] = []
    for entry in steps:
        if isinstance(entry, Parallel):
            name = entry.name if entry.name is not None else f"parallel-{groups}"
            groups += 1
            entries.append(NamedEntry(name, entry, tuple(named(child) for child in entry.steps)))
        else:
            entries.append(named(entry))
    return entries


def step_entries(job: Job) -> list[NamedEntry]:
    return name_steps(job.steps)


def flat_steps(job: Job) -> list[tuple[str, Step]]:
    """Every step of the job with its name, parallel children in place of their group."""
    flat: list[tuple[str, Step]] = []
    for entry in step_entries(job):
        for item in entry.children if entry.is_parallel else (entry,):
            if isinstance(item.entry, Step):
                flat.append((item.name, item.entry))
    return flat


def is_generator(entry: object) -> bool:
    """Workflow ``jobs`` hold jobs and generator callables; jobs are not callable."""
    return callable(entry)


def job_names(workflow: Workflow) -> list[tuple[str, Job]]:
    names: list[tuple[str, Job]] = []
    counter = 0
    for entry in workflow.jobs:
        if is_generator(entry):
            continue
        job = cast("Job", entry)
        if job.name is not None:
            names.append((job.name, job))
        else:
            counter += 1
            names.append((f"job-{counter}", job))
    return names


def generators(workflow: Workflow) -> list[tuple[int, Callable[..., Any]]]:
    """Generator callables with their index in ``jobs`` (the lock's ``source.index``)."""
    return [
        (index, cast("Callable[..., Any]", entry))
        for index, entry in enumerate(workflow.jobs)
        if is_generator(entry)
    ]
