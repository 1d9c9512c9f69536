"""Caching: what a load in flight may store (an invalidation during it wins), the fail-safe
fallback (``fail_safe_ttl``), and the sync ``process()`` guard. Memory backend here; the Redis
variants are in ``test_caching_redis.py``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from loguru import logger

from onex_compose import CompositionError, NodeCompute, NodeEffect, compose
from onex_compose.capabilities._context import ManualClock
from onex_compose.capabilities.caching import MISSING, Cache, CachingConfig


@pytest.fixture
def logs() -> Any:
    lines: list[str] = []
    logger.enable("onex_compose")
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO")
    yield lines
    logger.remove(sink)


async def _slow_load_with(cache: Cache, during: Any, key: str = "k") -> Any:
    """get_or_set(key) with a loader that waits while ``during()`` runs, then returns 'old'."""
    started, release = asyncio.Event(), asyncio.Event()

    async def loader() -> str:
        started.set()
        await release.wait()
        return "old"

    task = asyncio.create_task(cache.get_or_set(key, loader, ttl=60))
    await asyncio.wait_for(started.wait(), 10)
    await during()
    release.set()
    return await asyncio.wait_for(task, 10)


async def test_a_delete_during_a_load_wins() -> None:
    cache = Cache()
    await cache.set("k", "older")

    async def delete() -> None:
        await cache.delete("k")

    cache2 = Cache()
    assert await _slow_load_with(cache2, lambda: cache2.delete("k")) == "old"  # the caller
    assert await cache2.get("k", MISSING) is MISSING  # ... but nothing stored for 60 s
    assert await _slow_load_with(cache, delete, key="j") == "old"
    assert await cache.get("j") == "old"  # another key's delete does not stop this store


async def test_a_set_or_clear_during_a_load_wins() -> None:
    cache = Cache()

    async def newer() -> None:
        await cache.set("k", "new")

    assert await _slow_load_with(cache, newer) == "old"
    assert await cache.get("k") == "new"          # not replaced by the older load
    assert await _slow_load_with(cache, cache.clear, key="c") == "old"
    assert await cache.get("c", MISSING) is MISSING
    # and with no invalidation, a load stores as before
    assert await cache.get_or_set("plain", lambda: 1) == 1
    assert await cache.get("plain") == 1
    assert cache._loading == {}


async def test_waiters_of_an_invalidated_load_get_its_value_and_the_next_call_reloads() -> None:
    cache = Cache()
    calls: list[int] = []
    release = asyncio.Event()

    async def loader() -> int:
        calls.append(1)
        await release.wait()
        return len(calls)

    tasks = [asyncio.create_task(cache.get_or_set("k", loader)) for _ in range(5)]
    while not calls:
        await asyncio.sleep(0)
    await cache.delete("k")
    release.set()
    assert [await t for t in tasks] == [1] * 5    # single-flight still holds
    assert await cache.get_or_set("k", loader) == 2  # nothing was stored: a new load


# -- fail-safe ---------------------------------------------------------------------------------


async def test_fail_safe_serves_the_expired_value_when_the_loader_raises(
        logs: list[str]) -> None:
    clock = ManualClock()
    node = compose(NodeCompute, ["caching"])(
        capability_config={"caching": {"default_ttl": 10, "fail_safe_ttl": 60}})
    cache = node.cache
    cache.clock = clock

    def failing() -> Any:
        raise ConnectionError("db down")

    assert await cache.get_or_set("price", lambda: 42) == 42
    clock.advance(11)                                   # expired ...
    assert await cache.get("price", MISSING) is MISSING  # ... a plain read misses
    for _ in range(3):
        assert await cache.get_or_set("price", failing) == 42  # ... the loader's error: stale
    counters = node.metrics.snapshot()["counters"]
    assert counters["cache_fail_safe_total"] == 3
    assert cache.stats()["fail_safe"]["served"] == 3
    assert sum("fail-safe" in line for line in logs) == 1  # logged once per key and outage
    assert await cache.get_or_set("price", lambda: 43) == 43  # recovered: a fresh value
    clock.advance(11)
    assert await cache.get_or_set("price", failing) == 43
    assert sum("fail-safe" in line for line in logs) == 2  # a new outage is logged again
    clock.advance(61)                                   # past fail_safe_ttl: the error again
    with pytest.raises(ConnectionError, match="db down"):
        await cache.get_or_set("price", failing)


async def test_fail_safe_never_resurrects_an_invalidated_value_and_is_off_by_default() -> None:
    clock = ManualClock()
    cache = Cache({"default_ttl": 10, "fail_safe_ttl": 60}, clock=clock)

    async def failing() -> Any:
        raise ConnectionError("down")

    await cache.set("k", 1)
    await cache.set("c", 2)
    clock.advance(11)
    assert cache.purge_expired() == 2 and cache.stats()["fail_safe"]["stale_entries"] == 2
    await cache.delete("k")
    with pytest.raises(ConnectionError):
        await cache.get_or_set("k", failing)
    await cache.clear()
    with pytest.raises(ConnectionError):
        await cache.get_or_set("c", failing)
    plain = Cache({"default_ttl": 10}, clock=clock)
    await plain.set("k", 1)
    clock.advance(11)
    with pytest.raises(ConnectionError):
        await plain.get_or_set("k", failing)
    assert CachingConfig().fail_safe_ttl is None
    with pytest.raises(ValueError):
        CachingConfig(fail_safe_ttl=0)


async def test_fail_safe_stale_entries_are_bounded_by_max_entries() -> None:
    clock = ManualClock()
    cache = Cache({"default_ttl": 1, "fail_safe_ttl": 60, "max_entries": 3}, clock=clock)
    for i in range(10):
        await cache.set(f"k{i}", i)
        clock.advance(2)
        assert await cache.get(f"k{i}", MISSING) is MISSING
    assert len(cache._stale) == 3


# -- the sync process() guard ------------------------------------------------------------------


class SyncDouble(NodeCompute):
    calls = 0

    def process(self, x: int) -> int:
        SyncDouble.calls += 1
        return x * 2


def test_a_sync_process_stays_sync_and_is_memoised_in_l1() -> None:
    Service = compose(SyncDouble, ["caching"])
    node = Service(capability_config={"caching": {"wrap_process": True, "default_ttl": 60}})
    SyncDouble.calls = 0
    assert node.process(2) == 4                  # a value, not a coroutine; no event loop
    assert node.process(2) == 4
    assert node.process(3) == 6
    assert SyncDouble.calls == 2
    stats = node.cache.stats()
    assert stats["loads"] == 2 and stats["hits"]["l1"] == 1


def test_the_sync_guard_follows_wrap_process_off_by_default() -> None:
    Service = compose(SyncDouble, ["caching"])
    node = Service()
    SyncDouble.calls = 0
    assert node.process(2) == 4 and node.process(2) == 4
    assert SyncDouble.calls == 2                 # not memoised: wrap_process is off
    assert node.cache.stats()["loads"] == 0


def test_the_sync_guard_serves_fail_safe_values_and_never_caches_errors() -> None:
    clock = ManualClock()

    class Flaky(NodeCompute):
        fail = False

        def process(self, x: int) -> int:
            if Flaky.fail:
                raise ConnectionError("down")
            return x + 1

    node = compose(Flaky, ["caching"])(capability_config={"caching": {
        "wrap_process": True, "default_ttl": 5, "fail_safe_ttl": 30}})
    node.cache.clock = clock
    assert node.process(1) == 2
    Flaky.fail = True
    assert node.process(1) == 2                  # still fresh
    clock.advance(6)
    assert node.process(1) == 2                  # expired, the body raised: the stale value
    with pytest.raises(ConnectionError):
        node.process(7)                          # nothing stale for this input


def test_a_sync_process_of_an_effect_node_composes_with_caching() -> None:
    class Effect(NodeEffect):
        def process(self, x: int) -> int:
            return x

    try:
        node = compose(Effect, ["caching"])()
    except CompositionError as exc:  # pragma: no cover - the failure this test guards against
        pytest.fail(f"caching has a sync path: {exc}")
    assert node.process(5) == 5
