"""Registration extraction on default-branch push (HOOK-18) and the rows the store keeps (EVT-07)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.lockfile import LockFile, LockSource, LockWorkflow, PushTrigger
from kici.domain.lockfile.triggers import TRIGGER_TYPES, ScheduleTrigger, Trigger, trigger_type
from kici.domain.registrations import (
    EVENT_TRIGGER_TYPES,
    REGISTERABLE_TRIGGER_TYPES,
    default_source_file,
    distinct_trigger_types,
    extract_registrations,
    is_global,
    is_registerable,
    registers,
    registration_commit,
    registration_set,
)
from tests.strategies.lockfile import lock_files, triggers

pytestmark = pytest.mark.feature("HOOK-18", "EVT-07")

branch_names = st.sampled_from(["main", "master", "dev", "release/1", ""])
event_types = st.sampled_from(["push", "tag", "pr", "create", "delete"])


def _has_repos(trigger: Trigger) -> bool:
    return bool(getattr(trigger, "repos", None))


def workflow(name: str, *triggers: Trigger) -> LockWorkflow:
    return LockWorkflow(
        name=name,
        source=LockSource(file=f"wf/{name}.py", export="#x"),
        content_hash="ab" * 32,
        triggers=triggers,
    )


@given(lock_files(max_workflows=4), st.booleans())
def test_rows_are_exactly_the_registerable_workflows_in_lock_order(lock: LockFile, permitted: bool) -> None:
    rows = extract_registrations(lock, globals_permitted=permitted)
    expected = [
        w.name
        for w in lock.workflows
        if any(trigger_type(t) in REGISTERABLE_TRIGGER_TYPES or _has_repos(t) for t in w.triggers)
        and (permitted or not any(_has_repos(t) for t in w.triggers))
    ]
    assert [r.workflow_name for r in rows] == expected
    for row in rows:
        assert row.workflow in lock.workflows
        assert row.is_global == any(_has_repos(t) for t in row.workflow.triggers)
        assert set(row.trigger_types) == {trigger_type(t) for t in row.workflow.triggers}
        assert len(row.trigger_types) == len(set(row.trigger_types))
        assert row.source_file == (row.workflow.source.file or default_source_file(row.workflow_name))


@given(lock_files(max_workflows=4), st.booleans())
def test_unpermitted_globals_are_skipped_and_nothing_else_is_lost(lock: LockFile, permitted: bool) -> None:
    batch = registration_set(
        lock,
        customer_id="acme",
        routing_key="github:1",
        repo_identifier="acme/app",
        ref="abc",
        provider_context={"installationId": 7},
        globals_permitted=permitted,
    )
    registerable = {w.name for w in lock.workflows if is_registerable(w)}
    globals_ = {w.name for w in lock.workflows if is_registerable(w) and is_global(w)}
    assert set(batch.skipped_globals) == (set() if permitted else globals_)
    assert set(batch.workflow_names) | set(batch.skipped_globals) == registerable
    assert not set(batch.workflow_names) & set(batch.skipped_globals)
    assert (batch.customer_id, batch.routing_key, batch.repo_identifier) == ("acme", "github:1", "acme/app")
    assert batch.provider_context == {"installationId": 7}


@given(st.lists(triggers, max_size=6))
def test_trigger_types_are_distinct_in_first_seen_order(items: list[Trigger]) -> None:
    got = distinct_trigger_types(workflow("w", *items))
    assert list(got) == list(dict.fromkeys(trigger_type(t) for t in items))
    assert is_registerable(workflow("w", *items)) == bool(items)


@given(st.booleans(), event_types, branch_names, st.lists(st.none() | branch_names, max_size=3))
def test_only_a_non_local_push_to_a_default_branch_registers(
    local: bool, event_type: str, target: str, defaults: list[str | None]
) -> None:
    expected = not local and event_type == "push" and bool(target) and target in defaults
    assert (
        registers(local=local, event_type=event_type, target_branch=target, default_branches=defaults)
        is expected
    )


@given(st.sampled_from(["HEAD", "abc123", "0" * 40, "refs/heads/main"]))
def test_the_commit_is_the_ref_unless_head(ref: str) -> None:
    assert registration_commit(ref) == (None if ref == "HEAD" else ref)


def test_every_trigger_type_of_the_lock_is_registerable() -> None:
    assert set(TRIGGER_TYPES) == REGISTERABLE_TRIGGER_TYPES
    assert EVENT_TRIGGER_TYPES < REGISTERABLE_TRIGGER_TYPES


def test_examples_global_trigger_less_and_empty_locks() -> None:
    lock = LockFile(
        content_hash="cd" * 32,
        workflows=(
            workflow("ci", PushTrigger()),
            workflow("nothing"),
            workflow("fleet", PushTrigger(repos=("acme/*",))),
            workflow("nightly", ScheduleTrigger(cron_expression="0 3 * * *"), PushTrigger()),
        ),
    )
    denied = registration_set(
        lock,
        customer_id="o",
        routing_key="rk",
        repo_identifier="acme/app",
        ref="HEAD",
        provider_context={},
        globals_permitted=False,
    )
    assert denied.workflow_names == ("ci", "nightly")
    assert denied.skipped_globals == ("fleet",)
    assert denied.commit_sha is None
    assert denied.registrations[1].trigger_types == ("schedule", "push")
    allowed = extract_registrations(lock, globals_permitted=True)
    assert [(r.workflow_name, r.is_global) for r in allowed] == [
        ("ci", False),
        ("fleet", True),
        ("nightly", False),
    ]
    assert extract_registrations(LockFile(content_hash="cd" * 32), globals_permitted=True) == ()
