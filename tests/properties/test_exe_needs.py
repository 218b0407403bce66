"""P-N1..P-N8 and P-W1: the needs gate replayed under random delivery orders and duplicates.

A replay plays the orchestrator: it delivers each dispatched job's predetermined
terminal status in a random order, re-delivers some (same or conflicting status),
re-runs the needs hook of finished jobs, and resolves the dynamic group at a
random moment. Every property is checked on every step of the replay.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.dag import DagNode, kahn
from kici.domain.execution.needs import (
    DEFAULT_RUN_ON,
    WAVE_HALTED_REASON,
    GroupNeed,
    JobNeedsSpec,
    NameNeed,
    SchedulerOutcome,
    SchedulerState,
    apply_terminal,
    evaluate_downstreams,
    failure_propagation_targets,
    find_stuck_jobs,
    insert_edges_for_run,
    recompute_needs_satisfied,
    resolve_group_edges,
    resolve_run_on,
    when_to_run_on,
)
from kici.domain.execution.states import TERMINAL_JOB_STATES, TERMINAL_JOB_STATES_ORDERED, JobStatus
from tests.strategies.execution import (
    RunScenario,
    dag_graphs,
    malformed_run_ons,
    run_on_sets,
    run_scenarios,
    terminal_job_statuses,
    whens,
)


@attrs.frozen
class Step:
    op: str
    job: str | None
    status: JobStatus | None
    before: SchedulerState
    after: SchedulerState
    outcome: SchedulerOutcome


def replay(scenario: RunScenario, rnd: random.Random) -> list[Step]:
    state, outcome = insert_edges_for_run(scenario.specs)
    steps = [Step("insert", None, None, state, state, outcome)]
    ready = list(outcome.dispatched)
    delivered: list[str] = []
    group_open = scenario.group is not None
    while ready or group_open:
        roll = rnd.random()
        job: str | None = None
        status: JobStatus | None = None
        if group_open and (not ready or roll < 0.25):
            assert scenario.group is not None
            op = "group"
            after, outcome = resolve_group_edges(state, scenario.group, scenario.members)
            group_open = False
        elif delivered and roll < 0.4:
            job = rnd.choice(delivered)
            if rnd.random() < 0.5:
                op = "duplicate"
                status = rnd.choice([scenario.outcomes[job], *TERMINAL_JOB_STATES_ORDERED])
                after, outcome = apply_terminal(state, job, status)
            else:
                op = "reevaluate"
                after, outcome = evaluate_downstreams(state, job)
        else:
            op = "terminal"
            job = ready.pop(rnd.randrange(len(ready)))
            status = scenario.outcomes[job]
            delivered.append(job)
            after, outcome = apply_terminal(state, job, status)
        ready.extend(outcome.dispatched)
        steps.append(Step(op, job, status, state, after, outcome))
        state = after
    return steps


def final_statuses(steps: Sequence[Step]) -> dict[str, JobStatus | None]:
    return {name: node.status for name, node in steps[-1].after.jobs.items()}


def edges_satisfied(state: SchedulerState, job: str) -> bool:
    for edge in state.edges_of(job):
        upstream = state.jobs.get(edge.upstream)
        if upstream is None or upstream.status not in edge.run_on:
            return False
    return True


def some_edge_violated(state: SchedulerState, job: str) -> bool:
    for edge in state.edges_of(job):
        upstream = state.jobs.get(edge.upstream)
        if upstream is not None and upstream.status is not None and upstream.status not in edge.run_on:
            return True
    return False


no_fail_fast = run_scenarios(fail_fast=False)
any_scenario = run_scenarios()
randoms = st.integers(0, 2**32 - 1).map(random.Random)


@pytest.mark.feature("EXE-16", "EXE-21")
@given(any_scenario, randoms)
def test_p_n1_never_dispatched_while_an_upstream_is_open(scenario: RunScenario, rnd: random.Random) -> None:
    for step in replay(scenario, rnd):
        for job in step.outcome.dispatched:
            assert not step.after.jobs[job].pending_groups
            for edge in step.after.edges_of(job):
                upstream = step.after.jobs.get(edge.upstream)
                assert upstream is not None
                assert upstream.status in TERMINAL_JOB_STATES


@pytest.mark.feature("EXE-16", "EXE-21")
@given(no_fail_fast, randoms)
def test_p_n2_dispatched_iff_satisfied_skipped_iff_violated(
    scenario: RunScenario, rnd: random.Random
) -> None:
    final = replay(scenario, rnd)[-1].after
    for name, node in final.jobs.items():
        skipped_by_gate = node.reason is not None and node.reason.startswith("upstream_unmet: ")
        assert node.dispatched == edges_satisfied(final, name)
        assert skipped_by_gate == some_edge_violated(final, name)
        assert node.dispatched != skipped_by_gate


@pytest.mark.feature("EXE-16", "EXE-18", "EXE-21")
@given(no_fail_fast, randoms, randoms)
def test_p_n3_confluence_over_delivery_order_and_duplicates(
    scenario: RunScenario, first: random.Random, second: random.Random
) -> None:
    assert final_statuses(replay(scenario, first)) == final_statuses(replay(scenario, second))


@pytest.mark.feature("EXE-16", "EXE-18", "EXE-21")
@given(any_scenario, randoms)
def test_p_n4_each_job_dispatched_at_most_once(scenario: RunScenario, rnd: random.Random) -> None:
    steps = replay(scenario, rnd)
    dispatched = [job for step in steps for job in step.outcome.dispatched]
    assert len(dispatched) == len(set(dispatched))
    assert set(dispatched) == {n for n, node in steps[-1].after.jobs.items() if node.dispatched}
    for step in steps:
        if step.op in {"duplicate", "reevaluate"}:
            assert step.outcome == SchedulerOutcome(ignored=(step.job,) if step.op == "duplicate" else ())
            assert step.after == step.before


@pytest.mark.feature("EXE-16")
@given(no_fail_fast, randoms)
def test_p_n5_skip_set_is_the_bfs_targets(scenario: RunScenario, rnd: random.Random) -> None:
    for step in replay(scenario, rnd):
        if step.op != "terminal":
            continue
        assert step.job is not None
        assert step.status is not None
        skipped = [s.name for s in step.outcome.skipped]
        assert sorted(skipped) == sorted(failure_propagation_targets(step.before, step.job, step.status))


@pytest.mark.feature("EXE-16", "EXE-17", "EXE-18", "EXE-21")
@given(any_scenario, randoms)
def test_p_n6_everything_terminates_and_l3_finds_nothing(scenario: RunScenario, rnd: random.Random) -> None:
    steps = replay(scenario, rnd)
    final = steps[-1].after
    assert all(node.terminal for node in final.jobs.values())
    assert find_stuck_jobs(final) == ()
    for step in steps:
        assert find_stuck_jobs(step.after) == ()


@pytest.mark.feature("EXE-16")
@given(any_scenario, randoms)
def test_restart_recompute_on_a_settled_state_changes_nothing(
    scenario: RunScenario, rnd: random.Random
) -> None:
    for step in replay(scenario, rnd):
        after, outcome = recompute_needs_satisfied(step.after)
        assert outcome == SchedulerOutcome()
        assert after == step.after


def has_cycle(graph: Mapping[str, Sequence[str]]) -> bool:
    for start in graph:
        frontier = [d for d in graph[start] if d in graph]
        seen: set[str] = set()
        while frontier:
            node = frontier.pop()
            if node == start:
                return True
            if node not in seen:
                seen.add(node)
                frontier.extend(d for d in graph[node] if d in graph)
    return False


@pytest.mark.feature("EXE-17")
@given(dag_graphs())
def test_p_n7_kahn_accepts_exactly_dags(nodes: list[DagNode]) -> None:
    graph = {n.id: n.needs for n in nodes}
    result = kahn(graph)
    assert (result.cycle is None) == (not has_cycle(graph))
    if result.cycle is None:
        assert sorted(result.order) == sorted(graph)
    else:
        for i, node in enumerate(result.cycle):
            assert result.cycle[(i + 1) % len(result.cycle)] in graph[node]


@pytest.mark.feature("EXE-17")
@given(dag_graphs())
def test_p_n7_run_insertion_fails_exactly_the_cycles(nodes: list[DagNode]) -> None:
    graph = {n.id: n.needs for n in nodes}
    specs = [JobNeedsSpec(n.id, [NameNeed(d) for d in n.needs]) for n in nodes]
    state, outcome = insert_edges_for_run(specs)
    assert bool(outcome.cycles) == has_cycle(graph)
    for cycle in outcome.cycles:
        for i, node in enumerate(cycle):
            assert cycle[(i + 1) % len(cycle)] in graph[node]
            assert state.status_of(node) is JobStatus.FAILED
    still_open = {n for n in graph if state.jobs[n].status is None}
    assert not has_cycle({n: [d for d in graph[n] if d in still_open] for n in still_open})


@pytest.mark.feature("EXE-21")
@given(st.lists(run_on_sets, min_size=1, max_size=5))
def test_p_n8_empty_group_dispatches_its_dependents_at_once(run_ons: list[frozenset[JobStatus]]) -> None:
    specs = [JobNeedsSpec(f"d{i}", [GroupNeed("g", r)]) for i, r in enumerate(run_ons)]
    state, outcome = insert_edges_for_run(specs)
    assert outcome.dispatched == ()
    _, outcome = resolve_group_edges(state, "g", [])
    assert outcome.dispatched == tuple(s.name for s in specs)


@pytest.mark.feature("EXE-16", "SDK-07")
@given(terminal_job_statuses)
def test_p_n8_always_runs_after_any_status(status: JobStatus) -> None:
    state, _ = insert_edges_for_run(
        [JobNeedsSpec("a"), JobNeedsSpec("report", [NameNeed("a", when_to_run_on("always"))])]
    )
    _, outcome = apply_terminal(state, "a", status)
    assert outcome.dispatched == ("report",)


@pytest.mark.feature("EXE-18")
@given(any_scenario, randoms)
def test_p_w1_never_more_than_max_parallel_ungated_open_children(
    scenario: RunScenario, rnd: random.Random
) -> None:
    for step in replay(scenario, rnd):
        for wave in step.after.waves.values():
            open_ungated = [
                c
                for c in wave.children
                if not step.after.jobs[c].wave_gated and not step.after.jobs[c].terminal
            ]
            assert len(open_ungated) <= wave.max_parallel


@pytest.mark.feature("EXE-18")
@given(any_scenario, randoms)
def test_waves_halt_only_after_a_failing_child(scenario: RunScenario, rnd: random.Random) -> None:
    final = replay(scenario, rnd)[-1].after
    for wave in final.waves.values():
        halted = [c for c in wave.children if final.jobs[c].reason == WAVE_HALTED_REASON]
        if halted:
            assert wave.fail_fast
            assert any(
                final.jobs[c].status in {JobStatus.FAILED, JobStatus.TIMED_OUT_STALE, JobStatus.DRIFT_DROPPED}
                for c in wave.children
            )


@pytest.mark.feature("SDK-07", "EXE-16")
@given(whens)
def test_s5_every_when_resolves_to_a_non_empty_terminal_subset(when: str | list[str] | None) -> None:
    run_on = when_to_run_on(when)
    assert run_on
    assert set(run_on) <= TERMINAL_JOB_STATES
    assert list(run_on) == [s for s in TERMINAL_JOB_STATES_ORDERED if s in run_on]
    assert resolve_run_on(when) == frozenset(run_on)


@pytest.mark.feature("EXE-16")
@given(malformed_run_ons)
def test_malformed_run_on_reads_as_success(raw: object) -> None:
    assert resolve_run_on(raw) == DEFAULT_RUN_ON
