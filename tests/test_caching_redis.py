"""The caching capability's Redis L2 against the real server: promotion, invalidation of every
process's L1 (two processes), the listener's lifecycle, outages (a private redis-server stopped
mid-test), pickling. Each test uses its own key prefix (``redis_prefix``), removed afterwards.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
from typing import Any

import pytest
import redis
from helpers_procs import Proc, eventually, no_tasks_left
from loguru import logger

from onex_compose import NodeCompute, compose
from onex_compose.capabilities._context import ManualClock
from onex_compose.capabilities.caching import (
    MISSING,
    Cache,
    CacheSerializationError,
)

pytestmark = pytest.mark.redis


@pytest.fixture
def cfg(redis_url: str, redis_prefix: str) -> dict[str, Any]:
    return {"backend": "redis", "redis_url": redis_url, "namespace": redis_prefix}


@pytest.fixture
def raw(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url, protocol=2)
    yield client
    client.close()


@pytest.fixture
def logs() -> Any:
    lines: list[str] = []
    logger.enable("onex_compose")
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO")
    yield lines
    logger.remove(sink)


# -- L1 + L2 -----------------------------------------------------------------------------------


async def test_l2_is_shared_and_hits_are_promoted_into_l1(cfg: dict[str, Any]) -> None:
    a, b = Cache(cfg), Cache(cfg)
    await a.set("k", {"v": [1, 2]}, ttl=100)
    assert await b.get("k") == {"v": [1, 2]}
    assert b.stats()["hits"] == {"l1": 0, "l2": 1}
    assert "k" in b.stats()["keys"]
    assert await b.get("k") == {"v": [1, 2]}
    assert b.stats()["hits"] == {"l1": 1, "l2": 1}
    assert await b.get("absent", MISSING) is MISSING
    assert b.stats()["misses"] == {"l1": 2, "l2": 1}
    await a.aclose()
    await b.aclose()


async def test_an_l1_hit_never_touches_l2(cfg: dict[str, Any], raw: Any) -> None:
    a, b = Cache(cfg), Cache(cfg)
    await a.set("k", "v")
    assert await b.get("k") == "v"  # promoted
    raw.delete(f"{cfg['namespace']}:cache:k")  # behind the cache's back: no invalidation sent
    assert await b.get("k") == "v"  # served by L1, Redis not asked
    assert await a.get("k") == "v"
    assert await Cache(cfg).get("k", MISSING) is MISSING  # a cold cache asks Redis: gone
    await a.aclose()
    await b.aclose()


async def test_promotion_keeps_the_remaining_l2_ttl(cfg: dict[str, Any], raw: Any) -> None:
    a = Cache(cfg)
    clock = ManualClock(50.0)
    b = Cache(cfg, clock=clock)
    await a.set("ttl", 1, ttl=100)
    await a.set("forever", 2)
    assert 99_000 < raw.pttl(f"{cfg['namespace']}:cache:ttl") <= 100_000
    assert raw.pttl(f"{cfg['namespace']}:cache:forever") == -1
    await b.get("ttl")
    await b.get("forever")
    assert 99.0 < b._data["ttl"][1] - clock() <= 100.0
    assert b._data["forever"][1] is None
    clock.advance(100.5)
    assert "ttl" not in b.stats()["keys"]  # expired in L1 with L2's deadline
    capped = Cache({**cfg, "l1_ttl": 5}, clock=clock)
    await capped.get("forever")
    assert capped._data["forever"][1] == pytest.approx(clock() + 5)
    for c in (a, b, capped):
        await c.aclose()


async def test_a_stored_none_and_falsy_values_survive_l2(cfg: dict[str, Any]) -> None:
    a, b = Cache(cfg), Cache(cfg)
    for key, value in (("none", None), ("zero", 0), ("empty", "")):
        await a.set(key, value)
        assert await b.get(key, MISSING) == value
        assert await b.contains(key)
    assert await b.get("absent", MISSING) is MISSING
    await a.aclose()
    await b.aclose()


async def test_ttl_at_or_below_zero_removes_the_key_in_l2_too(cfg: dict[str, Any],
                                                              raw: Any) -> None:
    a = Cache(cfg)
    await a.set("k", 1)
    await a.set("k", 2, ttl=0)
    assert raw.exists(f"{cfg['namespace']}:cache:k") == 0
    assert await Cache(cfg).get("k", MISSING) is MISSING
    await a.aclose()


async def test_an_infinite_or_huge_ttl_is_stored_without_expiry_not_an_outage(
        cfg: dict[str, Any], raw: Any) -> None:
    a = Cache(cfg)
    await a.set("inf", 1, ttl=float("inf"))  # int(inf * 1000) raised OverflowError
    await a.set("huge", 2, ttl=10**30)  # PX out of Redis' range: a ResponseError
    assert a.health()["status"] == "healthy", a.health()
    assert raw.pttl(f"{cfg['namespace']}:cache:inf") == -1
    assert raw.pttl(f"{cfg['namespace']}:cache:huge") == -1
    assert await Cache(cfg).get("huge") == 2
    await a.aclose()


async def test_single_flight_over_l2(cfg: dict[str, Any]) -> None:
    a = Cache(cfg)
    calls: list[int] = []

    async def load() -> str:
        calls.append(1)
        await asyncio.sleep(0.02)
        return "loaded"

    results = await asyncio.gather(*(a.get_or_set("sf", load, ttl=60) for _ in range(100)))
    assert set(results) == {"loaded"} and calls == [1]
    assert await Cache(cfg).get("sf") == "loaded"
    await a.aclose()


# -- invalidation ------------------------------------------------------------------------------


async def test_delete_set_and_clear_invalidate_other_caches_l1(cfg: dict[str, Any],
                                                               raw: Any) -> None:
    a, b = Cache(cfg), Cache(cfg)
    await a.set("k", 1)
    await a.set("j", 2)
    assert await b.get("k") == 1 and await b.get("j") == 2
    await a.delete("k")
    assert await eventually(lambda: "k" not in b._data)
    assert "j" in b._data
    assert await b.get("k", MISSING) is MISSING
    await a.set("j", 3)  # overwriting elsewhere drops the stale copy too
    assert await eventually(lambda: "j" not in b._data)
    assert await b.get("j") == 3
    raw.set("someone-else:cache:x", b"kept")  # another namespace is not touched by clear
    try:
        await a.clear()
        assert await eventually(lambda: len(b) == 0)
        assert list(raw.scan_iter(match=f"{cfg['namespace']}:cache:*")) == []
        assert raw.get("someone-else:cache:x") == b"kept"
    finally:
        raw.delete("someone-else:cache:x")
    assert b.health()["invalidations_received"] >= 3
    await a.aclose()
    await b.aclose()


async def test_the_listener_is_subscribed_before_the_first_write_returns(
        cfg: dict[str, Any], raw: Any) -> None:
    node = compose(NodeCompute, ["caching"])(capability_config={"caching": cfg})
    channel = f"{cfg['namespace']}:invalidate"
    assert raw.pubsub_numsub(channel) == [(channel.encode(), 0)]
    await node.cache.set("k", 1)  # never started: everything is lazy
    assert raw.pubsub_numsub(channel) == [(channel.encode(), 1)]
    await node.aclose()
    assert await no_tasks_left()
    assert await eventually(lambda: raw.pubsub_numsub(channel) == [(channel.encode(), 0)])


async def test_invalidation_reaches_another_process(cfg: dict[str, Any], redis_url: str) -> None:
    a = Cache(cfg)
    other = Proc("cache", redis_url, cfg["namespace"])
    try:
        assert await asyncio.to_thread(other.read) == {"ready": True}
        await a.set("k", {"v": 1})
        reply = await other.ask("get k")
        assert reply == {"value": {"v": 1}, "l1": ["k"]}  # promoted into the other L1
        await a.delete("k")
        assert await other.ask("wait-gone k 5") == {"gone": True}
        assert await other.ask("wait-inval 1 5") == {"invalidations": 1}
        assert (await other.ask("get k"))["value"] is None

        await a.set("k2", "old")
        # a set invalidates too; let that message land first, or it may (rightly) stop the
        # promotion of the value read concurrently
        assert await other.ask("wait-inval 2 5") == {"invalidations": 2}
        assert (await other.ask("get k2"))["l1"] == ["k2"]
        await a.set("k2", "new")
        assert await other.ask("wait-gone k2 5") == {"gone": True}
        assert (await other.ask("get k2"))["value"] == "new"

        assert await a.get("k2") == "new"
        assert await other.ask('set k2 "from-b"') == {"ok": True}  # and the other way round
        assert await eventually(lambda: "k2" not in a._data)
        assert await a.get("k2") == "from-b"

        await a.clear()
        assert await other.ask("wait-empty 5") == {"empty": True}
    finally:
        await asyncio.to_thread(other.close)
        await a.aclose()


def test_l1_is_dropped_when_a_new_loop_may_have_missed_invalidations(
        cfg: dict[str, Any]) -> None:
    node = compose(NodeCompute, ["caching"])(capability_config={"caching": cfg})
    writer = Cache(cfg)

    async def first() -> None:
        await writer.set("k", "v1")
        assert await node.cache.get("k") == "v1"
        await writer.aclose()

    async def meanwhile() -> None:  # node's listener is not running: this message is lost
        await writer.set("k", "v2")
        await writer.aclose()

    async def second() -> None:
        assert await node.cache.get("k") == "v2"  # not the stale v1 from L1
        await node.aclose()
        assert await no_tasks_left()

    asyncio.run(first())
    asyncio.run(meanwhile())
    asyncio.run(second())


# -- serializers -------------------------------------------------------------------------------


async def test_json_and_custom_serializers(cfg: dict[str, Any], raw: Any) -> None:
    j = Cache({**cfg, "serializer": "json"})
    await j.set("k", {"a": [1, None]})
    assert raw.get(f"{cfg['namespace']}:cache:k") == b'{"a":[1,null]}'
    assert await Cache({**cfg, "serializer": "json"}).get("k") == {"a": [1, None]}
    with pytest.raises(CacheSerializationError, match="json"):
        await j.set("bad", {1, 2})
    assert "bad" not in j._data  # nothing stored when the L2 cannot take it
    custom = Cache({**cfg, "serializer": "helpers_procs:JsonCodec"})
    await custom.set("c", [1, 2])
    assert raw.get(f"{cfg['namespace']}:cache:c") == b"J[1, 2]"
    assert await Cache({**cfg, "serializer": "helpers_procs:JsonCodec"}).get("c") == [1, 2]
    await j.aclose()
    await custom.aclose()


async def test_an_undecodable_l2_value_is_a_counted_miss(cfg: dict[str, Any], raw: Any,
                                                         logs: list[str]) -> None:
    raw.set(f"{cfg['namespace']}:cache:junk", b"not a pickle")
    node = compose(NodeCompute, ["caching"])(capability_config={"caching": cfg})
    assert await node.cache.get("junk", MISSING) is MISSING
    assert node.cache.health()["errors"] == 1
    counters = node.metrics.snapshot()["counters"]
    assert counters['cache_l2_errors_total{kind="decode"}'] == 1
    assert any("cannot decode" in line for line in logs)
    await node.aclose()


# -- lifecycle, pickling -----------------------------------------------------------------------


async def test_start_and_aclose_leave_no_task_behind(cfg: dict[str, Any]) -> None:
    node = compose(NodeCompute, ["caching"])(capability_config={"caching": cfg})
    async with node:
        assert node.cache.health()["listener"] is True
        await node.cache.set("k", 1)
        assert await node.cache.get("k") == 1
    assert await no_tasks_left()
    assert node.cache.health()["listener"] is False
    assert await node.cache.get("k") == 1  # still usable after close: reconnects lazily
    await node.aclose()
    await node.cache.aclose()
    assert await no_tasks_left()


async def test_a_node_with_a_started_redis_cache_pickles(cfg: dict[str, Any]) -> None:
    Service = compose(NodeCompute, ["caching"])
    node = Service(capability_config={"caching": {**cfg, "default_ttl": 60}})
    await node.start()
    await node.cache.set("k", {"x": 1})
    clone = pickle.loads(pickle.dumps(node))
    assert clone.cache is not node.cache and clone.cache.config == node.cache.config
    assert len(clone.cache) == 0
    assert await clone.cache.get("k") == {"x": 1}  # from the shared L2
    assert clone.cache.stats()["hits"]["l2"] == 1
    await node.cache.delete("k")
    assert await eventually(lambda: "k" not in clone.cache._data)
    await clone.aclose()
    await node.aclose()
    assert await no_tasks_left()


# -- outages -----------------------------------------------------------------------------------


async def test_redis_outage_degrades_to_l1_and_recovers(private_redis: Any,
                                                        logs: list[str]) -> None:
    clock = ManualClock()
    cfg = {"backend": "redis", "redis_url": private_redis.url, "namespace": "outage",
           "retry_interval": 5.0, "redis_timeout": 0.5}
    node = compose(NodeCompute, ["caching"])(capability_config={"caching": cfg})
    node.cache.clock = clock
    cache = node.cache
    await cache.set("before", 1)
    assert await cache.get("before") == 1
    assert cache.health()["status"] == "healthy"

    private_redis.stop()
    await cache.set("during", 2)                       # no error: L1 only
    assert await cache.get("during") == 2
    assert await cache.get("absent", MISSING) is MISSING
    assert await cache.delete("nothing") is False
    report = cache.health()
    assert report["status"] == "degraded" and report["l2"] == "down"
    assert "Redis L2 unavailable" in report["reason"]
    errors = report["errors"]
    assert errors >= 1
    for _ in range(20):                                # inside retry_interval: not even tried
        assert await cache.get("during") == 2
        await cache.get("absent")
    assert cache.health()["errors"] == errors
    assert cache.health()["skipped"] > 0
    clock.advance(6)
    await cache.get("absent")                          # tried again, still down
    assert cache.health()["errors"] == errors + 1
    warnings = [line for line in logs if "unavailable" in line]
    assert len(warnings) == 1                          # logged once per outage
    counters = node.metrics.snapshot()["counters"]
    assert counters['cache_l2_errors_total{kind="unavailable"}'] == errors + 1

    private_redis.start()                              # same port
    assert await cache.get("during") == 2              # still in back-off: L1 answers
    clock.advance(6)
    await cache.set("after", 3)                        # reconnects; L2 works again
    assert cache.health()["status"] == "healthy"
    check = redis.Redis.from_url(private_redis.url)
    try:
        assert check.exists("outage:cache:after") == 1
    finally:
        check.close()
    other = Cache(cfg)
    assert await other.get("after") == 3
    await other.delete("after")
    assert await eventually(lambda: "after" not in cache._data)  # invalidations flow again
    assert any("is back" in line for line in logs)
    await other.aclose()
    await node.aclose()
    assert await no_tasks_left()


async def test_redis_down_from_the_start_still_serves_l1(logs: list[str]) -> None:
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    node = compose(NodeCompute, ["caching"])(capability_config={"caching": {
        "backend": "redis", "redis_url": url, "namespace": "nowhere", "redis_timeout": 0.2}})
    await node.start()                                  # does not fail
    assert node.cache.health()["status"] == "degraded"
    assert await node.cache.get_or_set("k", lambda: 41) == 41
    assert await node.cache.get("k") == 41
    assert "unavailable" in node.cache.health()["reason"]
    assert sum("unavailable" in line for line in logs) == 1
    await node.aclose()
    assert await no_tasks_left()


async def test_a_redis_outage_shows_as_degraded_in_the_nodes_health(private_redis: Any) -> None:
    node = compose(NodeCompute, ["caching", "health_check"])(capability_config={"caching": {
        "backend": "redis", "redis_url": private_redis.url, "namespace": "h",
        "redis_timeout": 0.5}})
    await node.cache.set("k", 1)
    assert (await node.health_check())["checks"]["cache"]["status"] == "healthy"
    private_redis.stop()
    await node.cache.set("k", 2)
    report = await node.health_check()
    assert report["status"] == "degraded"
    assert "Redis L2 unavailable" in report["checks"]["cache"]["reason"]
    assert node.is_healthy()  # degraded still serves
    assert await node.cache.get("k") == 2
    await node.aclose()


@pytest.mark.slow
async def test_the_listener_resubscribes_by_itself_after_an_outage(private_redis: Any) -> None:
    """No cache call after the restart: the cache resubscribes on its own (with back-off), drops
    the L1 that may have missed invalidations, and hears the next invalidation."""
    cfg = {"backend": "redis", "redis_url": private_redis.url, "namespace": "resub",
           "retry_interval": 0.2, "redis_timeout": 0.5}
    node = compose(NodeCompute, ["caching"])(capability_config={"caching": cfg})
    cache = node.cache
    await cache.set("k", "v1")
    assert cache.health()["listener"] is True
    private_redis.stop()
    assert await eventually(lambda: not cache.health()["listener"], 10)
    await asyncio.sleep(0.3)                      # a few failed attempts while it is down
    private_redis.start()
    assert await eventually(lambda: cache.health()["listener"], 15)  # no cache call needed
    assert "k" not in cache._data                 # L1 that may have missed invalidations
    writer = Cache(cfg)
    await writer.set("k", "v2")
    assert await cache.get("k") == "v2"           # promoted again into L1
    await writer.delete("k")
    assert await eventually(lambda: "k" not in cache._data, 10)  # invalidations flow again
    await writer.aclose()
    await node.aclose()
    assert await no_tasks_left()


@pytest.mark.slow
async def test_another_process_resubscribes_by_itself_after_an_outage(private_redis: Any) -> None:
    """Two processes: the helper's cache is not touched between the restart and the
    invalidation; its listener comes back by itself and drops its stale L1."""
    cfg = {"backend": "redis", "redis_url": private_redis.url, "namespace": "resub2"}
    channel = b"resub2:invalidate"
    check = redis.Redis.from_url(private_redis.url)
    a = Cache(cfg)
    other = Proc("cache", private_redis.url, "resub2")
    try:
        assert await asyncio.to_thread(other.read) == {"ready": True}
        await a.set("k", "v1")
        assert (await other.ask("get k"))["l1"] == ["k"]
        await a.aclose()                      # only the other process listens from here on

        private_redis.stop()
        private_redis.start()                 # an empty server: what it held is gone

        def resubscribed() -> bool:
            try:
                return bool(check.pubsub_numsub(channel) == [(channel, 1)])
            except redis.ConnectionError:
                return False

        assert await eventually(resubscribed, 20)
        assert await other.ask("l1") == {"l1": []}  # dropped: invalidations were missed
        await a.set("k", "v2")
        # the set's own invalidation must land first, or it (rightly) stops the promotion
        assert await other.ask("wait-inval 1 10") == {"invalidations": 1}
        reply = await other.ask("get k")
        assert reply == {"value": "v2", "l1": ["k"]}
        await a.delete("k")
        assert await other.ask("wait-gone k 10") == {"gone": True}
    finally:
        await asyncio.to_thread(other.close)
        await a.aclose()
        check.close()


# -- loads in flight, serializer default ---------------------------------------------------------


async def test_a_delete_in_another_cache_during_a_load_wins_in_both_levels(
        cfg: dict[str, Any], raw: Any) -> None:
    a, b = Cache(cfg), Cache(cfg)
    await a.set("k", "older")
    await b.get("k")
    started, release = asyncio.Event(), asyncio.Event()

    async def loader() -> str:
        started.set()
        await release.wait()
        return "loaded-before-the-delete"

    await a.delete("k")                           # a miss in a from here on
    task = asyncio.create_task(a.get_or_set("k", loader, ttl=60))
    await asyncio.wait_for(started.wait(), 10)
    before = a.health()["invalidations_received"]
    await b.delete("k")                           # another instance deletes meanwhile
    assert await eventually(lambda: a.health()["invalidations_received"] > before, 10)
    release.set()
    assert await asyncio.wait_for(task, 10) == "loaded-before-the-delete"
    assert "k" not in a._data                      # not in L1 ...
    assert raw.exists(f"{cfg['namespace']}:cache:k") == 0  # ... nor in Redis for every process
    assert await Cache(cfg).get("k", MISSING) is MISSING
    await a.aclose()
    await b.aclose()


async def test_the_l2_serializer_defaults_to_json(cfg: dict[str, Any], raw: Any) -> None:
    a = Cache(cfg)
    await a.set("k", {"a": 1})
    assert raw.get(f"{cfg['namespace']}:cache:k") == b'{"a":1}'
    with pytest.raises(CacheSerializationError, match="json"):
        await a.set("set", {1, 2})                # pickle is opt-in now
    p = Cache({**cfg, "serializer": "pickle"})
    await p.set("set", {1, 2})
    assert await Cache({**cfg, "serializer": "pickle"}).get("set") == {1, 2}
    await a.aclose()
    await p.aclose()


async def test_an_entry_pickled_by_an_older_version_reads_as_a_miss(
        cfg: dict[str, Any], raw: Any, logs: list[str]) -> None:
    raw.set(f"{cfg['namespace']}:cache:old", pickle.dumps({"v": 1}, protocol=5))
    raw.set(f"{cfg['namespace']}:cache:old2", pickle.dumps([1], protocol=4))
    node = compose(NodeCompute, ["caching"])(capability_config={"caching": cfg})
    assert await node.cache.get("old", MISSING) is MISSING   # a miss, never an error
    assert await node.cache.get("old2", "dflt") == "dflt"
    assert await node.cache.get_or_set("old", lambda: {"v": 2}) == {"v": 2}  # rewritten
    assert raw.get(f"{cfg['namespace']}:cache:old") == b'{"v":2}'
    assert sum("written with pickle" in line for line in logs) == 1
    await node.aclose()


def test_a_sync_process_on_a_redis_cache_is_memoised_in_l1_only(cfg: dict[str, Any],
                                                                raw: Any) -> None:
    class Double(NodeCompute):
        def process(self, x: int) -> int:
            return x * 2

    node = compose(Double, ["caching"])(capability_config={"caching": {
        **cfg, "wrap_process": True, "l1_ttl": 30}})
    assert node.process(4) == 8 and node.process(4) == 8   # sync, no event loop
    assert node.cache.stats()["hits"]["l1"] == 1
    assert list(raw.scan_iter(match=f"{cfg['namespace']}:cache:*")) == []  # Redis untouched
    assert node.cache._listener is None
