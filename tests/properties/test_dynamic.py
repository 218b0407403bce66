"""P-DYN1..3 and the runtime matrix cap: the executable spec of 10 §9 and 00 §1.6 (dynamic jobs).

The runner may not import the domain (D1) and carries its own copies of the limit messages and the
determinism guard; every property that has a runner twin also checks that the twin agrees.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kici.domain.dynamic import (
    MATRIX_EXPANSION,
    MAX_DYNAMIC_JOBS,
    DynamicEvalError,
    GuardVerdict,
    MatrixExpansionError,
    NeedView,
    check_generated_names,
    determinism_guard,
    duplicate_job_message,
    expand_dynamic_matrix,
    freeze_snapshot,
    needs_view,
    needs_view_json,
    too_many_jobs_message,
)
from kici.domain.matrix import MAX_MATRIX_JOBS, matrix_size
from kici.sdk.context import NeedInfo
from kici.services.runner import dynamic as runner

NAMES = st.text(alphabet="abcdefgh-", min_size=1, max_size=4)
STATUSES = st.sampled_from(["success", "failed", "cancelled", "skipped", "timed_out_stale", "drift_dropped"])
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=3))
OUTPUTS = st.dictionaries(st.text(min_size=1, max_size=3), JSON_LEAF, max_size=3)


# --- P-DYN1 --------------------------------------------------------------------------------------


@pytest.mark.feature("EXE-19", "SDK-20")
@given(st.lists(NAMES, max_size=MAX_DYNAMIC_JOBS + 20))
def test_serializer_limits_reject_too_many_then_duplicates(names: list[str]) -> None:
    """P-DYN1: > 100 jobs is refused with the count; else the first repeated name is named."""
    if len(names) > MAX_DYNAMIC_JOBS:
        expected: str | None = too_many_jobs_message(len(names))
    else:
        repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
        expected = None if repeated is None else duplicate_job_message(repeated)
    try:
        check_generated_names(names)
        got = None
    except DynamicEvalError as exc:
        got = str(exc)
    assert got == expected
    assert runner.names_problem(names) == expected


@pytest.mark.feature("EXE-19", "SDK-20")
@given(st.lists(NAMES, unique=True, max_size=MAX_DYNAMIC_JOBS))
def test_unique_names_within_the_limit_are_accepted(names: list[str]) -> None:
    check_generated_names(names)
    assert runner.names_problem(names) is None


@pytest.mark.feature("EXE-19")
@given(st.integers(0, 10_000), NAMES)
def test_limit_messages_are_the_spec_texts(count: int, name: str) -> None:
    assert too_many_jobs_message(count) == f"DynamicJobFn generated {count} jobs, exceeding the limit of 100"
    assert duplicate_job_message(name) == f"Duplicate job name '{name}' in DynamicJobFn output"
    assert runner.too_many_jobs_message(count) == too_many_jobs_message(count)
    assert runner.duplicate_job_message(name) == duplicate_job_message(name)


# --- P-DYN2 --------------------------------------------------------------------------------------


@st.composite
def guard_inputs(draw: st.DrawFn) -> tuple[list[str], list[str], str]:
    expected = draw(st.lists(NAMES, unique=True, min_size=1, max_size=6))
    actual = draw(st.lists(st.one_of(st.sampled_from(expected), NAMES), unique=True, max_size=7))
    target = draw(st.one_of(st.sampled_from(expected), NAMES))
    return expected, actual, target


@pytest.mark.feature("EXE-19")
@given(guard_inputs())
def test_guard_outcome_is_a_function_of_expected_actual_target(
    inputs: tuple[list[str], list[str], str],
) -> None:
    """P-DYN2: fail iff the target vanished; ok iff the name sets agree; else warn with the diff."""
    expected, actual, target = inputs
    outcome = determinism_guard(expected, actual, target)
    if target not in actual:
        assert outcome.verdict is GuardVerdict.FAIL
        assert (outcome.dropped, outcome.added) == ((), ())
        assert outcome.message is not None
        assert f"'{target}'" in outcome.message
    elif set(expected) == set(actual):
        assert outcome.verdict is GuardVerdict.OK
        assert outcome.message is None
    else:
        assert outcome.verdict is GuardVerdict.WARN
        assert outcome.dropped == tuple(n for n in expected if n not in actual)
        assert outcome.added == tuple(n for n in actual if n not in expected)
        assert target not in outcome.dropped
    assert determinism_guard(list(expected), list(actual), target) == outcome
    verdict, dropped, added, message = runner.guard(expected, actual, target)
    assert (verdict, dropped, added, message) == (
        outcome.verdict.value,
        outcome.dropped,
        outcome.added,
        outcome.message,
    )


@pytest.mark.feature("EXE-19")
@given(guard_inputs(), st.randoms(use_true_random=False))
def test_guard_ignores_the_order_of_the_re_evaluated_jobs(
    inputs: tuple[list[str], list[str], str], rnd: random.Random
) -> None:
    expected, actual, target = inputs
    shuffled = list(actual)
    rnd.shuffle(shuffled)
    first, second = determinism_guard(expected, actual, target), determinism_guard(expected, shuffled, target)
    assert first.verdict is second.verdict
    assert first.dropped == second.dropped
    assert set(first.added) == set(second.added)


@pytest.mark.feature("EXE-19")
@given(st.lists(NAMES, unique=True, min_size=1, max_size=6), st.data())
def test_re_evaluating_identically_is_always_ok(names: list[str], data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(names))
    assert determinism_guard(names, names, target).verdict is GuardVerdict.OK


# --- P-DYN3 --------------------------------------------------------------------------------------


@st.composite
def snapshot_parts(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(NAMES, unique=True, min_size=1, max_size=5))
    outputs = {
        n: draw(st.dictionaries(st.sampled_from(["step-1", "build", "x"]), OUTPUTS, max_size=2))
        for n in names
    }
    statuses = {n: draw(STATUSES) for n in names}
    split = draw(st.integers(0, len(names)))
    groups = {"grp": names[:split]} if split else {}
    fanout_children = [f"mx ({v})" for v in draw(st.lists(st.sampled_from("abc"), unique=True, max_size=3))]
    for child in fanout_children:
        outputs[child] = draw(st.dictionaries(st.just("step-1"), OUTPUTS, max_size=1))
        statuses[child] = draw(STATUSES)
    fanouts = {"mx": fanout_children} if fanout_children else {}
    flat = draw(st.sets(st.sampled_from([*names, "mx"])))
    return {"outputs": outputs, "statuses": statuses, "groups": groups, "fanouts": fanouts, "flat": flat}


def _shuffled(mapping: dict[str, Any], rnd: random.Random) -> dict[str, Any]:
    keys = list(mapping)
    rnd.shuffle(keys)
    return {k: mapping[k] for k in keys}


@pytest.mark.feature("EXE-20")
@given(snapshot_parts(), st.randoms(use_true_random=False))
def test_snapshot_replay_gives_identical_needs(parts: dict[str, Any], rnd: random.Random) -> None:
    """P-DYN3: the view depends on the snapshot only, not on the order results arrived in, and
    survives the JSON trip to the runner unchanged."""
    first = freeze_snapshot(
        parts["outputs"],
        parts["statuses"],
        groups=parts["groups"],
        fanouts=parts["fanouts"],
        flat=parts["flat"],
    )
    again = freeze_snapshot(
        _shuffled(parts["outputs"], rnd),
        _shuffled(parts["statuses"], rnd),
        groups=parts["groups"],
        fanouts=parts["fanouts"],
        flat=parts["flat"],
    )
    assert again == first
    assert needs_view(again) == needs_view(first)
    view = needs_view_json(first)
    assert json.loads(json.dumps(view)) == view
    assert list(view) == list(needs_view_json(again))


@pytest.mark.feature("EXE-20", "SDK-20")
@given(snapshot_parts())
def test_needs_view_shape(parts: dict[str, Any]) -> None:
    """Each job -> {result, status}; a group or fan-out -> its members in order; flat for step-1 jobs."""
    snapshot = freeze_snapshot(
        parts["outputs"],
        parts["statuses"],
        groups=parts["groups"],
        fanouts=parts["fanouts"],
        flat=parts["flat"],
    )
    view = needs_view(snapshot)
    for name, outputs in parts["outputs"].items():
        entry = view[name]
        assert isinstance(entry, NeedView)
        assert entry.status == parts["statuses"][name]
        base = "mx" if name.startswith("mx (") else name
        if base in parts["flat"]:
            steps = list(outputs.values())
            assert entry.result == (steps[0] if len(steps) == 1 else {})
        else:
            assert entry.result == outputs
    for group, members in {**parts["groups"], **parts["fanouts"]}.items():
        if group in parts["outputs"]:
            continue
        listed = view[group]
        assert isinstance(listed, tuple)
        assert [v.name for v in listed] == list(members)


@pytest.mark.feature("EXE-20")
@given(snapshot_parts())
def test_the_runner_shows_the_view_it_is_given(parts: dict[str, Any]) -> None:
    snapshot = freeze_snapshot(
        parts["outputs"],
        parts["statuses"],
        groups=parts["groups"],
        fanouts=parts["fanouts"],
        flat=parts["flat"],
    )
    view = needs_view_json(snapshot)
    needs = runner.needs_from_view(json.loads(json.dumps(view)))
    assert list(needs) == list(view)
    for name, entry in view.items():
        shown = needs[name]
        items = entry if isinstance(entry, list) else [entry]
        infos = shown if isinstance(shown, list) else [shown]
        assert all(isinstance(info, NeedInfo) for info in infos)
        assert [(i.name, i.status, dict(i.result)) for i in infos] == [
            (e["name"], e["status"], e["result"]) for e in items
        ]


# --- dynamic matrices ----------------------------------------------------------------------------

VALUES = st.one_of(st.integers(0, 9), st.sampled_from(["a", "b", "c", "d"]))


@st.composite
def matrices(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return draw(st.lists(VALUES, unique_by=lambda v: (type(v), v), max_size=300))
    dims = draw(st.lists(st.sampled_from(["os", "py", "arch"]), unique=True, max_size=3))
    return {d: draw(st.lists(VALUES, unique_by=lambda v: (type(v), v), max_size=20)) for d in dims}


@pytest.mark.feature("SDK-18", "EXE-34")
@given(matrices())
def test_dynamic_matrix_cap(values: Any) -> None:
    """0 children, or more than 256 (product + include), fails with the matrix_expansion category."""
    size = matrix_size(values)
    if size == 0 or size > MAX_MATRIX_JOBS:
        with pytest.raises(MatrixExpansionError, match=f"^{MATRIX_EXPANSION}: dynamic matrix of job 'job' "):
            expand_dynamic_matrix("job", values)
        return
    children = expand_dynamic_matrix("job", values)
    assert 1 <= size <= MAX_MATRIX_JOBS
    assert len(children) == size
    assert len({c.name for c in children}) == size
    expected = len(values) if isinstance(values, list) else math.prod(len(v) for v in values.values())
    assert len(children) == expected


@pytest.mark.feature("SDK-18")
@given(st.lists(st.sampled_from(["x", "y", "z"]), unique=True, min_size=1), st.data())
def test_dynamic_matrix_excluding_everything_fails(values: list[str], data: st.DataObject) -> None:
    excluded = [{"value": v} for v in values]
    kept = data.draw(st.lists(st.sampled_from(values), unique=True))
    assume(set(kept) != set(values))
    with pytest.raises(MatrixExpansionError, match="produced no combinations"):
        expand_dynamic_matrix("job", values, exclude=excluded)
    partial = expand_dynamic_matrix("job", values, exclude=[{"value": v} for v in kept])
    assert [c.combination["value"] for c in partial] == [v for v in values if v not in kept]
