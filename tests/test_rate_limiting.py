"""rate_limiting: the GCRA limiter alone (exactness, no boundary bursts, modes) and composed.

Every timing test runs on a ManualClock: nothing sleeps.
"""

from __future__ import annotations

import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onex_compose import ConfigurationError, NodeCompute, OnexError, compose
from onex_compose.capabilities import _context
from onex_compose.capabilities._context import ManualClock
from onex_compose.capabilities.metrics import Metrics
from onex_compose.capabilities.rate_limiting import (
    Limit,
    MixinRateLimiting,
    RateLimiter,
    RateLimitExceededError,
    RateLimitingConfig,
)


def limiter(clock: ManualClock | None = None, **config) -> RateLimiter:
    return RateLimiter(config).use_clock(clock or ManualClock())


# ------------------------------------------------------------------------------------------------
# GCRA semantics


def test_an_idle_key_spends_its_burst_then_refills_at_the_rate():
    clock = ManualClock()
    lim = limiter(clock, limit=10, period=1.0, burst=3)
    assert [lim.hit("k") for _ in range(4)] == [True, True, True, False]
    assert lim.check("k").retry_after == pytest.approx(0.1)
    clock.advance(0.1)
    assert lim.hit("k") and not lim.hit("k")
    clock.advance(10)
    assert lim.check("k").remaining == 3


def test_default_burst_is_the_limit():
    lim = limiter(limit=5)
    assert lim.default_limit == Limit(5, 1.0, 5)
    assert sum(lim.hit() for _ in range(10)) == 5


def test_cost_spends_several_units_and_an_impossible_cost_is_an_error():
    clock = ManualClock()
    lim = limiter(clock, limit=10, burst=10)
    assert lim.hit("k", cost=7)
    assert not lim.hit("k", cost=4)  # nothing spent by a rejected request
    assert lim.hit("k", cost=3)
    assert lim.check("k").remaining == 0
    with pytest.raises(ValueError, match="cost 11 exceeds the burst of 10"):
        lim.hit("k", cost=11)
    with pytest.raises(ValueError, match="positive integer"):
        lim.hit("k", cost=0)


def test_keys_are_independent_and_can_have_their_own_limits():
    lim = limiter(limit=2, keys={"vip": {"limit": 5}})
    assert sum(lim.hit("alice") for _ in range(10)) == 2
    assert sum(lim.hit("bob") for _ in range(10)) == 2
    assert sum(lim.hit("vip") for _ in range(10)) == 5
    assert lim.limit_for("vip") == Limit(5, 1.0, 5)


def test_check_is_a_peek():
    clock = ManualClock()
    lim = limiter(clock, limit=4, period=2.0)
    lim.hit("k", cost=3)
    decision = lim.check("k", cost=2)
    assert (decision.allowed, decision.remaining) == (False, 1)
    assert decision.retry_after == pytest.approx(0.5)
    assert decision.reset_after == pytest.approx(1.5)
    assert lim.check("k", cost=1).allowed and lim.hit("k")  # the peeks spent nothing


@settings(max_examples=80, deadline=None)
@given(limit=st.integers(1, 50), period=st.sampled_from([0.1, 1.0, 2.5, 60.0]),
       burst=st.integers(1, 50), gaps=st.lists(st.floats(0, 0.2), min_size=200, max_size=400),
       costs=st.lists(st.integers(1, 3), min_size=1, max_size=10))
def test_never_more_than_burst_plus_rate_in_any_interval(limit, period, burst, gaps, costs):
    """No window boundary exists: over any interval of length t at most burst + t * rate units
    are admitted (a fixed window admits 2x the limit in an instant around its boundary)."""
    burst = max(burst, max(costs))
    clock = ManualClock()
    lim = limiter(clock, limit=limit, period=period, burst=burst)
    admitted: list[tuple[float, int]] = []
    for i, gap in enumerate(gaps):
        clock.advance(gap * period)
        cost = costs[i % len(costs)]
        if lim.hit("k", cost):
            admitted.append((clock(), cost))
    rate = limit / period
    for i in range(len(admitted)):
        total = 0
        for j in range(i, len(admitted)):
            total += admitted[j][1]
            span = admitted[j][0] - admitted[i][0]
            assert total <= burst + span * rate + 1e-6, (i, j, total, span)


@settings(max_examples=30, deadline=None)
@given(limit=st.integers(1, 200), period=st.sampled_from([0.5, 1.0, 10.0]),
       burst=st.integers(2, 20), per_step=st.integers(2, 6), seed=st.integers(0, 2**32 - 1))
def test_long_run_admits_within_one_percent_of_the_rate(limit, period, burst, per_step, seed):
    """Callers saturating a key get exactly the configured rate over a long simulated run.

    (Arrivals come several times per emission interval, so the demand always exceeds the rate;
    with burst >= 2 the bucket absorbs the jitter of the arrival times.)
    """
    import random

    rng = random.Random(seed)
    clock = ManualClock()
    lim = limiter(clock, limit=limit, period=period, burst=burst)
    periods = max(50, 20_000 // limit)
    t_end = periods * period
    step = period / limit / per_step
    admitted = 0
    while clock() < t_end:
        clock.advance(step * rng.uniform(0.5, 1.5))
        admitted += lim.hit("k")
    expected = limit * periods
    assert abs(admitted - expected) <= 0.01 * expected


def test_strict_spacing_with_burst_one():
    clock = ManualClock()
    lim = limiter(clock, limit=10, period=1.0, burst=1)
    admitted = []
    for i in range(1000):  # a caller every 10 ms for 10 s
        clock.now = i * 0.01
        if lim.hit():
            admitted.append(round(clock(), 6))
    assert len(admitted) == 100
    gaps = {round(b - a, 6) for a, b in zip(admitted, admitted[1:], strict=False)}
    assert gaps == {0.1}


def test_no_burst_across_what_would_be_a_fixed_window_boundary():
    clock = ManualClock(0.999)  # just before a "second" boundary
    lim = limiter(clock, limit=100, period=1.0, burst=100)
    assert sum(lim.hit() for _ in range(300)) == 100
    clock.advance(0.002)  # just after it: a fixed window would admit another 100 here
    assert sum(lim.hit() for _ in range(300)) == 0


def test_threads_never_lose_an_update():
    lim = limiter(limit=1000, burst=500)  # the manual clock never moves

    def hammer(_):
        return sum(lim.hit("shared") for _ in range(200))

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sum(pool.map(hammer, range(8))) == 500


def test_expired_keys_are_swept():
    clock = ManualClock()
    lim = limiter(clock, limit=10)
    for i in range(5000):
        lim.hit(f"old-{i}")
    clock.advance(10)  # every old key is back to a full burst: its entry carries nothing
    for i in range(5000):
        lim.hit(f"new-{i}")
    store = lim._local.tat
    assert not any(k.startswith("old-") for k in store) and len(store) <= 5000


# ------------------------------------------------------------------------------------------------
# reject and wait


async def test_reject_mode_raises_with_retry_after():
    clock = ManualClock()
    metrics = Metrics()
    lim = RateLimiter({"limit": 2, "period": 1.0}, metrics=metrics).use_clock(clock)
    assert await lim.acquire("k") == 0.0
    await lim.acquire("k")
    with pytest.raises(RateLimitExceededError) as info:
        await lim.acquire("k")
    err = info.value
    assert (err.key, err.retry_after, err.cost, err.reason) == ("k", 0.5, 1, "limited")
    assert isinstance(err, OnexError) and isinstance(err, RuntimeError)
    assert err.onex_retriable is False
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.key, clone.retry_after, clone.limit) == ("k", 0.5, Limit(2, 1.0, 2))
    assert metrics.snapshot()["counters"]['rate_limit_rejected_total{policy="default"}'] == 1


async def test_wait_mode_reserves_slots_in_arrival_order():
    clock = ManualClock()
    lim = limiter(clock, limit=4, period=1.0, burst=1, mode="wait", max_wait=2.0)
    waits = []
    for _ in range(4):
        waits.append(await lim.acquire("k"))
    assert waits == [0.0, 0.25, 0.25, 0.25]  # each waiter slept until its own slot
    assert clock.sleeps == [0.25, 0.25, 0.25]
    assert clock() == pytest.approx(0.75)


async def test_wait_mode_rejects_at_once_beyond_max_wait_without_reserving():
    clock = ManualClock()
    lim = limiter(clock, limit=1, period=1.0, burst=1, mode="wait", max_wait=1.5)
    slept = []

    async def record_only(seconds):  # concurrent callers: time does not move while they queue
        slept.append(seconds)

    lim.sleep = record_only
    assert await lim.acquire("k") == 0.0
    assert await lim.acquire("k") == 1.0  # reserved the slot at t=1
    with pytest.raises(RateLimitExceededError) as info:
        await lim.acquire("k")  # its slot would be at t=2: a 2 s wait > max_wait
    assert (info.value.reason, info.value.retry_after) == ("wait_too_long", 2.0)
    clock.advance(1.0)
    assert await lim.acquire("k") == 1.0  # the refused request reserved nothing
    assert slept == [1.0, 1.0]


async def test_wait_mode_respects_the_current_deadline():
    clock = ManualClock()
    lim = limiter(clock, limit=1, period=10.0, burst=1, mode="wait", max_wait=None)
    await lim.acquire("k")
    token = _context.deadline.set(clock() + 3.0)
    try:
        with pytest.raises(RateLimitExceededError) as info:
            await lim.acquire("k")  # would wait 10 s, the deadline is 3 s away
    finally:
        _context.deadline.reset(token)
    assert info.value.reason == "wait_too_long" and info.value.retry_after == 10.0
    assert clock.sleeps == []
    assert await lim.acquire("k") == 10.0  # nothing was reserved by the refused request


def test_acquire_sync_waits_with_the_injected_sleep():
    clock = ManualClock()
    lim = limiter(clock, limit=2, period=1.0, burst=1, mode="wait")
    assert lim.acquire_sync("k") == 0.0
    assert lim.acquire_sync("k") == 0.5
    assert clock.sleeps == [0.5]


async def test_decorator_limits_an_async_function():
    lim = limiter(limit=1)

    @lim.limited("search")
    async def search(q):
        return q

    assert await search("a") == "a"
    with pytest.raises(RateLimitExceededError):
        await search("b")


# ------------------------------------------------------------------------------------------------
# configuration and the composed node


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="guard_cost=5 exceeds burst=2"):
        RateLimitingConfig(limit=2, guard_cost=5)
    cls = compose(NodeCompute, ["rate_limiting"])
    with pytest.raises(ConfigurationError, match="did you mean 'limit'"):
        cls(capability_config={"rate_limiting": {"limt": 5}})
    with pytest.raises(ConfigurationError, match="period"):
        cls(capability_config={"rate_limiting": {"period": 0}})


def test_contract_config_section_matches_the_model():
    import yaml

    from onex_compose.capabilities import CONTRACTS_DIR

    data = yaml.safe_load((CONTRACTS_DIR / "mixin_rate_limiting.yaml").read_text())
    assert data["rate_limiting_config"] == RateLimitingConfig().model_dump()


class Api(compose(NodeCompute, ["rate_limiting"])):
    async def process(self, request):
        return f"served {request['user']}"


async def test_process_is_rate_limited():
    node = Api(capability_config={"rate_limiting": {"limit": 2, "period": 60}})
    node.rate_limiter.use_clock(ManualClock())
    assert await node.process({"user": "a"}) == "served a"
    await node.process({"user": "b"})
    with pytest.raises(RateLimitExceededError) as info:
        await node.process({"user": "c"})
    assert info.value.key == "process" and info.value.retry_after == 30.0


async def test_key_func_limits_each_caller_separately():
    node = Api(capability_config={"rate_limiting": {"limit": 1, "period": 60}})
    node.rate_limiter.use_clock(ManualClock())
    node.rate_limiter.key_func = lambda request: f"user:{request['user']}"
    await node.process({"user": "a"})
    await node.process({"user": "b"})
    with pytest.raises(RateLimitExceededError) as info:
        await node.process({"user": "a"})
    assert info.value.key == "user:a"


async def test_guard_can_be_switched_off():
    node = Api(capability_config={"rate_limiting": {"limit": 1, "guard_process": False}})
    for _ in range(5):
        await node.process({"user": "a"})


def test_hand_written_class_and_reconfiguration_keep_the_injected_clock():
    class Service(NodeCompute, MixinRateLimiting):
        pass

    node = Service()
    clock = ManualClock()
    node.rate_limiter.use_clock(clock)
    node.setup_rate_limiting({"limit": 1, "period": 4})
    assert node.rate_limiter.clock is clock
    assert node.rate_limiter.hit("k") and not node.rate_limiter.hit("k")
    assert node.rate_limiter.check("k").retry_after == 4.0


def test_hit_from_many_threads_on_a_composed_node():
    node = Api(capability_config={"rate_limiting": {"limit": 50, "period": 3600}})
    node.rate_limiter.use_clock(ManualClock())
    barrier = threading.Barrier(4)

    def worker(_):
        barrier.wait()
        return sum(node.rate_limiter.hit("x") for _ in range(100))

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert sum(pool.map(worker, range(4))) == 50


def test_a_composed_node_pickles_and_rebuilds_its_limiter():
    import pickle

    node = compose(NodeCompute, ["rate_limiting"])(
        capability_config={"rate_limiting": {"limit": 3, "period": 60}})
    node.rate_limiter.hit("k")
    clone = pickle.loads(pickle.dumps(node))
    assert clone.rate_limiter.default_limit == Limit(3, 60.0, 3)
    assert clone.rate_limiter.check("k").remaining == 3  # in-process state is not carried over


def test_docstring_examples_run_as_written():
    import doctest

    import onex_compose.capabilities.rate_limiting as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------------------------
# review fixes: string keys on every entry point, the guard follows reconfiguration


@pytest.mark.parametrize("key", [123, None, b"alice", ("a", 1), ["a"]])
async def test_a_non_string_key_is_a_clear_error_on_every_entry_point(key):
    lim = limiter(limit=5, mode="wait")
    calls = [lambda: lim.hit(key), lambda: lim.hit(key, 2), lambda: lim.check(key),
             lambda: lim.acquire_sync(key), lambda: lim.limit_for(key)]
    if key is not None:  # reset(None) forgets every key
        calls.append(lambda: lim.reset(key))
    for call in calls:
        with pytest.raises(TypeError, match=r"rate limiter keys are strings, got .*; pass str"):
            call()
    for acall in (lim.ahit, lim.acheck, lim.acquire, lim.areset):
        with pytest.raises(TypeError, match="rate limiter keys are strings"):
            await acall(key)
    assert lim._local.tat == {}  # nothing was spent under a non-string key


async def test_a_key_func_returning_a_non_string_is_named():
    node = Api(capability_config={"rate_limiting": {"limit": 5}})
    node.rate_limiter.key_func = lambda request: request["user_id"]
    with pytest.raises(TypeError, match="got 42 .int.*key_func must return a string"):
        await node.process({"user": "a", "user_id": 42})


async def test_the_process_guard_follows_a_reconfigured_node():
    node = Api(capability_config={"rate_limiting": {"limit": 100, "period": 60}})
    clock = ManualClock()
    node.rate_limiter.use_clock(clock)  # kept by the reconfigurations below
    assert await node.process({"user": "a"}) == "served a"  # the guard is bound to this limiter
    node.setup_rate_limiting({"limit": 1, "period": 60, "guard_key": "api"})
    await node.process({"user": "b"})
    with pytest.raises(RateLimitExceededError) as info:
        await node.process({"user": "c"})
    assert info.value.key == "api" and info.value.retry_after == 60.0
    node.setup_rate_limiting({"limit": 1, "guard_process": False})
    for _ in range(3):
        await node.process({"user": "d"})
    node.setup_rate_limiting({"limit": 1, "period": 60})
    await node.process({"user": "e"})
    with pytest.raises(RateLimitExceededError):
        await node.process({"user": "f"})


def test_a_rejection_is_neutral_for_a_circuit_breaker():
    assert RateLimitExceededError.onex_breaker_neutral is True
    assert RateLimitExceededError.onex_retriable is False


# ------------------------------------------------------------------------------------------------
# issue 9: a redis_url that is not one is refused at setup (the one validator of capabilities/_redis)


@pytest.mark.parametrize("url", ["http://u:s3cret@cache:6379/0", "127.0.0.1:6379",
                                 "redis://h:99999/0"])
def test_a_redis_url_that_is_not_one_is_refused_at_config_time(url: str) -> None:
    # it used to pass setup and then fail every call with redis-py's bare ValueError
    with pytest.raises(ConfigurationError, match="redis_url must be a redis://") as info:
        RateLimiter({"backend": "redis", "redis_url": url})
    assert "s3cret" not in str(info.value)
    Node = compose(NodeCompute, ["rate_limiting"])
    with pytest.raises(ConfigurationError, match="redis_url must be a redis://"):
        Node(capability_config={"rate_limiting": {"backend": "redis", "redis_url": url}})


class SyncLimitedNode(NodeCompute):
    def process(self, x: int) -> int:  # type: ignore[override]
        return x + 1


def test_a_sync_process_is_rate_limited_without_an_event_loop() -> None:
    Node = compose(SyncLimitedNode, ["rate_limiting"])
    node = Node(capability_config={"rate_limiting": {"limit": 2, "period": 1.0}})
    clock = ManualClock()
    node.rate_limiter.use_clock(clock)
    assert node.process(1) == 2 and node.process(2) == 3  # plain values, no coroutine
    with pytest.raises(RateLimitExceededError) as info:
        node.process(3)
    assert info.value.retry_after == pytest.approx(0.5)
    clock.advance(0.5)
    assert node.process(3) == 4
    # wait mode blocks the calling thread with the limiter's sync sleep
    node.setup_rate_limiting({"limit": 1, "period": 1.0, "mode": "wait"})
    assert node.process(1) == 2
    before = clock()
    assert node.process(1) == 2
    assert clock() - before == pytest.approx(1.0)
    # key_func derives the key; guard_process: false returns the call unguarded
    node.setup_rate_limiting({"limit": 1, "period": 60.0})
    node.rate_limiter.key_func = lambda x: f"k{x}"
    assert node.process(1) == 2 and node.process(2) == 3
    with pytest.raises(RateLimitExceededError):
        node.process(1)
    node.setup_rate_limiting({"limit": 1, "period": 60.0, "guard_process": False})
    assert [node.process(5) for _ in range(5)] == [6] * 5
    assert node._guard_sync_rate_limiting(lambda: "raw")() == "raw"
