"""circuit_breaker: the in-process breaker alone, the named registry, and composed into a node.

Every timing test runs on a ManualClock: nothing sleeps.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onex_compose import (
    ConfigurationError,
    NodeCompute,
    NodeEffect,
    OnexError,
    compose,
    has_capability,
)
from onex_compose.capabilities._context import ManualClock
from onex_compose.capabilities.circuit_breaker import (
    BreakerPolicy,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakers,
    CircuitBreakerUsageError,
    CircuitOpenError,
    CircuitState,
    CircuitStateChange,
    ExceptionMatcher,
    MixinCircuitBreaker,
)
from onex_compose.capabilities.metrics import Metrics

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


def boom(exc: BaseException | None = None):
    raise exc or ConnectionError("down")


def fail(breaker: CircuitBreaker, times: int = 1, exc: type[BaseException] = ConnectionError):
    for _ in range(times):
        with pytest.raises(exc):
            breaker.call(boom, exc("x"))


def make(clock: ManualClock | None = None, **policy) -> CircuitBreaker:
    return CircuitBreaker("svc", BreakerPolicy(**policy), clock=clock or ManualClock())


# ------------------------------------------------------------------------------------------------
# consecutive mode (the default)


def test_default_policy_is_five_consecutive_failures():
    policy = BreakerPolicy()
    assert (policy.mode, policy.failure_threshold, policy.half_open_max_calls) == (
        "consecutive", 5, 1)
    breaker = make()
    fail(breaker, 4)
    assert breaker.state is CLOSED
    fail(breaker, 1)
    assert breaker.state is OPEN


def test_a_success_resets_the_consecutive_count():
    breaker = make(failure_threshold=3)
    fail(breaker, 2)
    assert breaker.call(lambda: "ok") == "ok"
    fail(breaker, 2)
    assert breaker.state is CLOSED
    assert breaker.status().failure_count == 2
    fail(breaker, 1)
    assert breaker.state is OPEN


def test_the_tripping_call_raises_its_own_error_and_later_calls_the_typed_error():
    clock = ManualClock()
    breaker = make(clock, failure_threshold=2, reset_timeout=10)
    fail(breaker, 2)  # both raise ConnectionError, including the one that trips it
    clock.advance(4)
    ran = []
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(ran.append, 1)
    assert ran == []
    err = info.value
    assert (err.name, err.retry_after, err.state, err.reason) == ("svc", 6.0, OPEN, "open")
    assert isinstance(err, OnexError) and isinstance(err, RuntimeError)
    assert err.onex_retriable is False
    assert "'svc' is open; retry after 6.000 s" in str(err)
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.name, clone.retry_after, clone.state, clone.reason) == ("svc", 6.0, OPEN, "open")


def test_open_goes_half_open_after_the_reset_timeout_and_a_good_probe_closes_it():
    clock = ManualClock()
    breaker = make(clock, failure_threshold=1, reset_timeout=30)
    fail(breaker)
    clock.advance(29.999)
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: 1)
    clock.advance(0.001)
    assert breaker.state is OPEN  # reading never transitions: the next call does
    assert breaker.call(lambda: "probe") == "probe"
    assert breaker.state is CLOSED


def test_a_failed_probe_reopens_for_a_full_reset_timeout():
    clock = ManualClock()
    breaker = make(clock, failure_threshold=1, reset_timeout=30)
    fail(breaker)
    clock.advance(30)
    fail(breaker)  # the probe fails with its own error
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: 1)
    assert info.value.retry_after == 30.0


def test_several_probes_must_all_succeed_in_consecutive_mode():
    clock = ManualClock()
    breaker = make(clock, failure_threshold=1, reset_timeout=1, half_open_max_calls=3)
    fail(breaker)
    clock.advance(1)
    breaker.call(lambda: 1)
    breaker.call(lambda: 1)
    assert breaker.state is HALF_OPEN
    breaker.call(lambda: 1)
    assert breaker.state is CLOSED


def test_status_reports_counts_rate_and_last_failure_without_changing_anything():
    clock = ManualClock()
    breaker = make(clock, failure_threshold=3, reset_timeout=10)
    st0 = breaker.status()
    assert (st0.state, st0.failure_count, st0.failure_rate, st0.last_failure_time) == (
        CLOSED, 0, 0.0, None)
    fail(breaker, 3)
    clock.advance(12)
    status = breaker.status()
    assert status.state is OPEN and status.failure_count == 3  # the evidence that opened it
    assert status.failure_rate == 100.0 and status.retry_after == 0.0
    assert status.last_failure_time is not None
    assert breaker.state is OPEN  # still open: reading is not a call


# ------------------------------------------------------------------------------------------------
# half-open admits a bounded number of probes


async def test_100_concurrent_calls_against_half_open_let_exactly_the_probes_through():
    clock = ManualClock()
    breaker = make(clock, failure_threshold=1, reset_timeout=5, half_open_max_calls=3)
    fail(breaker)
    clock.advance(5)
    release = asyncio.Event()
    ran = 0

    async def probe():
        nonlocal ran
        ran += 1
        await release.wait()  # all probes are in flight while the others arrive
        return "ok"

    tasks = [asyncio.create_task(breaker.acall(probe)) for _ in range(100)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert ran == 3
    assert breaker.state is HALF_OPEN
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    rejected = [r for r in results if isinstance(r, CircuitOpenError)]
    assert results.count("ok") == 3 and len(rejected) == 97
    assert {r.reason for r in rejected} == {"half_open_full"}
    assert {r.state for r in rejected} == {HALF_OPEN}
    assert breaker.state is CLOSED


def test_100_threads_against_half_open_let_exactly_the_probes_through():
    clock = ManualClock()
    breaker = make(clock, failure_threshold=1, reset_timeout=5, half_open_max_calls=4)
    fail(breaker)
    clock.advance(5)
    everyone_tried = threading.Event()
    lock = threading.Lock()
    ran, rejected = [], []

    def probe():
        ran.append(1)
        everyone_tried.wait(timeout=10)  # probes stay in flight until the other 96 were turned away
        return "ok"

    def attempt():
        try:
            return breaker.call(probe)
        except CircuitOpenError as err:
            with lock:
                rejected.append(err)
                if len(rejected) == 96:
                    everyone_tried.set()
            return err

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(lambda _: attempt(), range(100)))
    assert len(ran) == 4
    assert results.count("ok") == 4 and len(rejected) == 96
    assert everyone_tried.is_set()
    assert breaker.state is CLOSED


def test_no_lock_is_held_while_the_protected_call_runs():
    breaker = make()
    barrier = threading.Barrier(4, timeout=10)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: breaker.call(barrier.wait), range(4)))
    assert sorted(results) == [0, 1, 2, 3]  # all four were inside the call at the same time


async def test_a_cancelled_probe_gives_its_slot_back():
    clock = ManualClock()
    breaker = make(clock, failure_threshold=1, reset_timeout=1)
    fail(breaker)
    clock.advance(1)
    started = asyncio.Event()

    async def hang():
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(breaker.acall(hang))
    await started.wait()
    with pytest.raises(CircuitOpenError):
        await breaker.acall(asyncio.sleep, 0)  # the single slot is taken
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is HALF_OPEN  # cancellation is neither success nor failure
    assert await breaker.acall(asyncio.sleep, 0, "probe") == "probe"
    assert breaker.state is CLOSED


def test_a_lost_probe_reopens_after_half_open_max_wait():
    clock = ManualClock()
    breaker = make(clock, failure_threshold=1, reset_timeout=5, half_open_max_wait=20)
    fail(breaker)
    clock.advance(5)
    assert breaker.allow() is True  # takes the probe slot and never reports back
    clock.advance(19)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: 1)
    assert info.value.reason == "half_open_full" and info.value.retry_after == 1.0
    clock.advance(1)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: 1)
    assert info.value.state is OPEN and info.value.retry_after == 5.0
    clock.advance(5)
    assert breaker.call(lambda: "ok") == "ok"
    assert breaker.state is CLOSED


# ------------------------------------------------------------------------------------------------
# what counts


def test_ignored_exceptions_are_neutral_not_a_reset():
    breaker = make(failure_threshold=3, ignore_exceptions=["KeyError"])
    fail(breaker, 2)
    fail(breaker, 1, KeyError)
    assert breaker.status().failure_count == 2  # pybreaker would have reset it to 0
    fail(breaker, 1)
    assert breaker.state is OPEN


def test_ignore_and_record_by_type_and_by_qualified_name():
    class Flaky(Exception):
        pass

    breaker = CircuitBreaker("x", BreakerPolicy(failure_threshold=1,
                                                record_exceptions=["builtins.ConnectionError"]),
                             clock=ManualClock(), ignore=(Flaky,))
    fail(breaker, 1, Flaky)
    fail(breaker, 1, ValueError)  # not recorded: counts as a success
    assert breaker.state is CLOSED
    fail(breaker, 1, ConnectionRefusedError)  # a subclass of a recorded type
    assert breaker.state is OPEN


def test_cancellation_and_interrupts_never_count():
    breaker = make(failure_threshold=1)
    for exc in (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit):
        with pytest.raises(exc):
            breaker.call(boom, exc())
    assert breaker.state is CLOSED and breaker.status().failure_count == 0


def test_exception_matcher_matches_bases_and_caches():
    matcher = ExceptionMatcher(["OSError", ValueError])
    assert matcher(ConnectionResetError()) and matcher(UnicodeDecodeError("a", b"", 0, 1, "x"))
    assert not matcher(KeyError())
    assert not ExceptionMatcher()


def test_slow_calls_are_not_failures_and_a_run_of_them_opens_in_consecutive_mode():
    # issue 9: slow successful calls used to count as failures (failure_count, last_failure_time)
    clock = ManualClock()
    breaker = make(clock, failure_threshold=2, slow_call_duration=1.0)

    def slow():
        clock.advance(1.5)
        return "late"

    assert breaker.call(slow) == "late"  # the result is returned, the call counted as slow
    status = breaker.status()
    assert status.failure_count == 0 and status.last_failure_time is None
    assert status.slow_call_count == 1 and status.slow_call_rate == 100.0
    assert status.last_slow_call_time is not None
    assert breaker.call(lambda: "fast") == "fast"  # a fast call ends the run
    assert breaker.status().slow_call_count == 0
    fail(breaker)  # a fast failure is a failure, not slow
    assert breaker.status().failure_count == 1 and breaker.status().slow_call_count == 0
    breaker.call(slow)  # a slow success ends the failure run, starts a slow run
    assert breaker.status().failure_count == 0 and breaker.state is CLOSED
    breaker.call(slow)
    assert breaker.state is OPEN


def test_slow_calls_have_their_own_rate_in_rate_mode():
    clock = ManualClock()
    metrics = Metrics()
    breaker = CircuitBreaker("svc", BreakerPolicy(
        mode="rate", window_size=4, minimum_calls=4, failure_rate_threshold=50,
        slow_call_duration=0.5, slow_call_rate_threshold=75), clock=clock, metrics=metrics)
    changes: list = []
    breaker.on_state_change.append(changes.append)

    def call(seconds):
        clock.advance(seconds)
        return seconds

    for seconds in (0.1, 0.7, 0.9):
        breaker.call(call, seconds)
    status = breaker.status()
    assert (status.calls, status.failure_count, status.slow_call_count) == (3, 0, 2)
    assert breaker.state is CLOSED  # 2 slow of 4 = 50 % would have opened as "failures"
    breaker.call(call, 0.1)
    assert breaker.state is CLOSED and breaker.status().slow_call_rate == 50.0
    breaker.call(call, 0.6)  # window: 0.7 0.9 0.1 0.6 -> 3 slow of 4 = 75 %
    assert breaker.state is OPEN and changes[-1].reason == "slow_call_rate"
    snap = metrics.snapshot()["counters"]
    assert snap['circuit_breaker_slow_calls_total{operation_key="svc"}'] == 3
    assert 'circuit_breaker_failures_total{operation_key="svc"}' not in snap


async def test_slow_async_calls_and_slow_failures_count_in_rate_mode():
    clock = ManualClock()
    breaker = make(clock, mode="rate", window_size=4, minimum_calls=4,
                   failure_rate_threshold=60, slow_call_duration=0.5,
                   slow_call_rate_threshold=50)

    async def call(seconds, fail=False):
        clock.advance(seconds)
        if fail:
            raise ConnectionError("down")
        return seconds

    await breaker.acall(call, 0.1)
    await breaker.acall(call, 0.1)
    with pytest.raises(ConnectionError):
        await breaker.acall(call, 0.7, True)  # a slow failure: both
    status = breaker.status()
    assert (status.failure_count, status.slow_call_count) == (1, 1)
    assert breaker.state is CLOSED
    await breaker.acall(call, 0.9)  # 2 slow of 4 = 50 %
    assert breaker.state is OPEN


def test_a_slow_probe_reopens_the_circuit():
    clock = ManualClock()
    breaker = make(clock, failure_threshold=1, reset_timeout=1, slow_call_duration=0.5)
    fail(breaker)
    clock.advance(1)
    changes: list = []
    breaker.on_state_change.append(changes.append)

    def slow():
        clock.advance(0.6)
        return "late"

    assert breaker.call(slow) == "late"
    assert breaker.state is OPEN and changes[-1].reason == "probe_slow"


def test_the_old_slow_call_key_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="replaced by slow_call_duration"):
        CircuitBreaker("db", {"slow_call_duration_threshold": 1.0})


def test_results_of_calls_admitted_before_a_state_change_are_discarded():
    clock = ManualClock()
    breaker = make(clock, failure_threshold=1, reset_timeout=1)

    def late_failure():
        breaker.open()  # the state changes while this call runs
        clock.advance(1)
        breaker.half_open()
        raise ConnectionError("late")

    with pytest.raises(ConnectionError):
        breaker.call(late_failure)
    assert breaker.state is HALF_OPEN  # the late failure did not re-open the new epoch


# ------------------------------------------------------------------------------------------------
# rate mode


def test_rate_mode_needs_the_minimum_number_of_calls():
    breaker = make(mode="rate", window_size=20, minimum_calls=10, failure_rate_threshold=50)
    fail(breaker, 9)
    assert breaker.state is CLOSED  # 100 % failures, but only 9 calls
    fail(breaker, 1)
    assert breaker.state is OPEN


def test_rate_mode_trips_on_the_rate_not_on_a_run():
    breaker = make(mode="rate", window_size=10, minimum_calls=10, failure_rate_threshold=50)
    for i in range(10):
        if i % 2:
            fail(breaker)
        else:
            breaker.call(lambda: 1)
    assert breaker.state is OPEN  # 5 of 10 failed, never two in a row
    assert breaker.status().failure_rate == 50.0


def test_count_window_forgets_the_oldest_calls():
    breaker = make(mode="rate", window_size=4, minimum_calls=4, failure_rate_threshold=75)
    fail(breaker, 2)
    for _ in range(2):
        breaker.call(lambda: 1)
    status = breaker.status()
    assert (status.calls, status.failure_count, status.failure_rate) == (4, 2, 50.0)
    breaker.call(lambda: 1)  # evicts a failure: F S S S
    assert breaker.status().failure_count == 1
    fail(breaker, 2)  # S S F F: 50 %
    assert breaker.state is CLOSED
    fail(breaker, 1)  # S F F F: 75 %
    assert breaker.state is OPEN


def test_time_window_forgets_failures_older_than_the_window():
    clock = ManualClock(100.0)
    breaker = make(clock, mode="rate", window_type="time", window_size=10, minimum_calls=3,
                   failure_rate_threshold=100)
    fail(breaker, 2)
    clock.advance(10)  # those two seconds-old buckets fall out of the 10 s window
    assert breaker.status().calls == 0
    fail(breaker, 2)
    assert breaker.state is CLOSED
    clock.advance(9.5)
    fail(breaker, 1)
    assert breaker.state is OPEN


def test_rate_probes_are_judged_by_their_failure_rate():
    clock = ManualClock()
    breaker = make(clock, mode="rate", window_size=2, minimum_calls=2, failure_rate_threshold=50,
                   half_open_max_calls=4, reset_timeout=1)
    fail(breaker, 2)
    clock.advance(1)
    breaker.call(lambda: 1)
    fail(breaker)
    breaker.call(lambda: 1)
    assert breaker.state is HALF_OPEN  # 1 failure of 4 probes cannot reach 50 % yet
    breaker.call(lambda: 1)
    assert breaker.state is CLOSED  # 25 % < 50 %


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["ok", "fail", "ignored"]), max_size=60))
def test_consecutive_mode_matches_a_reference_model(outcomes):
    breaker = make(failure_threshold=3, ignore_exceptions=["KeyError"])
    run, opened = 0, False
    for outcome in outcomes:
        if opened:
            with pytest.raises(CircuitOpenError):
                breaker.call(lambda: 1)
            continue
        if outcome == "ok":
            breaker.call(lambda: 1)
            run = 0
        elif outcome == "fail":
            fail(breaker)
            run += 1
            opened = run >= 3
        else:
            fail(breaker, 1, KeyError)
        assert breaker.state is (OPEN if opened else CLOSED)


# ------------------------------------------------------------------------------------------------
# events, metrics, decorators


async def test_listeners_hear_every_transition_sync_and_async():
    clock = ManualClock()
    breaker = make(clock, failure_threshold=1, reset_timeout=1)
    seen: list[CircuitStateChange] = []
    heard: list[str] = []

    async def async_listener(change):
        heard.append(change.new.label)

    def broken_listener(change):
        raise RuntimeError("listener bug")

    breaker.on_state_change.extend([seen.append, async_listener, broken_listener])
    fail(breaker)
    clock.advance(1)
    breaker.call(lambda: 1)
    await asyncio.sleep(0)
    assert [(c.old, c.new, c.reason) for c in seen] == [
        (CLOSED, OPEN, "failure_threshold"), (OPEN, HALF_OPEN, "reset_timeout"),
        (HALF_OPEN, CLOSED, "probes_succeeded")]
    assert heard == ["open", "half_open", "closed"]
    assert seen[0].as_event() == {"breaker": "svc", "from": "closed", "to": "open",
                                  "reason": "failure_threshold", "at": 0.0}


def test_state_changes_feed_the_gauge_and_counters():
    clock = ManualClock()
    metrics = Metrics()
    breaker = CircuitBreaker("db", BreakerPolicy(failure_threshold=1, reset_timeout=1),
                             clock=clock, metrics=metrics)
    gauges = metrics.snapshot()["gauges"]
    assert gauges['circuit_breaker_state{operation_key="db"}'] == 0
    fail(breaker)
    assert metrics.snapshot()["gauges"]['circuit_breaker_state{operation_key="db"}'] == 1
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: 1)
    clock.advance(1)
    breaker.allow()
    snap = metrics.snapshot()
    assert snap["gauges"]['circuit_breaker_state{operation_key="db"}'] == 2
    assert snap["counters"]['circuit_breaker_rejected_total{operation_key="db"}'] == 1
    assert snap["counters"]['circuit_breaker_failures_total{operation_key="db"}'] == 1
    key = ('circuit_breaker_transitions_total{from_state="closed",operation_key="db",'
           'to_state="open"}')
    assert snap["counters"][key] == 1


async def test_decorator_works_for_def_and_async_def():
    breaker = make(failure_threshold=1)

    @breaker
    def double(x):
        return 2 * x

    @breaker
    async def adouble(x):
        return 2 * x

    assert double(2) == 4 and await adouble(3) == 6
    assert double.__name__ == "double"


def test_manual_control():
    breaker = make()
    breaker.open()
    assert breaker.state is OPEN
    breaker.half_open()
    assert breaker.state is HALF_OPEN
    breaker.reset()
    assert breaker.state is CLOSED


# ------------------------------------------------------------------------------------------------
# configuration and the named registry


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="minimum_calls=50 exceeds window_size=10"):
        BreakerPolicy(mode="rate", window_size=10, minimum_calls=50)
    with pytest.raises(ValueError, match="did you mean 'failure_threshold'"):
        CircuitBreakerConfig(breakers={"db": {"failure_treshold": 3}})
    node_cls = compose(NodeCompute, ["circuit_breaker"])
    with pytest.raises(ConfigurationError, match="failure_treshold"):
        node_cls(capability_config={"circuit_breaker": {"failure_treshold": 3}})
    with pytest.raises(ValueError, match="non-empty string name"):
        CircuitBreaker("")


def test_named_breakers_share_defaults_and_take_overrides():
    breakers = CircuitBreakers(CircuitBreakerConfig(
        failure_threshold=4, breakers={"payments": {"failure_threshold": 2, "reset_timeout": 5}}))
    payments = breakers("payments")
    assert payments is breakers.get("payments")
    assert (payments.policy.failure_threshold, payments.policy.reset_timeout) == (2, 5.0)
    assert breakers("search").policy.failure_threshold == 4
    assert breakers.default.name == "process" and "process" in breakers
    assert len(breakers) == 3
    assert breakers.states() == {"payments": "closed", "search": "closed", "process": "closed"}


async def test_registry_health_report():
    breakers = CircuitBreakers(CircuitBreakerConfig(open_health="unhealthy"), clock=ManualClock())
    breakers("a")
    assert (await breakers.health_check())["status"] == "healthy"
    breakers("b").half_open()
    assert (await breakers.health_check())["status"] == "degraded"
    breakers("a").open()
    report = await breakers.health_check()
    assert report == {"status": "unhealthy", "breakers": {"a": "open", "b": "half_open"}}


def test_contract_config_section_matches_the_model():
    import yaml

    from onex_compose.capabilities import CONTRACTS_DIR

    data = yaml.safe_load((CONTRACTS_DIR / "circuit_breaker" / "mixin_circuit_breaker.yaml").read_text())
    assert data["circuit_breaker_config"] == CircuitBreakerConfig().model_dump()


# ------------------------------------------------------------------------------------------------
# composed into a node


class Flaky(compose(NodeCompute, ["circuit_breaker"])):
    async def process(self, input_data):
        if input_data == "bad":
            raise ConnectionError("dependency down")
        return input_data.upper()


async def test_process_is_guarded_and_state_feeds_health():
    node = Flaky(capability_config={"circuit_breaker": {"failure_threshold": 2,
                                                         "reset_timeout": 10}})
    clock = ManualClock()
    node.circuit_breaker.clock = clock
    assert has_capability(node, "metrics") and has_capability(node, "health_check")
    assert await node.process("a") == "A"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await node.process("bad")
    with pytest.raises(CircuitOpenError) as info:
        await node.process("a")
    assert info.value.name == "process" and info.value.retry_after == 10.0
    report = await node.health_check()
    assert report["checks"]["circuit_breaker"]["status"] == "degraded"
    assert report["checks"]["circuit_breaker"]["details"] == {"breakers": {"process": "open"}}
    snap = node.metrics.snapshot()
    assert snap["gauges"]['circuit_breaker_state{operation_key="process"}'] == 1
    clock.advance(10)
    assert await node.process("b") == "B"
    assert node.circuit_breaker.default.state is CLOSED
    assert (await node.health_check())["checks"]["circuit_breaker"]["status"] == "healthy"


async def test_open_health_unhealthy_makes_the_node_unhealthy():
    node = Flaky(capability_config={"circuit_breaker": {"failure_threshold": 1,
                                                         "open_health": "unhealthy"}})
    with pytest.raises(ConnectionError):
        await node.process("bad")
    report = await node.health_check()
    assert report["status"] == "unhealthy" and not node.is_healthy()


async def test_state_changes_are_published_on_the_event_bus_when_composed():
    cls = compose(NodeCompute, ["circuit_breaker", "event_bus"])
    node = cls(capability_config={"circuit_breaker": {"failure_threshold": 1}})
    events = []
    node.event_bus.subscribe("circuit_breaker.state_changed",
                             lambda event: events.append(event))
    with pytest.raises(ConnectionError):
        await node.circuit_breaker("db").acall(_async_boom)
    await node.aclose()
    assert len(events) == 1
    payload = getattr(events[0], "payload", events[0])
    assert payload["breaker"] == "db" and payload["to"] == "open"
    assert payload["node_id"] == node.node_id


async def _async_boom():
    raise ConnectionError("down")


def test_hand_written_class_and_reconfiguration_keep_the_clock():
    class Service(NodeCompute, MixinCircuitBreaker):
        pass

    node = Service()
    clock = ManualClock(50.0)
    node.circuit_breaker.clock = clock
    node.setup_circuit_breaker({"failure_threshold": 1})
    breaker = node.circuit_breaker("x")
    assert breaker.clock is clock and breaker.policy.failure_threshold == 1
    fail(breaker)
    assert breaker.status().retry_after == 30.0


def test_a_composed_node_pickles_and_rebuilds_its_breakers():
    node = compose(NodeCompute, ["circuit_breaker"])(
        capability_config={"circuit_breaker": {"failure_threshold": 7}})
    node.circuit_breaker("db").open()
    clone = pickle.loads(pickle.dumps(node))
    assert clone.circuit_breaker("db").policy.failure_threshold == 7
    assert clone.circuit_breaker("db").state is CLOSED  # in-process state is not carried over


def test_docstring_examples_run_as_written():
    import doctest
    import importlib

    package = "onex_compose.capabilities.circuit_breaker"
    for name in ("", "._model", "._breaker", "._redis", "._registry"):
        module = importlib.import_module(package + name)
        result = doctest.testmod(module,
                                 optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, name
        assert result.attempted > 0 or name == "._redis", name


# ------------------------------------------------------------------------------------------------
# review fixes: mappings as policies, load shedding is neutral, the guard follows reconfiguration


def test_a_policy_or_a_config_may_be_a_mapping_and_bad_keys_are_named():
    breaker = CircuitBreaker("db", {"failure_threshold": 2}, clock=ManualClock())
    assert isinstance(breaker.policy, BreakerPolicy) and breaker.policy.failure_threshold == 2
    fail(breaker, 2)
    assert breaker.state is OPEN
    breakers = CircuitBreakers({"failure_threshold": 3, "breakers": {"x": {"reset_timeout": 4}}})
    assert breakers("x").policy.failure_threshold == 3
    assert breakers("x").policy.reset_timeout == 4
    with pytest.raises(ConfigurationError, match=r"failure_treshold: unknown key \(did you mean "
                                                 r"'failure_threshold'"):
        CircuitBreaker("db", {"failure_treshold": 2})
    with pytest.raises(ConfigurationError, match="reset_timeout"):
        CircuitBreakers({"reset_timeout": -1})
    with pytest.raises(ConfigurationError, match="must be a mapping"):
        CircuitBreaker("db", 5)  # type: ignore[arg-type]


def test_load_shedding_rejections_are_neither_success_nor_failure():
    from onex_compose.capabilities.bulkhead import BulkheadFullError
    from onex_compose.capabilities.rate_limiting import RateLimitExceededError

    def shed(kind: str):
        if kind == "bulkhead":
            raise BulkheadFullError("b", 1, active=1, waited=0.0, max_wait=0.0)
        raise RateLimitExceededError("k", 1.0)

    clock = ManualClock()
    breaker = make(clock, failure_threshold=2, reset_timeout=5)
    fail(breaker, 1)
    for _ in range(10):  # a burst the node sheds itself: not failures, and not a reset either
        for kind in ("bulkhead", "rate"):
            with pytest.raises((BulkheadFullError, RateLimitExceededError)):
                breaker.call(shed, kind)
    assert breaker.state is CLOSED and breaker.status().failure_count == 1
    fail(breaker, 1)
    assert breaker.state is OPEN
    clock.advance(5)
    with pytest.raises(BulkheadFullError):  # a shed probe gives its slot back
        breaker.call(shed, "bulkhead")
    assert breaker.state is HALF_OPEN
    assert breaker.call(lambda: "ok") == "ok" and breaker.state is CLOSED
    # listed in record_exceptions, it counts after all
    counted = make(clock, failure_threshold=1, record_exceptions=["BulkheadFullError"])
    with pytest.raises(BulkheadFullError):
        counted.call(shed, "bulkhead")
    assert counted.state is OPEN
    # with record_exceptions set, an unlisted shed error is still neutral (not a success)
    strict = make(clock, failure_threshold=2, record_exceptions=["ConnectionError"])
    fail(strict, 1)
    with pytest.raises(RateLimitExceededError):
        strict.call(shed, "rate")
    fail(strict, 1)
    assert strict.state is OPEN


async def test_the_process_guard_follows_a_reconfigured_node():
    node = Flaky()
    node.circuit_breaker.clock = ManualClock()  # kept by the reconfiguration below
    assert await node.process("a") == "A"  # the guard is bound to the first breakers
    node.setup_circuit_breaker({"failure_threshold": 1, "reset_timeout": 10})
    with pytest.raises(ConnectionError):
        await node.process("bad")
    assert node.circuit_breaker.default.state is OPEN  # the new process breaker saw it
    with pytest.raises(CircuitOpenError) as info:
        await node.process("a")
    assert info.value.retry_after == 10.0
    report = await node.health_check()
    assert report["checks"]["circuit_breaker"]["details"] == {"breakers": {"process": "open"}}
    node.setup_circuit_breaker({"process_breaker": "main"})
    assert await node.process("b") == "B"
    assert node.circuit_breaker.states() == {"main": "closed"}


# ------------------------------------------------------------------------------------------------
# issue 9: a redis_url that is not one is refused at setup (the one validator of capabilities/_redis)


@pytest.mark.parametrize("url", ["http://u:s3cret@cache:6379/0", "127.0.0.1:6379",
                                 "redis://h:99999/0"])
def test_a_redis_url_that_is_not_one_is_refused_at_config_time(url: str) -> None:
    # it used to pass setup and then fail every call with redis-py's bare ValueError
    with pytest.raises(ConfigurationError, match="redis_url must be a redis://") as info:
        CircuitBreakers({"backend": "redis", "redis_url": url})
    assert "s3cret" not in str(info.value)
    Node = compose(NodeEffect, ["circuit_breaker"])
    with pytest.raises(ConfigurationError, match="redis_url must be a redis://"):
        Node(capability_config={"circuit_breaker": {"backend": "redis", "redis_url": url}})


# ------------------------------------------------------------------------------------------------
# issue 9: call(async_fn) is a clear error; a sync `def process` is guarded through call()


async def fetch_async() -> str:
    return "never awaited"


def test_call_with_an_async_function_is_a_clear_error_and_records_nothing():
    # it used to return a coroutine and record a success for a call that never ran
    import warnings

    breaker = make(failure_threshold=1, mode="rate", minimum_calls=1, window_size=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the coroutine is closed: no "never awaited" warning
        with pytest.raises(CircuitBreakerUsageError, match=r"acall\(fetch_async") as info:
            breaker.call(fetch_async)
    assert isinstance(info.value, OnexError) and isinstance(info.value, TypeError)
    assert breaker.status().calls == 0
    fast = make(failure_threshold=1)  # the lock-free consecutive path checks too
    with pytest.raises(CircuitBreakerUsageError):
        fast.call(fetch_async)
    assert fast.state is CLOSED
    clock = ManualClock()
    probing = make(clock, failure_threshold=1, reset_timeout=1)
    fail(probing)
    clock.advance(1)
    with pytest.raises(CircuitBreakerUsageError):
        probing.call(fetch_async)
    assert probing.state is HALF_OPEN
    assert probing.call(lambda: "ok") == "ok"  # the probe slot was given back
    assert probing.state is CLOSED
    clone = pickle.loads(pickle.dumps(info.value))
    assert str(clone) == str(info.value)


class SyncBreakerNode(NodeEffect):
    def process(self, x: int) -> int:  # type: ignore[override]
        if x < 0:
            raise ConnectionError("down")
        return x * 2


def test_a_sync_process_is_guarded_by_the_breaker_without_an_event_loop():
    Node = compose(SyncBreakerNode, ["circuit_breaker"])
    node = Node(capability_config={"circuit_breaker": {"failure_threshold": 2,
                                                       "reset_timeout": 5}})
    clock = ManualClock()
    node.circuit_breaker.clock = clock
    assert node.process(2) == 4 and node.process(3) == 6  # plain values, no coroutine
    for _ in range(2):
        with pytest.raises(ConnectionError):
            node.process(-1)
    assert node.circuit_breaker.default.state is OPEN
    with pytest.raises(CircuitOpenError):
        node.process(1)
    clock.advance(5)
    assert node.process(1) == 2
    assert node.circuit_breaker.default.state is CLOSED
    # the hook on its own follows reconfiguration like the async guard
    hook = node._guard_sync_circuit_breaker(lambda x: 10 // x)
    assert hook(1) == 10
    node.setup_circuit_breaker({"process_breaker": "other", "failure_threshold": 1})
    with pytest.raises(ZeroDivisionError):
        hook(0)
    assert node.circuit_breaker("other").state is OPEN


# ------------------------------------------------------------------------------------------------
# issue 9: a time window restarts in O(1) after a quiet period of at least its size


class CountingList(list):
    """A list that counts item reads and writes (the window's work)."""

    touched = 0

    def __getitem__(self, i):
        CountingList.touched += 1
        return super().__getitem__(i)

    def __setitem__(self, i, value):
        CountingList.touched += 1
        super().__setitem__(i, value)


def count_window_work(window) -> None:
    for name in ("bcalls", "bfails", "bslow"):
        setattr(window, name, CountingList(getattr(window, name)))
    CountingList.touched = 0


@pytest.mark.parametrize("gap", [100_000, 100_001, 10**7])
def test_a_time_window_restarts_in_constant_work_after_a_long_quiet_period(gap: int):
    clock = ManualClock(50.0)
    breaker = make(clock, mode="rate", window_type="time", window_size=100_000, minimum_calls=3,
                   failure_rate_threshold=50)
    fail(breaker)
    breaker.call(lambda: "ok")
    count_window_work(breaker._window)
    clock.advance(gap)
    assert breaker.status().calls == 0 and CountingList.touched == 0  # reading: no walk either
    fail(breaker)  # used to clear every one of the 100,000 buckets
    assert CountingList.touched < 20
    status = breaker.status()
    assert (status.calls, status.failure_count) == (1, 1) and breaker.state is CLOSED
    breaker.call(lambda: "ok")
    breaker.call(lambda: "ok")
    assert breaker.state is CLOSED and breaker.status().failure_rate == pytest.approx(100 / 3)


def test_a_time_window_after_a_restart_never_subtracts_stale_buckets():
    clock = ManualClock(0.0)
    breaker = make(clock, mode="rate", window_type="time", window_size=10, minimum_calls=100)
    for _ in range(9):  # seconds 0..8 each hold a failure
        fail(breaker)
        clock.advance(1)
    clock.advance(30)  # quiet: the window restarts at second 39
    breaker.call(lambda: "ok")
    for _ in range(12):  # walk over every (stale) bucket, one second at a time
        clock.advance(1)
        breaker.call(lambda: "ok")
        status = breaker.status()
        assert status.failure_count == 0 and 0 < status.calls <= 10
    assert breaker.status().calls == 10


# ------------------------------------------------------------------------------------------------
# issue 9: scope: process shares a breaker by name across the node instances of the process


async def test_scope_process_shares_a_breaker_by_name_across_node_instances():
    Node = compose(NodeEffect, ["circuit_breaker"])
    cfg = {"circuit_breaker": {"scope": "process", "failure_threshold": 2,
                               "breakers": {"shared-db": {"reset_timeout": 7}}}}
    metrics_seen = []
    a, b = Node(capability_config=cfg), Node(capability_config=cfg)
    heard: list[list] = [[], []]
    a.circuit_breaker.on_state_change.append(heard[0].append)
    b.circuit_breaker.on_state_change.append(heard[1].append)
    db = a.circuit_breaker("shared-db")
    assert b.circuit_breaker("shared-db") is db and db.policy.reset_timeout == 7
    fail(db)
    with pytest.raises(ConnectionError):
        b.circuit_breaker("shared-db").call(boom)  # b's failure adds to a's
    assert db.state is OPEN
    with pytest.raises(CircuitOpenError):
        b.circuit_breaker("shared-db").call(lambda: "x")
    assert [c.new for c in heard[0]] == [OPEN] and [c.new for c in heard[1]] == [OPEN]
    for node in (a, b):  # every sharing node reports the shared breaker's state
        gauges = node.metrics.snapshot()["gauges"]
        metrics_seen.append(gauges['circuit_breaker_state{operation_key="shared-db"}'])
    assert metrics_seen == [1, 1]
    await a.circuit_breaker.drain()
    # the default scope keeps one breaker per node
    c, d = Node(), Node()
    assert c.circuit_breaker("shared-db") is not d.circuit_breaker("shared-db")
    assert c.circuit_breaker("shared-db") is not db


def test_scope_process_refuses_a_different_policy_for_a_shared_name():
    Node = compose(NodeEffect, ["circuit_breaker"])
    a = Node(capability_config={"circuit_breaker": {"scope": "process",
                                                    "breakers": {"pay": {"failure_threshold": 3}}}})
    b = Node(capability_config={"circuit_breaker": {"scope": "process",
                                                    "breakers": {"pay": {"failure_threshold": 4}}}})
    breaker = a.circuit_breaker("pay")
    with pytest.raises(ConfigurationError, match=r"'pay' is shared .*failure_threshold"):
        b.circuit_breaker("pay")
    assert breaker.policy.failure_threshold == 3


def test_a_process_scope_breaker_lives_while_a_node_uses_it():
    import gc
    import weakref

    Node = compose(NodeEffect, ["circuit_breaker"])
    cfg = {"circuit_breaker": {"scope": "process"}}
    node = Node(capability_config=cfg)
    ref = weakref.ref(node.circuit_breaker("ephemeral"))
    fail(node.circuit_breaker("ephemeral"))
    other = Node(capability_config=cfg)
    assert other.circuit_breaker("ephemeral").status().failure_count == 1
    del node, other
    gc.collect()
    assert ref() is None  # no node holds it: the registry forgets it
    fresh = Node(capability_config=cfg)
    assert fresh.circuit_breaker("ephemeral").status().failure_count == 0
