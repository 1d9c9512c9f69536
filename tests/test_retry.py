"""The retry capability: policy alone (classification, back-off, deadlines, test switch), composed.

Timing uses ``ManualClock``: sleeps advance it instead of waiting, so nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import doctest
import pickle
import random
import traceback
import warnings
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from onex_compose import ConfigurationError, NodeCompute, NodeEffect, compose, explain
from onex_compose.capabilities import CONTRACTS_DIR, _context
from onex_compose.capabilities import retry as retry_module
from onex_compose.capabilities._context import ManualClock, RetryScope
from onex_compose.capabilities.bulkhead import BulkheadFullError
from onex_compose.capabilities.metrics import Metrics
from onex_compose.capabilities.retry import (
    DEFAULT_FATAL,
    DEFAULT_RETRIABLE,
    MixinRetry,
    RetryConfig,
    RetryPolicy,
    RetryProtocol,
    operation_name,
    retry_testing,
)
from onex_compose.capabilities.timeout import OperationTimeoutError

# -- helpers ------------------------------------------------------------------------------------


class TemporaryFailure(Exception):
    """Named like seed 002's retriable type."""


class AuthenticationError(ConnectionError):
    """Fatal by name, although it is also a ConnectionError (the more specific class wins)."""


class Flaky:
    """Fails ``failures`` times with ``error``, then returns ``value``; records each call."""

    def __init__(self, failures: int, error: type[BaseException] = ConnectionError,
                 value: Any = "ok", clock: ManualClock | None = None) -> None:
        self.failures, self.error, self.value, self.clock = failures, error, value, clock
        self.calls: list[float] = []
        self.raised: list[BaseException] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(self.clock() if self.clock else 0.0)
        if len(self.calls) <= self.failures:
            exc = self.error(f"failure {len(self.calls)}")
            self.raised.append(exc)
            raise exc
        return self.value

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)
        return self(*args, **kwargs)


def policy(clock: ManualClock | None = None, metrics: Any = None, rnd: float | None = None,
           **cfg: Any) -> RetryPolicy:
    p = RetryPolicy(cfg, metrics=metrics, random=(lambda: rnd) if rnd is not None else
                    random.random)
    return p.use_clock(clock or ManualClock())


def counters(metrics: Metrics) -> dict[str, Any]:
    return metrics.snapshot()["counters"]


# -- configuration ------------------------------------------------------------------------------


def test_contract_config_section_matches_the_model_defaults() -> None:
    data = yaml.safe_load((CONTRACTS_DIR / "mixin_retry.yaml").read_text("utf-8"))
    assert data["retry_config"] == RetryConfig().model_dump(mode="json")
    assert data["composition"]["guard_rank"] == 50
    needs = {d["name"] for d in data["requires_dependencies"] if not d.get("optional")}
    assert needs == {"metrics", "health_check"}


def test_contract_passes_the_validator() -> None:
    from onex_compose._validate import validate_file

    report = validate_file(CONTRACTS_DIR / "mixin_retry.yaml")
    assert report.ok, report


def test_seed_000_dict_and_defaults() -> None:
    cfg = RetryConfig.model_validate({"max_attempts": 3, "backoff_factor": 2.0, "max_delay": 60.0})
    assert (cfg.max_attempts, cfg.backoff_factor, cfg.max_delay, cfg.jitter) == (3, 2.0, 60.0, "full")
    assert cfg.retriable_error_types == DEFAULT_RETRIABLE == (
        "TimeoutError", "ConnectionError", "TemporaryFailure")
    assert cfg.fatal_error_types == DEFAULT_FATAL == (
        "AuthenticationError", "ValidationError", "ConfigurationError")


@pytest.mark.parametrize(("bad", "needle"), [
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_atempts": 3}, "did you mean 'max_attempts'"),
    ({"backoff_factor": 0.5}, "backoff_factor"),
    ({"jitter": "sometimes"}, "jitter"),
    ({"retriable_error_types": "TimeoutError"}, "list of exception class names"),
    ({"fatal_error_types": ["not a name"]}, "not an exception class name"),
])
def test_bad_config_is_a_clear_error(bad: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy(bad)
    assert needle in str(info.value)
    assert "retry" in str(info.value)


def test_config_accepts_bool_jitter_and_exception_classes() -> None:
    cfg = RetryConfig(jitter=True, retriable_error_types=[TimeoutError, "KeyError"])
    assert cfg.jitter == "full"
    assert cfg.retriable_error_types == ("TimeoutError", "KeyError")
    assert RetryConfig(jitter=False).jitter == "none"


def test_per_call_max_attempts_is_checked() -> None:
    p = policy()
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="max_attempts must be a positive integer"):
            p.run_sync(Flaky(0), max_attempts=bad)


# -- classification -----------------------------------------------------------------------------


def test_default_classification() -> None:
    p = RetryPolicy()
    assert p.is_retriable(TimeoutError())
    assert p.is_retriable(TimeoutError())
    assert p.is_retriable(ConnectionResetError())  # a subclass of a listed name
    assert p.is_retriable(TemporaryFailure())  # matched by class name
    assert p.is_retriable(OperationTimeoutError("op", 1.0))
    assert not p.is_retriable(AuthenticationError())  # fatal name beats its retriable base
    assert not p.is_retriable(ConfigurationError("bad"))
    assert not p.is_retriable(KeyError("x"))  # unlisted: not retried (safe default)
    assert not p.is_retriable(BulkheadFullError("b", 1, active=1, waited=0, max_wait=0))
    assert not p.is_retriable(asyncio.CancelledError())
    assert not p.is_retriable(KeyboardInterrupt())


def test_pydantic_validation_error_is_fatal() -> None:
    from pydantic import BaseModel, ValidationError

    class M(BaseModel):
        x: int

    with pytest.raises(ValidationError) as info:
        M(x="nope")  # type: ignore[arg-type]
    assert not RetryPolicy().is_retriable(info.value)


def test_onex_retriable_attribute_and_configuration_override() -> None:
    class CircuitOpen(TimeoutError):
        onex_retriable = False  # more specific than its TimeoutError base

    class Odd(KeyError):
        onex_retriable = True

    p = RetryPolicy()
    assert not p.is_retriable(CircuitOpen())
    assert p.is_retriable(Odd())
    err = KeyError("x")
    err.onex_retriable = True  # type: ignore[attr-defined]
    assert p.is_retriable(err)  # the instance decides first
    full = BulkheadFullError("b", 1, active=1, waited=0, max_wait=0)
    assert RetryPolicy({"retriable_error_types": ["BulkheadFullError"]}).is_retriable(full)


def test_open_circuit_and_full_bulkhead_are_not_retried() -> None:
    fn = Flaky(5, error=lambda msg: BulkheadFullError("b", 2, active=2, waited=0, max_wait=0))  # type: ignore[arg-type]
    with pytest.raises(BulkheadFullError):
        policy().run_sync(fn, max_attempts=5)
    assert len(fn.calls) == 1


# -- attempts and back-off ------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(failures=st.integers(0, 12), max_attempts=st.integers(1, 10))
def test_attempt_count_property(failures: int, max_attempts: int) -> None:
    clock = ManualClock()
    fn = Flaky(failures, clock=clock)
    p = policy(clock, max_attempts=max_attempts)
    if failures < max_attempts:
        assert p.run_sync(fn) == "ok"
    else:
        with pytest.raises(ConnectionError) as info:
            p.run_sync(fn)
        assert info.value is fn.raised[-1]
    assert len(fn.calls) == min(failures + 1, max_attempts)
    assert len(clock.sleeps) == len(fn.calls) - 1


@settings(max_examples=300, deadline=None)
@given(initial=st.floats(0, 100), factor=st.floats(1, 10), max_delay=st.floats(0, 1000),
       attempt=st.integers(1, 2000), rnd=st.floats(0, 1, exclude_max=True),
       jitter=st.sampled_from(["full", "equal", "none"]))
def test_delay_is_within_zero_and_the_cap(initial: float, factor: float, max_delay: float,
                                          attempt: int, rnd: float, jitter: str) -> None:
    p = RetryPolicy({"initial_delay": initial, "backoff_factor": factor, "max_delay": max_delay,
                     "jitter": jitter}, random=lambda: rnd)
    try:
        cap = min(initial * factor ** (attempt - 1), max_delay)
    except OverflowError:
        cap = max_delay if initial > 0 else 0.0
    d = p.delay(attempt)
    assert 0.0 <= d <= cap
    if jitter == "none":
        assert d == cap
    elif jitter == "equal":
        assert d >= cap / 2


def test_exponential_schedule_full_jitter_uses_the_random_source() -> None:
    clock = ManualClock()
    p = policy(clock, rnd=0.5, max_attempts=5, initial_delay=1.0, backoff_factor=2.0,
               max_delay=5.0)
    with pytest.raises(ConnectionError):
        p.run_sync(Flaky(10, clock=clock))
    assert clock.sleeps == [0.5, 1.0, 2.0, 2.5]  # U(0, cap) at 0.5, cap = 1, 2, 4, 5


def test_sleeps_happen_between_attempts_async() -> None:
    clock = ManualClock()
    fn = Flaky(2, clock=clock)
    p = policy(clock, jitter="none", initial_delay=1.0)
    assert asyncio.run(p.run(fn.acall)) == "ok"
    assert fn.calls == [0.0, 1.0, 3.0]


def test_retry_after_hint_sets_the_delay_capped_by_max_delay() -> None:
    class Throttled(ConnectionError):
        def __init__(self, msg: str) -> None:
            super().__init__(msg)
            self.retry_after = 7.0

    clock = ManualClock()
    p = policy(clock, max_attempts=2, max_delay=60.0)
    with pytest.raises(Throttled):
        p.run_sync(Flaky(5, error=Throttled))
    assert clock.sleeps == [7.0]
    clock2 = ManualClock()
    with pytest.raises(Throttled):
        policy(clock2, max_attempts=2, max_delay=3.0).run_sync(Flaky(5, error=Throttled))
    assert clock2.sleeps == [3.0]
    clock3 = ManualClock()
    with pytest.raises(Throttled):
        policy(clock3, max_attempts=2, honor_retry_after=False, jitter="none").run_sync(
            Flaky(5, error=Throttled))
    assert clock3.sleeps == [0.1]


# -- the final error ------------------------------------------------------------------------------


def test_final_error_is_the_original_with_a_note_and_traceback() -> None:
    fn = Flaky(10)
    with pytest.raises(ConnectionError) as info:
        policy().run_sync(fn)
    err = info.value
    assert err is fn.raised[-1]
    assert err.__notes__ == ["onex retry: gave up on Flaky after 3 attempts: max_attempts=3 reached"]
    frames = [f.name for f in traceback.extract_tb(err.__traceback__)]
    assert "__call__" in frames  # raised where it happened, not re-created
    assert err.__context__ is None  # no chain of earlier attempts


def test_first_attempt_fatal_error_passes_through_untouched() -> None:
    fn = Flaky(1, error=KeyError)
    with pytest.raises(KeyError) as info:
        policy().run_sync(fn)
    assert not getattr(info.value, "__notes__", None)
    assert len(fn.calls) == 1


def test_fatal_error_after_retries_gets_a_note() -> None:
    errors = iter([ConnectionError("a"), ValueError("b")])

    def fn() -> None:
        raise next(errors)

    with pytest.raises(ValueError) as info:
        policy().run_sync(fn)
    assert "ValueError is not retriable" in info.value.__notes__[0]


# -- cancellation ---------------------------------------------------------------------------------


def test_cancelled_error_is_never_retried() -> None:
    calls = []

    async def fn() -> None:
        calls.append(1)
        raise asyncio.CancelledError

    p = policy(retriable_error_types=["CancelledError", "BaseException", "Exception"])
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(p.run(fn))
    assert calls == [1]


def test_keyboard_interrupt_and_system_exit_are_never_retried() -> None:
    for kind in (KeyboardInterrupt, SystemExit, GeneratorExit):
        fn = Flaky(5, error=kind)
        with pytest.raises(kind):
            policy(retriable_error_types=[kind.__name__]).run_sync(fn)
        assert len(fn.calls) == 1


def test_cancelling_during_backoff_stops_the_loop() -> None:
    clock = ManualClock()
    calls = []

    async def fn() -> None:
        calls.append(clock())
        raise ConnectionError("down")

    async def main() -> None:
        p = RetryPolicy({"max_attempts": 5, "initial_delay": 10, "jitter": "none"})
        task = asyncio.create_task(p.run(fn))
        await asyncio.sleep(5)  # the task is sleeping before attempt 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    clock.run(main())
    assert calls == [0.0]
    assert clock() == 5.0
    assert _context.retry_scope.get() is None


def test_cancel_inside_wait_for_is_not_swallowed() -> None:
    """tenacity #529: under wait_for the cancelled attempt was retried and the timeout lost."""
    clock = ManualClock()
    calls = []

    async def slow() -> str:
        calls.append(clock())
        await asyncio.sleep(0.2)
        return "done"

    async def main() -> None:
        p = RetryPolicy({"retriable_error_types": ["Exception"]})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(p.run(slow), 0.05)

    clock.run(main())
    assert calls == [0.0]


# -- deadlines ------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(deadline=st.floats(0.01, 50), max_attempts=st.integers(1, 12),
       initial=st.floats(0, 5), work=st.lists(st.floats(0, 3), min_size=12, max_size=12),
       rnd=st.floats(0, 1, exclude_max=True))
def test_never_sleeps_past_the_deadline(deadline: float, max_attempts: int, initial: float,
                                        work: list[float], rnd: float) -> None:
    clock = ManualClock()
    slept: list[tuple[float, float]] = []

    def sleep_sync(seconds: float) -> None:
        slept.append((clock(), seconds))
        clock.advance(seconds)

    n = [0]

    def fn() -> None:
        clock.advance(work[n[0]])  # each attempt takes some time
        n[0] += 1
        raise TimeoutError("slow")

    p = policy(clock, rnd=rnd, max_attempts=max_attempts, initial_delay=initial)
    p.sleep_sync = sleep_sync
    token = _context.deadline.set(deadline)
    try:
        with pytest.raises(TimeoutError) as info:
            p.run_sync(fn)
    finally:
        _context.deadline.reset(token)
    for start, seconds in slept:
        assert start + seconds < deadline  # no sleep ends at or past the deadline
    assert n[0] <= max_attempts
    note = info.value.__notes__[0]
    if n[0] < max_attempts:
        assert "deadline" in note


def test_deadline_gives_up_with_the_last_error_and_counts_it() -> None:
    clock, metrics = ManualClock(), Metrics()
    p = policy(clock, metrics=metrics, jitter="none", initial_delay=1.0, max_attempts=10)
    token = _context.deadline.set(2.5)
    try:
        fn = Flaky(10, clock=clock)
        with pytest.raises(ConnectionError) as info:
            p.run_sync(fn)
    finally:
        _context.deadline.reset(token)
    assert fn.calls == [0.0, 1.0]  # the next sleep (2 s) would end at 3.0 > 2.5
    assert "would start after the deadline (1.5 s left)" in info.value.__notes__[0]
    c = counters(metrics)
    assert c['retry_attempts_total{operation="Flaky",outcome="deadline"}'] == 1


def test_max_elapsed_budget_bounds_the_loop_and_is_visible_inside() -> None:
    clock = ManualClock()
    seen: list[float | None] = []

    def fn() -> None:
        seen.append(_context.current_deadline())
        raise TimeoutError

    p = policy(clock, jitter="none", initial_delay=1.0, max_attempts=10, max_elapsed=5.0)
    with pytest.raises(TimeoutError):
        p.run_sync(fn)
    assert seen == [5.0, 5.0, 5.0]  # attempts at 0, 1, 3; the next (7) would cross 5
    assert clock() == 3.0


def test_sleep_false_removes_sleeping_but_keeps_the_deadline() -> None:
    clock = ManualClock()
    fn = Flaky(2, clock=clock)
    assert policy(clock, sleep=False, initial_delay=100).run_sync(fn) == "ok"
    assert clock.sleeps == [] and clock() == 0.0
    clock.advance(10)
    token = _context.deadline.set(10.0)  # already reached
    try:
        fn2 = Flaky(5)
        with pytest.raises(ConnectionError):
            policy(clock, sleep=False).run_sync(fn2)
        assert len(fn2.calls) == 1
    finally:
        _context.deadline.reset(token)


# -- the test switch ------------------------------------------------------------------------------


def test_retry_testing_switch_caps_attempts_and_removes_sleeps() -> None:
    clock = ManualClock()
    p = policy(clock, max_attempts=10, initial_delay=5)
    fn = Flaky(100)
    with retry_testing(attempts=3):
        with pytest.raises(ConnectionError):
            p.run_sync(fn)
        with retry_testing(attempts=1):
            fn1 = Flaky(100)
            with pytest.raises(ConnectionError):
                p.run_sync(fn1)
            assert len(fn1.calls) == 1
    assert len(fn.calls) == 3
    assert clock.sleeps == []
    assert retry_module._testing is None
    fn2 = Flaky(1)
    assert p.run_sync(fn2) == "ok"
    assert len(clock.sleeps) == 1  # back to normal afterwards


def test_retry_testing_rejects_bad_attempts() -> None:
    with pytest.raises(ValueError, match="at least 1"), retry_testing(attempts=0):
        pass


# -- metrics --------------------------------------------------------------------------------------


def test_metrics_count_retries_and_outcomes_not_first_try_successes() -> None:
    metrics = Metrics()
    p = policy(metrics=metrics)
    p.run_sync(Flaky(0))
    assert counters(metrics) == {}
    p.run_sync(Flaky(2))
    with pytest.raises(ConnectionError):
        p.run_sync(Flaky(9))
    c = counters(metrics)
    assert c['retry_attempts_total{operation="Flaky",outcome="retry"}'] == 4
    assert c['retry_attempts_total{operation="Flaky",outcome="recovered"}'] == 1
    assert c['retry_attempts_total{operation="Flaky",outcome="exhausted"}'] == 1


def test_operation_name() -> None:
    import functools

    async def fetch() -> None: ...

    assert operation_name(fetch) == "test_operation_name.<locals>.fetch"
    assert operation_name(functools.partial(functools.partial(fetch))) == operation_name(fetch)
    assert operation_name(Flaky(0)) == "Flaky"


# -- sync / async callables -----------------------------------------------------------------------


def test_sync_function_through_async_run_and_lambda_returning_a_coroutine() -> None:
    p = policy(sleep=False)
    fn = Flaky(1)
    assert asyncio.run(p.run(fn, (1,), {"k": 2})) == "ok"
    assert len(fn.calls) == 2
    afn = Flaky(1)
    assert asyncio.run(p.run(lambda: afn.acall())) == "ok"
    assert len(afn.calls) == 2


@pytest.mark.parametrize("fn", [None, 42, "fetch"])
def test_a_non_callable_is_a_clear_type_error(fn: Any) -> None:
    # was Python's bare "'NoneType' object is not callable", from inside the retry loop
    node = compose(NodeCompute, ["retry"])(capability_config={"retry": {"sleep": False}})
    message = "with_retry\\(\\) needs a function to call as its first argument"
    with pytest.raises(TypeError, match=message):
        asyncio.run(node.with_retry(fn))
    with pytest.raises(TypeError, match=message):
        node.with_retry_sync(fn)
    assert node.metrics.snapshot()["counters"] == {}  # not retried, not counted


def test_async_function_in_run_sync_is_a_clear_type_error_not_retried() -> None:
    calls = []

    async def fetch() -> int:
        calls.append(1)
        return 1

    p = policy(retriable_error_types=["TypeError"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited"
        with pytest.raises(TypeError, match="await self.with_retry"):
            p.run_sync(fetch)
    assert calls == []  # the coroutine was closed, never run


def test_wrap_decorator_sync_and_async() -> None:
    p = policy(sleep=False)
    fn = Flaky(1)
    wrapped = p.wrap(fn.__call__)
    assert wrapped() == "ok"

    afn = Flaky(2)

    @p.wrap
    async def fetch(x: int) -> Any:
        return await afn.acall(x)

    assert asyncio.iscoroutinefunction(fetch)
    assert asyncio.run(fetch(1)) == "ok"
    assert len(afn.calls) == 3


# -- nesting --------------------------------------------------------------------------------------


def test_nested_retry_makes_one_attempt() -> None:
    inner = Flaky(100)
    p = policy(max_attempts=3)

    def outer() -> Any:
        assert isinstance(_context.retry_scope.get(), RetryScope)
        return p.run_sync(inner, max_attempts=5)

    with pytest.raises(ConnectionError):
        p.run_sync(outer)
    assert len(inner.calls) == 3  # not 3 x 5


def test_nested_async_retry_and_scope_attempt_numbers() -> None:
    attempts: list[int] = []
    inner = Flaky(100)

    async def outer() -> Any:
        attempts.append(_context.retry_scope.get().attempt)
        return await p.run(inner.acall, max_attempts=4)

    p = policy(max_attempts=3)
    with pytest.raises(ConnectionError):
        asyncio.run(p.run(outer))
    assert attempts == [1, 2, 3]
    assert len(inner.calls) == 3
    assert _context.retry_scope.get() is None


def test_concurrent_loops_do_not_share_scopes() -> None:
    clock = ManualClock()
    p = RetryPolicy({"max_attempts": 4, "jitter": "none", "initial_delay": 1.0})
    seen: dict[str, list[int]] = {"a": [], "b": []}

    def make(key: str, failures: int) -> Any:
        n = [0]

        async def fn() -> str:
            seen[key].append(_context.retry_scope.get().attempt)
            await asyncio.sleep(0)
            n[0] += 1
            if n[0] <= failures:
                raise ConnectionError(key)
            return key

        return fn

    async def main() -> list[str]:
        return list(await asyncio.gather(p.run(make("a", 1)), p.run(make("b", 3))))

    assert clock.run(main()) == ["a", "b"]
    assert seen == {"a": [1, 2], "b": [1, 2, 3, 4]}


# -- health ---------------------------------------------------------------------------------------


def test_health_degrades_after_repeated_give_ups_and_recovers_with_time() -> None:
    clock = ManualClock()
    p = policy(clock, sleep=False, health_degraded_after=2, health_window=10.0)
    assert p.health()["status"] == "healthy"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            p.run_sync(Flaky(9))
    report = p.health()
    assert report["status"] == "degraded" and "2 retried calls gave up" in report["reason"]
    clock.advance(11)
    assert p.health()["status"] == "healthy"
    for _ in range(3):  # single-attempt calls that fail are not retry give-ups
        with pytest.raises(ConnectionError):
            p.run_sync(Flaky(9), max_attempts=1)
    assert p.health()["gave_up_recently"] == 0


# -- composed -------------------------------------------------------------------------------------


def test_compose_pulls_in_metrics_and_health_check() -> None:
    cls = compose(NodeCompute, ["retry"])
    assert set(cls.__composition__.capabilities) == {"metrics", "health_check", "retry"}
    caps = cls.__composition__.capabilities
    assert caps.index("retry") > caps.index("metrics")
    assert caps.index("retry") > caps.index("health_check")
    node = cls()
    assert isinstance(node, RetryProtocol)  # type: ignore[misc]
    assert "retry" in cls.__onex_pipeline__
    assert explain(cls).to_dict()["pipeline"][-1] == "retry"


def test_seed_style_hand_written_service_with_setup_retry_dict() -> None:
    from onex_compose import NodeComputeService

    class RobustComputeService(NodeComputeService, MixinRetry):
        def __init__(self, contract: Any = None) -> None:
            super().__init__(contract)
            self.setup_retry({"max_attempts": 3, "backoff_factor": 2.0, "max_delay": 60.0})

        async def _execute_computation(self, input_data: int) -> int:
            self.calls += 1
            if self.calls < 3:
                raise ConnectionError("transient")
            return input_data * 2

        async def compute(self, input_data: int) -> int:
            return await self.with_retry(self._execute_computation, input_data, max_attempts=3)

    service = RobustComputeService()
    service.calls = 0
    clock = ManualClock()
    service.retry_policy.use_clock(clock)
    assert asyncio.run(service.compute(21)) == 42
    assert service.calls == 3 and len(clock.sleeps) == 2
    assert service.retry_policy.config.max_delay == 60.0
    c = service.metrics.snapshot()["counters"]
    assert any("outcome=\"recovered\"" in k for k in c)


class FlakyNode(NodeEffect):
    async def process(self, x: int) -> int:
        self.calls.append(x)
        if len(self.calls) <= self.failures:
            raise ConnectionError("transient")
        return x + 1


def make_node(failures: int, **retry_cfg: Any) -> Any:
    """An EFFECT node whose process() retry is opted into (``guard_process: true``)."""
    cls = compose(FlakyNode, ["retry"])
    cfg = {"sleep": False, "guard_process": True, **retry_cfg}
    node = cls(capability_config={"retry": cfg})
    node.calls, node.failures = [], failures
    return node


async def test_guard_retries_process() -> None:
    node = make_node(2)
    assert await node.process(1) == 2
    assert node.calls == [1, 1, 1]


async def test_guard_can_be_switched_off() -> None:
    node = make_node(2, guard_process=False)
    with pytest.raises(ConnectionError):
        await node.process(1)
    assert node.calls == [1]


async def test_with_retry_inside_retried_process_does_not_multiply() -> None:
    inner = Flaky(100)

    class Node(NodeEffect):
        async def process(self, x: int) -> Any:
            return await self.with_retry(inner.acall, x, max_attempts=3)

    node = compose(Node, ["retry"])(
        capability_config={"retry": {"sleep": False, "guard_process": True}})
    with pytest.raises(ConnectionError):
        await node.process(1)
    assert len(inner.calls) == 3  # not 9


async def test_reconfigure_keeps_an_injected_clock() -> None:
    node = make_node(1)
    clock = ManualClock()
    node.retry_policy.use_clock(clock)
    node.setup_retry({"max_attempts": 5, "jitter": "none", "guard_process": True})
    assert node.retry_policy.clock is clock and node.retry_policy.config.max_attempts == 5
    assert await node.process(1) == 2
    assert clock.sleeps == [0.1]


async def test_health_report_of_a_composed_node() -> None:
    node = make_node(100, health_degraded_after=1)
    with pytest.raises(ConnectionError):
        await node.process(1)
    report = await node.health_check()
    assert report["checks"]["retry"]["status"] == "degraded"
    assert report["status"] == "degraded"  # not critical: never makes the node unhealthy


async def test_with_retry_sync_on_a_node() -> None:
    node = make_node(0)
    fn = Flaky(2)
    assert node.with_retry_sync(fn, 1, max_attempts=3) == "ok"
    assert len(fn.calls) == 3


def test_composed_node_pickles_and_rebuilds_its_policy() -> None:
    node = make_node(0, max_attempts=7)
    clone = pickle.loads(pickle.dumps(node))
    assert clone.retry_policy is not node.retry_policy
    assert clone.retry_policy.config.max_attempts == 7


def test_default_policy_without_setup() -> None:
    cls = compose(NodeCompute, ["retry"])
    node = _without_setup(cls)  # setup never ran: the node builds the defaults
    assert node.retry_policy.config == RetryConfig()


def test_docstring_examples() -> None:
    result = doctest.testmod(retry_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _without_setup(cls):  # type: ignore[no-untyped-def]
    """An instance whose setup hooks never ran (a user _initialize_mixins that does nothing)."""

    class Bare(cls):  # type: ignore[misc, valid-type]
        def _initialize_mixins(self, contract=None, capability_config=None):  # type: ignore[no-untyped-def]
            return None

    return Bare()
