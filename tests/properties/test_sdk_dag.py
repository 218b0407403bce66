"""S1: the SDK's standard-library ``validate_dag`` (SDK-08), and its agreement with the domain's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given

from kici.domain import dag as domain_dag
from kici.sdk.dag import (
    DagCycle,
    DagMissingDependency,
    DagNode,
    DagOk,
    DagResult,
    DagSelfReference,
    validate_dag,
)
from tests.strategies.execution import dag_graphs

pytestmark = pytest.mark.feature("SDK-08")


def sdk_nodes(nodes: Sequence[domain_dag.DagNode]) -> list[DagNode]:
    return [DagNode(node.id, node.needs) for node in nodes]


def reaches_itself(graph: Mapping[str, Sequence[str]]) -> bool:
    for start in graph:
        frontier = [d for d in graph[start] if d in graph]
        seen: set[str] = set()
        while frontier:
            node = frontier.pop()
            if node == start:
                return True
            if node not in seen:
                seen.add(node)
                frontier.extend(d for d in graph[node] if d in graph)
    return False


def as_domain(result: DagResult) -> domain_dag.DagResult:
    if isinstance(result, DagOk):
        return domain_dag.DagOk(result.sorted_order)
    if isinstance(result, DagSelfReference):
        return domain_dag.DagSelfReference(result.node_id)
    if isinstance(result, DagMissingDependency):
        return domain_dag.DagMissingDependency(result.node_id, result.missing_dep)
    return domain_dag.DagCycle(result.nodes_in_cycle)


@given(dag_graphs())
def test_s1_ok_iff_no_self_reference_no_missing_dependency_and_acyclic(
    nodes: list[domain_dag.DagNode],
) -> None:
    graph = {n.id: n.needs for n in nodes}
    self_ref = any(n.id in n.needs for n in nodes)
    missing = any(d not in graph for n in nodes for d in n.needs)
    result = validate_dag(sdk_nodes(nodes))
    assert isinstance(result, DagOk) == (not self_ref and not missing and not reaches_itself(graph))


@given(dag_graphs(acyclic=True))
def test_s1_sorted_order_is_a_topological_permutation(nodes: list[domain_dag.DagNode]) -> None:
    result = validate_dag(sdk_nodes(nodes))
    assert isinstance(result, DagOk)
    assert sorted(result.sorted_order) == sorted(n.id for n in nodes)
    position = {node: i for i, node in enumerate(result.sorted_order)}
    for node in nodes:
        assert all(position[dep] < position[node.id] for dep in node.needs)


@given(dag_graphs())
def test_s1_precedence_self_reference_then_missing_then_cycle(nodes: list[domain_dag.DagNode]) -> None:
    graph = {n.id: n.needs for n in nodes}
    result = validate_dag(sdk_nodes(nodes))
    self_refs = [n.id for n in nodes if n.id in n.needs]
    missing = [(n.id, d) for n in nodes for d in n.needs if d not in graph]
    if self_refs:
        assert result == DagSelfReference(self_refs[0])
    elif missing:
        assert result == DagMissingDependency(*missing[0])
    elif reaches_itself(graph):
        assert isinstance(result, DagCycle)
        cycle = result.nodes_in_cycle
        assert cycle
        assert len(set(cycle)) == len(cycle)
        for i, node in enumerate(cycle):
            assert cycle[(i + 1) % len(cycle)] in graph[node]


@given(dag_graphs())
def test_sdk_and_domain_validate_dag_agree_exactly(nodes: list[domain_dag.DagNode]) -> None:
    assert as_domain(validate_dag(sdk_nodes(nodes))) == domain_dag.validate_dag(nodes)
