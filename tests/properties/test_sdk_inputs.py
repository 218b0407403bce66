"""S8: typed inputs round-trip through their command-line form; invalid values are refused; defaults once."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kici.sdk import I, InputValidationError
from kici.sdk.inputs import InputDescriptor, apply_defaults, coerce, problem, render, validate_inputs
from tests.strategies.sdk import inputs_with_values

pytestmark = pytest.mark.feature("SDK-12")


def same(left: Any, right: Any) -> bool:
    return type(left) is type(right) and left == right


@given(inputs_with_values())
def test_s8_coerce_of_render_is_the_value(case: tuple[InputDescriptor, Any]) -> None:
    descriptor, value = case
    assert problem(descriptor, value) is None
    assert same(coerce(descriptor, render(descriptor, value), name="x"), value)


@given(
    inputs_with_values(), st.one_of(st.text(max_size=6), st.integers(), st.floats(), st.booleans(), st.none())
)
def test_s8_values_outside_the_descriptor_are_refused(case: tuple[InputDescriptor, Any], other: Any) -> None:
    descriptor, _ = case
    if problem(descriptor, other) is None:
        return
    with pytest.raises(InputValidationError) as info:
        validate_inputs({"x": descriptor}, {"x": other})
    assert str(info.value).startswith("input 'x': ")


@given(st.text("xyz01", max_size=4))
def test_s8_integers_reject_non_integer_text(text: str) -> None:
    assume(not text.strip().lstrip("+-").isdigit())
    with pytest.raises(InputValidationError, match=r"^input 'retries': expected integer, got "):
        coerce(I.integer(), text, name="retries")


@given(
    st.dictionaries(st.sampled_from("abcd"), st.text(max_size=3), max_size=4),
    st.dictionaries(st.sampled_from("abcd"), st.text(max_size=3), max_size=4),
)
def test_s8_defaults_are_applied_once(defaults: dict[str, str], given_values: dict[str, str]) -> None:
    fields = {
        key: I.string(default=defaults[key]) if key in defaults else I.string(optional=True) for key in "abcd"
    }
    once = apply_defaults(fields, given_values)
    assert apply_defaults(fields, once) == once
    assert validate_inputs(fields, once) == once
    for key in "abcd":
        if key in given_values:
            assert once[key] == given_values[key]
        elif key in defaults:
            assert once[key] == defaults[key]
        else:
            assert key not in once
