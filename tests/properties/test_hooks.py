"""P-HOOK1..4 (10 §5) and P-CAN1/2 (10 §6) over the pure hook plan and fold.

The domain (``kici.domain.hooks``) and the runner's standard-library twin (``kici.services.runner.hooks``)
state the same rules; the differential properties at the end check they never disagree.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain import hooks as domain
from kici.domain.hooks import HookRun, HookType, JobSpec, Outcome, StepSpec, simulate_job
from kici.services.runner import hooks as runner

pytestmark = pytest.mark.feature("EXE-11", "SDK-23")

JOB_HOOK_TYPES = [t for t in HookType if t not in domain.STEP_HOOKS]


@st.composite
def job_specs(draw: st.DrawFn) -> JobSpec:
    steps = draw(
        st.lists(
            st.builds(
                StepSpec,
                failed=st.booleans(),
                continue_on_error=st.booleans(),
                hooks=st.frozensets(st.sampled_from(domain.STEP_HOOKS)),
            ),
            max_size=5,
        )
    )
    position = st.none() | (st.integers(0, len(steps) - 1) if steps else st.none())
    cancel_at = draw(position)
    timeout_at = draw(position) if cancel_at is None else None
    return JobSpec(
        steps=tuple(steps),
        hooks=draw(st.frozensets(st.sampled_from(JOB_HOOK_TYPES))),
        failing_hooks=draw(st.frozensets(st.sampled_from(list(HookType)))),
        cancel_at=cancel_at,
        force=draw(st.booleans()),
        timeout_at=timeout_at,
    )


def expected_units(spec: JobSpec) -> list[tuple[str, int | None]]:
    """The 10 §5 table, written out independently of the implementation."""
    units: list[tuple[str, int | None]] = []
    failed = False
    for i, step in enumerate(spec.steps):
        if HookType.BEFORE_STEP in spec.hooks:
            units.append(("beforeStep", i))
        units.append(("step", i))
        if spec.timeout_at == i:
            return units
        if spec.cancel_at == i:
            if spec.force:
                return units
            for hook, name in (
                (HookType.STEP_ON_CANCEL, "stepOnCancel"),
                (HookType.STEP_CLEANUP, "stepCleanup"),
            ):
                if hook in step.hooks:
                    units.append((name, i))
            for hook in (HookType.ON_CANCEL, HookType.CLEANUP):
                if hook in spec.hooks:
                    units.append((hook.value, None))
            return units
        if HookType.AFTER_STEP in spec.hooks:
            units.append(("afterStep", i))
        failed = failed or step.failed
        if step.failed and not step.continue_on_error:
            break
    first = HookType.ON_FAILURE if failed else HookType.ON_SUCCESS
    for hook in (first, HookType.CLEANUP):
        if hook in spec.hooks:
            units.append((hook.value, None))
    return units


def _cancelled(spec: JobSpec) -> bool:
    """Whether the cancel actually hit a running step (the loop may have stopped before)."""
    return simulate_job(spec).interrupted == "cancel"


@given(job_specs())
def test_p_hook1_executed_sequence_equals_the_table(spec: JobSpec) -> None:
    assert list(simulate_job(spec).units) == expected_units(spec)


@given(job_specs())
def test_p_hook2_cleanup_runs_once_and_last_at_its_level(spec: JobSpec) -> None:
    units = simulate_job(spec).units
    hook_names = [name for name, step in units if step is None]
    if simulate_job(spec).interrupted == "timeout" or (spec.force and _cancelled(spec)):
        assert hook_names == []
        return
    if HookType.CLEANUP in spec.hooks:
        assert hook_names.count("cleanup") == 1
        assert hook_names[-1] == "cleanup"
    else:
        assert "cleanup" not in hook_names
    if _cancelled(spec):
        step_level = [name for name, step in units if name in ("stepOnCancel", "stepCleanup")]
        if HookType.STEP_CLEANUP in spec.steps[spec.cancel_at or 0].hooks:
            assert step_level[-1] == "stepCleanup"
            assert step_level.count("stepCleanup") == 1


@given(job_specs())
def test_p_hook3_observer_failures_never_change_the_status(spec: JobSpec) -> None:
    observers = {HookType.BEFORE_STEP, HookType.AFTER_STEP}
    with_failures = JobSpec(
        steps=spec.steps,
        hooks=spec.hooks,
        failing_hooks=spec.failing_hooks | observers,
        cancel_at=spec.cancel_at,
        force=spec.force,
        timeout_at=spec.timeout_at,
    )
    without = JobSpec(
        steps=spec.steps,
        hooks=spec.hooks,
        failing_hooks=spec.failing_hooks - observers,
        cancel_at=spec.cancel_at,
        force=spec.force,
        timeout_at=spec.timeout_at,
    )
    a, b = simulate_job(with_failures), simulate_job(without)
    assert (a.status, a.reason, a.units) == (b.status, b.reason, b.units)


@given(job_specs())
def test_p_hook4_final_status_is_the_fold_of_loop_and_hooks(spec: JobSpec) -> None:
    trace = simulate_job(spec)
    if trace.interrupted == "timeout":
        assert (trace.status, trace.reason) == (Outcome.FAILED, domain.JOB_TIMEOUT_REASON)
        return
    if _cancelled(spec):
        outcome, reason = Outcome.CANCELLED, None
    else:
        ran = {step for name, step in trace.units if name == "step"}
        failed = any(spec.steps[i].failed for i in ran)
        outcome = Outcome.FAILED if failed else Outcome.SUCCESS
        reason = "step failed" if failed else None
    names = {"stepOnCancel", "stepCleanup", "onSuccess", "onFailure", "onCancel", "cleanup"}
    results = [
        HookRun(HookType(name), "boom" if HookType(name) in spec.failing_hooks else None)
        for name, _ in trace.units
        if name in names
    ]
    assert (trace.status, trace.reason) == domain.fold_hook_results(outcome, reason, results)
    assert (trace.status.value, trace.reason) == runner.fold_hook_results(
        outcome.value, reason, [runner.HookRun(r.type.value, r.error) for r in results]
    )


@pytest.mark.feature("EXE-13")
@given(job_specs())
def test_p_can1_force_cancel_never_runs_hooks(spec: JobSpec) -> None:
    if spec.force and _cancelled(spec):
        units = simulate_job(spec).units
        assert all(name in ("step", "beforeStep", "afterStep") for name, _ in units)
        assert simulate_job(spec).status is Outcome.CANCELLED


@pytest.mark.feature("EXE-13")
@given(job_specs())
def test_p_can2_graceful_cancel_is_cancelled_unless_a_hook_failed(spec: JobSpec) -> None:
    if not _cancelled(spec) or spec.force:
        return
    trace = simulate_job(spec)
    ran_failing = [name for name, _ in trace.units if name in {h.value for h in spec.failing_hooks}]
    ran_failing = [n for n in ran_failing if n not in ("beforeStep", "afterStep")]
    if ran_failing:
        assert trace.status is Outcome.FAILED
        assert trace.reason is not None
        assert all("failed: boom" in fragment for fragment in trace.reason.split("; "))
    else:
        assert trace.status is Outcome.CANCELLED


outcomes = st.sampled_from(list(Outcome))
hook_runs = st.lists(
    st.builds(HookRun, st.sampled_from(list(HookType)), st.none() | st.text(min_size=1, max_size=8)),
    max_size=6,
)


@given(outcomes, st.none() | st.text(max_size=8), hook_runs)
def test_runner_fold_agrees_with_the_domain(
    outcome: Outcome, reason: str | None, results: list[HookRun]
) -> None:
    converted = [runner.HookRun(r.type.value, r.error) for r in results]
    try:
        expected = domain.fold_hook_results(outcome, reason, results)
    except domain.HookPlanError:
        with pytest.raises(runner.HookPlanError):
            runner.fold_hook_results(outcome.value, reason, converted)
        return
    actual = runner.fold_hook_results(outcome.value, reason, converted)
    assert actual == (expected[0].value, expected[1])


@given(
    outcomes,
    st.frozensets(st.sampled_from(JOB_HOOK_TYPES)),
    st.lists(st.frozensets(st.sampled_from(domain.STEP_HOOKS)), max_size=3),
    st.booleans(),
    st.booleans(),
)
def test_runner_plan_agrees_with_the_domain(
    outcome: Outcome,
    job_hooks: frozenset[HookType],
    in_flight: list[frozenset[HookType]],
    force: bool,
    job_timeout: bool,
) -> None:
    expected = domain.completion_plan(
        outcome, job_hooks, in_flight=in_flight, force=force, job_timeout=job_timeout
    )
    actual = runner.completion_plan(
        outcome.value,
        {h.value for h in job_hooks},
        in_flight=[{h.value for h in hooks} for hooks in in_flight],
        force=force,
        job_timeout=job_timeout,
    )
    assert actual == [(p.type.value, p.in_flight) for p in expected]


def test_fragments_follow_the_spec_wording() -> None:
    fold = runner.fold_hook_results
    assert fold("cancelled", None, [runner.HookRun("onCancel", "x"), runner.HookRun("cleanup", "y")]) == (
        "failed",
        "cancelled (onCancel hook failed: x); cleanup hook failed: y",
    )
    assert fold(
        "cancelled", None, [runner.HookRun("stepOnCancel", "a"), runner.HookRun("stepCleanup", "b")]
    ) == (
        "failed",
        "cancelled (step onCancel hook failed: a); step cleanup hook failed: b",
    )
    assert fold("success", None, [runner.HookRun("onSuccess", "e"), runner.HookRun("cleanup", None)]) == (
        "failed",
        "Hook onSuccess failed: e",
    )
    assert fold("failed", "Step 'a' failed", [runner.HookRun("onFailure", "e")]) == (
        "failed",
        "Step 'a' failed; Hook onFailure failed: e",
    )
    assert fold("success", None, [runner.HookRun("afterStep", "e")]) == ("success", None)
    assert runner.observer_failure_line("beforeStep", "boom") == (
        "[kici] beforeStep hook failed: boom (continuing -- hooks are observers)"
    )
