"""S4: ``skip(l, f)`` passes exactly when ``rule(l, f)`` fails; a raising check never passes (SDK-16)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.sdk import RuleContext, evaluate_rules, rule, skip

pytestmark = pytest.mark.feature("SDK-16")

truthy_values = st.one_of(
    st.booleans(), st.integers(-2, 2), st.text(max_size=2), st.lists(st.none(), max_size=2)
)


class Boom(Exception):
    pass


def raising(ctx: Any) -> bool:
    raise Boom("no such file")


def returning(value: Any) -> Callable[[Any], Any]:
    return lambda ctx: value


@given(truthy_values)
def test_s4_skip_passes_iff_rule_fails(value: Any) -> None:
    ctx = RuleContext()
    passed_rule, rule_error = rule("r", returning(value)).evaluate(ctx)
    passed_skip, skip_error = skip("r", returning(value)).evaluate(ctx)
    assert passed_skip == (not passed_rule)
    assert passed_rule == bool(value)
    assert rule_error is None
    assert skip_error is None


def test_s4_a_raising_check_passes_neither_as_rule_nor_as_skip() -> None:
    for built in (rule("r", raising), skip("r", raising)):
        passed, error = built.evaluate(RuleContext())
        assert not passed
        assert error == "Boom: no such file"


@given(st.lists(st.one_of(truthy_values, st.just(Boom)), max_size=6))
def test_s4_evaluation_is_sequential_and_fail_fast(outcomes: list[Any]) -> None:
    rules = [rule(f"r{i}", raising if o is Boom else returning(o)) for i, o in enumerate(outcomes)]
    seen: list[str] = []
    evaluation = evaluate_rules(rules, RuleContext(), "job 'x'", on_result=lambda r: seen.append(r.label))
    passes = [o is not Boom and bool(o) for o in outcomes]
    expected = passes.index(False) + 1 if False in passes else len(passes)
    assert evaluation.all_passed == all(passes)
    assert [r.label for r in evaluation.results] == seen == [f"r{i}" for i in range(expected)]
    assert all(r.passed for r in evaluation.results[:-1])
    for result in evaluation.results:
        assert result.duration_ms >= 0
        assert (result.error is not None) == (outcomes[int(result.label[1:])] is Boom)
