"""Per-leaf layering of defaults < shared < YAML < env (CFG-03, 40 §7; 50 §13 invariant 10)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.config.layering import TABLES, Source, Tier, empty_env_is_value, layer
from tests.strategies.config import nest, tiers

pytestmark = pytest.mark.feature("CFG-03", "OPS-01")

raw_values = st.one_of(
    st.integers(), st.text(max_size=5), st.booleans(), st.lists(st.text(max_size=3), max_size=3)
)


@st.composite
def layers(draw: st.DrawFn, tier: Tier) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    table = TABLES[tier]
    shared: dict[str, Any] = {}
    yaml: dict[str, Any] = {}
    env: dict[str, str] = {}
    for key in draw(st.lists(st.sampled_from(table.keys), unique=True, max_size=25)):
        shared[key.yaml] = draw(st.none() | raw_values)
        yaml[key.yaml] = draw(st.none() | raw_values)
        if key.env and draw(st.booleans()):
            env[draw(st.sampled_from(key.env))] = draw(st.text(max_size=4))
    return shared, yaml, env


@given(st.data(), tiers)
def test_each_leaf_takes_env_then_yaml_then_shared_then_default(data: st.DataObject, tier: Tier) -> None:
    table = TABLES[tier]
    shared, yaml, env = data.draw(layers(tier))
    result = layer(table, nest(yaml), env, nest(shared))
    for key in table.keys:
        leaf = table.leaves[key.attr]
        env_values = [env[n] for n in key.env if n in env and (env[n] != "" or empty_env_is_value(leaf))]
        got = result.leaves[key.attr]
        if env_values:
            assert (got.source, got.value) == (Source.ENV, env_values[0])
        elif yaml.get(key.yaml) is not None:
            assert (got.source, got.value) == (Source.YAML, yaml[key.yaml])
        elif shared.get(key.yaml) is not None:
            assert (got.source, got.value) == (Source.SHARED, shared[key.yaml])
        else:
            assert (got.source, got.value) == (Source.DEFAULT, leaf.default)


@given(st.data(), tiers)
def test_lists_are_replaced_whole_and_none_never_overrides(data: st.DataObject, tier: Tier) -> None:
    table = TABLES[tier]
    key = data.draw(st.sampled_from(table.keys))
    lower = data.draw(st.lists(st.text(max_size=3), min_size=1, max_size=4))
    upper = data.draw(st.lists(st.text(max_size=3), max_size=4))
    replaced = layer(table, nest({key.yaml: upper}), {}, nest({key.yaml: lower}))
    assert replaced.leaves[key.attr].value == upper
    kept = layer(table, nest({key.yaml: None}), {}, nest({key.yaml: lower}))
    assert kept.leaves[key.attr].value == lower


@given(st.data())
def test_alias_conflicts_are_reported_and_the_primary_name_wins(data: st.DataObject) -> None:
    table = TABLES[Tier.ORCHESTRATOR]
    key = data.draw(st.sampled_from([key for key in table.keys if len(key.env) > 1]))
    first, second = data.draw(st.lists(st.text(min_size=1, max_size=4), min_size=2, max_size=2))
    result = layer(table, None, {key.env[0]: first, key.env[1]: second})
    assert result.leaves[key.attr].value == first
    assert (len(result.conflicts) == 1) == (first != second)


@given(st.dictionaries(st.from_regex(r"\A[A-Z][A-Z0-9_]{0,8}\Z"), st.text(max_size=4), max_size=5))
def test_families_collect_their_variables_by_suffix(suffixes: dict[str, str]) -> None:
    table = TABLES[Tier.ORCHESTRATOR]
    env = {f"KICI_AGENT_ENV_{name}": value for name, value in suffixes.items()}
    env.update({f"KICI_DEPLOY_{name}": value for name, value in suffixes.items()})
    result = layer(table, None, env)
    assert result.families["agent_env"] == suffixes
    assert result.families["deploy"] == suffixes
    assert result.families["cold_store"] == {}
