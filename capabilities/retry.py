"""retry: automatic retry with exponential back-off, jitter, deadlines and a test switch.

What it gives a node (seed 000's ``MixinRetry``):

* ``await self.with_retry(fn, *args, max_attempts=3, **kwargs)``: calls ``fn`` until it succeeds,
  a non-retriable error occurs, the attempts run out, or the next attempt would start after the
  current deadline. ``fn`` may be ``async def`` or plain ``def``; ``with_retry`` is *always*
  awaited (seed 000 awaits it), and a plain function is called on the caller's thread. Sync code
  without an event loop uses ``self.with_retry_sync(fn, *args, **kwargs)`` (sleeps with
  ``time.sleep``).
* ``self.retry_policy``: the :class:`RetryPolicy` facility (delays, classification, ``wrap()``
  decorator, injectable clock/sleep/random, health signal).
* ``_guard_retry``: wraps the node's ``process()`` (guard rank 50: outside the circuit breaker,
  rate limiter, per-attempt timeout and bulkhead, as resilience4j orders them).

Semantics (``reference/capabilities.md`` A.1 and Part C):

* Bounded by default: 3 attempts (the first call included), full-jitter exponential back-off
  ``U(0, min(max_delay, initial_delay * backoff_factor ** (n - 1)))`` (AWS "full jitter"),
  ``equal`` or ``none`` on request.
* Only listed errors are retried. An exception's class and its bases are walked most specific
  first; the first class that is named in ``fatal_error_types`` (not retried), in
  ``retriable_error_types`` (retried), or that defines ``onex_retriable`` decides. An
  ``onex_retriable`` attribute set on the instance decides before all of that. Seed 002's lists
  are the defaults, so ``TimeoutError`` (and our ``OperationTimeoutError``) and
  ``ConnectionError`` are retried, an open circuit or a full bulkhead (``onex_retriable =
  False``) is not, unless its class name is listed in ``retriable_error_types``.
* Cancellation is never retried: only ``Exception`` is caught, so ``asyncio.CancelledError``,
  ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit`` pass straight through (tenacity
  issue #529 retries cancellation).
* Deadlines: before sleeping, the loop reads :func:`_context.current_deadline` (the enclosing
  timeout's deadline, this loop's ``max_elapsed`` budget, the timeout capability's
  ``total_timeout``); when the next attempt would start at or after it, the loop gives up with
  the last error instead of sleeping past it.
* Server hints: an exception with a numeric ``retry_after`` (seconds, or a ``timedelta``) sets
  that delay (capped at ``max_delay``), as a rate limiter's or circuit breaker's error does.
* The final error is the original exception, re-raised with its traceback, with a note
  (``add_note``) saying how many attempts were made and why the loop stopped.
* A ``with_retry`` running inside an active retry loop (``_context.retry_scope``), for example
  inside a retried ``process()``, makes a single attempt: attempts never multiply.
* Metrics: ``retry_attempts_total{operation, outcome}`` counts every retry (``outcome="retry"``)
  and how loops that retried ended (``recovered``, ``exhausted``, ``deadline``,
  ``not_retriable``). A first-attempt success is not a retry and costs nothing.
* Health: when ``health_degraded_after`` loops gave up within ``health_window`` seconds, the
  node's health report marks ``retry`` as degraded.
* Tests: config ``sleep: false`` removes the sleeping (delays are still computed and checked
  against the deadline); :func:`retry_testing` is a global, context-manager switch (no back-off,
  optionally capped attempts) in the spirit of ``stamina.set_testing``; and the policy's
  ``clock``/``sleep``/``sleep_sync``/``random`` are injectable (``use_clock(ManualClock())``).

Why hand-written and not tenacity or stamina: both build a ``Retrying`` copy, a
``RetryCallState`` and a ``Future`` on every call (~120 Python calls), adding ~17 µs per sync
call and ~31-38 µs per async call on the happy path; neither knows our context deadline or the
nested-scope rule, and tenacity retries cancellation. This loop adds well under a microsecond
on the happy path: ``benchmarks/bench_retry.py`` measures it against both, in one run.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import random as _random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from types import CoroutineType, GeneratorType
from typing import (
    Any,
    Literal,
    NoReturn,
    ParamSpec,
    Protocol,
    TypeVar,
    cast,
    overload,
    runtime_checkable,
)

from pydantic import BaseModel, ConfigDict, Field, field_validator

from onex_compose import coerce_config, facility
from onex_compose.capabilities import _context
from onex_compose.capabilities._context import RetryScope, current_deadline
from onex_compose.capabilities._log import logger

__all__ = [
    "DEFAULT_FATAL",
    "DEFAULT_RETRIABLE",
    "MixinRetry",
    "RetryConfig",
    "RetryPolicy",
    "RetryProtocol",
    "operation_name",
    "retry_testing",
]

T = TypeVar("T")
P = ParamSpec("P")

DEFAULT_RETRIABLE: tuple[str, ...] = ("TimeoutError", "ConnectionError", "TemporaryFailure")
DEFAULT_FATAL: tuple[str, ...] = ("AuthenticationError", "ValidationError", "ConfigurationError")

_retry_scope = _context.retry_scope
_MISSING = object()


class RetryConfig(BaseModel):
    """The retry subcontract (every key of ``retry_config`` in ``mixin_retry.yaml``).

    Seed 000's ``{'max_attempts': 3, 'backoff_factor': 2.0, 'max_delay': 60.0}`` is valid as is.

    Example:
        >>> RetryConfig(max_attempts=5, jitter=False).jitter
        'none'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=3, ge=1, le=100,
                              description="attempts per call, the first one included")
    initial_delay: float = Field(default=0.1, ge=0.0, le=3600.0,
                                 description="seconds; the back-off cap before the 2nd attempt")
    backoff_factor: float = Field(default=2.0, ge=1.0, le=100.0,
                                  description="the cap grows by this factor per attempt")
    max_delay: float = Field(default=60.0, ge=0.0, le=86400.0,
                             description="no single delay exceeds this (seconds)")
    jitter: Literal["full", "equal", "none"] = Field(
        default="full", description="full: U(0, cap); equal: cap/2 + U(0, cap/2); none: cap "
                                    "(true/false are accepted for full/none)")
    max_elapsed: float | None = Field(
        default=None, gt=0.0, description="total budget of one call in seconds (attempts and "
                                          "sleeps); no attempt starts after it")
    retriable_error_types: tuple[str, ...] = Field(
        default=DEFAULT_RETRIABLE, description="exception class names retried (bases count)")
    fatal_error_types: tuple[str, ...] = Field(
        default=DEFAULT_FATAL, description="exception class names never retried (bases count)")
    honor_retry_after: bool = Field(
        default=True, description="use an exception's retry_after (seconds) as the delay")
    sleep: bool = Field(default=True, description="false: never sleep between attempts (tests)")
    guard_process: bool = Field(default=True, description="retry the node's process() calls")
    health_window: float = Field(default=60.0, gt=0.0,
                                 description="seconds of give-ups the health signal looks at")
    health_degraded_after: int | None = Field(
        default=5, ge=1, description="give-ups within health_window that mark retry degraded "
                                     "(null: never)")

    @field_validator("jitter", mode="before")
    @classmethod
    def _jitter_bool(cls, value: Any) -> Any:
        if value is True:
            return "full"
        if value is False:
            return "none"
        return value

    @field_validator("retriable_error_types", "fatal_error_types", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("give a list of exception class names, e.g. [\"TimeoutError\"], "
                             "not a single string")
        if isinstance(value, (list, tuple)):
            out = []
            for item in value:
                if isinstance(item, type) and issubclass(item, BaseException):
                    item = item.__name__
                if not isinstance(item, str) or not item.isidentifier():
                    raise ValueError(f"{item!r} is not an exception class name")
                out.append(item)
            return tuple(out)
        return value


@runtime_checkable
class RetryProtocol(Protocol):
    """What the retry capability adds to a node."""

    def with_retry(self, fn: Callable[..., Any], /, *args: Any, max_attempts: int | None = None,
                   **kwargs: Any) -> Awaitable[Any]: ...

    def with_retry_sync(self, fn: Callable[..., T], /, *args: Any,
                        max_attempts: int | None = None, **kwargs: Any) -> T: ...


# -- the global test switch -----------------------------------------------------------------


class _Testing:
    __slots__ = ("attempts", "sleep")

    def __init__(self, attempts: int | None, sleep: bool) -> None:
        self.attempts = attempts
        self.sleep = sleep


_testing: _Testing | None = None


@contextmanager
def retry_testing(*, attempts: int | None = None, sleep: bool = False) -> Iterator[None]:
    """Test switch for every retry loop in the process: no back-off, optionally fewer attempts.

    While active, loops do not sleep (unless ``sleep=True``) and make at most ``attempts``
    attempts (``None`` keeps each policy's own limit). Deadlines, classification and metrics are
    unchanged. Nests and restores the previous setting on exit; it is process-global (every
    thread sees it), like ``stamina.set_testing``.

    Args:
        attempts: cap on attempts per call, or ``None``.
        sleep: keep sleeping between attempts.

    Example:
        >>> policy = RetryPolicy({"max_attempts": 5, "initial_delay": 30})
        >>> calls = []
        >>> def flaky():
        ...     calls.append(1)
        ...     raise ConnectionError("down")
        >>> with retry_testing(attempts=2):
        ...     try:
        ...         policy.run_sync(flaky)
        ...     except ConnectionError:
        ...         pass
        >>> len(calls)
        2
    """
    global _testing
    if attempts is not None and attempts < 1:
        raise ValueError(f"retry_testing(attempts={attempts}): attempts must be at least 1")
    previous = _testing
    _testing = _Testing(attempts, sleep)
    try:
        yield
    finally:
        _testing = previous


# -- helpers ----------------------------------------------------------------------------------


def operation_name(fn: Any) -> str:
    """A readable name for a callable (used as the ``operation`` metric label).

    Example:
        >>> operation_name(len)
        'len'
        >>> operation_name(functools.partial(int, base=2))
        'int'
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return str(name) if name else type(fn).__name__


def _check_attempts(max_attempts: Any) -> int:
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(
            f"max_attempts must be a positive integer (the first call included), got "
            f"{max_attempts!r}; use max_attempts=1 for a single attempt")
    return max_attempts


def _hint_seconds(value: Any) -> float | None:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


async def _no_sleep(_seconds: float) -> None:
    return None


class RetryPolicy:
    """A retry policy: classification, back-off, deadlines, metrics; runs sync and async calls.

    Args:
        config: a :class:`RetryConfig`, a mapping of its fields, or ``None`` for defaults.
        metrics: the node's metrics facility (anything with ``increment(name, value,
            labels)``), or ``None``.
        clock: seconds on the clock deadlines use (default ``time.monotonic``).
        sleep: ``async`` sleep (default ``asyncio.sleep``).
        sleep_sync: blocking sleep for :meth:`run_sync` (default ``time.sleep``).
        random: ``() -> float`` in ``[0, 1)`` for jitter (default ``random.random``).
        name: shown in logs and the health report.

    Example:
        >>> from onex_compose.capabilities._context import ManualClock
        >>> clock = ManualClock()
        >>> policy = RetryPolicy({"max_attempts": 3, "jitter": "none"}).use_clock(clock)
        >>> attempts = []
        >>> def flaky():
        ...     attempts.append(clock())
        ...     if len(attempts) < 3:
        ...         raise TimeoutError("slow")
        ...     return "ok"
        >>> policy.run_sync(flaky), attempts
        ('ok', [0.0, 0.1, 0.30000000000000004])
    """

    __slots__ = ("_cache", "_fatal", "_giveups", "_max_attempts", "_max_elapsed", "_retriable",
                 "clock", "config", "guard", "metrics", "name", "random", "sleep", "sleep_sync")

    def __init__(self, config: RetryConfig | Mapping[str, Any] | None = None, *,
                 metrics: Any = None, clock: Callable[[], float] = _context.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] | None = None,
                 sleep_sync: Callable[[float], Any] | None = None,
                 random: Callable[[], float] = _random.random, name: str = "retry") -> None:
        cfg: RetryConfig = coerce_config(RetryConfig, config, "retry")
        self.config = cfg
        self.metrics = metrics
        self.clock = clock
        self.sleep: Callable[[float], Awaitable[Any]] = sleep or asyncio.sleep
        self.sleep_sync: Callable[[float], Any] = sleep_sync or time.sleep
        self.random = random
        self.name = name
        self.guard = cfg.guard_process
        self._max_attempts = cfg.max_attempts
        self._max_elapsed = cfg.max_elapsed
        self._retriable = frozenset(cfg.retriable_error_types)
        self._fatal = frozenset(cfg.fatal_error_types)
        self._cache: dict[type, bool] = {}
        self._giveups: deque[float] = deque(maxlen=1000)

    def __repr__(self) -> str:
        c = self.config
        return (f"<RetryPolicy {self.name!r} max_attempts={c.max_attempts} "
                f"delay={c.initial_delay}*{c.backoff_factor}^n<= {c.max_delay} jitter={c.jitter}>")

    def use_clock(self, clock: _context.ManualClock) -> RetryPolicy:
        """Use a :class:`ManualClock` for time and sleeping (tests); returns ``self``."""
        self.clock = clock
        self.sleep = clock.sleep
        self.sleep_sync = clock.sleep_sync
        return self

    # -- decisions ---------------------------------------------------------------------------

    def is_retriable(self, exc: BaseException) -> bool:
        """Whether ``exc`` may be retried (see the module docstring for the rule).

        Example:
            >>> policy = RetryPolicy()
            >>> policy.is_retriable(ConnectionResetError()), policy.is_retriable(KeyError())
            (True, False)
        """
        if not isinstance(exc, Exception):
            return False  # cancellation, KeyboardInterrupt, SystemExit, GeneratorExit
        own = getattr(exc, "__dict__", {}).get("onex_retriable", _MISSING)
        if own is not _MISSING:
            return bool(own)
        kind = type(exc)
        try:
            return self._cache[kind]
        except KeyError:
            pass
        decision = False
        for klass in kind.__mro__:
            name = klass.__name__
            if name in self._fatal:
                break
            if name in self._retriable:
                decision = True
                break
            value = vars(klass).get("onex_retriable", _MISSING)
            if value is not _MISSING:
                decision = bool(value)
                break
        if len(self._cache) < 512:
            self._cache[kind] = decision
        return decision

    def delay(self, failed_attempt: int, exc: BaseException | None = None) -> float:
        """The delay before the attempt after ``failed_attempt`` (1 = the first call failed).

        Example:
            >>> policy = RetryPolicy({"initial_delay": 1, "jitter": "none", "max_delay": 5})
            >>> [policy.delay(n) for n in (1, 2, 3, 4)]
            [1.0, 2.0, 4.0, 5.0]
        """
        cfg = self.config
        if exc is not None and cfg.honor_retry_after:
            hint = _hint_seconds(getattr(exc, "retry_after", None))
            if hint is not None:
                return min(hint, cfg.max_delay)
        try:
            base = cfg.initial_delay * cfg.backoff_factor ** (failed_attempt - 1)
        except OverflowError:
            base = math.inf if cfg.initial_delay > 0 else 0.0
        cap = min(base, cfg.max_delay)
        if cfg.jitter == "full":
            return float(self.random() * cap)
        if cfg.jitter == "equal":
            return float(cap / 2 + self.random() * cap / 2)
        return float(cap)

    def _decide(self, exc: Exception, scope: RetryScope, max_attempts: int, fn: Any) -> float | None:
        """After a failed attempt: the seconds to sleep before the next one, or ``None`` to stop.

        When it stops, the exception gets a note and the outcome is counted.
        """
        attempt = scope.attempt
        if attempt == 1 and exc.__class__ is TypeError and not callable(fn):
            _not_callable(fn)  # checked here, off the happy path
        switch = _testing
        if switch is not None and switch.attempts is not None:
            max_attempts = min(max_attempts, switch.attempts)
        if not self.is_retriable(exc):
            if attempt > 1:
                self._give_up(exc, fn, attempt, "not_retriable",
                              f"{type(exc).__name__} is not retriable")
            return None
        if attempt >= max_attempts:
            self._give_up(exc, fn, attempt, "exhausted", f"max_attempts={max_attempts} reached")
            return None
        wait = self.delay(attempt, exc)
        if not self.config.sleep or (switch is not None and not switch.sleep):
            wait = 0.0
        end = current_deadline()
        if end is not None:
            now = self.clock()
            if now + wait >= end:
                self._give_up(exc, fn, attempt, "deadline",
                              f"the next attempt (after {wait:.3g} s) would start after the "
                              f"deadline ({max(0.0, end - now):.3g} s left)")
                return None
        self._count(fn, "retry")
        logger.debug("retry {}: attempt {} failed with {!r}; retrying in {:.3g} s",
                     operation_name(fn), attempt, exc, wait)
        return wait

    def _give_up(self, exc: Exception, fn: Any, attempt: int, outcome: str, why: str) -> None:
        exc.add_note(f"onex retry: gave up on {operation_name(fn)} after {attempt} "
                     f"attempt{'s' if attempt != 1 else ''}: {why}")
        if attempt > 1 or outcome == "deadline":  # a loop that retried (or could not)
            if outcome != "not_retriable":
                self._giveups.append(self.clock())
            self._count(fn, outcome)

    def _count(self, fn: Any, outcome: str) -> None:
        metrics = self.metrics
        if metrics is not None:
            metrics.increment("retry_attempts_total",
                              labels={"operation": operation_name(fn), "outcome": outcome})

    # -- running -----------------------------------------------------------------------------

    async def run(self, fn: Callable[..., Any], args: tuple[Any, ...] = (),
                  kwargs: Mapping[str, Any] | None = None,
                  max_attempts: int | None = None) -> Any:
        """Call ``fn(*args, **kwargs)`` (sync or async) with retries; the async entry point.

        Raises:
            Exception: the last attempt's own exception, with a note about the attempts.
            ValueError: ``max_attempts`` is not a positive integer.
        """
        if _retry_scope.get() is not None:  # nested in a retry loop: one attempt
            result = fn(*args, **kwargs) if kwargs else fn(*args)
            if result.__class__ is CoroutineType or _awaitable(result):
                result = await result
            return result
        n = self._max_attempts if max_attempts is None else _check_attempts(max_attempts)
        budget = self._max_elapsed
        scope = RetryScope(self, None if budget is None else self.clock() + budget)
        token = _retry_scope.set(scope)
        try:
            while True:
                try:
                    result = fn(*args, **kwargs) if kwargs else fn(*args)
                    if result.__class__ is CoroutineType or _awaitable(result):
                        result = await result
                except Exception as exc:
                    wait = self._decide(exc, scope, n, fn)
                    if wait is None:
                        raise
                else:
                    if scope.attempt > 1:
                        self._count(fn, "recovered")
                    return result
                if wait > 0:
                    await self.sleep(wait)
                scope.attempt += 1
        finally:
            _retry_scope.reset(token)

    def run_sync(self, fn: Callable[..., T], args: tuple[Any, ...] = (),
                 kwargs: Mapping[str, Any] | None = None,
                 max_attempts: int | None = None) -> T:
        """Call the plain function ``fn(*args, **kwargs)`` with retries, sleeping with ``sleep_sync``.

        Raises:
            TypeError: ``fn`` returned a coroutine (use ``await run(...)`` for async functions).
        """
        if _retry_scope.get() is not None:
            result = fn(*args, **kwargs) if kwargs else fn(*args)
            if result.__class__ is CoroutineType:
                _refuse_coroutine(fn, result)
            return result
        n = self._max_attempts if max_attempts is None else _check_attempts(max_attempts)
        budget = self._max_elapsed
        scope = RetryScope(self, None if budget is None else self.clock() + budget)
        token = _retry_scope.set(scope)
        try:
            while True:
                try:
                    result = fn(*args, **kwargs) if kwargs else fn(*args)
                    if result.__class__ is CoroutineType:
                        _refuse_coroutine(fn, result)
                except Exception as exc:
                    wait = self._decide(exc, scope, n, fn)
                    if wait is None:
                        raise
                else:
                    if scope.attempt > 1:
                        self._count(fn, "recovered")
                    return result
                if wait > 0:
                    self.sleep_sync(wait)
                scope.attempt += 1
        finally:
            _retry_scope.reset(token)

    @overload
    def wrap(self, fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        ...

    @overload
    def wrap(self, fn: Callable[P, T]) -> Callable[P, T]: ...

    def wrap(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorator: retry every call of ``fn`` with this policy (``async def`` stays async).

        Example:
            >>> policy = RetryPolicy({"sleep": False})
            >>> tries = []
            >>> @policy.wrap
            ... def fetch():
            ...     tries.append(1)
            ...     if len(tries) == 1:
            ...         raise ConnectionError("reset")
            ...     return "data"
            >>> fetch(), len(tries)
            ('data', 2)
        """
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def retried_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.run(fn, args, kwargs)

            return retried_async

        @functools.wraps(fn)
        def retried(*args: P.args, **kwargs: P.kwargs) -> Any:
            return self.run_sync(fn, args, kwargs)

        return retried

    # -- health ------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Health signal: ``degraded`` when too many loops gave up recently.

        Example:
            >>> RetryPolicy().health()["status"]
            'healthy'
        """
        cfg = self.config
        since = self.clock() - cfg.health_window
        recent = sum(1 for t in self._giveups if t >= since)
        limit = cfg.health_degraded_after
        degraded = limit is not None and recent >= limit
        report: dict[str, Any] = {
            "status": "degraded" if degraded else "healthy", "gave_up_recently": recent,
            "window_s": cfg.health_window, "degraded_after": limit}
        if degraded:
            report["reason"] = (f"{recent} retried calls gave up in the last "
                                f"{cfg.health_window:g} s")
        return report


def _not_callable(fn: Any) -> NoReturn:
    raise TypeError(
        f"with_retry() needs a function to call as its first argument (plain or async), got "
        f"{type(fn).__name__} {fn!r}; pass the function itself, not its result") from None


class _AsyncInSync(TypeError):
    """A sync retry was given an async function (a usage error: never retried)."""

    onex_retriable = False


def _refuse_coroutine(fn: Any, result: Any) -> None:
    result.close()  # no "coroutine was never awaited" warning
    raise _AsyncInSync(
        f"with_retry_sync/run_sync called {operation_name(fn)}, which returned a coroutine; "
        "use `await self.with_retry(...)` (or `await policy.run(...)`) for async functions")


_plain_types: set[type] = set()


def _awaitable(result: Any) -> bool:
    """``inspect.isawaitable`` with a cache of result types known not to be awaitable."""
    kind = result.__class__
    if kind in _plain_types:
        return False
    if inspect.isawaitable(result):
        return True
    if kind is not GeneratorType and len(_plain_types) < 1024:
        _plain_types.add(kind)
    return False


class MixinRetry:
    """Automatic retry with exponential back-off and jitter (seed 000's ``MixinRetry``).

    ``with_retry`` is awaitable for both async and plain callables (seed 000 awaits it); sync
    code uses ``with_retry_sync``. The node's ``process()`` is retried too (guard rank 50)
    unless ``guard_process`` is false.

    Example:
        >>> import asyncio
        >>> from onex_compose import NodeCompute, compose
        >>> Service = compose(NodeCompute, ["retry"])
        >>> node = Service(capability_config={"retry": {"max_attempts": 3, "sleep": False}})
        >>> failures = [ConnectionError("reset")]
        >>> async def fetch(key):
        ...     if failures:
        ...         raise failures.pop()
        ...     return key.upper()
        >>> asyncio.run(node.with_retry(fetch, "a", max_attempts=3))
        'A'
    """

    __onex_capability__ = "retry"
    __slots__ = ()

    def setup_retry(self, config: RetryConfig | Mapping[str, Any] | None = None) -> None:
        """Configure retry (seed 000 passes ``{'max_attempts': 3, 'backoff_factor': 2.0, ...}``).

        Reconfiguring keeps an injected clock, sleep and random source.
        """
        cfg = coerce_config(RetryConfig, config, "retry")
        old = getattr(self, "retry_policy", None)
        node = getattr(self, "node_id", None) or type(self).__name__
        policy = RetryPolicy(cfg, metrics=self.metrics, name=f"{node}.retry")  # type: ignore[attr-defined]
        if isinstance(old, RetryPolicy):
            policy.clock, policy.sleep = old.clock, old.sleep
            policy.sleep_sync, policy.random = old.sleep_sync, old.random
        setattr(self, "retry_policy", policy)  # noqa: B010 - the mixin declares no such slot
        self.register_health_check(  # type: ignore[attr-defined]
            _RetryHealth(self), name="retry", critical=False)

    @facility
    def retry_policy(self) -> RetryPolicy:
        """The retry policy (defaults when ``setup_retry`` never ran)."""
        return RetryPolicy(RetryConfig(), metrics=self.metrics)  # type: ignore[attr-defined]

    @overload
    def with_retry(self, fn: Callable[..., Awaitable[T]], /, *args: Any,
                   max_attempts: int | None = None, **kwargs: Any) -> Coroutine[Any, Any, T]: ...

    @overload
    def with_retry(self, fn: Callable[..., T], /, *args: Any,
                   max_attempts: int | None = None, **kwargs: Any) -> Coroutine[Any, Any, T]: ...

    def with_retry(self, fn: Callable[..., Any], /, *args: Any, max_attempts: int | None = None,
                   **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """Call ``fn(*args, **kwargs)`` with retries; always ``await`` the result.

        Args:
            fn: an ``async def`` function or a plain callable (a plain one runs on the caller's
                thread; a plain callable returning an awaitable, such as a lambda, is awaited).
            *args: positional arguments for ``fn``.
            max_attempts: attempts for this call (default: the configured ``max_attempts``).
            **kwargs: keyword arguments for ``fn``.

        Returns:
            ``fn``'s result.

        Raises:
            Exception: the last attempt's exception, unchanged apart from a note.
        """
        return self.retry_policy.run(fn, args, kwargs, max_attempts)

    def with_retry_sync(self, fn: Callable[..., T], /, *args: Any,
                        max_attempts: int | None = None, **kwargs: Any) -> T:
        """Blocking ``with_retry`` for plain functions called from sync code (``time.sleep``)."""
        return self.retry_policy.run_sync(fn, args, kwargs, max_attempts)

    def _guard_retry(self, call: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """Wrap ``process()`` with the configured policy (guard rank 50)."""

        @functools.wraps(call)
        async def retried(*args: Any, **kwargs: Any) -> T:
            policy: RetryPolicy = self.retry_policy
            if not policy.guard:
                return await call(*args, **kwargs)
            return cast(T, await policy.run(call, args, kwargs))

        return retried


class _RetryHealth:
    """The health check retry registers: reads the node's current policy at check time."""

    __slots__ = ("node",)

    def __init__(self, node: Any) -> None:
        self.node = node

    def __call__(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.node.retry_policy.health())
