"""The event_bus capability on Redis pub/sub against the real server: delivery between buses and
between two processes, order, wildcards, unsubscription on the server, serializers, outages (a
private redis-server stopped mid-test), close and pickling. Each test has its own namespace.
"""

from __future__ import annotations

import asyncio
import pickle
from typing import Any

import pytest
import redis
from helpers_procs import Proc, eventually, no_tasks_left
from loguru import logger

from onex_compose import NodeCompute, compose
from onex_compose.capabilities import _context
from onex_compose.capabilities.event_bus import (
    Event,
    EventBus,
    EventBusError,
    EventPublishError,
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


def numsub(raw: Any, channel: str) -> int:
    return int(raw.pubsub_numsub(channel)[0][1])


async def test_events_travel_between_buses_with_their_envelope(cfg: dict[str, Any]) -> None:
    pub = EventBus(cfg, source="publisher-1")
    sub_bus = EventBus(cfg, source="subscriber")
    got: list[Event] = []
    sub = await sub_bus.subscribe("computation_completed", got.append)
    assert sub.active
    token = _context.correlation_id.set("corr-9")
    try:
        sent = await pub.publish("computation_completed", {"input": [1, 2], "result": 3})
    finally:
        _context.correlation_id.reset(token)
    assert await eventually(lambda: len(got) == 1)
    event = got[0]
    assert event == sent
    assert event.source == "publisher-1" and event.correlation_id == "corr-9"
    assert event.payload == {"input": [1, 2], "result": 3}
    await pub.aclose()
    await sub_bus.aclose()
    assert await no_tasks_left()


async def test_order_per_topic_is_kept_and_failures_are_isolated(cfg: dict[str, Any]) -> None:
    bus = EventBus(cfg)
    ordered: list[int] = []
    failing_seen: list[int] = []

    async def slow(event: Event) -> None:
        await asyncio.sleep(0.0005 * (event.payload % 3))
        ordered.append(event.payload)

    def failing(event: Event) -> None:
        failing_seen.append(event.payload)
        raise ValueError("handler failure")

    await bus.subscribe("seq", slow)
    await bus.subscribe("seq", failing)
    for i in range(200):
        await bus.publish("seq", i)
    assert await eventually(lambda: len(ordered) == 200 and len(failing_seen) == 200, 10)
    assert ordered == list(range(200)) == failing_seen
    assert bus.stats()["handler_errors"] == 200
    await bus.aclose()


async def test_wildcards_and_exact_topics_each_receive_once(cfg: dict[str, Any]) -> None:
    bus = EventBus(cfg)
    got: dict[str, list[str]] = {"orders.*": [], "orders.created": [], "*": [], "orders.>": [],
                                 ">": [], "*.*.paid": []}
    for topic in got:
        await bus.subscribe(topic, lambda e, t=topic: got[t].append(e.topic))
    other = EventBus(cfg)
    published = ("orders.created", "orders.eu.paid", "users.new", "orders")
    for topic in published:
        await other.publish(topic, None)
    assert await eventually(lambda: len(got[">"]) == 4)
    await asyncio.sleep(0.05)  # would a duplicate (or a glob-only match) arrive?
    # the token rules, not Redis globs (where '*' also matches 'eu.paid')
    assert got == {"orders.*": ["orders.created"],
                   "orders.created": ["orders.created"],
                   "*": ["orders"],
                   "orders.>": ["orders.created", "orders.eu.paid"],
                   ">": list(published),
                   "*.*.paid": ["orders.eu.paid"]}
    await bus.aclose()
    await other.aclose()


async def test_special_characters_in_topics_are_not_globs(cfg: dict[str, Any]) -> None:
    bus = EventBus(cfg)
    got: list[str] = []
    await bus.subscribe("a[1]?.*", lambda e: got.append(e.topic))
    for topic in ("a[1]?.x", "a1.x", "a[1]?.x.y", "a[1]?.y"):
        await bus.publish(topic, None)
    assert await eventually(lambda: len(got) == 2)
    await asyncio.sleep(0.05)
    assert got == ["a[1]?.x", "a[1]?.y"]
    await bus.aclose()


async def test_unsubscribe_reaches_the_server(cfg: dict[str, Any], raw: Any) -> None:
    bus = EventBus(cfg)
    channel = f"{cfg['namespace']}:events:t"
    s1 = await bus.subscribe("t", lambda e: None)
    s2 = await bus.subscribe("t", lambda e: None)
    assert numsub(raw, channel) == 1  # one server subscription for both handlers
    s1.unsubscribe()
    await asyncio.sleep(0.05)
    assert numsub(raw, channel) == 1
    s2.unsubscribe()
    assert await eventually(lambda: numsub(raw, channel) == 0)
    await bus.aclose()
    assert await no_tasks_left()


async def test_serializers(cfg: dict[str, Any]) -> None:
    bus = EventBus(cfg)
    with pytest.raises(EventBusError, match="serializer"):
        await bus.publish("t", {1, 2})  # JSON cannot carry a set
    pickled = EventBus({**cfg, "serializer": "pickle"})
    custom = EventBus({**cfg, "serializer": "helpers_procs:JsonCodec"})
    got: list[Any] = []
    await pickled.subscribe("p", lambda e: got.append(e.payload))
    await custom.subscribe("c", lambda e: got.append(e.payload))
    await pickled.publish("p", {1, 2})
    await custom.publish("c", ["x"])
    assert await eventually(lambda: len(got) == 2)
    assert {1, 2} in got and ["x"] in got
    for b in (bus, pickled, custom):
        await b.aclose()


async def test_undecodable_messages_are_dropped_and_counted(cfg: dict[str, Any], raw: Any,
                                                            logs: list[str]) -> None:
    bus = EventBus(cfg)
    got: list[Event] = []
    await bus.subscribe("t", got.append)
    raw.publish(f"{cfg['namespace']}:events:t", b"\x00 not json")
    await bus.publish("t", "fine")
    assert await eventually(lambda: len(got) == 1)
    assert bus.stats()["decode_errors"] == 1
    assert any("undecodable" in line for line in logs)
    await bus.aclose()


async def test_events_reach_another_process(cfg: dict[str, Any], redis_url: str) -> None:
    node = compose(NodeCompute, ["event_bus"])(capability_config={"event_bus": cfg},
                                                node_id="writer-node")
    other = Proc("events", redis_url, cfg["namespace"], "orders.*", "orders.created")
    try:
        assert await asyncio.to_thread(other.read) == {"ready": True}
        token = _context.correlation_id.set("request-1")
        try:
            sent = [await node.event_bus.publish("orders.created", {"n": i}) for i in range(50)]
        finally:
            _context.correlation_id.reset(token)
        await node.event_bus.publish("users.created", {"n": -1})  # matches nothing there
        await node.event_bus.publish("orders.eu.paid", {"n": -2})  # '*' is one token: neither
        lines = [await asyncio.to_thread(other.read) for _ in range(100)]
        by_sub: dict[str, list[dict[str, Any]]] = {"orders.*": [], "orders.created": []}
        for line in lines:
            by_sub[line["sub"]].append(line["event"])
        for events in by_sub.values():
            assert [e["payload"]["n"] for e in events] == list(range(50))  # in order
            assert [e["id"] for e in events] == [e.id for e in sent]
            assert {e["source"] for e in events} == {"writer-node"}
            assert {e["correlation_id"] for e in events} == {"request-1"}
        other.send("quit")
        assert await asyncio.to_thread(other.read) == {"tasks": 0}
    finally:
        await asyncio.to_thread(other.close)
        await node.aclose()


async def test_publish_to_an_unreachable_redis_raises_a_retriable_error(
        private_redis: Any) -> None:
    node = compose(NodeCompute, ["event_bus"])(capability_config={"event_bus": {
        "backend": "redis", "redis_url": private_redis.url, "namespace": "down",
        "redis_timeout": 0.5}})
    await node.event_bus.publish("t", 1)
    private_redis.stop()
    with pytest.raises(EventPublishError, match="not published") as info:
        await node.event_bus.publish("t", 2)
    assert info.value.onex_retriable is True
    health = node.event_bus.health()
    assert health["status"] == "degraded" and "not publishing" in health["reason"]
    assert node.metrics.snapshot()["counters"]["event_bus_publish_errors_total"] == 1
    private_redis.start()
    await node.event_bus.publish("t", 3)
    assert node.event_bus.health()["status"] == "healthy"
    await node.aclose()
    assert await no_tasks_left()


async def test_a_subscriber_resubscribes_after_an_outage(private_redis: Any,
                                                         logs: list[str]) -> None:
    cfg = {"backend": "redis", "redis_url": private_redis.url, "namespace": "outage",
           "reconnect_interval": 0.05, "redis_timeout": 0.5}
    subscriber = EventBus(cfg)
    publisher = EventBus(cfg)
    got: list[int] = []
    await subscriber.subscribe("t", lambda e: got.append(e.payload))
    await publisher.publish("t", 1)
    assert await eventually(lambda: got == [1])
    private_redis.stop()
    assert await eventually(lambda: subscriber.health()["status"] == "degraded")
    assert "not receiving" in subscriber.health()["reason"]
    private_redis.start()
    assert await eventually(lambda: subscriber.health()["status"] == "healthy")
    assert subscriber.health()["listener"] is True
    await publisher.publish("t", 2)
    assert await eventually(lambda: got == [1, 2])
    assert sum("not subscribed on Redis" in line for line in logs) == 1
    await subscriber.aclose()
    await publisher.aclose()
    assert await no_tasks_left()


async def test_start_subscribes_sync_registrations_and_close_leaves_nothing(
        cfg: dict[str, Any], raw: Any) -> None:
    node = compose(NodeCompute, ["event_bus"])(capability_config={"event_bus": cfg})
    got: list[Any] = []
    node.event_bus.subscribe("t", lambda e: got.append(e.payload))
    channel = f"{cfg['namespace']}:events:t"
    async with node:
        assert numsub(raw, channel) == 1
        await EventBus(cfg).publish("t", "hello")
        assert await eventually(lambda: got == ["hello"])
    assert await no_tasks_left()
    assert await eventually(lambda: numsub(raw, channel) == 0)


def test_subscriptions_made_outside_a_loop_work_across_repeated_asyncio_run(
        cfg: dict[str, Any]) -> None:
    node = compose(NodeCompute, ["event_bus"])(capability_config={"event_bus": cfg})
    got: list[int] = []
    node.event_bus.subscribe("t", lambda e: got.append(e.payload))  # no loop yet

    async def once(i: int) -> None:
        await node.event_bus.start()
        publisher = EventBus(cfg)
        await publisher.publish("t", i)
        await publisher.aclose()
        assert await eventually(lambda: got[-1:] == [i])

    for i in range(3):
        asyncio.run(once(i))
    assert got == [0, 1, 2]
    asyncio.run(node.aclose())


async def test_a_node_with_a_started_redis_bus_pickles(cfg: dict[str, Any]) -> None:
    Service = compose(NodeCompute, ["event_bus"])
    node = Service(capability_config={"event_bus": cfg}, node_id="orig")
    got: list[Any] = []
    await node.event_bus.subscribe("t", got.append)
    await node.start()
    clone = pickle.loads(pickle.dumps(node))
    assert clone.event_bus.config == node.event_bus.config
    assert clone.node_id == "orig" and clone.event_bus.subscriptions == []
    await clone.event_bus.publish("t", "from the clone")
    assert await eventually(lambda: [e.payload for e in got] == ["from the clone"])
    await clone.aclose()
    await node.aclose()
    assert await no_tasks_left()


async def test_seed_robust_service_shares_cache_and_events_through_redis(
        redis_url: str, redis_prefix: str) -> None:
    from onex_compose import NodeComputeService
    from onex_compose.mixin import (
        MixinCaching,
        MixinEventBus,
        MixinHealthCheck,
        MixinMetrics,
        MixinRetry,
    )

    class RobustComputeService(NodeComputeService, MixinHealthCheck, MixinMetrics,
                               MixinCaching, MixinEventBus, MixinRetry):
        executions = 0

        async def compute(self, input_data: Any) -> Any:
            with self.metrics.timer("compute_duration"):
                cache_key = self.generate_cache_key(input_data)
                cached_result = await self.cache.get(cache_key)
                if cached_result:
                    self.metrics.increment("cache_hits")
                    return cached_result
                result = await self.with_retry(self._execute_computation, input_data,
                                               max_attempts=3)
                await self.cache.set(cache_key, result, ttl=3600)
                await self.event_bus.publish("computation_completed",
                                             {"input": input_data, "result": result})
                return result

        async def _execute_computation(self, input_data: Any) -> Any:
            type(self).executions += 1
            return {"sum": sum(input_data["values"])}

    redis_cfg = {"backend": "redis", "redis_url": redis_url, "namespace": redis_prefix}
    contract = {"subcontracts": {"caching": redis_cfg, "event_type": redis_cfg}}
    a = RobustComputeService(contract, node_id="a")
    b = RobustComputeService(contract, node_id="b")
    heard: list[Event] = []
    await b.event_bus.subscribe("computation_completed", heard.append)
    assert await a.compute({"values": [1, 2, 3]}) == {"sum": 6}
    assert await b.compute({"values": [1, 2, 3]}) == {"sum": 6}  # from the shared L2
    assert RobustComputeService.executions == 1
    assert b.cache.stats()["hits"]["l2"] == 1
    assert await eventually(lambda: len(heard) == 1)
    assert heard[0].source == "a" and heard[0].payload["result"] == {"sum": 6}
    assert "cache_hits" in str(b.metrics.snapshot())
    await a.aclose()
    await b.aclose()
    assert await no_tasks_left()
