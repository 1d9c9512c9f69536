"""The timeout capability: the timer's cancellation semantics, context deadlines, sync callables,
the per-attempt guard with retry and ``total_timeout``.

Everything time-based runs on ``ManualClock.run``: an event loop whose time is the manual clock
and which jumps over idle waits, so a "30 second" timeout takes no wall-clock time.
"""

from __future__ import annotations

import asyncio
import doctest
import functools
import pickle
import threading
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from onex_compose import ConfigurationError, NodeCompute, OnexError, compose
from onex_compose.capabilities import CONTRACTS_DIR, _context
from onex_compose.capabilities import timeout as timeout_module
from onex_compose.capabilities._context import ManualClock
from onex_compose.capabilities.metrics import Metrics
from onex_compose.capabilities.retry import RetryPolicy
from onex_compose.capabilities.timeout import (
    MixinTimeout,
    OperationTimeoutError,
    TimeoutConfig,
    TimeoutPolicy,
    TimeoutProtocol,
    TimeoutThreadsFullError,
    is_async_callable,
)


async def hang() -> None:
    await asyncio.Event().wait()


def policy(clock: ManualClock, metrics: Any = None, **cfg: Any) -> TimeoutPolicy:
    return TimeoutPolicy(cfg, metrics=metrics, clock=clock)


# -- configuration and the error ----------------------------------------------------------------


def test_contract_config_section_matches_the_model_defaults() -> None:
    data = yaml.safe_load((CONTRACTS_DIR / "mixin_timeout.yaml").read_text("utf-8"))
    assert data["timeout_config"] == TimeoutConfig().model_dump(mode="json")
    assert data["composition"]["guard_rank"] == 80
    deps = {d["name"]: d["optional"] for d in data["requires_dependencies"]}
    assert deps == {"metrics": False, "tracing": True}  # tracing: order-only (issue 11)


def test_contract_passes_the_validator() -> None:
    from onex_compose._validate import validate_file

    assert validate_file(CONTRACTS_DIR / "mixin_timeout.yaml").ok


@pytest.mark.parametrize(("bad", "needle"), [
    ({"timeout": 0}, "timeout"), ({"timeout": -1}, "timeout"),
    ({"sync_calls": "kill"}, "sync_calls"), ({"totl_timeout": 1}, "did you mean 'total_timeout'"),
])
def test_bad_config_is_a_clear_error(bad: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError, match="timeout") as info:
        TimeoutPolicy(bad)
    assert needle in str(info.value)


def test_error_type_attributes_and_pickling() -> None:
    err = OperationTimeoutError("fetch", 2.0, elapsed=2.0, source="deadline")
    assert isinstance(err, TimeoutError) and isinstance(err, OnexError)
    assert err.onex_retriable is True
    assert RetryPolicy().is_retriable(err)
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.operation, clone.timeout, clone.elapsed, clone.source) == (
        "fetch", 2.0, 2.0, "deadline")
    assert str(clone) == str(err)
    assert "enclosing deadline" in str(err)


def test_is_async_callable() -> None:
    async def a() -> None: ...

    def s() -> None: ...

    class AsyncCall:
        async def __call__(self) -> None: ...

    class Obj:
        async def m(self) -> None: ...

    assert is_async_callable(a)
    assert is_async_callable(Obj().m)
    assert is_async_callable(functools.partial(a))
    assert is_async_callable(AsyncCall())
    assert is_async_callable(mock.AsyncMock())
    assert not is_async_callable(s)
    assert not is_async_callable(lambda: a())
    assert not is_async_callable(print)


# -- the timer ----------------------------------------------------------------------------------


def test_success_returns_the_value_and_sets_the_deadline_for_the_call() -> None:
    clock = ManualClock(100.0)
    seen = []

    async def work(x: int, *, y: int) -> int:
        seen.append(_context.deadline.get())
        await asyncio.sleep(1)
        return x + y

    assert clock.run(policy(clock, timeout=5).run(work, (1,), {"y": 2})) == 3
    assert seen == [105.0]
    assert _context.deadline.get() is None


def test_expiry_cancels_the_work_and_raises_at_the_deadline() -> None:
    clock, metrics = ManualClock(), Metrics()
    events = []

    async def work() -> None:
        try:
            await hang()
        except asyncio.CancelledError:
            events.append(("cancelled", clock()))
            raise

    with pytest.raises(OperationTimeoutError) as info:
        clock.run(policy(clock, metrics, timeout=30).run(work))
    err = info.value
    assert events == [("cancelled", 30.0)]
    assert (err.operation, err.timeout, err.elapsed, err.source) == (
        "test_expiry_cancels_the_work_and_raises_at_the_deadline.<locals>.work", 30, 30.0,
        "timeout")
    assert isinstance(err.__cause__, asyncio.CancelledError)
    key = f'timeouts_total{{operation="{err.operation}"}}'
    assert metrics.snapshot()["counters"][key] == 1


def test_nested_deadlines_keep_the_earliest() -> None:
    clock = ManualClock()
    seen = []
    p = policy(clock, timeout=100)

    async def inner() -> None:
        seen.append(_context.deadline.get())
        await hang()

    async def outer() -> None:
        seen.append(_context.deadline.get())
        await p.run(inner, timeout=50)  # longer than what is left of the outer 10 s

    with pytest.raises(OperationTimeoutError) as info:
        clock.run(p.run(outer, timeout=10))
    assert seen == [10.0, 10.0]
    assert clock() == 10.0
    assert info.value.source in ("deadline", "timeout")


@settings(max_examples=60, deadline=None)
@given(timeouts=st.lists(st.one_of(st.none(), st.floats(0.5, 100)), min_size=1, max_size=5),
       steps=st.lists(st.floats(0, 0.4), min_size=5, max_size=5))
def test_nested_timeouts_fire_at_the_earliest_deadline(timeouts: list[float | None],
                                                       steps: list[float]) -> None:
    clock = ManualClock()
    p = policy(clock, timeout=None)
    expected: list[float] = []

    async def level(i: int) -> None:
        await asyncio.sleep(steps[i])
        if i + 1 == len(timeouts):
            await hang()
        t = timeouts[i + 1]
        if t is not None:
            expected.append(clock() + t)
        await p.run(level, (i + 1,), timeout=t)

    async def main() -> None:
        if timeouts[0] is not None:
            expected.append(clock() + timeouts[0])
        await p.run(level, (0,), timeout=timeouts[0])

    if all(t is None for t in timeouts):
        return  # nothing would ever fire
    with pytest.raises(OperationTimeoutError):
        clock.run(main())
    assert clock() == pytest.approx(min(expected))


@settings(max_examples=100, deadline=None)
@given(calls=st.lists(st.tuples(st.floats(0, 5), st.integers(1, 40), st.integers(1, 40)),
                      min_size=1, max_size=60))
def test_concurrent_calls_each_end_at_their_own_deadline(
        calls: list[tuple[float, int, int]]) -> None:
    """Many calls share one per-loop deadline heap: each ends at min(its timeout, its work)."""
    clock = ManualClock()
    p = policy(clock, timeout=None)
    ended: dict[int, tuple[str, float]] = {}

    async def one(i: int, start: float, timeout: float, work: float) -> None:
        await asyncio.sleep(start)
        try:
            await p.run(asyncio.sleep, (work,), timeout=timeout)
            ended[i] = ("done", clock() - start)
        except OperationTimeoutError:
            ended[i] = ("timeout", clock() - start)

    async def main() -> None:
        # integer tenths keep timeouts and work apart (no ties on the virtual clock)
        await asyncio.gather(*(one(i, s, t / 10, w / 10 + 0.05)
                               for i, (s, t, w) in enumerate(calls)))

    clock.run(main())
    for i, (_s, t, w) in enumerate(calls):
        timeout, work = t / 10, w / 10 + 0.05
        kind, took = ended[i]
        assert kind == ("timeout" if timeout < work else "done")
        # the timer fires every deadline within 1 µs of the one due (as the loop runs timers up
        # to its clock resolution early), so a call may end up to 1 µs (+ rounding) early
        assert took == pytest.approx(min(timeout, work), abs=2e-6)
    watch = p._watch
    assert watch is not None and watch.live == 0


def test_the_deadline_heap_stays_small_when_calls_finish_early() -> None:
    clock = ManualClock()
    p = policy(clock, timeout=30)

    async def quick() -> None:
        await asyncio.sleep(0.001)

    async def main() -> int:
        for _ in range(5000):
            await p.run(quick)
        assert p._watch is not None
        return len(p._watch.heap)

    assert clock.run(main()) <= 130  # finished calls are dropped, not kept for 30 s


def test_a_passed_deadline_raises_without_starting_the_work() -> None:
    clock = ManualClock(10.0)
    started = []

    async def work() -> None:
        started.append(1)

    async def main() -> None:
        token = _context.deadline.set(5.0)
        try:
            await policy(clock, timeout=30).run(work)
        finally:
            _context.deadline.reset(token)

    with pytest.raises(OperationTimeoutError) as info:
        clock.run(main())
    assert started == [] and info.value.source == "deadline"
    with pytest.raises(OperationTimeoutError):
        clock.run(policy(clock).run(work, timeout=0))
    assert started == []


def test_outside_cancellation_is_not_turned_into_a_timeout() -> None:
    clock = ManualClock()

    async def main() -> int:
        task = asyncio.create_task(policy(clock, timeout=30).run(hang))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelling()

    assert clock.run(main()) == 1  # the outside request is still counted, not swallowed
    assert clock() == 1.0


def test_cancellation_arriving_with_the_timeout_stays_a_cancellation() -> None:
    clock = ManualClock()

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().call_at(5.0, task.cancel)  # same instant as the deadline
        await policy(clock, timeout=5).run(hang)

    with pytest.raises(asyncio.CancelledError):
        clock.run(main())


def test_work_that_swallows_the_cancellation_still_uncancels() -> None:
    clock = ManualClock()

    async def stubborn() -> str:
        try:
            await hang()
        except asyncio.CancelledError:
            return "finished anyway"
        return "unreachable"

    async def main() -> tuple[str, int]:
        result = await policy(clock, timeout=3).run(stubborn)
        task = asyncio.current_task()
        assert task is not None
        return result, task.cancelling()

    assert clock.run(main()) == ("finished anyway", 0)


def test_work_that_turns_the_cancellation_into_another_error() -> None:
    clock = ManualClock()

    async def converts() -> None:
        try:
            await hang()
        except asyncio.CancelledError:
            raise ValueError("cleanup failed") from None

    async def main() -> int:
        with pytest.raises(ValueError, match="cleanup failed"):
            await policy(clock, timeout=3).run(converts)
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    assert clock.run(main()) == 0


def test_an_enclosing_asyncio_timeout_keeps_its_own_error() -> None:
    clock = ManualClock()

    async def main() -> None:
        async with asyncio.timeout(2):
            await policy(clock, timeout=30).run(hang)

    with pytest.raises(TimeoutError) as info:
        clock.run(main())
    assert not isinstance(info.value, OperationTimeoutError)
    assert clock() == 2.0


def test_works_across_repeated_event_loops() -> None:
    p = TimeoutPolicy({"timeout": 5})

    async def quick() -> int:
        return 7

    for _ in range(3):
        assert asyncio.run(p.run(quick)) == 7


def test_outside_a_task_is_a_clear_error() -> None:
    p = TimeoutPolicy({"timeout": 5})
    errors: list[BaseException] = []

    async def quick() -> int:
        return 1

    def drive() -> None:  # a loop callback: a running loop, but no current task
        coro = p.run(quick)
        try:
            coro.send(None)
        except BaseException as exc:
            errors.append(exc)

    async def main() -> None:
        asyncio.get_running_loop().call_soon(drive)
        await asyncio.sleep(0.001)

    asyncio.run(main())
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert "inside an asyncio task" in str(errors[0])


# -- plain (sync) callables ---------------------------------------------------------------------


def test_sync_callable_runs_in_a_daemon_thread_and_sees_the_deadline() -> None:
    clock = ManualClock()
    seen: dict[str, Any] = {}

    def work(x: int) -> int:
        seen["thread"] = threading.current_thread()
        seen["remaining"] = _context.remaining(clock)
        return x * 3

    assert clock.run(policy(clock, timeout=4).run(work, (5,))) == 15
    assert seen["thread"] is not threading.main_thread() and seen["thread"].daemon
    assert seen["remaining"] == 4.0


def test_sync_callable_is_abandoned_on_timeout_and_keeps_running() -> None:
    clock, metrics = ManualClock(), Metrics()
    release, finished = threading.Event(), threading.Event()

    def blocking() -> str:
        release.wait(10)
        finished.set()
        return "late"

    p = policy(clock, metrics, timeout=2)
    with pytest.raises(OperationTimeoutError) as info:
        clock.run(p.run(blocking))
    assert info.value.abandoned_thread and "keeps running" in str(info.value)
    assert p.abandoned_threads == 1
    assert not finished.is_set()  # still running after the caller gave up
    release.set()
    assert finished.wait(5)
    c = metrics.snapshot()["counters"]
    assert c['timeout_abandoned_threads_total{operation="test_sync_callable_is_abandoned_'
             'on_timeout_and_keeps_running.<locals>.blocking"}'] == 1


def test_an_abandoned_thread_does_not_hold_up_interpreter_exit() -> None:
    """asyncio.to_thread's executor is joined at exit; our daemon thread is not."""
    import subprocess
    import sys

    code = (
        "import asyncio, threading\n"
        "from onex_compose.capabilities.timeout import TimeoutPolicy, OperationTimeoutError\n"
        "p = TimeoutPolicy({'timeout': 0.05})\n"
        "try:\n"
        "    asyncio.run(p.run(threading.Event().wait))  # blocks forever in its thread\n"
        "except OperationTimeoutError:\n"
        "    print('timed out')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "timed out"


def test_sync_callable_errors_propagate() -> None:
    clock = ManualClock()

    def broken() -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError):
        clock.run(policy(clock, timeout=2).run(broken))


def test_sync_callable_returning_a_coroutine_is_awaited() -> None:
    clock = ManualClock()

    async def work() -> int:
        return 9

    assert clock.run(policy(clock, timeout=2).run(lambda: work())) == 9


def test_refuse_mode_rejects_sync_callables() -> None:
    clock = ManualClock()
    p = policy(clock, timeout=2, sync_calls="refuse")
    with pytest.raises(TypeError, match="sync_calls"):
        clock.run(p.run(sum, ([1],)))
    with pytest.raises(TypeError, match="sync_calls"):
        p.run_sync(sum, ([1],))


def test_run_sync_from_sync_code() -> None:
    p = TimeoutPolicy({"timeout": 5})
    assert p.run_sync(sum, ([1, 2],)) == 3
    release = threading.Event()
    with pytest.raises(OperationTimeoutError) as info:
        p.run_sync(release.wait, (10,), timeout=0.02)  # the only real (20 ms) wait here
    assert info.value.abandoned_thread
    release.set()
    with pytest.raises(ZeroDivisionError):
        p.run_sync(lambda: 1 / 0)


def _pool_threads(p: TimeoutPolicy) -> int:
    prefix = f"onex-timeout:{p.name}-"
    return sum(1 for t in threading.enumerate() if t.name.startswith(prefix))


def _wait_until(condition: Any, what: str, seconds: float = 15.0) -> None:
    deadline = _context.monotonic() + seconds
    while not condition():
        assert _context.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.005)


def test_many_timed_out_sync_calls_never_exceed_max_threads() -> None:
    """Before, each timed-out sync call left a new daemon thread (50 calls: 51 threads)."""
    metrics = Metrics()
    p = TimeoutPolicy({"timeout": 0.01, "max_threads": 3}, metrics=metrics, name="bounded")
    gate = threading.Event()
    timed_out = refused = peak = 0
    try:
        for _ in range(50):
            try:
                p.run_sync(gate.wait, (30,))
            except OperationTimeoutError as err:
                assert err.abandoned_thread
                timed_out += 1
            except TimeoutThreadsFullError as err:
                assert (err.max_threads, err.abandoned) == (3, 3)
                refused += 1
            peak = max(peak, _pool_threads(p))
        assert (timed_out, refused) == (3, 47) and peak == 3
        assert p.sync_threads() == {"max_threads": 3, "threads": 3, "busy": 3, "abandoned": 3}
    finally:
        gate.set()
    _wait_until(lambda: p.sync_threads()["busy"] == 0, "the abandoned calls to return")
    assert p.sync_threads()["abandoned"] == 0
    assert [p.run_sync(pow, (2, n)) for n in range(20)] == [2 ** n for n in range(20)]
    assert _pool_threads(p) <= 3  # the workers are reused
    counters = metrics.snapshot()["counters"]
    assert counters['timeout_abandoned_threads_total{operation="Event.wait"}'] == 3
    assert counters['timeout_sync_rejections_total{operation="Event.wait"}'] == 47


def test_async_plain_callables_share_the_bounded_threads_and_are_refused_when_full() -> None:
    clock = ManualClock()
    p = TimeoutPolicy({"timeout": 2, "max_threads": 2}, clock=clock, name="async-bounded")
    gate = threading.Event()
    ran: list[int] = []

    def blocking(n: int) -> None:
        ran.append(n)
        gate.wait(30)

    async def main() -> list[str]:
        outcomes = []
        for n in range(5):
            try:
                await p.run(blocking, (n,))
            except OperationTimeoutError:
                outcomes.append("timeout")
            except TimeoutThreadsFullError as err:
                assert "refused without running" in str(err) and "max_threads" in str(err)
                outcomes.append("full")
        return outcomes

    try:
        assert clock.run(main()) == ["timeout", "timeout", "full", "full", "full"]
        assert p.abandoned_threads == 2 and _pool_threads(p) == 2
    finally:
        gate.set()
    _wait_until(lambda: sorted(ran) == [0, 1], "the two running calls")  # refused ones never ran
    _wait_until(lambda: p.sync_threads()["busy"] == 0, "the abandoned calls to return")
    assert p.run_sync(sum, ([4, 5],)) == 9  # a free worker again


def test_threads_full_error_is_not_retried_pickles_and_is_breaker_neutral() -> None:
    err = TimeoutThreadsFullError("n.timeout", "fetch", 4, abandoned=3)
    assert isinstance(err, OnexError) and isinstance(err, RuntimeError)
    assert err.onex_retriable is False and not RetryPolicy().is_retriable(err)
    assert err.onex_breaker_neutral is True
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.name, clone.operation, clone.max_threads, clone.abandoned) == (
        "n.timeout", "fetch", 4, 3)
    assert "3 of them still running" in str(err)


@pytest.mark.parametrize("bad", [0, -1, 5000, "many"])
def test_max_threads_is_validated(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_threads"):
        TimeoutPolicy({"max_threads": bad})


def test_sync_guard_times_out_a_plain_process_in_a_bounded_worker() -> None:
    node = compose(NodeCompute, ["timeout"])(
        capability_config={"timeout": {"timeout": 0.05, "max_threads": 1}})
    gate = threading.Event()
    threads: list[threading.Thread] = []

    def body(x: int) -> int:
        threads.append(threading.current_thread())
        if x < 0:
            gate.wait(30)
        if x == 0:
            raise ValueError("zero")
        return x * 2

    guarded = node._guard_sync_timeout(body)
    assert guarded(21) == 42  # a plain value, without an event loop
    assert threads[-1] is not threading.current_thread() and threads[-1].daemon
    with pytest.raises(ValueError, match="zero"):
        guarded(0)
    try:
        with pytest.raises(OperationTimeoutError) as info:
            guarded(-1)
        assert info.value.abandoned_thread and info.value.operation.endswith(".process")
        with pytest.raises(TimeoutThreadsFullError):
            guarded(1)  # the one worker still runs the timed-out call
    finally:
        gate.set()
    _wait_until(lambda: node.timeout_policy.sync_threads()["busy"] == 0, "the worker")
    assert guarded(2) == 4


def test_sync_guard_honours_guard_process_and_refuse() -> None:
    off = compose(NodeCompute, ["timeout"])(
        capability_config={"timeout": {"timeout": 0.01, "guard_process": False}})
    assert off._guard_sync_timeout(threading.current_thread)() is threading.current_thread()
    refuse = compose(NodeCompute, ["timeout"])(
        capability_config={"timeout": {"sync_calls": "refuse"}})
    with pytest.raises(TypeError, match="guard_process: false"):
        refuse._guard_sync_timeout(lambda: 1)()
    no_limit = compose(NodeCompute, ["timeout"])(capability_config={"timeout": {"timeout": None}})
    # nothing to time out: called directly in the caller's thread
    assert no_limit._guard_sync_timeout(threading.current_thread)() is threading.current_thread()


class SyncHang(NodeCompute):
    def process(self, gate: threading.Event) -> str:
        gate.wait(30)
        return "done"


def test_a_composed_sync_process_times_out_in_at_most_max_threads_threads() -> None:
    node = compose(SyncHang, ["timeout"])(
        capability_config={"timeout": {"timeout": 0.02, "max_threads": 2}})
    gate = threading.Event()
    outcomes = []
    try:
        for _ in range(10):
            try:
                outcomes.append(node.process(gate))  # plain sync, no event loop
            except OperationTimeoutError:
                outcomes.append("timeout")
            except TimeoutThreadsFullError:
                outcomes.append("full")
        assert outcomes == ["timeout"] * 2 + ["full"] * 8
        assert _pool_threads(node.timeout_policy) == 2
    finally:
        gate.set()
    _wait_until(lambda: node.timeout_policy.sync_threads()["busy"] == 0, "the workers")
    assert node.process(gate) == "done"


def test_run_sync_respects_a_passed_deadline_without_starting() -> None:
    clock = ManualClock(10)
    started = []
    token = _context.deadline.set(9.0)
    try:
        with pytest.raises(OperationTimeoutError):
            policy(clock, timeout=5).run_sync(lambda: started.append(1))
    finally:
        _context.deadline.reset(token)
    assert started == []


# -- composed: the guard, retry, total_timeout --------------------------------------------------


class SlowNode(NodeCompute):  # COMPUTE: retry guards process() by default
    """process() hangs for the first ``self.hangs`` calls, then answers."""

    async def process(self, x: int) -> int:
        self.starts.append(_clock_of(self)())
        if len(self.starts) <= self.hangs:
            await hang()
        return x * 2


def _clock_of(node: Any) -> ManualClock:
    return node.timeout_policy.clock  # type: ignore[no-any-return]


def make(caps: list[str], hangs: int, clock: ManualClock, **config: Any) -> Any:
    node = compose(SlowNode, caps)(capability_config=config)
    node.starts, node.hangs = [], hangs
    node.timeout_policy.clock = clock
    if "retry" in caps:
        node.retry_policy.clock = clock
    return node


def test_guard_applies_the_per_attempt_timeout() -> None:
    clock = ManualClock()
    node = make(["timeout"], 1, clock, timeout={"timeout": 3})
    with pytest.raises(OperationTimeoutError) as info:
        clock.run(node.process(1))
    assert info.value.operation.endswith(".process")
    assert clock() == 3.0
    assert clock.run(node.process(2)) == 4


def test_guard_switched_off() -> None:
    clock = ManualClock()
    node = make(["timeout"], 0, clock, timeout={"timeout": 3, "guard_process": False})
    assert clock.run(node.process(1)) == 2
    assert isinstance(node, TimeoutProtocol)


def test_retry_retries_a_timed_out_attempt() -> None:
    clock = ManualClock()
    node = make(["retry", "timeout"], 1, clock, timeout={"timeout": 3},
                retry={"jitter": "none", "initial_delay": 1.0})
    assert node.__onex_pipeline__.index("retry") < node.__onex_pipeline__.index("timeout")
    assert clock.run(node.process(5)) == 10
    assert node.starts == [0.0, 4.0]  # attempt 1 cut at 3 s, 1 s back-off


def test_total_timeout_bounds_all_attempts_and_retry_stops_before_it() -> None:
    clock = ManualClock()
    node = make(["retry", "timeout"], 100, clock,
                timeout={"timeout": 2, "total_timeout": 5},
                retry={"max_attempts": 10, "jitter": "none", "initial_delay": 0.5})
    with pytest.raises(OperationTimeoutError) as info:
        clock.run(node.process(1))
    # attempt 1: 0-2 (cut), sleep 0.5, attempt 2: 2.5-4.5 (cut), the next sleep (1 s) would
    # start attempt 3 after the 5 s budget: give up.
    assert node.starts == [0.0, 2.5]
    assert clock() == 4.5
    assert "deadline" in info.value.__notes__[0]


def test_total_timeout_cuts_an_attempt_short() -> None:
    clock = ManualClock()
    node = make(["retry", "timeout"], 100, clock,
                timeout={"timeout": 4, "total_timeout": 5},
                retry={"max_attempts": 10, "jitter": "none", "initial_delay": 0.5})
    with pytest.raises(OperationTimeoutError) as info:
        clock.run(node.process(1))
    assert node.starts == [0.0, 4.5]  # attempt 2 is cut at the total budget (5), not at 8.5
    assert clock() == 5.0
    assert info.value.source == "deadline"


def test_total_timeout_without_retry_is_the_earlier_of_the_two() -> None:
    clock = ManualClock()
    node = make(["timeout"], 1, clock, timeout={"timeout": 10, "total_timeout": 4})
    with pytest.raises(OperationTimeoutError):
        clock.run(node.process(1))
    assert clock() == 4.0


def test_retry_inside_with_timeout_never_sleeps_past_it() -> None:
    clock = ManualClock()
    node = compose(NodeCompute, ["retry", "timeout"])(
        capability_config={"retry": {"max_attempts": 10, "jitter": "none", "initial_delay": 1}})
    node.timeout_policy.clock = clock
    node.retry_policy.clock = clock
    calls = []

    async def flaky() -> None:
        calls.append(clock())
        raise ConnectionError("down")

    async def main() -> None:
        await node.with_timeout(node.with_retry, flaky, timeout=5)

    with pytest.raises(ConnectionError) as info:
        clock.run(main())
    assert calls == [0.0, 1.0, 3.0]  # the next sleep (4 s) would end at 7 > 5
    assert clock() == 3.0
    assert "deadline" in info.value.__notes__[0]


def test_timeouts_count_as_breaker_failures_and_an_open_circuit_stops_retry() -> None:
    from onex_compose.capabilities.circuit_breaker import CircuitOpenError

    clock = ManualClock()
    node = make(["retry", "circuit_breaker", "timeout"], 100, clock,
                timeout={"timeout": 1}, circuit_breaker={"failure_threshold": 2},
                retry={"max_attempts": 5, "jitter": "none", "initial_delay": 0.5})
    pipeline = node.__onex_pipeline__
    assert pipeline.index("retry") < pipeline.index("circuit_breaker") < pipeline.index("timeout")
    with pytest.raises(CircuitOpenError) as info:
        clock.run(node.process(1))
    assert node.starts == [0.0, 1.5]  # two timed-out attempts opened the circuit
    assert "CircuitOpenError is not retriable" in info.value.__notes__[0]


class HandWritten(NodeCompute, MixinTimeout):
    async def process(self, x: int) -> int:
        return x


def test_mixin_hand_written_and_pickled() -> None:
    node = HandWritten(capability_config={"timeout": {"timeout": 7}})
    assert "metrics" in type(node).__composition__.capabilities
    assert asyncio.run(node.process(3)) == 3
    clone = pickle.loads(pickle.dumps(node))
    assert clone.timeout_policy.config.timeout == 7
    assert clone.timeout_policy is not node.timeout_policy


def test_with_timeout_default_comes_from_config() -> None:
    clock = ManualClock()
    node = compose(NodeCompute, ["timeout"])(capability_config={"timeout": {"timeout": 6}})
    node.timeout_policy.clock = clock
    with pytest.raises(OperationTimeoutError):
        clock.run(node.with_timeout(hang))
    assert clock() == 6.0
    with pytest.raises(OperationTimeoutError):
        clock.run(node.with_timeout(hang, timeout=1))
    assert clock() == 7.0


def test_docstring_examples() -> None:
    result = doctest.testmod(timeout_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# -- review fixes: bad arguments are clear errors ------------------------------------------------


@pytest.mark.parametrize(("bad", "error"), [
    ("2", TypeError), (True, TypeError), ([1], TypeError), (float("nan"), ValueError)])
def test_a_bad_timeout_argument_is_a_clear_error(bad: Any, error: type[Exception]) -> None:
    clock = ManualClock()
    p = policy(clock)
    node = compose(NodeCompute, ["timeout"])()
    for call in (lambda: p.run(hang, timeout=bad), lambda: p.run(sum, ([1],), timeout=bad),
                 lambda: p.run_sync(sum, ([1],), timeout=bad),
                 lambda: node.with_timeout(hang, timeout=bad)):
        with pytest.raises(error, match=r"timeout must be a number of seconds, got .*timeout=2.5"):
            call()
    assert clock.run(p.run(asyncio.sleep, (0, "ok"), timeout=float("inf"))) == "ok"
    assert clock.run(p.run(asyncio.sleep, (0, "ok"), timeout=3)) == "ok"  # an int is fine
    with pytest.raises(OperationTimeoutError):  # <= 0 is already expired, as asyncio has it
        clock.run(p.run(hang, timeout=-1))


def test_a_non_callable_is_named() -> None:
    p = TimeoutPolicy()
    with pytest.raises(TypeError, match="with_timeout needs a callable .* got 5"):
        p.run(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="run_sync needs a plain callable .* got 'x'"):
        p.run_sync("x")  # type: ignore[arg-type]


def test_a_worker_whose_job_raises_gives_its_place_back() -> None:
    pool = timeout_module._SyncThreads(1, "broken-job")
    done = threading.Event()

    def bad() -> None:
        done.set()
        raise RuntimeError("a bug in the job")

    with mock.patch("threading.excepthook"):  # the dying worker reports it; keep the log quiet
        pool.submit(bad, "bad")
        assert done.wait(10)
        _wait_until(lambda: pool.snapshot()["threads"] == 0, "the worker to exit")
    assert pool.snapshot() == {"max_threads": 1, "threads": 0, "busy": 0, "abandoned": 0}
    ran = threading.Event()
    pool.submit(ran.set, "ok")  # its place is free again
    assert ran.wait(10)
