"""The Redis-outage fallback shared by the Redis-backed circuit breaker and rate limiter.

When a store call fails with a connection error, the component stays on its configured
fallback policy (``on_backend_error``: ``local``, ``allow`` or ``deny``) for
``backend_retry_interval`` seconds and then tries Redis again. Each outage is logged once (a
warning when it starts, an info line when Redis is tried again) and every failed store call is
counted in the component's ``*_backend_errors_total`` metric.

Example:
    >>> from onex_compose.capabilities._context import ManualClock
    >>> clock = ManualClock()
    >>> outage = BackendOutage("rate limiter", "local", 2.0, clock=clock)
    >>> outage.up()
    True
    >>> outage.failed(ConnectionError("refused"))
    >>> outage.up(), outage.down
    (False, True)
    >>> clock.advance(2.0)
    >>> outage.up(), outage.down
    (True, False)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, field_validator

from onex_compose.capabilities._redis import check_redis_url

__all__ = ["BackendOutage", "FallbackPolicy", "RedisBackendConfig", "backend_errors"]

FallbackPolicy = Literal["local", "allow", "deny"]


class RedisBackendConfig(BaseModel):
    """The store and outage-fallback fields the circuit breaker and rate limiter configs share.

    Attributes:
        backend: ``memory`` (per process) or ``redis`` (one state shared by every process
            using the same ``namespace``).
        redis_url: ``None`` uses ``ONEX_REDIS_URL``, else ``redis://127.0.0.1:6379/0``; a URL
            that is not ``redis://``, ``rediss://`` or ``unix://`` is refused here.
        namespace: Redis key prefix.
        redis_clock: ``server`` (Redis ``TIME``) or ``client`` (this process's clock).
        on_backend_error: the fallback while Redis is unreachable (see :class:`BackendOutage`).
        backend_retry_interval: seconds on the fallback before Redis is tried again.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None
    namespace: str = "onex"
    redis_clock: Literal["server", "client"] = "server"
    on_backend_error: FallbackPolicy = "local"
    backend_retry_interval: float = Field(default=1.0, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        return check_redis_url(value)


def backend_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "Redis is unreachable" (redis-py's connection and timeout
    errors and ``OSError``); anything else is a real error and propagates."""
    import redis.exceptions as rexc

    return (rexc.ConnectionError, rexc.TimeoutError, OSError)


class BackendOutage:
    """The outage state of one Redis-backed component.

    Args:
        what: how the component is named in log lines (``"circuit breaker 'db'"``).
        policy: the configured ``on_backend_error`` (only reported here; the component applies it).
        retry_interval: seconds to stay on the fallback before Redis is tried again.
        clock: a monotonic clock (reassign :attr:`clock` when the component's clock changes).
        metrics: the node's metrics facility, or ``None``.
        metric: the counter incremented on every failed store call.
        labels: the counter's labels.
    """

    __slots__ = ("clock", "down_until", "labels", "metric", "metrics", "policy",
                 "retry_interval", "what")

    def __init__(self, what: str, policy: FallbackPolicy, retry_interval: float, *,
                 clock: Callable[[], float], metrics: Any = None, metric: str = "",
                 labels: Mapping[str, str] | None = None) -> None:
        self.what = what
        self.policy = policy
        self.retry_interval = retry_interval
        self.clock = clock
        self.metrics = metrics
        self.metric = metric
        self.labels = dict(labels or {})
        self.down_until: float | None = None

    @property
    def down(self) -> bool:
        """Whether the component is on its fallback now (Redis failed less than
        ``retry_interval`` seconds ago)."""
        return self.down_until is not None

    def up(self) -> bool:
        """Whether Redis should be tried now; ends the outage once ``retry_interval`` passed."""
        down = self.down_until
        if down is None:
            return True
        if self.clock() >= down:
            self.down_until = None
            logger.info("{}: retrying Redis after an outage", self.what)
            return True
        return False

    def failed(self, exc: BaseException) -> None:
        """Record a failed store call: start (or extend) the outage, log its start, count it."""
        if self.down_until is None:
            logger.warning("{}: Redis unreachable ({}: {}); policy {!r} for {} s", self.what,
                           type(exc).__name__, exc, self.policy, self.retry_interval)
        self.down_until = self.clock() + self.retry_interval
        if self.metrics is not None and self.metric:
            self.metrics.increment(self.metric, labels=self.labels)
