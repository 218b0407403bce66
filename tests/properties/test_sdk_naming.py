"""S6: auto-names count 1..k in flattened order and leave named entries alone (SDK-03, SDK-22, SDK-02)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.sdk import Job, job, parallel, step, workflow
from kici.sdk.naming import flat_steps, generators, job_names, step_entries
from tests.strategies.sdk import step_layouts


def work(ctx: Any) -> None:
    return None


def build(layout: list[Any]) -> Job:
    entries: list[Any] = []
    for item in layout:
        if isinstance(item, tuple):
            group, children = item
            entries.append(
                parallel([step(name, work) if name else step(work) for name in children], name=group)
            )
        else:
            entries.append(step(item, work) if item else work)
    return job("j", runs_on="linux", steps=entries)


def flattened(layout: list[Any]) -> list[str | None]:
    names: list[str | None] = []
    for item in layout:
        names.extend(item[1] if isinstance(item, tuple) else [item])
    return names


@pytest.mark.feature("SDK-03", "SDK-22")
@given(step_layouts())
def test_s6_step_counters_are_1_to_k_in_flattened_order_and_names_untouched(layout: list[Any]) -> None:
    built = build(layout)
    declared = flattened(layout)
    names = [name for name, _ in flat_steps(built)]
    assert len(names) == len(declared)
    auto = [name for name, given_name in zip(names, declared, strict=True) if given_name is None]
    assert auto == [f"step-{i}" for i in range(1, len(auto) + 1)]
    assert all(name == given_name for name, given_name in zip(names, declared, strict=True) if given_name)


@pytest.mark.feature("SDK-22")
@given(step_layouts())
def test_s6_unnamed_parallel_groups_are_named_by_ordinal(layout: list[Any]) -> None:
    groups = [entry for entry in step_entries(build(layout)) if entry.is_parallel]
    declared = [item[0] for item in layout if isinstance(item, tuple)]
    assert [g.name for g in groups] == [name or f"parallel-{k}" for k, name in enumerate(declared)]


@pytest.mark.feature("SDK-02", "SDK-20")
@given(st.lists(st.sampled_from(["named", "unnamed", "generator"]), max_size=8))
def test_s6_job_counters_skip_named_jobs_and_generators(kinds: list[str]) -> None:
    entries: list[Any] = []
    for i, kind in enumerate(kinds):
        if kind == "named":
            entries.append(job(f"j{i}", runs_on="linux", run=work))
        elif kind == "unnamed":
            entries.append(job(runs_on="linux", run=work))
        else:
            entries.append(lambda g: [])
    if not entries:
        entries.append(job(runs_on="linux", run=work))
        kinds = ["unnamed"]
    flow = workflow("w", jobs=entries)
    names = [name for name, _ in job_names(flow)]
    expected: list[str] = []
    counter = 0
    for i, kind in enumerate(kinds):
        if kind == "named":
            expected.append(f"j{i}")
        elif kind == "unnamed":
            counter += 1
            expected.append(f"job-{counter}")
    assert names == expected
    assert [index for index, _ in generators(flow)] == [i for i, k in enumerate(kinds) if k == "generator"]
