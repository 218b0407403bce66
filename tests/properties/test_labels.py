"""Label targeting properties: 50 §13 (1), SCL-02 selection, 00 §1.11 S9, agent picking."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kici.domain.globs import glob_matches, is_glob
from kici.domain.labels import (
    AgentSlot,
    ExactLabelMatcher,
    LabelMatcher,
    LabelSetCandidate,
    RegexLabelMatcher,
    agent_eligible,
    label_matcher,
    matcher_matches,
    matchers_satisfied,
    matches,
    normalise,
    pick_agent,
    select_label_set,
)
from kici.domain.regex import regex_search
from tests.strategies.events import branch_names, file_paths, glob_patterns, labels

label_lists = st.lists(labels, max_size=5)
case_changes = st.sampled_from([str.lower, str.upper, str.swapcase, str])


@pytest.mark.feature("SCL-02")
@given(label_lists)
def test_normalise_is_canonical(values: list[str]) -> None:
    once = normalise(values)
    assert once == normalise(once)
    assert list(once) == sorted(set(once))
    assert all(v == v.lower() for v in once)
    assert set(once) == {v.lower() for v in values}


@pytest.mark.feature("SCL-02")
@given(label_lists, label_lists, label_lists, label_lists)
def test_predicate_is_the_set_formula(
    required: list[str], offered: list[str], mandatory: list[str], exclude: list[str]
) -> None:
    req, off = {v.lower() for v in required}, {v.lower() for v in offered}
    man, exc = {v.lower() for v in mandatory}, {v.lower() for v in exclude}
    assert matches(required, offered, mandatory, exclude) == (req <= off and man <= req and not off & exc)


@pytest.mark.feature("SCL-02")
@given(st.lists(label_lists, min_size=4, max_size=4), st.lists(case_changes, min_size=4, max_size=4))
def test_predicate_is_case_insensitive(sets: list[list[str]], changes: list[Callable[[str], str]]) -> None:
    recased = [[change(v) for v in values] for values, change in zip(sets, changes, strict=True)]
    assert matches(*sets) == matches(*recased)


@pytest.mark.feature("SCL-02")
@given(label_lists, label_lists, label_lists, label_lists, label_lists)
def test_predicate_is_monotone_in_offered_labels_unless_excluded(
    required: list[str], spare: list[str], extra: list[str], mandatory: list[str], exclude: list[str]
) -> None:
    required = required + mandatory
    offered = required + spare
    exclude = [v for v in exclude if v.lower() not in {o.lower() for o in offered}]
    assert matches(required, offered, mandatory, exclude)
    excluded = {v.lower() for v in exclude}
    assert matches(required, offered + [v for v in extra if v.lower() not in excluded], mandatory, exclude)
    if any(v.lower() in excluded for v in extra):
        assert not matches(required, offered + extra, mandatory, exclude)


@pytest.mark.feature("SCL-02")
@given(label_lists, st.lists(labels, min_size=1, max_size=3), label_lists)
def test_empty_required_never_matches_with_mandatory_labels(
    offered: list[str], mandatory: list[str], exclude: list[str]
) -> None:
    assert not matches([], offered, mandatory, exclude)
    assert not matches([], offered + mandatory, mandatory, [])


candidate_lists = st.lists(
    st.builds(
        LabelSetCandidate,
        owner=st.sampled_from(["s1", "s2", "s3"]),
        labels=st.lists(labels, min_size=1, max_size=4),
        mandatory=st.lists(labels, max_size=1),
    ),
    max_size=6,
)


@pytest.mark.feature("SCL-02")
@given(label_lists, candidate_lists, label_lists)
def test_smallest_matching_label_set_wins_ties_by_config_order(
    required: list[str], candidates: list[LabelSetCandidate], exclude: list[str]
) -> None:
    chosen = select_label_set(required, candidates, exclude)
    fitting = [i for i, c in enumerate(candidates) if matches(required, c.labels, c.mandatory, exclude)]
    if not fitting:
        assert chosen is None
        return
    assert chosen is not None
    smallest = min(len(candidates[i].labels) for i in fitting)
    first = next(i for i in fitting if len(candidates[i].labels) == smallest)
    assert chosen is candidates[first]


@pytest.mark.feature("SDK-05")
@given(glob_patterns.filter(is_glob), st.one_of(branch_names, file_paths, st.text(max_size=6)))
def test_s9_glob_regex_agrees_with_the_glob_matcher(pattern: str, value: str) -> None:
    matcher = label_matcher(pattern)
    assert isinstance(matcher, RegexLabelMatcher)
    assert regex_search(matcher.source, matcher.flags, value) == glob_matches(pattern, value)
    assert matcher_matches(matcher, value) == glob_matches(pattern, value)


@pytest.mark.feature("SDK-05")
@given(labels)
def test_plain_labels_are_exact_and_case_insensitive(label: str) -> None:
    matcher = label_matcher(label)
    assert matcher == ExactLabelMatcher(value=label)
    assert matcher_matches(matcher, label.upper())
    assert matcher_matches(matcher, label.swapcase())


@pytest.mark.feature("SDK-05")
@given(st.sets(st.sampled_from([re.IGNORECASE, re.MULTILINE, re.DOTALL, re.UNICODE])))
def test_pattern_flags_map_to_js_letters(flags: set[re.RegexFlag]) -> None:
    bits = 0
    for flag in flags:
        bits |= flag
    matcher = label_matcher(re.compile("gpu", bits))
    expected = "".join(letter for flag, letter in [(re.I, "i"), (re.M, "m"), (re.S, "s")] if flag in flags)
    assert matcher == RegexLabelMatcher(source="gpu", flags=expected)


matcher_lists = st.lists(
    st.one_of(labels, st.sampled_from(["a*", "*b", "?:*"])).map(label_matcher), max_size=3
)


@pytest.mark.feature("SDK-05")
@given(matcher_lists, label_lists, label_lists, matcher_lists)
def test_matchers_monotone_in_offered_labels_unless_excluded(
    runs_on: list[LabelMatcher], offered: list[str], extra: list[str], exclude: list[LabelMatcher]
) -> None:
    assume(matchers_satisfied(runs_on, offered, exclude))
    harmless = [v for v in extra if not any(matcher_matches(m, v) for m in exclude)]
    assert matchers_satisfied(runs_on, offered + harmless, exclude)
    if len(harmless) < len(extra):
        assert not matchers_satisfied(runs_on, offered + extra, exclude)


agents = st.lists(
    st.builds(
        AgentSlot,
        agent_id=st.text("abc123", min_size=1, max_size=3),
        labels=st.lists(labels, max_size=3).map(tuple),
        active_jobs=st.integers(0, 2),
        max_concurrency=st.integers(1, 2),
        mandatory=st.lists(labels, max_size=1).map(tuple),
    ),
    max_size=6,
)


@pytest.mark.feature("SDK-05", "SCL-02")
@given(agents, matcher_lists, matcher_lists)
def test_deterministic_pick_is_the_lowest_eligible_agent_id(
    fleet: list[AgentSlot], runs_on: list[LabelMatcher], exclude: list[LabelMatcher]
) -> None:
    chosen = pick_agent(fleet, runs_on, exclude, "deterministic")
    eligible = [a for a in fleet if a.active_jobs < a.max_concurrency and agent_eligible(a, runs_on, exclude)]
    if not eligible:
        assert chosen is None
        return
    assert chosen is not None
    assert chosen.agent_id == min(a.agent_id for a in eligible)
    again = pick_agent(list(reversed(fleet)), runs_on, exclude, "deterministic")
    assert again is not None
    assert again.agent_id == chosen.agent_id


@pytest.mark.feature("SDK-05")
@given(agents, matcher_lists, matcher_lists)
def test_any_pick_is_the_first_eligible_agent_in_caller_order(
    fleet: list[AgentSlot], runs_on: list[LabelMatcher], exclude: list[LabelMatcher]
) -> None:
    chosen = pick_agent(fleet, runs_on, exclude, "any")
    eligible = [a for a in fleet if a.has_capacity and agent_eligible(a, runs_on, exclude)]
    assert chosen is (eligible[0] if eligible else None)


@pytest.mark.feature("SDK-05", "SCL-02")
@given(agents, matcher_lists)
def test_agents_with_mandatory_labels_need_them_named(
    fleet: list[AgentSlot], runs_on: list[LabelMatcher]
) -> None:
    named = {m.value.lower() for m in runs_on if isinstance(m, ExactLabelMatcher)}
    for agent in fleet:
        if not {m.lower() for m in agent.mandatory} <= named:
            assert not agent_eligible(agent, runs_on)
