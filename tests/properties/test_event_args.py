"""The event grammar of 00 §3.3 as laws: every documented form parses, keywords ignore case,
the generated payloads have the documented shape, and ``--input`` coercion round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.event_args import (
    FAMILIES,
    SYNONYMS,
    ZERO_SHA,
    EventArgError,
    EventOptions,
    Family,
    InputError,
    ParamKind,
    coerce_inputs,
    parse_assignments,
    parse_event_arg,
    simulate_event,
)
from kici.domain.events import EVENT_TYPES
from kici.domain.lockfile.frozen import freeze_json
from kici.domain.lockfile.triggers import InputDescriptor, PrTrigger, PushTrigger, TagTrigger
from kici.domain.triggers import match_trigger

pytestmark = pytest.mark.feature("CLI-07", "CLI-08")

branch_names = st.from_regex(r"[a-z][a-z0-9._-]{0,10}(/[a-z0-9._-]{1,8}){0,2}", fullmatch=True)
shas = st.text("0123456789abcdef", min_size=40, max_size=40)
free_values = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=20
).filter(lambda s: s.strip() == s)


def documented_forms() -> list[tuple[str, str, str | None]]:
    """(argument, family, canonical value) for every keyword form of the grammar."""
    forms: list[tuple[str, str, str | None]] = []
    for family in FAMILIES.values():
        default = family.choices[0] if family.choices else family.default
        forms.append((family.name, family.name, default))
        forms.extend((f"{family.name}:{choice}", family.name, choice) for choice in family.choices)
        forms.extend(
            (f"{family.name}:{alias}", family.name, target) for alias, target in family.aliases.items()
        )
    forms.extend((alias, target, parse_event_arg(target).value) for alias, target in SYNONYMS.items())
    return forms


FORMS = documented_forms()


def random_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if flip else c for c, flip in zip(text, flips, strict=True))


@st.composite
def cased_forms(draw: st.DrawFn) -> tuple[str, str, str | None]:
    text, family, value = draw(st.sampled_from(FORMS))
    return random_case(draw, text), family, value


def test_the_grammar_lists_every_documented_family() -> None:
    documented = [
        "pr",
        "push",
        "tag",
        "comment",
        "review",
        "review_comment",
        "release",
        "dispatch",
        "create",
        "delete",
        "status",
        "workflow_run",
        "fork",
        "star",
        "watch",
        "kici_event",
        "workflow_complete",
        "job_complete",
        "generic_webhook",
        "schedule",
        "lifecycle",
    ]
    assert list(FAMILIES) == documented
    assert all(f.type in EVENT_TYPES for f in FAMILIES.values())


@given(cased_forms())
def test_every_documented_form_parses_whatever_the_case(form: tuple[str, str, str | None]) -> None:
    text, family, value = form
    parsed = parse_event_arg(text)
    assert (parsed.family, parsed.value) == (family, value)
    assert parse_event_arg(str(parsed)) == parsed
    event = simulate_event(parsed, EventOptions())
    assert event.type == FAMILIES[family].type
    if FAMILIES[family].kind is ParamKind.ACTION:
        assert event.action == value


@pytest.mark.parametrize(
    ("text", "action"),
    [("pr:open", "opened"), ("pr:sync", "synchronize"), ("pr:close", "closed"), ("pr:reopen", "reopened")],
)
def test_pr_short_forms(text: str, action: str) -> None:
    assert simulate_event(text, EventOptions()).action == action


@given(st.sampled_from([f for f in FAMILIES.values() if f.kind is ParamKind.FREE]), free_values)
def test_free_parameters_keep_their_case(family: Family, value: str) -> None:
    name = family.name
    parsed = parse_event_arg(f"{name.upper()}:{value}")
    assert parsed.value == value
    assert str(parsed) == f"{name}:{value}"


def test_free_defaults() -> None:
    assert parse_event_arg("kici_event").value == "test-event"
    assert parse_event_arg("dispatch").action is None
    assert parse_event_arg("dispatch:deploy").action == "deploy"
    assert parse_event_arg("schedule").value is None
    assert parse_event_arg("schedule:0 3 * * *").value == "0 3 * * *"
    assert parse_event_arg("webhook:stripe") == parse_event_arg("generic_webhook:stripe")


@given(
    st.text(min_size=1, max_size=12).filter(
        lambda s: s.split(":")[0].strip().lower() not in {*FAMILIES, *SYNONYMS}
    )
)
def test_unknown_events_are_refused_with_the_list_of_names(text: str) -> None:
    with pytest.raises(EventArgError) as info:
        parse_event_arg(text)
    assert all(name in str(info.value) for name in FAMILIES)


@given(st.sampled_from([f for f in FAMILIES.values() if f.kind in (ParamKind.ACTION, ParamKind.CHOICE)]))
def test_unknown_values_name_the_allowed_ones(family: Family) -> None:
    name, choices = family.name, family.choices
    with pytest.raises(EventArgError) as info:
        parse_event_arg(f"{name}:nonsense")
    assert all(choice in str(info.value) for choice in choices)


@given(st.sampled_from([f.name for f in FAMILIES.values() if f.kind is ParamKind.NONE]))
def test_families_without_values_refuse_one(name: str) -> None:
    with pytest.raises(EventArgError):
        parse_event_arg(f"{name}:x")


@given(branch_names, branch_names, shas)
def test_push_payload(branch: str, current: str, sha: str) -> None:
    for given_branch, expected in ((branch, branch), (None, current)):
        options = EventOptions(branch=given_branch, current_branch=current, sha=sha)
        event = simulate_event("push", options)
        assert event.target_branch == expected
        assert event.payload["ref"] == f"refs/heads/{expected}"
        assert event.payload["after"] == sha
        assert event.payload["before"] == ZERO_SHA
        assert event.payload["repository"]["default_branch"] == "main"
        assert event.provider == "local"
        assert match_trigger(PushTrigger(), event).matched


@given(st.one_of(st.none(), branch_names), branch_names, shas)
def test_pr_payload(target: str | None, current: str, sha: str) -> None:
    event = simulate_event("pr:sync", EventOptions(branch=target, current_branch=current, sha=sha))
    expected_target = target or "main"
    assert (event.type, event.action) == ("pull_request", "synchronize")
    assert event.target_branch == expected_target
    assert event.source_branch == current
    assert event.is_fork_pr is False
    assert event.payload["number"] == 1
    assert event.payload["pull_request"]["number"] == 1
    assert event.payload["pull_request"]["head"] == {"ref": current, "sha": sha}
    assert event.payload["pull_request"]["base"] == {"ref": expected_target}
    assert event.payload["repository"]["default_branch"] == "main"
    assert match_trigger(PrTrigger(events=("synchronize",)), event).matched


@given(branch_names, shas)
def test_tag_payload(name: str, sha: str) -> None:
    event = simulate_event("tag", EventOptions(branch=name, sha=sha))
    assert event.type == "tag"
    assert event.target_branch == name
    assert event.payload["ref"] == f"refs/tags/{name}"
    assert event.payload["after"] == sha
    assert match_trigger(TagTrigger(), event).matched


@given(st.sampled_from(FORMS), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
def test_a_payload_file_replaces_the_generated_payload(
    form: tuple[str, str, str | None], payload: dict[str, int]
) -> None:
    event = simulate_event(form[0], EventOptions(payload=payload))
    assert dict(event.payload) == payload


@given(st.lists(branch_names, max_size=4), branch_names)
def test_changed_files_reach_the_event(files: list[str], branch: str) -> None:
    event = simulate_event("push", EventOptions(branch=branch, changed_files=files))
    assert event.changed_files == tuple(files)
    assert simulate_event("push", EventOptions()).changed_files is None


keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


@given(st.lists(st.tuples(keys, st.text(max_size=10)), max_size=6))
def test_assignments_split_on_the_first_equals_and_the_last_wins(pairs: list[tuple[str, str]]) -> None:
    parsed = parse_assignments([f"{k}={v}" for k, v in pairs], "--env")
    assert parsed == dict(pairs)


@given(st.text(max_size=10).filter(lambda s: "=" not in s))
def test_assignments_without_equals_are_usage_errors(value: str) -> None:
    with pytest.raises(EventArgError):
        parse_assignments([value], "--input")


def _descriptor(kind: str, **extra: object) -> InputDescriptor:
    return InputDescriptor(type=kind, optional=False, nullable=False, **extra)  # type: ignore[arg-type]


@pytest.mark.feature("SDK-12")
@given(st.booleans(), st.integers(-(10**6), 10**6), st.sampled_from(["eu", "us", "ap"]))
def test_inputs_coerce_their_rendering_back(flag: bool, number: int, region: str) -> None:
    descriptors = {
        "flag": _descriptor("boolean"),
        "count": _descriptor("integer"),
        "region": _descriptor("enum", values=("eu", "us", "ap")),
    }
    raw = {"flag": "yes" if flag else "no", "count": str(number), "region": region}
    assert coerce_inputs(raw, descriptors) == {"flag": flag, "count": number, "region": region}


@pytest.mark.feature("SDK-12")
def test_inputs_report_every_problem_and_apply_defaults() -> None:
    descriptors = {
        "retries": _descriptor("integer", min=0, max=5),
        "mode": InputDescriptor(type="string", optional=False, nullable=False, default=freeze_json("fast")),
        "note": InputDescriptor(type="string", optional=True, nullable=False),
        "needed": _descriptor("string"),
    }
    assert coerce_inputs({"retries": "2", "needed": "x"}, descriptors) == {
        "retries": 2,
        "mode": "fast",
        "needed": "x",
    }
    with pytest.raises(InputError) as info:
        coerce_inputs({"retries": "abc", "other": "1"}, descriptors)
    problems = info.value.problems
    assert "input 'retries': expected integer, got 'abc'" in problems
    assert any("unknown input 'other'" in p for p in problems)
    assert "input 'needed' is required" in problems
    with pytest.raises(InputError, match="must be <= 5"):
        coerce_inputs({"retries": "9", "needed": "x"}, descriptors)
    assert coerce_inputs({"anything": "1"}, None) == {"anything": "1"}
