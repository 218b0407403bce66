"""S2 on the SDK side: every matrix the SDK accepts expands in the domain to exactly the size it counts."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain import matrix as domain_matrix
from kici.sdk import KiciDefinitionError, job
from kici.sdk.matrix import check_matrix_values, matrix_size
from tests.strategies.sdk import json_scalars, matrix_entries, static_matrices

pytestmark = pytest.mark.feature("SDK-17")


def step(ctx: Any) -> None:
    return None


@given(static_matrices)
def test_s2_size_is_the_product_of_dimension_lengths_and_the_domain_agrees(values: Any) -> None:
    checked = check_matrix_values(values)
    lengths = [len(c) for c in checked.values()] if isinstance(checked, dict) else [len(checked)]
    assert matrix_size(checked) == math.prod(lengths)
    assert len(domain_matrix.expand_matrix(checked)) == matrix_size(checked)
    assert domain_matrix.matrix_size(checked) == matrix_size(checked)


@given(
    st.dictionaries(
        st.text("abcdef", min_size=1, max_size=3), st.lists(json_scalars, max_size=3), max_size=4
    ),
    st.randoms(),
)
def test_s2_size_is_independent_of_dict_insertion_order(values: dict[str, list[Any]], rnd: Any) -> None:
    keys = list(values)
    rnd.shuffle(keys)
    shuffled = {k: values[k] for k in keys}
    assert matrix_size(check_matrix_values(shuffled)) == matrix_size(check_matrix_values(values))
    assert domain_matrix.expand_matrix(shuffled) == domain_matrix.expand_matrix(values)


@given(static_matrices, matrix_entries, matrix_entries)
def test_s2_a_job_keeps_what_the_domain_expands_with_empty_entries_as_identity(
    values: Any, include: list[dict[str, Any]], exclude: list[dict[str, Any]]
) -> None:
    built = job("m", runs_on="linux", matrix=values, include=include, exclude=exclude, steps=[step])
    combos = domain_matrix.expand_matrix(built.matrix)
    expanded = domain_matrix.apply_include_exclude(combos, built.include, built.exclude)
    with_empties = domain_matrix.apply_include_exclude(combos, [*built.include, {}], [*built.exclude, {}])
    assert with_empties == expanded
    again = domain_matrix.apply_include_exclude(expanded, [c for c in expanded if c], ())
    assert again == expanded


@given(
    st.one_of(
        st.integers(),
        st.text(max_size=3),
        st.dictionaries(st.text(min_size=1, max_size=2), st.integers(), min_size=1),
    )
)
def test_s2_non_list_matrices_are_refused_at_definition(values: Any) -> None:
    with pytest.raises(KiciDefinitionError) as info:
        job("m", runs_on="linux", matrix=values, steps=[step])
    assert info.value.code == "E220"
