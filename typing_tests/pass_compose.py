"""The documented pattern: ``Service = compose(NodeCompute, [...])`` is typed ``type[NodeCompute]``."""

from __future__ import annotations

from typing import Any, assert_type

from onex_compose import (
    Composition,
    NodeCompute,
    NodeCoreBase,
    NodeEffect,
    cache_clear,
    cache_info,
    compose,
    default_registry,
    explain,
    has_capability,
)

Service = compose(NodeCompute, ["caching", "metrics"])
assert_type(Service, type[NodeCompute])

node = Service(capability_config={"caching": {"default_ttl": 60}})
assert_type(node, NodeCompute)

Effect = compose(NodeEffect, ["retry"], exclude=["timeout"])
assert_type(Effect, type[NodeEffect])
effect: NodeCoreBase = Effect()


class Pricer(NodeCompute):
    async def process(self, input_data: Any) -> float:
        return float(input_data["qty"]) * float(input_data["price"])


PricerService = compose(Pricer, ("caching",), registry=default_registry)
assert_type(PricerService, type[Pricer])
pricer = PricerService()
assert_type(pricer, Pricer)


async def use(p: Pricer) -> float:
    return await p.process({"qty": 2, "price": 3.5})


record = Service.__composition__
assert_type(record, Composition)
order: tuple[str, ...] = record.capabilities
report = explain(Service)
as_dict: dict[str, Any] = report.to_dict()
as_json: str = report.to_json()
as_dot: str = report.to_dot()
flag: bool = has_capability(node, "caching")
counts: dict[str, int] = cache_info()
cache_clear()
