"""compose() cost (warm and cold) and per-call cost of methods on composed instances.

Rows, each the median of ``--repeats`` runs, measured in one process:

* warm ``compose()`` with a list of names, against its floor: building a ``frozenset`` key and
  looking it up in a dict (targets: <= 0.5 µs and <= 1.5x the floor);
* cold compose of six toy capabilities on a private registry with networkx already imported
  (``cache_clear()`` before each; its own cost is measured and subtracted; target <= 120 µs),
  next to its two irreducible parts: a networkx build + sort of the same graph and ``type()``
  with the same bases;
* a facility method called through a composed instance vs the same method on a plain class
  (target <= 1.05x), and a method found at MRO depth 1 vs depth 8.

The toy capabilities come from ``tests/toy_capabilities.py`` (the engine's test fixtures), so
the numbers do not move when the real capabilities change.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _harness import Table, parse_args, time_sync  # noqa: E402
from toy_capabilities import (  # noqa: E402
    TOY_NAMES,
    ToyBreaker,
    ToyBus,
    ToyCache,
    ToyHealth,
    ToyMetrics,
    make_registry,
    plain_mixin,
)

from onex_compose import (  # noqa: E402
    NodeCompute,
    Registry,
    cache_clear,
    compose,
    default_registry,
)


def warm_rows(table: Table, number: int, repeats: int) -> None:
    names = ["caching", "metrics"]
    if not all(n in default_registry for n in names):
        table.add("warm compose(NodeCompute, ['caching','metrics'])", 0.0,
                  note="skipped: caching/metrics not registered yet")
        return
    compose(NodeCompute, names)
    floor_table = {(NodeCompute, frozenset(names)): object()}
    floor = time_sync(lambda: floor_table[NodeCompute, frozenset(names)],
                      number=number, repeats=repeats)
    table.add("floor: (base, frozenset(names)) key + dict lookup", floor, note="2 names")
    warm = time_sync(lambda: compose(NodeCompute, names), number=number, repeats=repeats)
    table.add("warm compose(NodeCompute, ['caching','metrics'])", warm, baseline=floor,
              target="<= 500 ns, <= 1.5x floor")

    six = list(TOY_NAMES)
    reg = make_registry("bench-warm")
    compose(NodeCompute, six, registry=reg)
    floor6_table = {(NodeCompute, frozenset(six)): object()}
    floor6 = time_sync(lambda: floor6_table[NodeCompute, frozenset(six)],
                       number=number, repeats=repeats)
    table.add("floor: (base, frozenset(names)) key + dict lookup", floor6, note="6 names")
    warm6 = time_sync(lambda: compose(NodeCompute, six, registry=reg), number=number,
                      repeats=repeats)
    table.add("warm compose(NodeCompute, 6 names, registry=private)", warm6, baseline=floor6,
              note="options path (registry=)")


def _nx_build_and_sort(reg: Registry, names: list[str]) -> list[str]:
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(names)
    for name in names:
        for dep in reg.get(name).requires:
            graph.add_edge(dep, name)
    return list(nx.lexicographical_topological_sort(graph, key=lambda n: n))


def cold_rows(table: Table, number: int, repeats: int) -> None:
    import networkx  # noqa: F401  (imported on purpose: the target excludes its import)

    reg = make_registry("bench-cold")
    names = list(TOY_NAMES)

    def cold() -> Any:
        cache_clear()
        return compose(NodeCompute, names, registry=reg)

    cold()
    clear_cost = time_sync(cache_clear, number=number, repeats=repeats)
    total = time_sync(cold, number=number, repeats=repeats)
    table.add("cold compose, 6 toy capabilities (networkx imported)",
              max(total - clear_cost, 0.0), target="<= 120 µs",
              note=f"cache_clear() ({clear_cost * 1e9:.0f} ns) subtracted")
    sort = time_sync(lambda: _nx_build_and_sort(reg, names), number=number, repeats=repeats)
    table.add("  part: networkx DiGraph build + lexicographic sort", sort,
              note="the same 6-node graph")
    record = compose(NodeCompute, names, registry=reg).__composition__
    bases = (NodeCompute, *(reg.get(n).mixin for n in record.capabilities))
    ns = {"__module__": __name__, "__composition__": record}
    make = time_sync(lambda: type("Probe", bases, dict(ns)), number=number, repeats=repeats)
    table.add("  part: type() with 1 base + 6 mixins", make,
              note="with NodeCoreBase.__init_subclass__ (init plan)")


class PlainNode:
    """The same facilities and method on a plain, hand-written class."""

    def __init__(self) -> None:
        self.metrics = ToyMetrics()
        self.health = ToyHealth()
        self.cache = ToyCache(128, self.metrics)
        self.event_bus = ToyBus(self.metrics)
        self.breaker = ToyBreaker()

    def is_healthy(self) -> bool:
        return self.health.ok()


def call_rows(table: Table, number: int, repeats: int) -> None:
    reg = make_registry("bench-call")
    node: Any = compose(NodeCompute, list(TOY_NAMES), registry=reg)()
    plain = PlainNode()
    node.cache.set("k", 1)
    plain.cache.set("k", 1)
    base_get = time_sync(lambda: plain.cache.get("k"), number=number, repeats=repeats)
    table.add("plain class: self.cache.get(k)", base_get)
    comp_get = time_sync(lambda: node.cache.get("k"), number=number, repeats=repeats)
    table.add("composed instance: self.cache.get(k)", comp_get, baseline=base_get,
              target="<= 1.05x")
    base_read = time_sync(lambda: plain.cache, number=number, repeats=repeats)
    table.add("plain class: read self.cache", base_read)
    comp_read = time_sync(lambda: node.cache, number=number, repeats=repeats)
    table.add("composed instance: read self.cache (facility set by setup)", comp_read,
              baseline=base_read,
              note="facility keeps no class attribute: a same-named one would block "
                   "LOAD_ATTR specialisation")
    base_m = time_sync(plain.is_healthy, number=number, repeats=repeats)
    table.add("plain class: is_healthy() (own method)", base_m)
    comp_m = time_sync(node.is_healthy, number=number, repeats=repeats)
    table.add("composed instance: is_healthy() (mixin method)", comp_m, baseline=base_m,
              target="<= 1.05x")

    deep = Registry(name="bench-depth")
    for i in range(8):
        members = {"deep": lambda self: 1} if i == 7 else {}
        deep.register(plain_mixin(f"MixinDepth{i}", members), name=f"depth{i}", rank=i)
    composed = compose(NodeCompute, [f"depth{i}" for i in range(8)], registry=deep)

    class Shallow(composed):  # type: ignore[valid-type, misc]
        def shallow(self) -> int:
            return 1

    obj = Shallow()
    mro = type(obj).__mro__
    depth = next(i for i, k in enumerate(mro) if "deep" in vars(k))
    one = time_sync(obj.shallow, number=number, repeats=repeats)
    table.add("method at MRO depth 1 (on the class itself)", one)
    eight = time_sync(obj.deep, number=number, repeats=repeats)
    table.add(f"method at MRO depth {depth} (on the 8th mixin)", eight, baseline=one,
              note="CPython's type attribute cache")


def main() -> None:
    args = parse_args()
    repeats = 2 if args.smoke else args.repeats
    table = Table("bench_compose", "compose(): warm, cold, and per-call cost")
    warm_rows(table, 2_000 if args.smoke else 300_000, repeats)
    cold_rows(table, 20 if args.smoke else 300, repeats)
    call_rows(table, 2_000 if args.smoke else 300_000, repeats)
    table.finish(args.smoke)


if __name__ == "__main__":
    main()
