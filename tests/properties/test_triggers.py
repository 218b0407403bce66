"""Trigger matching properties: the rules of 30 §3.3 stated as laws, and the JSONPath subset (EVT-15)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.events import SimulatedEvent
from kici.domain.globs import glob_matches
from kici.domain.jsonpath import find, json_equal, path_matches
from kici.domain.lockfile.frozen import FrozenDict, freeze_json
from kici.domain.lockfile.triggers import (
    TRIGGER_TYPES,
    KiciEventTrigger,
    LockBranchPattern,
    PrTrigger,
    PushTrigger,
    ScheduleTrigger,
    TagTrigger,
    Trigger,
    WebhookTrigger,
    trigger_type,
)
from kici.domain.triggers import (
    TRIGGER_EVENT_TYPES,
    branch_filter_admits,
    match_lock,
    match_trigger,
    match_workflow,
    paths_admit,
    repos_admit,
)
from tests.strategies.events import (
    branch_names,
    branch_patterns,
    file_paths,
    glob_branch_patterns,
    glob_patterns,
    json_documents,
    json_keys,
    path_filters,
    repo_names,
    repo_patterns,
    simulated_events,
    trigger_strategies,
    triggers,
)

TRIGGER_IDS = ("LOCK-02", "SDK-09", "SDK-10", "SDK-11", "SDK-13", "SDK-14")

_REQUIRED_FIELDS: dict[str, dict[str, Any]] = {
    "kici_event": {"event_name": "deployed"},
    "generic_webhook": {"source": "jira"},
    "schedule": {"cron_expression": "0 3 * * *"},
}
EMPTY_TRIGGERS: list[Trigger] = [
    cls(**_REQUIRED_FIELDS.get(tag, {})) for tag, cls in TRIGGER_TYPES.items() if tag not in {"webhook"}
]
"""One trigger of every kind with every filter empty (webhook is guarded by its events, tested apart)."""


likely_events = st.one_of(
    simulated_events(event_type="push"), simulated_events(event_type="pull_request"), simulated_events()
)
likely_triggers = st.one_of(trigger_strategies["push"], trigger_strategies["pr"], triggers)
"""Biased towards push and pull-request pairs, so that many decisions actually match."""


def _glob(pattern: str) -> LockBranchPattern:
    return LockBranchPattern(type="glob", pattern=pattern)


@pytest.mark.feature(*TRIGGER_IDS)
@given(st.sampled_from(EMPTY_TRIGGERS), simulated_events())
def test_empty_filters_are_identity(trigger: Trigger, event: SimulatedEvent) -> None:
    tag = trigger_type(trigger)
    if tag in {"kici_event", "generic_webhook"}:
        return
    assert match_trigger(trigger, event).matched == (event.type == TRIGGER_EVENT_TYPES[tag])


@pytest.mark.feature(*TRIGGER_IDS)
@given(triggers, simulated_events())
def test_type_guard(trigger: Trigger, event: SimulatedEvent) -> None:
    result = match_trigger(trigger, event)
    if isinstance(trigger, WebhookTrigger):
        admitted = event.type in trigger.events
    else:
        admitted = event.type == TRIGGER_EVENT_TYPES[trigger_type(trigger)]
    if not admitted:
        assert not result.matched
        assert len(result.checks) == 1


@pytest.mark.feature(*TRIGGER_IDS)
@given(st.data(), simulated_events())
def test_trace_explains_the_verdict(data: st.DataObject, event: SimulatedEvent) -> None:
    tag = event.type if event.type in trigger_strategies else "pr"
    trigger = data.draw(trigger_strategies[tag])
    result = match_trigger(trigger, event, index=3)
    assert result.matched == all(check.passed for check in result.checks)
    assert all(check.check.startswith(f"{trigger_type(trigger)}[3].") for check in result.checks)
    assert result.checks[0].check.endswith(".type")


@pytest.mark.feature(*TRIGGER_IDS)
@given(st.lists(likely_triggers, max_size=4), likely_events, st.randoms(use_true_random=False))
def test_trigger_order_only_decides_the_reported_index(
    trigger_list: list[Trigger], event: SimulatedEvent, rnd: Any
) -> None:
    decision = match_workflow(trigger_list, event, "wf")
    shuffled = list(trigger_list)
    rnd.shuffle(shuffled)
    assert match_workflow(shuffled, event, "wf").matched == decision.matched
    individually = [match_trigger(t, event).matched for t in trigger_list]
    assert decision.matched == any(individually)
    assert decision.matched_trigger == (individually.index(True) if any(individually) else None)


@pytest.mark.feature(*TRIGGER_IDS)
@given(simulated_events())
def test_no_triggers_never_match(event: SimulatedEvent) -> None:
    decision = match_workflow([], event, "wf")
    assert not decision.matched
    assert decision.matched_trigger is None


@pytest.mark.feature("SDK-09", "LOCK-02")
@given(st.lists(branch_patterns, max_size=3), branch_names, st.lists(file_paths, max_size=2))
def test_a_push_matches_iff_the_branch_filter_admits_the_branch(
    patterns: list[LockBranchPattern], branch: str, files: list[str]
) -> None:
    event = SimulatedEvent(type="push", target_branch=branch, changed_files=files)
    assert match_trigger(PushTrigger(branches=tuple(patterns)), event).matched == branch_filter_admits(
        patterns, branch
    )


@pytest.mark.feature("SDK-09", "LOCK-02")
@given(glob_patterns, branch_names)
def test_a_single_glob_admits_what_the_glob_matches(pattern: str, branch: str) -> None:
    assert branch_filter_admits([_glob(pattern)], branch) == glob_matches(pattern, branch)


@pytest.mark.feature("SDK-09", "LOCK-02")
@given(st.lists(glob_branch_patterns, max_size=3), st.lists(glob_branch_patterns, max_size=3), branch_names)
def test_branch_filters_are_a_disjunction_of_includes(
    left: list[LockBranchPattern], right: list[LockBranchPattern], branch: str
) -> None:
    left = [p for p in left if not p.pattern.startswith("!")]
    right = [p for p in right if not p.pattern.startswith("!")]
    if left and right:
        both = branch_filter_admits(left + right, branch)
        assert both == (branch_filter_admits(left, branch) or branch_filter_admits(right, branch))


@pytest.mark.feature("SDK-09", "LOCK-02")
@given(st.lists(branch_patterns, max_size=3), glob_patterns, branch_names)
def test_branch_exclusion_always_wins(patterns: list[LockBranchPattern], excluded: str, branch: str) -> None:
    with_exclusion = [*patterns, _glob("!" + excluded)]
    if glob_matches(excluded, branch):
        assert not branch_filter_admits(with_exclusion, branch)
    else:
        assert branch_filter_admits(with_exclusion, branch) == branch_filter_admits(patterns, branch)


@pytest.mark.feature("SDK-09", "LOCK-02")
@given(path_filters, st.lists(file_paths, max_size=4), st.lists(file_paths, max_size=3))
def test_paths_rule(patterns: tuple[str, ...], files: list[str], more: list[str]) -> None:
    admitted = paths_admit(patterns, files)
    includes = [p for p in patterns if not p.startswith("!")]
    excludes = [p[1:] for p in patterns if p.startswith("!")]
    kept = [f for f in files if not any(glob_matches(e, f) for e in excludes)]
    if not patterns:
        assert admitted
    elif not files or not kept:
        assert not admitted
    elif not includes:
        assert admitted
    else:
        assert admitted == any(glob_matches(p, f) for p in includes for f in kept)
    if admitted:
        assert paths_admit(patterns, files + more), "adding changed files never un-matches"


@pytest.mark.feature("SDK-09", "LOCK-02")
@given(path_filters, st.lists(file_paths, min_size=1, max_size=3))
def test_files_that_are_all_excluded_never_match(patterns: tuple[str, ...], files: list[str]) -> None:
    exclusions = tuple("!" + f for f in files)
    assert not paths_admit(patterns + exclusions, files)


@pytest.mark.feature("SDK-09", "LOCK-02")
@given(st.lists(repo_patterns, min_size=1, max_size=3), repo_names)
def test_repos_rule(patterns: list[str], repo: str) -> None:
    assert not repos_admit(patterns, None)
    assert repos_admit(None, None)
    assert repos_admit((), repo)
    assert not repos_admit([*patterns, "!" + repo], repo), "an exclusion always wins"
    if all(p.startswith("!") for p in patterns):
        assert repos_admit(patterns, repo) == (not any(glob_matches(p[1:], repo) for p in patterns))


@pytest.mark.feature("SDK-09", "LOCK-02")
@given(st.lists(repo_patterns, min_size=1, max_size=2), branch_names)
def test_a_repos_filter_without_source_repo_never_matches(patterns: list[str], branch: str) -> None:
    event = SimulatedEvent(type="push", target_branch=branch)
    assert match_trigger(PushTrigger(), event).matched
    assert not match_trigger(PushTrigger(repos=tuple(patterns)), event).matched
    tag_event = SimulatedEvent(type="tag", target_branch=branch)
    assert not match_trigger(TagTrigger(repos=tuple(patterns)), tag_event).matched


@pytest.mark.feature("SDK-09", "LOCK-02")
@given(st.data(), simulated_events(event_type="pull_request"))
def test_pr_filters_are_a_conjunction(data: st.DataObject, event: SimulatedEvent) -> None:
    trigger = data.draw(trigger_strategies["pr"])
    result = match_trigger(trigger, event).matched
    parts = [
        PrTrigger(events=trigger.events),
        PrTrigger(target_branches=trigger.target_branches),
        PrTrigger(source_branches=trigger.source_branches),
        PrTrigger(paths=trigger.paths),
        PrTrigger(repos=trigger.repos),
    ]
    assert result == all(match_trigger(part, event).matched for part in parts)


@pytest.mark.feature("SDK-13", "LOCK-02")
@given(simulated_events(event_type="schedule"), st.sampled_from(["0 3 * * *", "*/5 * * * *"]))
def test_schedule_matches_its_own_expression(event: SimulatedEvent, cron: str) -> None:
    fired = attrs.evolve(event, payload={"cronExpression": "0 3 * * *", "timezone": "UTC"})
    assert match_trigger(ScheduleTrigger(cron_expression=cron), fired).matched == (cron == "0 3 * * *")


@pytest.mark.feature("LOCK-02", "HOOK-01")
@given(st.lists(st.lists(triggers, max_size=2), max_size=3), simulated_events())
def test_match_lock_reports_every_workflow(
    workflow_triggers: list[list[Trigger]], event: SimulatedEvent
) -> None:
    @attrs.frozen
    class Workflow:
        name: str
        triggers: tuple[Trigger, ...]

    workflows = [Workflow(f"wf{i}", tuple(t)) for i, t in enumerate(workflow_triggers)]
    result = match_lock(workflows, event)
    assert [d.workflow_name for d in result.decisions] == [w.name for w in workflows]
    assert [w.name for w in result.matched] == [d.workflow_name for d in result.decisions if d.matched]


def _walk(document: Any, data: st.DataObject) -> tuple[str, Any]:
    """A random path into ``document`` in mixed notation, and the value it leads to."""
    path, node = "$", document
    while data.draw(st.booleans()):
        if isinstance(node, dict) and node:
            key = data.draw(st.sampled_from(sorted(node)))
            path += data.draw(st.sampled_from([f".{key}", f"['{key}']", f'["{key}"]']))
            node = node[key]
        elif isinstance(node, list) and node:
            index = data.draw(st.integers(-len(node), len(node) - 1))
            path += f"[{index}]"
            node = node[index]
        else:
            break
    return path, node


@pytest.mark.feature("EVT-15")
@given(json_documents, st.data())
def test_jsonpath_follows_an_existing_path(document: Any, data: st.DataObject) -> None:
    path, value = _walk(document, data)
    found = find(path, document)
    assert len(found) == 1
    assert json_equal(found[0], value)
    assert path_matches(path, [value] if isinstance(value, list) else value, document)


@pytest.mark.feature("EVT-15")
@given(json_documents)
def test_jsonpath_wildcards_and_descendants(document: Any) -> None:
    assert find("$", document) == [document]
    children = list(document.values()) if isinstance(document, dict) else document
    expected_children = children if isinstance(children, list) else []
    assert find("$.*", document) == expected_children == find("$[*]", document)

    def descendants(node: Any) -> list[Any]:
        kids = list(node.values()) if isinstance(node, dict) else node if isinstance(node, list) else []
        return [node] + [d for k in kids for d in descendants(k)]

    assert len(find("$..*", document)) == len(descendants(document)) - 1
    for key in ["a", "b", "x"]:
        named = [n[key] for n in descendants(document) if isinstance(n, dict) and key in n]
        assert find(f"$..{key}", document) == named
        assert all(any(v is w for w in named) for v in find(f"$.{key}", document))


@pytest.mark.feature("EVT-15", "SDK-14")
@given(json_documents, st.data(), json_keys)
def test_kici_event_match_and_not(document: Any, data: st.DataObject, missing: str) -> None:
    path, value = _walk(document, data)
    payload = {"eventName": "deployed", "payload": document, "sourceRepo": "o/r"}
    event = SimulatedEvent(type="kici_event", payload=payload, target_branch="main")
    wanted = freeze_json([value]) if isinstance(value, list) else freeze_json([value])[0]
    expected = FrozenDict({path: wanted})
    assert match_trigger(KiciEventTrigger(event_name="deployed", match=expected), event).matched
    assert not match_trigger(KiciEventTrigger(event_name="deployed", not_=expected), event).matched
    absent = FrozenDict({f"$.zz{missing}": 1})
    assert not match_trigger(KiciEventTrigger(event_name="deployed", match=absent), event).matched
    assert match_trigger(KiciEventTrigger(event_name="deployed", not_=absent), event).matched
    assert not match_trigger(KiciEventTrigger(event_name="other"), event).matched
