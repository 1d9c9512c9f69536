"""error_handling: seed 002's core mixin: categorise errors, break circuits, decide retries, count.

Seed 002 walks through this mixin step by step; every action and output it declares exists:

* ``handle_error(error_info, error_context, handling_strategy)`` ->
  :class:`ModelErrorHandlingResult` (``error_handling_result``; its ``recovery_suggestions``
  are the ``recovery_actions`` output); it logs the error (scrubbed) at ``error_log_level`` and
  records ``errors_total`` and ``error_handling_duration_ms``;
* ``circuit_breaker_check(operation_key)`` -> :class:`ModelCircuitStatusResult`
  (``circuit_status`` open/closed/half_open, ``failure_rate``, plus the seed's
  ``circuit_status_result`` fields); reading it never changes the breaker;
* ``should_retry(error_type, attempt_number, operation_context)`` ->
  :class:`ModelRetryDecisionResult` (``retry_decision``, ``retry_delay_ms``);
* ``record_error_metric(error_category, operation_name, error_metadata)`` -> ``bool``
  (``metric_recorded``).

The node-side helpers seed 002's integration test calls are mixin methods:
``await self._check_circuit_breaker(operation_key=...)`` (an object with ``.status``),
``self._should_retry(error, config)`` (a ``bool``) and ``await self._retry_operation(config,
operation, *args)``. The seed calls ``_retry_operation(error_config)`` without saying *what* to
retry; a mixin cannot know that, so the operation is an argument, and a node whose retry target
is fixed overrides ``_retry_operation(self, config)`` to pass it (the seed's test does:
``return await super()._retry_operation(config, self._risky_operation)``). Calling it without an
operation raises a ``TypeError`` saying exactly that.

Categories (seed 002: retriable vs fatal), decided most-specific class first, as the retry
capability decides: an ``onex_retriable`` attribute on the instance first; then for each class
of the error's MRO, a name in ``fatal_error_types`` -> ``fatal``, in ``retriable_error_types``
-> ``retriable``, a class defining ``onex_retriable`` -> ``retriable`` (True) or ``rejected``
(False: an open circuit, a rate limit, a full bulkhead: recoverable later, never retried at
once); nothing matched -> ``unknown`` (not retried: only listed errors are). Cancellation,
``KeyboardInterrupt`` and ``SystemExit`` are ``cancelled`` and never retried.

Composition (seed 002's contract says this mixin *provides* ``circuit_breaker``; the manifest
records that as ``covers``): when the ``circuit_breaker`` capability is composed too, breaker
checks and protected calls use its named breakers (``self.circuit_breaker(operation_key)``)
instead of a second set, and when ``retry`` is composed, retry decisions, delays and loops are
the retry capability's (``retry_policy.is_retriable``/``delay``, ``with_retry``): one policy per
node. Without them this module runs its own breakers (consecutive mode with
``circuit_failure_threshold``, ``circuit_timeout_ms`` and ``circuit_half_open_max_calls``, built
from ``capabilities.circuit_breaker``) and its own bounded exponential back-off
(``error_retry_attempts`` attempts in total, the first included; ``error_retry_delay_ms *
error_retry_backoff_multiplier ** (n - 1)`` capped at ``max_retry_delay_ms``; a ``retry_after``
hint on the error raises the delay, within the cap; never past the current deadline).

Logging goes through the ``logging`` capability (seed 002: ``logging_protocol`` is required):
a logger bound once at setup with ``capability="error_handling"``, so the node's scrub keys and
correlation id apply. Like every record onex_compose itself emits, these are silent until the
application calls ``logger.enable("onex_compose")`` (loguru's advice for libraries).
Scrubbing (``sensitive_data_scrubbing``) uses the project's one scrubber
(``onex_compose._redact``, shared with logging, errors and health reasons): values under
sensitive keys (password, secret, token, api_key, authorization, cookie, ...), ``key=value`` and
``key: value`` pairs with such keys, bearer/basic credentials, credentials in URLs, JWTs, card
numbers and e-mail local parts are replaced with ``***``.

Example:
    >>> handler = ErrorHandler()
    >>> result = handler.handle_error(ConnectionError("db down"), {"operation_name": "load"})
    >>> result.error_category, result.handling_action, result.recovery_possible
    ('retriable', 'retry', True)
    >>> handler.should_retry(ConnectionError(), attempt_number=1).retry_delay_ms
    1000
    >>> scrub("login failed: password=hunter2 token: abc.def")
    'login failed: password=*** token: ***'
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Literal, TypeVar, cast

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

from onex_compose import _redact, coerce_config, facility, has_capability
from onex_compose.capabilities import _context
from onex_compose.capabilities.circuit_breaker import CircuitBreakerConfig, CircuitBreakers
from onex_compose.capabilities.logging import bind_logger
from onex_compose.model.subcontracts import (
    EnumCircuitBreakerState,
    ModelErrorHandlingResult,
    ModelErrorHandlingSubcontract,
)

__all__ = [
    "ErrorCategory",
    "ErrorHandler",
    "MixinErrorHandling",
    "ModelCircuitStatusResult",
    "ModelErrorHandlingResult",
    "ModelErrorHandlingSubcontract",
    "ModelRetryDecisionResult",
    "scrub",
]

T = TypeVar("T")
ErrorCategory = Literal["retriable", "fatal", "rejected", "unknown", "cancelled"]
HandlingStrategy = Literal["retry", "fail", "ignore"]


# ------------------------------------------------------------------------------------------------
# output models (seed 002's output_models)


class ModelCircuitStatusResult(BaseModel):
    """Seed 002's ``circuit_status_result`` (plus the operation key and retry-after).

    Example:
        >>> ModelCircuitStatusResult(status="closed").status
        'closed'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["open", "closed", "half_open"] = Field(description="open/closed/half_open")
    failure_count: int = Field(default=0, ge=0)
    failure_rate: float = Field(default=0.0, ge=0, le=100, description="percent")
    last_failure_time: datetime | None = None
    operation_key: str = "default"
    retry_after: float = Field(default=0.0, ge=0, description="seconds until probes are admitted")

    @property
    def state(self) -> EnumCircuitBreakerState:
        """``status`` as seed 002's ``EnumCircuitBreakerState``."""
        return EnumCircuitBreakerState(self.status)


class ModelRetryDecisionResult(BaseModel):
    """Seed 002's ``retry_decision_result``.

    Example:
        >>> ModelRetryDecisionResult(should_retry=True, retry_delay_ms=1000, retry_attempt=1,
        ...                          max_attempts_reached=False).retry_delay_ms
        1000
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    should_retry: bool
    retry_delay_ms: int = Field(ge=0)
    retry_attempt: int = Field(ge=1, description="the attempt that just failed (1 = first call)")
    max_attempts_reached: bool
    error_category: str = "unknown"


# ------------------------------------------------------------------------------------------------
# scrubbing

def scrub(value: Any) -> Any:
    """Replace secrets in ``value`` (text, mappings, sequences; nested) with ``***``.

    The project's one scrubber (:mod:`onex_compose._redact`): logs, errors and reports apply the
    same rules.

    Example:
        >>> scrub({"user": "ann", "password": "x", "url": "redis://u:p@host/0"})
        {'user': 'ann', 'password': '***', 'url': 'redis://u:***@host/0'}
    """
    return _redact.scrub(value)


# ------------------------------------------------------------------------------------------------
# inputs: the error as an instance, a class or (should_retry, categorize) a class name

_NAMED: dict[str, type[BaseException]] = {}


def _named_error(name: str) -> type[BaseException]:
    """The exception class a name stands for: a built-in one (``"ConnectionRefusedError"``, so
    its bases count), else a stand-in ``Exception`` subclass with that name (``"mod.Qual"``
    sets the module), cached per name."""
    kind = _NAMED.get(name)
    if kind is None:
        builtin = getattr(builtins, name, None)
        if isinstance(builtin, type) and issubclass(builtin, BaseException):
            kind = builtin
        else:
            module, _, short = name.rpartition(".")
            kind = type(short, (Exception,), {"__module__": module or "builtins",
                                              "__qualname__": short})
        if len(_NAMED) < 1024:
            _NAMED[name] = kind
    return kind


def _exception_of(value: Any, action: str, *, names: bool = True) -> BaseException:
    """An exception instance for ``value``: the instance itself, an instance of an exception
    class (made without calling its ``__init__``), or (``names``) of the class a name stands
    for. Anything else is a ``TypeError`` saying what to pass."""
    if isinstance(value, BaseException):
        return value
    kind: Any = None
    if isinstance(value, type) and issubclass(value, BaseException):
        kind = value
    elif names and isinstance(value, str) and value.strip():
        kind = _named_error(value.strip())
    if kind is not None:
        try:
            return cast(BaseException, kind.__new__(kind))
        except Exception:
            raise TypeError(f"{action}: cannot make an instance of {kind.__qualname__} to "
                            "classify it; pass the exception that was raised") from None
    wanted = "an exception, an exception class or an exception class name" if names else \
        "an exception or an exception class"
    raise TypeError(f"{action} takes {wanted}, got {value!r} ({type(value).__name__})")


# ------------------------------------------------------------------------------------------------
# the handler

_SUGGESTIONS = {
    "AuthenticationError": "check the credentials the operation uses",
    "ValidationError": "fix the input data; retrying the same input fails the same way",
    "ConfigurationError": "fix the configuration named in the error message",
    "TimeoutError": "raise the timeout or check the dependency's latency",
    "ConnectionError": "check that the dependency is reachable",
}


#: ``error_handling_duration_ms`` buckets, as ``mixin_error_handling.yaml`` declares them
DURATION_BUCKETS_MS = (1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0)


class ErrorHandler:
    """Seed 002's error-handling actions for one node (the ``self.error_handling`` facility).

    Args:
        config: the ``ModelErrorHandlingSubcontract`` (or a mapping of its fields).
        node: the node, to delegate to its ``circuit_breaker`` and ``retry`` capabilities and
            to log through its ``logging`` capability (``None``: stand-alone).
        metrics: a metrics facility (``increment``/``gauge``/``histogram``), or ``None``.
        clock: seconds, monotonic (inject a ``ManualClock`` in tests).
        sleep: async sleep between own retries (``ManualClock.sleep`` in tests).

    Example:
        >>> handler = ErrorHandler({"error_retry_attempts": 2})
        >>> handler.should_retry(TimeoutError(), attempt_number=2).max_attempts_reached
        True
    """

    def __init__(self, config: ModelErrorHandlingSubcontract | Mapping[str, Any] | None = None,
                 *, node: Any = None, metrics: Any = None,
                 clock: Callable[[], float] = _context.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] | None = None) -> None:
        cfg: ModelErrorHandlingSubcontract = coerce_config(
            ModelErrorHandlingSubcontract, config, "error_handling")
        self.config = cfg
        self.node = node
        self.metrics = metrics
        self.sleep: Callable[[float], Awaitable[Any]] = sleep or asyncio.sleep
        self._clock = clock
        self._node_type = str(getattr(node, "node_type", None) or "UNKNOWN")
        self._own_breakers: CircuitBreakers | None = None
        # bound once (loguru's bind allocates a logger): the node's logging capability when
        # composed (its scrubbing and correlation ids apply), else a logger with the same fields
        self.log: Any = bind_logger(node, "error_handling") if node is not None else logger
        self._categories: dict[type, str] = {}

    # -- time ----------------------------------------------------------------------------------

    @property
    def clock(self) -> Callable[[], float]:
        """The clock (setting it also re-points the handler's own breakers)."""
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        if self._own_breakers is not None:
            self._own_breakers.clock = clock

    def use_clock(self, clock: _context.ManualClock) -> ErrorHandler:
        """Use a ``ManualClock`` for time and sleeping (tests); returns ``self``."""
        self.clock = clock
        self.sleep = clock.sleep
        return self

    # -- delegation ----------------------------------------------------------------------------

    @property
    def delegates_breaker(self) -> bool:
        """Whether the node's ``circuit_breaker`` capability provides the breakers."""
        return self.node is not None and has_capability(self.node, "circuit_breaker")

    @property
    def delegates_retry(self) -> bool:
        """Whether the node's ``retry`` capability provides the retry policy and loop."""
        return self.node is not None and has_capability(self.node, "retry")

    def breaker(self, operation_key: str) -> Any:
        """The breaker guarding ``operation_key`` (the node's, when it composes
        ``circuit_breaker``), or ``None`` when ``enable_circuit_breaker`` is false."""
        if not self.config.enable_circuit_breaker:
            return None
        if self.delegates_breaker:
            return self.node.circuit_breaker(operation_key)
        if self._own_breakers is None:
            cfg = self.config
            self._own_breakers = CircuitBreakers(CircuitBreakerConfig(
                mode="consecutive", failure_threshold=cfg.circuit_failure_threshold,
                reset_timeout=cfg.circuit_timeout_ms / 1000.0,
                half_open_max_calls=cfg.circuit_half_open_max_calls,
                process_breaker="default"), metrics=self._metrics(), clock=self._clock)
        return self._own_breakers(operation_key)

    def _metrics(self) -> Any:
        return self.metrics if self.config.enable_error_metrics else None

    # -- categorisation ------------------------------------------------------------------------

    def categorize(self, error: BaseException | type[BaseException] | str,
                   config: ModelErrorHandlingSubcontract | None = None) -> ErrorCategory:
        """``retriable``, ``fatal``, ``rejected``, ``unknown`` or ``cancelled`` (see module doc).

        ``error`` is the exception, its class, or its class name.

        Example:
            >>> handler = ErrorHandler()
            >>> handler.categorize(ConnectionRefusedError()), handler.categorize(PermissionError)
            ('retriable', 'unknown')
            >>> handler.categorize("ValidationError")
            'fatal'
        """
        if not isinstance(error, BaseException):
            error = _exception_of(error, "categorize")
        if not isinstance(error, Exception):
            return "cancelled"
        own = getattr(error, "__dict__", {}).get("onex_retriable")
        if isinstance(own, bool):
            return "retriable" if own else "rejected"
        if config is not None and config is not self.config:
            return cast(ErrorCategory, self._categorize_type(type(error), config))
        hit = self._categories.get(type(error))
        if hit is None:  # cached per type for this handler's own configuration only
            hit = self._categorize_type(type(error), self.config)
            if len(self._categories) < 1024:
                self._categories[type(error)] = hit
        return cast(ErrorCategory, hit)

    @staticmethod
    def _categorize_type(kind: type, cfg: ModelErrorHandlingSubcontract) -> str:
        fatal, retriable = set(cfg.fatal_error_types), set(cfg.retriable_error_types)
        for klass in kind.__mro__:
            names = {klass.__name__, klass.__qualname__, f"{klass.__module__}.{klass.__qualname__}"}
            if names & fatal:
                return "fatal"
            if names & retriable:
                return "retriable"
            flag = vars(klass).get("onex_retriable")
            if isinstance(flag, bool):
                return "retriable" if flag else "rejected"
        return "unknown"

    # -- actions -------------------------------------------------------------------------------

    def handle_error(self, error_info: BaseException | type[BaseException],
                     error_context: Mapping[str, Any] | None = None,
                     handling_strategy: HandlingStrategy | None = None,
                     ) -> ModelErrorHandlingResult:
        """Categorise, log (scrubbed) and count an error; say what to do about it.

        Args:
            error_info: the exception (or its class).
            error_context: execution context (``operation_name`` or ``operation_key`` names
                the operation in logs and metrics; everything is scrubbed before logging).
            handling_strategy: ``retry``, ``fail`` or ``ignore`` to force the action
                (``retry`` on a fatal error still fails); ``None`` decides by category.

        Returns:
            The ``error_handling_result``; its ``recovery_suggestions`` are the
            ``recovery_actions``.
        """
        started = self._clock()
        if handling_strategy not in (None, "retry", "fail", "ignore"):
            raise ValueError(f"handling_strategy must be 'retry', 'fail', 'ignore' or None, "
                             f"got {handling_strategy!r}")
        if not isinstance(error_info, BaseException):
            error_info = _exception_of(error_info, "handle_error(error_info)", names=False)
        if error_context is not None and not isinstance(error_context, Mapping):
            raise TypeError(f"handle_error(error_context) takes a mapping such as "
                            f"{{'operation_name': 'load'}} or None, got {error_context!r}")
        context = dict(error_context or {})
        category = self.categorize(error_info)
        operation = str(context.get("operation_name") or context.get("operation_key")
                        or "unknown")
        auto = {"retriable": "retry", "rejected": "fail_fast", "fatal": "fail",
                "unknown": "fail", "cancelled": "propagate"}[category]
        if handling_strategy == "ignore":
            action = "ignore"
        elif handling_strategy == "fail":
            action = "fail"
        elif handling_strategy == "retry":
            action = "retry" if category in ("retriable", "unknown", "rejected") else "fail"
        else:
            action = auto
        recovery = action == "ignore" or category in ("retriable", "rejected") or (
            action == "retry")
        result = ModelErrorHandlingResult(
            error_category=category, handling_action=action, recovery_possible=recovery,
            recovery_suggestions=self._suggestions(error_info, category))
        self._log(error_info, category, action, operation, context)
        if self.config.enable_error_metrics and category != "cancelled":
            self.record_error_metric(category, operation, context)
            if self.metrics is not None:
                self.metrics.histogram("error_handling_duration_ms",
                                       (self._clock() - started) * 1000.0,
                                       labels={"error_category": category})
        return result

    def _suggestions(self, error: BaseException, category: str) -> list[str]:
        out: list[str] = []
        if category == "retriable":
            out.append(f"retry with exponential back-off (up to "
                       f"{self._max_attempts()} attempts in total)")
        elif category == "rejected":
            after = getattr(error, "retry_after", None)
            out.append(f"back off for {float(after):.3f} s before calling again"
                       if isinstance(after, (int, float)) else "back off before calling again")
        elif category == "fatal":
            out.append("do not retry: the same call fails the same way")
        elif category == "unknown":
            out.append(f"classify {type(error).__name__} by adding it to retriable_error_types "
                       "or fatal_error_types")
        elif category == "cancelled":
            out.append("let the cancellation propagate")
        for klass in type(error).__mro__:
            hint = _SUGGESTIONS.get(klass.__name__)
            if hint:
                out.append(hint)
                break
        return out

    def _log(self, error: BaseException, category: str, action: str, operation: str,
             context: dict[str, Any]) -> None:
        message = str(error)
        if self.config.sensitive_data_scrubbing:
            message = cast(str, scrub(message))
            context = cast(dict[str, Any], scrub(context))
        level = self.config.error_log_level if category != "cancelled" else "DEBUG"
        self.log.bind(error_category=category, handling_action=action, operation_name=operation,
                 error_type=type(error).__name__, error_context=context).log(
            level, "{} failed with {}: {} (category={}, action={})", operation,
            type(error).__name__, message, category, action)

    async def circuit_breaker_check(self, operation_key: str = "default"
                                    ) -> ModelCircuitStatusResult:
        """The breaker status of ``operation_key`` (``closed`` when breakers are disabled)."""
        breaker = self.breaker(operation_key)
        if breaker is None:
            return ModelCircuitStatusResult(status="closed", operation_key=operation_key)
        st = await breaker.astatus()
        return ModelCircuitStatusResult(
            status=st.state.label, failure_count=st.failure_count,
            failure_rate=min(100.0, max(0.0, st.failure_rate)),
            last_failure_time=st.last_failure_time, operation_key=operation_key,
            retry_after=st.retry_after)

    def should_retry(self, error_type: BaseException | type[BaseException] | str,
                     attempt_number: int = 1,
                     operation_context: Mapping[str, Any] | None = None, *,
                     config: ModelErrorHandlingSubcontract | None = None,
                     ) -> ModelRetryDecisionResult:
        """Whether to retry after attempt ``attempt_number`` failed with ``error_type``.

        ``error_type`` is the exception raised, its class, or its class name (seed 002's "type
        of error that occurred"); the instance is best (it may carry ``retry_after`` or its
        own ``onex_retriable``). With the ``retry`` capability composed, its policy decides
        (retriable types, attempts, delay with its jitter); otherwise ``config`` (default: this
        handler's) does. A retry whose delay would end past the current deadline is refused.

        Example:
            >>> ErrorHandler().should_retry("ConnectionError", 1).retry_delay_ms
            1000
        """
        if not isinstance(attempt_number, int) or isinstance(attempt_number, bool):
            raise TypeError(f"attempt_number is the number of the attempt that failed (an int "
                            f"from 1), got {attempt_number!r}")
        if attempt_number < 1:
            raise ValueError(f"attempt_number counts failed attempts from 1, got "
                             f"{attempt_number!r}")
        if not isinstance(error_type, BaseException):
            error_type = _exception_of(error_type, "should_retry(error_type)")
        category = self.categorize(error_type, config)
        if self.delegates_retry:
            policy = self.node.retry_policy
            max_attempts = int(policy.config.max_attempts)
            retriable = isinstance(error_type, Exception) and bool(
                policy.is_retriable(error_type))
            delay = float(policy.delay(attempt_number, error_type)) if retriable else 0.0
        else:
            cfg = config or self.config
            max_attempts = cfg.error_retry_attempts
            retriable = category == "retriable"
            delay = self._delay(attempt_number, error_type, cfg) if retriable else 0.0
        reached = attempt_number >= max_attempts
        decision = retriable and not reached
        if decision:
            deadline = _context.current_deadline()
            if deadline is not None and self._clock() + delay >= deadline:
                decision = False
        return ModelRetryDecisionResult(
            should_retry=decision, retry_delay_ms=round(delay * 1000) if decision else 0,
            retry_attempt=attempt_number, max_attempts_reached=reached,
            error_category=category)

    def _max_attempts(self) -> int:
        if self.delegates_retry:
            return int(self.node.retry_policy.config.max_attempts)
        return self.config.error_retry_attempts

    @staticmethod
    def _delay(attempt: int, error: BaseException | None,
               cfg: ModelErrorHandlingSubcontract) -> float:
        cap = cfg.max_retry_delay_ms / 1000.0
        delay = min(cap, cfg.error_retry_delay_ms / 1000.0
                    * cfg.error_retry_backoff_multiplier ** (attempt - 1))
        hint = getattr(error, "retry_after", None)
        if isinstance(hint, (int, float)) and not isinstance(hint, bool) and hint > delay:
            delay = min(cap, float(hint))
        return delay

    def record_error_metric(self, error_category: str, operation_name: str,
                            error_metadata: Mapping[str, Any] | None = None) -> bool:
        """Count one error in ``errors_total{error_category, node_type, operation_name}``.

        Returns:
            ``True`` if recorded; ``False`` when metrics are disabled or no metrics capability
            is composed (seed 002 makes ``metrics_protocol`` optional).
        """
        if not self.config.enable_error_metrics or self.metrics is None:
            return False
        self.metrics.increment("errors_total", labels={
            "error_category": error_category, "node_type": self._node_type,
            "operation_name": operation_name})
        return True

    # -- protected execution ---------------------------------------------------------------------

    async def retry(self, operation: Callable[..., Any], /, *args: Any,
                    config: ModelErrorHandlingSubcontract | None = None,
                    operation_key: str | None = None, attempts_made: int = 0,
                    **kwargs: Any) -> Any:
        """Run ``operation`` with retries; each attempt goes through the operation's breaker.

        Args:
            operation: ``async def`` or plain callable.
            config: the policy (default: this handler's); ignored for the loop itself when the
                ``retry`` capability is composed (its ``with_retry`` runs the attempts).
            operation_key: breaker and metric name (default: the operation's ``__name__``).
            attempts_made: attempts already made and failed before this call (the seed's flow
                calls this after a first failure: pass 1 to keep the total bounded); the
                back-off for the last of them is slept before the first attempt here (with
                ``retry`` composed its loop starts at once and paces the attempts itself).

        Raises:
            Exception: the last error once attempts run out, or the first non-retriable one
                (an open circuit included).
        """
        cfg = config or self.config
        key = operation_key or getattr(operation, "__name__", None) or "operation"
        breaker = None if not cfg.enable_circuit_breaker else self.breaker(key)
        attempt_fn = _as_async(operation)
        if breaker is not None:
            acall, inner = breaker.acall, attempt_fn

            async def guarded(*a: Any, **k: Any) -> Any:
                return await acall(inner, *a, **k)

            attempt_fn = guarded
        if self.delegates_retry:
            remaining = max(1, self._max_attempts() - attempts_made)
            return await self.node.with_retry(attempt_fn, *args, max_attempts=remaining,
                                              **kwargs)
        attempt = attempts_made
        metrics = self._metrics()
        if attempts_made > 0:  # called after a failure: back off before the next attempt
            await self.sleep(self._delay(attempts_made, None, cfg))
        while True:
            attempt += 1
            try:
                result = await attempt_fn(*args, **kwargs)
            except Exception as exc:
                if metrics is not None and attempt > 1:
                    metrics.increment("retry_attempts_total",
                                      labels={"operation_name": key, "success": "false"})
                decision = self.should_retry(exc, attempt, config=cfg)
                if not decision.should_retry:
                    exc.add_note(f"error_handling: gave up on {key!r} after {attempt} "
                                 f"attempt(s) ({decision.error_category}"
                                 f"{', attempts exhausted' if decision.max_attempts_reached else ''})")
                    raise
                await self.sleep(decision.retry_delay_ms / 1000.0)
                continue
            if metrics is not None and attempt > 1:
                metrics.increment("retry_attempts_total",
                                  labels={"operation_name": key, "success": "true"})
            return result

    async def call(self, operation: Callable[..., Any], /, *args: Any,
                   operation_key: str | None = None, **kwargs: Any) -> Any:
        """Run ``operation`` the way seed 002 intends: breaker, retries, and every failure
        handled (categorised, logged scrubbed, counted) before it propagates.

        Example:
            >>> import asyncio
            >>> async def load():
            ...     return 42
            >>> asyncio.run(ErrorHandler().call(load))
            42
        """
        key = operation_key or getattr(operation, "__name__", None) or "operation"
        try:
            return await self.retry(operation, *args, operation_key=key, **kwargs)
        except BaseException as exc:
            self.handle_error(exc, {"operation_name": key})
            raise


def _as_async(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    if inspect.iscoroutinefunction(fn):
        return fn

    async def call(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    return call


# ------------------------------------------------------------------------------------------------
# the mixin


class MixinErrorHandling:
    """Standardized error handling, circuit breakers and fault tolerance (seed 002).

    ``self.error_handling`` holds the actions; the node-side helpers of seed 002's integration
    test are ``_check_circuit_breaker``, ``_should_retry`` and ``_retry_operation``.

    Example:
        >>> from onex_compose import NodeCompute
        >>> class Node(NodeCompute, MixinErrorHandling):  # doctest: +SKIP
        ...     async def execute_compute(self, contract):
        ...         try:
        ...             return await self._risky_operation()
        ...         except Exception as e:
        ...             if self._should_retry(e, contract.error_handling_configuration):
        ...                 return await self._retry_operation(
        ...                     contract.error_handling_configuration, self._risky_operation)
        ...             raise
    """

    __onex_capability__ = "error_handling"
    __slots__ = ()

    def setup_error_handling(self, config: ModelErrorHandlingSubcontract | Mapping[str, Any]
                             | None = None) -> None:
        """Build the handler (reconfiguring keeps an injected clock and sleep)."""
        cfg = coerce_config(ModelErrorHandlingSubcontract, config, "error_handling")
        node = cast(Any, self)
        old = getattr(node, "error_handling", None)
        metrics = node.metrics if has_capability(self, "metrics") else None
        if metrics is not None and hasattr(metrics, "declare_buckets"):
            # the contract's buckets are milliseconds; the node's default buckets are seconds
            metrics.declare_buckets("error_handling_duration_ms", DURATION_BUCKETS_MS)
        handler = ErrorHandler(cfg, node=self, metrics=metrics)
        if isinstance(old, ErrorHandler):
            handler.clock, handler.sleep = old.clock, old.sleep
        node.error_handling = handler

    @facility
    def error_handling(self) -> ErrorHandler:
        """The node's error handler (defaults when setup never ran)."""
        metrics = cast(Any, self).metrics if has_capability(self, "metrics") else None
        return ErrorHandler(None, node=self, metrics=metrics)

    async def _check_circuit_breaker(self, operation_key: str = "default"
                                     ) -> ModelCircuitStatusResult:
        """Seed 002: ``await self._check_circuit_breaker(operation_key=...)``; ``.status`` is
        ``open``/``closed``/``half_open``."""
        return await self.error_handling.circuit_breaker_check(operation_key)

    def _should_retry(self, error: BaseException,
                      config: ModelErrorHandlingSubcontract | None = None,
                      attempt: int = 1) -> bool:
        """Seed 002: ``if self._should_retry(e, error_config):`` after attempt ``attempt``."""
        return self.error_handling.should_retry(error, attempt, config=config).should_retry

    async def _retry_operation(self, config: ModelErrorHandlingSubcontract | None = None,
                               operation: Callable[..., Any] | None = None, /, *args: Any,
                               operation_key: str | None = None, **kwargs: Any) -> Any:
        """Seed 002: ``return await self._retry_operation(error_config)``: retry after a first
        failure (the remaining ``error_retry_attempts - 1`` attempts).

        The seed never says what to retry, so pass it (``self._retry_operation(config,
        self._risky_operation)``) or override this method in the node to supply it.
        """
        if operation is None:
            raise TypeError(
                f"{type(self).__qualname__}._retry_operation(config) needs the operation to "
                "retry: call self._retry_operation(config, self._risky_operation, *args), or "
                "override _retry_operation(self, config) in the node to pass it")
        return await self.error_handling.retry(operation, *args, config=config,
                                               operation_key=operation_key, attempts_made=1,
                                               **kwargs)

