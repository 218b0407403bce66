"""Loading and validating tier configs (OPS-01, OPS-04, CFG-04; 50 §13 invariant 10)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kici.domain.config.layering import TABLES, Tier
from kici.domain.config.problems import ConfigError
from kici.domain.config.schema import Kind, OrchestratorConfig, build
from kici.domain.config.typos import DEPRECATED_PREFIXES, TOOL_NAMES
from kici.domain.config.validate import load_agent_config, load_orchestrator_config
from tests.strategies.config import (
    env_text,
    nest,
    repair,
    split_layers,
    tiers,
    typed_values,
    valid_values,
    yaml_value,
)

LOADERS = {Tier.ORCHESTRATOR: load_orchestrator_config, Tier.AGENT: load_agent_config}


def load(tier: Tier, tree: dict[str, Any] | None, env: dict[str, str]) -> Any:
    return LOADERS[tier](tree, env)  # type: ignore[operator]


@pytest.mark.feature("OPS-01", "OPS-04", "CFG-03", "CFG-04")
@given(st.data(), tiers)
def test_any_valid_config_spelt_in_yaml_and_env_loads_back_equal(data: st.DataObject, tier: Tier) -> None:
    table = TABLES[tier]
    values = data.draw(valid_values(tier))
    tree, env = split_layers(data.draw, table, values)
    loaded = load(tier, tree, env)
    assert loaded.config == build(table.config_class, values)
    assert loaded.warnings == ()


@pytest.mark.feature("OPS-01", "CFG-03")
@given(st.data())
def test_env_beats_yaml_for_every_leaf(data: st.DataObject) -> None:
    table = TABLES[Tier.ORCHESTRATOR]
    in_yaml = data.draw(valid_values(Tier.ORCHESTRATOR))
    keys = data.draw(st.lists(st.sampled_from(table.keys), unique=True, min_size=1, max_size=40))
    in_env = {key.attr: data.draw(typed_values(table.leaves[key.attr])) for key in keys}
    combined = repair(Tier.ORCHESTRATOR, {**in_yaml, **in_env})
    merged = {**in_yaml, **in_env}
    in_env.update({a: v for a, v in combined.items() if merged.get(a) != v})
    unset = {a for a, v in combined.items() if v is None}
    in_yaml = {a: v for a, v in in_yaml.items() if a not in unset}
    in_env = {a: v for a, v in in_env.items() if a not in unset}
    yaml_only = {a: v for a, v in in_yaml.items() if a not in in_env}
    tree = nest(
        {table.by_attr[a].yaml: yaml_value(data.draw, table.leaves[a], v) for a, v in in_yaml.items()}
    )
    env = {table.by_attr[a].env[0]: env_text(data.draw, table.leaves[a], v) for a, v in in_env.items()}
    loaded = load_orchestrator_config(tree, env)
    assert loaded.config == build(OrchestratorConfig, {**yaml_only, **in_env})


known_or_family = st.from_regex(r"\AKICI_[A-Z][A-Z0-9_]{0,24}\Z")


MINIMAL_ENV = {
    Tier.ORCHESTRATOR: {"KICI_MODE": "independent"},
    Tier.AGENT: {"KICI_ORCHESTRATOR_URL": "ws://orchestrator.example"},
}


@pytest.mark.feature("OPS-01", "OPS-04", "CFG-04")
@given(tiers, known_or_family)
def test_unknown_kici_variables_are_refused_and_named(tier: Tier, name: str) -> None:
    table = TABLES[tier]
    assume(name not in MINIMAL_ENV[tier])
    prefixes = tuple(f.prefix for f in table.families) + DEPRECATED_PREFIXES[tier]
    known = name in table.env_names or name in TOOL_NAMES or name.startswith(prefixes)
    assume(not known)
    env = {**MINIMAL_ENV[tier], name: "1"}
    with pytest.raises(ConfigError) as caught:
        load(tier, None, env)
    assert [p.where for p in caught.value.problems] == [name]
    warned = load(tier, None, {**env, "KICI_DEV": "true"})
    assert [w.where for w in warned.warnings] == [name]


_BAD_TEXT = {Kind.INT: "12x", Kind.FLOAT: "fast", Kind.BOOL: "maybe", Kind.ENUM: "zzz", Kind.MAP: "{not json"}


@pytest.mark.feature("OPS-01", "OPS-04", "CFG-04")
@given(st.data(), tiers)
def test_every_bad_value_is_reported_at_once_under_its_env_name(data: st.DataObject, tier: Tier) -> None:
    table = TABLES[tier]
    typed = [k for k in table.keys if k.env and table.leaves[k.attr].type.kind in _BAD_TEXT]
    broken = data.draw(st.lists(st.sampled_from(typed), min_size=1, max_size=8, unique=True))
    env = {key.env[0]: _BAD_TEXT[table.leaves[key.attr].type.kind] for key in broken}
    with pytest.raises(ConfigError) as caught:
        load(tier, None, env)
    named = [p.where for p in caught.value.problems]
    for key in broken:
        assert named.count(key.env[0]) == 1


@pytest.mark.feature("OPS-01", "OPS-04")
@given(tiers, st.from_regex(r"\A[a-z][a-zA-Z]{0,10}\Z"), st.integers())
def test_unknown_yaml_keys_are_refused_with_their_path(tier: Tier, name: str, value: int) -> None:
    table = TABLES[tier]
    if name in table.yaml_paths or name in table.yaml_groups:
        return
    with pytest.raises(ConfigError) as caught:
        load(tier, {name: value}, {})
    assert any(p.where.endswith(f" {name}") and p.message == "unknown key" for p in caught.value.problems)
