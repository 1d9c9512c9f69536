"""The health_check capability: report semantics, timeouts, is_healthy(), real Redis/PostgreSQL."""

from __future__ import annotations

import asyncio
import functools
import json
import pickle
import socket
import threading
from datetime import datetime
from typing import Any

import pytest
import yaml

from onex_compose import (
    NodeCompute,
    NodeEffect,
    ServiceUnavailableError,
    compose,
    has_capability,
)
from onex_compose.capabilities import CONTRACTS_DIR
from onex_compose.capabilities._context import ManualClock
from onex_compose.capabilities.health_check import (
    SCORES,
    HealthCheckConfig,
    HealthCheckError,
    HealthCheckProtocol,
    HealthMonitor,
    HealthStatus,
    MixinHealthCheck,
    postgres_check,
    redis_check,
)
from onex_compose.capabilities.metrics import Metrics, MixinMetrics

Service = compose(NodeCompute, ["health_check"])


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the report -------------------------------------------------------------------------------


async def test_no_checks_is_healthy_with_score_one() -> None:
    node = Service()
    report = await node.health_check()
    assert report["status"] == "healthy" and report["score"] == 1.0
    assert report["checks"] == {} and report["healthy"] is True
    assert report["node_id"] == node.node_id
    datetime.fromisoformat(report["timestamp"])
    assert node.is_healthy()


@pytest.mark.parametrize(("results", "expected"), [
    (["healthy", "healthy"], "healthy"),
    (["healthy", "degraded"], "degraded"),
    (["degraded", "unhealthy", "healthy"], "unhealthy"),
    (["unhealthy", "degraded"], "unhealthy"),
])
async def test_unhealthy_beats_degraded_beats_healthy(results: list[str], expected: str) -> None:
    node = Service()
    for i, result in enumerate(results):
        node.register_health_check(functools.partial(lambda r: r, result), name=f"c{i}")
    report = await node.health_check()
    assert report["status"] == expected
    assert report["score"] == {"healthy": 1.0, "degraded": 0.6, "unhealthy": 0.2}[expected]
    assert [report["checks"][f"c{i}"]["status"] for i in range(len(results))] == results


async def test_return_values_are_interpreted() -> None:
    node = Service()
    node.register_health_check(lambda: True, name="true")
    node.register_health_check(lambda: False, name="false")
    node.register_health_check(lambda: "DEGRADED", name="upper")
    node.register_health_check(lambda: HealthStatus.HEALTHY, name="enum")
    node.register_health_check(lambda: {"status": "degraded", "reason": "slow", "lag": 3},
                               name="mapping")
    node.register_health_check(lambda: {"status": True}, name="mapping_bool")
    checks = (await node.health_check())["checks"]
    assert checks["true"]["status"] == "healthy" and checks["true"]["reason"] == "ok"
    assert checks["false"] == checks["false"] | {
        "status": "unhealthy", "reason": "false is unavailable (the check returned False)"}
    assert checks["upper"]["status"] == "degraded"
    assert checks["enum"]["status"] == "healthy"
    assert checks["mapping"]["reason"] == "slow" and checks["mapping"]["details"] == {"lag": 3}
    assert checks["mapping_bool"]["status"] == "healthy"
    for result in checks.values():
        assert result["duration"] >= 0 and result["critical"] is True


def boom() -> bool:
    raise ValueError("database exploded")


async def failing_async() -> bool:
    raise ConnectionError


@pytest.mark.parametrize(("func", "reason"), [
    (boom, "raised ValueError: database exploded"),
    (failing_async, "raised ConnectionError"),
    (lambda: None, "returned NoneType None"),
    (lambda: 42, "returned int 42"),
    (lambda: "fine", "unknown status 'fine'"),
    (lambda: {"ok": True}, "without a 'status' key"),
    (lambda: {"status": "great"}, "unknown status 'great'"),
])
async def test_a_failing_or_wrong_check_is_unhealthy_and_never_propagates(func: Any,
                                                                          reason: str) -> None:
    node = Service()
    node.register_health_check(func, name="bad")
    node.register_health_check(lambda: True, name="good")
    report = await node.health_check()
    assert report["status"] == "unhealthy"
    assert reason in report["checks"]["bad"]["reason"]
    assert report["checks"]["good"]["status"] == "healthy"
    assert report["reason"].startswith("bad: ")
    assert not node.is_healthy()


async def test_non_critical_failures_only_degrade() -> None:
    node = Service()
    node.register_health_check(boom, name="optional", critical=False)
    report = await node.health_check()
    assert report["status"] == "degraded" and report["score"] == 0.6
    assert report["checks"]["optional"]["reason"].endswith("(non-critical check)")
    assert report["checks"]["optional"]["critical"] is False
    assert node.is_healthy()


async def test_report_is_json_serialisable_and_a_copy() -> None:
    node = Service()
    node.register_health_check(lambda: "degraded", name="x")
    report = await node.health_check()
    assert json.loads(json.dumps(report))["status"] == "degraded"
    report["checks"]["x"]["status"] = "mangled"
    assert node.health.last_report["checks"]["x"]["status"] == "degraded"


# -- concurrency and timeouts -----------------------------------------------------------------


async def test_async_checks_run_concurrently() -> None:
    node = Service()
    a_ran = asyncio.Event()

    async def a() -> bool:
        a_ran.set()
        return True

    async def b() -> bool:  # passes only if a() runs while b() waits
        await asyncio.wait_for(a_ran.wait(), 1.0)
        return True

    node.register_health_check(b, name="b")
    node.register_health_check(a, name="a")
    assert (await node.health_check())["status"] == "healthy"


async def test_sync_checks_run_in_threads_concurrently_with_async_ones() -> None:
    node = Service()
    released = threading.Event()
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def blocking() -> bool:  # blocks until the async check (on the loop) releases it
        seen.append(threading.get_ident())
        return released.wait(2.0)

    async def releaser() -> bool:
        await asyncio.sleep(0.01)
        released.set()
        return True

    node.register_health_check(blocking)
    node.register_health_check(releaser)
    report = await node.health_check()
    assert report["status"] == "healthy", report
    assert seen and seen[0] != loop_thread


async def test_a_hanging_async_check_times_out() -> None:
    node = Service(capability_config={"health_check": {"check_timeout": 0.05}})

    async def hangs() -> bool:
        await asyncio.Event().wait()
        return True

    node.register_health_check(hangs)
    node.register_health_check(lambda: True, name="quick")
    report = await node.health_check()
    assert report["status"] == "unhealthy"
    assert report["checks"]["hangs"]["reason"] == "timed out after 0.05 s"
    assert report["checks"]["quick"]["status"] == "healthy"


async def test_a_hanging_sync_check_times_out_and_is_not_started_twice() -> None:
    node = Service()
    release = threading.Event()
    calls: list[int] = []

    def stuck() -> bool:
        calls.append(1)
        release.wait(5.0)
        return True

    node.register_health_check(stuck, timeout=0.05)
    first = await node.health_check()
    assert first["checks"]["stuck"]["reason"] == "timed out after 0.05 s"
    second = await node.health_check()
    assert "still blocked" in second["checks"]["stuck"]["reason"]
    assert len(calls) == 1  # the stuck thread was not joined by another one
    release.set()
    for _ in range(200):
        if node.health._checks["stuck"].running_since is None:
            break
        await asyncio.sleep(0.005)
    third = await node.health_check()
    assert third["status"] == "healthy" and len(calls) == 2


async def test_per_check_timeout_overrides_the_default() -> None:
    node = Service(capability_config={"health_check": {"check_timeout": 10}})

    async def slow() -> bool:
        await asyncio.sleep(5)
        return True

    node.register_health_check(slow, timeout=0.02)
    assert (await node.health_check())["checks"]["slow"]["reason"] == "timed out after 0.02 s"


async def test_concurrent_health_checks_share_one_run() -> None:
    node = Service()
    calls = []
    gate = asyncio.Event()

    async def check() -> bool:
        calls.append(1)
        await gate.wait()
        return True

    node.register_health_check(check)
    waiters = [asyncio.ensure_future(node.health_check()) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    reports = await asyncio.gather(*waiters)
    assert len(calls) == 1
    assert all(r["status"] == "healthy" for r in reports)


async def test_sync_callable_returning_a_coroutine_and_async_callable_objects() -> None:
    class Probe:
        async def __call__(self) -> str:
            return "degraded"

    async def coro() -> bool:
        return True

    node = Service()
    node.register_health_check(lambda: coro(), name="lambda_coro")
    node.register_health_check(Probe(), name="probe")
    checks = (await node.health_check())["checks"]
    assert checks["lambda_coro"]["status"] == "healthy"
    assert checks["probe"]["status"] == "degraded"


# -- is_healthy -------------------------------------------------------------------------------


def test_is_healthy_before_any_report_and_without_a_loop() -> None:
    node = Service()
    node.register_health_check(lambda: False, name="db")
    assert node.is_healthy()  # optimistic until a report exists; no loop: nothing scheduled
    assert node.health.status is None
    assert asyncio.run(node.health_check())["status"] == "unhealthy"
    assert not node.is_healthy()


async def test_is_healthy_refreshes_a_stale_report_in_the_background() -> None:
    node = Service(capability_config={"health_check": {"interval": 10}})
    node.health.clock = clock = ManualClock()
    state = {"value": True}
    calls = []

    def check() -> bool:
        calls.append(1)
        return state["value"]

    node.register_health_check(check, name="dep")
    await node.health_check()
    assert len(calls) == 1
    state["value"] = False
    assert node.is_healthy()  # fresh report: no check runs
    await asyncio.sleep(0.01)
    assert len(calls) == 1
    clock.advance(10)
    assert node.is_healthy()  # stale: answers from the last report, schedules one refresh
    assert node.is_healthy()  # still one refresh in flight, not two
    refresh = node.health._running
    assert refresh is not None
    await refresh
    assert len(calls) == 2
    assert not node.is_healthy()


async def test_is_healthy_schedules_the_first_report() -> None:
    node = Service()
    node.register_health_check(lambda: "unhealthy", name="x")
    assert node.is_healthy()
    await node.health._running
    assert not node.is_healthy()


async def test_interval_none_never_refreshes_by_itself() -> None:
    node = Service(capability_config={"health_check": {"interval": None}})
    node.register_health_check(lambda: False, name="x")
    assert node.is_healthy()
    assert node.health._running is None
    await node.health_check()
    assert not node.is_healthy()


async def test_registering_a_check_makes_the_report_stale() -> None:
    node = Service()
    node.health.clock = ManualClock()
    await node.health_check()
    node.register_health_check(lambda: "unhealthy", name="new")
    node.is_healthy()
    await node.health._running
    assert not node.is_healthy()
    assert node.health.unregister("new") is True
    assert node.health.unregister("new") is False
    assert (await node.health_check())["status"] == "healthy"


# -- registration -----------------------------------------------------------------------------


def test_registration_validates_its_input() -> None:
    node = Service()
    with pytest.raises(HealthCheckError, match="needs a callable"):
        node.register_health_check("not callable")  # type: ignore[arg-type]
    for bad in (0, -1, True, "5"):
        with pytest.raises(HealthCheckError, match="positive number of seconds"):
            node.register_health_check(lambda: True, timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(HealthCheckError, match="non-empty string"):
        node.register_health_check(lambda: True, name="  ")
    assert isinstance(HealthCheckError("x"), ValueError)


def test_default_names_and_replacement() -> None:
    node = Service()

    def database() -> bool:
        return True

    assert node.register_health_check(database) == "database"
    assert node.register_health_check(functools.partial(database)) == "database"
    a = node.register_health_check(lambda: True)
    b = node.register_health_check(lambda: True)
    assert a != b and a.startswith("check_")
    assert node.health.names == ["database", a, b]


# -- metrics ----------------------------------------------------------------------------------


async def test_reports_are_recorded_in_metrics() -> None:
    node = Service()
    node.register_health_check(lambda: "degraded", name="cache")
    node.register_health_check(lambda: True, name="db")
    await node.health_check()
    snap = node.metrics.snapshot()
    assert snap["gauges"]["health_status"] == 0.6
    assert snap["gauges"]['health_check_status{check="cache"}'] == 0.6
    assert snap["gauges"]['health_check_status{check="db"}'] == 1.0
    assert snap["histograms"]['health_check_duration{check="db"}']["count"] == 1
    assert "health_status 0.6" in node.metrics.exposition()


async def test_a_broken_metrics_facility_does_not_break_reports() -> None:
    class Broken:
        def gauge(self, *a: Any, **k: Any) -> None:
            raise RuntimeError("metrics down")

    monitor = HealthMonitor(metrics=Broken())
    monitor.register(lambda: True, name="x")
    assert (await monitor.check())["status"] == "healthy"


# -- lifecycle --------------------------------------------------------------------------------


async def test_start_runs_a_first_report_and_refreshes_until_closed() -> None:
    node = Service(capability_config={"health_check": {"interval": 5}})
    ticks: asyncio.Queue[float] = asyncio.Queue()
    proceed = asyncio.Event()

    async def fake_sleep(seconds: float) -> None:
        await ticks.put(seconds)
        await proceed.wait()
        proceed.clear()

    node.health.sleep = fake_sleep
    calls = []
    node.register_health_check(lambda: calls.append(1) or True, name="x")
    async with node:
        assert len(calls) == 1  # start() ran a first report
        assert node.health.status is HealthStatus.HEALTHY
        assert await ticks.get() == 5
        proceed.set()
        assert await ticks.get() == 5  # one refresh ran between the two sleeps
        assert len(calls) == 2
        loop_task = node.health._loop_task
    assert loop_task is not None and loop_task.cancelled()
    await node.aclose()  # idempotent


async def wait_for(predicate: Any, seconds: float = 15.0) -> bool:
    """Poll ``predicate`` until it holds or ``seconds`` pass (generous: busy CI machines)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def test_a_started_node_is_unhealthy_when_its_check_fails_without_any_report_call(
        ) -> None:
    node = Service(capability_config={"health_check": {"interval": None}})
    node.register_health_check(lambda: False, name="db")
    assert node.is_healthy()  # never started: optimistic, as seed 000's compute() needs
    async with node:
        assert not node.is_healthy()
        assert node.health.status is HealthStatus.UNHEALTHY


async def test_a_check_registered_on_a_started_node_runs_at_once() -> None:
    # interval None: before, nothing ever ran the new check until health_check() was awaited
    node = Service(capability_config={"health_check": {"interval": None}})
    async with node:
        assert node.health.is_ready()
        node.register_health_check(lambda: "unhealthy", name="late")
        assert not node.health.is_ready()  # the new check has not run yet
        assert await wait_for(lambda: node.health.status is HealthStatus.UNHEALTHY)
        assert not node.is_healthy() and not node.health.is_ready()
        assert node.health.unregister("late")
        assert await wait_for(lambda: node.health.status is HealthStatus.HEALTHY)
        assert node.health.is_ready()


async def test_a_check_registered_from_another_thread_runs_on_the_started_loop() -> None:
    node = Service(capability_config={"health_check": {"interval": None}})
    async with node:
        await asyncio.to_thread(node.register_health_check, lambda: False, name="db")
        assert await wait_for(lambda: node.health.status is HealthStatus.UNHEALTHY)


async def test_started_checks_rerun_every_interval_by_themselves() -> None:
    node = Service(capability_config={"health_check": {"interval": 0.02}})
    state = {"ok": True}
    node.register_health_check(lambda: state["ok"], name="dep")
    async with node:
        assert node.health.status is HealthStatus.HEALTHY
        state["ok"] = False
        # polled through .status, which (unlike is_healthy()) schedules nothing itself
        assert await wait_for(lambda: node.health.status is HealthStatus.UNHEALTHY)
        state["ok"] = True
        assert await wait_for(lambda: node.health.status is HealthStatus.HEALTHY)


async def test_the_refresh_loop_survives_a_failing_run() -> None:
    node = Service(capability_config={"health_check": {"interval": 5}})
    ticks: asyncio.Queue[float] = asyncio.Queue()
    proceed = asyncio.Event()

    async def fake_sleep(seconds: float) -> None:
        await ticks.put(seconds)
        await proceed.wait()
        proceed.clear()

    node.health.sleep = fake_sleep
    node.register_health_check(lambda: True, name="x")
    async with node:
        monitor = node.health
        real_check = monitor.check
        broken = {"left": 1}

        async def flaky_check() -> dict[str, Any]:
            if broken["left"]:
                broken["left"] -= 1
                raise RuntimeError("report pipeline broke")
            return await real_check()

        monitor.check = flaky_check  # type: ignore[method-assign]
        await ticks.get()
        proceed.set()  # this run raises
        await ticks.get()  # ... and the loop slept again instead of dying
        assert monitor.is_live()
        proceed.set()
        await ticks.get()
        assert broken["left"] == 0 and monitor.is_live()


async def test_probes_before_start_while_started_and_after_close() -> None:
    node = Service(capability_config={"health_check": {"interval": 10}})
    node.register_health_check(lambda: "degraded", name="cache")
    health = node.health
    assert (health.is_live(), health.is_ready(), health.is_started()) == (True, False, False)
    assert node.is_healthy()
    await node.start()
    assert (health.is_live(), health.is_ready(), health.is_started()) == (True, True, True)
    assert health.status is HealthStatus.DEGRADED  # degraded is still ready
    await node.aclose()
    assert (health.is_live(), health.is_ready(), health.is_started()) == (True, False, False)


async def test_a_failing_check_makes_a_started_node_unready_but_still_live() -> None:
    node = Service()
    node.register_health_check(lambda: False, name="db")
    async with node:
        assert node.health.is_started() and node.health.is_live()
        assert not node.health.is_ready() and not node.is_healthy()


async def test_liveness_fails_when_the_refresh_stops_or_the_report_is_overdue() -> None:
    node = Service(capability_config={"health_check": {"interval": 10, "check_timeout": 1}})
    node.health.clock = clock = ManualClock()
    node.health.sleep = lambda seconds: asyncio.Event().wait()  # never wakes by itself
    node.register_health_check(lambda: True, name="x")
    async with node:
        health = node.health
        assert health.is_live()
        clock.advance(21)  # 2 * interval + the longest check timeout
        assert health.is_live()
        clock.advance(0.5)
        assert not health.is_live()  # the refresh is stuck: restart me
        await health.check()
        assert health.is_live()
        task = health._loop_task
        assert task is not None
        task.cancel()  # stopped without close() (the loop went away, a bug)
        assert await wait_for(task.done)
        assert not health.is_live() and health.is_started()


async def test_reconfiguring_a_started_node_keeps_it_started() -> None:
    node = Service(capability_config={"health_check": {"interval": 10}})
    node.register_health_check(lambda: True, name="x")
    async with node:
        old = node.health
        old_task = old._loop_task
        node.setup_health_check({"interval": 20})
        new = node.health
        assert new is not old and new.is_started() and new.is_ready()
        assert old_task is not None and await wait_for(old_task.done)
        assert await wait_for(lambda: new._loop_task is not None)
        assert new.is_live() and new.names == ["x"]
    assert not node.health.is_started()


def test_a_node_works_across_event_loops() -> None:
    node = Service()
    node.register_health_check(lambda: True, name="x")
    for _ in range(3):
        assert asyncio.run(node.health_check())["status"] == "healthy"

    async def serve() -> None:
        await node.start()
        await node.aclose()

    asyncio.run(serve())
    asyncio.run(serve())


async def test_reconfiguring_keeps_registered_checks() -> None:
    node = Service()
    node.register_health_check(lambda: "degraded", name="cache")
    node.setup_health_check({"check_timeout": 1.0})
    assert node.health.config.check_timeout == 1.0
    assert (await node.health_check())["checks"]["cache"]["status"] == "degraded"


# -- ready-made checks against the real servers -----------------------------------------------


@pytest.mark.redis
async def test_redis_check_against_the_real_server(redis_url: str) -> None:
    node = Service()
    assert node.register_health_check(redis_check(redis_url)) == "redis"
    result = (await node.health_check())["checks"]["redis"]
    assert result["status"] == "healthy", result
    assert result["details"]["latency_ms"] >= 0


async def test_redis_check_against_an_unreachable_port() -> None:
    url = f"redis://:hunter2@127.0.0.1:{unused_port()}/0"
    node = Service()
    node.register_health_check(redis_check(url, name="cache_redis"))
    report = await node.health_check()
    result = report["checks"]["cache_redis"]
    assert report["status"] == "unhealthy"
    assert "unreachable" in result["reason"] and "ConnectionError" in result["reason"]
    assert "hunter2" not in json.dumps(report) and ":***@127.0.0.1" in result["reason"]


@pytest.mark.postgres
async def test_postgres_check_against_the_real_server(postgres_dsn: str) -> None:
    node = Service()
    node.register_health_check(postgres_check(postgres_dsn))
    result = (await node.health_check())["checks"]["postgres"]
    assert result["status"] == "healthy", result
    assert result["reason"].startswith("SELECT 1 ok")


async def test_postgres_check_against_an_unreachable_port() -> None:
    dsn = f"postgresql://app:s3cret@127.0.0.1:{unused_port()}/test"
    node = Service()
    node.register_health_check(postgres_check(dsn, name="db"), timeout=5)
    report = await node.health_check()
    assert report["status"] == "unhealthy"
    assert "unreachable" in report["checks"]["db"]["reason"]
    assert "s3cret" not in json.dumps(report)


@pytest.mark.parametrize(("make", "module", "extra"), [
    (lambda: redis_check("redis://127.0.0.1:6379/0"), "redis", "redis"),
    (lambda: postgres_check("postgresql://app@127.0.0.1:5432/test"), "asyncpg", "postgres"),
])
def test_a_ready_made_check_without_its_client_is_a_setup_error(monkeypatch, make, module,
                                                                extra) -> None:
    # it used to register fine and then report the node unhealthy: "raised ModuleNotFoundError"
    import importlib.util

    from onex_compose import ConfigurationError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(ConfigurationError, match=rf"needs {module}.*pip install "
                                                 rf"'onex-compose\[{extra}\]'"):
        make()


# -- composition ------------------------------------------------------------------------------


def test_compose_pulls_in_metrics_and_answers_to_its_alias() -> None:
    assert Service.__composition__.capabilities == ("metrics", "health_check")
    assert compose(NodeCompute, ["health_monitoring"]) is compose(NodeCompute, ["health_check"])
    assert has_capability(Service, "health_monitoring")
    node = Service()
    assert isinstance(node, HealthCheckProtocol)
    assert isinstance(node.metrics, Metrics)
    assert node.health.metrics is node.metrics


def test_seed_composition_test() -> None:
    """Seed 000's composition test with the capabilities of this change (no caching yet)."""

    class CompositeService(NodeCompute, MixinMetrics, MixinHealthCheck):
        pass

    service = CompositeService(None)
    assert hasattr(service, "metrics")
    assert hasattr(service, "is_healthy")
    assert service.is_healthy()
    service.metrics.increment("cache_hits")
    assert service.metrics.snapshot()["counters"]["cache_hits"] == 1


def test_hand_written_class_gets_metrics_added() -> None:
    class Monitored(NodeEffect, MixinHealthCheck):
        pass

    assert Monitored.__composition__.capabilities == ("metrics", "health_check")
    assert isinstance(Monitored().metrics, Metrics)


async def test_seed_compute_raises_service_unavailable_when_unhealthy() -> None:
    class Robust(NodeCompute, MixinMetrics, MixinHealthCheck):
        async def compute(self, data: int) -> int:
            if not self.is_healthy():
                raise ServiceUnavailableError("Service unhealthy")
            with self.metrics.timer("compute_duration"):
                return data + 1

    node = Robust({"subcontracts": {"health_check": {"interval": 60}}})
    healthy = {"value": True}
    node.register_health_check(lambda: healthy["value"], name="dependency")
    await node.health_check()
    assert await node.compute(1) == 2
    healthy["value"] = False
    await node.health_check()
    with pytest.raises(ServiceUnavailableError, match="Service unhealthy"):
        await node.compute(1)


def test_facility_works_when_setup_never_ran() -> None:
    node = _without_setup(Service)  # setup never ran: the node builds the defaults
    node.register_health_check(lambda: "degraded", name="x")
    assert asyncio.run(node.health_check())["status"] == "degraded"


def test_nodes_pickle_and_checks_are_rebuilt_from_config() -> None:
    node = Service(capability_config={"health_check": {"check_timeout": 2}})
    node.register_health_check(lambda: True, name="x")
    copy = pickle.loads(pickle.dumps(node))
    assert copy.health.config.check_timeout == 2
    assert copy.health.names == []  # registrations are code, not configuration


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        HealthCheckConfig(check_timeout=0)
    with pytest.raises(ValueError, match="interval"):
        Service(capability_config={"health_check": {"intervall": 3}})
    assert SCORES[HealthStatus.DEGRADED] == 0.6


def test_contract_config_section_lists_exactly_the_model_defaults() -> None:
    data = yaml.safe_load((CONTRACTS_DIR / "mixin_health_check.yaml").read_text("utf-8"))
    assert data["health_check_config"] == HealthCheckConfig().model_dump()
    assert [d["name"] for d in data["requires_dependencies"]] == ["metrics"]
    try:
        from onex_compose._contracts import ModelMixinContract
    except ImportError:
        return
    contract = ModelMixinContract.model_validate(data)
    assert contract.capability == "health_check"


def test_docstring_examples_run() -> None:
    import doctest

    import onex_compose.capabilities.health_check as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 10
    assert result.failed == 0


def _without_setup(cls):  # type: ignore[no-untyped-def]
    """An instance whose setup hooks never ran (a user _initialize_mixins that does nothing)."""

    class Bare(cls):  # type: ignore[misc, valid-type]
        def _initialize_mixins(self, contract=None, capability_config=None):  # type: ignore[no-untyped-def]
            return None

    return Bare()
