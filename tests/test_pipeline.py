"""The guarded process() pipeline: order from ranks, built once, wraps the most-derived process once."""

from __future__ import annotations

import asyncio

import pytest

from onex_compose import NodeCompute, Registry, compose, explain

calls: list[str] = []


def make_registry() -> Registry:
    reg = Registry(name="pipeline-test")

    def guard_mixin(name: str, rank: int) -> type:
        def guard(self, call):  # type: ignore[no-untyped-def]
            async def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
                calls.append(f"{name}>")
                try:
                    return await call(*args, **kwargs)
                finally:
                    calls.append(f"<{name}")

            return wrapped

        mixin = type(f"Mixin{name.title()}", (), {"__slots__": (), f"_guard_{name}": guard})
        reg.register(mixin, name=name, guard_rank=rank)
        return mixin

    guard_mixin("outer", 10)
    guard_mixin("middle", 50)
    guard_mixin("inner", 90)
    reg.register(type("MixinPlain", (), {"__slots__": ()}), name="plain")
    return reg


REG = make_registry()


class Base(NodeCompute):
    async def process(self, x: int) -> int:
        calls.append("body")
        return x + 1


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()


@pytest.mark.parametrize("request_order", [
    ["inner", "outer", "middle"], ["middle", "inner", "outer"], ["outer", "middle", "inner"]])
def test_order_comes_from_ranks_not_request(request_order: list[str]) -> None:
    cls = compose(Base, request_order, registry=REG)
    assert asyncio.run(cls().process(1)) == 2
    assert calls == ["outer>", "middle>", "inner>", "body", "<inner", "<middle", "<outer"]
    assert cls.__onex_pipeline__ == ("outer", "middle", "inner")
    assert explain(cls).to_dict()["pipeline"] == ["outer", "middle", "inner"]


def test_no_guards_means_no_wrapper() -> None:
    cls = compose(Base, ["plain"], registry=REG)
    assert cls.process is Base.process
    assert asyncio.run(cls().process(1)) == 2
    assert calls == ["body"]


def test_subclass_override_keeps_guards_and_super_runs_them_once() -> None:
    cls = compose(Base, ["outer", "inner"], registry=REG)

    class Sub(cls):  # type: ignore[misc, valid-type]
        async def process(self, x: int) -> int:
            calls.append("sub")
            return await super().process(x) * 10

    assert asyncio.run(Sub().process(1)) == 20
    assert calls == ["outer>", "inner>", "sub", "body", "<inner", "<outer"]


def test_chain_is_bound_once_per_instance() -> None:
    cls = compose(Base, ["outer"], registry=REG)
    node = cls()

    async def twice() -> None:
        await node.process(1)
        first = node.__dict__["_onex_chain"]
        await node.process(2)
        assert node.__dict__["_onex_chain"] is first

    asyncio.run(twice())


def test_concurrent_calls_each_run_the_guards() -> None:
    cls = compose(Base, ["outer"], registry=REG)
    node = cls()

    async def many() -> list[int]:
        return await asyncio.gather(*(node.process(i) for i in range(20)))

    assert asyncio.run(many()) == [i + 1 for i in range(20)]
    assert calls.count("outer>") == 20


def test_hand_written_class_gets_the_pipeline() -> None:
    outer = REG.get("outer").mixin
    inner = REG.get("inner").mixin

    class Hand(NodeCompute, inner, outer):  # listed inner first on purpose
        __onex_registry__ = REG

        async def process(self, x: int) -> int:
            calls.append("body")
            return x

    asyncio.run(Hand().process(3))
    assert calls == ["outer>", "inner>", "body", "<inner", "<outer"]


def test_sync_process_is_supported() -> None:
    class SyncBase(NodeCompute):
        def process(self, x: int) -> int:  # type: ignore[override]
            calls.append("body")
            return x * 3

    cls = compose(SyncBase, ["outer"], registry=REG)
    assert asyncio.run(cls().process(2)) == 6
    assert calls == ["outer>", "body", "<outer"]
