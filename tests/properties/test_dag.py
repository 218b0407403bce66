"""S1: ``validate_dag`` (SDK-08) and the Kahn sort the needs scheduler shares with it (EXE-17)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given

from kici.domain.dag import (
    DagCycle,
    DagMissingDependency,
    DagNode,
    DagOk,
    DagSelfReference,
    validate_dag,
)
from tests.strategies.execution import dag_graphs

pytestmark = pytest.mark.feature("SDK-08")


def has_cycle(graph: Mapping[str, Sequence[str]]) -> bool:
    """Oracle: some node reaches itself through needs (restricted to known nodes)."""
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


def assert_real_cycle(cycle: Sequence[str], graph: Mapping[str, Sequence[str]]) -> None:
    assert cycle
    assert len(set(cycle)) == len(cycle)
    for i, node in enumerate(cycle):
        assert cycle[(i + 1) % len(cycle)] in graph[node]


@given(dag_graphs())
def test_s1_ok_iff_no_self_reference_no_missing_and_acyclic(nodes: list[DagNode]) -> None:
    graph = {n.id: n.needs for n in nodes}
    result = validate_dag(nodes)
    self_ref = any(n.id in n.needs for n in nodes)
    missing = any(d not in graph for n in nodes for d in n.needs)
    assert isinstance(result, DagOk) == (not self_ref and not missing and not has_cycle(graph))


@given(dag_graphs())
def test_s1_precedence_self_reference_then_missing_then_cycle(nodes: list[DagNode]) -> None:
    graph = {n.id: n.needs for n in nodes}
    result = validate_dag(nodes)
    self_refs = [n.id for n in nodes if n.id in n.needs]
    missing = [(n.id, d) for n in nodes for d in n.needs if d not in graph]
    if self_refs:
        assert result == DagSelfReference(self_refs[0])
    elif missing:
        assert result == DagMissingDependency(*missing[0])
    elif has_cycle(graph):
        assert isinstance(result, DagCycle)
        assert_real_cycle(result.nodes_in_cycle, graph)
    else:
        assert isinstance(result, DagOk)


@given(dag_graphs(acyclic=True))
def test_s1_sorted_order_is_a_topological_permutation(nodes: list[DagNode]) -> None:
    result = validate_dag(nodes)
    assert isinstance(result, DagOk)
    assert sorted(result.sorted_order) == sorted(n.id for n in nodes)
    position = {node: i for i, node in enumerate(result.sorted_order)}
    for node in nodes:
        assert all(position[dep] < position[node.id] for dep in node.needs)


@given(dag_graphs(acyclic=True))
def test_s1_deterministic_and_keeps_an_already_topological_order(nodes: list[DagNode]) -> None:
    result = validate_dag(nodes)
    assert isinstance(result, DagOk)
    assert validate_dag(list(nodes)) == result
    ordered = [next(n for n in nodes if n.id == node_id) for node_id in result.sorted_order]
    assert validate_dag(ordered) == result
