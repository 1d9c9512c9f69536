"""The bulkhead capability: the limit under randomized schedules (async and threads), FIFO waits,
rejections, cancellation, deadlines, one limit shared by threads and loops, the guard.

Async schedules run on ``ManualClock.run`` (virtual time: waits cost nothing); thread tests are
driven by events, never by sleeping.
"""

from __future__ import annotations

import asyncio
import doctest
import pickle
import threading
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from onex_compose import ConfigurationError, NodeEffect, OnexError, compose
from onex_compose.capabilities import CONTRACTS_DIR, _context
from onex_compose.capabilities import bulkhead as bulkhead_module
from onex_compose.capabilities._context import ManualClock
from onex_compose.capabilities.bulkhead import (
    Bulkhead,
    BulkheadConfig,
    BulkheadFullError,
    BulkheadProtocol,
    MixinBulkhead,
    _Waiter,
)
from onex_compose.capabilities.metrics import Metrics
from onex_compose.capabilities.retry import RetryPolicy
from onex_compose.capabilities.timeout import OperationTimeoutError

# -- configuration and the error ----------------------------------------------------------------


def test_contract_config_section_matches_the_model_defaults() -> None:
    data = yaml.safe_load((CONTRACTS_DIR / "mixin_bulkhead.yaml").read_text("utf-8"))
    assert data["bulkhead_config"] == BulkheadConfig().model_dump(mode="json")
    assert data["composition"]["guard_rank"] == 90
    deps = {d["name"]: d["optional"] for d in data["requires_dependencies"]}
    assert deps == {"metrics": False, "tracing": True}  # tracing: order-only (issue 11)


def test_contract_passes_the_validator() -> None:
    from onex_compose._validate import validate_file

    assert validate_file(CONTRACTS_DIR / "mixin_bulkhead.yaml").ok


@pytest.mark.parametrize(("bad", "needle"), [
    ({"max_concurrent": 0}, "max_concurrent"), ({"max_wait": -1}, "max_wait"),
    ({"max_waiting": -2}, "max_waiting"), ({"max_concurent": 3}, "did you mean 'max_concurrent'"),
])
def test_bad_config_is_a_clear_error(bad: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError, match="bulkhead") as info:
        Bulkhead(bad)
    assert needle in str(info.value)


def test_error_attributes_pickling_and_not_retriable() -> None:
    err = BulkheadFullError("db", 4, active=4, waited=0.5, max_wait=0.5)
    assert isinstance(err, RuntimeError) and isinstance(err, OnexError)
    assert err.onex_retriable is False and not RetryPolicy().is_retriable(err)
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.name, clone.limit, clone.active, clone.waited) == ("db", 4, 4, 0.5)
    assert "after waiting 0.5 s" in str(err) and "max_concurrent" in str(err)


# -- async basics -------------------------------------------------------------------------------


def test_rejects_at_once_when_full_and_max_wait_is_zero() -> None:
    metrics = Metrics()
    b = Bulkhead({"max_concurrent": 2}, name="db", metrics=metrics)

    async def main() -> None:
        async with b, b:
            assert b.active == 2
            with pytest.raises(BulkheadFullError) as info:
                async with b:
                    pass
            assert info.value.waited == 0.0 and info.value.active == 2
        assert b.active == 0

    asyncio.run(main())
    snap = metrics.snapshot()
    assert snap["counters"]['bulkhead_rejections_total{bulkhead="db"}'] == 1
    assert snap["gauges"]['bulkhead_active_calls{bulkhead="db"}'] == 0  # read at scrape time
    assert b.snapshot() == {"name": "db", "limit": 2, "active": 0, "waiting": 0, "peak": 2,
                            "rejected": 1}
    assert metrics.snapshot()["gauges"]['bulkhead_active_calls{bulkhead="db"}'] == 0


@pytest.mark.parametrize("backend", ["memory", "prometheus"])
def test_gauges_are_read_at_scrape_time_and_never_go_stale(backend: str) -> None:
    """Before, the uncontended release() published nothing: after a burst with one rejection,
    bulkhead_active_calls read 2 with nothing active, forever."""
    from prometheus_client.parser import text_string_to_metric_families

    from onex_compose.capabilities.metrics import MetricsConfig, build_metrics

    metrics = build_metrics(MetricsConfig(backend=backend))  # type: ignore[arg-type]
    b = Bulkhead({"max_concurrent": 2}, name="db", metrics=metrics)
    key = 'bulkhead_active_calls{bulkhead="db"}'

    def exported() -> dict[str, float]:
        return {s.name + "".join(f'{{{k}="{v}"}}' for k, v in s.labels.items()): s.value
                for f in text_string_to_metric_families(metrics.exposition()) for s in f.samples}

    assert metrics.snapshot()["gauges"][key] == 0
    b.acquire_sync()
    assert metrics.snapshot()["gauges"][key] == 1 and exported()[key] == 1.0  # uncontended
    b.acquire_sync()
    with pytest.raises(BulkheadFullError):
        b.acquire_sync()
    assert metrics.snapshot()["gauges"][key] == 2
    b.release()
    b.release()
    gauges = metrics.snapshot()["gauges"]
    assert gauges[key] == 0 and gauges['bulkhead_waiting_calls{bulkhead="db"}'] == 0
    assert exported()[key] == 0.0
    assert metrics.snapshot()["counters"]['bulkhead_rejections_total{bulkhead="db"}'] == 1


def test_gauges_count_waiting_callers_and_follow_a_reconfigured_node() -> None:
    node = compose(NodeEffect, ["bulkhead"])(
        capability_config={"bulkhead": {"max_concurrent": 1, "max_wait": 30, "name": "a"}})
    bulkhead = node.bulkhead
    bulkhead.acquire_sync()
    entered = threading.Event()

    def waiter() -> None:
        entered.set()
        with bulkhead:
            pass

    thread = threading.Thread(target=waiter)
    thread.start()
    assert entered.wait(10)
    deadline = _context.monotonic() + 10
    while node.metrics.snapshot()["gauges"]['bulkhead_waiting_calls{bulkhead="a"}'] != 1:
        assert _context.monotonic() < deadline, "the waiter never queued"
        threading.Event().wait(0.005)
    bulkhead.release()
    thread.join(10)
    gauges = node.metrics.snapshot()["gauges"]
    assert gauges['bulkhead_waiting_calls{bulkhead="a"}'] == 0
    assert gauges['bulkhead_active_calls{bulkhead="a"}'] == 0
    node.setup_bulkhead({"max_concurrent": 3, "name": "b"})
    node.bulkhead.acquire_sync()
    gauges = node.metrics.snapshot()["gauges"]
    assert 'bulkhead_active_calls{bulkhead="a"}' not in gauges  # the old one's series is gone
    assert gauges['bulkhead_active_calls{bulkhead="b"}'] == 1
    node.bulkhead.release()


def test_a_dropped_bulkhead_is_not_kept_alive_by_its_gauges() -> None:
    import gc
    import weakref

    metrics = Metrics()
    b = Bulkhead({"max_concurrent": 2}, name="tmp", metrics=metrics)
    ref = weakref.ref(b)
    b.acquire_sync()
    del b
    gc.collect()
    assert ref() is None
    assert metrics.snapshot()["gauges"]['bulkhead_active_calls{bulkhead="tmp"}'] == 0


def test_sync_guard_limits_a_plain_process_without_an_event_loop() -> None:
    node = compose(NodeEffect, ["bulkhead"])(
        capability_config={"bulkhead": {"max_concurrent": 1, "name": "s"}})
    seen: list[int] = []

    def body(x: int) -> int:
        seen.append(node.bulkhead.active)
        if x < 0:
            raise ValueError("boom")
        return x * 2

    guarded = node._guard_sync_bulkhead(body)
    assert guarded(4) == 8  # a plain value, no coroutine
    with pytest.raises(ValueError, match="boom"):
        guarded(-1)
    assert seen == [1, 1] and node.bulkhead.active == 0  # held during the call, released after
    node.bulkhead.acquire_sync()
    with pytest.raises(BulkheadFullError):
        guarded(1)
    node.bulkhead.release()
    off = compose(NodeEffect, ["bulkhead"])(
        capability_config={"bulkhead": {"max_concurrent": 1, "guard_process": False}})
    off.bulkhead.acquire_sync()
    assert off._guard_sync_bulkhead(lambda x: x + 1)(1) == 2  # guard_process: false
    off.bulkhead.release()


class SyncWork(NodeEffect):
    def process(self, gate: threading.Event) -> str:
        gate.wait(30)
        return "done"


def test_a_composed_sync_process_is_limited_by_the_thread_bulkhead() -> None:
    node = compose(SyncWork, ["bulkhead"])(
        capability_config={"bulkhead": {"max_concurrent": 1, "name": "sync"}})
    gate, results = threading.Event(), []
    worker = threading.Thread(target=lambda: results.append(node.process(gate)))
    worker.start()
    deadline = _context.monotonic() + 10
    while node.bulkhead.active != 1:
        assert _context.monotonic() < deadline, "the first call never took its slot"
        threading.Event().wait(0.005)
    with pytest.raises(BulkheadFullError):
        node.process(threading.Event())  # called directly: plain sync, rejected at once
    gate.set()
    worker.join(10)
    assert results == ["done"] and node.bulkhead.active == 0
    assert node.process(gate) == "done"  # a plain value, not a coroutine


def test_waiters_are_admitted_first_come_first_served() -> None:
    clock = ManualClock()
    b = Bulkhead({"max_concurrent": 1, "max_wait": 100})
    order: list[tuple[str, float]] = []

    async def call(name: str, hold: float) -> None:
        async with b:
            order.append((name, clock()))
            await asyncio.sleep(hold)

    async def main() -> None:
        first = asyncio.create_task(call("a", 5))
        await asyncio.sleep(0)
        rest = []
        for name in "bcd":
            rest.append(asyncio.create_task(call(name, 1)))
            await asyncio.sleep(0.1)
        await asyncio.gather(first, *rest)

    clock.run(main())
    assert order == [("a", 0.0), ("b", 5.0), ("c", 6.0), ("d", 7.0)]
    assert b.active == 0 and b.waiting == 0


def test_a_waiter_gives_up_after_max_wait() -> None:
    clock = ManualClock()
    b = Bulkhead({"max_concurrent": 1, "max_wait": 2.5})

    async def main() -> BulkheadFullError:
        async with b:
            try:
                await b.acquire()
            except BulkheadFullError as err:
                assert b.waiting == 0
                return err
        raise AssertionError("should have been rejected")

    err = clock.run(main())
    assert err.waited == 2.5 and clock() == 2.5 and b.active == 0


def test_max_waiting_bounds_the_queue() -> None:
    b = Bulkhead({"max_concurrent": 1, "max_wait": 10, "max_waiting": 1})

    async def main() -> None:
        await b.acquire()
        queued = asyncio.create_task(b.acquire())
        await asyncio.sleep(0)
        assert b.waiting == 1
        with pytest.raises(BulkheadFullError):
            await b.acquire()  # the queue is full: rejected at once
        b.release()
        await queued
        b.release()

    ManualClock().run(main())
    assert b.active == 0


def test_waiting_never_outlasts_the_deadline() -> None:
    clock = ManualClock()
    b = Bulkhead({"max_concurrent": 1, "max_wait": 60}, clock=clock)

    async def main() -> BulkheadFullError:
        await b.acquire()
        token = _context.deadline.set(4.0)
        try:
            with pytest.raises(BulkheadFullError) as info:
                await b.acquire()
            return info.value
        finally:
            _context.deadline.reset(token)
            b.release()

    err = clock.run(main())
    assert err.waited == 4.0 and clock() == 4.0


def test_cancelled_waiter_leaves_the_queue() -> None:
    b = Bulkhead({"max_concurrent": 1, "max_wait": 100})

    async def main() -> None:
        await b.acquire()
        waiter = asyncio.create_task(b.acquire())
        await asyncio.sleep(0)
        assert b.waiting == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert b.waiting == 0
        b.release()
        assert b.active == 0

    ManualClock().run(main())


def test_waiter_granted_and_cancelled_at_once_passes_the_slot_on() -> None:
    b = Bulkhead({"max_concurrent": 1, "max_wait": 100})

    async def main() -> None:
        await b.acquire()
        first = asyncio.create_task(b.acquire())
        second = asyncio.create_task(b.acquire())
        await asyncio.sleep(0)
        b.release()  # grants the slot to `first` ...
        first.cancel()  # ... which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await first
        await second  # the slot went on to `second`
        assert b.active == 1
        b.release()

    ManualClock().run(main())
    assert b.active == 0 and b.waiting == 0


def test_release_without_acquire_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        Bulkhead().release()


def test_run_helpers() -> None:
    b = Bulkhead({"max_concurrent": 1})

    async def double(x: int) -> int:
        assert b.active == 1
        return 2 * x

    assert asyncio.run(b.run(double, 4)) == 8
    assert asyncio.run(b.run(lambda x: x + 1, 4)) == 5
    assert b.run_sync(lambda x: x - 1, 4) == 3
    with pytest.raises(ZeroDivisionError):
        b.run_sync(lambda: 1 / 0)
    assert b.active == 0


def test_works_across_repeated_event_loops() -> None:
    b = Bulkhead({"max_concurrent": 1, "max_wait": 5})

    async def contended() -> int:
        async def hold() -> None:
            async with b:
                await asyncio.sleep(0.001)

        await asyncio.gather(hold(), hold(), hold())
        return b.active

    for _ in range(3):
        assert asyncio.run(contended()) == 0


def test_a_waiter_whose_loop_is_closed_is_skipped() -> None:
    b = Bulkhead({"max_concurrent": 1, "max_wait": 5})
    dead = asyncio.new_event_loop()
    waiter = _Waiter(dead)
    dead.close()
    assert b.try_acquire()
    b._waiters.append(waiter)
    b.release()
    assert not waiter.granted and b.active == 0 and b.waiting == 0


# -- the limit under randomized schedules -------------------------------------------------------


calls = st.lists(st.tuples(st.floats(0, 5), st.floats(0, 3)), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(limit=st.integers(1, 6), max_wait=st.sampled_from([0.0, 0.5, 2.0, 50.0]),
       schedule=calls)
def test_async_limit_is_never_exceeded(limit: int, max_wait: float,
                                       schedule: list[tuple[float, float]]) -> None:
    clock = ManualClock()
    b = Bulkhead({"max_concurrent": limit, "max_wait": max_wait})
    running = [0]
    peak = [0]
    times: dict[int, tuple[float, float]] = {}  # caller -> (arrival, admission)
    outcomes: dict[int, str] = {}

    async def call(i: int, arrival: float, hold: float) -> None:
        await asyncio.sleep(arrival)
        full_on_arrival = running[0] >= limit
        try:
            async with b:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                times[i] = (arrival, clock())
                await asyncio.sleep(hold)
                running[0] -= 1
        except BulkheadFullError as err:
            assert err.waited == pytest.approx(max_wait)
            outcomes[i] = "rejected"
        else:
            outcomes[i] = "ran"
        if max_wait == 0:  # no queue: rejected exactly when every slot was taken
            assert (outcomes[i] == "rejected") == full_on_arrival

    async def main() -> None:
        await asyncio.gather(*(call(i, a, h) for i, (a, h) in enumerate(schedule)))

    clock.run(main())
    assert peak[0] <= limit and b.peak <= limit
    assert len(outcomes) == len(schedule)
    assert b.active == 0 and b.waiting == 0
    if max_wait >= 50:  # long enough for everyone: nobody is rejected
        assert set(outcomes.values()) == {"ran"}
    # first come, first served: of two callers that had to wait, the earlier arrival is
    # admitted no later than the other
    waited = [t for t in times.values() if t[1] > t[0]]
    for a1, s1 in waited:
        for a2, s2 in waited:
            if a1 < a2:
                assert s1 <= s2


@settings(max_examples=25, deadline=None)
@given(limit=st.integers(1, 4), n=st.integers(1, 12), picks=st.lists(st.integers(0, 10**6),
                                                                      min_size=12, max_size=12))
def test_thread_limit_is_never_exceeded(limit: int, n: int, picks: list[int]) -> None:
    b = Bulkhead({"max_concurrent": limit, "max_wait": 30})
    cond = threading.Condition()
    inside: list[int] = []
    peak = [0]
    gates = [threading.Event() for _ in range(n)]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with b:
                with cond:
                    inside.append(i)
                    peak[0] = max(peak[0], len(inside))
                    cond.notify_all()
                gates[i].wait(30)
                with cond:
                    inside.remove(i)
                    cond.notify_all()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    released: set[int] = set()
    for step in range(n):
        with cond:  # wait until as many as may run are inside, then let a random one finish
            assert cond.wait_for(
                lambda: len([i for i in inside if i not in released]) == min(limit, n - step),
                timeout=30)
            candidates = [i for i in inside if i not in released]
            chosen = candidates[picks[step] % len(candidates)]
            released.add(chosen)
        gates[chosen].set()
    for t in threads:
        t.join(30)
    assert not errors
    assert peak[0] <= limit and b.peak <= limit
    assert b.active == 0 and b.waiting == 0


def test_threads_and_async_callers_share_one_limit() -> None:
    b = Bulkhead({"max_concurrent": 1})
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with b:
            holding.set()
            done.wait(30)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert holding.wait(30)

    async def main() -> None:
        with pytest.raises(BulkheadFullError):
            async with b:
                pass

    asyncio.run(main())
    done.set()
    t.join(30)
    assert b.active == 0


def test_an_async_waiter_is_woken_by_a_release_from_another_thread() -> None:
    b = Bulkhead({"max_concurrent": 1, "max_wait": 30})
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with b:
            holding.set()
            release.wait(30)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert holding.wait(30)

    async def main() -> int:
        asyncio.get_running_loop().call_soon(release.set)
        async with b:  # queued; the thread's release wakes us through call_soon_threadsafe
            return b.active

    assert asyncio.run(main()) == 1
    t.join(30)
    assert b.active == 0


def test_sync_waiter_is_admitted_on_release_and_rejected_at_once_when_not_waiting() -> None:
    b = Bulkhead({"max_concurrent": 1, "max_wait": 30})
    b.acquire_sync()
    entered = threading.Event()

    def waiter() -> None:
        with b:
            entered.set()

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    for _ in range(10_000):  # poll until the thread has queued (thread start-up latency only)
        if b.waiting == 1:
            break
        threading.Event().wait(0.0005)
    assert b.waiting == 1 and not entered.is_set()
    b.release()
    assert entered.wait(30)
    t.join(30)
    fast = Bulkhead({"max_concurrent": 1})
    with fast, pytest.raises(BulkheadFullError):
        fast.acquire_sync()


# -- composed -----------------------------------------------------------------------------------


class Worker(NodeEffect):
    async def process(self, x: int) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(1)
            return x
        finally:
            self.running -= 1


def make(caps: list[str], **config: Any) -> Any:
    node = compose(Worker, caps)(capability_config=config)
    node.running = node.peak = 0
    return node


def test_guard_limits_process() -> None:
    node = make(["bulkhead"], bulkhead={"max_concurrent": 2, "name": "work"})
    assert isinstance(node, BulkheadProtocol)

    async def main() -> list[Any]:
        return await asyncio.gather(*(node.process(i) for i in range(5)), return_exceptions=True)

    results = ManualClock().run(main())
    assert results[:2] == [0, 1]
    assert all(isinstance(r, BulkheadFullError) and r.name == "work" for r in results[2:])
    assert node.peak == 2 and node.bulkhead.active == 0


def test_guard_with_waiting_serves_everyone() -> None:
    node = make(["bulkhead"], bulkhead={"max_concurrent": 2, "max_wait": 10})
    clock = ManualClock()

    async def main() -> list[Any]:
        return await asyncio.gather(*(node.process(i) for i in range(5)))

    assert clock.run(main()) == [0, 1, 2, 3, 4]
    assert node.peak == 2 and clock() == 3.0


def test_guard_switched_off() -> None:
    node = make(["bulkhead"], bulkhead={"max_concurrent": 1, "guard_process": False})

    async def main() -> list[Any]:
        return await asyncio.gather(*(node.process(i) for i in range(3)))

    assert ManualClock().run(main()) == [0, 1, 2]
    assert node.peak == 3


def test_retry_does_not_retry_a_full_bulkhead() -> None:
    node = make(["retry", "bulkhead"], bulkhead={"max_concurrent": 1},
                retry={"sleep": False, "max_attempts": 5, "guard_process": True})
    pipeline = node.__onex_pipeline__
    assert pipeline.index("retry") < pipeline.index("bulkhead")

    async def main() -> list[Any]:
        return await asyncio.gather(node.process(1), node.process(2), return_exceptions=True)

    results = ManualClock().run(main())
    assert results[0] == 1 and isinstance(results[1], BulkheadFullError)
    assert node.metrics.snapshot()["counters"].get(
        'retry_attempts_total{operation="Worker.process",outcome="retry"}') is None


def test_attempt_timeout_bounds_the_wait_for_a_slot() -> None:
    clock = ManualClock()
    node = make(["timeout", "bulkhead"], bulkhead={"max_concurrent": 1, "max_wait": 30},
                timeout={"timeout": 0.5})
    node.timeout_policy.clock = clock
    node.bulkhead.clock = clock

    async def main() -> list[Any]:
        return await asyncio.gather(node.process(1), node.process(2), return_exceptions=True)

    results = clock.run(main())
    assert all(isinstance(r, OperationTimeoutError) for r in results)  # 1 s work, 0.5 s limit
    assert node.bulkhead.waiting == 0 and node.bulkhead.active == 0


class HandWritten(NodeEffect, MixinBulkhead):
    async def process(self, x: int) -> int:
        return x


def test_hand_written_default_name_and_pickling() -> None:
    node = HandWritten(node_id="db-node", capability_config={"bulkhead": {"max_concurrent": 3}})
    assert node.bulkhead.name == "db-node" and node.bulkhead.limit == 3
    assert asyncio.run(node.process(5)) == 5
    clone = pickle.loads(pickle.dumps(node))
    assert clone.bulkhead is not node.bulkhead and clone.bulkhead.limit == 3


def test_docstring_examples() -> None:
    result = doctest.testmod(bulkhead_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_a_full_bulkhead_never_opens_a_circuit_breaker_around_it() -> None:
    assert BulkheadFullError.onex_breaker_neutral is True
    node = make(["circuit_breaker", "bulkhead"], bulkhead={"max_concurrent": 1},
                circuit_breaker={"failure_threshold": 1})

    async def main() -> list[Any]:
        return await asyncio.gather(*(node.process(i) for i in range(6)), return_exceptions=True)

    results = ManualClock().run(main())
    assert results[0] == 0 and all(isinstance(r, BulkheadFullError) for r in results[1:])
    assert node.circuit_breaker.default.state.label == "closed"
