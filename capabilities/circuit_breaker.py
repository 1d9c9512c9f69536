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
* **slow calls**: with ``slow_call_duration_threshold`` set, a call that takes at least that long
  is recorded as a failure even when it returns (in either mode).
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

import asyncio
import functools
import inspect
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities import _redis
from onex_compose.capabilities._context import monotonic
from onex_compose.capabilities._redis import require_client, text
from onex_compose.exceptions import OnexError

__all__ = [
    "BreakerPolicy",
    "BreakerStatus",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerProtocol",
    "CircuitBreakers",
    "CircuitOpenError",
    "CircuitState",
    "CircuitStateChange",
    "ExceptionMatcher",
    "MixinCircuitBreaker",
    "RedisCircuitBreaker",
]

T = TypeVar("T")
Clock = Callable[[], float]
Listener = Callable[["CircuitStateChange"], Any]


# ------------------------------------------------------------------------------------------------
# states, errors, events


class CircuitState(IntEnum):
    """Breaker states; the values are the ``circuit_breaker_state`` gauge values (seed 002)."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2

    @property
    def label(self) -> str:
        """``closed`` / ``open`` / ``half_open`` (seed 002's ``circuit_status`` values)."""
        return _LABELS[self]


_LABELS = {CircuitState.CLOSED: "closed", CircuitState.OPEN: "open",
           CircuitState.HALF_OPEN: "half_open"}
_CLOSED, _OPEN, _HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class CircuitOpenError(OnexError, RuntimeError):
    """The circuit is open (or half-open with every probe slot taken): the call was not made.

    Never retried by the retry capability (``onex_retriable = False``): retrying an open
    circuit only adds load to the failing dependency (resilience4j issue #1065).

    Attributes:
        name: the breaker's name (the protected operation).
        retry_after: seconds until the breaker may admit calls again (an upper bound while
            half-open: the probes may close it sooner).
        state: the state that rejected the call (``OPEN`` or ``HALF_OPEN``).
        reason: ``"open"``, ``"half_open_full"`` or ``"backend_unavailable"``.

    Example:
        >>> err = CircuitOpenError("payments", 12.5)
        >>> str(err)
        "circuit breaker 'payments' is open; retry after 12.500 s"
        >>> err.onex_retriable
        False
    """

    onex_retriable = False

    def __init__(self, name: str, retry_after: float, state: CircuitState = _OPEN,
                 reason: str = "open") -> None:
        self.name = name
        self.retry_after = max(0.0, float(retry_after))
        self.state = CircuitState(state)
        self.reason = reason
        what = {"open": "is open",
                "half_open_full": "is half-open and all its probe slots are taken",
                "backend_unavailable": "cannot reach its shared state store (deny policy)",
                }.get(reason, reason)
        super().__init__(f"circuit breaker {name!r} {what}; retry after "
                         f"{self.retry_after:.3f} s")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.retry_after, self.state, self.reason))


@dataclass(frozen=True)
class CircuitStateChange:
    """One state transition, as given to ``on_state_change`` listeners and published as an event.

    Attributes:
        breaker: the breaker's name.
        old, new: the states before and after.
        reason: ``failure_threshold``, ``failure_rate``, ``reset_timeout``, ``probe_failed``,
            ``probes_succeeded``, ``half_open_timeout`` or ``manual``.
        at: when it happened, on the breaker's clock.
    """

    breaker: str
    old: CircuitState
    new: CircuitState
    reason: str
    at: float

    def as_event(self) -> dict[str, Any]:
        """The event-bus payload."""
        return {"breaker": self.breaker, "from": self.old.label, "to": self.new.label,
                "reason": self.reason, "at": self.at}


@dataclass(frozen=True)
class BreakerStatus:
    """A read-only snapshot of one breaker (reading it never changes the breaker).

    Attributes:
        name: breaker name.
        state: current state.
        failure_count: consecutive failures (consecutive mode) or failures in the window.
        failure_rate: percent. Rate mode: failures / calls in the window. Consecutive mode:
            100.0 while the latest calls failed (an unbroken run of failures), else 0.0.
        calls: calls in the window (rate mode) or the current run length (consecutive mode).
        last_failure_time: wall-clock time of the last recorded failure, or ``None``.
        retry_after: seconds until an open circuit admits a probe (0.0 when closed).
    """

    name: str
    state: CircuitState
    failure_count: int
    failure_rate: float
    calls: int
    last_failure_time: datetime | None
    retry_after: float


# ------------------------------------------------------------------------------------------------
# configuration

ModeName = Literal["consecutive", "rate"]


class BreakerPolicy(BaseModel):
    """How one breaker trips and recovers (every field also a key of ``circuit_breaker_config``).

    Example:
        >>> BreakerPolicy(mode="rate", window_size=20, minimum_calls=10).mode
        'rate'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: ModeName = "consecutive"
    """``consecutive`` failures in a row, or failure ``rate`` over a sliding window."""
    failure_threshold: int = Field(default=5, ge=1)
    """Consecutive failures that open the circuit (consecutive mode)."""
    failure_rate_threshold: float = Field(default=50.0, gt=0, le=100)
    """Percent of failed calls in the window that opens the circuit (rate mode)."""
    window_type: Literal["count", "time"] = "count"
    """Rate-mode window: the last ``window_size`` calls, or the last ``window_size`` seconds."""
    window_size: int = Field(default=100, ge=1, le=100_000)
    """Calls (count window) or seconds (time window)."""
    minimum_calls: int = Field(default=10, ge=1)
    """Calls the window must hold before its failure rate can open the circuit."""
    slow_call_duration_threshold: float | None = Field(default=None, gt=0)
    """Seconds; a call at least this slow counts as a failure even if it returns (None: off)."""
    reset_timeout: float = Field(default=30.0, gt=0)
    """Seconds the circuit stays open before it admits probes."""
    half_open_max_calls: int = Field(default=1, ge=1)
    """Probes admitted while half-open; every other caller is rejected at once."""
    half_open_max_wait: float | None = Field(default=60.0, gt=0)
    """Seconds to wait for unreported (lost) probes before re-opening (None: forever)."""
    ignore_exceptions: list[str] = Field(default_factory=list)
    """Exception class names counted as neither success nor failure."""
    record_exceptions: list[str] = Field(default_factory=list)
    """If non-empty, only these count as failures; other exceptions count as successes."""

    @model_validator(mode="after")
    def _check_window(self) -> BreakerPolicy:
        if self.mode == "rate" and self.window_type == "count" and \
                self.minimum_calls > self.window_size:
            raise ValueError(
                f"minimum_calls={self.minimum_calls} exceeds window_size={self.window_size}: a "
                "count window never holds that many calls, so the circuit could never open; "
                "lower minimum_calls or raise window_size")
        return self


_POLICY_FIELDS = frozenset(BreakerPolicy.model_fields)


def _policy(policy: BreakerPolicy | Mapping[str, Any] | None) -> BreakerPolicy:
    """A policy from a :class:`BreakerPolicy`, a mapping of its fields or ``None`` (defaults);
    bad keys or values are a ``ConfigurationError`` naming them."""
    return cast(BreakerPolicy, coerce_config(BreakerPolicy, policy, "circuit_breaker"))


class CircuitBreakerConfig(BreakerPolicy):
    """The ``circuit_breaker`` subcontract: the default policy plus store and reporting options.

    Attributes:
        backend: ``memory`` (per process) or ``redis`` (one state shared by every process
            using the same ``namespace`` and breaker name).
        redis_url: ``None`` uses ``ONEX_REDIS_URL``, else ``redis://127.0.0.1:6379/0``.
        namespace: Redis key prefix.
        redis_clock: ``server`` (Redis ``TIME``: one clock for every process, the default) or
            ``client`` (this process's wall clock; also used whenever a clock is injected, as
            tests do).
        on_backend_error: when Redis is unreachable: ``local`` (fall back to an in-process
            breaker with the same policy until Redis answers again), ``allow`` (call
            unguarded) or ``deny`` (reject with ``CircuitOpenError``).
        backend_retry_interval: seconds to stay on the fallback before trying Redis again.
        open_health: health status while any breaker is open (half-open is always
            ``degraded``): ``degraded`` (default, like resilience4j's health indicator, which
            does not fail the application) or ``unhealthy``.
        event_topic: event-bus topic for state changes.
        process_breaker: name of the breaker that guards ``process()``.
        breakers: per-name policy overrides, e.g. ``{"payments": {"failure_threshold": 3}}``.
    """

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None
    namespace: str = "onex"
    redis_clock: Literal["server", "client"] = "server"
    on_backend_error: Literal["local", "allow", "deny"] = "local"
    backend_retry_interval: float = Field(default=1.0, gt=0)
    open_health: Literal["degraded", "unhealthy"] = "degraded"
    event_topic: str = "circuit_breaker.state_changed"
    process_breaker: str = Field(default="process", min_length=1)
    breakers: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("breakers")
    @classmethod
    def _check_overrides(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, override in value.items():
            bad = sorted(set(override) - _POLICY_FIELDS)
            if bad:
                from onex_compose.exceptions import did_you_mean

                hints = "; ".join(f"{b!r}{did_you_mean(b, _POLICY_FIELDS)}" for b in bad)
                raise ValueError(f"breakers[{name!r}]: unknown policy keys {hints}; per-breaker "
                                 f"keys are {sorted(_POLICY_FIELDS)}")
            BreakerPolicy.model_validate(override)  # each value valid on its own
        return value

    def policy(self, name: str) -> BreakerPolicy:
        """The policy of breaker ``name``: the defaults here plus its ``breakers`` override."""
        base = {k: getattr(self, k) for k in _POLICY_FIELDS}
        override = self.breakers.get(name)
        if override:
            base.update(override)
        return BreakerPolicy.model_validate(base)


# ------------------------------------------------------------------------------------------------
# exception classification


class ExceptionMatcher:
    """Matches exceptions against class names (``"TimeoutError"``, ``"mod.Qual"``) and types.

    A name matches any class in the exception's MRO by ``__name__``, ``__qualname__`` or
    ``module.qualname``, so ``"ConnectionError"`` matches ``ConnectionRefusedError``. Results
    are cached per exception type.

    Example:
        >>> m = ExceptionMatcher(["ConnectionError"])
        >>> m(ConnectionRefusedError()), m(ValueError())
        (True, False)
    """

    __slots__ = ("_cache", "names", "types")

    def __init__(self, names: Iterable[str | type[BaseException]] = ()) -> None:
        self.names = frozenset(n for n in names if isinstance(n, str))
        self.types = tuple(n for n in names if isinstance(n, type))
        self._cache: dict[type, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.names or self.types)

    def __call__(self, exc: BaseException) -> bool:
        kind = type(exc)
        hit = self._cache.get(kind)
        if hit is None:
            hit = self._cache[kind] = self._match(kind)
        return hit

    def _match(self, kind: type) -> bool:
        if self.types and issubclass(kind, self.types):
            return True
        for klass in kind.__mro__:
            if (klass.__name__ in self.names or klass.__qualname__ in self.names
                    or f"{klass.__module__}.{klass.__qualname__}" in self.names):
                return True
        return False


_SUCCESS, _FAILURE, _NEUTRAL = 0, 1, 2


class _Classifier:
    """Exception -> success / failure / neutral, by the policy's ignore and record lists."""

    __slots__ = ("ignore", "record")

    def __init__(self, policy: BreakerPolicy, ignore: Iterable[Any] = (),
                 record: Iterable[Any] = ()) -> None:
        self.ignore = ExceptionMatcher([*policy.ignore_exceptions, *ignore])
        self.record = ExceptionMatcher([*policy.record_exceptions, *record])

    def __call__(self, exc: BaseException) -> int:
        if not isinstance(exc, Exception):  # cancellation, exit, interrupt: never an outcome
            return _NEUTRAL
        if self.ignore and self.ignore(exc):
            return _NEUTRAL
        record = self.record
        if record and record(exc):
            return _FAILURE
        if getattr(type(exc), "onex_breaker_neutral", False):
            return _NEUTRAL  # this node shed the load itself: the dependency was never called
        return _SUCCESS if record else _FAILURE


# ------------------------------------------------------------------------------------------------
# listeners, metrics, events


class _Dispatcher:
    """Delivers state changes: gauge + counters, listeners (sync or async), pending tasks."""

    def __init__(self, metrics: Any = None) -> None:
        self.metrics = metrics
        self.listeners: list[Listener] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    def rejected(self, name: str) -> None:
        if self.metrics is not None:
            self.metrics.increment("circuit_breaker_rejected_total",
                                   labels={"operation_key": name})

    def failed(self, name: str) -> None:
        if self.metrics is not None:
            self.metrics.increment("circuit_breaker_failures_total",
                                   labels={"operation_key": name})

    def created(self, name: str, state: CircuitState) -> None:
        if self.metrics is not None:
            self.metrics.gauge("circuit_breaker_state", int(state),
                               labels={"operation_key": name})

    def emit(self, change: CircuitStateChange, own: list[Listener]) -> None:
        if self.metrics is not None:
            labels = {"operation_key": change.breaker}
            self.metrics.gauge("circuit_breaker_state", int(change.new), labels=labels)
            self.metrics.increment("circuit_breaker_transitions_total", labels={
                "operation_key": change.breaker, "from_state": change.old.label,
                "to_state": change.new.label})
        log = logger.warning if change.new is _OPEN else logger.info
        log("circuit breaker {!r}: {} -> {} ({})", change.breaker, change.old.label,
            change.new.label, change.reason)
        for listener in (*own, *self.listeners):
            try:
                result = listener(change)
                if inspect.isawaitable(result):
                    self._schedule(result, listener)
            except Exception as exc:  # a listener never breaks the protected call
                logger.opt(exception=exc).warning("circuit breaker listener {!r} failed: {}",
                                                  listener, exc)

    def _schedule(self, awaitable: Awaitable[Any], listener: Any) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            logger.warning("async circuit breaker listener {!r} skipped: no running event loop "
                           "(the state changed in a synchronous call)", listener)
            return

        async def run() -> None:
            try:
                await awaitable
            except Exception as exc:
                logger.opt(exception=exc).warning("circuit breaker listener {!r} failed: {}",
                                                  listener, exc)

        task = loop.create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self) -> None:
        """Wait for listener tasks of the running loop (called on close)."""
        loop = asyncio.get_running_loop()
        pending = [t for t in self.tasks if t.get_loop() is loop and not t.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


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


# ------------------------------------------------------------------------------------------------
# the Redis-backed breaker

_LUA_COMMON = """
local function fmt(x) return string.format('%.17g', x) end
local function clock(arg)
  local n = tonumber(arg)
  if n then return n end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS[1] state hash. ARGV: now ('' = server TIME), reset_timeout, half_open_max_calls,
# half_open_max_wait ('' = none). Returns {decision (0 reject, 1 closed, 2 probe), epoch,
# state, retry_after, transition_from (-1 none)}.
_LUA_ADMIT = _LUA_COMMON + """
local key = KEYS[1]
local v = redis.call('HMGET', key, 'st', 'ep', 'since', 'ha', 'hok', 'hf')
local st = tonumber(v[1]) or 0
local ep = tonumber(v[2]) or 0
if st == 0 then return {1, ep, 0, '0', -1} end
local now = clock(ARGV[1])
local reset = tonumber(ARGV[2])
local hmax = tonumber(ARGV[3])
local hwait = tonumber(ARGV[4])
local since = tonumber(v[3]) or now
local ha = tonumber(v[4]) or 0
local inflight = ha - (tonumber(v[5]) or 0) - (tonumber(v[6]) or 0)
local from = -1
if st == 1 then
  local left = since + reset - now
  if left > 0 then return {0, ep, 1, fmt(left), -1} end
  st = 2; ep = ep + 1; since = now; ha = 0; from = 1
  redis.call('HSET', key, 'st', 2, 'ep', ep, 'since', fmt(now), 'cf', 0, 'ha', 0, 'hok', 0,
             'hf', 0, 'wf', 0)
  redis.call('DEL', KEYS[2])
elseif hwait and now - since >= hwait and inflight > 0 then
  ep = ep + 1
  redis.call('HSET', key, 'st', 1, 'ep', ep, 'since', fmt(now), 'cf', 0, 'ha', 0, 'hok', 0,
             'hf', 0, 'wf', 0)
  redis.call('DEL', KEYS[2])
  return {0, ep, 1, fmt(reset), 2}
end
if ha < hmax then
  redis.call('HSET', key, 'ha', ha + 1)
  return {2, ep, 2, '0', from}
end
local ra = reset
if hwait then ra = since + hwait - now end
return {0, ep, 2, fmt(ra), from}
"""

# KEYS[1] state hash, KEYS[2] window (list for count windows, hash for time windows).
# ARGV: now, epoch, probe (0/1), outcome (s/f/n), mode, failure_threshold, rate_threshold,
# window_type, window_size, minimum_calls, half_open_max_calls.
# Returns {state, transition_from (-1 none), reason}.
_LUA_RECORD = _LUA_COMMON + """
local key, wkey = KEYS[1], KEYS[2]
local v = redis.call('HMGET', key, 'st', 'ep', 'cf', 'ha', 'hok', 'hf', 'wf')
local st = tonumber(v[1]) or 0
local ep = tonumber(v[2]) or 0
if ep ~= tonumber(ARGV[2]) then return {st, -1, ''} end
local now = clock(ARGV[1])
local probe = ARGV[3] == '1'
local outcome = ARGV[4]
local rate = ARGV[5] == 'rate'
local threshold = tonumber(ARGV[6])
local rthr = tonumber(ARGV[7])
local wtime = ARGV[8] == 'time'
local wsize = tonumber(ARGV[9])
local minc = tonumber(ARGV[10])
local hmax = tonumber(ARGV[11])
if outcome == 'f' then redis.call('HSET', key, 'lf', fmt(now)) end
local function go(to, reason)
  redis.call('HSET', key, 'st', to, 'ep', ep + 1, 'since', fmt(now), 'ha', 0, 'hok', 0, 'hf', 0)
  if to ~= 1 then
    redis.call('HSET', key, 'cf', 0, 'wf', 0)
    redis.call('DEL', wkey)
  end
  return {to, st, reason}
end
if st == 2 then
  if not probe then return {st, -1, ''} end
  local ha = tonumber(v[4]) or 0
  if outcome == 'n' then
    if ha > 0 then redis.call('HSET', key, 'ha', ha - 1) end
    return {st, -1, ''}
  end
  local hok = tonumber(v[5]) or 0
  local hf = tonumber(v[6]) or 0
  if outcome == 'f' then hf = hf + 1 else hok = hok + 1 end
  if (rate and hf * 100 >= rthr * hmax) or ((not rate) and hf > 0) then
    return go(1, 'probe_failed')
  end
  if hok + hf >= hmax then return go(0, 'probes_succeeded') end
  redis.call('HSET', key, 'hok', hok, 'hf', hf)
  return {st, -1, ''}
end
if st ~= 0 or outcome == 'n' then return {st, -1, ''} end
if not rate then
  local cf = tonumber(v[3]) or 0
  if outcome == 's' then
    if cf > 0 then redis.call('HSET', key, 'cf', 0) end
    return {st, -1, ''}
  end
  cf = cf + 1
  redis.call('HSET', key, 'cf', cf)
  if cf >= threshold then return go(1, 'failure_threshold') end
  return {st, -1, ''}
end
local failed = 0
if outcome == 'f' then failed = 1 end
local wc, wf
if wtime then
  local sec = math.floor(now)
  local w = redis.call('HMGET', wkey, 'h', 'c', 'f')
  local head = tonumber(w[1])
  wc = tonumber(w[2]) or 0
  wf = tonumber(w[3]) or 0
  if head == nil then
    head = sec
  elseif sec > head then
    for s = math.max(head + 1, sec - wsize + 1), sec do
      local i = s % wsize
      local b = redis.call('HMGET', wkey, 'c' .. i, 'f' .. i)
      wc = wc - (tonumber(b[1]) or 0)
      wf = wf - (tonumber(b[2]) or 0)
      redis.call('HDEL', wkey, 'c' .. i, 'f' .. i)
    end
    head = sec
  end
  local i = head % wsize
  redis.call('HINCRBY', wkey, 'c' .. i, 1)
  if failed == 1 then redis.call('HINCRBY', wkey, 'f' .. i, 1) end
  wc = wc + 1
  wf = wf + failed
  redis.call('HSET', wkey, 'h', head, 'c', wc, 'f', wf)
  redis.call('HSET', key, 'wf', wf)
else
  local n = redis.call('LLEN', wkey)
  wf = tonumber(v[7]) or 0
  if n >= wsize then
    local old = redis.call('RPOP', wkey)
    if old == '1' then wf = wf - 1 end
    n = n - 1
  end
  redis.call('LPUSH', wkey, failed)
  wc = n + 1
  wf = wf + failed
  redis.call('HSET', key, 'wf', wf)
end
if wc >= minc and wf * 100 >= rthr * wc then return go(1, 'failure_rate') end
return {st, -1, ''}
"""

# KEYS[1], KEYS[2]; ARGV: now, target state. Returns {state, transition_from}.
_LUA_FORCE = _LUA_COMMON + """
local key = KEYS[1]
local v = redis.call('HMGET', key, 'st', 'ep')
local st = tonumber(v[1]) or 0
local ep = tonumber(v[2]) or 0
local now = clock(ARGV[1])
redis.call('HSET', key, 'st', tonumber(ARGV[2]), 'ep', ep + 1, 'since', fmt(now),
           'ha', 0, 'hok', 0, 'hf', 0)
if tonumber(ARGV[2]) ~= 1 then
  redis.call('HSET', key, 'cf', 0, 'wf', 0)
  redis.call('DEL', KEYS[2])
end
return {tonumber(ARGV[2]), st}
"""

_OUTCOME = {_SUCCESS: "s", _FAILURE: "f", _NEUTRAL: "n"}




def _time_window_totals(raw: Mapping[Any, Any], size: int, now: float) -> tuple[int, int]:
    """Calls and failures of a Redis time window at ``now``, computed as ``_TimeWindow.totals``
    does (buckets that fell out of the window are excluded without being deleted)."""
    data = {text(k): int(text(v)) for k, v in raw.items()}
    head = data.get("h")
    calls, failures = data.get("c", 0), data.get("f", 0)
    sec = int(now // 1)
    if head is None or sec <= head:
        return calls, failures
    for s in range(max(head + 1, sec - size + 1), sec + 1):
        i = s % size
        calls -= data.get(f"c{i}", 0)
        failures -= data.get(f"f{i}", 0)
    return calls, failures


class _Scripts:
    """Lua scripts registered once per Redis client object."""

    _cache: weakref.WeakKeyDictionary[Any, tuple[Any, Any, Any]] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, client: Any) -> tuple[Any, Any, Any]:
        scripts = cls._cache.get(client)
        if scripts is None:
            scripts = cls._cache[client] = (client.register_script(_LUA_ADMIT),
                                            client.register_script(_LUA_RECORD),
                                            client.register_script(_LUA_FORCE))
        return scripts


class _Admission:
    __slots__ = ("epoch", "probe", "st")

    def __init__(self, epoch: int, probe: bool, st: _Epoch | None = None) -> None:
        self.epoch = epoch
        self.probe = probe
        self.st = st  # set when the local fallback admitted the call


class RedisCircuitBreaker(_BreakerBase):
    """A circuit breaker whose state lives in Redis: every process using the same namespace and
    name sees (and drives) one circuit.

    Each call costs two atomic Lua scripts (admit, record), so use it where cross-process
    agreement matters more than the ~0.1 ms round trips. ``call`` uses the synchronous client
    (do not use it inside an event loop); ``acall`` the asyncio client.

    Time: the scripts read Redis ``TIME`` (one clock for every process) unless a clock is
    injected or ``redis_clock: client``, in which case this process passes its clock's value
    (tests use a ``ManualClock`` to script sequences).

    When Redis is unreachable, ``on_backend_error`` decides: ``local`` (an in-process breaker
    with the same policy stands in, and Redis is tried again after ``backend_retry_interval``),
    ``allow`` (the call runs unguarded) or ``deny`` (``CircuitOpenError`` with reason
    ``backend_unavailable``). Each outage is logged once and counted in
    ``circuit_breaker_backend_errors_total``.

    Example:
        >>> breaker = RedisCircuitBreaker("payments", namespace="svc")  # doctest: +SKIP
        >>> await breaker.acall(charge, order)  # doctest: +SKIP
    """

    def __init__(self, name: str, policy: BreakerPolicy | Mapping[str, Any] | None = None, *,
                 url: str | None = None, namespace: str = "onex", clock: Clock | None = None,
                 redis_clock: Literal["server", "client"] = "server",
                 on_backend_error: Literal["local", "allow", "deny"] = "local",
                 backend_retry_interval: float = 1.0, metrics: Any = None,
                 ignore: Iterable[type[BaseException]] = (),
                 record: Iterable[type[BaseException]] = (),
                 _dispatcher: _Dispatcher | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a circuit breaker needs a non-empty string name, got {name!r}")
        import redis.exceptions as rexc

        self.name = name
        self.policy = policy = _policy(policy)
        self.url = url
        self.on_state_change: list[Listener] = []
        self._dispatch = _dispatcher or _Dispatcher(metrics)
        self._classify = _Classifier(policy, ignore, record)
        # server time unless a clock was injected (then that clock drives the scripts)
        self._client_time = clock is not None or redis_clock == "client"
        self.clock: Clock = clock or (time.time if redis_clock == "client" else monotonic)
        self._duration_clock = clock or monotonic
        self.keys = [f"{namespace}:circuit_breaker:{{{name}}}",
                     f"{namespace}:circuit_breaker:{{{name}}}:window"]
        self.on_backend_error = on_backend_error
        self.backend_retry_interval = backend_retry_interval
        self._down_until: float | None = None
        self._backend_errors = (rexc.ConnectionError, rexc.TimeoutError, OSError)
        self._local = CircuitBreaker(name, policy, clock=self._duration_clock,
                                     _dispatcher=self._dispatch, ignore=ignore, record=record)
        self._local.on_state_change = self.on_state_change
        self._last_state = _CLOSED
        self._record_args = [
            policy.mode, str(policy.failure_threshold), repr(policy.failure_rate_threshold),
            policy.window_type, str(policy.window_size), str(policy.minimum_calls),
            str(policy.half_open_max_calls)]
        self._admit_args = [repr(policy.reset_timeout), str(policy.half_open_max_calls),
                            "" if policy.half_open_max_wait is None
                            else repr(policy.half_open_max_wait)]
        self._dispatch.created(name, _CLOSED)

    def __repr__(self) -> str:
        return f"<RedisCircuitBreaker {self.name!r} key={self.keys[0]!r}>"

    @property
    def state(self) -> CircuitState:
        """The state this process saw last (``await astatus()`` reads the shared one)."""
        return self._last_state

    # -- backend plumbing ----------------------------------------------------------------------

    def _now_arg(self) -> str:
        return repr(self.clock()) if self._client_time else ""

    def _backend_up(self) -> bool:
        down = self._down_until
        if down is None:
            return True
        if self._duration_clock() >= down:
            self._down_until = None
            logger.info("circuit breaker {!r}: retrying Redis after an outage", self.name)
            return True
        return False

    def _backend_failed(self, exc: BaseException) -> None:
        if self._down_until is None:
            logger.warning("circuit breaker {!r}: Redis unreachable ({}); policy {!r} for {} s",
                           self.name, exc, self.on_backend_error, self.backend_retry_interval)
        self._down_until = self._duration_clock() + self.backend_retry_interval
        if self._dispatch.metrics is not None:
            self._dispatch.metrics.increment("circuit_breaker_backend_errors_total",
                                             labels={"operation_key": self.name})

    def _fallback(self) -> str:
        if self.on_backend_error == "deny":
            self._dispatch.rejected(self.name)
            raise CircuitOpenError(self.name, self.backend_retry_interval, _OPEN,
                                   "backend_unavailable")
        return self.on_backend_error

    def _admitted(self, reply: Any) -> _Admission:
        decision, epoch, state = int(reply[0]), int(reply[1]), CircuitState(int(reply[2]))
        retry_after, source = float(text(reply[3])), int(reply[4])
        self._last_state = state  # transitions made by other processes are theirs to announce
        if source >= 0:
            reason = "reset_timeout" if source == _OPEN else "half_open_timeout"
            self._dispatch.emit(CircuitStateChange(self.name, CircuitState(source), state,
                                                   reason, self.clock()), self.on_state_change)
        if decision == 0:
            self._dispatch.rejected(self.name)
            raise CircuitOpenError(self.name, retry_after, state,
                                   "open" if state is _OPEN else "half_open_full")
        return _Admission(epoch, decision == 2)

    def _recorded(self, reply: Any) -> None:
        state, source, reason = CircuitState(int(reply[0])), int(reply[1]), text(reply[2])
        self._last_state = state
        if source >= 0:
            self._dispatch.emit(CircuitStateChange(self.name, CircuitState(source), state,
                                                   reason, self.clock()), self.on_state_change)

    def _record_argv(self, adm: _Admission, outcome: int) -> list[str]:
        return [self._now_arg(), str(adm.epoch), "1" if adm.probe else "0", _OUTCOME[outcome],
                *self._record_args]

    def _outcome_of(self, started: float) -> int:
        slow = self.policy.slow_call_duration_threshold
        if slow is not None and self._duration_clock() - started >= slow:
            return _FAILURE
        return _SUCCESS

    # -- sync ----------------------------------------------------------------------------------

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call ``fn`` through the shared breaker using the synchronous Redis client."""
        if not self._backend_up() and self._fallback() != "local":
            return fn(*args, **kwargs)
        if self._down_until is not None:
            return self._local.call(fn, *args, **kwargs)
        admit, record, _ = _Scripts.of(_redis.sync_client(self.url))
        try:
            reply = admit(keys=self.keys, args=[self._now_arg(), *self._admit_args])
        except self._backend_errors as exc:
            self._backend_failed(exc)
            if self._fallback() == "local":
                return self._local.call(fn, *args, **kwargs)
            return fn(*args, **kwargs)
        adm = self._admitted(reply)
        started = self._duration_clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._record_sync(record, adm, self._classify(exc))
            raise
        self._record_sync(record, adm, self._outcome_of(started))
        return result

    def _record_sync(self, record: Any, adm: _Admission, outcome: int) -> None:
        if outcome == _FAILURE:
            self._dispatch.failed(self.name)
        try:
            self._recorded(record(keys=self.keys, args=self._record_argv(adm, outcome)))
        except self._backend_errors as exc:
            self._backend_failed(exc)

    # -- async ---------------------------------------------------------------------------------

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await ``fn`` through the shared breaker using the asyncio Redis client."""
        if not self._backend_up() and self._fallback() != "local":
            return await fn(*args, **kwargs)
        if self._down_until is not None:
            return await self._local.acall(fn, *args, **kwargs)
        admit, record, _ = _Scripts.of(_redis.async_client(self.url))
        try:
            reply = await admit(keys=self.keys, args=[self._now_arg(), *self._admit_args])
        except self._backend_errors as exc:
            self._backend_failed(exc)
            if self._fallback() == "local":
                return await self._local.acall(fn, *args, **kwargs)
            return await fn(*args, **kwargs)
        adm = self._admitted(reply)
        started = self._duration_clock()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            await self._record_async(record, adm, self._classify(exc))
            raise
        await self._record_async(record, adm, self._outcome_of(started))
        return result

    async def _record_async(self, record: Any, adm: _Admission, outcome: int) -> None:
        if outcome == _FAILURE:
            self._dispatch.failed(self.name)
        try:
            reply = await record(keys=self.keys, args=self._record_argv(adm, outcome))
            self._recorded(reply)
        except self._backend_errors as exc:
            self._backend_failed(exc)

    # -- status and manual control ---------------------------------------------------------------

    def _status_from(self, fields: list[Any], window: Any, now: float) -> BreakerStatus:
        st, cf, wf, since, lf = fields
        state = CircuitState(int(st or 0))
        self._last_state = state
        policy = self.policy
        if policy.mode == "consecutive":
            calls = failures = int(cf or 0)
            rate = 100.0 if failures else 0.0
        else:
            if policy.window_type == "count":
                calls, failures = int(window or 0), int(wf or 0)
            else:
                calls, failures = _time_window_totals(window or {}, policy.window_size, now)
            rate = 100.0 * failures / calls if calls else 0.0
        retry = 0.0
        if state is _OPEN and since is not None:
            retry = max(0.0, float(text(since)) + policy.reset_timeout - now)
        last = None
        if lf is not None:
            at = float(text(lf))
            last = (datetime.fromtimestamp(at, UTC) if not self._client_time
                    or self.clock is time.time else self._wall(at))
        return BreakerStatus(self.name, state, failures, rate, calls, last, retry)

    def _queue_status(self, pipe: Any) -> None:
        pipe.hmget(self.keys[0], "st", "cf", "wf", "since", "lf")
        if self.policy.window_type == "count":
            pipe.llen(self.keys[1])
        else:
            pipe.hgetall(self.keys[1])
        pipe.time()

    def _server_now(self, server: Any) -> float:
        if self._client_time:
            return self.clock()
        return float(server[0]) + float(server[1]) / 1e6

    async def astatus(self) -> BreakerStatus:
        """Read the shared state (never modifies it)."""
        client = _redis.async_client(self.url)
        async with client.pipeline(transaction=False) as pipe:
            self._queue_status(pipe)
            fields, window, server = await pipe.execute()
        return self._status_from(fields, window, self._server_now(server))

    def status(self) -> BreakerStatus:
        """Read the shared state with the synchronous client (never modifies it)."""
        client = _redis.sync_client(self.url)
        with client.pipeline(transaction=False) as pipe:
            self._queue_status(pipe)
            fields, window, server = pipe.execute()
        return self._status_from(fields, window, self._server_now(server))

    def _force_sync(self, to: CircuitState) -> None:
        force = _Scripts.of(_redis.sync_client(self.url))[2]
        reply = force(keys=self.keys, args=[self._now_arg(), str(int(to))])
        self._last_state = to
        self._dispatch.emit(CircuitStateChange(self.name, CircuitState(int(reply[1])), to,
                                               "manual", self.clock()), self.on_state_change)

    async def aforce(self, to: CircuitState) -> None:
        """Set the shared state (``OPEN``, ``CLOSED`` or ``HALF_OPEN``) for every process."""
        force = _Scripts.of(_redis.async_client(self.url))[2]
        reply = await force(keys=self.keys, args=[self._now_arg(), str(int(to))])
        self._last_state = to
        self._dispatch.emit(CircuitStateChange(self.name, CircuitState(int(reply[1])), to,
                                               "manual", self.clock()), self.on_state_change)

    def open(self) -> None:
        """Force the shared circuit open (synchronous client)."""
        self._force_sync(_OPEN)

    def close(self) -> None:
        """Force the shared circuit closed (synchronous client)."""
        self._force_sync(_CLOSED)

    def half_open(self) -> None:
        """Force the shared circuit half-open (synchronous client)."""
        self._force_sync(_HALF_OPEN)

    reset = close


AnyBreaker = CircuitBreaker | RedisCircuitBreaker


# ------------------------------------------------------------------------------------------------
# the facility: named breakers


class CircuitBreakers:
    """The node's breakers, one per operation name, created on first use from the config.

    ``self.circuit_breaker("payments")`` (or ``.get("payments")``) returns the breaker named
    ``payments``, with the default policy plus ``breakers["payments"]`` from the config;
    ``.default`` is the one guarding ``process()``. Listeners appended to ``on_state_change``
    hear every breaker of the node.

    Example:
        >>> breakers = CircuitBreakers(CircuitBreakerConfig(breakers={"db": {"failure_threshold": 2}}))
        >>> breakers("db").policy.failure_threshold, breakers("api").policy.failure_threshold
        (2, 5)
        >>> sorted(breakers.states().items())
        [('api', 'closed'), ('db', 'closed')]
    """

    def __init__(self, config: CircuitBreakerConfig | Mapping[str, Any] | None = None, *,
                 metrics: Any = None, clock: Clock | None = None) -> None:
        self.config: CircuitBreakerConfig = coerce_config(CircuitBreakerConfig, config,
                                                          "circuit_breaker")
        self._clock = clock
        self._dispatch = _Dispatcher(metrics)
        self.on_state_change = self._dispatch.listeners
        self._breakers: dict[str, AnyBreaker] = {}
        self._lock = threading.Lock()

    @property
    def clock(self) -> Clock | None:
        """The injected clock (``None``: real time); setting it rebuilds nothing, it re-points
        every existing breaker, so tests can inject a ``ManualClock`` into a composed node."""
        return self._clock

    @clock.setter
    def clock(self, clock: Clock | None) -> None:
        self._clock = clock
        with self._lock:
            for breaker in self._breakers.values():
                if isinstance(breaker, CircuitBreaker):
                    breaker.clock = clock or monotonic
                else:
                    breaker.clock = clock or (time.time if self.config.redis_clock == "client"
                                              else monotonic)
                    breaker._duration_clock = clock or monotonic
                    breaker._client_time = clock is not None or \
                        self.config.redis_clock == "client"
                    breaker._local.clock = clock or monotonic

    def get(self, name: str | None = None) -> AnyBreaker:
        """The breaker called ``name`` (default: the ``process()`` breaker), created if new."""
        name = name or self.config.process_breaker
        breaker = self._breakers.get(name)
        if breaker is not None:
            return breaker
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = self._breakers[name] = self._make(name)
        return breaker

    __call__ = get

    def _make(self, name: str) -> AnyBreaker:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a circuit breaker needs a non-empty string name, got {name!r}")
        cfg = self.config
        policy = cfg.policy(name)
        if cfg.backend == "redis":
            require_client("circuit_breaker")
            return RedisCircuitBreaker(
                name, policy, url=cfg.redis_url, namespace=cfg.namespace, clock=self._clock,
                redis_clock=cfg.redis_clock, on_backend_error=cfg.on_backend_error,
                backend_retry_interval=cfg.backend_retry_interval, _dispatcher=self._dispatch)
        return CircuitBreaker(name, policy, clock=self._clock or monotonic,
                              _dispatcher=self._dispatch)

    @property
    def default(self) -> AnyBreaker:
        """The breaker that guards ``process()`` (``config.process_breaker``)."""
        return self.get(self.config.process_breaker)

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __iter__(self) -> Iterator[AnyBreaker]:
        return iter(list(self._breakers.values()))

    def __len__(self) -> int:
        return len(self._breakers)

    def __repr__(self) -> str:
        return f"<CircuitBreakers backend={self.config.backend} {self.states()}>"

    def states(self) -> dict[str, str]:
        """``{name: "closed" | "open" | "half_open"}`` as this process last saw them."""
        return {name: b.state.label for name, b in list(self._breakers.items())}

    async def health_check(self) -> dict[str, Any]:
        """Health report: any open breaker -> ``open_health``, any half-open -> ``degraded``.

        Redis breakers are read from Redis (their shared state); a Redis error reports the
        breakers' last known state with the error attached.
        """
        states: dict[str, str] = {}
        error = None
        for breaker in list(self._breakers.values()):
            try:
                states[breaker.name] = (await breaker.astatus()).state.label
            except Exception as exc:
                states[breaker.name] = breaker.state.label
                error = f"{type(exc).__name__}: {exc}"
        status = "healthy"
        if "half_open" in states.values():
            status = "degraded"
        if "open" in states.values():
            status = self.config.open_health
        report: dict[str, Any] = {"status": status, "breakers": states}
        if error:
            report["error"] = error
        return report

    async def drain(self) -> None:
        """Wait for pending async listeners (state-change events) of the running loop."""
        await self._dispatch.drain()


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
