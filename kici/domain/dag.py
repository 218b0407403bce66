"""Dependency-graph validation (SDK-08) and the Kahn sort shared with the needs scheduler (EXE-17).

Results are deterministic for a given input order: ties in the topological
order are broken by input position, so an already ordered workflow keeps its
order, and a reported cycle is always the same one. A cycle is reported in
``needs`` direction: each member needs the next, and the last needs the first.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

import attrs


def _to_tuple(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen
class DagNode:
    id: str
    needs: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple)


@attrs.frozen
class DagOk:
    sorted_order: tuple[str, ...]


@attrs.frozen
class DagSelfReference:
    node_id: str


@attrs.frozen
class DagMissingDependency:
    node_id: str
    missing_dep: str


@attrs.frozen
class DagCycle:
    nodes_in_cycle: tuple[str, ...]


DagResult = DagOk | DagSelfReference | DagMissingDependency | DagCycle


class DuplicateDagNodeError(ValueError):
    """Two nodes share an id; the graph is ambiguous, not merely invalid."""

    def __init__(self, node_id: str) -> None:
        super().__init__(f"duplicate node id {node_id!r}")
        self.node_id = node_id


@attrs.frozen
class KahnResult:
    """``order`` holds every node Kahn could emit; ``cycle`` is one cycle among the rest, if any."""

    order: tuple[str, ...]
    cycle: tuple[str, ...] | None


def kahn(graph: Mapping[str, Sequence[str]]) -> KahnResult:
    """Kahn's algorithm over ``node -> needs``; needs naming nodes outside ``graph`` are ignored.

    The mapping's iteration order is the tie-break order.
    """
    position = {node: i for i, node in enumerate(graph)}
    needs = {node: tuple(dict.fromkeys(d for d in deps if d in position)) for node, deps in graph.items()}
    waiting = {node: len(deps) for node, deps in needs.items()}
    dependents: dict[str, list[str]] = {node: [] for node in graph}
    for node, deps in needs.items():
        for dep in deps:
            dependents[dep].append(node)
    ready = [position[node] for node, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    nodes = list(graph)
    order: list[str] = []
    while ready:
        node = nodes[heapq.heappop(ready)]
        order.append(node)
        for dependent in dependents[node]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, position[dependent])
    if len(order) == len(nodes):
        return KahnResult(tuple(order), None)
    emitted = set(order)
    left = [node for node in nodes if node not in emitted]
    return KahnResult(tuple(order), _walk_cycle(left, needs, set(left)))


def _walk_cycle(
    left: Sequence[str], needs: Mapping[str, Sequence[str]], remaining: set[str]
) -> tuple[str, ...]:
    # Every node Kahn could not emit still needs another such node, so following
    # the first such need from any of them must revisit a node: that loop is a cycle.
    path: list[str] = []
    seen: dict[str, int] = {}
    node = left[0]
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(dep for dep in needs[node] if dep in remaining)
    return tuple(path[seen[node] :])


def validate_dag(nodes: Sequence[DagNode]) -> DagResult:
    """Check a job graph: a self-reference first, then a missing dependency, then a cycle.

    Within one check the first offending node in input order is reported (and,
    for a missing dependency, its first missing need in declaration order).
    """
    ids: set[str] = set()
    for node in nodes:
        if node.id in ids:
            raise DuplicateDagNodeError(node.id)
        ids.add(node.id)
    for node in nodes:
        if node.id in node.needs:
            return DagSelfReference(node.id)
    for node in nodes:
        for dep in node.needs:
            if dep not in ids:
                return DagMissingDependency(node.id, dep)
    result = kahn({node.id: node.needs for node in nodes})
    if result.cycle is not None:
        return DagCycle(result.cycle)
    return DagOk(result.order)
