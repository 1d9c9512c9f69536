"""The service_registry capability on the real Redis: the key layout, atomic scripts (exactly
one ``offline`` per expiry however many sweep), the server clock with a 0.5 s TTL, two and more
processes (each discovers the other; a SIGKILLed one goes offline and exactly one ``offline``
change reaches three watcher processes), and an outage of a private redis-server (heartbeats
fail, health degrades, the entry comes back without a register() call).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
from helpers_procs import eventually, no_tasks_left
from helpers_registry_procs import RegistryProc
from loguru import logger

from onex_compose import NodeCompute, compose
from onex_compose.capabilities._context import ManualClock
from onex_compose.capabilities.service_registry import (
    RegistryChange,
    RegistryUnavailableError,
    ServiceRegistry,
)

pytestmark = pytest.mark.redis


class Pricer(compose(NodeCompute, ["service_registry", "caching", "health_check"])):  # type: ignore[misc]
    pass


@pytest.fixture
def cfg(redis_url: str, redis_prefix: str) -> dict[str, Any]:
    return {"backend": "redis", "redis_url": redis_url, "namespace": redis_prefix}


@pytest.fixture
def raw(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url, protocol=2, decode_responses=True)
    yield client
    client.close()


async def test_the_key_layout(cfg: dict[str, Any], raw: Any, redis_prefix: str) -> None:
    node = Pricer(node_id="p-1", capability_config={"service_registry": {
        **cfg, "instance_id": "pricer-a", "domain": "pricing", "metadata": {"zone": "eu"}}})
    pubsub = raw.pubsub()
    pubsub.subscribe(f"{redis_prefix}:registry:changes")
    pubsub.get_message(timeout=1)
    entry = await node.service_registry.register()
    h = raw.hgetall(f"{redis_prefix}:registry:node:pricer-a")
    assert (h["node_id"], h["instance_id"], h["status"]) == ("p-1", "pricer-a", "online")
    assert h["instance"] == node.service_registry.instance
    score = raw.zscore(f"{redis_prefix}:registry:expiry", "pricer-a")
    assert score == pytest.approx(float(h["expires_at"])) == pytest.approx(entry.expires_at)
    assert abs(entry.registered_at - time.time()) < 60          # the server's clock
    assert entry.expires_at == pytest.approx(entry.last_heartbeat + 15.0)
    assert raw.sismember(f"{redis_prefix}:registry:cap:caching", "pricer-a")
    assert raw.sismember(f"{redis_prefix}:registry:all", "pricer-a")
    msg = pubsub.get_message(timeout=5)
    assert msg is not None and msg["type"] == "message"
    assert '"registered"' in msg["data"] and "pricer-a" in msg["data"]
    pubsub.close()
    await node.aclose()
    assert raw.hget(f"{redis_prefix}:registry:node:pricer-a", "status") == "left"


async def test_many_concurrent_sweepers_publish_exactly_one_offline(cfg: dict[str, Any]) -> None:
    clock = ManualClock(5000.0)
    nodes = [Pricer(capability_config={"service_registry": {**cfg, "redis_clock": "client",
                                                            "ttl": 5}}) for _ in range(6)]
    for node in nodes:
        node.service_registry.clock = clock
    seen: list[RegistryChange] = []
    await nodes[0].service_registry.watch(seen.append)
    victim = nodes[-1].service_registry
    await victim.register()
    clock.advance(5)
    results = await asyncio.gather(*(n.service_registry.sweep() for n in nodes for _ in range(5)))
    offline = [c for changes in results for c in changes if c.kind == "offline"]
    assert [c.entry.instance_id for c in offline] == [victim.instance_id]
    assert await eventually(lambda: any(c.kind == "offline" for c in seen), 10)
    await nodes[0].service_registry.sweep()
    await asyncio.sleep(0.05)
    assert [c.kind for c in seen] == ["registered", "offline"]
    for node in nodes:
        await node.aclose()


async def test_server_clock_with_a_half_second_ttl(cfg: dict[str, Any]) -> None:
    # a heartbeats every 60 s: its 0.5 s TTL runs out first
    a = Pricer(capability_config={"service_registry": {**cfg, "ttl": 0.5,
                                                       "heartbeat_interval": 60}})
    b = Pricer(capability_config={"service_registry": {**cfg, "auto_register": False}})
    await a.service_registry.register()
    await b.service_registry.register()
    deadline = time.monotonic() + 30
    kinds: list[str] = []
    while time.monotonic() < deadline and "offline" not in kinds:
        kinds += [c.kind for c in await b.service_registry.sweep()]
        await asyncio.sleep(0.05)
    assert kinds == ["offline"]
    assert [e.instance_id for e in await b.service_registry.discover()] == [
        b.service_registry.instance_id]
    assert (await b.service_registry.get(a.service_registry.instance_id)).status == "offline"
    await a.service_registry.heartbeat()
    assert len(await b.service_registry.discover()) == 2
    await a.aclose()
    await b.aclose()


async def test_two_processes_discover_each_other_and_a_killed_one_goes_offline_once(
        redis_url: str, redis_prefix: str) -> None:
    ttl, interval = 3.0, 1.0
    victim = RegistryProc(redis_url, redis_prefix, "victim", str(ttl), str(interval))
    watchers = [RegistryProc(redis_url, redis_prefix, f"watcher-{i}", str(ttl), str(interval))
                for i in range(3)]
    procs = [victim, *watchers]
    try:
        async def ready_line(p: RegistryProc) -> Any:
            while True:          # change lines of the others' registrations may come first
                msg = await asyncio.to_thread(p.read, 60)
                if "ready" in msg:
                    return msg

        ready = [await ready_line(p) for p in procs]
        ids = [r["instance_id"] for r in ready]
        vid = ids[0]
        # each discovers the others (change lines may come first: skip them)
        for p in procs:
            async def entries(p: RegistryProc = p) -> list[str]:
                p.send("discover")
                while True:
                    msg = await asyncio.to_thread(p.read, 30)
                    if "entries" in msg:
                        return [e[0] for e in msg["entries"]]
            found: list[str] = []
            for _ in range(100):
                found = await entries()
                if set(ids) <= set(found):
                    break
                await asyncio.sleep(0.05)
            assert set(ids) <= set(found)
        victim.p.kill()                                   # SIGKILL: no deregistration
        killed_at = time.monotonic()
        victim.p.wait()
        offline_at: dict[int, float] = {}

        async def wait_offline(i: int, p: RegistryProc) -> None:
            while True:
                msg = await asyncio.to_thread(p.read, 60)
                if msg.get("change") == "offline" and msg.get("instance_id") == vid:
                    offline_at[i] = time.monotonic()
                    return

        await asyncio.wait_for(asyncio.gather(*(wait_offline(i, p)
                                                for i, p in enumerate(watchers))), 90)
        first = min(offline_at.values()) - killed_at
        # the last heartbeat was at most `interval` before the kill, so the entry expired
        # within ttl of it and one of three sweepers (every `interval`) saw it within interval;
        # 2 s of slack for five processes on two busy cores
        assert first <= ttl + interval + 2.0, first
        # more sweeps from every watcher, concurrently: nothing more to flip
        for p in watchers:
            p.send("sweep")
        for p in watchers:
            p.send(f"count offline {vid}")
        for p in watchers:
            while True:
                msg = await asyncio.to_thread(p.read, 30)
                if "count" in msg:
                    assert msg["count"] == 1, msg
                    break
        for p in watchers:
            p.send("quit")
            while True:
                msg = await asyncio.to_thread(p.read, 30)
                if "tasks" in msg:
                    assert msg["tasks"] == 0
                    break
    finally:
        for p in procs:
            if p.p.poll() is None:
                p.p.kill()
            p.close()


async def test_an_outage_degrades_health_and_the_entry_returns_without_register(
        private_redis: Any) -> None:
    messages: list[str] = []
    logger.enable("onex_compose")
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        cfg = {"backend": "redis", "redis_url": private_redis.url, "namespace": "fault",
               "ttl": 0.9, "redis_timeout": 0.5}
        node = Pricer(capability_config={"service_registry": cfg})
        other = Pricer(capability_config={"service_registry": {**cfg,
                                                               "auto_register": False}})
        reg = node.service_registry
        await node.start()
        assert (await other.service_registry.get(reg.instance_id)).status == "online"
        private_redis.stop()
        with pytest.raises(RegistryUnavailableError):
            await reg.heartbeat()
        with pytest.raises(RegistryUnavailableError) as info:
            await other.service_registry.discover()
        assert info.value.onex_retriable
        assert await eventually(lambda: reg.stats()["heartbeat_errors"] >= 3, 30)
        report = reg.health()
        assert report["status"] == "degraded" and "Redis unreachable" in report["reason"]
        assert "service_registry" in str(await node.health.check())
        outage_logs = [m for m in messages if "Redis is unreachable" in m
                       and reg.instance_id in m]
        assert len(outage_logs) == 1, outage_logs            # once per outage
        snap = node.metrics.snapshot()["counters"]
        assert snap['registry_heartbeats_total{outcome="error"}'] >= 3
        private_redis.start()                                 # empty: the entry is gone
        async def back() -> bool:
            try:
                found = await other.service_registry.discover()
            except RegistryUnavailableError:
                return False
            return [e.instance_id for e in found] == [reg.instance_id]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not await back():
            await asyncio.sleep(0.05)
        assert await back()                                   # nobody called register()
        assert await eventually(lambda: reg.health()["status"] == "healthy", 10)
        assert node.metrics.snapshot()["counters"][
            'registry_heartbeats_total{outcome="reregistered"}'] >= 1
        await node.aclose()
        await other.aclose()
        assert await no_tasks_left()
    finally:
        logger.remove(sink)
        logger.disable("onex_compose")


async def test_start_with_redis_down_does_not_fail(private_redis: Any) -> None:
    private_redis.stop()
    reg = ServiceRegistry({"backend": "redis", "redis_url": private_redis.url,
                           "namespace": "down", "ttl": 0.6, "redis_timeout": 0.3})
    await reg.start()
    assert reg.health()["status"] == "degraded"
    private_redis.start()
    assert await eventually(lambda: reg.health()["registered"], 30), reg.health()
    await reg.aclose()
    assert await no_tasks_left()
