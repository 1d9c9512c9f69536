"""The event_bus capability on its default (memory) backend: alone, composed, as the seed uses it.

Redis pub/sub between processes is in ``test_event_bus_redis.py``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import pickle
import random
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger

from onex_compose import ConfigurationError, NodeCompute, explain, has_capability
from onex_compose import compose as _compose
from onex_compose.capabilities import CONTRACTS_DIR, _context
from onex_compose.capabilities.event_bus import (
    Event,
    EventBus,
    EventBusConfig,
    EventBusError,
    EventBusProtocol,
    EventPublishError,
    MixinEventBus,
    Subscription,
)

# Every test runs twice: as written, and with tracing composed on every node it builds (issue
# 11: publishing and delivery behave the same with PRODUCER/CONSUMER spans around them).
_EXTRA: list[str] = []


def compose(base: Any, caps: Any, **kwargs: Any) -> Any:
    return _compose(base, [*caps, *_EXTRA], **kwargs)


@pytest.fixture(autouse=True, params=["plain", "traced"])
def _with_tracing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "traced":
        pytest.importorskip("opentelemetry.sdk")
        monkeypatch.setattr(sys.modules[__name__], "_EXTRA", ["tracing"])
    return str(request.param)


try:
    from onex_compose import NodeComputeService
except ImportError:  # pragma: no cover
    NodeComputeService = NodeCompute  # type: ignore[misc]


def ns() -> str:
    """A namespace of its own, so tests never see each other's events."""
    return f"t-{uuid.uuid4().hex[:10]}"


def bus(**config: Any) -> EventBus:
    return EventBus({"namespace": ns(), **config}, source="test-node")


@pytest.fixture
def logs() -> Any:
    lines: list[str] = []
    logger.enable("onex_compose")
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG")
    yield lines
    logger.remove(sink)


# -- composition ---------------------------------------------------------------------------------


def test_hand_written_and_composed_by_name_and_alias() -> None:
    class Service(NodeComputeService, MixinEventBus):
        pass

    assert "metrics" in Service.__composition__.capabilities
    Composed = compose(NodeCompute, ["event_communication"])
    assert has_capability(Composed, "event_bus")
    assert Composed is compose(NodeCompute, ["event_bus"])
    node = Composed()
    assert isinstance(node.event_bus, EventBusProtocol)
    assert "event_bus" in str(explain(Composed))


def test_configured_by_the_seeds_event_type_subcontract() -> None:
    Service = compose(NodeCompute, ["event_bus"])
    node = Service({"subcontracts": {"event_type": {"namespace": "orders", "max_pending": 5}}})
    assert node.event_bus.config.namespace == "orders"
    assert node.event_bus.config.max_pending == 5
    node2 = Service(capability_config={"event_bus": {"namespace": "billing"}})
    assert node2.event_bus.config.namespace == "billing"


def test_capability_config_keyed_by_the_subcontract_key() -> None:
    Service = compose(NodeCompute, ["event_bus"])
    node = Service(capability_config={"event_type": {"namespace": "billing"}})
    assert node.event_bus.config.namespace == "billing"


def test_unknown_config_keys_are_rejected_with_a_suggestion() -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        compose(NodeCompute, ["event_bus"])(capability_config={"event_bus": {"namspace": "x"}})
    with pytest.raises(ConfigurationError, match="backend"):
        EventBus({"backend": "kafka"})
    with pytest.raises(ConfigurationError, match="whitespace"):
        EventBus({"namespace": "a b"})


def test_a_redis_url_that_is_not_one_is_a_setup_error() -> None:
    # it used to pass setup and fail (or degrade) only when the bus first touched Redis
    with pytest.raises(ConfigurationError, match="redis_url must be a redis://"):
        compose(NodeCompute, ["event_bus"])(
            capability_config={"event_bus": {"backend": "redis", "redis_url": "http://x/0"}})
    assert EventBus({"redis_url": "unix:///tmp/redis.sock"}).config.redis_url


def test_contract_defaults_equal_the_config_model() -> None:
    contract = yaml.safe_load((CONTRACTS_DIR / "mixin_event_bus.yaml").read_text("utf-8"))
    assert contract["event_bus_config"] == EventBusConfig().model_dump()
    assert contract["composition"]["subcontract_key"] == "event_type"
    assert "event_communication" in contract["composition"]["aliases"]


# -- publish / subscribe -------------------------------------------------------------------------


def test_sync_and_async_handlers_receive_the_envelope() -> None:
    node = compose(NodeCompute, ["event_bus"])(
        capability_config={"event_bus": {"namespace": ns()}}, node_id="node-7")
    got_sync: list[Event] = []
    got_async: list[Event] = []

    async def handler(event: Event) -> None:
        await asyncio.sleep(0)
        got_async.append(event)

    async def body() -> list[Event]:
        node.event_bus.subscribe("computation_completed", got_sync.append)
        sub = await node.event_bus.subscribe("computation_completed", handler)
        assert isinstance(sub, Subscription)
        token = _context.correlation_id.set("req-42")
        try:
            before = time.time()
            sent = await node.event_bus.publish("computation_completed", {"result": 6})
        finally:
            _context.correlation_id.reset(token)
        sent2 = await node.event_bus.publish("computation_completed", {"result": 7})
        await node.event_bus.drain()
        assert before <= sent.timestamp <= time.time()
        return [sent, sent2]

    sent = asyncio.run(body())
    assert got_sync == got_async == sent
    first = got_sync[0]
    assert first.topic == "computation_completed"
    assert first.payload == {"result": 6}
    assert first.source == "node-7"
    assert first.correlation_id == "req-42"
    assert got_sync[1].correlation_id is None
    assert len({e.id for e in got_sync}) == 2
    assert Event.from_dict(first.to_dict()) == first


def test_fan_out_across_nodes_of_one_namespace_and_not_across_namespaces() -> None:
    Service = compose(NodeCompute, ["event_bus"])
    shared, other = ns(), ns()
    a = Service(capability_config={"event_bus": {"namespace": shared}}, node_id="a")
    b = Service(capability_config={"event_bus": {"namespace": shared}}, node_id="b")
    c = Service(capability_config={"event_bus": {"namespace": other}}, node_id="c")
    seen: dict[str, list[Any]] = {"a": [], "b": [], "c": []}

    async def body() -> None:
        for name, node in (("a", a), ("b", b), ("c", c)):
            node.event_bus.subscribe("ping", lambda e, n=name: seen[n].append(e.payload))
        await a.event_bus.publish("ping", 1)
        await c.event_bus.publish("ping", 2)
        await a.event_bus.drain()
        await c.event_bus.drain()
        for node in (a, b, c):
            await node.aclose()

    asyncio.run(body())
    assert seen == {"a": [1], "b": [1], "c": [2]}


def test_a_reused_payload_object_is_delivered_as_it_was_published() -> None:
    # delivery is asynchronous: without a snapshot every subscriber saw the last state
    # ([{'i': 2}] * 3), while the Redis backend delivers what was published
    bus = EventBus({"namespace": f"snap-{uuid.uuid4().hex}"})
    got: list[Any] = []
    bus.subscribe("t", lambda event: got.append(event.payload))
    lock = threading.Lock()
    looped: list[Any] = [1]
    looped.append(looped)

    async def run() -> None:
        msg: dict[str, Any] = {"items": []}
        for i in range(3):
            msg["i"] = i
            msg["items"].append(i)
            await bus.publish("t", msg)
        await bus.publish("t", {"lock": lock})  # cannot be copied: passed as is
        await bus.publish("t", looped)
        await bus.drain()
        await bus.aclose()

    asyncio.run(run())
    assert got[:3] == [{"i": 0, "items": [0]}, {"i": 1, "items": [0, 1]},
                       {"i": 2, "items": [0, 1, 2]}]
    assert got[3]["lock"] is lock
    assert got[4][0] == 1 and got[4][1] is got[4]


def test_order_per_topic_is_kept_for_every_subscriber() -> None:
    b = bus()
    fast: list[int] = []
    slow: list[int] = []

    async def slow_handler(event: Event) -> None:
        await asyncio.sleep(random.random() / 1000)
        slow.append(event.payload)

    async def body() -> None:
        b.subscribe("seq", lambda e: fast.append(e.payload))
        b.subscribe("seq", slow_handler)
        for i in range(200):
            await b.publish("seq", i)
        await b.drain()
        await b.aclose()

    asyncio.run(body())
    assert fast == slow == list(range(200))


def test_a_failing_handler_is_isolated_logged_and_counted(logs: list[str]) -> None:
    node = compose(NodeCompute, ["event_bus"])(capability_config={"event_bus": {"namespace": ns()}})
    good: list[int] = []
    flaky_seen: list[int] = []

    def flaky(event: Event) -> None:
        flaky_seen.append(event.payload)
        if event.payload % 2 == 0:
            raise RuntimeError(f"handler broke on {event.payload}")

    async def also_cancelled(event: Event) -> None:
        raise asyncio.CancelledError  # a handler raising CancelledError is a failure too

    async def body() -> None:
        node.event_bus.subscribe("t", flaky)
        node.event_bus.subscribe("t", also_cancelled)
        node.event_bus.subscribe("t", lambda e: good.append(e.payload))
        for i in range(4):
            await node.event_bus.publish("t", i)  # never raises
        await node.event_bus.drain()
        await node.aclose()

    asyncio.run(body())
    assert good == [0, 1, 2, 3]
    assert flaky_seen == [0, 1, 2, 3]  # still subscribed after failing
    stats = node.event_bus.stats()
    assert stats["handler_errors"] == 2 + 4
    assert node.metrics.snapshot()["counters"]["event_handler_errors_total"] == 6
    assert sum("handler broke on" in line for line in logs) == 2


def test_a_slow_subscriber_never_blocks_the_publisher_or_the_others() -> None:
    b = bus()
    fast: list[int] = []

    async def body() -> None:
        gate = asyncio.Event()

        async def stuck(event: Event) -> None:
            await gate.wait()

        b.subscribe("t", stuck)
        b.subscribe("t", lambda e: fast.append(e.payload))
        start = time.perf_counter()
        for i in range(50):
            await b.publish("t", i)
        assert time.perf_counter() - start < 1.0
        await asyncio.sleep(0.01)
        assert fast == list(range(50))
        gate.set()
        assert await b.drain(timeout=5)
        await b.aclose()

    asyncio.run(body())


def test_full_subscriber_queue_drops_and_counts(logs: list[str]) -> None:
    b = bus(max_pending=3)

    async def body() -> None:
        gate = asyncio.Event()
        got: list[int] = []

        async def blocked(event: Event) -> None:
            await gate.wait()
            got.append(event.payload)

        b.subscribe("t", blocked)
        for i in range(10):
            await b.publish("t", i)
        await asyncio.sleep(0)
        gate.set()
        await b.drain()
        assert got[:1] == [0] and len(got) <= 4
        await b.aclose()

    asyncio.run(body())
    assert b.stats()["dropped"] >= 6
    assert any("dropped" in line for line in logs)


def test_unsubscribe_stops_delivery_and_is_idempotent() -> None:
    b = bus()
    got: list[int] = []

    async def body() -> None:
        sub = b.subscribe("t", lambda e: got.append(e.payload))
        await b.publish("t", 1)
        await b.drain()
        sub.unsubscribe()
        sub.unsubscribe()
        assert not sub.active and b.subscriptions == []
        await b.publish("t", 2)
        await b.drain()
        await asyncio.sleep(0)
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(body())
    assert got == [1]


def test_wildcards_follow_token_rules() -> None:
    """``*`` is exactly one token, ``>`` one or more trailing tokens (NATS/AMQP)."""
    b = bus()
    patterns = ["orders.*", "*", "*.paid", "orders.created", "orders.>", ">", "*.*.paid",
                "orders.*.>"]
    got: dict[str, list[str]] = {p: [] for p in patterns}
    published = ["orders.created", "orders.eu.paid", "order.x", "users.paid", "orders",
                 "orders.eu.de.paid"]

    async def body() -> None:
        for topic in got:
            b.subscribe(topic, lambda e, t=topic: got[t].append(e.topic))
        for topic in published:
            await b.publish(topic, None)
        await b.drain()
        await b.aclose()

    asyncio.run(body())
    assert got["orders.*"] == ["orders.created"]  # not orders.eu.paid: '*' is one token
    assert got["*"] == ["orders"]
    assert got["*.paid"] == ["users.paid"]
    assert got["orders.created"] == ["orders.created"]
    assert got["orders.>"] == ["orders.created", "orders.eu.paid", "orders.eu.de.paid"]
    assert got[">"] == published
    assert got["*.*.paid"] == ["orders.eu.paid"]
    assert got["orders.*.>"] == ["orders.eu.paid", "orders.eu.de.paid"]


@pytest.mark.parametrize(("topic", "match"), [
    ("orders.>.paid", "may only be the last token"),
    (">.x", "may only be the last token"),
    ("orders.eu*", "whole tokens"),
    ("a*b", "whole tokens"),
    ("orders.**", "whole tokens"),
    ("orders.>>", "whole tokens"),
    ("orders.x>", "whole tokens"),
    ("orders..paid", "empty token"),
    (".orders", "empty token"),
    ("orders.", "empty token"),
    ("orders.*.", "empty token"),
])
def test_invalid_wildcard_patterns_are_clear_errors(topic: str, match: str) -> None:
    b = bus()
    with pytest.raises(EventBusError, match=match) as info:
        b.subscribe(topic, print)
    assert repr(topic) in str(info.value)
    assert b.subscriptions == []


@pytest.mark.parametrize("topic", ["orders.*", "orders.>", "*", ">", "a.*.b", "a..b", "a."])
def test_publishing_to_a_pattern_or_a_malformed_topic_is_an_error(topic: str) -> None:
    with pytest.raises(EventBusError, match="wildcard|empty token"):
        asyncio.run(bus().publish(topic, 1))


_token = st.sampled_from(["a", "b", "orders", "x1", "-", "a_b"])


def _reference_match(pattern: list[str], topic: list[str]) -> bool:
    """Token matching as NATS documents it, written the obvious recursive way."""
    if not pattern:
        return not topic
    head = pattern[0]
    if head == ">":
        return len(topic) >= 1
    if not topic:
        return False
    return (head == "*" or head == topic[0]) and _reference_match(pattern[1:], topic[1:])


@settings(max_examples=400, deadline=None)
@given(pattern=st.lists(st.one_of(_token, st.just("*")), min_size=1, max_size=5),
       tail=st.booleans(),
       topic=st.lists(_token, min_size=1, max_size=6))
def test_the_matcher_agrees_with_the_token_rules(pattern: list[str], tail: bool,
                                                 topic: list[str]) -> None:
    if tail:
        pattern = [*pattern, ">"]
    b = bus()
    sub = b.subscribe(".".join(pattern), print)
    assert sub.matches(".".join(topic)) is _reference_match(pattern, topic)
    if "*" in pattern or tail:  # Redis glob: a superset of the token rules (filtered locally)
        assert sub.pattern is not None
        glob = sub.pattern.removeprefix(f"{b.config.namespace}:events:")
        if _reference_match(pattern, topic):
            assert fnmatch.fnmatchcase(".".join(topic), glob)
    sub.unsubscribe()


@pytest.mark.parametrize("topic", ["", "has space", 42, None])
def test_bad_topics_are_rejected(topic: Any) -> None:
    b = bus()
    with pytest.raises(EventBusError, match="topic"):
        b.subscribe(topic, print)
    with pytest.raises(EventBusError, match="topic"):
        asyncio.run(b.publish(topic, 1))


def test_publishing_to_a_wildcard_and_non_callable_handlers_are_errors() -> None:
    b = bus()
    with pytest.raises(EventBusError, match="wildcard"):
        asyncio.run(b.publish("orders.*", 1))
    with pytest.raises(EventBusError, match="callable"):
        b.subscribe("t", "not a function")  # type: ignore[arg-type]
    assert EventBusError.onex_retriable is False
    assert EventPublishError.onex_retriable is True
    assert isinstance(EventPublishError("x"), ConnectionError)


# -- lifecycle -----------------------------------------------------------------------------------


def test_aclose_lets_queued_events_finish_and_leaves_no_task_behind() -> None:
    node = compose(NodeCompute, ["event_bus"])(capability_config={"event_bus": {"namespace": ns()}})
    got: list[int] = []

    async def slowish(event: Event) -> None:
        await asyncio.sleep(0.001)
        got.append(event.payload)

    async def body() -> None:
        async with node:
            node.event_bus.subscribe("t", slowish)
            node.event_bus.subscribe("t2", slowish)
            for i in range(20):
                await node.event_bus.publish("t", i)
        assert got == list(range(20))
        assert asyncio.all_tasks() == {asyncio.current_task()}
        await node.aclose()  # idempotent

    asyncio.run(body())


def test_aclose_gives_up_on_a_stuck_handler_after_drain_timeout() -> None:
    b = bus(drain_timeout=0.05)

    async def body() -> None:
        async def stuck(event: Event) -> None:
            await asyncio.sleep(3600)

        b.subscribe("t", stuck)
        await b.publish("t", 1)
        await asyncio.sleep(0)
        start = time.perf_counter()
        await b.aclose()
        assert time.perf_counter() - start < 1.0
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(body())


def test_a_node_built_outside_a_loop_works_across_repeated_asyncio_run() -> None:
    node = compose(NodeCompute, ["event_bus"])(capability_config={"event_bus": {"namespace": ns()}})
    got: list[int] = []
    node.event_bus.subscribe("t", lambda e: got.append(e.payload))  # no loop yet

    async def once(i: int) -> None:
        await node.event_bus.publish("t", i)
        await node.event_bus.drain()

    for i in range(3):
        asyncio.run(once(i))
    assert got == [0, 1, 2]
    asyncio.run(node.aclose())


def test_events_reach_a_subscriber_running_on_another_threads_loop() -> None:
    b = bus()
    got: list[tuple[int, int]] = []
    ready = threading.Event()
    done = threading.Event()
    loop = asyncio.new_event_loop()

    def handler(event: Event) -> None:
        got.append((event.payload, threading.get_ident()))
        if len(got) == 5:
            done.set()

    async def subscriber() -> None:
        b.subscribe("t", handler)
        await b.publish("t", 0)  # binds the subscription to this loop
        ready.set()
        while not done.is_set():
            await asyncio.sleep(0.005)

    thread = threading.Thread(target=loop.run_until_complete, args=(subscriber(),))
    thread.start()
    assert ready.wait(5)

    async def publisher() -> None:
        for i in range(1, 5):
            await b.publish("t", i)

    asyncio.run(publisher())
    thread.join(5)
    loop.run_until_complete(b.aclose())
    loop.close()
    assert [p for p, _ in got] == [0, 1, 2, 3, 4]
    assert {tid for _, tid in got} == {thread.ident}


def test_a_node_with_subscriptions_pickles_and_is_rebuilt_from_config() -> None:
    name = ns()
    Service = compose(NodeCompute, ["event_bus"])
    node = Service(capability_config={"event_bus": {"namespace": name, "max_pending": 9}})
    got: list[Any] = []

    async def body() -> None:
        node.event_bus.subscribe("t", got.append)
        await node.event_bus.publish("t", 1)
        await node.event_bus.drain()

    asyncio.run(body())
    clone = pickle.loads(pickle.dumps(node))
    assert clone.event_bus is not node.event_bus
    assert clone.event_bus.config == node.event_bus.config
    assert clone.event_bus.subscriptions == []  # subscriptions are code, not configuration
    clone_got: list[Any] = []

    async def again() -> None:
        clone.event_bus.subscribe("t", lambda e: clone_got.append(e.payload))
        await clone.event_bus.publish("t", 2)
        await clone.event_bus.drain()
        await clone.aclose()
        await node.aclose()

    asyncio.run(again())
    assert clone_got == [2]
    assert [e.payload for e in got] == [1, 2]  # same namespace, same process: both hear it


def test_reconfiguring_unsubscribes_the_old_bus() -> None:
    node = compose(NodeCompute, ["event_bus"])(capability_config={"event_bus": {"namespace": ns()}})
    old = node.event_bus
    sub = old.subscribe("t", print)
    node.setup_event_bus({"namespace": ns()})
    assert not sub.active and node.event_bus is not old


def test_stats_health_and_metrics() -> None:
    node = compose(NodeCompute, ["event_bus"])(capability_config={"event_bus": {"namespace": ns()}})

    async def body() -> None:
        node.event_bus.subscribe("t", lambda e: None)
        await node.event_bus.publish("t", 1)
        await node.event_bus.publish("nobody-listens", 1)
        await node.event_bus.drain()

    asyncio.run(body())
    stats = node.event_bus.stats()
    assert stats["published"] == 2 and stats["delivered"] == 1 and stats["subscriptions"] == 1
    counters = node.metrics.snapshot()["counters"]
    assert counters["events_published_total"] == 2
    assert counters["events_delivered_total"] == 1
    assert node.event_bus.health()["status"] == "healthy"
    asyncio.run(node.aclose())


def test_docstring_examples_run() -> None:
    import doctest

    import onex_compose.capabilities.event_bus as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 5 and result.failed == 0


def test_with_health_check_the_bus_reports_in_the_nodes_health() -> None:
    node = compose(NodeCompute, ["event_bus", "health_check"])(
        capability_config={"event_bus": {"namespace": ns()}})
    report = asyncio.run(node.health_check())
    assert report["checks"]["event_bus"]["status"] == "healthy"


def test_the_contract_passes_onex_validate(capsys: pytest.CaptureFixture[str]) -> None:
    from onex_compose._cli import main

    assert main(["validate", str(CONTRACTS_DIR / "mixin_event_bus.yaml")]) == 0
    assert "✓ Action definitions complete" in capsys.readouterr().out


def test_every_metric_the_module_records_is_declared_in_its_contract() -> None:
    import re

    import onex_compose.capabilities.event_bus as module

    source = Path(module.__file__).read_text("utf-8")
    recorded = set(re.findall(r'_inc\(\s*"([a-z_]+)"', source))
    contract = yaml.safe_load((CONTRACTS_DIR / "mixin_event_bus.yaml").read_text("utf-8"))
    declared = {m["name"] for m in contract["metrics"]}
    assert recorded and recorded <= declared, sorted(recorded - declared)
