"""The guarded process() pipeline: order from ranks, built once, wraps the most-derived process once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from typing import Any

import pytest

from onex_compose import CompositionError, NodeCompute, Registry, compose, explain

calls: list[str] = []


def make_registry() -> Registry:
    reg = Registry(name="pipeline-test")

    def guard_mixin(name: str, rank: int, *, sync: bool = True) -> type:
        def guard(self, call):  # type: ignore[no-untyped-def]
            async def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
                calls.append(f"{name}>")
                try:
                    return await call(*args, **kwargs)
                finally:
                    calls.append(f"<{name}")

            return wrapped

        def guard_sync(self, call):  # type: ignore[no-untyped-def]
            def wrapped_sync(*args, **kwargs):  # type: ignore[no-untyped-def]
                calls.append(f"{name}>")
                try:
                    return call(*args, **kwargs)
                finally:
                    calls.append(f"<{name}")

            return wrapped_sync

        members: dict[str, Any] = {"__slots__": (), f"_guard_{name}": guard}
        if sync:
            members[f"_guard_sync_{name}"] = guard_sync
        mixin = type(f"Mixin{name.title().replace('_', '')}", (), members)
        reg.register(mixin, name=name, guard_rank=rank)
        return mixin

    guard_mixin("outer", 10)
    guard_mixin("middle", 50)
    guard_mixin("inner", 90)
    guard_mixin("async_only", 60, sync=False)
    guard_mixin("async_only_too", 70, sync=False)

    def threaded_sync(self, call):  # type: ignore[no-untyped-def]
        """Runs the call in a worker thread (as a sync timeout does) and waits for it."""
        def in_thread(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append("thread>")
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                return pool.submit(call, *args, **kwargs).result(timeout=20)

        return in_thread

    def threaded(self, call):  # type: ignore[no-untyped-def]
        return call  # the async path is not what these tests exercise

    reg.register(type("MixinThreaded", (), {"__slots__": (), "_guard_threaded": threaded,
                                            "_guard_sync_threaded": threaded_sync}),
                 name="threaded", guard_rank=95)
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


class SyncBase(NodeCompute):
    def process(self, x: int) -> int:  # type: ignore[override]
        calls.append("body")
        return x * 3


def test_sync_process_stays_sync_and_is_guarded_by_the_sync_hooks() -> None:
    """Issue 9, point 6: ``SyncNode().process(2)`` returned 4, then a coroutine."""
    cls = compose(SyncBase, ["inner", "outer", "middle"], registry=REG)
    assert not inspect.iscoroutinefunction(cls.process)
    node = cls()
    assert node.process(2) == 6  # no event loop anywhere
    assert node.process(2) == 6  # the bound chain too
    assert calls == ["outer>", "middle>", "inner>", "body", "<inner", "<middle", "<outer"] * 2
    assert cls.__onex_pipeline_kind__ == "sync"


def test_explain_shows_whether_the_pipeline_is_sync_or_async() -> None:
    sync_cls = compose(SyncBase, ["outer"], registry=REG)
    async_cls = compose(Base, ["outer"], registry=REG)
    assert explain(sync_cls).to_dict()["pipeline_kind"] == "sync"
    assert explain(async_cls).to_dict()["pipeline_kind"] == "async"
    assert "process() pipeline (outermost first): outer (sync process)" in str(explain(sync_cls))
    assert "process() pipeline (outermost first): outer (async process)" in str(explain(async_cls))
    assert explain(compose(SyncBase, ["plain"], registry=REG)).to_dict()["pipeline_kind"] is None


def test_a_guard_without_a_sync_path_is_a_composition_error_naming_it() -> None:
    with pytest.raises(CompositionError) as info:
        compose(SyncBase, ["outer", "async_only", "async_only_too"], registry=REG)
    text = str(info.value)
    assert "'async_only', 'async_only_too'" in text and "'outer'" not in text
    assert "_guard_sync_async_only" in text
    assert "async def process" in text  # says how to fix it

    with pytest.raises(CompositionError, match="async_only"):
        class Hand(SyncBase, REG.get("async_only").mixin):  # type: ignore[misc, name-defined]
            pass

    # the same guard is fine on an async process
    assert asyncio.run(compose(Base, ["async_only"], registry=REG)().process(1)) == 2


def test_sync_subclass_override_keeps_guards_and_super_runs_them_once() -> None:
    cls = compose(SyncBase, ["outer", "inner"], registry=REG)

    class Sub(cls):  # type: ignore[misc, valid-type]
        def process(self, x: int) -> int:
            calls.append("sub")
            return int(super().process(x)) + 1

    assert Sub().process(2) == 7
    assert calls == ["outer>", "inner>", "sub", "body", "<inner", "<outer"]


def test_sync_super_runs_guards_once_when_a_guard_runs_the_body_in_a_worker_thread() -> None:
    cls = compose(SyncBase, ["outer", "threaded"], registry=REG)

    class Sub(cls):  # type: ignore[misc, valid-type]
        def process(self, x: int) -> int:
            calls.append("sub")
            return int(super().process(x)) + 1

    assert Sub().process(2) == 7
    assert calls == ["outer>", "thread>", "sub", "body", "<outer"]


def test_a_thread_started_by_a_sync_process_is_guarded() -> None:
    class Spawner(NodeCompute):
        def process(self, x: int) -> Any:  # type: ignore[override]
            calls.append(f"body {x}")
            if x == 0:
                result: list[Any] = []
                t = threading.Thread(target=lambda: result.append(self.process(1)))
                t.start()
                t.join(20)
                return result[0]
            return x

    node = compose(Spawner, ["outer"], registry=REG)()
    assert node.process(0) == 1
    assert calls == ["outer>", "body 0", "outer>", "body 1", "<outer", "<outer"]


def test_sync_guarded_calls_from_many_threads_each_run_the_guards() -> None:
    node = compose(SyncBase, ["outer"], registry=REG)()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(node.process, range(64)))
    assert results == [3 * i for i in range(64)]
    assert calls.count("outer>") == calls.count("<outer") == calls.count("body") == 64


def test_a_sync_process_returning_a_coroutine_is_refused_not_silently_unguarded() -> None:
    class Sneaky(NodeCompute):
        def process(self, x: int) -> Any:  # type: ignore[override]
            return self.work(x)

        async def work(self, x: int) -> int:
            return x

    node = compose(Sneaky, ["outer"], registry=REG)()
    with pytest.raises(CompositionError, match="async def process"):
        node.process(1)
