"""``validate_dag`` by example (SDK-08)."""

from __future__ import annotations

import pytest

from kici.domain.dag import (
    DagCycle,
    DagMissingDependency,
    DagNode,
    DagOk,
    DagSelfReference,
    DuplicateDagNodeError,
    kahn,
    validate_dag,
)

pytestmark = pytest.mark.feature("SDK-08")


def test_empty_graph_is_ok() -> None:
    assert validate_dag([]) == DagOk(())


def test_sorted_order_breaks_ties_by_input_order() -> None:
    nodes = [
        DagNode("deploy", ["test", "lint"]),
        DagNode("lint"),
        DagNode("test", ["build"]),
        DagNode("build"),
    ]
    assert validate_dag(nodes) == DagOk(("lint", "build", "test", "deploy"))


def test_self_reference_wins_over_missing_and_cycle() -> None:
    nodes = [DagNode("a", ["b"]), DagNode("b", ["a", "ghost"]), DagNode("c", ["c"])]
    assert validate_dag(nodes) == DagSelfReference("c")


def test_missing_dependency_names_first_offender() -> None:
    nodes = [DagNode("a", ["b"]), DagNode("b", ["a"]), DagNode("c", ["x", "y"])]
    assert validate_dag(nodes) == DagMissingDependency("c", "x")


def test_cycle_members_in_needs_order() -> None:
    nodes = [DagNode("a", ["c"]), DagNode("b", ["a"]), DagNode("c", ["b"]), DagNode("d", ["a"])]
    assert validate_dag(nodes) == DagCycle(("a", "c", "b"))


def test_cycle_behind_an_acyclic_prefix_excludes_the_tail() -> None:
    nodes = [DagNode("root"), DagNode("tail", ["x"]), DagNode("x", ["y"]), DagNode("y", ["x", "root"])]
    assert validate_dag(nodes) == DagCycle(("x", "y"))


def test_group_nodes_are_plain_nodes() -> None:
    nodes = [DagNode("__group:g"), DagNode("report", ["__group:g"])]
    assert validate_dag(nodes) == DagOk(("__group:g", "report"))


def test_duplicate_ids_are_a_typed_error() -> None:
    with pytest.raises(DuplicateDagNodeError, match="'a'") as info:
        validate_dag([DagNode("a"), DagNode("a")])
    assert info.value.node_id == "a"


def test_kahn_ignores_unknown_needs_and_duplicate_needs() -> None:
    result = kahn({"a": ["a2", "ghost"], "a2": [], "b": ["a", "a"]})
    assert result.order == ("a2", "a", "b")
    assert result.cycle is None


def test_kahn_reports_a_self_loop_as_a_one_node_cycle() -> None:
    assert kahn({"a": ["a"], "b": []}).cycle == ("a",)
