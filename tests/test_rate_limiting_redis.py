"""rate_limiting on Redis: one limit per key for every process, the same decisions as in-process.

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
from onex_compose.capabilities.metrics import Metrics
from onex_compose.capabilities.rate_limiting import RateLimiter, RateLimitExceededError

pytestmark = pytest.mark.redis


def redis_limiter(url: str, namespace: str, clock: ManualClock, **config) -> RateLimiter:
    return RateLimiter({"backend": "redis", "redis_url": url, "namespace": namespace,
                        **config}).use_clock(clock)


requests = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 3),
                              st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.3, 1.0]),
                              st.sampled_from(["hit", "check"])),
                    min_size=1, max_size=60)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(1, 20), period=st.sampled_from([0.1, 1.0, 3.0]),
       burst=st.integers(3, 10), script=requests)
def test_redis_and_in_process_limiters_agree_on_any_script(redis_url, redis_prefix, limit,
                                                           period, burst, script):
    config = {"limit": limit, "period": period, "burst": burst}
    clock_m, clock_r = ManualClock(500.0), ManualClock(500.0)
    memory = RateLimiter(config).use_clock(clock_m)
    shared = redis_limiter(redis_url, f"{redis_prefix}:{uuid.uuid4().hex}", clock_r, **config)
    for key, cost, dt, op in script:
        clock_m.advance(dt)
        clock_r.advance(dt)
        if op == "hit":
            assert shared.hit(key, cost) == memory.hit(key, cost), (key, cost, dt)
        else:
            assert shared.check(key, cost) == memory.check(key, cost), (key, cost, dt)


async def test_async_wait_mode_agrees_and_reserves(redis_url, redis_prefix):
    config = {"limit": 4, "period": 1.0, "burst": 2, "mode": "wait", "max_wait": 1.0}
    clocks = ManualClock(), ManualClock()
    limiters = RateLimiter(config).use_clock(clocks[0]), redis_limiter(
        redis_url, redis_prefix, clocks[1], **config)
    traces: list[list] = [[], []]
    for i, lim in enumerate(limiters):
        for _ in range(8):
            try:
                traces[i].append(round(await lim.acquire("job", cost=2), 9))
            except RateLimitExceededError as err:
                traces[i].append(("rejected", err.reason, round(err.retry_after, 9)))
    assert traces[0] == traces[1]
    assert traces[1][:3] == [0.0, 0.5, 0.5]


def test_processes_share_one_limit_per_key(redis_url, redis_prefix):
    clock = ManualClock(100.0)
    workers = [redis_limiter(redis_url, redis_prefix, clock, limit=10, period=60)
               for _ in range(3)]
    admitted = sum(w.hit("tenant-1") for _ in range(10) for w in workers)
    assert admitted == 10
    assert workers[0].hit("tenant-2")  # another key, another budget


async def test_concurrent_async_callers_never_exceed_the_burst(redis_url, redis_prefix):
    lim = RateLimiter({"backend": "redis", "redis_url": redis_url, "namespace": redis_prefix,
                       "limit": 25, "period": 3600})
    results = await asyncio.gather(*(lim.ahit("hot") for _ in range(200)))
    assert sum(results) == 25  # server TIME, 200 concurrent scripts: exactly the burst


def test_keys_expire_when_idle_and_server_time_is_the_default(redis_url, redis_prefix):
    lim = RateLimiter({"backend": "redis", "redis_url": redis_url, "namespace": redis_prefix,
                       "limit": 2, "period": 10})
    assert lim.hit("k") and lim.hit("k") and not lim.hit("k")
    decision = lim.check("k")
    assert 4.9 < decision.retry_after <= 5.0
    ttl = redis.Redis.from_url(redis_url).pttl(f"{redis_prefix}:rate_limit:k")
    assert 0 < ttl <= 10_001  # the key disappears once its state equals "idle"


def test_reset_forgets_a_key(redis_url, redis_prefix):
    lim = redis_limiter(redis_url, redis_prefix, ManualClock(), limit=1, period=60)
    assert lim.hit("k") and not lim.hit("k")
    lim.reset("k")
    assert lim.hit("k")


async def test_composed_nodes_share_the_limit(redis_url, redis_prefix):
    class Api(compose(NodeCompute, ["rate_limiting"])):
        async def process(self, item):
            return item

    config = {"rate_limiting": {"backend": "redis", "redis_url": redis_url,
                                "namespace": redis_prefix, "limit": 3, "period": 3600}}
    one, two = Api(capability_config=config), Api(capability_config=config)
    served = 0
    for node in (one, two, one, two, one):
        try:
            await node.process("x")
            served += 1
        except RateLimitExceededError:
            pass
    assert served == 3


# ------------------------------------------------------------------------------------------------
# when Redis is down


def outage_limiter(url: str, policy: str, clock: ManualClock, metrics=None) -> RateLimiter:
    return RateLimiter({"backend": "redis", "redis_url": url, "namespace": "outage",
                        "limit": 2, "period": 60, "on_backend_error": policy,
                        "backend_retry_interval": 5}, metrics=metrics).use_clock(clock)


def test_outage_local_policy_keeps_limiting_in_process(private_redis):
    clock = ManualClock(1000.0)
    metrics = Metrics()
    lim = outage_limiter(private_redis.url, "local", clock, metrics)
    assert lim.hit("k")
    private_redis.stop()
    assert [lim.hit("k") for _ in range(3)] == [True, True, False]  # degraded, still limited
    snap = metrics.snapshot()["counters"]
    assert snap['rate_limit_backend_errors_total{fallback="local"}'] == 1  # retried after 5 s
    private_redis.start()
    clock.advance(5)
    for _ in range(3):  # the pool may need one failed command to notice the restart
        lim.hit("fresh")
        if lim._outage.down_until is None:
            break
        clock.advance(5)
    assert lim._outage.down_until is None
    assert redis.Redis.from_url(private_redis.url).exists("outage:rate_limit:fresh")


def test_outage_allow_policy_fails_open(private_redis):
    lim = outage_limiter(private_redis.url, "allow", ManualClock())
    private_redis.stop()
    assert all(lim.hit("k") for _ in range(10))


async def test_outage_deny_policy_fails_closed(private_redis):
    lim = outage_limiter(private_redis.url, "deny", ManualClock())
    assert await lim.ahit("k")
    private_redis.stop()
    with pytest.raises(RateLimitExceededError) as info:
        await lim.acquire("k")
    assert info.value.reason == "backend_unavailable" and info.value.retry_after == 5.0
    with pytest.raises(RateLimitExceededError):
        lim.hit("k")


async def test_a_non_string_key_is_the_same_clear_error_as_in_process(redis_url, redis_prefix):
    shared = redis_limiter(redis_url, redis_prefix, ManualClock(500.0))
    for call in (lambda: shared.hit(7), lambda: shared.check(7), lambda: shared.reset(7)):
        with pytest.raises(TypeError, match="rate limiter keys are strings, got 7"):
            call()
    for acall in (shared.ahit, shared.acquire, shared.areset):
        with pytest.raises(TypeError, match="rate limiter keys are strings, got 7"):
            await acall(7)
    assert shared.hit("7")


class SyncNode(NodeCompute):
    def process(self, x: int) -> int:  # type: ignore[override]
        return x * 10


def test_a_sync_process_shares_the_redis_limit_without_an_event_loop(redis_url, redis_prefix):
    Node = compose(SyncNode, ["rate_limiting"])
    cfg = {"rate_limiting": {"backend": "redis", "redis_url": redis_url,
                             "namespace": redis_prefix, "limit": 2, "period": 60.0}}
    a, b = Node(capability_config=cfg), Node(capability_config=cfg)
    assert a.process(1) == 10 and b.process(2) == 20  # plain values; one shared budget
    with pytest.raises(RateLimitExceededError):
        a.process(3)
