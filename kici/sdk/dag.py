"""``validate_dag`` (SDK-08) in the standard library, for the SDK and the runner (D1).

The domain has the same check (``kici.domain.dag``) for the compiler and the
scheduler; both must give identical answers, which a property test holds them to.
The rules that make the answer unique:

* checks run in order: a self-reference, then a missing dependency, then a cycle;
  within one check the first offending node in input order is reported (for a
  missing dependency, its first missing need in declaration order);
* the order of a valid graph is Kahn's, always emitting the ready node that came
  first in the input, so an already ordered workflow keeps its order;
* a cycle starts at the first node (input order) Kahn could not emit and follows,
  from each node, its first need (declaration order) among the unemitted nodes until
  a node repeats; the cycle is the path from that node on, in ``needs`` direction.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class DagNode:
    id: str
    needs: tuple[str, ...] = ()

    def __init__(self, id: str, needs: Iterable[str] = ()) -> None:
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "needs", tuple(needs))


@dataclass(frozen=True)
class DagOk:
    sorted_order: tuple[str, ...]


@dataclass(frozen=True)
class DagSelfReference:
    node_id: str


@dataclass(frozen=True)
class DagMissingDependency:
    node_id: str
    missing_dep: str


@dataclass(frozen=True)
class DagCycle:
    nodes_in_cycle: tuple[str, ...]


DagResult = DagOk | DagSelfReference | DagMissingDependency | DagCycle


class DuplicateDagNodeError(ValueError):
    """Two nodes share an id: the graph is ambiguous, not merely invalid."""

    def __init__(self, node_id: str) -> None:
        super().__init__(f"duplicate node id {node_id!r}")
        self.node_id = node_id


def _kahn(nodes: Sequence[DagNode]) -> tuple[list[str], list[str]]:
    """``(emitted in order, left over)``, ties broken by input position."""
    index = {node.id: i for i, node in enumerate(nodes)}
    pending = [len(set(node.needs)) for node in nodes]
    dependents: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        for dep in set(node.needs):
            dependents[index[dep]].append(i)
    ready = [i for i, count in enumerate(pending) if count == 0]
    heapq.heapify(ready)
    emitted: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        emitted.append(i)
        for j in dependents[i]:
            pending[j] -= 1
            if pending[j] == 0:
                heapq.heappush(ready, j)
    done = set(emitted)
    return [nodes[i].id for i in emitted], [node.id for i, node in enumerate(nodes) if i not in done]


def _cycle(nodes: Sequence[DagNode], left: Sequence[str]) -> tuple[str, ...]:
    needs = {node.id: node.needs for node in nodes}
    remaining = set(left)
    path: list[str] = []
    position: dict[str, int] = {}
    current = left[0]
    while current not in position:
        position[current] = len(path)
        path.append(current)
        current = next(dep for dep in needs[current] if dep in remaining)
    return tuple(path[position[current] :])


def validate_dag(nodes: Sequence[DagNode]) -> DagResult:
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
    order, left = _kahn(nodes)
    if left:
        return DagCycle(_cycle(nodes, left))
    return DagOk(tuple(order))
