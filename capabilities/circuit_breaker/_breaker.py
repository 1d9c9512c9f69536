"""The in-process circuit breaker and its sliding windows."""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from onex_compose.capabilities._context import monotonic
from onex_compose.capabilities.circuit_breaker._model import (
    _CLOSED,
    _FAILURE,
    _HALF_OPEN,
    _NEUTRAL,
    _OPEN,
    _SUCCESS,
    ASYNC_RESULTS,
    BreakerPolicy,
    BreakerStatus,
    CircuitOpenError,
    CircuitState,
    CircuitStateChange,
    Clock,
    Listener,
    _Classifier,
    _Dispatcher,
    _policy,
    async_misuse,
)

T = TypeVar("T")

# ------------------------------------------------------------------------------------------------
# sliding windows (rate mode)


class _CountWindow:
    """The last ``size`` outcomes in a ring buffer, with running totals (O(1) per record)."""

    __slots__ = ("calls", "failures", "pos", "ring", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.ring = bytearray(size)
        self.pos = 0
        self.calls = 0
        self.failures = 0

    def record(self, failed: int, now: float) -> None:
        if self.calls == self.size:
            self.failures -= self.ring[self.pos]
        else:
            self.calls += 1
        self.ring[self.pos] = failed
        self.failures += failed
        self.pos = (self.pos + 1) % self.size

    def totals(self, now: float) -> tuple[int, int]:
        return self.calls, self.failures


class _TimeWindow:
    """The last ``size`` seconds in one-second buckets (resilience4j's TIME_BASED window).

    The window at time ``now`` covers the whole seconds ``(floor(now) - size, floor(now)]``;
    advancing clears the buckets that fell out, so a record is O(1) amortised.
    """

    __slots__ = ("bcalls", "bfails", "calls", "failures", "head", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.bcalls = [0] * size
        self.bfails = [0] * size
        self.calls = 0
        self.failures = 0
        self.head: int | None = None

    def _advance(self, now: float) -> int:
        sec = int(now // 1)
        head = self.head
        if head is None:
            self.head = sec
            return sec
        if sec <= head:
            return head
        for s in range(max(head + 1, sec - self.size + 1), sec + 1):
            i = s % self.size
            self.calls -= self.bcalls[i]
            self.failures -= self.bfails[i]
            self.bcalls[i] = self.bfails[i] = 0
        self.head = sec
        return sec

    def record(self, failed: int, now: float) -> None:
        i = self._advance(now) % self.size
        self.bcalls[i] += 1
        self.bfails[i] += failed
        self.calls += 1
        self.failures += failed

    def totals(self, now: float) -> tuple[int, int]:
        # reading must not mutate: compute what an advance would drop without dropping it
        head = self.head
        sec = int(now // 1)
        if head is None or sec <= head:
            return self.calls, self.failures
        calls, failures = self.calls, self.failures
        for s in range(max(head + 1, sec - self.size + 1), sec + 1):
            i = s % self.size
            calls -= self.bcalls[i]
            failures -= self.bfails[i]
        return calls, failures


# ------------------------------------------------------------------------------------------------
# the in-process breaker


class _Epoch:
    """One stretch of time in one state; replaced (never mutated) on every transition."""

    __slots__ = ("since", "state")

    def __init__(self, state: CircuitState, since: float) -> None:
        self.state = state
        self.since = since


class CircuitBreakerProtocol(Protocol):
    """What every breaker (in-process or Redis) offers."""

    name: str

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any,
                    **kwargs: Any) -> T: ...

    async def astatus(self) -> BreakerStatus: ...


class _BreakerBase:
    """Shared surface: decorator use, listeners, wall-clock conversion."""

    name: str
    policy: BreakerPolicy
    clock: Clock
    on_state_change: list[Listener]

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorate a function (``def`` or ``async def``) so every call goes through the breaker.

        Example:
            >>> breaker = CircuitBreaker("api")
            >>> @breaker
            ... def fetch():
            ...     return 42
            >>> fetch()
            42
        """
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.acall(fn, *args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self.call(fn, *args, **kwargs)

        return wrapper

    if TYPE_CHECKING:
        def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...

        async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any,
                        **kwargs: Any) -> T: ...

    def _wall(self, at: float | None) -> datetime | None:
        if at is None:
            return None
        return datetime.fromtimestamp(time.time() - (self.clock() - at), UTC)


class CircuitBreaker(_BreakerBase):
    """An in-process circuit breaker, safe across threads and asyncio tasks.

    Args:
        name: the protected operation (appears in errors, metrics and events).
        policy: trip and recovery rules, a :class:`BreakerPolicy` or a mapping of its fields
            (defaults: 5 consecutive failures, 30 s open).
        clock: seconds, monotonic (inject a ``ManualClock`` in tests).
        metrics: a metrics facility (``increment``/``gauge``) or ``None``.
        ignore: extra exception types counted as neither success nor failure.
        record: extra exception types counted as failures (see ``record_exceptions``).

    Example:
        >>> breaker = CircuitBreaker("cache", BreakerPolicy(failure_threshold=3))
        >>> breaker.call(len, "abc")
        3
        >>> breaker.status().state.label
        'closed'
    """

    def __init__(self, name: str, policy: BreakerPolicy | Mapping[str, Any] | None = None, *,
                 clock: Clock = monotonic, metrics: Any = None,
                 ignore: Iterable[type[BaseException]] = (),
                 record: Iterable[type[BaseException]] = (),
                 _dispatcher: _Dispatcher | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a circuit breaker needs a non-empty string name, got {name!r}")
        self.name = name
        self.policy = policy = _policy(policy)
        self.clock = clock
        self.on_state_change: list[Listener] = []
        self._dispatch = _dispatcher or _Dispatcher(metrics)
        self._classify = _Classifier(policy, ignore, record)
        self._lock = threading.Lock()
        self._st = _Epoch(_CLOSED, clock())
        self._failures = 0
        self._last_failure: float | None = None
        self._rate = policy.mode == "rate"
        self._slow = policy.slow_call_duration_threshold
        # the closed-state happy path needs no lock and no clock in this configuration
        self._fast = not self._rate and self._slow is None
        self._window: _CountWindow | _TimeWindow | None = None
        if self._rate:
            self._window = (_CountWindow(policy.window_size) if policy.window_type == "count"
                            else _TimeWindow(policy.window_size))
        self._ha = self._hok = self._hfail = 0  # half-open: admitted, succeeded, failed
        self._min_calls = policy.minimum_calls
        self._rate_threshold = policy.failure_rate_threshold
        self._on_success = (self._success_other if not self._rate
                            else self._success_count if policy.window_type == "count"
                            else self._success_time)
        self._dispatch.created(name, _CLOSED)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._st.state.label} mode={self.policy.mode}>"

    # -- state ---------------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state (reading it changes nothing; open becomes half-open on a call)."""
        return self._st.state

    def status(self) -> BreakerStatus:
        """A consistent snapshot (see :class:`BreakerStatus`)."""
        with self._lock:
            st = self._st
            now = self.clock()
            if self._window is not None:
                calls, failures = self._window.totals(now)
                rate = 100.0 * failures / calls if calls else 0.0
            else:
                calls = failures = self._failures
                rate = 100.0 if failures else 0.0
            last = self._last_failure
        retry = 0.0
        if st.state is _OPEN:
            retry = max(0.0, st.since + self.policy.reset_timeout - now)
        return BreakerStatus(self.name, st.state, failures, rate, calls, self._wall(last), retry)

    async def astatus(self) -> BreakerStatus:
        """:meth:`status`, awaitable (the Redis breaker's must be)."""
        return self.status()

    # -- manual control ------------------------------------------------------------------------

    def open(self) -> None:
        """Force the circuit open now (it half-opens after ``reset_timeout`` as usual)."""
        self._force(_OPEN)

    def close(self) -> None:
        """Force the circuit closed and forget recorded failures."""
        self._force(_CLOSED)

    def half_open(self) -> None:
        """Force the circuit half-open (the next calls are probes)."""
        self._force(_HALF_OPEN)

    reset = close

    def _force(self, to: CircuitState) -> None:
        with self._lock:
            change = self._go(to, self.clock(), "manual")
        self._dispatch.emit(change, self.on_state_change)

    # -- calls ---------------------------------------------------------------------------------

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` through the breaker (sync).

        Raises:
            CircuitOpenError: the circuit is open, or half-open with all probe slots taken.
            CircuitBreakerUsageError: ``fn`` is an async function (it returned a coroutine):
                nothing is recorded; use :meth:`acall`.
        """
        st = self._st
        if st.state is not _CLOSED:
            st = self._admit()
        elif self._fast:  # consecutive mode, no slow-call timing: no lock, no clock
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._record(st, self._classify(exc))
                raise
            if result.__class__ in ASYNC_RESULTS:
                self._record(st, _NEUTRAL)
                raise async_misuse(self.name, fn, result)
            if self._failures:
                self._record(st, _SUCCESS)
            return result
        slow = self._slow
        started = self.clock() if slow is not None else 0.0
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._record(st, self._classify(exc))
            raise
        if result.__class__ in ASYNC_RESULTS:
            self._record(st, _NEUTRAL)
            raise async_misuse(self.name, fn, result)
        if slow is not None and self.clock() - started >= slow:
            self._record(st, _FAILURE)
        elif st.state is _CLOSED:
            self._on_success(st)
        else:
            self._record(st, _SUCCESS)
        return result

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker (async; no lock held while it runs).

        Raises:
            CircuitOpenError: the circuit is open, or half-open with all probe slots taken.
        """
        st = self._st
        if st.state is not _CLOSED:
            st = self._admit()
        elif self._fast:
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                self._record(st, self._classify(exc))
                raise
            if self._failures:
                self._record(st, _SUCCESS)
            return result
        slow = self._slow
        started = self.clock() if slow is not None else 0.0
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._record(st, self._classify(exc))
            raise
        if slow is not None and self.clock() - started >= slow:
            self._record(st, _FAILURE)
        elif st.state is _CLOSED:
            self._on_success(st)
        else:
            self._record(st, _SUCCESS)
        return result

    def _success_count(self, st: _Epoch) -> None:
        """A closed-state success in a count window: the ring update inlined (hot path)."""
        lock = self._lock
        lock.acquire()
        try:
            if self._st is not st:
                return
            w = cast(_CountWindow, self._window)
            pos = w.pos
            if w.calls == w.size:
                w.failures -= w.ring[pos]
            else:
                w.calls += 1
            w.ring[pos] = 0
            pos += 1
            w.pos = 0 if pos == w.size else pos
            failures, calls = w.failures, w.calls
            # a success never raises the rate, but it can bring the window to minimum_calls
            if (not failures or calls < self._min_calls
                    or failures * 100 < self._rate_threshold * calls):
                return
            change = self._go(_OPEN, self.clock(), "failure_rate")
        finally:
            lock.release()
        self._dispatch.emit(change, self.on_state_change)

    def _success_time(self, st: _Epoch) -> None:
        """A closed-state success in a time window: the bucket update inlined (hot path)."""
        now = self.clock()
        lock = self._lock
        lock.acquire()
        try:
            if self._st is not st:
                return
            w = cast(_TimeWindow, self._window)
            head = w.head
            sec = head if head is not None and now // 1 <= head else w._advance(now)
            i = sec % w.size
            w.bcalls[i] += 1
            w.calls += 1
            failures, calls = w.failures, w.calls
            if (not failures or calls < self._min_calls
                    or failures * 100 < self._rate_threshold * calls):
                return
            change = self._go(_OPEN, now, "failure_rate")
        finally:
            lock.release()
        self._dispatch.emit(change, self.on_state_change)

    def _success_other(self, st: _Epoch) -> None:
        if self._rate or self._failures:  # consecutive mode: nothing to reset, nothing to lock
            self._record(st, _SUCCESS)

    def record_success(self) -> None:
        """Record an outcome observed elsewhere (for code that cannot wrap the call)."""
        self._record(self._st, _SUCCESS)

    def record_failure(self) -> None:
        """Record a failure observed elsewhere (for code that cannot wrap the call)."""
        self._record(self._st, _FAILURE)

    def allow(self) -> bool:
        """Whether a call would be admitted now (consumes a probe slot when half-open)."""
        try:
            self._admit()
        except CircuitOpenError:
            return False
        return True

    # -- internals -----------------------------------------------------------------------------

    def _admit(self) -> _Epoch:
        st = self._st
        if st.state is _CLOSED:
            return st
        change = None
        rejection: CircuitOpenError | None = None
        policy = self.policy
        with self._lock:
            st = self._st
            if st.state is _CLOSED:
                return st
            now = self.clock()
            if st.state is _OPEN:
                left = st.since + policy.reset_timeout - now
                if left > 0:
                    rejection = CircuitOpenError(self.name, left, _OPEN)
                else:
                    change = self._go(_HALF_OPEN, now, "reset_timeout")
                    st = self._st
            elif (policy.half_open_max_wait is not None
                  and now - st.since >= policy.half_open_max_wait
                  and self._ha > self._hok + self._hfail):
                change = self._go(_OPEN, now, "half_open_timeout")
                rejection = CircuitOpenError(self.name, policy.reset_timeout, _OPEN)
            if rejection is None:
                if self._ha < policy.half_open_max_calls:
                    self._ha += 1
                else:
                    wait = policy.half_open_max_wait
                    left = (st.since + wait - now) if wait is not None else policy.reset_timeout
                    rejection = CircuitOpenError(self.name, left, _HALF_OPEN, "half_open_full")
        if change is not None:
            self._dispatch.emit(change, self.on_state_change)
        if rejection is not None:
            self._dispatch.rejected(self.name)
            raise rejection
        return st

    def _record(self, st: _Epoch, outcome: int) -> None:
        change = None
        with self._lock:
            if self._st is not st:
                return  # admitted before a state change: the result belongs to the past
            state = st.state
            if outcome == _FAILURE:
                self._last_failure = self.clock()
            if state is _CLOSED:
                if outcome == _NEUTRAL:
                    return
                if self._window is None:
                    if outcome == _SUCCESS:
                        self._failures = 0
                        return
                    self._failures += 1
                    if self._failures >= self.policy.failure_threshold:
                        change = self._go(_OPEN, self.clock(), "failure_threshold")
                else:
                    now = self.clock()
                    self._window.record(outcome, now)
                    calls, failures = self._window.totals(now)
                    self._failures = failures
                    if (calls >= self._min_calls
                            and failures * 100 >= self._rate_threshold * calls):
                        change = self._go(_OPEN, now, "failure_rate")
            elif state is _HALF_OPEN:
                if outcome == _NEUTRAL:
                    if self._ha > 0:
                        self._ha -= 1  # give the probe slot back
                    return
                if outcome == _FAILURE:
                    self._hfail += 1
                else:
                    self._hok += 1
                hmax = self.policy.half_open_max_calls
                if (self._hfail * 100 >= self.policy.failure_rate_threshold * hmax if self._rate
                        else self._hfail > 0):
                    change = self._go(_OPEN, self.clock(), "probe_failed")
                elif self._hok + self._hfail >= hmax:
                    change = self._go(_CLOSED, self.clock(), "probes_succeeded")
        if outcome == _FAILURE:
            self._dispatch.failed(self.name)
        if change is not None:
            self._dispatch.emit(change, self.on_state_change)

    def _go(self, to: CircuitState, now: float, reason: str) -> CircuitStateChange:
        """Transition (caller holds the lock). Every transition starts a fresh epoch.

        Opening keeps the counts that opened the circuit (``status()`` shows them); half-open
        and closed start from zero.
        """
        old = self._st.state
        self._st = _Epoch(to, now)
        self._ha = self._hok = self._hfail = 0
        if to is _OPEN:
            return CircuitStateChange(self.name, old, to, reason, now)  # keep the evidence
        self._failures = 0
        if self._window is not None:
            self._window = (_CountWindow(self.policy.window_size)
                            if self.policy.window_type == "count"
                            else _TimeWindow(self.policy.window_size))
        return CircuitStateChange(self.name, old, to, reason, now)
