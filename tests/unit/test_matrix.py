"""Static matrix examples: expansion order, include/exclude, E104, child names."""

from __future__ import annotations

import pytest

from kici.domain.lockfile.frozen import freeze_json
from kici.domain.matrix import (
    InvalidMatrixError,
    MatrixChild,
    MatrixTooLargeError,
    apply_include_exclude,
    check_static_cap,
    child_name,
    expand_job_matrix,
    expand_matrix,
    render_value,
)


@pytest.mark.feature("SDK-17")
def test_list_matrix_is_the_value_dimension() -> None:
    assert expand_matrix(["a", "b"]) == [{"value": "a"}, {"value": "b"}]


@pytest.mark.feature("SDK-17")
def test_dimensions_are_sorted_by_name_and_the_last_varies_fastest() -> None:
    assert expand_matrix({"python": ["3.11", "3.12"], "os": ["linux", "mac"]}) == [
        {"os": "linux", "python": "3.11"},
        {"os": "linux", "python": "3.12"},
        {"os": "mac", "python": "3.11"},
        {"os": "mac", "python": "3.12"},
    ]


@pytest.mark.feature("SDK-17")
def test_frozen_lock_values_expand_like_plain_ones() -> None:
    frozen = freeze_json({"os": ["linux"], "n": [1, 2]})
    assert expand_matrix(frozen) == [{"n": 1, "os": "linux"}, {"n": 2, "os": "linux"}]


@pytest.mark.feature("SDK-17")
def test_empty_mapping_is_one_empty_combination_and_empty_dimension_none() -> None:
    assert expand_matrix({}) == [{}]
    assert expand_matrix({"os": [], "py": ["3"]}) == []
    assert expand_matrix([]) == []


@pytest.mark.feature("SDK-17")
@pytest.mark.parametrize("bad", ["linux", {"os": "linux"}, 3, {"os": None}])
def test_malformed_matrices_are_typed_errors(bad: object) -> None:
    with pytest.raises(InvalidMatrixError):
        expand_matrix(bad)  # type: ignore[arg-type]


@pytest.mark.feature("SDK-17")
def test_exclude_runs_before_include() -> None:
    combos = expand_matrix({"os": ["linux", "mac"], "py": ["3.11", "3.12"]})
    result = apply_include_exclude(
        combos,
        include=[{"os": "mac", "py": "3.11"}, {"os": "win", "py": "3.12"}, {}],
        exclude=[{"os": "mac"}, {}, {"arch": "arm"}],
    )
    assert result == [
        {"os": "linux", "py": "3.11"},
        {"os": "linux", "py": "3.12"},
        {"os": "mac", "py": "3.11"},
        {"os": "win", "py": "3.12"},
    ]


@pytest.mark.feature("SDK-17")
def test_include_of_an_existing_combination_is_not_duplicated() -> None:
    combos = expand_matrix({"os": ["linux"]})
    assert apply_include_exclude(combos, include=[{"os": "linux"}, {"os": "linux"}]) == [{"os": "linux"}]
    assert apply_include_exclude(combos, include=[{"os": "linux", "extra": True}]) == [
        {"os": "linux"},
        {"os": "linux", "extra": True},
    ]


@pytest.mark.feature("SDK-17")
def test_values_compare_as_json() -> None:
    combos = expand_matrix({"flag": [True, 1, 1.0, "1"]})
    assert apply_include_exclude(combos, exclude=[{"flag": 1}]) == [{"flag": True}, {"flag": "1"}]
    assert apply_include_exclude(combos, exclude=[{"flag": True}]) == [
        {"flag": 1},
        {"flag": 1.0},
        {"flag": "1"},
    ]


@pytest.mark.feature("SDK-17")
def test_e104_message() -> None:
    values = {"a": list(range(16)), "b": list(range(16))}
    assert check_static_cap("test", "ci", values) == 256
    with pytest.raises(MatrixTooLargeError) as info:
        check_static_cap("test", "ci", values, include=[{"a": 99}])
    assert (
        str(info.value) == 'Static matrix for job "test" in workflow "ci" would generate 257 jobs (max: 256)'
    )
    assert info.value.code == "E104"


@pytest.mark.feature("SDK-17")
def test_child_names() -> None:
    assert child_name("test", {"value": "3.12"}) == "test (3.12)"
    assert child_name("test", {"python": "3.12", "os": "linux"}) == "test (linux, 3.12)"
    assert child_name("test", {}) == "test"
    assert expand_job_matrix("t", {"os": ["linux"], "py": [3]}) == [
        MatrixChild("t (linux, 3)", {"os": "linux", "py": 3})
    ]


@pytest.mark.feature("SDK-17")
@pytest.mark.parametrize(
    ("value", "text"),
    [(True, "true"), (False, "false"), (None, "null"), (3.0, "3"), (3.5, "3.5"), (7, "7"), ("x y", "x y")],
)
def test_values_render_like_template_strings(value: object, text: str) -> None:
    assert render_value(value) == text


@pytest.mark.feature("SDK-17")
def test_structured_values_render_as_compact_json() -> None:
    assert render_value({"node": 20, "lts": True}) == '{"node":20,"lts":true}'
    assert render_value(freeze_json([1, "a"])) == '[1,"a"]'
