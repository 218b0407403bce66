"""The needs gate (EXE-16/17/18/21) as an immutable scheduler state.

Every function takes a :class:`SchedulerState` and returns a new one plus a
:class:`SchedulerOutcome` naming the jobs that became ready for dispatch, were
skipped, or were failed by the scheduler. The PostgreSQL adapter implements the
same decisions over ``execution_jobs`` / ``execution_job_needs``; this model is
what it is differentially tested against.

Decisions where the spec is silent:

* A job listing the same upstream twice keeps the first entry's ``run_on``
  (the table's primary key is ``(run_id, job_name, upstream_name)``; the
  adapter inserts with ``ON CONFLICT DO NOTHING``).
* A terminal status delivered for an already terminal job is ignored: terminal
  rows are immutable, the first status wins.
* Fail-fast on a fan-out wave trips on the statuses that fail a run
  (failed, timed_out_stale, drift_dropped); a cancelled or skipped child is not
  a failure, as with a cancelled parallel step.
* Only an ungated child finishing releases the next gated one, so a gated child
  cancelled by a run cancel never lets more than ``max_parallel`` children run.
* An L2 cycle fails every job on every cycle found, and the failure then
  propagates like any other; aborting the run is the orchestrator's decision.
* ``ready_at`` is stamped by the adapter when it flips ``needs_satisfied``; the
  model carries no clock.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from types import MappingProxyType
from typing import TypeVar

import attrs

from kici.domain.dag import kahn
from kici.domain.execution.states import (
    FAILING_JOB_STATES,
    TERMINAL_JOB_STATES,
    TERMINAL_JOB_STATES_ORDERED,
    JobStatus,
)

_T = TypeVar("_T")

RunOn = frozenset[JobStatus]

DEFAULT_RUN_ON: RunOn = frozenset({JobStatus.SUCCESS})

WHEN_RUN_ON: Mapping[str, tuple[JobStatus, ...]] = MappingProxyType(
    {
        "on-success": (JobStatus.SUCCESS,),
        "always": TERMINAL_JOB_STATES_ORDERED,
        "on-skip": (JobStatus.SUCCESS, JobStatus.SKIPPED),
        "on-failure": (JobStatus.FAILED, JobStatus.TIMED_OUT_STALE),
    }
)

WAVE_HALTED_REASON = "fan-out halted by failFast"
STUCK_REASON = "stuck: needs never became satisfied although every upstream is terminal"


class InvalidWhenError(ValueError):
    """A ``when`` that is neither a known keyword nor a non-empty subset of terminal statuses."""


class InvalidNeedError(ValueError):
    """A lock ``needs`` entry of no known shape, or a group need where only names are allowed."""


class DuplicateJobError(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"job {name!r} already exists in this run")
        self.name = name


class UnknownJobError(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"job {name!r} is not part of this run")
        self.name = name


class NotTerminalError(ValueError):
    """A non-terminal status given where the scheduler needs a terminal one."""


class GroupAlreadyResolvedError(ValueError):
    def __init__(self, group: str) -> None:
        super().__init__(f"dynamic group {group!r} was already resolved")
        self.group = group


def _ordered(statuses: Iterable[JobStatus]) -> tuple[JobStatus, ...]:
    chosen = frozenset(statuses)
    return tuple(s for s in TERMINAL_JOB_STATES_ORDERED if s in chosen)


def when_to_run_on(when: str | Sequence[str] | None) -> tuple[JobStatus, ...]:
    """The lock ``runOn`` for an SDK ``when`` (unset means on-success), in canonical order.

    Raises :class:`InvalidWhenError` for anything else: the SDK reports it as E217.
    """
    if when is None:
        return WHEN_RUN_ON["on-success"]
    if isinstance(when, str):
        try:
            return WHEN_RUN_ON[when]
        except KeyError:
            raise InvalidWhenError(f"unknown when {when!r} (allowed: {', '.join(WHEN_RUN_ON)})") from None
    if not when:
        raise InvalidWhenError("when must list at least one terminal status")
    statuses: list[JobStatus] = []
    for value in when:
        if not isinstance(value, str) or value not in TERMINAL_JOB_STATES:
            raise InvalidWhenError(f"{value!r} is not a terminal job status")
        statuses.append(JobStatus(value))
    return _ordered(statuses)


def resolve_run_on(raw: object) -> RunOn:
    """The gate's reading of a stored ``runOn``: anything malformed or empty reads as ``[success]``."""
    if raw is None or not isinstance(raw, str | list | tuple):
        return DEFAULT_RUN_ON
    try:
        return frozenset(when_to_run_on(raw))
    except InvalidWhenError:
        return DEFAULT_RUN_ON


def parse_run_on_column(text: str) -> RunOn:
    """Read ``execution_job_needs.run_on`` (a JSON array)."""
    try:
        return resolve_run_on(json.loads(text))
    except ValueError:
        return DEFAULT_RUN_ON


def format_run_on(run_on: Iterable[JobStatus]) -> str:
    """Write ``execution_job_needs.run_on``: a JSON array in canonical order (``'["success"]'``)."""
    return json.dumps([s.value for s in _ordered(run_on)])


def _run_on(values: Iterable[JobStatus]) -> RunOn:
    return frozenset(values)


@attrs.frozen
class NameNeed:
    name: str
    run_on: RunOn = attrs.field(default=DEFAULT_RUN_ON, converter=_run_on)


@attrs.frozen
class GroupNeed:
    group: str
    run_on: RunOn = attrs.field(default=DEFAULT_RUN_ON, converter=_run_on)


Need = NameNeed | GroupNeed


def parse_lock_need(entry: object) -> Need:
    """One lock ``needs`` entry: ``"name"``, ``{name, runOn}`` or ``{group, runOn}``."""
    if isinstance(entry, str) and entry:
        return NameNeed(entry)
    if isinstance(entry, Mapping):
        name, group = entry.get("name"), entry.get("group")
        run_on = resolve_run_on(entry.get("runOn"))
        if isinstance(name, str) and name and group is None:
            return NameNeed(name, run_on)
        if isinstance(group, str) and group and name is None:
            return GroupNeed(group, run_on)
    raise InvalidNeedError(f"needs entry {entry!r} is not a name, {{name, runOn}} or {{group, runOn}}")


def _check_max_parallel(_: object, __: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"max_parallel must be >= 1, got {value}")


@attrs.frozen
class WaveConfig:
    max_parallel: int = attrs.field(validator=_check_max_parallel)
    fail_fast: bool


def _tuple(values: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(values)


@attrs.frozen
class JobNeedsSpec:
    """One lock job as the gate sees it.

    ``fanout`` lists the expanded children (``test (a)``, ...); when non-empty,
    ``name`` is the base and only the children exist as jobs, each inheriting
    ``needs``. ``wave`` applies to the children of a fan-out.
    """

    name: str
    needs: tuple[Need, ...] = attrs.field(default=(), converter=_tuple)
    depends_on_groups: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    fanout: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    wave: WaveConfig | None = None

    @property
    def job_names(self) -> tuple[str, ...]:
        return self.fanout or (self.name,)


@attrs.frozen
class Edge:
    job: str
    upstream: str
    run_on: RunOn


@attrs.frozen
class JobNode:
    """One ``execution_jobs`` row as far as the gate is concerned.

    ``status`` is None until the job is terminal. ``reason`` records why the
    scheduler itself skipped or failed it.
    """

    name: str
    base_job_name: str | None = None
    group_name: str | None = None
    status: JobStatus | None = None
    needs_satisfied: bool = False
    wave_gated: bool = False
    pending_groups: tuple[GroupNeed, ...] = ()
    reason: str | None = None

    @property
    def dispatched(self) -> bool:
        """Handed to the dispatcher: needs satisfied and not held back by a wave."""
        return self.needs_satisfied and not self.wave_gated

    @property
    def terminal(self) -> bool:
        return self.status is not None


@attrs.frozen
class Wave:
    children: tuple[str, ...]
    max_parallel: int
    fail_fast: bool


@attrs.frozen
class SkippedJob:
    name: str
    reason: str


@attrs.frozen
class FailedJob:
    name: str
    reason: str


@attrs.frozen
class SchedulerOutcome:
    """What one operation changed; ``ignored`` lists terminal statuses dropped as duplicates."""

    dispatched: tuple[str, ...] = ()
    skipped: tuple[SkippedJob, ...] = ()
    failed: tuple[FailedJob, ...] = ()
    ignored: tuple[str, ...] = ()
    cycles: tuple[tuple[str, ...], ...] = ()


@attrs.frozen
class SchedulerState:
    """The gate's view of one run; never mutated, every operation returns a new one.

    ``edges`` maps a job to its upstream edges in insertion order; ``downstreams``
    maps an upstream name (possibly of a job not created yet) to its dependents.
    """

    jobs: Mapping[str, JobNode]
    edges: Mapping[str, tuple[Edge, ...]]
    downstreams: Mapping[str, tuple[str, ...]]
    waves: Mapping[str, Wave]
    resolved_groups: frozenset[str] = frozenset()

    def status_of(self, name: str) -> JobStatus | None:
        return self.job(name).status

    def edges_of(self, name: str) -> tuple[Edge, ...]:
        return self.edges.get(name, ())

    def job(self, name: str) -> JobNode:
        try:
            return self.jobs[name]
        except KeyError:
            raise UnknownJobError(name) from None


EMPTY_STATE = SchedulerState(
    jobs=MappingProxyType({}),
    edges=MappingProxyType({}),
    downstreams=MappingProxyType({}),
    waves=MappingProxyType({}),
)


class VerdictKind(StrEnum):
    DISPATCH = "dispatch"
    NOT_READY = "not_ready"
    SKIP = "skip"


@attrs.frozen
class Verdict:
    kind: VerdictKind
    reason: str | None = None


def unmet_reason(upstream: str, status: JobStatus) -> str:
    return f"upstream_unmet: {upstream} ({status})"


def _verdict(jobs: Mapping[str, JobNode], node: JobNode, edges: Sequence[Edge]) -> Verdict:
    # Violations first: one terminal upstream outside its run_on decides the job
    # whatever the others do; only then can a pending upstream or group hold it back.
    for edge in edges:
        upstream = jobs.get(edge.upstream)
        if upstream is not None and upstream.status is not None and upstream.status not in edge.run_on:
            return Verdict(VerdictKind.SKIP, unmet_reason(edge.upstream, upstream.status))
    if node.pending_groups:
        return Verdict(VerdictKind.NOT_READY)
    for edge in edges:
        upstream = jobs.get(edge.upstream)
        if upstream is None or upstream.status is None:
            return Verdict(VerdictKind.NOT_READY)
    return Verdict(VerdictKind.DISPATCH)


def check_all_upstreams(state: SchedulerState, job: str) -> Verdict:
    """Skip if a terminal upstream is outside its edge's ``run_on``; else wait for open upstreams or
    unresolved groups; else dispatch (a job without edges dispatches)."""
    return _verdict(state.jobs, state.job(job), state.edges_of(job))


class _Work:
    """A private mutable copy of a state, frozen again when the operation ends."""

    def __init__(self, state: SchedulerState) -> None:
        self.jobs: dict[str, JobNode] = dict(state.jobs)
        self.edges: dict[str, tuple[Edge, ...]] = dict(state.edges)
        self.downstreams: dict[str, tuple[str, ...]] = dict(state.downstreams)
        self.waves: dict[str, Wave] = dict(state.waves)
        self.resolved_groups = set(state.resolved_groups)
        self.dispatched: list[str] = []
        self.skipped: list[SkippedJob] = []
        self.failed: list[FailedJob] = []
        self.ignored: list[str] = []
        self.cycles: list[tuple[str, ...]] = []
        self.finished: deque[str] = deque()

    def freeze(self) -> tuple[SchedulerState, SchedulerOutcome]:
        state = SchedulerState(
            jobs=MappingProxyType(self.jobs),
            edges=MappingProxyType(self.edges),
            downstreams=MappingProxyType(self.downstreams),
            waves=MappingProxyType(self.waves),
            resolved_groups=frozenset(self.resolved_groups),
        )
        outcome = SchedulerOutcome(
            tuple(self.dispatched),
            tuple(self.skipped),
            tuple(self.failed),
            tuple(self.ignored),
            tuple(self.cycles),
        )
        return state, outcome

    # -- building

    def add_job(self, node: JobNode) -> None:
        if node.name in self.jobs:
            raise DuplicateJobError(node.name)
        self.jobs[node.name] = node

    def add_edge(self, job: str, upstream: str, run_on: RunOn) -> None:
        existing = self.edges.get(job, ())
        if any(edge.upstream == upstream for edge in existing):
            return
        self.edges[job] = (*existing, Edge(job, upstream, run_on))
        dependents = self.downstreams.get(upstream, ())
        if job not in dependents:
            self.downstreams[upstream] = (*dependents, job)

    @property
    def fanouts(self) -> dict[str, tuple[str, ...]]:
        bases: dict[str, list[str]] = {}
        for node in self.jobs.values():
            if node.base_job_name is not None:
                bases.setdefault(node.base_job_name, []).append(node.name)
        return {base: tuple(children) for base, children in bases.items()}

    def add_specs(self, specs: Sequence[JobNeedsSpec], group_name: str | None) -> list[str]:
        """Create the jobs of ``specs`` and their name edges; returns the new job names."""
        created: list[str] = []
        for spec in specs:
            groups: dict[str, GroupNeed] = {}
            for need in spec.needs:
                if isinstance(need, GroupNeed):
                    if group_name is not None:
                        raise InvalidNeedError(f"generated job {spec.name!r} needs group {need.group!r}")
                    groups.setdefault(need.group, need)
            for group in spec.depends_on_groups:
                if group_name is not None:
                    raise InvalidNeedError(f"generated job {spec.name!r} depends on group {group!r}")
                groups.setdefault(group, GroupNeed(group))
            base = spec.name if spec.fanout else None
            for name in spec.job_names:
                self.add_job(JobNode(name, base, group_name, pending_groups=tuple(groups.values())))
                created.append(name)
            if spec.fanout and spec.wave is not None:
                self.waves[spec.name] = Wave(spec.fanout, spec.wave.max_parallel, spec.wave.fail_fast)
                for child in spec.fanout[spec.wave.max_parallel :]:
                    self.jobs[child] = attrs.evolve(self.jobs[child], wave_gated=True)
        fanouts = self.fanouts
        for spec in specs:
            for need in spec.needs:
                if isinstance(need, NameNeed):
                    for upstream in fanouts.get(need.name, (need.name,)):
                        for name in spec.job_names:
                            self.add_edge(name, upstream, need.run_on)
        return created

    # -- deciding

    def verdict(self, name: str) -> Verdict:
        return _verdict(self.jobs, self.jobs[name], self.edges.get(name, ()))

    def settle(self, name: str) -> None:
        """Dispatch or skip an open, unsatisfied job if its upstreams decide it."""
        node = self.jobs[name]
        if node.terminal or node.needs_satisfied:
            return
        verdict = self.verdict(name)
        if verdict.kind is VerdictKind.SKIP:
            assert verdict.reason is not None
            self.skip(name, verdict.reason)
        elif verdict.kind is VerdictKind.DISPATCH:
            self.satisfy(name)

    def satisfy(self, name: str) -> None:
        # The flag flips once (``WHERE needs_satisfied = false``): that is the exactly-once dispatch.
        node = self.jobs[name]
        if node.needs_satisfied:
            return
        self.jobs[name] = attrs.evolve(node, needs_satisfied=True)
        if not node.wave_gated:
            self.dispatched.append(name)

    def finish(self, name: str, status: JobStatus, reason: str | None = None) -> bool:
        node = self.jobs[name]
        if node.terminal:
            return False
        self.jobs[name] = attrs.evolve(node, status=status, reason=reason)
        self.finished.append(name)
        return True

    def skip(self, name: str, reason: str) -> None:
        if self.finish(name, JobStatus.SKIPPED, reason):
            self.skipped.append(SkippedJob(name, reason))

    def fail(self, name: str, reason: str) -> None:
        if self.finish(name, JobStatus.FAILED, reason):
            self.failed.append(FailedJob(name, reason))

    def drain(self) -> None:
        """Run the needs hook, then the wave hook, for every job that finished, until quiet."""
        while self.finished:
            name = self.finished.popleft()
            self.needs_hook(name)
            self.wave_hook(name)

    def needs_hook(self, completed: str) -> None:
        status = self.jobs[completed].status
        assert status is not None
        for dependent in self.downstreams.get(completed, ()):
            node = self.jobs.get(dependent)
            if node is None or node.terminal or node.needs_satisfied:
                continue
            edge = next(e for e in self.edges[dependent] if e.upstream == completed)
            if status not in edge.run_on:
                self.skip(dependent, unmet_reason(completed, status))
            else:
                self.settle(dependent)

    def wave_hook(self, completed: str) -> None:
        node = self.jobs[completed]
        wave = self.waves.get(node.base_job_name) if node.base_job_name is not None else None
        if wave is None or node.wave_gated:
            return
        gated = [c for c in wave.children if self.jobs[c].wave_gated and not self.jobs[c].terminal]
        if not gated:
            return
        if wave.fail_fast and node.status in FAILING_JOB_STATES:
            for child in gated:
                self.skip(child, WAVE_HALTED_REASON)
            return
        released = attrs.evolve(self.jobs[gated[0]], wave_gated=False)
        self.jobs[gated[0]] = released
        if released.needs_satisfied:
            self.dispatched.append(released.name)

    def fail_cycles(self) -> None:
        """L2: fail every job on a cycle of the resolved graph (open jobs only take part)."""
        graph = {
            name: [e.upstream for e in self.edges.get(name, ())]
            for name, node in self.jobs.items()
            if not node.terminal
        }
        while True:
            cycle = kahn(graph).cycle
            if cycle is None:
                return
            self.cycles.append(cycle)
            text = " -> ".join((*cycle, cycle[0]))
            for name in cycle:
                self.fail(name, f"dependency cycle: {text}")
                del graph[name]


def insert_edges_for_run(specs: Sequence[JobNeedsSpec]) -> tuple[SchedulerState, SchedulerOutcome]:
    """Create a run's jobs and name edges; roots (no edges, no groups) are dispatched at once.

    Group needs stay pending until :func:`resolve_group_edges`. Raises
    :class:`DuplicateJobError` when two jobs (or fan-out children) share a name.
    A cycle in a (hand-edited) lock file is failed here already (L2).
    """
    work = _Work(EMPTY_STATE)
    created = work.add_specs(specs, None)
    work.fail_cycles()
    work.drain()
    for name in created:
        node = work.jobs[name]
        if not node.terminal and not work.edges.get(name) and not node.pending_groups:
            work.satisfy(name)
    return work.freeze()


def _validated(state: SchedulerState, statuses: Mapping[str, JobStatus]) -> None:
    for name, status in statuses.items():
        state.job(name)
        if status not in TERMINAL_JOB_STATES:
            raise NotTerminalError(f"job {name!r}: {status} is not a terminal status")


def apply_terminals(
    state: SchedulerState, statuses: Mapping[str, JobStatus]
) -> tuple[SchedulerState, SchedulerOutcome]:
    """Record several terminal statuses at once, then run the needs and wave hooks.

    Recording them together is what a run cancel needs: every pending job is
    cancelled before any of them could skip a dependent that is itself being
    cancelled. Statuses for already terminal jobs are ignored.
    """
    _validated(state, statuses)
    work = _Work(state)
    for name, status in statuses.items():
        if not work.finish(name, status):
            work.ignored.append(name)
    work.drain()
    return work.freeze()


def apply_terminal(
    state: SchedulerState, job: str, status: JobStatus
) -> tuple[SchedulerState, SchedulerOutcome]:
    """One job reached a terminal status (from the tracker, the stale detector or a peer)."""
    return apply_terminals(state, {job: status})


def evaluate_downstreams(state: SchedulerState, completed: str) -> tuple[SchedulerState, SchedulerOutcome]:
    """Re-run the needs hook of an already terminal job; dispatches nothing twice.

    This is what a peer coordinator's completion or a replayed notification
    triggers; the status is the one the state already holds.
    """
    if state.job(completed).status is None:
        raise NotTerminalError(f"job {completed!r} is not terminal")
    work = _Work(state)
    work.needs_hook(completed)
    work.drain()
    return work.freeze()


def recompute_needs_satisfied(state: SchedulerState) -> tuple[SchedulerState, SchedulerOutcome]:
    """Restart path: decide every open, unsatisfied job from the statuses the state holds."""
    work = _Work(state)
    for name in list(work.jobs):
        work.settle(name)
        work.drain()
    return work.freeze()


def _dependents_of_group(work: _Work, group: str) -> list[tuple[str, GroupNeed]]:
    found: list[tuple[str, GroupNeed]] = []
    for name, node in work.jobs.items():
        need = next((g for g in node.pending_groups if g.group == group), None)
        if need is not None:
            found.append((name, need))
            remaining = tuple(g for g in node.pending_groups if g.group != group)
            work.jobs[name] = attrs.evolve(node, pending_groups=remaining)
    return found


def resolve_group_edges(
    state: SchedulerState, group: str, members: Sequence[JobNeedsSpec]
) -> tuple[SchedulerState, SchedulerOutcome]:
    """A dynamic group's evaluation completed with ``members`` (EXE-21).

    Members join the run tagged with the group; every dependent gets one edge per
    member with the ``run_on`` of its group need; an empty group adds no edge, so
    its dependents dispatch (an empty AND is true). Members may only need jobs by
    name. Cycles the new edges close are failed (L2).
    """
    if group in state.resolved_groups:
        raise GroupAlreadyResolvedError(group)
    work = _Work(state)
    work.resolved_groups.add(group)
    created = work.add_specs(members, group)
    for dependent, need in _dependents_of_group(work, group):
        for member in created:
            work.add_edge(dependent, member, need.run_on)
    work.fail_cycles()
    work.drain()
    for name in list(work.jobs):
        work.settle(name)
        work.drain()
    return work.freeze()


def eval_failed_job_name(index: int) -> str:
    return f"dynamic-eval-failed-{index}"


def fail_group_eval(
    state: SchedulerState, index: int, group: str | None, reason: str
) -> tuple[SchedulerState, SchedulerOutcome]:
    """A dynamic evaluation failed: add the synthetic failed job and edges from the group's dependents.

    Dependents then skip (or run, for ``on-failure``/``always``) through the normal
    needs hook instead of waiting for the L3 backstop.
    """
    tag = group if group is not None else f"__dynamic__{index}"
    if tag in state.resolved_groups:
        raise GroupAlreadyResolvedError(tag)
    work = _Work(state)
    work.resolved_groups.add(tag)
    synthetic = eval_failed_job_name(index)
    work.add_job(JobNode(synthetic, group_name=tag))
    if group is not None:
        for dependent, need in _dependents_of_group(work, group):
            work.add_edge(dependent, synthetic, need.run_on)
    work.fail(synthetic, reason)
    work.drain()
    return work.freeze()


def failure_propagation_targets(state: SchedulerState, job: str, status: JobStatus) -> tuple[str, ...]:
    """The jobs a ``status`` of ``job`` skips: BFS over edges whose ``run_on`` excludes the status
    of the job propagating (``status`` at the first hop, ``skipped`` beyond). Only open,
    unsatisfied jobs can be skipped, so the search stops at the others."""
    state.job(job)
    order: list[str] = []
    seen = {job}
    frontier: deque[tuple[str, JobStatus]] = deque([(job, status)])
    while frontier:
        upstream, propagated = frontier.popleft()
        for dependent in state.downstreams.get(upstream, ()):
            node = state.jobs.get(dependent)
            if dependent in seen or node is None or node.terminal or node.needs_satisfied:
                continue
            edge = next(e for e in state.edges[dependent] if e.upstream == upstream)
            if propagated not in edge.run_on:
                seen.add(dependent)
                order.append(dependent)
                frontier.append((dependent, JobStatus.SKIPPED))
    return tuple(order)


def find_stuck_jobs(state: SchedulerState) -> tuple[str, ...]:
    """L3, before a run is declared complete: open jobs the gate can no longer move.

    That is an unsatisfied job without unresolved groups whose upstreams all exist
    and are terminal (or that has no edges), and a satisfied but wave-gated child
    with no running sibling left to release it.
    """
    stuck: list[str] = []
    for name, node in state.jobs.items():
        if node.terminal:
            continue
        if not node.needs_satisfied:
            if node.pending_groups:
                continue
            upstreams = [state.jobs.get(e.upstream) for e in state.edges_of(name)]
            if all(u is not None and u.terminal for u in upstreams):
                stuck.append(name)
        elif node.wave_gated:
            wave = state.waves[node.base_job_name] if node.base_job_name is not None else None
            siblings = wave.children if wave is not None else ()
            if not any(not state.jobs[c].wave_gated and not state.jobs[c].terminal for c in siblings):
                stuck.append(name)
    return tuple(stuck)


def fail_stuck_jobs(state: SchedulerState) -> tuple[SchedulerState, SchedulerOutcome]:
    """Fail what :func:`find_stuck_jobs` reports (the orchestrator logs each as an error)."""
    work = _Work(state)
    for name in find_stuck_jobs(state):
        work.fail(name, STUCK_REASON)
    work.drain()
    return work.freeze()
