"""Hypothesis strategies for the engine: random capability graphs, plus independent oracles.

A :class:`Graph` is a generated set of capabilities (names, ranks, ``requires``, ``optional``,
``before``, ``after``, public members) and a request over them. The oracles here re-derive what
the resolver must answer (closure, ordering edges, whether a cycle exists, the deterministic
order) with the standard library only (``graphlib`` and ``heapq``), so the properties compare the
engine against a second, much simpler implementation rather than against itself.
"""

from __future__ import annotations

import graphlib
import heapq
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from hypothesis import strategies as st

from onex_compose import Registry

__all__ = [
    "BASE_MEMBERS",
    "Graph",
    "closure",
    "graphs",
    "has_cycle",
    "lexicographic_order",
    "order_edges",
    "requests_of",
]

BASE_MEMBERS = ("start", "process", "aclose")
"""Public names of the node base that a generated mixin may clash with."""

MEMBER_POOL = ("alpha", "beta", "gamma", "delta", "omega", *BASE_MEMBERS)

_names = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True).filter(
    lambda n: n not in MEMBER_POOL)


@attrs.frozen
class Graph:
    """A generated capability graph and a request over it."""

    names: tuple[str, ...]
    rank: Mapping[str, int]
    requires: Mapping[str, frozenset[str]]
    optional: Mapping[str, frozenset[str]]
    before: Mapping[str, frozenset[str]]
    after: Mapping[str, frozenset[str]]
    members: Mapping[str, frozenset[str]]
    request: tuple[str, ...]

    def registry(self) -> Registry:
        """A private registry holding one plain mixin per capability."""
        reg = Registry(name="generated")
        for name in self.names:
            ns: dict[str, Any] = {"__slots__": ()}
            for member in self.members[name]:
                ns[member] = _member(name, member)
            mixin = type(f"Mixin_{name}", (), ns)
            reg.register(mixin, name=name, rank=self.rank[name],
                         requires=self.requires[name], optional=self.optional[name],
                         before=self.before[name], after=self.after[name])
        return reg


def _member(owner: str, member: str) -> Any:
    def method(self: object) -> str:
        return owner

    method.__name__ = member
    return method


@st.composite
def graphs(draw: st.DrawFn, *, min_size: int = 1, max_size: int = 7, acyclic: bool = False,
           members: bool = False) -> Graph:
    """Random capability graphs.

    With ``acyclic=True`` every constraint points from a later-generated capability to an
    earlier one, so no cycle is possible; otherwise edges go anywhere (cycles are likely).
    With ``members=True`` each capability defines a few public names from a small pool that
    also holds the base's own ``start``/``process``/``aclose`` (clashes are likely).
    """
    names = draw(st.lists(_names, min_size=min_size, max_size=max_size, unique=True))
    rank = {n: draw(st.sampled_from([100, 300, 500, 500, 900])) for n in names}

    def subset(i: int) -> frozenset[str]:
        pool = names[:i] if acyclic else [n for n in names if n != names[i]]
        if not pool:
            return frozenset()
        return frozenset(draw(st.lists(st.sampled_from(pool), max_size=2, unique=True)))

    def later(i: int) -> frozenset[str]:
        pool = names[i + 1:] if acyclic else [n for n in names if n != names[i]]
        if not pool:
            return frozenset()
        return frozenset(draw(st.lists(st.sampled_from(pool), max_size=1, unique=True)))

    requires = {n: subset(i) for i, n in enumerate(names)}
    optional = {n: subset(i) for i, n in enumerate(names)}
    after = {n: subset(i) for i, n in enumerate(names)}
    before = {n: later(i) for i, n in enumerate(names)}
    mems = {
        n: frozenset(draw(st.lists(st.sampled_from(MEMBER_POOL), max_size=2, unique=True)))
        if members else frozenset()
        for n in names
    }
    request = tuple(draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names))))
    return Graph(tuple(names), rank, requires, optional, before, after, mems, request)


def requests_of(graph: Graph) -> st.SearchStrategy[list[str]]:
    """Permutations of the graph's request with random repetitions added."""
    return st.tuples(
        st.permutations(list(graph.request)),
        st.lists(st.sampled_from(list(graph.request)), max_size=3),
    ).map(lambda t: [*t[0], *t[1]])


# -- oracles ----------------------------------------------------------------------------------


def closure(graph: Graph, request: Iterable[str]) -> set[str]:
    """The transitive closure of ``requires`` over the request."""
    seen: set[str] = set()
    stack = list(request)
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(graph.requires[name])
    return seen


def order_edges(graph: Graph, selected: set[str]) -> set[tuple[str, str]]:
    """Every ordering edge ``(first, then)`` among the selected capabilities."""
    edges: set[tuple[str, str]] = set()
    for n in selected:
        for dep in graph.requires[n] | graph.optional[n] | graph.after[n]:
            if dep in selected:
                edges.add((dep, n))
        for later in graph.before[n]:
            if later in selected:
                edges.add((n, later))
    return {(a, b) for a, b in edges if a != b}


def has_cycle(graph: Graph, selected: set[str]) -> bool:
    """Whether the ordering edges among ``selected`` contain a cycle (graphlib decides)."""
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for n in selected:
        sorter.add(n)
    for a, b in order_edges(graph, selected):
        sorter.add(b, a)
    try:
        sorter.prepare()
    except graphlib.CycleError:
        return True
    return False


def lexicographic_order(graph: Graph, selected: set[str]) -> list[str]:
    """Kahn's algorithm taking the smallest ``(rank, name)`` ready node each time."""
    edges = order_edges(graph, selected)
    indegree = dict.fromkeys(selected, 0)
    for _a, b in edges:
        indegree[b] += 1
    heap = [(graph.rank[n], n) for n, d in indegree.items() if d == 0]
    heapq.heapify(heap)
    out: list[str] = []
    while heap:
        _rank, n = heapq.heappop(heap)
        out.append(n)
        for a, b in edges:
            if a == n:
                indegree[b] -= 1
                if indegree[b] == 0:
                    heapq.heappush(heap, (graph.rank[b], b))
    return out
