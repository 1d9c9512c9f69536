"""circuit_breaker: stop calling an operation that keeps failing, probe it, and recover.

Why this is written by hand instead of wrapping pybreaker, aiobreaker or purgatory (see
``reference/capabilities.md`` A.2, A.8 and Part C 6-8, all verified there):

* pybreaker holds its lock *while the protected call runs* (4 threads x 0.2 s take 0.8 s) and
  has no native asyncio; aiobreaker and purgatory let *every* concurrent caller through in
  half-open (10/10 verified); pybreaker's "excluded" exceptions reset the failure counter
  instead of being neutral; none has a failure-rate window, a minimum number of calls or a
  slow-call threshold; pybreaker's Redis storage resets ``opened_at`` when a worker merely
  *reads* "open" and resets the counter whenever a breaker is created.
* This breaker takes its lock only around state transitions, never around the call; in the
  default consecutive-failure mode the closed-state happy path takes no lock at all
  (``benchmarks/bench_breaker.py`` measures it against the three libraries).

Semantics (resilience4j's, with the Python libraries' default trip rule):

* **consecutive mode** (default): ``failure_threshold`` (5, as in seed 002) failures in a row
  open the circuit; a success resets the count.
* **rate mode** (opt-in): the failure rate over a sliding window (``window_type: count`` = the
  last ``window_size`` calls, ``time`` = the last ``window_size`` seconds in one-second buckets)
  opens the circuit once at least ``minimum_calls`` calls are recorded and the rate reaches
  ``failure_rate_threshold`` percent.
* **slow calls** (resilience4j's): with ``slow_call_duration`` set, a call that takes at least
  that long is a *slow call*, counted apart from failures (a slow call that raised is both). In
  rate mode the circuit opens when the slow-call rate over the window reaches
  ``slow_call_rate_threshold`` percent (default 100); in consecutive mode ``failure_threshold``
  slow calls in a row open it. A slow probe re-opens a half-open circuit. Status reports
  ``slow_call_count``, ``slow_call_rate`` and ``last_slow_call_time``; the
  ``circuit_breaker_slow_calls_total`` counter counts them.
* **time windows after a quiet period**: when ``window_size`` seconds or more passed since the
  last recorded call, the window restarts from zero in O(1) (in process and in the Redis script),
  instead of clearing each expired one-second bucket.
* **open -> half-open** after ``reset_timeout`` seconds, lazily on the next call. Half-open admits
  at most ``half_open_max_calls`` probes and rejects everybody else at once with
  :class:`CircuitOpenError`. In consecutive mode one failed probe re-opens the circuit and
  ``half_open_max_calls`` successful probes close it; in rate mode the probes' failure rate is
  compared with the threshold. A probe that never reports (a lost process) re-opens the
  circuit after ``half_open_max_wait`` seconds, so it cannot wedge the breaker.
* **ignored exceptions** (``ignore_exceptions``) count as neither success nor failure; a probe
  that ends with one gives its permit back. With ``record_exceptions`` set only those count as
  failures and any other exception counts as a success (resilience4j's rule).
  ``CancelledError``, ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit`` are always
  neutral, and so are the node's own load-shedding rejections (exception classes with
  ``onex_breaker_neutral = True``: ``RateLimitExceededError`` and ``BulkheadFullError``, which
  sit inside the breaker in the ``process()`` pipeline): a call the node refused to make says
  nothing about the dependency, so a burst that fills the bulkhead never opens the circuit
  (list such an error in ``record_exceptions`` to count it anyway).
* Results of calls admitted before a state change (a call that started while closed and ended
  after the circuit opened) are discarded, so late results can never close or re-open a
  circuit they did not probe.
* State changes go to the ``circuit_breaker_state`` gauge (0 closed, 1 open, 2 half-open,
  seed 002's encoding, label ``operation_key`` = breaker name), to the ``on_state_change``
  listeners, to the node's event bus when one is composed, and to the health report.
* With ``tracing`` composed (and ``circuit_breaker`` in its ``instrument`` list), state
  changes and rejections are also span events on the current span:
  ``circuit_breaker.state_change`` (``breaker``, ``from``, ``to``, ``reason``) and
  ``circuit_breaker.rejected`` (``breaker``, ``state``, ``reason``, ``retry_after_s``).
  An admitted call reports nothing.
* ``scope: process`` shares each named breaker between every node instance of the process that
  uses the same configuration (resilience4j's registry); the default ``scope: node`` gives each
  node its own. The Redis backend shares a breaker across processes either way.
* ``backend: redis`` keeps one breaker's state in Redis so several processes see one circuit:
  two Lua scripts (admit, record) make every read-modify-write atomic, keys are per breaker
  name inside ``namespace``, reading the state never mutates it, creating a breaker never
  resets it, and ``on_backend_error`` says what happens when Redis is unreachable.

Example:
    >>> from capabilities._context import ManualClock
    >>> clock = ManualClock()
    >>> breaker = CircuitBreaker("db", BreakerPolicy(failure_threshold=2, reset_timeout=10),
    ...                          clock=clock)
    >>> def boom():
    ...     raise ConnectionError("down")
    >>> for _ in range(2):
    ...     try:
    ...         breaker.call(boom)
    ...     except ConnectionError:
    ...         pass
    >>> breaker.state
    <CircuitState.OPEN: 1>
    >>> clock.advance(10)
    >>> breaker.call(lambda: "ok")
    'ok'
    >>> breaker.state
    <CircuitState.CLOSED: 0>
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities._traced import tracer_for
from onex_compose.capabilities.circuit_breaker._breaker import (
    CircuitBreaker,
    CircuitBreakerProtocol,
)
from onex_compose.capabilities.circuit_breaker._model import (
    _CLOSED,
    _SUCCESS,
    BreakerPolicy,
    BreakerStatus,
    CircuitBreakerConfig,
    CircuitBreakerUsageError,
    CircuitOpenError,
    CircuitState,
    CircuitStateChange,
    ExceptionMatcher,
)
from onex_compose.capabilities.circuit_breaker._redis import RedisCircuitBreaker
from onex_compose.capabilities.circuit_breaker._registry import CircuitBreakers

__all__ = [
    "BreakerPolicy",
    "BreakerStatus",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerProtocol",
    "CircuitBreakerUsageError",
    "CircuitBreakers",
    "CircuitOpenError",
    "CircuitState",
    "CircuitStateChange",
    "ExceptionMatcher",
    "MixinCircuitBreaker",
    "RedisCircuitBreaker",
]

T = TypeVar("T")

# ------------------------------------------------------------------------------------------------
# the mixin


class MixinCircuitBreaker:
    """Circuit breakers for a node: ``self.circuit_breaker(name)``, a ``process()`` guard, health.

    Requires ``metrics`` and ``health_check`` (seed 000). Uses the node's ``event_bus`` when one
    is composed (order-only dependency): every state change is published on
    ``config.event_topic``.

    Example:
        >>> from onex_compose import NodeEffect, compose
        >>> Service = compose(NodeEffect, ["circuit_breaker"])  # doctest: +SKIP
        >>> node = Service(capability_config={"circuit_breaker": {"reset_timeout": 5}})  # doctest: +SKIP
        >>> await node.circuit_breaker("payments").acall(charge, order)  # doctest: +SKIP
    """

    __onex_capability__ = "circuit_breaker"
    __slots__ = ()

    def setup_circuit_breaker(self, config: CircuitBreakerConfig | Mapping[str, Any] | None = None,
                              ) -> None:
        """Build the breakers from config; register the health check and the event publisher."""
        cfg = coerce_config(CircuitBreakerConfig, config, "circuit_breaker")
        node = cast(Any, self)
        old = getattr(node, "circuit_breaker", None)
        breakers = CircuitBreakers(cfg, metrics=node.metrics,
                                   clock=old.clock if isinstance(old, CircuitBreakers) else None)
        node.circuit_breaker = breakers
        node.register_health_check(breakers.health_check, name="circuit_breaker")
        if has_capability(self, "tracing"):
            breakers.use_tracer(tracer_for(self, "circuit_breaker"))
        if has_capability(self, "event_bus"):
            topic = cfg.event_topic
            node_id = getattr(self, "node_id", None)

            async def publish(change: CircuitStateChange) -> None:
                await node.event_bus.publish(topic, {**change.as_event(), "node_id": node_id})

            breakers.on_state_change.append(publish)

    @facility
    def circuit_breaker(self) -> CircuitBreakers:
        """The node's named breakers (default config when setup never ran)."""
        return CircuitBreakers(CircuitBreakerConfig(), metrics=cast(Any, self).metrics)

    async def close_circuit_breaker(self) -> None:
        """Wait for pending state-change events."""
        breakers = getattr(self, "circuit_breaker", None)
        if isinstance(breakers, CircuitBreakers):
            await breakers.drain()

    def _guard_circuit_breaker(self, call: Callable[..., Awaitable[T]]
                               ) -> Callable[..., Awaitable[T]]:
        """Wrap ``process()``: every call goes through the ``process`` breaker (guard rank 60).

        The guard follows the node's current breakers: after ``setup_circuit_breaker(...)``
        reconfigures the node, the next call uses the new ``process`` breaker (one identity
        check per call). For an in-process breaker the closed-state fast path is inlined here,
        so the guard adds one coroutine frame, not two.
        """
        node = cast(Any, self)
        # (the CircuitBreakers it is bound to, their process breaker, whether the fast path applies)
        bound: list[tuple[Any, Any, bool]] = [(None, None, False)]

        def rebind(breakers: CircuitBreakers) -> tuple[Any, Any, bool]:
            breaker = breakers.default
            state = bound[0] = (breakers, breaker,
                                isinstance(breaker, CircuitBreaker) and breaker._fast)
            return state

        @functools.wraps(call)
        async def guarded(*args: Any, **kwargs: Any) -> T:
            breakers = node.circuit_breaker
            state = bound[0]
            if state[0] is not breakers:
                state = rebind(breakers)
            breaker = state[1]
            if not state[2]:
                return cast(T, await breaker.acall(call, *args, **kwargs))
            st = breaker._st
            if st.state is not _CLOSED:
                return cast(T, await breaker.acall(call, *args, **kwargs))
            try:
                result = await call(*args, **kwargs)
            except BaseException as exc:
                breaker._record(st, breaker._classify(exc))
                raise
            if breaker._failures:
                breaker._record(st, _SUCCESS)
            return result

        return guarded

    def _guard_sync_circuit_breaker(self, call: Callable[..., T]) -> Callable[..., T]:
        """The sync twin of :meth:`_guard_circuit_breaker` for a plain ``def process``: every
        call goes through the ``process`` breaker's synchronous :meth:`CircuitBreaker.call`
        (the Redis breaker uses its synchronous client). Follows reconfiguration the same way.
        """
        node = cast(Any, self)
        bound: list[tuple[Any, Any]] = [(None, None)]

        @functools.wraps(call)
        def guarded_sync(*args: Any, **kwargs: Any) -> T:
            breakers = node.circuit_breaker
            state = bound[0]
            if state[0] is not breakers:
                state = bound[0] = (breakers, breakers.default)
            return cast(T, state[1].call(call, *args, **kwargs))

        return guarded_sync
