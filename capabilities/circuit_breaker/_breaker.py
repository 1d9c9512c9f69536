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
    _SLOW,
    _SLOW_FAILURE,
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
    """The last ``size`` outcomes in a ring buffer, with running totals (O(1) per record).

    Each slot holds an outcome's bits (``_FAILURE`` 1, ``_SLOW`` 2).
    """

    __slots__ = ("calls", "failures", "pos", "ring", "size", "slow")

    def __init__(self, size: int) -> None:
        self.size = size
        self.ring = bytearray(size)
        self.pos = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def record(self, outcome: int, now: float) -> None:
        if self.calls == self.size:
            old = self.ring[self.pos]
            self.failures -= old & _FAILURE
            self.slow -= old >> 1
        else:
            self.calls += 1
        self.ring[self.pos] = outcome
        self.failures += outcome & _FAILURE
        self.slow += outcome >> 1
        self.pos = (self.pos + 1) % self.size

    def totals(self, now: float) -> tuple[int, int, int]:
        """``(calls, failures, slow calls)`` in the window."""
        return self.calls, self.failures, self.slow


class _TimeWindow:
    """The last ``size`` seconds in one-second buckets (resilience4j's TIME_BASED window).

    The window at time ``now`` covers the whole seconds ``(floor(now) - size, floor(now)]``.
    Advancing by less than ``size`` seconds clears the buckets that fell out (O(1) amortised
    per record); after a quiet period of ``size`` seconds or more every bucket is stale, so the
    totals restart from zero in O(1): ``floor`` remembers that second, and buckets older than it
    are cleared without being subtracted when the window next passes over them.
    """

    __slots__ = ("bcalls", "bfails", "bslow", "calls", "failures", "floor", "head", "size",
                 "slow")

    def __init__(self, size: int) -> None:
        self.size = size
        self.bcalls = [0] * size
        self.bfails = [0] * size
        self.bslow = [0] * size
        self.calls = 0
        self.failures = 0
        self.slow = 0
        self.head: int | None = None
        self.floor = 0  # buckets of seconds before this one are not in the totals

    def _advance(self, now: float) -> int:
        sec = int(now // 1)
        head = self.head
        if head is None or sec - head >= self.size:  # first record, or everything expired
            self.head = self.floor = sec
            self.calls = self.failures = self.slow = 0
            i = sec % self.size
            self.bcalls[i] = self.bfails[i] = self.bslow[i] = 0
            return sec
        if sec <= head:
            return head
        size, floor = self.size, self.floor
        bcalls, bfails, bslow = self.bcalls, self.bfails, self.bslow
        for s in range(head + 1, sec + 1):
            i = s % size
            if s - size >= floor:  # the bucket holds second s - size, counted in the totals
                self.calls -= bcalls[i]
                self.failures -= bfails[i]
                self.slow -= bslow[i]
            bcalls[i] = bfails[i] = bslow[i] = 0
        self.head = sec
        return sec

    def record(self, outcome: int, now: float) -> None:
        i = self._advance(now) % self.size
        failed, slow = outcome & _FAILURE, outcome >> 1
        self.bcalls[i] += 1
        self.bfails[i] += failed
        self.bslow[i] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        """``(calls, failures, slow calls)`` at ``now``; reading never mutates the window."""
        head = self.head
        sec = int(now // 1)
        if head is None or sec <= head:
            return self.calls, self.failures, self.slow
        size = self.size
        if sec - head >= size:
            return 0, 0, 0
        calls, failures, slow = self.calls, self.failures, self.slow
        for s in range(max(head + 1, self.floor + size), sec + 1):
            i = s % size
            calls -= self.bcalls[i]
            failures -= self.bfails[i]
            slow -= self.bslow[i]
        return calls, failures, slow


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
        self._slow = policy.slow_call_duration
        # the closed-state happy path needs no lock and no clock in this configuration
        self._fast = not self._rate and self._slow is None
        self._window: _CountWindow | _TimeWindow | None = None
        if self._rate:
            self._window = (_CountWindow(policy.window_size) if policy.window_type == "count"
                            else _TimeWindow(policy.window_size))
        self._ha = self._hok = self._hfail = 0  # half-open: admitted, succeeded, failed
        self._hslow = 0  # half-open: slow probes
        self._slow_run = 0  # consecutive mode: slow calls in a row
        self._last_slow: float | None = None
        self._min_calls = policy.minimum_calls
        self._rate_threshold = policy.failure_rate_threshold
        self._slow_threshold = policy.slow_call_rate_threshold
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
                calls, failures, slow = self._window.totals(now)
                rate = 100.0 * failures / calls if calls else 0.0
                slow_rate = 100.0 * slow / calls if calls else 0.0
            else:
                failures, slow = self._failures, self._slow_run
                calls = max(failures, slow)
                rate = 100.0 if failures else 0.0
                slow_rate = 100.0 if slow else 0.0
            last, last_slow = self._last_failure, self._last_slow
        retry = 0.0
        if st.state is _OPEN:
            retry = max(0.0, st.since + self.policy.reset_timeout - now)
        return BreakerStatus(self.name, st.state, failures, rate, calls, self._wall(last), retry,
                             slow, slow_rate, self._wall(last_slow))

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
            self._record(st, self._timed(self._classify(exc), started))
            raise
        if result.__class__ in ASYNC_RESULTS:
            self._record(st, _NEUTRAL)
            raise async_misuse(self.name, fn, result)
        if slow is not None and self.clock() - started >= slow:
            self._record(st, _SLOW)
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
            self._record(st, self._timed(self._classify(exc), started))
            raise
        if slow is not None and self.clock() - started >= slow:
            self._record(st, _SLOW)
        elif st.state is _CLOSED:
            self._on_success(st)
        else:
            self._record(st, _SUCCESS)
        return result

    def _timed(self, outcome: int, started: float) -> int:
        """A failure that also took at least ``slow_call_duration`` is a slow failure."""
        slow = self._slow
        if outcome == _FAILURE and slow is not None and self.clock() - started >= slow:
            return _SLOW_FAILURE
        return outcome

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
                old = w.ring[pos]
                if old:
                    w.failures -= old & _FAILURE
                    w.slow -= old >> 1
            else:
                w.calls += 1
            w.ring[pos] = 0
            pos += 1
            w.pos = 0 if pos == w.size else pos
            failures, calls = w.failures, w.calls
            # a success never raises a rate, but it can bring the window to minimum_calls
            if (not failures and not w.slow) or calls < self._min_calls:
                return
            reason = self._trip_reason(calls, failures, w.slow)
            if reason is None:
                return
            change = self._go(_OPEN, self.clock(), reason)
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
            if (not failures and not w.slow) or calls < self._min_calls:
                return
            reason = self._trip_reason(calls, failures, w.slow)
            if reason is None:
                return
            change = self._go(_OPEN, now, reason)
        finally:
            lock.release()
        self._dispatch.emit(change, self.on_state_change)

    def _success_other(self, st: _Epoch) -> None:
        # consecutive mode: nothing to reset, nothing to lock
        if self._rate or self._failures or self._slow_run:
            self._record(st, _SUCCESS)

    def _trip_reason(self, calls: int, failures: int, slow: int) -> str | None:
        """Why a window of ``calls`` (at least ``minimum_calls``) opens the circuit, or None."""
        if failures and failures * 100 >= self._rate_threshold * calls:
            return "failure_rate"
        if slow and slow * 100 >= self._slow_threshold * calls:
            return "slow_call_rate"
        return None

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
            self._dispatch.rejected(self.name, rejection)
            raise rejection
        return st

    def _record(self, st: _Epoch, outcome: int) -> None:
        """Record one outcome (bits: ``_FAILURE``, ``_SLOW``; or ``_NEUTRAL``) of a call
        admitted in epoch ``st``."""
        change = None
        failed, slow = outcome & _FAILURE, outcome & _SLOW
        with self._lock:
            if self._st is not st:
                return  # admitted before a state change: the result belongs to the past
            state = st.state
            if failed:
                self._last_failure = self.clock()
            if slow:
                self._last_slow = self.clock()
            if state is _CLOSED:
                if outcome == _NEUTRAL:
                    return
                if self._window is None:
                    self._failures = self._failures + 1 if failed else 0
                    self._slow_run = self._slow_run + 1 if slow else 0
                    threshold = self.policy.failure_threshold
                    if self._failures >= threshold:
                        change = self._go(_OPEN, self.clock(), "failure_threshold")
                    elif self._slow_run >= threshold:
                        change = self._go(_OPEN, self.clock(), "slow_call_threshold")
                else:
                    now = self.clock()
                    self._window.record(outcome, now)
                    calls, failures, slow_calls = self._window.totals(now)
                    self._failures = failures
                    if calls >= self._min_calls:
                        reason = self._trip_reason(calls, failures, slow_calls)
                        if reason is not None:
                            change = self._go(_OPEN, now, reason)
            elif state is _HALF_OPEN:
                if outcome == _NEUTRAL:
                    if self._ha > 0:
                        self._ha -= 1  # give the probe slot back
                    return
                if failed:
                    self._hfail += 1
                else:
                    self._hok += 1
                if slow:
                    self._hslow += 1
                hmax = self.policy.half_open_max_calls
                if (self._hfail * 100 >= self._rate_threshold * hmax if self._rate
                        else self._hfail > 0):
                    change = self._go(_OPEN, self.clock(), "probe_failed")
                elif (self._hslow * 100 >= self._slow_threshold * hmax if self._rate
                      else self._hslow > 0):
                    change = self._go(_OPEN, self.clock(), "probe_slow")
                elif self._hok + self._hfail >= hmax:
                    change = self._go(_CLOSED, self.clock(), "probes_succeeded")
        if failed:
            self._dispatch.failed(self.name)
        if slow:
            self._dispatch.slow(self.name)
        if change is not None:
            self._dispatch.emit(change, self.on_state_change)

    def _go(self, to: CircuitState, now: float, reason: str) -> CircuitStateChange:
        """Transition (caller holds the lock). Every transition starts a fresh epoch.

        Opening keeps the counts that opened the circuit (``status()`` shows them); half-open
        and closed start from zero.
        """
        old = self._st.state
        self._st = _Epoch(to, now)
        self._ha = self._hok = self._hfail = self._hslow = 0
        if to is _OPEN:
            return CircuitStateChange(self.name, old, to, reason, now)  # keep the evidence
        self._failures = self._slow_run = 0
        if self._window is not None:
            self._window = (_CountWindow(self.policy.window_size)
                            if self.policy.window_type == "count"
                            else _TimeWindow(self.policy.window_size))
        return CircuitStateChange(self.name, old, to, reason, now)
