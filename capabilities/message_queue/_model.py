"""The message_queue capability's configuration, errors, message types and protocol."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from onex_compose.exceptions import OnexError

__all__ = [
    "BACKENDS",
    "DeadLetter",
    "Message",
    "MessageQueueConfig",
    "MessageQueueProtocol",
    "MessageTooLargeError",
    "QueueError",
    "QueueStats",
    "QueueUnavailableError",
    "StaleReceiptError",
    "UnsupportedFeatureError",
    "check_queue",
]

#: The backends that fully work in this release (the config accepts only these).
BACKENDS = ("database", "redis", "rabbitmq")

_QUEUE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


def check_queue(queue: Any) -> str:
    """Validate a queue name: ``^[a-z0-9][a-z0-9._-]{0,99}$``.

    Example:
        >>> check_queue("orders.eu")
        'orders.eu'
        >>> check_queue("Orders")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: queue name must match ^[a-z0-9][a-z0-9._-]{0,99}$ ... got 'Orders'
    """
    if not isinstance(queue, str) or not _QUEUE_RE.match(queue):
        raise ValueError(f"queue name must match {_QUEUE_RE.pattern} (lower-case letters, digits, "
                         f"'.', '_', '-'; at most 100 characters), got {queue!r}")
    return queue


# -- errors ------------------------------------------------------------------------------------


class QueueError(OnexError):
    """The root of the message_queue errors."""

    onex_retriable = False
    onex_breaker_neutral = False


class QueueUnavailableError(QueueError, ConnectionError):
    """The backend could not be reached; the operation did not happen (an ``enqueue`` that
    raises this enqueued nothing). Retriable."""

    onex_retriable = True


class MessageTooLargeError(QueueError, ValueError):
    """The serialized payload is larger than ``max_message_size``.

    Attributes:
        size: the serialized size in bytes.
        limit: the configured ``max_message_size``.
    """

    onex_breaker_neutral = True

    def __init__(self, message: str, *, size: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class StaleReceiptError(QueueError):
    """The delivery's receipt is no longer valid: its visibility lapsed and the message was
    delivered again (or acked, nacked or dead-lettered through another receipt). The caller may
    have processed the message twice."""

    onex_breaker_neutral = True


class UnsupportedFeatureError(QueueError, NotImplementedError):
    """A feature this backend cannot provide (the message names the backend)."""

    onex_breaker_neutral = True


# -- config ------------------------------------------------------------------------------------


class MessageQueueConfig(BaseModel):
    """The ``message_queue`` subcontract (every key of ``message_queue_config`` in
    ``mixin_message_queue.yaml``).

    Example:
        >>> MessageQueueConfig().backend
        'database'
        >>> MessageQueueConfig(max_deliveries=3).retry_delay
        1.0
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["database", "redis", "rabbitmq"] = Field(
        default="database", description="database: the node's database capability (SQLite, "
                                        "or PostgreSQL by its URL); redis: Streams; rabbitmq: "
                                        "quorum queues")
    redis_url: str | None = Field(default=None, description="None: ONEX_REDIS_URL, else "
                                                            "redis://127.0.0.1:6379/0")
    amqp_url: str | None = Field(default=None, description="None: ONEX_AMQP_URL, else "
                                                           "amqp://guest:guest@127.0.0.1:5672/")
    namespace: str = Field(default="onex", min_length=1, max_length=40)
    visibility_timeout: float = Field(default=30.0, gt=0)
    max_deliveries: int = Field(default=5, ge=1)
    retry_delay: float = Field(default=1.0, ge=0)
    retry_backoff: float = Field(default=2.0, ge=1)
    retry_max_delay: float = Field(default=300.0, ge=0)
    ordering: Literal["none", "fifo", "key"] = "fifo"
    partitions: int = Field(default=16, ge=1, le=1024)
    dedup_window: float = Field(default=3600.0, gt=0)
    max_message_size: int = Field(default=262144, ge=1)
    prefetch: int = Field(default=10, ge=1)
    consumer_concurrency: int = Field(default=1, ge=1)
    poll_interval: float = Field(default=0.1, gt=0)
    keep_acked: float = Field(default=0.0, ge=0)
    health_max_age: float = Field(default=300.0, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        from onex_compose.capabilities._redis import check_redis_url

        checked: str | None = check_redis_url(value)
        return checked

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("amqp://", "amqps://")):
            from onex_compose._redact import scrub_text

            raise ValueError(f"amqp_url must start with amqp:// or amqps://, got "
                             f"{scrub_text(value)!r}")
        return value

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not value.replace("_", "").isalnum() or not value.isascii():
            raise ValueError(f"namespace must be letters, digits and '_' (it prefixes table, "
                             f"stream and queue names), got {value!r}")
        return value

    def retry_delay_for(self, deliveries: int) -> float:
        """The nack delay after ``deliveries`` deliveries:
        ``min(retry_max_delay, retry_delay * retry_backoff ** (deliveries - 1))``.

        Example:
            >>> MessageQueueConfig().retry_delay_for(3)
            4.0
        """
        exponent = max(0, deliveries - 1)
        try:
            delay = self.retry_delay * self.retry_backoff ** exponent
        except OverflowError:
            delay = self.retry_max_delay
        return float(min(self.retry_max_delay, delay))

    def __repr__(self) -> str:
        from onex_compose._redact import scrub_text

        return scrub_text(super().__repr__())


# -- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueStats:
    """How many messages of a queue are in each state.

    Example:
        >>> QueueStats(ready=2, in_flight=1, delayed=0, dead=0).total
        3
    """

    ready: int
    in_flight: int
    delayed: int
    dead: int

    @property
    def total(self) -> int:
        """Messages not dead-lettered (ready, in flight or delayed)."""
        return self.ready + self.in_flight + self.delayed


@dataclass(eq=False)
class Message:
    """One delivery of a message. ``receipt`` identifies this delivery: ``ack``, ``nack``,
    ``extend`` and ``dead_letter`` act through it and raise :class:`StaleReceiptError` once
    another delivery replaced it.

    Attributes:
        id: the message id (stable across deliveries).
        queue: the queue name.
        payload: the decoded payload.
        key: the partition key, or ``None``.
        headers: string headers (``traceparent``, ``authorization``, ...).
        delivery_count: 1 on the first delivery.
        enqueued_at: wall-clock seconds when it was enqueued.
        receipt: this delivery's receipt.
    """

    id: str
    queue: str
    payload: Any
    key: str | None
    headers: dict[str, str]
    delivery_count: int
    enqueued_at: float
    receipt: str
    _facility: Any = field(default=None, repr=False, compare=False)
    _done: bool = field(default=False, repr=False, compare=False)

    @property
    def settled(self) -> bool:
        """Whether this delivery was acked, nacked or dead-lettered through this object."""
        return self._done

    async def ack(self) -> None:
        """Remove the message for good.

        Raises:
            StaleReceiptError: the delivery was replaced by a redelivery since.
        """
        await self._facility._ack(self)
        self._done = True

    async def nack(self, delay: float | None = None, reason: str | None = None) -> None:
        """Give the message back: visible again after ``delay`` seconds (``None``: the retry
        back-off for its delivery count). ``reason`` is kept as its last error."""
        await self._facility._nack(self, delay, reason)
        self._done = True

    async def extend(self, seconds: float) -> None:
        """Keep the message invisible for ``seconds`` more from now."""
        await self._facility._extend(self, seconds)

    async def dead_letter(self, reason: str) -> None:
        """Move the message to the dead letters at once with ``reason``."""
        await self._facility._dead_letter(self, reason, None)
        self._done = True

    def __repr__(self) -> str:
        return (f"Message(id={self.id!r}, queue={self.queue!r}, key={self.key!r}, "
                f"delivery_count={self.delivery_count})")


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered message with why it died.

    Attributes:
        message: the message (its ``receipt`` is empty: it cannot be acked).
        reason: ``max_deliveries``, ``rejected`` (a non-retriable handler error) or the reason
            given to ``Message.dead_letter``.
        last_error: the last nack reason or handler error, or ``None``.
        delivery_count: deliveries made before it died.
        dead_at: wall-clock seconds when it was dead-lettered.
    """

    message: Message
    reason: str
    last_error: str | None
    delivery_count: int
    dead_at: float


Handler = Callable[[Message], Awaitable[Any] | Any]


@runtime_checkable
class MessageQueueProtocol(Protocol):
    """What ``node.message_queue`` offers."""

    async def enqueue(self, queue: str, payload: Any, *, key: str | None = None,
                      delay: float = 0.0, idempotency_key: str | None = None,
                      headers: Mapping[str, str] | None = None) -> str: ...

    async def enqueue_many(self, queue: str, payloads: Sequence[Any]) -> list[str]: ...

    async def receive(self, queue: str, max_messages: int = 1, wait: float = 0.0,
                      visibility_timeout: float | None = None) -> list[Message]: ...

    def consume(self, queue: str, handler: Handler, concurrency: int | None = None) -> Any: ...

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]: ...

    async def redrive(self, queue: str, ids: Sequence[str] | None = None) -> int: ...

    async def purge(self, queue: str) -> int: ...

    async def stats(self, queue: str) -> QueueStats: ...
