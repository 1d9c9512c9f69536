"""The service_registry capability on both backends (memory, and Redis with a client clock):
discovery (capability, alias, bundle, node type, domain, metadata), status transitions with a
ManualClock (offline, not deleted; online again; purged; left), watchers in order, identity
and conflicts, bad input, metrics, the event bus, and the lifecycle (no task left behind).
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from helpers_procs import eventually, no_tasks_left

from onex_compose import (
    EnumNodeType,
    NodeCompute,
    NodeEffect,
    NodeReducer,
    compose,
    has_capability,
)
from onex_compose.capabilities._context import ManualClock
from onex_compose.capabilities.service_registry import (
    TOPIC,
    RegistryChange,
    RegistryConflictError,
    RegistryError,
    RegistryInputError,
    RegistryUnavailableError,
    ServiceEntry,
    ServiceRegistry,
    ServiceRegistryConfig,
    ServiceRegistryProtocol,
)
from onex_compose.exceptions import ConfigurationError, OnexError


class Pricer(compose(NodeCompute, ["service_registry", "caching"])):  # type: ignore[misc]
    pass


class Guard(compose(NodeEffect, ["service_registry", "fault_tolerance"])):  # type: ignore[misc]
    pass


class Relay(compose(NodeReducer, ["service_registry", "event_bus"])):  # type: ignore[misc]
    pass


@pytest.fixture(params=["memory", "redis"])
def base(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Backend settings: a private memory namespace, or Redis with a per-test key prefix and the
    client clock (so a ManualClock drives expiry)."""
    if request.param == "memory":
        yield {"backend": "memory", "namespace": f"test-{uuid.uuid4().hex[:10]}"}
    else:
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        yield {"backend": "redis", "redis_url": url, "namespace": prefix,
               "redis_clock": "client"}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


def make(cls: type, base: dict[str, Any], clock: ManualClock, **cfg: Any) -> Any:
    node = cls(capability_config={"service_registry": {**base, **cfg}})
    node.service_registry.clock = clock
    return node


# -- composition -----------------------------------------------------------------------------


def test_composes_with_metrics_and_declares_the_protocol() -> None:
    node = Pricer()
    assert has_capability(node, "metrics")
    assert isinstance(node.service_registry, ServiceRegistry)
    assert isinstance(node.service_registry, ServiceRegistryProtocol)
    assert node.service_registry.name == "Pricer"
    assert node.service_registry.node_type == "COMPUTE"
    assert {"service_registry", "caching", "metrics"} <= set(node.service_registry.capabilities)


def test_the_default_instance_id_is_host_pid_node_id_and_a_configured_one_wins() -> None:
    node = Pricer(node_id="Pricer-1")
    assert node.service_registry.instance_id == f"{socket.gethostname()}:{os.getpid()}:Pricer-1"
    node = Pricer(capability_config={"service_registry": {"instance_id": "pricer-a"}})
    assert node.service_registry.instance_id == "pricer-a"
    assert Pricer().service_registry.instance != Pricer().service_registry.instance


def test_config_defaults_mirror_the_issue() -> None:
    cfg = ServiceRegistryConfig()
    assert (cfg.backend, cfg.redis_url, cfg.namespace, cfg.ttl, cfg.heartbeat_interval,
            cfg.purge_after, cfg.auto_register, cfg.publish_changes, cfg.redis_clock) == (
        "memory", None, "onex", 15.0, None, 3600.0, True, True, "server")
    assert cfg.interval == 5.0
    assert ServiceRegistryConfig(ttl=6, heartbeat_interval=1).interval == 1
    with pytest.raises(ValueError):
        ServiceRegistryConfig(bogus=1)  # type: ignore[call-arg]


def test_non_string_metadata_is_a_configuration_error_naming_the_fix() -> None:
    with pytest.raises(ConfigurationError, match=r"'port': 8080.*str\(\)"):
        Pricer(capability_config={"service_registry": {"metadata": {"port": 8080}}})


def test_error_classes() -> None:
    assert issubclass(RegistryError, OnexError)
    assert issubclass(RegistryConflictError, RegistryError)
    assert issubclass(RegistryConflictError, ValueError)
    assert issubclass(RegistryUnavailableError, RegistryError)
    assert issubclass(RegistryUnavailableError, ConnectionError)
    assert RegistryUnavailableError.onex_retriable is True
    assert RegistryConflictError.onex_retriable is False
    assert issubclass(RegistryInputError, ValueError)


def test_a_redis_backend_without_the_client_names_the_extra(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "redis" else real(name, *a))
    with pytest.raises(ConfigurationError, match=r"onex-compose\[redis\]"):
        Pricer(capability_config={"service_registry": {"backend": "redis"}})


# -- discovery -------------------------------------------------------------------------------


async def test_discovery_by_capability_alias_bundle_node_type_domain_and_metadata(
        base: dict[str, Any], clock: ManualClock) -> None:
    pricer = make(Pricer, base, clock, domain="pricing", metadata={"zone": "eu", "tier": "1"})
    guard = make(Guard, base, clock, domain="payments", metadata={"zone": "us"})
    relay = make(Relay, base, clock, domain="pricing", metadata={"zone": "eu"})
    reg = pricer.service_registry
    for node in (pricer, guard, relay):
        await node.service_registry.register()

    def names(entries: list[ServiceEntry]) -> list[str]:
        return sorted(e.name for e in entries)

    assert names(await reg.discover()) == ["Guard", "Pricer", "Relay"]
    assert names(await reg.discover(capability="caching")) == ["Pricer"]
    assert names(await reg.discover(capability="event_communication")) == ["Relay"]  # alias
    assert names(await reg.discover(capability="fault_tolerance")) == ["Guard"]      # bundle
    assert names(await reg.discover(capability="retry")) == ["Guard"]
    assert names(await reg.discover(capability="metrics")) == ["Guard", "Pricer", "Relay"]
    assert names(await reg.discover(capability="no_such_capability")) == []
    assert names(await reg.discover(node_type="effect")) == ["Guard"]
    assert names(await reg.discover(node_type=EnumNodeType.REDUCER)) == ["Relay"]
    assert names(await reg.discover(domain="pricing")) == ["Pricer", "Relay"]
    assert names(await reg.discover(metadata={"zone": "eu"})) == ["Pricer", "Relay"]
    assert names(await reg.discover(metadata={"zone": "eu", "tier": "1"})) == ["Pricer"]
    assert names(await reg.discover(name="Relay", domain="pricing")) == ["Relay"]
    assert names(await reg.discover(capability="caching", domain="payments")) == []
    entry = (await reg.discover(capability="caching"))[0]
    assert entry.metadata == {"zone": "eu", "tier": "1"}
    assert entry.status == "online" and entry.expires_at == 1000.0 + 15.0
    assert entry.node_id == pricer.node_id and entry.instance == reg.instance
    for node in (pricer, guard, relay):
        await node.aclose()


async def test_discover_rejects_an_unknown_node_type_and_non_string_metadata(
        base: dict[str, Any], clock: ManualClock) -> None:
    reg = make(Pricer, base, clock).service_registry
    with pytest.raises(RegistryInputError,
                       match="COMPUTE, EFFECT, REDUCER, ORCHESTRATOR") as info:
        await reg.discover(node_type="worker")
    assert "'worker'" in str(info.value)
    with pytest.raises(RegistryInputError, match="'n': 1"):
        await reg.discover(metadata={"n": 1})  # type: ignore[dict-item]


# -- status transitions ----------------------------------------------------------------------


async def test_missed_heartbeats_go_offline_not_deleted_and_a_heartbeat_brings_it_back(
        base: dict[str, Any], clock: ManualClock) -> None:
    a = make(Pricer, base, clock, ttl=10)
    b = make(Guard, base, clock, ttl=10)
    ra, rb = a.service_registry, b.service_registry
    await ra.register()
    await rb.register()
    clock.advance(9.9)
    await rb.heartbeat()
    assert [c.kind for c in await ra.sweep()] == []
    clock.advance(0.1)                       # a: now == expires_at -> offline
    assert len(await ra.discover()) == 1     # offline before any sweep already
    changes = await ra.sweep()
    assert [(c.kind, c.entry.instance_id) for c in changes] == [("offline", ra.instance_id)]
    assert changes[0].entry.status == "offline"
    assert await rb.sweep() == []            # exactly one offline change per expiry
    assert [e.name for e in await rb.discover()] == ["Guard"]
    kept = await rb.discover(include_offline=True)
    assert [(e.name, e.status) for e in kept] == [("Guard", "online"), ("Pricer", "offline")] \
        or sorted((e.name, e.status) for e in kept) == [("Guard", "online"),
                                                        ("Pricer", "offline")]
    assert (await rb.get(ra.instance_id)).status == "offline"   # not deleted
    clock.advance(1000)                       # long offline, still kept (purge_after 3600)
    await rb.sweep()
    assert {e.name for e in await rb.discover(include_offline=True)} == {"Guard", "Pricer"}
    entry = await ra.heartbeat()              # back online
    assert entry.status == "online" and entry.expires_at == clock() + 10
    assert [e.name for e in await rb.discover(capability="caching")] == ["Pricer"]
    await a.aclose()
    await b.aclose()


async def test_heartbeat_on_memory_and_redis_emits_online_after_offline(
        base: dict[str, Any], clock: ManualClock) -> None:
    node = make(Pricer, base, clock, ttl=5)
    reg = node.service_registry
    seen: list[str] = []
    await reg.watch(lambda change: seen.append(change.kind))
    await reg.register()
    clock.advance(5)
    await reg.sweep()
    await reg.heartbeat()
    await reg.heartbeat()                   # an ordinary heartbeat is no change
    assert await eventually(lambda: len(seen) >= 3)
    await reg.drain()
    assert seen == ["registered", "offline", "online"]
    await node.aclose()


async def test_purge_after_removes_offline_and_left_entries(
        base: dict[str, Any], clock: ManualClock) -> None:
    a = make(Pricer, base, clock, ttl=10, purge_after=100)
    b = make(Guard, base, clock, ttl=10, purge_after=100)
    await a.service_registry.register()
    await b.service_registry.register()
    await b.service_registry.deregister()            # left at 1000
    clock.advance(10)                                # a offline at 1010
    assert [c.kind for c in await a.service_registry.sweep()] == ["offline"]
    clock.advance(89.9)                              # left 99.9 s ago
    assert await a.service_registry.sweep() == []
    clock.advance(0.1)                               # left entry: 100 s -> purged
    changes = await a.service_registry.sweep()
    assert [(c.kind, c.entry.name) for c in changes] == [("purged", "Guard")]
    assert [e.name for e in await a.service_registry.discover(include_offline=True)] == [
        "Pricer"]
    clock.advance(10)                                # offline entry: 100 s past expiry
    changes = await b.service_registry.sweep()
    assert [(c.kind, c.entry.name) for c in changes] == [("purged", "Pricer")]
    assert await a.service_registry.discover(include_offline=True) == []
    entry = await a.service_registry.heartbeat()     # a purged entry registers again
    assert entry.status == "online"
    assert [e.name for e in await b.service_registry.discover()] == ["Pricer"]
    await a.aclose()
    await b.aclose()


async def test_deregister_leaves_and_aclose_leaves_too(
        base: dict[str, Any], clock: ManualClock) -> None:
    a = make(Pricer, base, clock)
    b = make(Guard, base, clock)
    await a.start()                                  # auto_register
    await b.start()
    assert len(await a.service_registry.discover()) == 2
    await b.service_registry.deregister()
    await b.service_registry.deregister()            # idempotent
    entry = await a.service_registry.get(b.service_registry.instance_id)
    assert entry.status == "left"
    assert [e.name for e in await a.service_registry.discover()] == ["Pricer"]
    with pytest.raises(RegistryError, match="not registered; call register"):
        await b.service_registry.heartbeat()
    await b.aclose()
    await a.aclose()
    b2 = make(Guard, base, clock)
    statuses = {e.name: e.status for e in await b2.service_registry.discover(
        include_offline=True)}
    assert statuses == {"Pricer": "left", "Guard": "left"}


async def test_auto_register_false_registers_nothing_at_start(
        base: dict[str, Any], clock: ManualClock) -> None:
    node = make(Pricer, base, clock, auto_register=False)
    await node.start()
    assert await node.service_registry.discover(include_offline=True) == []
    await node.aclose()
    assert await no_tasks_left()


# -- watching --------------------------------------------------------------------------------


async def test_watchers_receive_every_change_in_order_sync_and_async(
        base: dict[str, Any], clock: ManualClock) -> None:
    watcher = make(Relay, base, clock, auto_register=False, ttl=10, purge_after=5)
    sync_seen: list[tuple[str, str]] = []
    async_seen: list[tuple[str, str]] = []

    async def slow(change: RegistryChange) -> None:
        await asyncio.sleep(0.001)             # an async callback still sees changes in order
        async_seen.append((change.kind, change.entry.name))

    def boom(change: RegistryChange) -> None:
        raise RuntimeError("a failing callback is isolated")

    await watcher.service_registry.watch(lambda c: sync_seen.append((c.kind, c.entry.name)))
    await watcher.service_registry.watch(slow)
    await watcher.service_registry.watch(boom)
    node = make(Pricer, base, clock, ttl=10, purge_after=5, address="10.0.0.1:80")
    reg = node.service_registry
    await reg.register()
    await reg.register()                       # same instance again: updated
    clock.advance(10)
    await reg.sweep()
    await reg.heartbeat()
    await reg.deregister()
    clock.advance(5)
    await watcher.service_registry.sweep()
    expected = [("registered", "Pricer"), ("updated", "Pricer"), ("offline", "Pricer"),
                ("online", "Pricer"), ("left", "Pricer"), ("purged", "Pricer")]
    assert await eventually(lambda: len(async_seen) >= len(expected), 10)
    assert sync_seen == expected
    assert async_seen == expected
    assert watcher.service_registry.stats()["callback_errors"] == len(expected)
    await node.aclose()
    await watcher.aclose()


async def test_changes_iterates_over_changes(base: dict[str, Any], clock: ManualClock) -> None:
    watcher = make(Relay, base, clock, auto_register=False)
    node = make(Pricer, base, clock)
    got: list[str] = []
    ready = asyncio.Event()

    async def consume() -> None:
        agen = watcher.service_registry.changes()
        first = asyncio.ensure_future(agen.__anext__())
        await eventually(lambda: bool(watcher.service_registry.stats()["watchers"]))
        await watcher.service_registry._confirm(watcher.service_registry._watches[0])
        ready.set()
        got.append((await first).kind)
        async for change in agen:
            got.append(change.kind)
            if change.kind == "left":
                break
        await agen.aclose()

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(ready.wait(), 10)
    await node.service_registry.register()
    await node.service_registry.deregister()
    await asyncio.wait_for(task, 10)
    assert got == ["registered", "left"]
    assert watcher.service_registry.stats()["watchers"] == 0
    await node.aclose()
    await watcher.aclose()


async def test_watch_rejects_a_non_callable(base: dict[str, Any], clock: ManualClock) -> None:
    with pytest.raises(RegistryInputError, match="callable"):
        make(Pricer, base, clock).service_registry.watch("nope")  # type: ignore[arg-type]


async def test_unwatch_stops_delivery(base: dict[str, Any], clock: ManualClock) -> None:
    watcher = make(Relay, base, clock, auto_register=False)
    seen: list[str] = []
    w = await watcher.service_registry.watch(lambda c: seen.append(c.kind))
    node = make(Pricer, base, clock)
    await node.service_registry.register()
    assert await eventually(lambda: seen == ["registered"])
    w.unwatch()
    w.unwatch()
    await node.service_registry.deregister()
    await node.service_registry.register()
    await asyncio.sleep(0.05)
    assert seen == ["registered"]
    await node.aclose()
    await watcher.aclose()


# -- identity --------------------------------------------------------------------------------


async def test_an_id_held_by_another_online_instance_is_a_conflict_unless_replace(
        base: dict[str, Any], clock: ManualClock) -> None:
    a = make(Pricer, base, clock, instance_id="pricer-main", ttl=10)
    b = make(Pricer, base, clock, instance_id="pricer-main", ttl=10)
    await a.service_registry.register()
    with pytest.raises(RegistryConflictError, match="pricer-main.*replace=True"):
        await b.service_registry.register()
    entry = await b.service_registry.register(replace=True)
    assert entry.instance == b.service_registry.instance
    with pytest.raises(RegistryConflictError, match="taken over"):
        await a.service_registry.heartbeat()
    clock.advance(10)                                 # b offline: a may take it without replace
    await a.service_registry.register()
    assert (await a.service_registry.get("pricer-main")).instance == a.service_registry.instance
    await a.aclose()
    await b.aclose()


async def test_get_by_instance_id_or_by_an_unambiguous_node_id(
        base: dict[str, Any], clock: ManualClock) -> None:
    a = make(Pricer, base, clock, instance_id="host-a:1:Pricer-1")
    b = make(Pricer, base, clock, instance_id="host-b:1:Pricer-1")
    a.service_registry.node_id = b.service_registry.node_id = "Pricer-1"  # two processes' ids
    await a.service_registry.register()
    assert (await b.service_registry.get("Pricer-1")).instance_id == "host-a:1:Pricer-1"
    await b.service_registry.register()
    with pytest.raises(RegistryInputError,
                       match="2 online entries.*host-a:1:Pricer-1, host-b:1:Pricer-1"):
        await a.service_registry.get("Pricer-1")
    assert (await a.service_registry.get("host-b:1:Pricer-1")).node_id == "Pricer-1"
    with pytest.raises(RegistryInputError, match="no online entry.*'nobody'"):
        await a.service_registry.get("nobody")
    await a.aclose()
    await b.aclose()


# -- metrics, event bus, health --------------------------------------------------------------


async def test_metrics_count_heartbeats_changes_and_entries(
        base: dict[str, Any], clock: ManualClock) -> None:
    node = make(Pricer, base, clock, ttl=5)
    reg = node.service_registry
    await reg.register()
    await reg.heartbeat()
    clock.advance(5)
    await reg.sweep()
    await reg.heartbeat()
    await reg.sweep()
    snap = node.metrics.snapshot()
    counters, gauges = snap["counters"], snap["gauges"]
    assert counters['registry_heartbeats_total{outcome="ok"}'] == 2
    assert counters['registry_changes_total{kind="registered"}'] == 1
    assert counters['registry_changes_total{kind="offline"}'] == 1
    assert counters['registry_changes_total{kind="online"}'] == 1
    assert gauges['registry_entries{status="online"}'] == 1
    assert gauges['registry_entries{status="offline"}'] == 0
    await node.aclose()


async def test_changes_are_published_on_the_event_bus(base: dict[str, Any],
                                                      clock: ManualClock) -> None:
    ns = f"bus-{uuid.uuid4().hex[:8]}"
    node = Relay(capability_config={"service_registry": {**base, "ttl": 5},
                                     "event_bus": {"namespace": ns}})
    node.service_registry.clock = clock
    got: list[dict[str, Any]] = []
    node.event_bus.subscribe(TOPIC, lambda event: got.append(event.payload))
    await node.service_registry.register()
    clock.advance(5)
    await node.service_registry.sweep()
    await node.service_registry.deregister()
    await node.event_bus.drain()
    assert [(p["kind"], p["instance_id"]) for p in got] == [
        (k, node.service_registry.instance_id) for k in ("registered", "offline", "left")]
    assert got[0]["entry"]["node_type"] == "REDUCER"
    await node.aclose()
    quiet = Relay(capability_config={"service_registry": {**base, "publish_changes": False},
                                     "event_bus": {"namespace": ns}})
    got.clear()
    quiet.event_bus.subscribe(TOPIC, lambda event: got.append(event.payload))
    await quiet.service_registry.register()
    await quiet.event_bus.drain()
    assert got == []
    await quiet.aclose()


async def test_health_reports_the_registry(base: dict[str, Any], clock: ManualClock) -> None:
    class Checked(compose(NodeCompute, ["service_registry", "health_check"])):  # type: ignore[misc]
        pass

    node = Checked(capability_config={"service_registry": base})
    await node.start()
    report = node.service_registry.health()
    assert report["status"] == "healthy" and report["registered"] is True
    assert "service_registry" in str(await node.health.check())
    await node.aclose()


# -- lifecycle -------------------------------------------------------------------------------


def test_works_without_start_across_repeated_asyncio_run(base: dict[str, Any],
                                                         clock: ManualClock) -> None:
    node = make(Pricer, base, clock)
    seen: list[str] = []
    node.service_registry.watch(lambda c: seen.append(c.kind))  # outside any loop

    async def once(n: int) -> list[str]:
        await node.service_registry.register()
        found = [e.name for e in await node.service_registry.discover()]
        await node.service_registry.deregister()
        assert await eventually(lambda: seen.count("left") == n, 10)  # Redis: via pub/sub
        return found

    assert asyncio.run(once(1)) == ["Pricer"]
    assert asyncio.run(once(2)) == ["Pricer"]
    assert seen == ["registered", "left", "registered", "left"]
    asyncio.run(node.aclose())


async def test_no_task_is_left_after_aclose(base: dict[str, Any], clock: ManualClock) -> None:
    node = make(Pricer, base, clock, ttl=30)
    await node.start()
    await node.service_registry.watch(lambda c: None)
    await node.service_registry.heartbeat()
    assert len(asyncio.all_tasks()) > 1           # heartbeat task (and reader on Redis)
    await node.aclose()
    await node.aclose()
    assert await no_tasks_left()


async def test_the_heartbeat_task_heartbeats_and_sweeps(base: dict[str, Any]) -> None:
    node = Pricer(capability_config={"service_registry": {**base, "ttl": 0.3}})
    await node.start()
    reg = node.service_registry
    assert await eventually(lambda: reg.stats()["heartbeats"] >= 2, 10)
    assert (await reg.get(reg.instance_id)).status == "online"
    await node.aclose()
    assert await no_tasks_left()


def test_repr_explains() -> None:
    reg = Pricer(node_id="p-1").service_registry
    assert "memory" in repr(reg) and "p-1" in repr(reg) and "not registered" in repr(reg)
