"""P-STEP1: step indices are unique per job for any configuration (EXE-05)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.execution.steps import (
    CACHE_BASE_OFFSET,
    CACHE_BLOCK_SIZE,
    INIT_STEP_BASE,
    MAX_COMPLETION_HOOKS,
    PREPARE_STEP_INDEX,
    JobStepShape,
    SlotKind,
    StepIndexError,
    StepIndexLayout,
    allocate_step_indices,
)
from tests.strategies.execution import step_shapes

pytestmark = pytest.mark.feature("EXE-05")


@given(step_shapes())
def test_p_step1_indices_unique_for_any_configuration(shape: JobStepShape) -> None:
    slots = allocate_step_indices(shape)
    indices = [slot.index for slot in slots]
    assert len(indices) == len(set(indices))
    expected = (
        1
        + shape.step_count
        + 2 * len(shape.steps_with_hooks)
        + shape.completion_hooks
        + sum(shape.cache_ops)
        + shape.init_specs
    )
    assert len(slots) == expected


@given(step_shapes())
def test_p_step1_every_kind_stays_in_its_region(shape: JobStepShape) -> None:
    n = shape.step_count
    for slot in allocate_step_indices(shape):
        if slot.kind is SlotKind.PREPARE:
            assert slot.index == PREPARE_STEP_INDEX
        elif slot.kind is SlotKind.STEP:
            assert slot.index == slot.ordinal < n
        elif slot.kind is SlotKind.BEFORE_STEP:
            assert slot.index == n + 2 * slot.ordinal
        elif slot.kind is SlotKind.AFTER_STEP:
            assert slot.index == n + 2 * slot.ordinal + 1
        elif slot.kind is SlotKind.COMPLETION_HOOK:
            assert 3 * n <= slot.index < 3 * n + CACHE_BASE_OFFSET
        elif slot.kind is SlotKind.CACHE:
            assert slot.owner is not None
            base = 3 * n + CACHE_BASE_OFFSET + CACHE_BLOCK_SIZE * slot.owner
            assert base <= slot.index < min(base + CACHE_BLOCK_SIZE, INIT_STEP_BASE)
        else:
            assert slot.kind is SlotKind.INIT
            assert slot.index == INIT_STEP_BASE + slot.ordinal


@given(st.integers(0, 5000), st.data())
def test_p_step1_out_of_region_requests_raise_instead_of_colliding(n: int, data: st.DataObject) -> None:
    layout = StepIndexLayout(n)
    bad_step = data.draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=n)))
    with pytest.raises(StepIndexError):
        layout.before_step(bad_step)
    with pytest.raises(StepIndexError):
        layout.completion_hook(data.draw(st.integers(min_value=MAX_COMPLETION_HOOKS)))
    with pytest.raises(StepIndexError):
        layout.cache(0, data.draw(st.integers(min_value=CACHE_BLOCK_SIZE)))
    first_overflowing_owner = (INIT_STEP_BASE - 3 * n - CACHE_BASE_OFFSET) // CACHE_BLOCK_SIZE
    with pytest.raises(StepIndexError, match="init range"):
        layout.cache(first_overflowing_owner, CACHE_BLOCK_SIZE - 1)


def test_completion_hooks_do_not_collide_with_before_step_of_step_zero() -> None:
    layout = StepIndexLayout(4)
    assert layout.before_step(0) == 4
    assert layout.completion_hook(0) == 12
    assert layout.after_step(3) == 11
    assert layout.cache(0, 0) == 112
    assert layout.cache(2, 5) == 2117
    assert layout.init(7) == 1_000_007


def test_negative_inputs_are_typed_errors() -> None:
    with pytest.raises(StepIndexError):
        StepIndexLayout(-1)
    with pytest.raises(StepIndexError):
        StepIndexLayout(3).cache(-1, 0)
    with pytest.raises(StepIndexError):
        StepIndexLayout(3).init(-1)
    with pytest.raises(StepIndexError):
        allocate_step_indices(JobStepShape(step_count=2, steps_with_hooks=frozenset({2})))
