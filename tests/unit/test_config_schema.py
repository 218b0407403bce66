"""The key table and the attrs schema agree, one row per leaf (OPS-01, OPS-04, CFG-04)."""

from __future__ import annotations

import pytest

from kici.domain.config.layering import TABLES, Tier
from kici.domain.config.schema import Kind, OrchestratorConfig, leaf_type, schema_leaves

pytestmark = pytest.mark.feature("OPS-01", "OPS-04", "CFG-04")


@pytest.mark.parametrize("tier", list(Tier))
def test_every_leaf_has_exactly_one_row_and_every_family_a_mapping(tier: Tier) -> None:
    table = TABLES[tier]
    family_attrs = {family.attr for family in table.families}
    assert [key.attr for key in table.keys] == [a for a in table.leaves if a not in family_attrs]
    assert len(table.yaml_paths) == len(table.keys)
    assert len(table.env_names) == sum(len(key.env) for key in table.keys)
    assert not set(table.yaml_paths) & table.yaml_groups
    for attr in family_attrs:
        assert table.leaves[attr].type.kind is Kind.MAP


@pytest.mark.parametrize("tier", list(Tier))
def test_env_names_are_kici_names_except_the_otel_standard(tier: Tier) -> None:
    names = set(TABLES[tier].env_names)
    assert {n for n in names if not n.startswith("KICI_")} == {"OTEL_EXPORTER_OTLP_ENDPOINT"}


def test_the_spec_names_resolve_to_the_right_leaves() -> None:
    names = TABLES[Tier.ORCHESTRATOR].env_names
    assert names["KICI_INSTANCE_MODE"].attr == "server.mode"
    assert names["KICI_INSTANCE_ID"].attr == names["KICI_CLUSTER_INSTANCE_ID"].attr == "cluster.instance_id"
    assert names["KICI_JOB_HEARTBEAT_INTERVAL_MS"].yaml == "staleDetector.heartbeatIntervalMs"
    assert names["KICI_SKIP_S3_SENTINEL_VALIDATION"].attr == "storage.skip_sentinel_validation"
    agent = TABLES[Tier.AGENT].env_names
    assert agent["KICI_PORT"].attr == "server.port"
    assert agent["KICI_SCALER_IDLE_TIMEOUT"].yaml == "scaler.idleTimeoutMs"


def test_unsupported_annotations_are_programming_errors() -> None:
    with pytest.raises(TypeError):
        leaf_type(list[int])
    with pytest.raises(TypeError):
        leaf_type(int | str)
    assert len(schema_leaves(OrchestratorConfig)) == len(TABLES[Tier.ORCHESTRATOR].leaves)
