"""The ReDoS gate applied to every user regex (labels, branches) at compile and lock load."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.regex import MAX_REPEATS, UnsafeRegexError, assert_safe_regex, python_flags, regex_search

pytestmark = pytest.mark.feature("LOCK-12", "SDK-05")

atoms = st.sampled_from(["a", "b", ".", "[a-z]", "\\d", "x"])
quantifiers = st.sampled_from(["*", "+", "{2,}", "{1,5}"])


@pytest.mark.parametrize(
    "source", ["(a+)+", "(a*)*", "(.*a)*", "(?:x+y?)+", "((ab)*c)+", "(a|b+)*", "(?>(a+)+)"]
)
def test_nested_unbounded_repetition_is_rejected(source: str) -> None:
    with pytest.raises(UnsafeRegexError, match="ReDoS-prone"):
        assert_safe_regex(source)


@given(st.lists(st.tuples(atoms, quantifiers), min_size=1, max_size=MAX_REPEATS))
def test_star_height_one_is_accepted(parts: list[tuple[str, str]]) -> None:
    assert_safe_regex("".join(atom + q for atom, q in parts))


@given(atoms, quantifiers, quantifiers)
def test_any_repeat_of_a_repeated_group_is_rejected(atom: str, inner: str, outer: str) -> None:
    with pytest.raises(UnsafeRegexError):
        assert_safe_regex(f"({atom}{inner}){outer}")


def test_too_many_repeats_are_rejected() -> None:
    with pytest.raises(UnsafeRegexError, match="too many repeat operators"):
        assert_safe_regex("a?" * (MAX_REPEATS + 1))


@given(st.text(max_size=30))
def test_arbitrary_text_raises_only_the_typed_error(source: str) -> None:
    try:
        assert_safe_regex(source)
    except UnsafeRegexError:
        return
    re.compile(source)


def test_js_flags_map_to_python_and_unknown_flags_are_named() -> None:
    assert python_flags("x", "imsguy") == re.I | re.M | re.S
    with pytest.raises(UnsafeRegexError, match="unsupported flag 'x'"):
        python_flags("x", "x")
    assert regex_search("^GPU", "i", "gpu-large")
    assert not regex_search("^gpu$", "", "gpu-large")
