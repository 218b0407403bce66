"""Hypothesis strategies for tier configuration: valid leaf values, their env and YAML spellings.

Values are drawn from each leaf's type and constraints (``kici.domain.config.schema``), so a new key
in the table is covered without touching this file. ``valid_values`` repairs a random draw into one
that passes every cross-field rule, which lets the round-trip property assert "loads back equal".
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

from kici.domain.config.layering import TABLES, Key, Tier, TierTable
from kici.domain.config.schema import (
    AGENT_TOKEN_PATTERN,
    CLUSTER_NAME_PATTERN,
    SIZE_PATTERN,
    ClusterRole,
    Kind,
    Mode,
    SchemaLeaf,
    StorageType,
)

tiers = st.sampled_from(list(Tier))
WORD = string.ascii_letters + string.digits + "-_."
words = st.text(WORD, min_size=1, max_size=12)
hosts = st.from_regex(r"\A[a-z][a-z0-9]{0,8}\.example\Z")
secret_keys = st.text("0123456789abcdef", min_size=64, max_size=64)


def _urls(schemes: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.builds(
        lambda scheme, host, port, path: f"{scheme}://{host}:{port}/{path}",
        st.sampled_from(schemes),
        hosts,
        st.integers(1, 65_535),
        st.text(string.ascii_lowercase, max_size=6),
    )


def _strings(leaf: SchemaLeaf) -> st.SearchStrategy[str]:
    rules = leaf.constraints
    if leaf.attr.endswith("secrets.key") or leaf.attr.endswith("secrets.key_old"):
        return secret_keys
    if rules.url_schemes:
        return _urls(rules.url_schemes)
    if rules.absolute_path:
        return st.builds(lambda p: "/" + p, st.text(WORD + "/", max_size=20))
    if rules.pattern == SIZE_PATTERN:
        return st.from_regex(r"\A[0-9]{1,6}[kmgKMG]?\Z")
    if rules.pattern == CLUSTER_NAME_PATTERN:
        return st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z")
    if rules.pattern == AGENT_TOKEN_PATTERN:
        return st.from_regex(r"\Akat_[0-9a-f]{64}\Z")
    if rules.pattern == "^/":
        return st.builds(lambda p: "/" + p, st.text(WORD + "/", max_size=12))
    min_size = 1 if leaf.type.optional else 0
    return st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=min_size, max_size=16
    )


def typed_values(leaf: SchemaLeaf) -> st.SearchStrategy[Any]:
    """Any valid typed value of ``leaf`` (never ``None``)."""
    kind, rules = leaf.type.kind, leaf.constraints
    if kind is Kind.INT:
        low = int(rules.minimum) if rules.minimum is not None else -(10**9)
        high = int(rules.maximum) if rules.maximum is not None else low + 10**10
        return st.integers(low, high)
    if kind is Kind.FLOAT:
        low = rules.minimum if rules.minimum is not None else -1e6
        return st.floats(low, 1e6, allow_nan=False)
    if kind is Kind.BOOL:
        return st.booleans()
    if kind is Kind.ENUM:
        assert leaf.type.enum is not None
        return st.sampled_from(list(leaf.type.enum))
    if kind is Kind.LIST:
        return st.lists(words, max_size=4).map(tuple)
    if kind is Kind.MAP:
        values: st.SearchStrategy[Any] = (
            st.integers(0, 1000) if leaf.type.map_values is Kind.INT else st.text(WORD, max_size=8)
        )
        return st.dictionaries(words, values, max_size=3)
    return _strings(leaf)


_TRUE = ("true", "TRUE", "True", "1", "yes", "on")
_FALSE = ("false", "FALSE", "False", "0", "no", "off")


def env_text(draw: st.DrawFn, leaf: SchemaLeaf, value: Any) -> str:
    """One env spelling of a typed value (random case, spacing and number formats)."""
    kind = leaf.type.kind
    if kind is Kind.BOOL:
        return draw(st.sampled_from(_TRUE if value else _FALSE))
    if kind is Kind.ENUM:
        return draw(st.sampled_from([value.value, value.value.upper(), f" {value.value} "]))
    if kind is Kind.INT:
        return draw(st.sampled_from([str(value), f" {value} ", f"+{value}" if value >= 0 else str(value)]))
    if kind is Kind.FLOAT:
        return repr(value)
    if kind is Kind.LIST:
        sep = draw(st.sampled_from([",", ", ", " , "]))
        return sep.join(value)
    if kind is Kind.MAP:
        return json.dumps(value)
    return str(value)


def yaml_value(draw: st.DrawFn, leaf: SchemaLeaf, value: Any) -> Any:
    """One YAML-tree spelling of a typed value (native types, sometimes a quoted string)."""
    kind = leaf.type.kind
    if kind is Kind.ENUM:
        return value.value
    if kind is Kind.LIST:
        return list(value)
    if kind in (Kind.INT, Kind.BOOL) and draw(st.booleans()):
        return env_text(draw, leaf, value)
    return value


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A nested YAML tree from dotted paths."""
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, last = dotted.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def repair(tier: Tier, values: dict[str, Any]) -> dict[str, Any]:
    """Adjust typed leaf values so that every cross-field rule of the tier holds.

    A leaf repaired to ``None`` (unset) must be left out of every layer by the caller.
    """
    out = dict(values)
    if tier is Tier.AGENT:
        out.setdefault("connection.orchestrator_url", "ws://orchestrator.example:4000")
        return out
    get = lambda attr: out.get(attr, TABLES[tier].leaves[attr].default)  # noqa: E731
    if get("cluster.role") is ClusterRole.WORKER and not (
        get("cluster.coordinator_url") or get("cluster.coordinator_urls")
    ):
        out["cluster.coordinator_url"] = "wss://coordinator.example:4000"
    if get("server.mode") is not Mode.INDEPENDENT and get("cluster.role") is ClusterRole.COORDINATOR:
        out.setdefault("platform.url", "wss://platform.example")
        out.setdefault("platform.token", "token")
    if get("cluster.peers") and not get("cluster.address"):
        out["cluster.address"] = "node.example:4000"
    if get("storage.type") is StorageType.S3 and not get("storage.bucket"):
        out["storage.bucket"] = "bucket"
    if get("storage.type") is StorageType.FILESYSTEM and not str(get("storage.fs_path") or "").startswith(
        "/"
    ):
        out["storage.fs_path"] = "/srv/kici"
    if 2 * get("cluster.lease_renew_ms") >= get("cluster.lease_ttl_ms"):
        out["cluster.lease_ttl_ms"] = 2 * get("cluster.lease_renew_ms") + 1
    if get("cluster.peer_stale_timeout_ms") <= get("cluster.peer_heartbeat_interval_ms"):
        out["cluster.peer_stale_timeout_ms"] = get("cluster.peer_heartbeat_interval_ms") + 1
    if get("event_router.retry_base_backoff_ms") > get("event_router.retry_max_backoff_ms"):
        out["event_router.retry_max_backoff_ms"] = get("event_router.retry_base_backoff_ms")
    for key_attr, file_attr in (
        ("secrets.key", "secrets.key_file"),
        ("secrets.key_old", "secrets.key_file_old"),
    ):
        if get(key_attr) is not None and get(file_attr) is not None:
            out[file_attr] = None
    if get("testing.event_fail_first_n") and not get("testing.test_mode"):
        out["testing.test_mode"] = True
    return out


@st.composite
def valid_values(draw: st.DrawFn, tier: Tier) -> dict[str, Any]:
    """Typed values for a random subset of the tier's keys, repaired to pass the cross-field rules."""
    table = TABLES[tier]
    chosen = draw(st.lists(st.sampled_from(table.keys), unique=True, max_size=len(table.keys)))
    values = {key.attr: draw(typed_values(table.leaves[key.attr])) for key in chosen}
    return {attr: value for attr, value in repair(tier, values).items() if value is not None}


def split_layers(
    draw: st.DrawFn, table: TierTable, values: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Spell each typed value either in YAML or in env (YAML-only keys always in YAML)."""
    flat_yaml: dict[str, Any] = {}
    env: dict[str, str] = {}
    for attr, value in values.items():
        key: Key = table.by_attr[attr]
        leaf = table.leaves[attr]
        if key.env and draw(st.booleans()):
            env[draw(st.sampled_from(key.env))] = env_text(draw, leaf, value)
        else:
            flat_yaml[key.yaml] = yaml_value(draw, leaf, value)
    return nest(flat_yaml), env
