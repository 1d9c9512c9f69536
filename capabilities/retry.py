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
  rate limiter, per-attempt timeout and bulkhead, as resilience4j orders them);
  ``_guard_sync_retry`` does the same for a plain ``def process`` with :meth:`RetryPolicy.run_sync`.
  Whether ``process()`` is retried depends on the node type unless ``guard_process`` is set:
  on for COMPUTE and REDUCER, off for EFFECT and ORCHESTRATOR, whose ``process()`` may have
  side effects (a payment that timed out after charging must not be charged again);
  resilience4j and Polly likewise retry only what you wrap. ``explain()`` says which and why.

Semantics (``reference/capabilities.md`` A.1 and Part C):

* Bounded by default: 3 attempts (the first call included), full-jitter exponential back-off
  ``U(0, min(max_delay, initial_delay * backoff_factor ** (n - 1)))`` (AWS "full jitter"),
  ``equal`` or ``none`` on request.
* Only listed errors are retried. An exception's class and its bases are walked most specific
  first; the first class that is named in ``fatal_error_types`` (not retried), in
  ``retriable_error_types`` (retried), or that defines ``onex_retriable`` decides. A bare name
  (``"TimeoutError"``) matches any class of that name; a dotted path
  (``"httpx.TransportError"``) is imported when the policy is built and matches that class
  exactly (a ``ConfigurationError`` says when it cannot be imported or is no exception class),
  like stamina's ``on=`` and tenacity's ``retry_if_exception_type``. An
  ``onex_retriable`` attribute set on the instance decides before all of that. Seed 002's lists
  are the defaults, so ``TimeoutError`` (and our ``OperationTimeoutError``) and
  ``ConnectionError`` are retried, an open circuit or a full bulkhead (``onex_retriable =
  False``) is not, unless its class name is listed in ``retriable_error_types``.
* ``retry_if(exc) -> bool`` (config or per call) decides alone instead of the lists (tenacity's
  ``retry=``, stamina's ``on=`` callable); ``retry_if_result(result) -> bool`` retries a
  returned value (the last one is returned when attempts run out, as Polly does);
  ``before_sleep`` and ``after_attempt`` receive a :class:`RetryAttempt`. Unset, they cost
  nothing: the plain loop runs.
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
  inside a retried ``process()``, makes a single attempt: attempts never multiply. The mark
  belongs to the task (or thread) running the loop: a task started inside it
  (``create_task``, a ``TaskGroup``) or a thread (``to_thread``) copies the context but runs
  its own full loop, during and after the outer one.
* Metrics: ``retry_attempts_total{operation, outcome}`` counts every retry (``outcome="retry"``)
  and how loops that retried ended (``recovered``, ``exhausted``, ``deadline``,
  ``not_retriable``). A first-attempt success is not a retry and costs nothing.
* Health: when ``health_degraded_after`` loops gave up within ``health_window`` seconds, the
  node's health report marks ``retry`` as degraded.
* Tracing: when the node composes ``tracing`` with ``retry`` in its ``instrument`` list,
  every retry adds the event ``retry.attempt`` (``attempt``, ``delay_s``, ``exception.type``)
  to the current span (the ``process()`` span around a retried ``process()``; Polly's
  per-attempt telemetry), and a loop that retried sets ``retry.outcome`` (``recovered``,
  ``exhausted``, ``deadline``, ``not_retriable``) on it. A first-attempt success reports
  nothing; without tracing the policy's ``tracer`` is ``None`` and is read only after a
  failed attempt.
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
import importlib
import inspect
import math
import random as _random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from threading import get_ident
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

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities import _context
from onex_compose.capabilities._context import RetryScope, current_deadline
from onex_compose.capabilities._log import logger
from onex_compose.capabilities._traced import tracer_for
from onex_compose.exceptions import ConfigurationError

__all__ = [
    "DEFAULT_FATAL",
    "DEFAULT_RETRIABLE",
    "MixinRetry",
    "RetryAttempt",
    "RetryConfig",
    "RetryHooks",
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
_new_scope = object.__new__
_MISSING = object()


class RetryAttempt:
    """One attempt's outcome, as ``before_sleep`` and ``after_attempt`` receive it.

    Attributes:
        operation: the retried callable's name (as in the ``operation`` metric label).
        attempt: the attempt that just ended, from 1 (the first call).
        exception: the exception the attempt raised, or ``None`` when it returned.
        result: the value the attempt returned (``None`` when it raised).
        outcome: ``"success"`` (returned and accepted), ``"retry"`` (another attempt follows),
            or why the loop stops: ``"exhausted"`` (max_attempts reached), ``"deadline"`` (the
            next attempt would start after the deadline) or ``"not_retriable"``. A result that
            ``retry_if_result`` rejects has ``exception is None`` and an outcome other than
            ``"success"``.
        next_delay: seconds the loop sleeps before the next attempt (``0.0`` when sleeping is
            off), or ``None`` when no attempt follows.

    Example:
        >>> seen = []
        >>> policy = RetryPolicy({"sleep": False, "after_attempt": seen.append})
        >>> policy.run_sync(lambda: 42)
        42
        >>> seen
        [<RetryAttempt <lambda> #1 success result=42>]
    """

    __slots__ = ("attempt", "exception", "next_delay", "operation", "outcome", "result")

    def __init__(self, operation: str, attempt: int, exception: Exception | None, result: Any,
                 outcome: str, next_delay: float | None) -> None:
        self.operation = operation
        self.attempt = attempt
        self.exception = exception
        self.result = result
        self.outcome = outcome
        self.next_delay = next_delay

    def __repr__(self) -> str:
        what = (f"raised {type(self.exception).__name__}" if self.exception is not None
                else f"result={self.result!r}")
        after = "" if self.next_delay is None else f" next_delay={self.next_delay:.3g}"
        return f"<RetryAttempt {self.operation} #{self.attempt} {self.outcome} {what}{after}>"


class RetryHooks:
    """Per-call predicates and callbacks (``with_retry(..., retry_if=...)``, ``run(hooks=)``).

    A field left ``None`` falls back to the policy's own (from its configuration).

    Args:
        retry_if: ``(exc) -> bool``; when given it alone decides whether an exception raised by
            an attempt is retried (tenacity's ``retry=``, stamina's ``on=`` callable): the type
            lists and ``onex_retriable`` are not consulted, so combine with
            ``policy.is_retriable(exc)`` to extend them. Cancellation is never retried.
        retry_if_result: ``(result) -> bool``; true makes a returned value a failed attempt,
            retried with back-off. When the attempts or the deadline run out, the last result
            is returned (as Polly does; tenacity raises ``RetryError`` instead).
        before_sleep: ``(RetryAttempt) -> None``, called when another attempt follows, before
            the back-off sleep (``attempt.next_delay`` is the sleep).
        after_attempt: ``(RetryAttempt) -> None``, called after every attempt, the successful
            one and the last one included.

    In ``await run(...)`` / ``with_retry`` a callback or predicate may be ``async def``; in
    :meth:`RetryPolicy.run_sync` they must be plain functions. An exception raised by one of
    them propagates (with the attempt's error as its ``__context__``).
    """

    __slots__ = ("after_attempt", "before_sleep", "retry_if", "retry_if_result")

    def __init__(self, *, retry_if: Callable[[Exception], Any] | None = None,
                 retry_if_result: Callable[[Any], Any] | None = None,
                 before_sleep: Callable[[RetryAttempt], Any] | None = None,
                 after_attempt: Callable[[RetryAttempt], Any] | None = None) -> None:
        for name, value in (("retry_if", retry_if), ("retry_if_result", retry_if_result),
                            ("before_sleep", before_sleep), ("after_attempt", after_attempt)):
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be a callable or None, got a "
                                f"{type(value).__name__}")
        self.retry_if = retry_if
        self.retry_if_result = retry_if_result
        self.before_sleep = before_sleep
        self.after_attempt = after_attempt

    def over(self, base: RetryHooks | None) -> RetryHooks:
        """These hooks, each unset one taken from ``base``."""
        if base is None:
            return self
        return RetryHooks(
            retry_if=self.retry_if if self.retry_if is not None else base.retry_if,
            retry_if_result=(self.retry_if_result if self.retry_if_result is not None
                             else base.retry_if_result),
            before_sleep=self.before_sleep if self.before_sleep is not None else base.before_sleep,
            after_attempt=(self.after_attempt if self.after_attempt is not None
                           else base.after_attempt))

    def __repr__(self) -> str:
        set_ = [n for n in self.__slots__ if getattr(self, n) is not None]
        return f"<RetryHooks {', '.join(set_) or 'none'}>"


def _class_path(kind: type) -> str:
    """A builtin's bare name; another class's ``module.qualname`` when importable, else its name."""
    if kind.__module__ == "builtins" or "<" in kind.__qualname__:
        return kind.__name__
    return f"{kind.__module__}.{kind.__qualname__}"


def _resolve_exception(path: str, field: str) -> type[BaseException]:
    """Import the exception class a dotted ``path`` names (``"httpx.TransportError"``).

    Raises:
        ConfigurationError: the module cannot be imported, has no such attribute, or the
            attribute is not an exception class.
    """
    parts = path.split(".")
    module = None
    error: BaseException | None = None
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
        try:
            module = importlib.import_module(".".join(parts[:cut]))
        except ImportError as exc:
            error = error or exc
            continue
        obj: Any = module
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise ConfigurationError(
                f"retry: {field} names {path!r}, but module {'.'.join(parts[:cut])!r} has no "
                f"attribute {'.'.join(parts[cut:])!r}; check the spelling or give the class's "
                "real module", capability="retry") from None
        if not (isinstance(obj, type) and issubclass(obj, BaseException)):
            raise ConfigurationError(
                f"retry: {field} names {path!r}, which is a {type(obj).__name__}, not an "
                "exception class", capability="retry")
        return obj
    raise ConfigurationError(
        f"retry: {field} names {path!r}, but module {'.'.join(parts[:-1])!r} cannot be imported "
        f"({error}); install the package that provides it or fix the path",
        capability="retry") from None


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
    guard_process: bool | None = Field(
        default=None, description="retry the node's process() calls; null: by node type (on for "
                                  "COMPUTE and REDUCER, off for EFFECT and ORCHESTRATOR, whose "
                                  "process() may have side effects)")
    health_window: float = Field(default=60.0, gt=0.0,
                                 description="seconds of give-ups the health signal looks at")
    health_degraded_after: int | None = Field(
        default=5, ge=1, description="give-ups within health_window that mark retry degraded "
                                     "(null: never)")
    retry_if: Callable[[Exception], Any] | None = Field(
        default=None, description="Python only: predicate(exc) -> bool deciding alone which "
                                  "errors are retried (the type lists are then not consulted)")
    retry_if_result: Callable[[Any], Any] | None = Field(
        default=None, description="Python only: predicate(result) -> bool; true retries the call "
                                  "as a failed attempt (the last result is returned when the "
                                  "attempts or the deadline run out)")
    before_sleep: Callable[[RetryAttempt], Any] | None = Field(
        default=None, description="Python only: called with a RetryAttempt before each back-off "
                                  "sleep")
    after_attempt: Callable[[RetryAttempt], Any] | None = Field(
        default=None, description="Python only: called with a RetryAttempt after every attempt")

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
                    item = _class_path(item)
                if not isinstance(item, str) or not all(
                        part.isidentifier() for part in item.split(".")):
                    raise ValueError(
                        f"{item!r} is not an exception class name: give a bare class name "
                        "(\"TimeoutError\", matched by name) or a dotted import path "
                        "(\"httpx.TransportError\", matched as that class and its subclasses)")
                out.append(item)
            return tuple(out)
        return value

    @field_validator("retry_if", "retry_if_result", "before_sleep", "after_attempt",
                     mode="before")
    @classmethod
    def _callables(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not callable(value):
            raise ValueError(
                f"{info.field_name} must be a Python callable, got a {type(value).__name__}; "
                "pass a function in capability_config or to with_retry(...): a contract (YAML) "
                "cannot hold one, so leave it null there")
        return value


@runtime_checkable
class RetryProtocol(Protocol):
    """What the retry capability adds to a node."""

    def with_retry(self, fn: Callable[..., Any], /, *args: Any, max_attempts: int | None = None,
                   retry_if: Callable[[Exception], Any] | None = None,
                   retry_if_result: Callable[[Any], Any] | None = None,
                   before_sleep: Callable[[RetryAttempt], Any] | None = None,
                   after_attempt: Callable[[RetryAttempt], Any] | None = None,
                   **kwargs: Any) -> Awaitable[Any]: ...

    def with_retry_sync(self, fn: Callable[..., T], /, *args: Any,
                        max_attempts: int | None = None,
                        retry_if: Callable[[Exception], Any] | None = None,
                        retry_if_result: Callable[[Any], Any] | None = None,
                        before_sleep: Callable[[RetryAttempt], Any] | None = None,
                        after_attempt: Callable[[RetryAttempt], Any] | None = None,
                        **kwargs: Any) -> T: ...


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


_GUARDED_BY_DEFAULT = frozenset({"COMPUTE", "REDUCER"})


def _guard_decision(explicit: bool | None, node_type: object) -> tuple[bool, str]:
    """Whether ``process()`` is retried, and why (shown by ``explain()``).

    Example:
        >>> _guard_decision(None, "EFFECT")[0], _guard_decision(None, "COMPUTE")[0]
        (False, True)
    """
    if explicit is not None:
        return explicit, f"guard_process: {'true' if explicit else 'false'} in the configuration"
    kind = None if node_type is None else str(node_type)
    if kind in _GUARDED_BY_DEFAULT:
        return True, (f"{kind} node: process() is retried by default (set guard_process: false "
                      "to turn it off)")
    if kind is None:
        return False, ("node type unknown: process() is not retried unless guard_process: true "
                       "(it may have side effects)")
    return False, (f"{kind} node: process() may have side effects, so it is not retried "
                   "unless guard_process: true; wrap idempotent calls in with_retry instead")


def _split_names(names: tuple[str, ...], field: str) -> tuple[frozenset[str], frozenset[type]]:
    """Bare class names (matched by name) and dotted paths (imported now, matched as classes)."""
    bare = frozenset(n for n in names if "." not in n)
    kinds = frozenset(_resolve_exception(n, field) for n in names if "." in n)
    return bare, kinds


def _any_hook(hooks: RetryHooks) -> bool:
    return not (hooks.retry_if is None and hooks.retry_if_result is None
                and hooks.before_sleep is None and hooks.after_attempt is None)


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
        node_type: the node's type (``"COMPUTE"``...), which decides whether ``process()`` is
            retried when ``guard_process`` is unset (see :attr:`guard_reason`).

    Raises:
        ConfigurationError: a bad field, or a dotted exception path that cannot be imported.

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

    __slots__ = ("_cache", "_fatal", "_fatal_types", "_giveups", "_hooks", "_max_attempts",
                 "_max_elapsed", "_retriable", "_retriable_types", "clock", "config", "guard",
                 "guard_reason", "metrics", "name", "random", "sleep", "sleep_sync", "tracer")

    def __init__(self, config: RetryConfig | Mapping[str, Any] | None = None, *,
                 metrics: Any = None, clock: Callable[[], float] = _context.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] | None = None,
                 sleep_sync: Callable[[float], Any] | None = None,
                 random: Callable[[], float] = _random.random, name: str = "retry",
                 node_type: object = None) -> None:
        cfg: RetryConfig = coerce_config(RetryConfig, config, "retry")
        self.config = cfg
        self.metrics = metrics
        self.clock = clock
        self.sleep: Callable[[float], Awaitable[Any]] = sleep or asyncio.sleep
        self.sleep_sync: Callable[[float], Any] = sleep_sync or time.sleep
        self.random = random
        self.name = name
        self.guard, self.guard_reason = _guard_decision(cfg.guard_process, node_type)
        self._max_attempts = cfg.max_attempts
        self._max_elapsed = cfg.max_elapsed
        self._retriable, self._retriable_types = _split_names(
            cfg.retriable_error_types, "retriable_error_types")
        self._fatal, self._fatal_types = _split_names(cfg.fatal_error_types, "fatal_error_types")
        hooks = RetryHooks(retry_if=cfg.retry_if, retry_if_result=cfg.retry_if_result,
                           before_sleep=cfg.before_sleep, after_attempt=cfg.after_attempt)
        self._hooks = hooks if _any_hook(hooks) else None
        self._cache: dict[type, bool] = {}
        self._giveups: deque[float] = deque(maxlen=1000)
        self.tracer: Any = None  # the node's tracer (setup_retry): retries become span events

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
        fatal, fatal_types = self._fatal, self._fatal_types
        retriable, retriable_types = self._retriable, self._retriable_types
        for klass in kind.__mro__:
            name = klass.__name__
            if name in fatal or klass in fatal_types:
                break
            if name in retriable or klass in retriable_types:
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

    def _decide(self, exc: Exception | None, scope: RetryScope, max_attempts: int, fn: Any,
                verdict: bool | None = None) -> float | str:
        """After a failed attempt: the seconds to sleep before the next one, or why it stops.

        ``exc`` is ``None`` for a result that ``retry_if_result`` rejected; ``verdict`` is
        ``retry_if``'s answer for ``exc`` (``None``: classify by type). When the loop stops,
        the exception gets a note and the outcome is counted; the outcome (``"exhausted"``,
        ``"deadline"``, ``"not_retriable"``) is returned.
        """
        attempt = scope.attempt
        if exc is not None:
            if attempt == 1 and exc.__class__ is TypeError and not callable(fn):
                _not_callable(fn)  # checked here, off the happy path
            retriable = self.is_retriable(exc) if verdict is None else verdict
            if not retriable:
                if attempt > 1:
                    self._give_up(exc, fn, attempt, "not_retriable",
                                  f"{type(exc).__name__} is not retriable")
                return "not_retriable"
        switch = _testing
        if switch is not None and switch.attempts is not None:
            max_attempts = min(max_attempts, switch.attempts)
        if attempt >= max_attempts:
            self._give_up(exc, fn, attempt, "exhausted", f"max_attempts={max_attempts} reached")
            return "exhausted"
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
                return "deadline"
        self._count(fn, "retry")
        if self.tracer is not None:
            attrs: dict[str, Any] = {"attempt": attempt, "delay_s": wait,
                                     "retry.operation": operation_name(fn)}
            if exc is not None:
                attrs["exception.type"] = _class_path(type(exc))
            else:
                attrs["retry.reason"] = "result"
            self.tracer.add_event("retry.attempt", attrs)
        logger.debug("retry {}: attempt {} failed with {}; retrying in {:.3g} s",
                     operation_name(fn), attempt,
                     "a rejected result" if exc is None else repr(exc), wait)
        return wait

    def _give_up(self, exc: Exception | None, fn: Any, attempt: int, outcome: str,
                 why: str) -> None:
        if exc is not None:
            exc.add_note(f"onex retry: gave up on {operation_name(fn)} after {attempt} "
                         f"attempt{'s' if attempt != 1 else ''}: {why}")
        else:
            logger.debug("retry {}: returning the last result, rejected by retry_if_result, "
                         "after {} attempts: {}", operation_name(fn), attempt, why)
        if attempt > 1 or outcome == "deadline":  # a loop that retried (or could not)
            if outcome != "not_retriable":
                self._giveups.append(self.clock())
            self._count(fn, outcome)

    def _count(self, fn: Any, outcome: str) -> None:
        metrics = self.metrics
        if metrics is not None:
            metrics.increment("retry_attempts_total",
                              labels={"operation": operation_name(fn), "outcome": outcome})
        if outcome != "retry" and self.tracer is not None:  # a loop that retried has ended
            self.tracer.set_attribute("retry.outcome", outcome)

    # -- running -----------------------------------------------------------------------------

    async def run(self, fn: Callable[..., Any], args: tuple[Any, ...] = (),
                  kwargs: Mapping[str, Any] | None = None,
                  max_attempts: int | None = None, hooks: RetryHooks | None = None) -> Any:
        """Call ``fn(*args, **kwargs)`` (sync or async) with retries; the async entry point.

        Args:
            fn: the callable; a plain one runs on the caller's thread, an awaitable result is
                awaited.
            args: positional arguments for ``fn``.
            kwargs: keyword arguments for ``fn``.
            max_attempts: attempts for this call (default: the configured ``max_attempts``).
            hooks: per-call predicates and callbacks; unset ones fall back to the policy's.

        Raises:
            Exception: the last attempt's own exception, with a note about the attempts.
            ValueError: ``max_attempts`` is not a positive integer.
        """
        scope = _retry_scope.get()
        if scope is not None and _owns(scope):  # nested in a retry loop of this task: one attempt
            result = fn(*args, **kwargs) if kwargs else fn(*args)
            if result.__class__ is CoroutineType or _awaitable(result):
                result = await result
            return result
        n = self._max_attempts if max_attempts is None else _check_attempts(max_attempts)
        hooks = self._hooks if hooks is None else hooks.over(self._hooks)
        if hooks is not None:
            return await self._run_hooked(fn, args, kwargs, n, hooks)
        budget = self._max_elapsed
        scope = _new_scope(_Scope)  # _Scope's fields stored inline: a constructor call costs more
        scope.owner = self
        scope.attempt = 1
        scope.key = get_ident()
        scope.active = scope.running = True
        scope.deadline = None if budget is None else self.clock() + budget
        token = _retry_scope.set(scope)
        try:
            while True:
                try:
                    result = fn(*args, **kwargs) if kwargs else fn(*args)
                    if result.__class__ is CoroutineType:
                        scope.running = result
                        result = await result
                    elif _awaitable(result):
                        scope.running = None
                        result = await result
                except Exception as exc:
                    scope.running = None
                    wait = self._decide(exc, scope, n, fn)
                    if wait.__class__ is str:
                        raise
                else:
                    if scope.attempt > 1:
                        self._count(fn, "recovered")
                    return result
                if wait:
                    await self.sleep(wait)  # type: ignore[arg-type]
                scope.attempt += 1
                scope.running = True
        finally:
            scope.active = False
            _retry_scope.reset(token)

    async def _run_hooked(self, fn: Callable[..., Any], args: tuple[Any, ...],
                          kwargs: Mapping[str, Any] | None, n: int, hooks: RetryHooks) -> Any:
        """:meth:`run`'s loop with predicates and callbacks (kept apart from the fast loop)."""
        budget = self._max_elapsed
        scope = _Scope(self, None if budget is None else self.clock() + budget)
        token = _retry_scope.set(scope)
        retry_if, if_result = hooks.retry_if, hooks.retry_if_result
        try:
            while True:
                exc: Exception | None = None
                result: Any = None
                try:
                    scope.running = True
                    result = fn(*args, **kwargs) if kwargs else fn(*args)
                    scope.running = None
                    if result.__class__ is CoroutineType:
                        scope.running = result
                        result = await result
                    elif _awaitable(result):
                        result = await result
                except Exception as error:
                    scope.running = None
                    exc = error
                    verdict = None
                    if retry_if is not None and error.__class__ is not _AsyncInSync:
                        verdict = bool(await _maybe_await(retry_if(error)))
                    wait = self._decide(exc, scope, n, fn, verdict)
                else:
                    rejected = if_result is not None and await _maybe_await(if_result(result))
                    if not rejected:
                        if scope.attempt > 1:
                            self._count(fn, "recovered")
                        await _notify(hooks.after_attempt, fn, scope, None, result, "success",
                                      None)
                        return result
                    wait = self._decide(None, scope, n, fn)
                if isinstance(wait, str):
                    await _notify(hooks.after_attempt, fn, scope, exc, result, wait, None)
                    if exc is not None:
                        raise exc
                    return result
                await _notify(hooks.after_attempt, fn, scope, exc, result, "retry", wait)
                await _notify(hooks.before_sleep, fn, scope, exc, result, "retry", wait)
                if wait:
                    await self.sleep(wait)
                scope.attempt += 1
        finally:
            scope.active = False
            _retry_scope.reset(token)

    def run_sync(self, fn: Callable[..., T], args: tuple[Any, ...] = (),
                 kwargs: Mapping[str, Any] | None = None,
                 max_attempts: int | None = None, hooks: RetryHooks | None = None) -> T:
        """Call the plain function ``fn(*args, **kwargs)`` with retries, sleeping with ``sleep_sync``.

        Takes the same arguments as :meth:`run`; predicates and callbacks must be plain
        functions here.

        Raises:
            TypeError: ``fn`` (or a predicate or callback) returned a coroutine (use
                ``await run(...)`` for async functions).
        """
        scope = _retry_scope.get()
        if scope is not None and _owns(scope):
            result = fn(*args, **kwargs) if kwargs else fn(*args)
            if result.__class__ is CoroutineType:
                _refuse_coroutine(fn, result)
            return result
        n = self._max_attempts if max_attempts is None else _check_attempts(max_attempts)
        hooks = self._hooks if hooks is None else hooks.over(self._hooks)
        if hooks is not None:
            return cast(T, self._run_sync_hooked(fn, args, kwargs, n, hooks))
        budget = self._max_elapsed
        scope = _new_scope(_Scope)  # as in run(): the fields inline
        scope.owner = self
        scope.attempt = 1
        scope.key = get_ident()
        scope.active = scope.running = True
        scope.deadline = None if budget is None else self.clock() + budget
        token = _retry_scope.set(scope)
        try:
            while True:
                try:
                    result = fn(*args, **kwargs) if kwargs else fn(*args)
                    if result.__class__ is CoroutineType:
                        _refuse_coroutine(fn, result)
                except Exception as exc:
                    wait = self._decide(exc, scope, n, fn)
                    if wait.__class__ is str:
                        raise
                else:
                    if scope.attempt > 1:
                        self._count(fn, "recovered")
                    return result
                if wait:
                    self.sleep_sync(wait)  # type: ignore[arg-type]
                scope.attempt += 1
        finally:
            scope.active = False
            _retry_scope.reset(token)

    def _run_sync_hooked(self, fn: Callable[..., Any], args: tuple[Any, ...],
                         kwargs: Mapping[str, Any] | None, n: int, hooks: RetryHooks) -> Any:
        """:meth:`run_sync`'s loop with predicates and callbacks."""
        budget = self._max_elapsed
        scope = _Scope(self, None if budget is None else self.clock() + budget)
        token = _retry_scope.set(scope)
        retry_if, if_result = hooks.retry_if, hooks.retry_if_result
        try:
            while True:
                exc: Exception | None = None
                result: Any = None
                try:
                    result = fn(*args, **kwargs) if kwargs else fn(*args)
                    if result.__class__ is CoroutineType:
                        _refuse_coroutine(fn, result)
                except Exception as error:
                    exc = error
                    verdict = None
                    if retry_if is not None and error.__class__ is not _AsyncInSync:
                        verdict = _plain(retry_if(error), retry_if, "retry_if")
                    wait = self._decide(exc, scope, n, fn, verdict)
                else:
                    rejected = if_result is not None and _plain(
                        if_result(result), if_result, "retry_if_result")
                    if not rejected:
                        if scope.attempt > 1:
                            self._count(fn, "recovered")
                        _notify_sync(hooks.after_attempt, fn, scope, None, result, "success",
                                     None)
                        return result
                    wait = self._decide(None, scope, n, fn)
                if isinstance(wait, str):
                    _notify_sync(hooks.after_attempt, fn, scope, exc, result, wait, None)
                    if exc is not None:
                        raise exc
                    return result
                _notify_sync(hooks.after_attempt, fn, scope, exc, result, "retry", wait)
                _notify_sync(hooks.before_sleep, fn, scope, exc, result, "retry", wait)
                if wait:
                    self.sleep_sync(wait)
                scope.attempt += 1
        finally:
            scope.active = False
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


class _Scope(RetryScope):
    """A retry loop's scope, with what tells the loop's own code from other tasks' code.

    ``key`` is the loop's thread. ``running`` says what of the loop's own code may run now:
    ``True`` while ``fn`` is being called (a sync loop keeps it), the coroutine being awaited
    (the loop's code runs exactly when ``coro.cr_running``), or ``None`` while the loop waits
    on anything else. While that coroutine is suspended, the code running in the thread belongs
    to another task (one created inside the loop with ``create_task`` or a ``TaskGroup`` copies
    the context, scope included), and a thread (``to_thread``) has another ``key``. Reading
    these is cheaper than ``asyncio.current_task()``, which makes a ``getpid`` system call per
    call on Python 3.11.
    """

    __slots__ = ("running",)

    def __init__(self, owner: RetryPolicy, deadline: float | None) -> None:
        self.owner = owner
        self.attempt = 1
        self.deadline = deadline
        self.key = get_ident()
        self.active = True
        self.running: Any = True


def _owns(scope: Any) -> bool:
    """Whether the current code runs inside the retry loop of ``scope`` (a nested call)."""
    if not scope.active or scope.key != get_ident():
        return False
    running = getattr(scope, "running", True)  # a plain RetryScope given this thread's id
    return running is True or (running is not None and bool(running.cr_running))


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


async def _maybe_await(value: Any) -> Any:
    if value.__class__ is CoroutineType or _awaitable(value):
        return await value
    return value


def _plain(value: Any, fn: Any, what: str) -> bool:
    """A sync predicate's answer; a coroutine (an ``async def`` predicate) is a clear error."""
    if value.__class__ is CoroutineType:
        value.close()
        raise TypeError(f"{what} {operation_name(fn)} is async, but run_sync/with_retry_sync "
                        "cannot await it; give a plain function, or use await with_retry(...)")
    return bool(value)


def _outcome(fn: Any, scope: RetryScope, exc: Exception | None, result: Any, outcome: str,
             wait: float | None) -> RetryAttempt:
    return RetryAttempt(operation_name(fn), scope.attempt, exc,
                        None if exc is not None else result, outcome, wait)


async def _notify(callback: Callable[[RetryAttempt], Any] | None, fn: Any, scope: RetryScope,
                  exc: Exception | None, result: Any, outcome: str, wait: float | None) -> None:
    if callback is not None:
        await _maybe_await(callback(_outcome(fn, scope, exc, result, outcome, wait)))


def _notify_sync(callback: Callable[[RetryAttempt], Any] | None, fn: Any, scope: RetryScope,
                 exc: Exception | None, result: Any, outcome: str, wait: float | None) -> None:
    if callback is not None:
        value = callback(_outcome(fn, scope, exc, result, outcome, wait))
        if value.__class__ is CoroutineType:
            value.close()
            raise TypeError(f"callback {operation_name(callback)} is async, but run_sync/"
                            "with_retry_sync cannot await it; give a plain function")


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
        policy = RetryPolicy(cfg, metrics=self.metrics, name=f"{node}.retry",  # type: ignore[attr-defined]
                             node_type=_node_type(self))
        if isinstance(old, RetryPolicy):
            policy.clock, policy.sleep = old.clock, old.sleep
            policy.sleep_sync, policy.random = old.sleep_sync, old.random
        if has_capability(self, "tracing"):
            policy.tracer = tracer_for(self, "retry")
        setattr(self, "retry_policy", policy)  # noqa: B010 - the mixin declares no such slot
        self.register_health_check(  # type: ignore[attr-defined]
            _RetryHealth(self), name="retry", critical=False)

    @facility
    def retry_policy(self) -> RetryPolicy:
        """The retry policy (defaults when ``setup_retry`` never ran)."""
        return RetryPolicy(RetryConfig(), metrics=self.metrics,  # type: ignore[attr-defined]
                           node_type=_node_type(self))

    @overload
    def with_retry(self, fn: Callable[..., Awaitable[T]], /, *args: Any,
                   max_attempts: int | None = None,
                   retry_if: Callable[[Exception], Any] | None = None,
                   retry_if_result: Callable[[Any], Any] | None = None,
                   before_sleep: Callable[[RetryAttempt], Any] | None = None,
                   after_attempt: Callable[[RetryAttempt], Any] | None = None,
                   **kwargs: Any) -> Coroutine[Any, Any, T]: ...

    @overload
    def with_retry(self, fn: Callable[..., T], /, *args: Any, max_attempts: int | None = None,
                   retry_if: Callable[[Exception], Any] | None = None,
                   retry_if_result: Callable[[Any], Any] | None = None,
                   before_sleep: Callable[[RetryAttempt], Any] | None = None,
                   after_attempt: Callable[[RetryAttempt], Any] | None = None,
                   **kwargs: Any) -> Coroutine[Any, Any, T]: ...

    def with_retry(self, fn: Callable[..., Any], /, *args: Any, max_attempts: int | None = None,
                   retry_if: Callable[[Exception], Any] | None = None,
                   retry_if_result: Callable[[Any], Any] | None = None,
                   before_sleep: Callable[[RetryAttempt], Any] | None = None,
                   after_attempt: Callable[[RetryAttempt], Any] | None = None,
                   **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """Call ``fn(*args, **kwargs)`` with retries; always ``await`` the result.

        Args:
            fn: an ``async def`` function or a plain callable (a plain one runs on the caller's
                thread; a plain callable returning an awaitable, such as a lambda, is awaited).
            *args: positional arguments for ``fn``.
            max_attempts: attempts for this call (default: the configured ``max_attempts``).
            retry_if: ``(exc) -> bool`` deciding alone which errors are retried (see
                :class:`RetryHooks`); default: the configured one, else the type lists.
            retry_if_result: ``(result) -> bool``; true retries a returned value.
            before_sleep: called with a :class:`RetryAttempt` before each back-off sleep.
            after_attempt: called with a :class:`RetryAttempt` after every attempt.
            **kwargs: keyword arguments for ``fn``.

        Returns:
            ``fn``'s result (the last one when ``retry_if_result`` kept rejecting it).

        Raises:
            Exception: the last attempt's exception, unchanged apart from a note.
        """
        if (retry_if is None and retry_if_result is None and before_sleep is None
                and after_attempt is None):
            return self.retry_policy.run(fn, args, kwargs, max_attempts)
        hooks = RetryHooks(retry_if=retry_if, retry_if_result=retry_if_result,
                           before_sleep=before_sleep, after_attempt=after_attempt)
        return self.retry_policy.run(fn, args, kwargs, max_attempts, hooks)

    def with_retry_sync(self, fn: Callable[..., T], /, *args: Any,
                        max_attempts: int | None = None,
                        retry_if: Callable[[Exception], Any] | None = None,
                        retry_if_result: Callable[[Any], Any] | None = None,
                        before_sleep: Callable[[RetryAttempt], Any] | None = None,
                        after_attempt: Callable[[RetryAttempt], Any] | None = None,
                        **kwargs: Any) -> T:
        """Blocking ``with_retry`` for plain functions called from sync code (``time.sleep``).

        Takes the same arguments as :meth:`with_retry`; predicates and callbacks must be plain
        functions.
        """
        if (retry_if is None and retry_if_result is None and before_sleep is None
                and after_attempt is None):
            return self.retry_policy.run_sync(fn, args, kwargs, max_attempts)
        hooks = RetryHooks(retry_if=retry_if, retry_if_result=retry_if_result,
                           before_sleep=before_sleep, after_attempt=after_attempt)
        return self.retry_policy.run_sync(fn, args, kwargs, max_attempts, hooks)

    def _guard_retry(self, call: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """Wrap ``process()`` with the configured policy (guard rank 50).

        Whether it retries follows the current policy's :attr:`RetryPolicy.guard`: by node type
        unless ``guard_process`` is set.
        """

        @functools.wraps(call)
        async def retried(*args: Any, **kwargs: Any) -> T:
            policy: RetryPolicy = self.retry_policy
            if not policy.guard:
                return await call(*args, **kwargs)
            return cast(T, await policy.run(call, args, kwargs))

        return retried

    def _guard_sync_retry(self, call: Callable[..., T]) -> Callable[..., T]:
        """Wrap a plain ``def process()`` with the policy's blocking loop (``run_sync``).

        Same switches as :meth:`_guard_retry`; the back-off sleeps with ``time.sleep``.
        """

        @functools.wraps(call)
        def retried(*args: Any, **kwargs: Any) -> T:
            policy: RetryPolicy = self.retry_policy
            if not policy.guard:
                return call(*args, **kwargs)
            return policy.run_sync(call, args, kwargs)

        return retried

    @classmethod
    def _explain_retry(cls, node: Any = None) -> str:
        """One line for ``explain()``: whether ``process()`` is retried, and why.

        For a class (``node`` is ``None``) it tells the default for its node type; for an
        instance, what its current policy does.
        """
        if node is None:
            guard, why = _guard_decision(None, getattr(cls, "node_type", None))
        else:
            policy: RetryPolicy = node.retry_policy
            guard, why = policy.guard, policy.guard_reason
        return f"process() {'retried' if guard else 'not retried'}: {why}"


def _node_type(node: Any) -> object:
    return getattr(type(node), "node_type", None)


class _RetryHealth:
    """The health check retry registers: reads the node's current policy at check time."""

    __slots__ = ("node",)

    def __init__(self, node: Any) -> None:
        self.node = node

    def __call__(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.node.retry_policy.health())
