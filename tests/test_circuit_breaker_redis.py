"""circuit_breaker on Redis: one state for every process, the same decisions as in-process.

Runs against the real Redis server (``redis_url`` fixture; each test has its own key prefix,
deleted afterwards) and, for outages, a private ``redis-server`` that the test stops.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onex_compose import NodeCompute, compose
from onex_compose.capabilities._context import ManualClock
from onex_compose.capabilities.circuit_breaker import (
    BreakerPolicy,
    CircuitBreaker,
    CircuitBreakerUsageError,
    CircuitOpenError,
    CircuitState,
    RedisCircuitBreaker,
)

pytestmark = pytest.mark.redis

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN

POLICIES = {
    "consecutive": {"failure_threshold": 3, "reset_timeout": 5, "half_open_max_calls": 2,
                    "half_open_max_wait": 8, "ignore_exceptions": ["KeyError"],
                    "slow_call_duration": 0.5},
    "rate-count": {"mode": "rate", "window_size": 6, "minimum_calls": 4,
                   "failure_rate_threshold": 50, "reset_timeout": 5, "half_open_max_calls": 3,
                   "ignore_exceptions": ["KeyError"], "slow_call_duration": 0.5,
                   "slow_call_rate_threshold": 75},
    "rate-time": {"mode": "rate", "window_type": "time", "window_size": 5, "minimum_calls": 3,
                  "failure_rate_threshold": 60, "reset_timeout": 4, "half_open_max_calls": 2,
                  "slow_call_duration": 0.5, "slow_call_rate_threshold": 50,
                  "ignore_exceptions": ["KeyError"]},
    "rate-time-idle": {"mode": "rate", "window_type": "time", "window_size": 3,
                       "minimum_calls": 2, "failure_rate_threshold": 50, "reset_timeout": 2,
                       "slow_call_duration": 0.5, "slow_call_rate_threshold": 100},
}

steps = st.lists(st.tuples(st.sampled_from(["ok", "fail", "ignored", "slow", "slowfail"]),
                           st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 3.0, 5.0, 7.0, 12.0])),
                 min_size=1, max_size=40)


def run_step(breaker, clock: ManualClock, op: str):
    def body():
        if op in ("slow", "slowfail"):
            clock.advance(0.75)
        if op in ("fail", "slowfail"):
            raise ConnectionError("down")
        if op == "ignored":
            raise KeyError("neutral")
        return "ok"

    try:
        return breaker.call(body)
    except CircuitOpenError as err:
        return ("rejected", err.state, err.reason, round(err.retry_after, 9))
    except (ConnectionError, KeyError) as err:
        return type(err).__name__


def observe(breaker) -> tuple:
    status = breaker.status()
    return (status.state, status.failure_count, status.calls, round(status.failure_rate, 9),
            round(status.retry_after, 9), status.slow_call_count,
            round(status.slow_call_rate, 9), status.last_slow_call_time is None,
            status.last_failure_time is None)


@pytest.mark.parametrize("policy_name", sorted(POLICIES))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps)
def test_redis_and_in_process_breakers_agree_on_any_script(redis_url, redis_prefix, policy_name,
                                                           script):
    policy = BreakerPolicy(**POLICIES[policy_name])
    clock_m, clock_r = ManualClock(1000.0), ManualClock(1000.0)
    memory = CircuitBreaker("agree", policy, clock=clock_m)
    shared = RedisCircuitBreaker(f"agree-{uuid.uuid4().hex}", policy, url=redis_url,
                                 namespace=redis_prefix, clock=clock_r)
    for op, dt in script:
        clock_m.advance(dt)
        clock_r.advance(dt)
        got_m = run_step(memory, clock_m, op)
        got_r = run_step(shared, clock_r, op)
        assert got_r == got_m, (op, dt)
        assert observe(shared) == observe(memory), (op, dt)


async def test_async_calls_agree_on_a_scripted_sequence(redis_url, redis_prefix):
    policy = BreakerPolicy(failure_threshold=2, reset_timeout=3, half_open_max_calls=1)
    clocks = ManualClock(), ManualClock()
    breakers = (CircuitBreaker("s", policy, clock=clocks[0]),
                RedisCircuitBreaker("s", policy, url=redis_url, namespace=redis_prefix,
                                    clock=clocks[1]))
    script = [("fail", 0), ("ok", 1), ("fail", 0), ("fail", 0), ("ok", 1), ("ok", 2),
              ("fail", 0), ("ok", 3), ("ok", 0), ("fail", 0), ("fail", 0)]
    traces: list[list] = [[], []]
    for i, breaker in enumerate(breakers):
        for op, dt in script:
            clocks[i].advance(dt)

            async def body(op=op):
                if op == "fail":
                    raise ConnectionError("down")
                return "ok"

            try:
                traces[i].append(await breaker.acall(body))
            except CircuitOpenError as err:
                traces[i].append(("rejected", err.retry_after))
            except ConnectionError:
                traces[i].append("failed")
            traces[i].append((await breaker.astatus()).state)
    assert traces[0] == traces[1]
    assert traces[1][-1] is OPEN
    assert ("rejected", 2.0) in traces[1]


# ------------------------------------------------------------------------------------------------
# one circuit for every process


def test_two_processes_share_one_circuit(redis_url, redis_prefix):
    clock = ManualClock()
    policy = BreakerPolicy(failure_threshold=3, reset_timeout=10)
    a = RedisCircuitBreaker("payments", policy, url=redis_url, namespace=redis_prefix,
                            clock=clock)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            a.call(_boom)
    # a breaker created later (another worker starting) sees the count and does not reset it
    b = RedisCircuitBreaker("payments", policy, url=redis_url, namespace=redis_prefix,
                            clock=clock)
    assert b.status().failure_count == 2
    with pytest.raises(ConnectionError):
        b.call(_boom)
    with pytest.raises(CircuitOpenError) as info:
        a.call(lambda: "never")
    assert info.value.name == "payments" and info.value.retry_after == 10.0
    # another name is another circuit (pybreaker#88: unnamed breakers silently shared state)
    other = RedisCircuitBreaker("search", policy, url=redis_url, namespace=redis_prefix,
                                clock=clock)
    assert other.call(lambda: "ok") == "ok"


async def test_half_open_across_processes_admits_exactly_the_probes(redis_url, redis_prefix):
    clock = ManualClock()
    policy = BreakerPolicy(failure_threshold=1, reset_timeout=5, half_open_max_calls=3)
    workers = [RedisCircuitBreaker("inventory", policy, url=redis_url, namespace=redis_prefix,
                                   clock=clock) for _ in range(4)]
    with pytest.raises(ConnectionError):
        await workers[0].acall(_aboom)
    clock.advance(5)
    release = asyncio.Event()
    ran = 0

    async def probe():
        nonlocal ran
        ran += 1
        await release.wait()
        return "ok"

    tasks = [asyncio.create_task(workers[i % 4].acall(probe)) for i in range(100)]
    while sum(t.done() for t in tasks) < 97:
        await asyncio.sleep(0.005)
    assert ran == 3
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results.count("ok") == 3
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 97
    assert (await workers[3].astatus()).state is CLOSED


def test_reading_the_state_never_changes_it(redis_url, redis_prefix):
    clock = ManualClock()
    breaker = RedisCircuitBreaker("ro", BreakerPolicy(failure_threshold=1, reset_timeout=1),
                                  url=redis_url, namespace=redis_prefix, clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(_boom)
    clock.advance(60)
    client = redis.Redis.from_url(redis_url)
    before = client.hgetall(breaker.keys[0])
    status = breaker.status()
    assert status.state is OPEN and status.retry_after == 0.0
    assert client.hgetall(breaker.keys[0]) == before  # pybreaker#24 rewrote opened_at on read
    client.close()


def test_server_time_is_the_default_clock(redis_url, redis_prefix):
    breaker = RedisCircuitBreaker("srv", BreakerPolicy(failure_threshold=1, reset_timeout=300),
                                  url=redis_url, namespace=redis_prefix)
    with pytest.raises(ConnectionError):
        breaker.call(_boom)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: 1)
    assert 295 < info.value.retry_after <= 300
    status = breaker.status()
    assert status.last_failure_time is not None and status.state is OPEN


def test_manual_control_is_shared(redis_url, redis_prefix):
    a = RedisCircuitBreaker("m", url=redis_url, namespace=redis_prefix, clock=ManualClock())
    b = RedisCircuitBreaker("m", url=redis_url, namespace=redis_prefix, clock=ManualClock())
    a.open()
    with pytest.raises(CircuitOpenError):
        b.call(lambda: 1)
    b.close()
    assert a.call(lambda: "ok") == "ok"


async def test_composed_node_with_the_redis_backend(redis_url, redis_prefix):
    cls = compose(NodeCompute, ["circuit_breaker"])

    class Worker(cls):
        async def process(self, item):
            raise ConnectionError(item)

    config = {"circuit_breaker": {"backend": "redis", "redis_url": redis_url,
                                  "namespace": redis_prefix, "failure_threshold": 2}}
    one, two = Worker(capability_config=config), Worker(capability_config=config)
    for node in (one, two):
        with pytest.raises(ConnectionError):
            await node.process("x")
    with pytest.raises(CircuitOpenError):
        await one.process("x")
    report = await two.health_check()
    assert report["checks"]["circuit_breaker"]["details"]["breakers"] == {"process": "open"}


# ------------------------------------------------------------------------------------------------
# when Redis is down


def _outage_breaker(url: str, policy: str, clock: ManualClock) -> RedisCircuitBreaker:
    return RedisCircuitBreaker("dep", BreakerPolicy(failure_threshold=2, reset_timeout=30),
                               url=url, namespace="outage", clock=clock,
                               on_backend_error=policy, backend_retry_interval=5)


def test_outage_local_policy_falls_back_to_an_in_process_breaker(private_redis):
    clock = ManualClock()
    breaker = _outage_breaker(private_redis.url, "local", clock)
    assert breaker.call(lambda: "ok") == "ok"
    private_redis.stop()
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(_boom)  # recorded by the local stand-in
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: "never")
    private_redis.start()
    clock.advance(5)  # the back-off window is over: Redis is asked again
    for _ in range(3):  # the pool may need one failed command to notice the restart
        try:
            result = breaker.call(lambda: "ok")
        except CircuitOpenError:
            clock.advance(5)
            continue
        break
    assert result == "ok" and breaker._outage.down_until is None


def test_outage_allow_policy_runs_calls_unguarded(private_redis):
    breaker = _outage_breaker(private_redis.url, "allow", ManualClock())
    private_redis.stop()
    for _ in range(5):
        with pytest.raises(ConnectionError):
            breaker.call(_boom)
    assert breaker.call(lambda: "still called") == "still called"


async def test_outage_deny_policy_rejects(private_redis):
    breaker = _outage_breaker(private_redis.url, "deny", ManualClock())
    assert await breaker.acall(_aok) == "ok"
    private_redis.stop()
    with pytest.raises(CircuitOpenError) as info:
        await breaker.acall(_aok)
    assert info.value.reason == "backend_unavailable" and info.value.retry_after == 5.0
    with pytest.raises(CircuitOpenError):
        await breaker.acall(_aok)


def _boom():
    raise ConnectionError("down")


async def _aboom():
    raise ConnectionError("down")


async def _aok():
    return "ok"


def test_a_long_quiet_period_restarts_a_large_time_window_in_constant_work(redis_url,
                                                                           redis_prefix):
    # issue 9: the script cleared every expired bucket (HMGET + HDEL each), blocking Redis for
    # 221 ms at the largest window; now the window restarts at once
    client = redis.Redis.from_url(redis_url)

    def bucket_commands() -> int:
        stats = client.info("commandstats")
        return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("hdel", "hmget"))

    clock = ManualClock(1000.0)
    policy = BreakerPolicy(mode="rate", window_type="time", window_size=100_000, minimum_calls=3,
                           failure_rate_threshold=50)
    breaker = RedisCircuitBreaker("idle", policy, url=redis_url, namespace=redis_prefix,
                                  clock=clock)
    memory = CircuitBreaker("idle", policy, clock=ManualClock(1000.0))
    for b in (breaker, memory):
        with pytest.raises(ConnectionError):
            b.call(run_fail)
        b.call(lambda: "ok")
        b.clock.advance(250_000)  # type: ignore[attr-defined]
    assert observe(breaker) == observe(memory)
    before = bucket_commands()
    with pytest.raises(ConnectionError):
        breaker.call(run_fail)
    assert bucket_commands() - before < 1000  # was > 200,000 (two per bucket)
    with pytest.raises(ConnectionError):
        memory.call(run_fail)
    status = breaker.status()
    assert (status.calls, status.failure_count) == (1, 1)
    assert observe(breaker) == observe(memory)
    for b in (breaker, memory):
        b.call(lambda: "ok")
        b.call(lambda: "ok")
    assert breaker.state is CLOSED and observe(breaker) == observe(memory)
    client.close()


def run_fail():
    raise ConnectionError("down")


def test_slow_calls_are_reported_apart_from_failures_on_redis(redis_url, redis_prefix):
    clock = ManualClock(1000.0)
    breaker = RedisCircuitBreaker("slow", {"failure_threshold": 2, "slow_call_duration": 1.0},
                                  url=redis_url, namespace=redis_prefix, clock=clock)

    def slow():
        clock.advance(1.5)
        return "late"

    assert breaker.call(slow) == "late"
    status = breaker.status()
    assert (status.failure_count, status.last_failure_time) == (0, None)  # was 1 and a time
    assert status.slow_call_count == 1 and status.last_slow_call_time is not None
    breaker.call(slow)
    assert breaker.status().state is OPEN


def test_redis_call_with_an_async_function_is_a_clear_error(redis_url, redis_prefix):
    breaker = RedisCircuitBreaker("misuse", {"failure_threshold": 1, "mode": "rate",
                                             "minimum_calls": 1, "window_size": 5},
                                  url=redis_url, namespace=redis_prefix)

    async def fetch():
        return 1

    with pytest.raises(CircuitBreakerUsageError, match="acall"):
        breaker.call(fetch)
    assert breaker.status().calls == 0


class SyncNode(NodeCompute):
    def process(self, x: int) -> int:  # type: ignore[override]
        if x < 0:
            raise ConnectionError("down")
        return x * 10


def test_a_sync_process_is_guarded_by_the_shared_redis_breaker(redis_url, redis_prefix):
    Node = compose(SyncNode, ["circuit_breaker"])
    cfg = {"circuit_breaker": {"backend": "redis", "redis_url": redis_url,
                               "namespace": redis_prefix, "failure_threshold": 2}}
    a, b = Node(capability_config=cfg), Node(capability_config=cfg)
    assert a.process(1) == 10  # a plain value, no event loop
    with pytest.raises(ConnectionError):
        a.process(-1)
    with pytest.raises(ConnectionError):
        b.process(-1)  # another node, same shared circuit
    with pytest.raises(CircuitOpenError):
        a.process(1)
