"""S5: every ``when`` resolves to a non-empty subset of the six terminal statuses; unset means success."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given

from kici.domain.execution.needs import InvalidWhenError, when_to_run_on
from kici.sdk import KiciDefinitionError, Need, dynamic_group
from kici.sdk.needs import TERMINAL_STATUSES
from tests.strategies.sdk import invalid_whens, valid_whens

pytestmark = pytest.mark.feature("SDK-07")


@given(valid_whens)
def test_s5_when_resolves_to_a_non_empty_terminal_subset(when: Any) -> None:
    need = Need("build", when=when)
    assert need.run_on
    assert set(need.run_on) <= set(TERMINAL_STATUSES)
    assert list(need.run_on) == [s for s in TERMINAL_STATUSES if s in need.run_on]
    assert dynamic_group("g", when=when).run_on == need.run_on


@given(valid_whens)
def test_s5_sdk_and_domain_agree_on_run_on(when: Any) -> None:
    assert Need("build", when=when).run_on == tuple(str(s) for s in when_to_run_on(when))


def test_s5_unset_when_means_success_only() -> None:
    assert Need("build").run_on == ("success",)
    assert dynamic_group("g").run_on == ("success",)


@given(invalid_whens)
def test_s5_invalid_when_is_e217_and_the_domain_refuses_it_too(when: Any) -> None:
    with pytest.raises(KiciDefinitionError) as info:
        Need("build", when=when)
    assert info.value.code == "E217"
    assert info.value.message == (
        "needs 'build': when must be on-success/always/on-skip/on-failure "
        "or a non-empty list of terminal statuses"
    )
    with pytest.raises(InvalidWhenError):
        when_to_run_on(when)
