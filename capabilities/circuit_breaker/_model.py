"""States, errors, events, policies and config, exception classification and listener
dispatch of the circuit breaker (shared by the in-process and Redis breakers)."""

from __future__ import annotations

import asyncio
import inspect
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any, Literal, TypeVar, cast

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from onex_compose import coerce_config
from onex_compose.capabilities._fallback import RedisBackendConfig
from onex_compose.exceptions import OnexError

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


class CircuitBreakerUsageError(OnexError, TypeError):
    """``call()`` (the sync path) was given an async function: nothing was called or recorded.

    Example:
        >>> print(CircuitBreakerUsageError("db", "fetch"))  # doctest: +ELLIPSIS
        circuit breaker 'db': call() got 'fetch', which returned a coroutine; ... Use
        `await breaker.acall(fetch, ...)` for async functions ...
    """

    def __init__(self, name: str, fn_name: str, what: str = "a coroutine") -> None:
        self.name = name
        super().__init__(
            f"circuit breaker {name!r}: call() got {fn_name!r}, which returned {what}; call() "
            f"runs synchronous functions only and cannot tell how an awaitable ends, so nothing "
            f"was recorded. Use `await breaker.acall({fn_name}, ...)` for async functions (or "
            f"decorate the `async def` with the breaker).")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_usage_error, (self.name, str(self)))


def _rebuild_usage_error(name: str, message: str) -> CircuitBreakerUsageError:
    err = CircuitBreakerUsageError.__new__(CircuitBreakerUsageError)
    err.name = name
    OnexError.__init__(err, message)
    return err


ASYNC_RESULTS: frozenset[type] = frozenset({types.CoroutineType, asyncio.Future, asyncio.Task})
"""Result types that mean a sync ``call()`` was given an async function."""


def async_misuse(name: str, fn: Any, result: Any) -> CircuitBreakerUsageError:
    """The error for a sync ``call()`` whose function returned an awaitable (closed here, so it
    never runs and never warns "was never awaited")."""
    if inspect.iscoroutine(result):
        result.close()
    what = "a coroutine" if inspect.iscoroutine(result) else f"an awaitable {type(result).__name__}"
    return CircuitBreakerUsageError(name, getattr(fn, "__qualname__", None) or repr(fn), what)


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
        slow_call_count: slow calls (at least ``slow_call_duration``, failed or not) in the
            window (rate mode) or in a row (consecutive mode).
        slow_call_rate: percent, like ``failure_rate`` but for slow calls.
        last_slow_call_time: wall-clock time of the last slow call, or ``None``.
    """

    name: str
    state: CircuitState
    failure_count: int
    failure_rate: float
    calls: int
    last_failure_time: datetime | None
    retry_after: float
    slow_call_count: int = 0
    slow_call_rate: float = 0.0
    last_slow_call_time: datetime | None = None


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
    slow_call_duration: float | None = Field(default=None, gt=0)
    """Seconds; a call at least this slow is a slow call, counted apart from failures (None: off)."""
    slow_call_rate_threshold: float = Field(default=100.0, gt=0, le=100)
    """Percent of slow calls that opens the circuit: over the window (rate mode, at least
    ``minimum_calls`` calls) or, in consecutive mode, 100% of a run of ``failure_threshold``
    calls (that many slow calls in a row open it)."""
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

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "slow_call_duration_threshold" in data:
            raise ValueError(
                "slow_call_duration_threshold was replaced by slow_call_duration: slow calls are no "
                "longer failures, they have their own rate (slow_call_rate_threshold, percent, "
                "default 100); rename the key")
        return data

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


class CircuitBreakerConfig(BreakerPolicy, RedisBackendConfig):
    """The ``circuit_breaker`` subcontract: the default policy plus store and reporting options.

    Attributes:
        scope: ``node`` (default: each node instance has its own breakers) or ``process``
            (one breaker per name for every node of the process with this scope, as
            resilience4j's registry; nodes sharing a name must give it the same policy; the
            ``process`` breaker is shared too, so name it per node type with
            ``process_breaker`` when they should trip apart).
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

    scope: Literal["node", "process"] = "node"
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


# outcomes are bits: a call may be a failure, slow, both or neither; neutral stands alone
_SUCCESS, _FAILURE, _SLOW, _NEUTRAL = 0, 1, 2, 4
_SLOW_FAILURE = _FAILURE | _SLOW


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
    """Delivers state changes: gauge + counters, span events, listeners (sync or async),
    pending tasks.

    ``tracer`` (the node's, set by ``setup_circuit_breaker`` when tracing is composed) gets the
    events ``circuit_breaker.state_change`` and ``circuit_breaker.rejected`` on the current
    span; it is read only on those two paths, never on an admitted call.
    """

    tracer: Any = None

    def __init__(self, metrics: Any = None) -> None:
        self.metrics = metrics
        self.listeners: list[Listener] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    def rejected(self, name: str, error: CircuitOpenError | None = None) -> None:
        if self.metrics is not None:
            self.metrics.increment("circuit_breaker_rejected_total",
                                   labels={"operation_key": name})
        tracer = self.tracer
        if tracer is not None:
            attrs: dict[str, Any] = {"breaker": name}
            if error is not None:
                attrs.update({"state": error.state.label, "reason": error.reason,
                              "retry_after_s": error.retry_after})
            tracer.add_event("circuit_breaker.rejected", attrs)

    def failed(self, name: str) -> None:
        if self.metrics is not None:
            self.metrics.increment("circuit_breaker_failures_total",
                                   labels={"operation_key": name})

    def slow(self, name: str) -> None:
        if self.metrics is not None:
            self.metrics.increment("circuit_breaker_slow_calls_total",
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
        tracer = self.tracer
        if tracer is not None:
            tracer.add_event("circuit_breaker.state_change", {
                "breaker": change.breaker, "from": change.old.label, "to": change.new.label,
                "reason": change.reason})
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
