"""The caching capability on its default (memory) backend: alone, composed, as the seed uses it.

Redis L2 behaviour (promotion, invalidation across processes, outages) is in
``test_caching_redis.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import decimal
import enum
import os
import pickle
import subprocess
import sys
import uuid
from collections import OrderedDict, namedtuple
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from onex_compose import (
    ConfigurationError,
    NodeCompute,
    NodeEffect,
    compose,
    explain,
    has_capability,
)
from onex_compose.capabilities import CONTRACTS_DIR
from onex_compose.capabilities._context import ManualClock
from onex_compose.capabilities.caching import (
    MISSING,
    Cache,
    CacheKeyError,
    CacheSerializationError,
    CachingConfig,
    CachingProtocol,
    MixinCaching,
    cached,
    canonical,
    generate_cache_key,
)

try:
    from onex_compose import NodeComputeService
except ImportError:  # pragma: no cover - the lead's service classes not there yet
    NodeComputeService = NodeCompute  # type: ignore[misc]

mock_contract = None

CONTRACT = CONTRACTS_DIR / "caching" / "mixin_caching.yaml"  # a package: its contract inside


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def clocked(**config: Any) -> tuple[Cache, ManualClock]:
    clock = ManualClock(1000.0)
    return Cache(config, clock=clock), clock


# -- seed 000 and the design card --------------------------------------------------------------


def test_caching_mixin() -> None:
    """Seed 000's isolated caching test, as written (``await`` inside a coroutine)."""

    class TestService(NodeComputeService, MixinCaching):
        pass

    service = TestService(mock_contract)

    async def body() -> None:
        # Test caching functionality
        await service.cache.set("key", "value", ttl=60)
        result = await service.cache.get("key")
        assert result == "value"

    run(body())
    assert "metrics" in TestService.__composition__.capabilities


def test_composed_by_name_as_the_design_card_uses_it() -> None:
    Service = compose(NodeCompute, ["caching", "metrics"])
    assert Service.__composition__.capabilities == ("metrics", "caching")
    assert Service is compose(NodeCompute, ["metrics", "caching"])
    node = Service(capability_config={"caching": {"default_ttl": 30, "max_entries": 5}})
    assert isinstance(node.cache, CachingProtocol)
    assert node.cache.config.max_entries == 5

    async def body() -> None:
        await node.cache.set("a", {"x": [1, 2]})
        assert await node.cache.get("a") == {"x": [1, 2]}

    run(body())
    assert "caching" in str(explain(Service))


def test_caching_alone_pulls_in_metrics() -> None:
    Service = compose(NodeCompute, ["caching"])
    assert has_capability(Service, "metrics")
    assert "metrics" in str(explain(Service))


# -- basic get / set ---------------------------------------------------------------------------


def test_miss_set_get_overwrite_and_complex_values() -> None:
    cache = Cache()

    async def body() -> None:
        assert await cache.get("k") is None
        assert await cache.get("k", "dflt") == "dflt"
        await cache.set("k", 1)
        assert await cache.get("k") == 1
        await cache.set("k", 2)
        assert await cache.get("k") == 2
        value = {"list": [1, 2, {"nested": (3, 4)}], "set": {1, 2}}
        await cache.set("c", value)
        assert await cache.get("c") == value

    run(body())


def test_stored_none_is_distinguishable_from_a_miss() -> None:
    cache = Cache()

    async def body() -> None:
        await cache.set("none", None)
        assert await cache.get("none") is None
        assert await cache.get("none", MISSING) is None
        assert await cache.get("absent", MISSING) is MISSING
        assert await cache.get("absent", cache.MISSING) is MISSING
        assert await cache.contains("none") is True
        assert await cache.contains("absent") is False

    run(body())
    assert repr(MISSING) == "MISSING" and not MISSING
    assert pickle.loads(pickle.dumps(MISSING)) is MISSING


def test_keys_must_be_strings() -> None:
    cache = Cache()
    with pytest.raises(CacheKeyError, match="generate_cache_key"):
        run(cache.set(("tuple", "key"), 1))  # type: ignore[arg-type]
    with pytest.raises(CacheKeyError, match="list"):
        run(cache.get(["unhashable"]))  # type: ignore[arg-type]
    with pytest.raises(CacheKeyError, match="int"):
        run(cache.get(42))  # type: ignore[arg-type]

    class Kind(str, enum.Enum):
        A = "a"

    run(cache.set(Kind.A, 1))  # a str subclass is a string
    assert run(cache.get("a")) == 1
    assert isinstance(CacheKeyError("x"), TypeError)


# -- TTL ---------------------------------------------------------------------------------------


def test_ttl_per_call_wins_over_default() -> None:
    cache, clock = clocked(default_ttl=100)

    async def body() -> None:
        await cache.set("short", 1, ttl=5)
        await cache.set("default", 2)
        clock.advance(6)
        assert await cache.get("short", MISSING) is MISSING
        assert await cache.get("default") == 2
        clock.advance(95)
        assert await cache.get("default", MISSING) is MISSING

    run(body())


def test_no_default_ttl_never_expires() -> None:
    cache, clock = clocked()

    async def body() -> None:
        await cache.set("k", "v")
        clock.advance(10 ** 9)
        assert await cache.get("k") == "v"

    run(body())


def test_expired_entry_reads_as_a_miss_and_is_removed_on_that_read() -> None:
    cache, clock = clocked()

    async def body() -> None:
        await cache.set("k", "v", ttl=1)
        await cache.set("other", "v", ttl=1)
        clock.advance(1.0)  # expiry is inclusive: at the deadline it is gone
        assert len(cache) == 2  # nothing purged yet
        assert await cache.get("k", MISSING) is MISSING
        assert len(cache) == 1  # removed by that read, the other one still waits

    run(body())
    assert cache.stats()["misses"]["l1"] == 1


@pytest.mark.parametrize("ttl", [0, -1, -0.5])
def test_ttl_at_or_below_zero_stores_nothing_and_removes_the_key(ttl: float) -> None:
    cache, _ = clocked(default_ttl=60)

    async def body() -> None:
        await cache.set("new", 1, ttl=ttl)
        assert await cache.get("new", MISSING) is MISSING
        await cache.set("old", 1)
        await cache.set("old", 2, ttl=ttl)
        assert await cache.get("old", MISSING) is MISSING

    run(body())
    assert cache.stats()["entries"] == 0


def test_default_ttl_of_zero_in_config_means_nothing_is_stored() -> None:
    cache, _ = clocked(default_ttl=0)
    run(cache.set("k", 1))
    assert len(cache) == 0
    run(cache.set("k", 1, ttl=10))
    assert len(cache) == 1


# -- disabled ----------------------------------------------------------------------------------


def test_disabled_cache_misses_and_ignores_writes() -> None:
    cache = Cache({"enabled": False})
    calls: list[int] = []

    async def load() -> str:
        calls.append(1)
        return "v"

    async def body() -> None:
        await cache.set("k", "v")
        assert await cache.get("k", MISSING) is MISSING
        assert await cache.get_or_set("k", load) == "v"
        assert await cache.get_or_set("k", load) == "v"
        assert await cache.delete("k") is False
        assert await cache.clear() is False

    run(body())
    assert len(calls) == 2
    stats = cache.stats()
    assert stats["enabled"] is False and stats["entries"] == 0


# -- delete / clear / stats --------------------------------------------------------------------


def test_delete_removes_one_key_and_ignores_missing_ones() -> None:
    cache = Cache()

    async def body() -> None:
        await cache.set("a", 1)
        await cache.set("b", 2)
        assert await cache.delete("a") is True
        assert await cache.delete("a") is False
        assert await cache.delete("never") is False
        assert await cache.get("a", MISSING) is MISSING
        assert await cache.get("b") == 2
        assert await cache.clear() is True
        assert await cache.get("b", MISSING) is MISSING

    run(body())


def test_stats_purge_expired_entries_first_and_count_per_level() -> None:
    cache, clock = clocked()

    async def body() -> None:
        await cache.set("keep", 1)
        await cache.set("expire", 2, ttl=1)
        await cache.get("keep")
        await cache.get("keep")
        await cache.get("absent")
        clock.advance(2)

    run(body())
    stats = cache.stats()
    assert stats["enabled"] is True
    assert stats["entries"] == 1
    assert stats["keys"] == ["keep"]
    assert stats["hits"] == {"l1": 2, "l2": 0}
    assert stats["misses"] == {"l1": 1, "l2": 0}
    assert stats["backend"] == "memory"
    assert "l2" not in stats


def test_l1_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache = Cache({"max_entries": 3})

    async def body() -> None:
        for k in "abc":
            await cache.set(k, k)
        await cache.get("a")            # a is now the most recently used
        await cache.set("d", "d")       # evicts b
        assert await cache.get("b", MISSING) is MISSING
        assert await cache.get("a") == "a"
        await cache.set("c", "c2")      # rewrite refreshes c
        await cache.set("e", "e")       # evicts d (a and c were used after it)
        assert sorted(cache.stats()["keys"]) == ["a", "c", "e"]

    run(body())
    assert cache.stats()["evictions"] == 2
    assert len(cache) == 3


def test_hit_and_miss_counts_per_level_reach_the_nodes_metrics() -> None:
    node = compose(NodeCompute, ["caching"])()

    async def body() -> None:
        await node.cache.set("k", 1)
        await node.cache.get("k")
        await node.cache.get("k")
        await node.cache.get("nope")

    run(body())
    counters = node.metrics.snapshot()["counters"]
    assert counters['cache_lookups_total{level="l1",result="hit"}'] == 2
    assert counters['cache_lookups_total{level="l1",result="miss"}'] == 1


def test_health_on_memory_backend_is_healthy() -> None:
    report = Cache().health()
    assert report["status"] == "healthy"
    assert report["backend"] == "memory"


# -- single-flight -----------------------------------------------------------------------------


def test_100_concurrent_misses_run_the_loader_once() -> None:
    cache = Cache()
    calls: list[int] = []

    async def load() -> dict[str, int]:
        calls.append(1)
        await asyncio.sleep(0.01)
        return {"v": 1}

    async def body() -> list[Any]:
        return await asyncio.gather(*(cache.get_or_set("k", load, ttl=60) for _ in range(100)))

    results = run(body())
    assert len(calls) == 1
    assert all(r == {"v": 1} for r in results)
    assert cache.stats()["loads"] == 1


def test_single_flight_is_per_key() -> None:
    cache = Cache()
    calls: list[str] = []

    def loader(k: str) -> Any:
        async def load() -> str:
            calls.append(k)
            await asyncio.sleep(0.005)
            return k.upper()
        return load

    async def body() -> list[Any]:
        return await asyncio.gather(*(cache.get_or_set(k, loader(k)) for k in "abab"))

    assert run(body()) == ["A", "B", "A", "B"]
    assert sorted(calls) == ["a", "b"]


def test_loader_failure_reaches_every_waiter_and_is_not_cached() -> None:
    cache = Cache()
    calls: list[int] = []

    async def failing() -> None:
        calls.append(1)
        await asyncio.sleep(0.01)
        raise ValueError("backend said no")

    async def body() -> None:
        results = await asyncio.gather(*(cache.get_or_set("k", failing) for _ in range(10)),
                                       return_exceptions=True)
        assert len(calls) == 1
        assert all(isinstance(r, ValueError) and "backend said no" in str(r) for r in results)
        assert await cache.get_or_set("k", lambda: "ok") == "ok"  # the failure was not cached

    run(body())


def test_a_cancelled_loader_hands_over_to_a_waiter() -> None:
    cache = Cache()
    calls: list[int] = []
    started = asyncio.Event

    async def body() -> None:
        gate = started()

        async def slow() -> str:
            calls.append(1)
            gate.set()
            await asyncio.sleep(10)
            return "slow"

        async def fast() -> str:
            calls.append(2)
            return "fast"

        leader = asyncio.create_task(cache.get_or_set("k", slow))
        await gate.wait()
        waiter = asyncio.create_task(cache.get_or_set("k", fast))
        await asyncio.sleep(0)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        assert await waiter == "fast"

    run(body())
    assert calls == [1, 2]


def test_sync_loaders_and_none_results_are_cached() -> None:
    cache = Cache()
    calls: list[int] = []

    def load() -> None:
        calls.append(1)

    async def body() -> None:
        assert await cache.get_or_set("k", load) is None
        assert await cache.get_or_set("k", load) is None

    run(body())
    assert calls == [1]


def test_cached_decorator_on_a_node_method() -> None:
    calls: list[tuple[Any, ...]] = []

    class Lookup(compose(NodeCompute, ["caching"])):  # type: ignore[misc]
        @cached(ttl=60)
        async def user(self, user_id: int, *, full: bool = False) -> dict[str, Any]:
            calls.append((user_id, full))
            await asyncio.sleep(0.001)
            return {"id": user_id, "full": full}

        @cached(key=lambda user_id: f"custom:{user_id}")
        async def other(self, user_id: int) -> int:
            calls.append(("other", user_id))
            return user_id

    node = Lookup()

    async def body() -> None:
        results = await asyncio.gather(*(node.user(1) for _ in range(20)))
        assert all(r == {"id": 1, "full": False} for r in results)
        assert await node.user(1, full=True) == {"id": 1, "full": True}
        assert await node.user(2) == {"id": 2, "full": False}
        assert await node.other(5) == 5
        assert await node.other(5) == 5
        assert await node.cache.contains("custom:5")

    run(body())
    assert calls == [(1, False), (1, True), (2, False), ("other", 5)]
    assert Lookup.user.__name__ == "user"


def test_cache_cached_decorator_on_a_function() -> None:
    cache = Cache()
    calls: list[int] = []

    @cache.cached(ttl=5)
    async def square(x: int) -> int:
        calls.append(x)
        return x * x

    async def body() -> None:
        assert await square(3) == 9
        assert await square(3) == 9
        assert await square(4) == 16

    run(body())
    assert calls == [3, 4]
    stats = cache.stats()
    assert stats["misses"]["l1"] == 2 and stats["hits"]["l1"] == 1  # a miss is counted once


def test_cached_rejects_sync_functions_with_a_clear_error() -> None:
    with pytest.raises(TypeError, match="async def"):
        @cached()
        def plain(self: Any) -> int:
            return 1

    with pytest.raises(TypeError, match="async def"):
        Cache().cached()(lambda: 1)


# -- event loops -------------------------------------------------------------------------------


def test_a_node_built_outside_a_loop_works_across_repeated_asyncio_run() -> None:
    node = compose(NodeCompute, ["caching"])()
    calls: list[int] = []

    async def load() -> int:
        calls.append(1)
        await asyncio.sleep(0)
        return 7

    for _ in range(3):
        assert asyncio.run(node.cache.get_or_set("k", load)) == 7
        asyncio.run(node.cache.set("x", 1))
        assert asyncio.run(node.cache.get("x")) == 1
    assert calls == [1]


def test_start_and_aclose_leave_no_task_behind() -> None:
    node = compose(NodeCompute, ["caching"])()

    async def body() -> None:
        async with node:
            await node.cache.set("k", 1)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert await node.cache.get("k") == 1  # closing keeps the memory cache usable

    run(body())


# -- process() guard ---------------------------------------------------------------------------


class Doubler(compose(NodeCompute, ["caching"])):  # type: ignore[misc]
    executions = 0

    async def process(self, input_data: Any) -> Any:
        type(self).executions += 1
        await asyncio.sleep(0.001)
        return {"doubled": [2 * x for x in input_data["values"]]}


class Effect(compose(NodeEffect, ["caching"])):  # type: ignore[misc]
    executions = 0

    async def process(self, input_data: Any) -> Any:
        type(self).executions += 1
        return "sent"


def test_process_is_not_memoised_by_default() -> None:
    Effect.executions = 0
    node = Effect()

    async def body() -> None:
        for _ in range(3):
            assert await node.process({"to": "x"}) == "sent"

    run(body())
    assert Effect.executions == 3
    assert "caching" in Effect.__onex_pipeline__


def test_wrap_process_memoises_through_the_pipeline() -> None:
    Doubler.executions = 0
    node = Doubler(capability_config={"caching": {"wrap_process": True, "default_ttl": 60}})

    async def body() -> None:
        a = await asyncio.gather(*(node.process({"values": [1, 2]}) for _ in range(10)))
        assert all(r == {"doubled": [2, 4]} for r in a)
        assert await node.process({"values": [2, 1]}) == {"doubled": [4, 2]}

    run(body())
    assert Doubler.executions == 2


def test_guard_hook_directly() -> None:
    node = Doubler(capability_config={"caching": {"wrap_process": True}})
    calls: list[Any] = []

    async def call(x: Any, *, extra: int = 0) -> Any:
        calls.append((x, extra))
        return x

    guarded = node._guard_caching(call)

    async def body() -> None:
        assert await guarded(1) == 1
        assert await guarded(1) == 1
        assert await guarded(1, extra=2) == 1
        node.setup_caching({"wrap_process": False})  # reconfigured: straight through now
        assert await guarded(1) == 1

    run(body())
    assert calls == [(1, 0), (1, 2), (1, 0)]


# -- cache keys --------------------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int
    y: int


@dataclasses.dataclass(frozen=True)
class Point3:
    x: int
    y: int
    z: int = 0


class Color(enum.Enum):
    RED = 1
    BLUE = 2


class Plain:
    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b


class Slotted:
    __slots__ = ("a",)

    def __init__(self, a: Any) -> None:
        self.a = a


Pair = namedtuple("Pair", "left right")


def test_key_equal_whatever_the_dict_order() -> None:
    a = {"b": 1, "a": {"y": [1, 2], "x": None}, "c": 1.5}
    b = {"c": 1.5, "a": {"x": None, "y": [1, 2]}, "b": 1}
    assert generate_cache_key(a) == generate_cache_key(b)
    assert generate_cache_key(OrderedDict(a)) == generate_cache_key(b)
    mixed_a = {1: "x", "1": "y", (2, 3): "z"}
    mixed_b = {(2, 3): "z", "1": "y", 1: "x"}
    assert generate_cache_key(mixed_a) == generate_cache_key(mixed_b)


@pytest.mark.parametrize(("left", "right"), [
    ({"a": 1}, {"a": 2}),
    ({"a": 1}, {"b": 1}),
    ({1: "a"}, {"1": "a"}),
    ([1, 2], (1, 2)),
    ([1, 2], [2, 1]),
    (1, "1"),
    (1, 1.0),
    (1, True),
    (0, False),
    (None, "null"),
    ("null", "\"null\""),
    ({1, 2}, [1, 2]),
    ({1, 2}, {1, 3}),
    (b"ab", "ab"),
    (b"ab", bytearray(b"ab") + b"c"),
    (Point(1, 2), Point(2, 1)),
    (Point(1, 2), {"x": 1, "y": 2}),
    (Point(1, 2), Point3(1, 2)),
    (Color.RED, 1),
    (Color.RED, Color.BLUE),
    (Plain(1, 2), Plain(2, 1)),
    (Slotted(1), Slotted(2)),
    (Pair(1, 2), (1, 2)),
    (dt.date(2024, 1, 1), "2024-01-01"),
    (decimal.Decimal("1.10"), decimal.Decimal("1.1")),
    ({"a": [1, {"b": {1}}]}, {"a": [1, {"b": {2}}]}),
    (float("inf"), float("-inf")),
])
def test_key_differs_for_different_data(left: Any, right: Any) -> None:
    assert generate_cache_key(left) != generate_cache_key(right)


@pytest.mark.parametrize("data", [
    {"set": {3, 1, 2}, "frozen": frozenset({"a", "b"})},
    b"\x00\xff bytes",
    bytearray(b"mutable"),
    Point(1, 2),
    Point3(1, 2, 3),
    Color.BLUE,
    Plain({"x": {1, 2}}, [b"q"]),
    Slotted({"k": 1}),
    Pair(left=1, right=(2, 3)),
    dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
    dt.timedelta(seconds=5),
    decimal.Decimal("3.14"),
    uuid.UUID("12345678123456781234567812345678"),
    Path("/tmp/x"),
    complex(1, 2),
    {"nan": float("nan"), "inf": float("inf")},
    {frozenset({1}): "frozen key", (1, "a"): "tuple key", 2: "int key"},
    CachingConfig(default_ttl=5),
    len,
])
def test_key_works_for_data_json_cannot_encode_and_is_repeatable(data: Any) -> None:
    key = generate_cache_key(data)
    assert len(key) == 32 and all(c in "0123456789abcdef" for c in key)
    assert generate_cache_key(data) == key
    assert generate_cache_key(pickle.loads(pickle.dumps(data))) == key


def test_equal_objects_built_separately_get_equal_keys() -> None:
    assert generate_cache_key(Plain(1, {2, 3})) == generate_cache_key(Plain(1, {3, 2}))
    assert generate_cache_key(Point(1, 2)) == generate_cache_key(Point(1, 2))
    assert generate_cache_key({"s": {1, 2, 3}}) == generate_cache_key({"s": {3, 2, 1}})


def test_key_is_the_same_in_another_process_with_another_hash_seed() -> None:
    data_code = ("{'s': {'a', 'b', 'c', 'd'}, 'f': frozenset({1, 2}), 'b': b'x', "
                 "'t': (1, 2.5), 'n': None, 1: [True]}")
    code = ("from onex_compose.capabilities.caching import generate_cache_key\n"
            f"print(generate_cache_key({data_code}))")
    keys = set()
    for seed in ("1", "2", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)
        keys.add(out.stdout.strip())
    assert keys == {generate_cache_key(eval(data_code))}  # noqa: S307 - our own literal


def test_flat_dict_fast_path_writes_what_the_general_walk_writes() -> None:
    from onex_compose.capabilities.caching import _canon

    data = {"b": True, "a": None, "é": "ü\n", "n": -3, "f": 1e16, "nan": float("nan")}
    out: list[str] = []
    _canon(data, out, set())
    assert canonical(data) == "".join(out)


def test_key_errors_are_clear() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(CacheKeyError, match="contains itself"):
        generate_cache_key(loop)
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(CacheKeyError, match="nested too deeply"):
        generate_cache_key(deep)


def test_the_mixin_method_is_the_module_function() -> None:
    node = compose(NodeCompute, ["caching"])()
    assert node.generate_cache_key({"a": 1}) == generate_cache_key({"a": 1})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=5), json_values, max_size=6), st.randoms())
def test_property_dict_order_never_changes_the_key(data: dict[str, Any], rnd: Any) -> None:
    items = list(data.items())
    rnd.shuffle(items)
    assert generate_cache_key(dict(items)) == generate_cache_key(data)


@settings(max_examples=300, deadline=None)
@given(json_values, json_values)
def test_property_equal_canonical_text_means_equal_data(a: Any, b: Any) -> None:
    if canonical(a) == canonical(b):
        assert a == b
    if a != b:
        assert generate_cache_key(a) != generate_cache_key(b)


# -- configuration, contract, pickling ---------------------------------------------------------


def test_unknown_config_keys_are_rejected_with_a_suggestion() -> None:
    Service = compose(NodeCompute, ["caching"])
    with pytest.raises(ConfigurationError, match="default_ttl"):
        Service(capability_config={"caching": {"default_tll": 5}})


@pytest.mark.parametrize(("config", "message"), [
    ({"backend": "memcached"}, "backend"),
    ({"max_entries": 0}, "max_entries"),
    ({"serializer": "yaml"}, "serializer"),
    ({"namespace": "has space"}, "whitespace"),
    ({"namespace": ""}, "namespace"),
])
def test_bad_config_values_say_what_is_wrong(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Cache(config)


@pytest.mark.parametrize("url", ["http://cache:6379/0", "127.0.0.1:6379", "redis://h:99999/0"])
def test_a_redis_url_that_is_not_one_is_a_setup_error(url: str) -> None:
    # it used to pass setup and then show as an L2 outage at first use
    with pytest.raises(ConfigurationError, match="redis_url must be a redis://"):
        Cache({"backend": "redis", "redis_url": url})


def test_the_redis_url_password_is_masked_in_the_message() -> None:
    with pytest.raises(ConfigurationError, match=r"got 'http://u:\*\*\*@cache/0'"):
        Cache({"backend": "redis", "redis_url": "http://u:s3cret@cache/0"})


@pytest.mark.parametrize(("ttl", "error", "message"), [
    ("10", TypeError, "got str '10'"),
    (True, TypeError, "got bool True"),
    (float("nan"), ValueError, "got NaN"),
])
def test_a_ttl_that_is_not_a_number_of_seconds_is_a_clear_error(ttl: Any, error: type,
                                                                message: str) -> None:
    cache = Cache()
    calls: list[int] = []

    async def load() -> int:
        calls.append(1)
        return 1

    async def run() -> None:
        with pytest.raises(error, match=f"ttl must be a number of seconds or None, {message}"):
            await cache.set("k", 1, ttl=ttl)
        with pytest.raises(error, match="ttl must be a number of seconds"):
            await cache.get_or_set("k", load, ttl=ttl)

    asyncio.run(run())
    assert calls == []  # refused before the loader ran
    with pytest.raises(error, match="ttl must be a number of seconds"):
        cache.cached(ttl=ttl)
    with pytest.raises(error, match="ttl must be a number of seconds"):
        cached(ttl=ttl)


def test_an_infinite_ttl_never_expires() -> None:
    clock = ManualClock()
    cache = Cache(clock=clock)
    asyncio.run(cache.set("k", 1, ttl=float("inf")))
    clock.advance(1e12)
    assert asyncio.run(cache.get("k")) == 1


def test_custom_serializer_that_cannot_be_imported_is_reported() -> None:
    with pytest.raises(CacheSerializationError, match="cannot be imported"):
        Cache({"backend": "redis", "serializer": "no_such_module_xyz:codec"})
    with pytest.raises(CacheSerializationError, match="dumps"):
        Cache({"backend": "redis", "serializer": "math:pi"})


def test_contract_defaults_equal_the_config_model() -> None:
    contract = yaml.safe_load((CONTRACT).read_text("utf-8"))
    assert contract["caching_config"] == CachingConfig().model_dump()
    assert contract["composition"]["guard_rank"] == 40
    names = {d["name"] for d in contract["requires_dependencies"] if not d.get("optional")}
    assert names == {"metrics"}


def test_contract_config_reaches_the_cache_through_the_node_contract() -> None:
    Service = compose(NodeCompute, ["caching"])
    node = Service({"subcontracts": {"caching": {"max_entries": 7, "namespace": "svc"}}})
    assert node.cache.config.max_entries == 7
    assert node.cache.config.namespace == "svc"


def test_a_node_pickles_and_its_cache_is_rebuilt_from_config() -> None:
    Service = compose(NodeCompute, ["caching"])
    node = Service(capability_config={"caching": {"max_entries": 9, "default_ttl": 5}})

    async def body() -> None:
        await node.cache.get_or_set("k", lambda: 1)

    run(body())
    clone = pickle.loads(pickle.dumps(node))
    assert clone.cache is not node.cache
    assert clone.cache.config == node.cache.config
    assert len(clone.cache) == 0  # contents are not carried: resources rebuilt from config
    assert run(clone.cache.get_or_set("k", lambda: 2)) == 2
    assert pickle.loads(pickle.dumps(node.cache)).config == node.cache.config


def test_setup_caching_reconfigures_and_keeps_an_injected_clock() -> None:
    node = compose(NodeCompute, ["caching"])()
    clock = ManualClock()
    node.cache.clock = clock
    node.setup_caching({"default_ttl": 10})
    assert node.cache.clock is clock
    run(node.cache.set("k", 1))
    clock.advance(11)
    assert run(node.cache.get("k", MISSING)) is MISSING


def test_facility_default_when_setup_never_ran() -> None:
    Service = compose(NodeCompute, ["caching"])
    node = _without_setup(Service)  # setup never ran: the node builds the defaults
    assert isinstance(node.cache, Cache)
    assert node.cache.config == CachingConfig()


def test_docstring_examples_run() -> None:
    import doctest
    import importlib
    import pkgutil

    import onex_compose.capabilities._codecs as codecs
    import onex_compose.capabilities.caching as package

    modules = [package, codecs, *(importlib.import_module(f"{package.__name__}.{m.name}")
                                  for m in pkgutil.iter_modules(package.__path__))]
    attempted = 0
    for module in modules:
        result = doctest.testmod(module,
                                 optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, module.__name__
        attempted += result.attempted
    assert attempted > 10


def test_with_health_check_the_cache_reports_in_the_nodes_health() -> None:
    node = compose(NodeCompute, ["caching", "health_check"])()
    report = run(node.health_check())
    assert report["checks"]["cache"]["status"] == "healthy"
    assert report["status"] == "healthy"
    plain = compose(NodeCompute, ["caching"])()
    assert not has_capability(plain, "health_check")  # nothing registered, nothing probed


def test_the_contract_passes_onex_validate(capsys: pytest.CaptureFixture[str]) -> None:
    from onex_compose._cli import main

    assert main(["validate", str(CONTRACT)]) == 0
    assert "✓ Action definitions complete" in capsys.readouterr().out


def _without_setup(cls):  # type: ignore[no-untyped-def]
    """An instance whose setup hooks never ran (a user _initialize_mixins that does nothing)."""

    class Bare(cls):  # type: ignore[misc, valid-type]
        def _initialize_mixins(self, contract=None, capability_config=None):  # type: ignore[no-untyped-def]
            return None

    return Bare()


def test_redis_backend_without_the_client_is_a_clear_setup_error(monkeypatch) -> None:
    import importlib.util

    from onex_compose import ConfigurationError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "redis" else real(name, *a))
    with pytest.raises(ConfigurationError, match=r"pip install 'onex-compose\[redis\]'"):
        compose(NodeCompute, ["caching"])(capability_config={"caching": {"backend": "redis"}})


def test_every_metric_the_module_records_is_declared_in_its_contract() -> None:
    import re

    import onex_compose.capabilities.caching as module

    source = "".join(p.read_text("utf-8") for p in Path(module.__file__).parent.glob("*.py"))
    recorded = set(re.findall(r'_inc\(\s*"([a-z_]+)"', source))
    contract = yaml.safe_load((CONTRACT).read_text("utf-8"))
    declared = {m["name"] for m in contract["metrics"]}
    assert recorded and recorded <= declared, sorted(recorded - declared)
