"""Hypothesis strategies for the execution core: states, statuses, step shapes, job graphs."""

from __future__ import annotations

import attrs
from hypothesis import strategies as st

from kici.domain.dag import DagNode
from kici.domain.execution.needs import WHEN_RUN_ON, GroupNeed, JobNeedsSpec, NameNeed, Need, WaveConfig
from kici.domain.execution.states import (
    TERMINAL_JOB_STATES_ORDERED,
    CheckMode,
    Event,
    ExecutionState,
    JobStatus,
    TrackedJobState,
)
from kici.domain.execution.steps import CACHE_BLOCK_SIZE, MAX_COMPLETION_HOOKS, JobStepShape

execution_states = st.sampled_from(list(ExecutionState))
events = st.sampled_from(list(Event))
job_statuses = st.sampled_from(list(JobStatus))
terminal_job_statuses = st.sampled_from(TERMINAL_JOB_STATES_ORDERED)
check_modes = st.sampled_from(list(CheckMode))

# What a tracker may hold for a job: a machine state or a forced terminal status.
tracked_job_states: st.SearchStrategy[TrackedJobState] = st.one_of(
    execution_states, st.sampled_from([JobStatus.TIMED_OUT_STALE, JobStatus.DRIFT_DROPPED])
)

job_names = st.text(alphabet="abcdefgh-_ 01", min_size=1, max_size=6)

run_on_sets = st.frozensets(terminal_job_statuses, min_size=1)

whens: st.SearchStrategy[str | list[str] | None] = st.one_of(
    st.none(),
    st.sampled_from(list(WHEN_RUN_ON)),
    st.lists(st.sampled_from([s.value for s in TERMINAL_JOB_STATES_ORDERED]), min_size=1, max_size=8),
)

# Anything a lock file or a database column could hold in place of a run_on.
malformed_run_ons = st.one_of(
    st.just([]),
    st.just(()),
    st.integers(),
    st.text(max_size=12).filter(lambda t: t not in WHEN_RUN_ON),
    st.lists(st.one_of(st.integers(), st.text(max_size=8)), min_size=1, max_size=4).filter(
        lambda xs: any(x not in {s.value for s in TERMINAL_JOB_STATES_ORDERED} for x in xs)
    ),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@st.composite
def job_status_maps(draw: st.DrawFn, *, terminal: bool = False, min_size: int = 0) -> dict[str, JobStatus]:
    statuses = terminal_job_statuses if terminal else job_statuses
    return draw(st.dictionaries(job_names, statuses, min_size=min_size, max_size=8))


@st.composite
def step_shapes(draw: st.DrawFn, max_steps: int = 300) -> JobStepShape:
    """Job shapes inside the layout's limits: cache blocks never reach the init range."""
    n = draw(st.integers(0, max_steps))
    hooked = draw(st.frozensets(st.integers(0, n - 1), max_size=n)) if n else frozenset()
    room = (1_000_000 - 3 * n - 100) // CACHE_BLOCK_SIZE
    owners = draw(st.integers(0, min(room, 12)))
    cache_ops = tuple(draw(st.lists(st.integers(0, 4), min_size=owners, max_size=owners)))
    if owners and draw(st.booleans()):
        cache_ops = (*cache_ops[:-1], CACHE_BLOCK_SIZE)
    return JobStepShape(
        step_count=n,
        steps_with_hooks=hooked,
        completion_hooks=draw(st.integers(0, MAX_COMPLETION_HOOKS)),
        cache_ops=cache_ops,
        init_specs=draw(st.integers(0, 20)),
    )


@st.composite
def dag_graphs(draw: st.DrawFn, max_nodes: int = 8, acyclic: bool = False) -> list[DagNode]:
    """Graphs over unique ids: arbitrary (self-references, missing ids, cycles) or acyclic only."""
    ids = draw(st.lists(st.sampled_from("abcdefghijkl"), unique=True, max_size=max_nodes))
    nodes: list[DagNode] = []
    for i, node_id in enumerate(ids):
        if acyclic:
            needs = draw(st.lists(st.sampled_from(ids[:i]), unique=True)) if i else []
        else:
            pool = [*ids, "x", "y"]
            needs = draw(st.lists(st.sampled_from(pool), unique=True, max_size=4))
        nodes.append(DagNode(node_id, needs))
    if acyclic:
        order = draw(st.permutations(range(len(nodes))))
        nodes = [nodes[i] for i in order]
    return nodes


@attrs.frozen
class RunScenario:
    """A run to replay: static jobs, maybe one dynamic group, and every job's reported outcome."""

    specs: tuple[JobNeedsSpec, ...]
    group: str | None
    members: tuple[JobNeedsSpec, ...]
    outcomes: dict[str, JobStatus]

    @property
    def static_names(self) -> list[str]:
        return [name for spec in self.specs for name in spec.job_names]


@st.composite
def run_scenarios(
    draw: st.DrawFn,
    *,
    max_jobs: int = 7,
    waves: bool = True,
    fail_fast: bool = True,
    groups: bool = True,
    outcome_statuses: st.SearchStrategy[JobStatus] = terminal_job_statuses,
) -> RunScenario:
    """Acyclic runs: names ``j<i>``, needs on earlier jobs, optional fan-out (with waves) and a group ``g``.

    Group members only need static jobs that do not themselves wait for the group,
    so resolving it never closes a cycle.
    """
    count = draw(st.integers(1, max_jobs))
    group = "g" if groups and draw(st.booleans()) else None
    specs: list[JobNeedsSpec] = []
    waits_for_group: set[str] = set()
    for i in range(count):
        name = f"j{i}"
        earlier = [s.name for s in specs]
        picked = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        needs: list[Need] = [NameNeed(up, draw(run_on_sets)) for up in picked]
        if group is not None and draw(st.integers(0, 3)) == 0:
            needs.append(GroupNeed(group, draw(run_on_sets)))
        fanout: tuple[str, ...] = ()
        wave = None
        if draw(st.integers(0, 2)) == 0:
            fanout = tuple(f"{name} ({c})" for c in "abcd"[: draw(st.integers(1, 4))])
            if waves and draw(st.booleans()):
                wave = WaveConfig(draw(st.integers(1, 3)), fail_fast and draw(st.booleans()))
        specs.append(JobNeedsSpec(name, needs, fanout=fanout, wave=wave))
        if any(isinstance(n, GroupNeed) for n in needs) or any(p in waits_for_group for p in picked):
            waits_for_group.add(name)
    members: list[JobNeedsSpec] = []
    if group is not None:
        safe = [s.name for s in specs if s.name not in waits_for_group]
        for k in range(draw(st.integers(0, 3))):
            pool = safe + [m.name for m in members]
            picked = draw(st.lists(st.sampled_from(pool), unique=True, max_size=2)) if pool else []
            fanout = (f"m{k} (x)", f"m{k} (y)") if draw(st.integers(0, 3)) == 0 else ()
            members.append(
                JobNeedsSpec(f"m{k}", [NameNeed(p, draw(run_on_sets)) for p in picked], fanout=fanout)
            )
    names = [n for spec in (*specs, *members) for n in spec.job_names]
    outcomes = {n: draw(outcome_statuses) for n in names}
    return RunScenario(tuple(specs), group, tuple(members), outcomes)
