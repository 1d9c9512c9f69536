"""The guarded process() pipeline end to end, on the real capabilities.

What issue 6 asks of the pipeline, checked by behaviour rather than by the order tuple alone:
the default order (observability and caching outermost, then retry, circuit breaker, rate limit,
per-attempt timeout, bulkhead innermost) whatever the listing or inheritance order, shown by
``explain()``; a subclass overriding ``process()`` keeps its guards and ``super().process()``
does not run them twice; caching wraps ``process()`` only when configured; a nested
``with_retry`` does not multiply attempts; retry does not retry an open circuit or a full
bulkhead unless configured to; ``fault_tolerance`` is retry + circuit_breaker; error_handling
delegates to the composed breaker and retry; ranks can be overridden.

Everything time-based runs on ``ManualClock.run`` (virtual time): nothing sleeps.
"""

from __future__ import annotations

import asyncio
import random
import sys
from typing import Any

import attrs
import pytest

from onex_compose import NodeCompute, NodeEffect, Registry, compose, explain
from onex_compose.capabilities import MANIFEST, _context
from onex_compose.capabilities._context import ManualClock
from onex_compose.capabilities.bulkhead import (
    BulkheadFullError,
    MixinBulkhead,
)
from onex_compose.capabilities.caching import MixinCaching
from onex_compose.capabilities.circuit_breaker import (
    CircuitOpenError,
    CircuitState,
    MixinCircuitBreaker,
)
from onex_compose.capabilities.logging import MixinLogging
from onex_compose.capabilities.metrics import MixinMetrics
from onex_compose.capabilities.rate_limiting import MixinRateLimiting, RateLimitExceededError
from onex_compose.capabilities.retry import MixinRetry
from onex_compose.capabilities.timeout import MixinTimeout, OperationTimeoutError

GUARDS = ["bulkhead", "timeout", "rate_limiting", "circuit_breaker", "retry", "caching",
          "metrics", "logging"]
DEFAULT_ORDER = ("logging", "metrics", "caching", "retry", "circuit_breaker", "rate_limiting",
                 "timeout", "bulkhead")


class Body(NodeCompute):  # COMPUTE: retry guards process() by default (EFFECT opts in)
    """``process()`` follows ``self.script``: ``"ok"``, ``"fail"`` (ConnectionError), ``"hang"``
    or a number of seconds to work; the script's last step repeats. Every call is recorded."""

    async def process(self, x: Any) -> Any:
        step = self.script[min(len(self.calls), len(self.script) - 1)]
        self.calls.append((self.clock(), _context.correlation_id.get()))
        if step == "fail":
            raise ConnectionError(f"down ({len(self.calls)})")
        if step == "hang":
            await asyncio.Event().wait()
        if isinstance(step, (int, float)):
            await asyncio.sleep(step)
        return x


# Every test runs twice: as written, and with tracing composed too (memory exporter; issue 11:
# the landed guards behave the same inside a process span). ``make`` adds it.
EXTRA: list[str] = []
TRACED = {"exporter": "memory", "processor": "simple"}


@pytest.fixture(autouse=True, params=["plain", "traced"])
def _with_tracing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "traced":
        pytest.importorskip("opentelemetry.sdk")
        monkeypatch.setattr(sys.modules[__name__], "EXTRA", ["tracing"])
    return str(request.param)


def make(caps: list[str], *, script: list[Any] | None = None, cls: type | None = None,
         **config: Any) -> Any:
    """A node of ``Body`` (or ``cls``) with ``caps``; every guard on one ManualClock."""
    if EXTRA and cls is None:
        caps, config = [*caps, *EXTRA], {"tracing": TRACED, **config}
    node = (cls or compose(Body, caps))(capability_config=config)
    clock = ManualClock()
    node.clock = clock
    node.script = script or ["ok"]
    node.calls = []
    wire_clock(node, clock)
    return node


def wire_clock(node: Any, clock: ManualClock) -> None:
    names = type(node).__composition__.capabilities
    if "retry" in names:
        node.retry_policy.clock = clock  # sleeps with asyncio.sleep: virtual time
    if "circuit_breaker" in names:
        node.circuit_breaker.clock = clock
    if "rate_limiting" in names:
        node.rate_limiter.clock = clock
    if "timeout" in names:
        node.timeout_policy.clock = clock
    if "bulkhead" in names:
        node.bulkhead.clock = clock


def run(node: Any, coro: Any) -> Any:
    return node.clock.run(coro)


# ------------------------------------------------------------------------------------------------
# the order: one default, whatever the listing order, shown by explain()


@pytest.mark.parametrize("seed", range(6))
def test_default_order_whatever_the_listing_order(seed: int) -> None:
    listed = GUARDS[:]
    random.Random(seed).shuffle(listed)
    cls = compose(Body, listed)
    assert cls is compose(Body, GUARDS)  # one class for one resolved set
    assert cls.__onex_pipeline__ == DEFAULT_ORDER
    assert explain(cls).to_dict()["pipeline"] == list(DEFAULT_ORDER)
    assert ("process() pipeline (outermost first): logging -> metrics -> caching -> retry -> "
            "circuit_breaker -> rate_limiting -> timeout -> bulkhead") in str(explain(cls))


def test_a_hand_written_class_gets_the_same_order_whatever_its_bases_order() -> None:
    class Hand(Body, MixinBulkhead, MixinTimeout, MixinRateLimiting, MixinCircuitBreaker,
               MixinRetry, MixinCaching, MixinMetrics, MixinLogging):
        pass

    class Reversed(Body, MixinLogging, MixinMetrics, MixinCaching, MixinRetry,
                   MixinCircuitBreaker, MixinRateLimiting, MixinTimeout, MixinBulkhead):
        pass

    assert Hand.__onex_pipeline__ == Reversed.__onex_pipeline__ == DEFAULT_ORDER
    assert explain(Hand).to_dict()["pipeline"] == list(DEFAULT_ORDER)
    node = make([], cls=Hand)
    assert run(node, node.process(7)) == 7


# ------------------------------------------------------------------------------------------------
# the order, by behaviour


def test_retry_is_outside_the_breaker_and_does_not_retry_the_open_circuit() -> None:
    node = make(["retry", "circuit_breaker"], script=["fail"],
                retry={"max_attempts": 5, "sleep": False},
                circuit_breaker={"failure_threshold": 2})
    with pytest.raises(CircuitOpenError) as info:
        run(node, node.process(1))
    assert len(node.calls) == 2  # two attempts counted by the breaker, then it opened
    assert "CircuitOpenError is not retriable" in info.value.__notes__[0]
    assert info.value.name == "process"


def test_each_attempt_takes_a_permit_and_a_rejection_is_not_retried() -> None:
    node = make(["retry", "rate_limiting"], script=["fail"],
                retry={"max_attempts": 5, "sleep": False},
                rate_limiting={"limit": 2, "period": 60})
    with pytest.raises(RateLimitExceededError) as info:
        run(node, node.process(1))
    assert len(node.calls) == 2  # the limiter sits inside retry (resilience4j's placement)
    assert "RateLimitExceededError is not retriable" in info.value.__notes__[0]


def test_the_nodes_own_load_shedding_never_opens_the_circuit() -> None:
    node = make(["circuit_breaker", "rate_limiting", "bulkhead"], script=[1.0],
                circuit_breaker={"failure_threshold": 2},
                rate_limiting={"limit": 5, "period": 60},
                bulkhead={"max_concurrent": 1})

    async def burst() -> list[Any]:
        return await asyncio.gather(*(node.process(i) for i in range(12)),
                                    return_exceptions=True)

    results = run(node, burst())
    kinds = [type(r).__name__ for r in results]
    assert kinds.count("int") == 1 and "CircuitOpenError" not in kinds
    assert kinds.count("BulkheadFullError") == 4 and kinds.count("RateLimitExceededError") == 7
    assert node.circuit_breaker.default.state is CircuitState.CLOSED


def test_a_timed_out_attempt_is_retried_and_counts_as_a_breaker_failure() -> None:
    node = make(["retry", "circuit_breaker", "timeout"], script=["hang", "ok"],
                retry={"max_attempts": 3, "jitter": "none", "initial_delay": 1.0},
                circuit_breaker={"failure_threshold": 5}, timeout={"timeout": 2.0})
    assert run(node, node.process("x")) == "x"
    assert [t for t, _ in node.calls] == [0.0, 3.0]  # cut at 2 s, 1 s back-off
    counters = node.metrics.snapshot()["counters"]
    assert counters['circuit_breaker_failures_total{operation_key="process"}'] == 1


def test_the_bulkhead_is_innermost_a_back_off_holds_no_slot() -> None:
    node = make(["retry", "bulkhead"], script=["fail", "ok"],
                retry={"max_attempts": 3, "jitter": "none", "initial_delay": 1.0},
                bulkhead={"max_concurrent": 1})
    held_while_sleeping = []

    async def sleep(seconds: float) -> None:
        held_while_sleeping.append(node.bulkhead.active)
        await asyncio.sleep(seconds)

    node.retry_policy.sleep = sleep
    assert run(node, node.process(3)) == 3
    assert held_while_sleeping == [0]


def test_the_attempt_timeout_bounds_the_wait_for_a_bulkhead_slot() -> None:
    node = make(["timeout", "bulkhead"], script=[10.0],
                timeout={"timeout": 1.0}, bulkhead={"max_concurrent": 1, "max_wait": 60})

    async def two() -> list[Any]:
        return await asyncio.gather(node.process(1), node.process(2), return_exceptions=True)

    results = run(node, two())
    assert all(isinstance(r, OperationTimeoutError) for r in results)
    assert len(node.calls) == 1  # the second never got a slot: its wait was cut at 1 s
    assert node.bulkhead.active == node.bulkhead.waiting == 0


def test_observability_sees_the_logical_call_and_caching_answers_before_the_guards() -> None:
    node = make(GUARDS, script=["fail", "ok"],
                retry={"max_attempts": 3, "sleep": False},
                rate_limiting={"limit": 1, "period": 60},  # a second permit would be refused
                caching={"wrap_process": True})
    with pytest.raises(RateLimitExceededError):  # attempt 1 failed, attempt 2 had no permit
        run(node, node.process("a"))
    node.rate_limiter.reset()
    node.calls.clear()
    node.script = ["ok"]
    assert run(node, node.process("b")) == "b"
    assert run(node, node.process("b")) == "b"  # a cache hit: no permit needed, no body call
    assert len(node.calls) == 1
    hist = node.metrics.snapshot()["histograms"]
    durations = sum(v["count"] for k, v in hist.items() if k.startswith("process_duration"))
    assert durations == 3  # one per logical call, not one per attempt


def test_every_attempt_runs_under_the_calls_correlation_id() -> None:
    node = make(["logging", "retry"], script=["fail", "fail", "ok"],
                retry={"max_attempts": 3, "sleep": False})
    assert run(node, node.process(1)) == 1
    ids = {cid for _, cid in node.calls}
    assert len(node.calls) == 3 and len(ids) == 1 and None not in ids


# ------------------------------------------------------------------------------------------------
# built once, wraps the most-derived process() exactly once


def test_a_subclass_override_keeps_its_guards_and_super_runs_them_once() -> None:
    base = compose(Body, ["retry", "circuit_breaker", "rate_limiting"])

    class Sub(base):  # type: ignore[misc, valid-type]
        async def process(self, x: Any) -> Any:
            self.sub_calls += 1
            return await super().process(x)

    node = make([], cls=Sub, script=["fail"], retry={"max_attempts": 3, "sleep": False},
                circuit_breaker={"failure_threshold": 10},
                rate_limiting={"limit": 3, "period": 60})
    node.sub_calls = 0
    with pytest.raises(ConnectionError) as info:
        run(node, node.process(1))
    assert node.sub_calls == 3 and len(node.calls) == 3  # 3 attempts, not 3 x 3
    assert "max_attempts=3 reached" in info.value.__notes__[0]
    assert node.circuit_breaker.default.status().failure_count == 3  # counted once each
    assert not node.rate_limiter.hit("process")  # 3 permits spent, not 6 or 9
    assert Sub.__onex_pipeline__ == ("metrics", "retry", "circuit_breaker", "rate_limiting")


def test_guards_are_bound_once_per_instance_not_per_call() -> None:
    bound = []

    class Counting(compose(Body, ["retry", "circuit_breaker", "bulkhead"])):  # type: ignore[misc]
        def _guard_retry(self, call: Any) -> Any:
            bound.append("retry")
            return super()._guard_retry(call)

    node = make([], cls=Counting)
    for i in range(5):
        assert run(node, node.process(i)) == i
    assert bound == ["retry"]
    other = make([], cls=Counting)
    run(other, other.process(0))
    assert bound == ["retry", "retry"]


def test_caching_wraps_process_only_when_configured() -> None:
    effect = make(["caching"], script=["ok"])
    for _ in range(3):
        assert run(effect, effect.process({"id": 1})) == {"id": 1}
    assert len(effect.calls) == 3  # an EFFECT node's side effects are not memoised by default
    memo = make(["caching"], script=["ok"], caching={"wrap_process": True})
    for _ in range(3):
        assert run(memo, memo.process({"id": 1})) == {"id": 1}
    assert len(memo.calls) == 1


def test_a_nested_with_retry_inside_a_retried_process_does_not_multiply_attempts() -> None:
    class Nested(compose(NodeEffect, ["retry"])):  # type: ignore[misc]
        async def process(self, x: Any) -> Any:
            return await self.with_retry(self.flaky)

        async def flaky(self) -> None:
            self.inner += 1
            raise ConnectionError("down")

    node = Nested(capability_config={"retry": {"max_attempts": 3, "sleep": False,
                                                "guard_process": True}})
    node.inner = 0
    with pytest.raises(ConnectionError):
        asyncio.run(node.process(1))
    assert node.inner == 3  # not 9


def test_retry_retries_an_open_circuit_or_a_full_bulkhead_only_when_configured() -> None:
    listed = ["ConnectionError", "CircuitOpenError", "BulkheadFullError"]
    node = make(["retry", "circuit_breaker"], script=["fail", "ok"],
                retry={"max_attempts": 3, "jitter": "none", "initial_delay": 0.1,
                       "retriable_error_types": listed},
                circuit_breaker={"failure_threshold": 1, "reset_timeout": 5})
    # attempt 1 fails and opens the circuit; attempt 2 (after 0.1 s) meets the open circuit,
    # whose retry_after (4.9 s) is honoured as the delay; attempt 3 is the probe: it succeeds
    assert run(node, node.process("x")) == "x"
    assert [t for t, _ in node.calls] == [0.0, 5.0]

    bulk = make(["retry", "bulkhead"], script=[1.0],
                retry={"max_attempts": 3, "jitter": "none", "initial_delay": 2.0,
                       "retriable_error_types": listed},
                bulkhead={"max_concurrent": 1})

    async def two() -> list[Any]:
        return await asyncio.gather(bulk.process(1), bulk.process(2))

    assert run(bulk, two()) == [1, 2]  # the second was rejected once, retried after 2 s
    assert [t for t, _ in bulk.calls] == [0.0, 2.0]

    plain = make(["retry", "bulkhead"], script=[1.0], retry={"max_attempts": 3},
                 bulkhead={"max_concurrent": 1})

    async def two_plain() -> list[Any]:
        return await asyncio.gather(plain.process(1), plain.process(2), return_exceptions=True)

    results = run(plain, two_plain())
    assert results[0] == 1 and isinstance(results[1], BulkheadFullError)
    assert len(plain.calls) == 1


def test_fault_tolerance_is_retry_plus_circuit_breaker() -> None:
    cls = compose(Body, ["fault_tolerance"])
    assert cls is compose(Body, ["circuit_breaker", "retry"])
    assert cls.__onex_pipeline__[-2:] == ("retry", "circuit_breaker")
    node = make([], cls=cls, script=["fail"], retry={"max_attempts": 4, "sleep": False},
                circuit_breaker={"failure_threshold": 3})
    with pytest.raises(CircuitOpenError):
        run(node, node.process(1))
    assert len(node.calls) == 3


async def test_error_handling_delegates_to_the_composed_breaker_and_retry() -> None:
    cls = compose(Body, ["error_handling", "fault_tolerance"])
    node = make([], cls=cls, script=["fail"],
                retry={"max_attempts": 2, "sleep": False},
                circuit_breaker={"failure_threshold": 2},
                error_handling={"circuit_failure_threshold": 50, "error_retry_attempts": 9})
    handler = node.error_handling
    assert handler.delegates_breaker and handler.delegates_retry
    assert handler.breaker("process") is node.circuit_breaker.default  # the guard's breaker
    with pytest.raises(ConnectionError):
        await node.process(1)
    assert len(node.calls) == 2  # retry's 2 attempts, not error_handling's 9
    status = await node._check_circuit_breaker(operation_key="process")
    assert (status.status, status.failure_count) == ("open", 2)  # retry's threshold, not 50
    decision = handler.should_retry(ConnectionError("x"), 2)
    assert decision.max_attempts_reached and not decision.should_retry
    assert handler._own_breakers is None


# ------------------------------------------------------------------------------------------------
# overriding the order by declared ranks, and reconfiguration


def test_a_declared_rank_moves_the_rate_limiter_outside_retry() -> None:
    reg = Registry(name="limiter-outermost")
    reg.load_manifest(MANIFEST)
    reg.register(attrs.evolve(reg.get("rate_limiting"), guard_rank=45), replace=True)
    cls = compose(Body, ["retry", "rate_limiting"], registry=reg)
    assert cls.__onex_pipeline__ == ("metrics", "rate_limiting", "retry")
    assert explain(cls).to_dict()["pipeline"] == ["metrics", "rate_limiting", "retry"]
    node = make([], cls=cls, script=["fail", "fail", "ok"],
                retry={"max_attempts": 3, "sleep": False},
                rate_limiting={"limit": 1, "period": 60})
    assert run(node, node.process(1)) == 1  # one permit for the logical call, retries included
    assert len(node.calls) == 3


def test_every_guard_follows_a_reconfigured_node() -> None:
    node = make(["retry", "circuit_breaker", "rate_limiting", "timeout", "bulkhead"],
                script=["ok"])
    assert run(node, node.process(0)) == 0  # the chain is bound now
    node.setup_retry({"max_attempts": 2, "sleep": False})
    node.setup_circuit_breaker({"failure_threshold": 1})
    node.setup_rate_limiting({"limit": 2, "period": 60})
    node.setup_timeout({"timeout": 0.5})
    node.script, node.calls = [1.0], []
    with pytest.raises(CircuitOpenError):  # timed out at 0.5 s, the circuit opened, no retry
        run(node, node.process(1))
    assert len(node.calls) == 1  # attempt 2 met the open circuit before the limiter
    assert node.circuit_breaker.default.state is CircuitState.OPEN
    assert node.rate_limiter.check("process").remaining == 1

    node.setup_circuit_breaker({"failure_threshold": 10})
    node.setup_rate_limiting({"limit": 100, "period": 60})
    node.setup_timeout({"timeout": 5})
    node.setup_bulkhead({"max_concurrent": 1})
    node.calls = []

    async def two() -> list[Any]:
        return await asyncio.gather(node.process(1), node.process(2), return_exceptions=True)

    results = run(node, two())
    assert results[0] == 1 and isinstance(results[1], BulkheadFullError)
    node.script, node.calls = ["fail"], []
    with pytest.raises(ConnectionError, match="max_attempts=2"):
        run(node, node.process(3))
    assert len(node.calls) == 2


def test_a_task_started_inside_process_is_guarded_when_it_calls_process_later() -> None:
    class Starter(compose(NodeEffect, ["rate_limiting"])):  # type: ignore[misc]
        async def process(self, x: Any) -> Any:
            if x == "start":
                self.background = asyncio.create_task(self.later())
            return x

        async def later(self) -> list[Any]:
            await asyncio.sleep(0)
            out: list[Any] = []
            for i in range(3):
                try:
                    out.append(await self.process(i))
                except RateLimitExceededError as err:
                    out.append(err)
            return out

    node = Starter(capability_config={"rate_limiting": {"limit": 1, "period": 60}})
    node.rate_limiter.clock = ManualClock()

    async def main() -> list[Any]:
        assert await node.process("start") == "start"  # spends the only permit
        return await node.background  # type: ignore[no-any-return]

    results = asyncio.run(main())
    assert all(isinstance(r, RateLimitExceededError) for r in results), results


# ------------------------------------------------------------------------------------------------
# a sync def process on the real capabilities (the sync-guard protocol, issue 9 point 6)


class SyncBody(NodeEffect):
    def process(self, x: Any) -> Any:  # type: ignore[override]
        self.seen.append(_context.correlation_id.get())
        return x


def test_logging_gives_each_sync_call_a_correlation_id() -> None:
    node = compose(SyncBody, ["logging"])()
    node.seen = []
    assert node.process(1) == 1 and node.process(2) == 2  # sync: no event loop
    assert None not in node.seen and len(set(node.seen)) == 2
    off = compose(SyncBody, ["logging"])(capability_config={"logging": {"correlate_process": False}})
    off.seen = []
    off.process(3)
    assert off.seen == [None]


SYNC_GUARDS = ["bulkhead", "timeout", "rate_limiting", "circuit_breaker", "retry", "caching",
               "metrics", "logging", "node_service"]


class SyncFlaky(NodeCompute):
    """A plain ``def process``: fails with ConnectionError ``self.failures`` times, then answers."""

    def process(self, x: Any) -> Any:  # type: ignore[override]
        self.calls.append(_context.correlation_id.get())
        if len(self.calls) <= self.failures:
            raise ConnectionError(f"down ({len(self.calls)})")
        return x * 2


def test_end_to_end_a_sync_process_under_every_guard_with_a_sync_path() -> None:
    cls = compose(SyncFlaky, SYNC_GUARDS)
    assert not asyncio.iscoroutinefunction(cls.process)
    assert cls.__onex_pipeline_kind__ == "sync"
    assert explain(cls).to_dict()["pipeline_kind"] == "sync"
    node = cls(capability_config={"retry": {"max_attempts": 3, "initial_delay": 0.001,
                                            "max_delay": 0.002, "jitter": False},
                                  "caching": {"wrap_process": True}})
    node.calls, node.failures = [], 2
    assert node.process(21) == 42  # sync, no event loop: two failures retried
    assert len(node.calls) == 3
    assert len(set(node.calls)) == 1 and node.calls[0] is not None  # one correlation id
    assert node.bulkhead.active == 0 and node.bulkhead.peak == 1  # one slot per attempt
    assert node.service.in_flight == 0
    assert node.process(21) == 42 and len(node.calls) == 3  # served by the cache
    assert node.process(5) == 10 and len(node.calls) == 4  # the bound chain, again sync

    async def inside_a_loop() -> Any:
        return node.process(1)  # a sync call from a coroutine: still a plain value

    assert asyncio.run(inside_a_loop()) == 2


def test_every_registered_guard_has_a_sync_path() -> None:
    """The sync-guard protocol is complete on the built-in capabilities: a sync process can be
    composed with any of them (a new guard without ``_guard_sync_<name>`` shows up here)."""
    from onex_compose import default_registry

    guards = [s for s in default_registry if s.guard_rank is not None]
    assert {"retry", "circuit_breaker", "rate_limiting", "timeout", "bulkhead", "caching",
            "metrics", "logging", "node_service"} <= {s.name for s in guards}
    missing = [s.name for s in guards if not callable(getattr(s.mixin, f"_guard_sync_{s.name}", None))]
    assert missing == []
    cls = compose(SyncFlaky, [s.name for s in guards])
    assert cls.__onex_pipeline_kind__ == "sync"


def test_with_tracing_composed_one_process_span_wraps_every_attempt(_with_tracing: str) -> None:
    node = make(["retry", "circuit_breaker", "timeout"], script=["fail", "fail", "ok"],
                retry={"max_attempts": 3, "jitter": "none", "initial_delay": 1.0},
                timeout={"timeout": 5.0})
    assert run(node, node.process("x")) == "x"
    assert len(node.calls) == 3
    if _with_tracing == "plain":
        assert "tracing" not in type(node).__composition__.capabilities
        return
    (span,) = node.tracer.exporter.get_finished_spans()  # outermost: one span, three attempts
    assert span.name == "Body.process" and span.status.is_ok
    # every attempt ran with the trace id as its correlation id
    assert {cid for _, cid in node.calls} == {f"{span.context.trace_id:032x}"}
