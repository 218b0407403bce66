"""Label targeting examples: the mode rule, E212, scaler selection, agent picking."""

from __future__ import annotations

import re

import pytest

from kici.domain.labels import (
    AgentSlot,
    ExactLabelMatcher,
    InvalidLabelPatternError,
    LabelSetCandidate,
    RegexLabelMatcher,
    assert_safe_regex,
    label_matcher,
    matcher_matches,
    matchers_satisfied,
    matches,
    normalise,
    pick_agent,
    select_label_set,
)
from kici.domain.regex import UnsafeRegexError


@pytest.mark.feature("SCL-02")
def test_normalise_lowercases_dedupes_and_sorts() -> None:
    assert normalise(["Linux", "gpu", "LINUX", "arm64"]) == ("arm64", "gpu", "linux")


@pytest.mark.feature("SCL-02")
@pytest.mark.parametrize(
    ("required", "offered", "mandatory", "exclude", "expected"),
    [
        (["linux"], ["Linux", "x64"], [], [], True),
        (["linux", "gpu"], ["linux"], [], [], False),
        (["linux"], ["linux", "gpu"], ["gpu"], [], False),
        (["linux", "gpu"], ["linux", "gpu"], ["GPU"], [], True),
        (["linux"], ["linux", "canary"], [], ["Canary"], False),
        ([], ["linux"], [], [], True),
        ([], ["linux", "gpu"], ["gpu"], [], False),
    ],
)
def test_label_predicate_examples(
    required: list[str], offered: list[str], mandatory: list[str], exclude: list[str], expected: bool
) -> None:
    assert matches(required, offered, mandatory, exclude) is expected


@pytest.mark.feature("SCL-02")
def test_select_label_set_prefers_the_smallest_set_then_config_order() -> None:
    big = LabelSetCandidate("metal", ["linux", "x64", "gpu"])
    small = LabelSetCandidate("containers", ["linux", "x64"])
    also_small = LabelSetCandidate("spare", ["LINUX", "arm64"])
    assert select_label_set(["linux"], [big, small, also_small]) is small
    assert select_label_set(["linux"], [big, also_small, small]) is also_small
    assert select_label_set(["gpu"], [big, small]) is big
    assert select_label_set(["linux"], [big, small], exclude=["x64"]) is None
    assert select_label_set(["windows"], [big, small]) is None


@pytest.mark.feature("SCL-02")
def test_mandatory_labels_keep_untargeted_jobs_off_a_scaler() -> None:
    gated = LabelSetCandidate("gpu-pool", ["linux", "gpu"], mandatory=["gpu"])
    plain = LabelSetCandidate("pool", ["linux", "gpu", "x64"])
    assert select_label_set(["linux"], [gated, plain]) is plain
    assert select_label_set(["linux", "gpu"], [gated, plain]) is gated


@pytest.mark.feature("SDK-05")
def test_mode_rule_per_element() -> None:
    assert label_matcher("linux") == ExactLabelMatcher(value="linux")
    glob = label_matcher("kici:host:deploy-*")
    assert isinstance(glob, RegexLabelMatcher)
    assert glob.flags == ""
    assert matcher_matches(glob, "kici:host:deploy-eu1")
    assert not matcher_matches(glob, "kici:host:build-eu1")
    assert label_matcher(re.compile(r"-canary$", re.I)) == RegexLabelMatcher(source=r"-canary$", flags="i")
    assert label_matcher(re.compile("x", re.M | re.S | re.U)) == RegexLabelMatcher(source="x", flags="ms")


@pytest.mark.feature("SDK-05")
def test_glob_regex_matches_the_whole_label_even_before_a_newline() -> None:
    matcher = label_matcher("gpu-?")
    assert matcher_matches(matcher, "gpu-a")
    assert not matcher_matches(matcher, "gpu-a\n")
    assert not matcher_matches(matcher, "xgpu-a")


@pytest.mark.feature("SDK-05")
@pytest.mark.parametrize(
    ("element", "message"),
    [
        (re.compile(r"(a+)+"), r"regex /(a+)+/ is ReDoS-prone — rejected"),
        (re.compile(r"(.*a)*"), r"regex /(.*a)*/ is ReDoS-prone — rejected"),
        (re.compile("a" + "b+" * 26), "too many repeat operators"),
        (re.compile("x", re.VERBOSE), "unsupported flags"),
        (re.compile("x", re.ASCII), "unsupported flags"),
        ("", "non-empty"),
    ],
)
def test_rejected_elements_raise_e212(element: str | re.Pattern[str], message: str) -> None:
    with pytest.raises(InvalidLabelPatternError, match=re.escape(message)) as info:
        label_matcher(element)
    assert info.value.code == "E212"


@pytest.mark.feature("SDK-05")
def test_redos_gate_is_reachable_from_labels() -> None:
    for bad in ["(a+)+", "(a*)*", "(.*a)*"]:
        with pytest.raises(UnsafeRegexError):
            assert_safe_regex(bad)
    assert_safe_regex("a+b*")


@pytest.mark.feature("SDK-05")
def test_matchers_need_every_include_and_no_exclude() -> None:
    runs_on = [label_matcher("linux"), label_matcher("kici:host:deploy-*")]
    exclude = [label_matcher(re.compile("-canary$"))]
    assert matchers_satisfied(runs_on, ["LINUX", "kici:host:deploy-1"], exclude)
    assert not matchers_satisfied(runs_on, ["linux"], exclude)
    assert not matchers_satisfied(runs_on, ["linux", "kici:host:deploy-1", "web-canary"], exclude)
    assert matchers_satisfied([], ["anything"])


def _agent(
    agent_id: str, *labels: str, active: int = 0, cap: int = 1, mandatory: tuple[str, ...] = ()
) -> AgentSlot:
    return AgentSlot(agent_id, labels, active, cap, mandatory)


@pytest.mark.feature("SDK-05")
def test_deterministic_pick_takes_the_lowest_free_agent_id() -> None:
    fleet = [_agent("b", "linux"), _agent("a", "linux", active=1), _agent("c", "linux"), _agent("0", "mac")]
    runs_on = [label_matcher("linux")]
    assert pick_agent(fleet, runs_on) == fleet[0]
    assert pick_agent([*fleet, _agent("aa", "linux", active=1, cap=2)], runs_on) == _agent(
        "aa", "linux", active=1, cap=2
    )
    assert pick_agent([fleet[1]], runs_on) is None


@pytest.mark.feature("SDK-05")
def test_any_pick_follows_the_callers_order() -> None:
    fleet = [_agent("c", "linux"), _agent("a", "linux"), _agent("b", "linux")]
    assert pick_agent(fleet, [label_matcher("linux")], pick="any") == fleet[0]
    assert pick_agent(fleet[1:], [label_matcher("linux")], pick="any") == fleet[1]


@pytest.mark.feature("SDK-05", "SCL-02")
def test_mandatory_agent_labels_must_be_named_exactly() -> None:
    gpu = _agent("a", "linux", "gpu", mandatory=("gpu",))
    assert pick_agent([gpu], [label_matcher("linux")]) is None
    assert pick_agent([gpu], [label_matcher(re.compile(".*"))]) is None
    assert pick_agent([gpu], [label_matcher("linux"), label_matcher("GPU")]) == gpu
