"""Static matrix properties: 00 §1.11 S2 (size, order independence, ``{}`` identity, idempotent include,
unique names) plus the include/exclude and cap rules of §1.6."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.jsonpath import json_equal
from kici.domain.matrix import (
    MAX_MATRIX_JOBS,
    MatrixTooLargeError,
    apply_include_exclude,
    check_static_cap,
    expand_job_matrix,
    expand_matrix,
    matrix_size,
)

scalars = st.one_of(st.sampled_from(["a", "b", "3.11"]), st.integers(0, 3), st.booleans(), st.none())
dimension_names = st.sampled_from(["os", "python", "arch", "value", "node"])
columns = st.lists(scalars, max_size=3)
dict_matrices = st.dictionaries(dimension_names, columns, max_size=3)
matrices = st.one_of(dict_matrices, columns)
entries = st.dictionaries(dimension_names, scalars, max_size=2)


def _same(left: list[dict[str, Any]], right: list[dict[str, Any]]) -> bool:
    return len(left) == len(right) and all(json_equal(a, b) for a, b in zip(left, right, strict=True))


@pytest.mark.feature("SDK-17")
@given(matrices)
def test_size_is_the_product_of_the_dimension_lengths(values: Any) -> None:
    expected = math.prod(len(c) for c in values.values()) if isinstance(values, dict) else len(values)
    assert len(expand_matrix(values)) == expected == matrix_size(values)


@pytest.mark.feature("SDK-17")
@given(dict_matrices, st.randoms(use_true_random=False))
def test_expansion_ignores_dimension_insertion_order(values: dict[str, list[Any]], rnd: Any) -> None:
    keys = list(values)
    rnd.shuffle(keys)
    reordered = {k: values[k] for k in keys}
    assert _same(expand_matrix(reordered), expand_matrix(values))
    for combo in expand_matrix(values):
        assert list(combo) == sorted(values)


@pytest.mark.feature("SDK-17")
@given(matrices, st.lists(entries, max_size=3), st.lists(entries, max_size=3))
def test_empty_entries_are_identity(
    values: Any, include: list[dict[str, Any]], exclude: list[dict[str, Any]]
) -> None:
    combos = expand_matrix(values)
    base = apply_include_exclude(combos, include, exclude)
    assert _same(apply_include_exclude(combos, [*include, {}], [{}, *exclude]), base)
    assert _same(apply_include_exclude(combos, [{}], [{}]), combos)


@pytest.mark.feature("SDK-17")
@given(matrices, st.lists(entries, max_size=3), st.lists(entries, max_size=3), st.data())
def test_reincluding_an_existing_combination_is_a_noop(
    values: Any, include: list[dict[str, Any]], exclude: list[dict[str, Any]], data: st.DataObject
) -> None:
    result = apply_include_exclude(expand_matrix(values), include, exclude)
    if result:
        again = data.draw(st.sampled_from(result))
        assert _same(apply_include_exclude(expand_matrix(values), [*include, again], exclude), result)


@pytest.mark.feature("SDK-17")
@given(matrices, st.lists(entries, max_size=3), st.lists(entries, max_size=3))
def test_exclude_then_include(
    values: Any, include: list[dict[str, Any]], exclude: list[dict[str, Any]]
) -> None:
    combos = expand_matrix(values)
    result = apply_include_exclude(combos, include, exclude)

    def hit(entry: dict[str, Any], combo: dict[str, Any]) -> bool:
        return bool(entry) and all(k in combo and json_equal(combo[k], v) for k, v in entry.items())

    survivors = [c for c in combos if not any(hit(e, c) for e in exclude)]
    assert _same(result[: len(survivors)], survivors)
    for entry in include:
        if entry:
            assert any(json_equal(entry, c) for c in result)
    for index, combo in enumerate(result[len(survivors) :]):
        assert not any(json_equal(combo, other) for other in result[: len(survivors) + index])


@pytest.mark.feature("SDK-17")
@given(
    st.dictionaries(
        dimension_names,
        st.lists(st.text("abc.-", min_size=1, max_size=3), min_size=1, max_size=3, unique=True),
        min_size=1,
        max_size=3,
    )
)
def test_child_names_are_unique_when_values_are(values: dict[str, list[str]]) -> None:
    children = expand_job_matrix("test", values)
    names = [child.name for child in children]
    assert len(set(names)) == len(names)
    assert all(name.startswith("test (") and name.endswith(")") for name in names)


@pytest.mark.feature("SDK-17")
@given(st.lists(st.text("ab", min_size=1, max_size=3), max_size=4, unique=True))
def test_one_dimension_names_are_the_bare_value(values: list[str]) -> None:
    assert [c.name for c in expand_job_matrix("build", values)] == [f"build ({v})" for v in values]


@pytest.mark.feature("SDK-17")
@given(st.lists(st.integers(0, 20), max_size=3), st.integers(0, 20))
def test_cap_is_product_plus_includes(lengths: list[int], includes: int) -> None:
    values = {f"d{i}": list(range(n)) for i, n in enumerate(lengths)}
    include = [{"extra": i} for i in range(includes)]
    count = math.prod(lengths) + includes
    if count > MAX_MATRIX_JOBS:
        with pytest.raises(MatrixTooLargeError) as info:
            check_static_cap("j", "w", values, include)
        assert info.value.count == count
    else:
        assert check_static_cap("j", "w", values, include) == count
