"""The ``message_queue`` capability: ``self.message_queue``, at-least-once queues.

``self.message_queue`` is a :class:`MessageQueue` over one backend (``backend``):

* ``database`` (the default): rows in the node's ``database`` capability, the embedded SQLite
  by default, PostgreSQL when the database URL says so (``_database.py``);
* ``redis``: Redis Streams with a consumer group per queue (``_redis.py``);
* ``rabbitmq``: RabbitMQ quorum queues through aio-pika (``_rabbitmq.py``; ``ordering: key`` is
  a ``ConfigurationError`` and idempotency keys an ``UnsupportedFeatureError`` there).

The facility talks to its backend through a small interface (enqueue, receive, ack, nack,
extend, dead_letter, dead_letters, redrive, purge, stats, ping).

The API and its semantics:

* ``await enqueue(queue, payload, key=None, delay=0.0, idempotency_key=None, headers=None)``
  returns the message id; ``enqueue_many(queue, payloads)`` adds several at once. An enqueue
  that cannot reach the backend raises :class:`QueueUnavailableError`: a message is never
  silently dropped. A duplicate ``idempotency_key`` within ``dedup_window`` returns the
  original id and enqueues nothing.
* ``await receive(queue, max_messages=1, wait=0.0, visibility_timeout=None)`` returns
  :class:`Message` deliveries. A message is removed only by ``await msg.ack()``; one not acked
  within the visibility timeout is delivered again with ``delivery_count + 1`` (a crashed,
  hung or SIGKILLed consumer loses nothing). When a delivery would exceed ``max_deliveries``
  the message is dead-lettered with reason ``max_deliveries`` and its last error.
* Receipts are per delivery: acking a delivery that was redelivered since raises
  :class:`StaleReceiptError` (the message may have been processed twice).
* ``msg.nack(delay=None, reason=None)`` makes it visible again after
  ``min(retry_max_delay, retry_delay * retry_backoff ** (delivery_count - 1))``;
  ``msg.extend(seconds)``; ``msg.dead_letter(reason)``.
* ``consume(queue, handler, concurrency=None)`` runs ``handler(msg)`` for each message: a
  return acks, an exception nacks with back-off, one with ``onex_retriable = False`` (e.g.
  ``InputValidationError``) dead-letters at once (reason ``rejected``). The handler's
  visibility is extended every ``visibility_timeout / 3`` while it runs; it runs under the
  message's ``traceparent`` (a CONSUMER span, child of the producer's span) and correlation
  id and, with authentication composed, the ``credentials`` of its ``authorization`` header.
  Consumers start on the running loop (or at ``node.start()``/first use when created outside
  one) and ``aclose()`` stops them: no task is left behind.
* Ordering: ``fifo`` (ready messages in enqueue order, with concurrency 1), ``key`` (a key's
  messages in enqueue order and never two in flight at once), ``none``.
* ``delay`` and nack delays are never shortened.
* ``dead_letters(queue)``, ``redrive(queue, ids=None)``, ``purge(queue)``, ``stats(queue)``
  (:class:`QueueStats`: ready, in_flight, delayed, dead).

Health: the backend reachable and each known queue's oldest ready message younger than
``health_max_age``; dead letters are reported, not counted against health.

Layout: ``_model.py`` (config, errors, message types, protocol), ``_queue.py`` (the facility
and consumers), one module per backend, the contract ``mixin_message_queue.yaml`` beside them.

Example:
    >>> import asyncio
    >>> from onex_compose import NodeEffect, compose
    >>> node = compose(NodeEffect, ["message_queue"])(
    ...     capability_config={"database": {"namespace": "doc_mq2"}})
    >>> async def demo():
    ...     await node.message_queue.enqueue("jobs", {"n": 1}, key="a")
    ...     [msg] = await node.message_queue.receive("jobs", visibility_timeout=5)
    ...     await msg.nack(delay=0)
    ...     [again] = await node.message_queue.receive("jobs")
    ...     await again.ack()
    ...     stats = await node.message_queue.stats("jobs")
    ...     await node.aclose()
    ...     return again.delivery_count, stats.ready
    >>> asyncio.run(demo())
    (2, 0)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from importlib.util import find_spec
from typing import Any

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities.message_queue._model import (
    DeadLetter,
    Message,
    MessageQueueConfig,
    MessageQueueProtocol,
    MessageTooLargeError,
    QueueError,
    QueueStats,
    QueueUnavailableError,
    StaleReceiptError,
    UnsupportedFeatureError,
    check_queue,
)
from onex_compose.capabilities.message_queue._queue import Consumer, MessageQueue
from onex_compose.exceptions import ConfigurationError

__all__ = [
    "Consumer",
    "DeadLetter",
    "Message",
    "MessageQueue",
    "MessageQueueConfig",
    "MessageQueueProtocol",
    "MessageTooLargeError",
    "MixinMessageQueue",
    "QueueError",
    "QueueStats",
    "QueueUnavailableError",
    "StaleReceiptError",
    "UnsupportedFeatureError",
    "check_queue",
]

_EXTRAS = {"database": ("sqlalchemy", "database"), "redis": ("redis", "redis"),
           "rabbitmq": ("aio_pika", "amqp")}


def _backend(node: Any, cfg: MessageQueueConfig, clock: Any) -> Any:
    module, extra = _EXTRAS[cfg.backend]
    if find_spec(module) is None:
        raise ConfigurationError(
            f"message_queue backend {cfg.backend!r} needs the {module!r} package: "
            f"pip install 'onex-compose[{extra}]'")
    if cfg.backend == "rabbitmq":
        if cfg.ordering == "key":
            raise ConfigurationError(
                "message_queue: ordering 'key' is not available on the rabbitmq backend (a "
                "quorum queue cannot hold a key while one of its messages is in flight); use "
                "ordering 'fifo' or 'none', or the database or redis backend")
        from onex_compose.capabilities.message_queue._rabbitmq import RabbitMQBackend

        return RabbitMQBackend(cfg, clock=clock)
    if cfg.backend == "redis":
        from onex_compose.capabilities.message_queue._redis import RedisBackend

        return RedisBackend(cfg, clock=clock)
    from onex_compose.capabilities.message_queue._database import DatabaseBackend

    return DatabaseBackend(cfg, node.db, clock=clock)


def _build(node: Any, cfg: MessageQueueConfig) -> MessageQueue:
    old = node.__dict__.get("message_queue") if hasattr(node, "__dict__") else None
    clock = old.clock if isinstance(old, MessageQueue) else time.time
    if has_capability(node, "serialization"):
        serializer = node.serializer
    else:
        from onex_compose.capabilities.serialization import Serializer

        serializer = Serializer()
    tracer = node.tracer.for_capability("message_queue") if has_capability(
        node, "tracing") else None
    return MessageQueue(cfg, backend=_backend(node, cfg, clock), serializer=serializer,
                        metrics=node.metrics, node=node, tracer=tracer,
                        authentication=has_capability(node, "authentication"), clock=clock)


class MixinMessageQueue:
    """Message queuing, ordering, and guaranteed delivery: ``self.message_queue``.

    Requires ``metrics`` and ``database`` (the default backend); uses ``serialization``,
    ``tracing``, ``authentication``, ``health_check`` and ``logging`` when composed.

    Example:
        >>> from onex_compose import NodeEffect, compose
        >>> compose(NodeEffect, ["message_queue"]).__name__
        'NodeEffect[database,message_queue,metrics]'
    """

    __onex_capability__ = "message_queue"
    __slots__ = ()

    def setup_message_queue(self, config: MessageQueueConfig | Mapping[str, Any] | None = None
                            ) -> None:
        """Build ``self.message_queue`` from the ``message_queue`` subcontract.

        Raises:
            ConfigurationError: the backend's client library is not installed.
        """
        cfg = coerce_config(MessageQueueConfig, config, "message_queue")
        node: Any = self
        node.message_queue = _build(node, cfg)
        if has_capability(self, "health_check"):
            node.register_health_check(node.message_queue.health, name="message_queue")

    @facility
    def message_queue(self) -> MessageQueue:
        """The node's message queue (default config when setup never ran)."""
        return _build(self, MessageQueueConfig())

    async def start_message_queue(self) -> None:
        """Start the consumers registered before the loop ran."""
        node: Any = self
        await node.message_queue.start()

    async def close_message_queue(self) -> None:
        """Stop every consumer (handlers in progress finish) and close the backend."""
        node: Any = self
        mq = getattr(node, "message_queue", None)
        if isinstance(mq, MessageQueue):
            await mq.aclose()
