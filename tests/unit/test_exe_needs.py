"""The needs gate by example: fan-out, groups, waves, cycles, stuck jobs, run_on parsing."""

from __future__ import annotations

from types import MappingProxyType

import attrs
import pytest

from kici.domain.execution.needs import (
    DEFAULT_RUN_ON,
    STUCK_REASON,
    WAVE_HALTED_REASON,
    DuplicateJobError,
    Edge,
    FailedJob,
    GroupAlreadyResolvedError,
    GroupNeed,
    InvalidNeedError,
    InvalidWhenError,
    JobNeedsSpec,
    NameNeed,
    NotTerminalError,
    SchedulerState,
    SkippedJob,
    UnknownJobError,
    Verdict,
    VerdictKind,
    WaveConfig,
    apply_terminal,
    apply_terminals,
    check_all_upstreams,
    evaluate_downstreams,
    fail_group_eval,
    fail_stuck_jobs,
    failure_propagation_targets,
    find_stuck_jobs,
    format_run_on,
    insert_edges_for_run,
    parse_lock_need,
    parse_run_on_column,
    recompute_needs_satisfied,
    resolve_group_edges,
    resolve_run_on,
    when_to_run_on,
)
from kici.domain.execution.states import JobStatus

J = JobStatus
ALWAYS = when_to_run_on("always")
ON_FAILURE = when_to_run_on("on-failure")


def with_status(state: SchedulerState, **statuses: JobStatus) -> SchedulerState:
    """A state as a crash would leave it: statuses persisted, needs hooks never run."""
    jobs = dict(state.jobs)
    for name, status in statuses.items():
        jobs[name] = attrs.evolve(jobs[name], status=status)
    return attrs.evolve(state, jobs=MappingProxyType(jobs))


@pytest.mark.feature("EXE-16")
def test_fan_out_expands_edges_and_children_inherit_the_base_edges() -> None:
    state, outcome = insert_edges_for_run(
        [
            JobNeedsSpec("build"),
            JobNeedsSpec("test", [NameNeed("build")], fanout=["test (a)", "test (b)"]),
            JobNeedsSpec("deploy", [NameNeed("test", ON_FAILURE)]),
        ]
    )
    assert outcome.dispatched == ("build",)
    assert "test" not in state.jobs
    assert state.edges_of("test (a)") == (Edge("test (a)", "build", DEFAULT_RUN_ON),)
    assert state.edges_of("test (b)") == (Edge("test (b)", "build", DEFAULT_RUN_ON),)
    assert state.edges_of("deploy") == (
        Edge("deploy", "test (a)", frozenset(ON_FAILURE)),
        Edge("deploy", "test (b)", frozenset(ON_FAILURE)),
    )
    assert state.jobs["test (b)"].base_job_name == "test"
    state, outcome = apply_terminal(state, "build", J.SUCCESS)
    assert outcome.dispatched == ("test (a)", "test (b)")
    state, outcome = apply_terminal(state, "test (a)", J.FAILED)
    assert outcome.dispatched == ()
    _, outcome = apply_terminal(state, "test (b)", J.TIMED_OUT_STALE)
    assert outcome.dispatched == ("deploy",)


@pytest.mark.feature("EXE-16")
def test_skip_cascades_with_the_reason_of_the_unmet_upstream() -> None:
    state, _ = insert_edges_for_run(
        [
            JobNeedsSpec("a"),
            JobNeedsSpec("b", [NameNeed("a")]),
            JobNeedsSpec("c", [NameNeed("b")]),
            JobNeedsSpec("d", [NameNeed("b", when_to_run_on("on-skip"))]),
        ]
    )
    assert failure_propagation_targets(state, "a", J.CANCELLED) == ("b", "c")
    state, outcome = apply_terminal(state, "a", J.CANCELLED)
    assert outcome.skipped == (
        SkippedJob("b", "upstream_unmet: a (cancelled)"),
        SkippedJob("c", "upstream_unmet: b (skipped)"),
    )
    assert outcome.dispatched == ("d",)
    assert state.jobs["b"].reason == "upstream_unmet: a (cancelled)"


@pytest.mark.feature("EXE-16")
def test_violation_is_decided_before_open_upstreams() -> None:
    state, _ = insert_edges_for_run(
        [JobNeedsSpec("a"), JobNeedsSpec("slow"), JobNeedsSpec("c", [NameNeed("slow"), NameNeed("a")])]
    )
    assert check_all_upstreams(state, "c") == Verdict(VerdictKind.NOT_READY)
    state, outcome = apply_terminal(state, "a", J.FAILED)
    assert outcome.skipped == (SkippedJob("c", "upstream_unmet: a (failed)"),)
    assert check_all_upstreams(state, "c") == Verdict(VerdictKind.SKIP, "upstream_unmet: a (failed)")
    assert check_all_upstreams(state, "slow") == Verdict(VerdictKind.DISPATCH)


@pytest.mark.feature("EXE-16")
def test_first_entry_wins_for_a_repeated_upstream() -> None:
    state, _ = insert_edges_for_run(
        [JobNeedsSpec("a"), JobNeedsSpec("b", [NameNeed("a"), NameNeed("a", ALWAYS)])]
    )
    assert state.edges_of("b") == (Edge("b", "a", DEFAULT_RUN_ON),)


@pytest.mark.feature("EXE-16")
def test_need_on_a_missing_job_waits_and_is_not_stuck() -> None:
    state, outcome = insert_edges_for_run([JobNeedsSpec("b", [NameNeed("ghost")])])
    assert outcome.dispatched == ()
    assert check_all_upstreams(state, "b").kind is VerdictKind.NOT_READY
    assert find_stuck_jobs(state) == ()


@pytest.mark.feature("EXE-16")
def test_duplicate_and_conflicting_reports_are_ignored() -> None:
    state, _ = insert_edges_for_run([JobNeedsSpec("a"), JobNeedsSpec("b", [NameNeed("a")])])
    state, outcome = apply_terminal(state, "a", J.SUCCESS)
    assert outcome.dispatched == ("b",)
    again, outcome = apply_terminal(state, "a", J.FAILED)
    assert outcome.ignored == ("a",)
    assert again == state
    assert evaluate_downstreams(state, "a")[1].dispatched == ()


@pytest.mark.feature("EXE-16")
def test_typed_errors() -> None:
    state, _ = insert_edges_for_run([JobNeedsSpec("a")])
    with pytest.raises(UnknownJobError):
        apply_terminal(state, "nope", J.SUCCESS)
    with pytest.raises(NotTerminalError):
        apply_terminal(state, "a", J.RUNNING)
    with pytest.raises(NotTerminalError):
        evaluate_downstreams(state, "a")
    with pytest.raises(DuplicateJobError):
        insert_edges_for_run([JobNeedsSpec("a"), JobNeedsSpec("x", fanout=["a"])])
    with pytest.raises(UnknownJobError):
        failure_propagation_targets(state, "nope", J.FAILED)


@pytest.mark.feature("EXE-16")
def test_run_cancel_in_one_batch_skips_nobody() -> None:
    state, _ = insert_edges_for_run(
        [JobNeedsSpec("a"), JobNeedsSpec("b", [NameNeed("a")]), JobNeedsSpec("c", [NameNeed("b")])]
    )
    state, outcome = apply_terminals(state, {"b": J.CANCELLED, "c": J.CANCELLED, "a": J.CANCELLED})
    assert outcome.skipped == ()
    assert {n: node.status for n, node in state.jobs.items()} == {
        "a": J.CANCELLED,
        "b": J.CANCELLED,
        "c": J.CANCELLED,
    }


@pytest.mark.feature("EXE-16")
def test_restart_recompute_dispatches_and_skips_what_a_crash_left_open() -> None:
    state, _ = insert_edges_for_run(
        [
            JobNeedsSpec("a"),
            JobNeedsSpec("ok", [NameNeed("a")]),
            JobNeedsSpec("never", [NameNeed("a", ON_FAILURE)]),
            JobNeedsSpec("after", [NameNeed("never")]),
        ]
    )
    crashed = with_status(state, a=J.SUCCESS)
    _, outcome = recompute_needs_satisfied(crashed)
    assert outcome.dispatched == ("ok",)
    assert outcome.skipped == (
        SkippedJob("never", "upstream_unmet: a (success)"),
        SkippedJob("after", "upstream_unmet: never (skipped)"),
    )


@pytest.mark.feature("EXE-17")
def test_l3_finds_and_fails_stuck_jobs() -> None:
    state, _ = insert_edges_for_run(
        [JobNeedsSpec("a"), JobNeedsSpec("b", [NameNeed("a")]), JobNeedsSpec("c", [NameNeed("b")])]
    )
    crashed = with_status(state, a=J.SUCCESS)
    assert find_stuck_jobs(crashed) == ("b",)
    state, outcome = fail_stuck_jobs(crashed)
    assert outcome.failed == (FailedJob("b", STUCK_REASON),)
    assert outcome.skipped == (SkippedJob("c", "upstream_unmet: b (failed)"),)
    assert find_stuck_jobs(state) == ()


@pytest.mark.feature("EXE-17")
def test_l2_cycle_in_the_lock_fails_its_members() -> None:
    _, outcome = insert_edges_for_run(
        [
            JobNeedsSpec("root"),
            JobNeedsSpec("x", [NameNeed("y")]),
            JobNeedsSpec("y", [NameNeed("x")]),
            JobNeedsSpec("z", [NameNeed("x")]),
        ]
    )
    assert outcome.cycles == (("x", "y"),)
    assert outcome.failed == (
        FailedJob("x", "dependency cycle: x -> y -> x"),
        FailedJob("y", "dependency cycle: x -> y -> x"),
    )
    assert outcome.skipped == (SkippedJob("z", "upstream_unmet: x (failed)"),)
    assert outcome.dispatched == ("root",)


@pytest.mark.feature("EXE-21")
def test_group_members_get_edges_from_dependents_with_the_group_run_on() -> None:
    state, outcome = insert_edges_for_run(
        [
            JobNeedsSpec("build"),
            JobNeedsSpec("report", [GroupNeed("g", ALWAYS)]),
            JobNeedsSpec("ship", [NameNeed("build")], depends_on_groups=["g"]),
        ]
    )
    assert outcome.dispatched == ("build",)
    state, outcome = apply_terminal(state, "build", J.SUCCESS)
    assert outcome.dispatched == ()
    members = [JobNeedsSpec("m1", [NameNeed("build")]), JobNeedsSpec("m2", fanout=["m2 (x)", "m2 (y)"])]
    state, outcome = resolve_group_edges(state, "g", members)
    assert outcome.dispatched == ("m1", "m2 (x)", "m2 (y)")
    assert [e.upstream for e in state.edges_of("report")] == ["m1", "m2 (x)", "m2 (y)"]
    assert all(e.run_on == frozenset(ALWAYS) for e in state.edges_of("report"))
    assert [e.run_on for e in state.edges_of("ship")] == [DEFAULT_RUN_ON] * 4
    assert state.jobs["m2 (y)"].group_name == "g"
    state, _ = apply_terminals(state, {"m1": J.SUCCESS, "m2 (x)": J.SUCCESS})
    _, outcome = apply_terminal(state, "m2 (y)", J.FAILED)
    assert outcome.dispatched == ("report",)
    assert outcome.skipped == (SkippedJob("ship", "upstream_unmet: m2 (y) (failed)"),)
    with pytest.raises(GroupAlreadyResolvedError):
        resolve_group_edges(state, "g", [])


@pytest.mark.feature("EXE-21")
def test_generated_jobs_may_only_need_names() -> None:
    state, _ = insert_edges_for_run([JobNeedsSpec("a")])
    with pytest.raises(InvalidNeedError):
        resolve_group_edges(state, "g", [JobNeedsSpec("m", [GroupNeed("h")])])
    with pytest.raises(DuplicateJobError):
        resolve_group_edges(state, "g", [JobNeedsSpec("a")])


@pytest.mark.feature("EXE-17", "EXE-21")
def test_eval_time_cycle_through_a_group_is_failed() -> None:
    state, _ = insert_edges_for_run([JobNeedsSpec("waits", [GroupNeed("g")])])
    state, outcome = resolve_group_edges(state, "g", [JobNeedsSpec("m", [NameNeed("waits")])])
    assert outcome.cycles == (("waits", "m"),)
    assert {f.name for f in outcome.failed} == {"waits", "m"}
    assert find_stuck_jobs(state) == ()


@pytest.mark.feature("EXE-21")
def test_failed_eval_adds_a_synthetic_failed_upstream() -> None:
    state, _ = insert_edges_for_run(
        [
            JobNeedsSpec("ship", [GroupNeed("g")]),
            JobNeedsSpec("alert", [GroupNeed("g", ON_FAILURE)]),
        ]
    )
    state, outcome = fail_group_eval(state, 2, "g", "DynamicJobFn raised ValueError")
    assert outcome.failed == (FailedJob("dynamic-eval-failed-2", "DynamicJobFn raised ValueError"),)
    assert outcome.skipped == (SkippedJob("ship", "upstream_unmet: dynamic-eval-failed-2 (failed)"),)
    assert outcome.dispatched == ("alert",)
    assert state.jobs["dynamic-eval-failed-2"].group_name == "g"
    with pytest.raises(GroupAlreadyResolvedError):
        resolve_group_edges(state, "g", [])
    untagged, _ = fail_group_eval(state, 3, None, "boom")
    assert untagged.jobs["dynamic-eval-failed-3"].group_name == "__dynamic__3"


@pytest.mark.feature("EXE-18")
def test_wave_releases_one_gated_child_per_finished_child() -> None:
    state, outcome = insert_edges_for_run(
        [JobNeedsSpec("t", fanout=["t (1)", "t (2)", "t (3)", "t (4)"], wave=WaveConfig(2, fail_fast=False))]
    )
    assert outcome.dispatched == ("t (1)", "t (2)")
    state, outcome = apply_terminal(state, "t (2)", J.FAILED)
    assert outcome.dispatched == ("t (3)",)
    state, outcome = apply_terminal(state, "t (3)", J.SUCCESS)
    assert outcome.dispatched == ("t (4)",)


@pytest.mark.feature("EXE-18")
def test_fail_fast_skips_the_gated_children_only() -> None:
    state, _ = insert_edges_for_run(
        [
            JobNeedsSpec(
                "t", fanout=["t (1)", "t (2)", "t (3)", "t (4)"], wave=WaveConfig(2, fail_fast=True)
            ),
            JobNeedsSpec("after", [NameNeed("t", ALWAYS)]),
        ]
    )
    state, outcome = apply_terminal(state, "t (1)", J.TIMED_OUT_STALE)
    assert outcome.skipped == (
        SkippedJob("t (3)", WAVE_HALTED_REASON),
        SkippedJob("t (4)", WAVE_HALTED_REASON),
    )
    assert state.status_of("t (2)") is None
    _, outcome = apply_terminal(state, "t (2)", J.SUCCESS)
    assert outcome.dispatched == ("after",)


@pytest.mark.feature("EXE-18")
def test_cancelled_gated_child_releases_nothing() -> None:
    state, _ = insert_edges_for_run(
        [JobNeedsSpec("t", fanout=["t (1)", "t (2)", "t (3)"], wave=WaveConfig(1, fail_fast=False))]
    )
    state, outcome = apply_terminal(state, "t (2)", J.CANCELLED)
    assert outcome.dispatched == ()
    assert not state.jobs["t (3)"].dispatched
    _, outcome = apply_terminal(state, "t (1)", J.SUCCESS)
    assert outcome.dispatched == ("t (3)",)


@pytest.mark.feature("EXE-18")
def test_gated_child_with_no_running_sibling_is_stuck() -> None:
    state, _ = insert_edges_for_run(
        [JobNeedsSpec("t", fanout=["t (1)", "t (2)"], wave=WaveConfig(1, fail_fast=False))]
    )
    assert find_stuck_jobs(with_status(state, **{"t (1)": J.SUCCESS})) == ("t (2)",)


@pytest.mark.feature("EXE-18")
def test_wave_config_rejects_zero_parallelism() -> None:
    with pytest.raises(ValueError, match="max_parallel"):
        WaveConfig(0, fail_fast=True)


@pytest.mark.feature("SDK-07")
@pytest.mark.parametrize(
    ("when", "run_on"),
    [
        (None, ("success",)),
        ("on-success", ("success",)),
        ("always", ("success", "failed", "cancelled", "skipped", "timed_out_stale", "drift_dropped")),
        ("on-skip", ("success", "skipped")),
        ("on-failure", ("failed", "timed_out_stale")),
        (["skipped", "success", "skipped"], ("success", "skipped")),
    ],
)
def test_when_to_run_on_table(when: str | list[str] | None, run_on: tuple[str, ...]) -> None:
    assert tuple(s.value for s in when_to_run_on(when)) == run_on


@pytest.mark.feature("SDK-07")
@pytest.mark.parametrize("when", ["sometimes", [], ["success", "running"], ["pending"]])
def test_invalid_when_is_a_typed_error(when: str | list[str]) -> None:
    with pytest.raises(InvalidWhenError):
        when_to_run_on(when)


@pytest.mark.feature("EXE-16")
def test_run_on_column_round_trip_and_lenient_reading() -> None:
    assert format_run_on(DEFAULT_RUN_ON) == '["success"]'
    assert format_run_on(frozenset(ON_FAILURE)) == '["failed", "timed_out_stale"]'
    assert parse_run_on_column('["failed", "timed_out_stale"]') == frozenset(ON_FAILURE)
    assert parse_run_on_column("not json") == DEFAULT_RUN_ON
    assert parse_run_on_column("[]") == DEFAULT_RUN_ON
    assert parse_run_on_column('["bogus"]') == DEFAULT_RUN_ON
    assert resolve_run_on({"a": 1}) == DEFAULT_RUN_ON


@pytest.mark.feature("EXE-16")
def test_lock_need_entries() -> None:
    assert parse_lock_need("build") == NameNeed("build")
    assert parse_lock_need({"name": "build", "runOn": ["failed"]}) == NameNeed("build", {J.FAILED})
    assert parse_lock_need({"group": "g", "runOn": "garbage"}) == GroupNeed("g")
    assert parse_lock_need({"group": "g"}) == GroupNeed("g", DEFAULT_RUN_ON)
    for bad in ("", 3, {"name": "a", "group": "g"}, {"runOn": ["success"]}, {"name": ""}):
        with pytest.raises(InvalidNeedError):
            parse_lock_need(bad)


@pytest.mark.feature("EXE-18")
def test_released_child_waits_for_its_own_needs() -> None:
    state, _ = insert_edges_for_run(
        [
            JobNeedsSpec("build"),
            JobNeedsSpec(
                "t", [NameNeed("build")], fanout=["t (1)", "t (2)"], wave=WaveConfig(1, fail_fast=False)
            ),
        ]
    )
    state, outcome = apply_terminal(state, "t (1)", J.CANCELLED)
    assert outcome.dispatched == ()
    assert not state.jobs["t (2)"].wave_gated
    _, outcome = apply_terminal(state, "build", J.SUCCESS)
    assert outcome.dispatched == ("t (2)",)
