"""The :class:`MessageQueue` facility (``self.message_queue``) and its :class:`Consumer`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from onex_compose.capabilities import _context
from onex_compose.capabilities._log import logger
from onex_compose.capabilities.message_queue._model import (
    DeadLetter,
    Handler,
    Message,
    MessageQueueConfig,
    MessageTooLargeError,
    QueueError,
    QueueStats,
    QueueUnavailableError,
    StaleReceiptError,
    UnsupportedFeatureError,
    check_queue,
)

__all__ = ["Consumer", "MessageQueue"]

_CORRELATION = "x-correlation-id"
_DEGRADED_WINDOW = 30.0


def _no_metric(*_: Any, **__: Any) -> None:
    return None


def _describe(exc: BaseException) -> str:
    from onex_compose._redact import scrub_text

    text = str(exc).strip()
    return scrub_text(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:2000]


def _check_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping of strings, got {type(headers).__name__}")
    for k, v in headers.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"headers must map strings to strings, got {k!r}: {v!r}")
    return dict(headers)


def _credentials_from(header: str | None) -> Any:
    """``authorization: Bearer <jwt>`` / ``ApiKey <key>`` -> :class:`Credentials`."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if not value:
        return None
    if scheme == "bearer":
        return _context.Credentials("bearer", value)
    if scheme in ("apikey", "api-key", "api_key"):
        return _context.Credentials("api_key", value)
    return None


class MessageQueue:
    """At-least-once queues over the configured backend (``node.message_queue``).

    Built by the mixin's setup; everything loop-bound (connections, consumer tasks) is created
    on the running loop at first use, so a node works across repeated ``asyncio.run()``.

    Example:
        >>> import asyncio
        >>> from onex_compose import NodeEffect, compose
        >>> node = compose(NodeEffect, ["message_queue"])(
        ...     capability_config={"database": {"namespace": "doc_mq"}})
        >>> async def demo():
        ...     await node.message_queue.enqueue("orders", {"id": 1})
        ...     [msg] = await node.message_queue.receive("orders")
        ...     await msg.ack()
        ...     return msg.payload, msg.delivery_count
        >>> asyncio.run(demo())
        ({'id': 1}, 1)
    """

    def __init__(self, config: MessageQueueConfig, *, backend: Any, serializer: Any,
                 metrics: Any = None, node: Any = None, tracer: Any = None,
                 authentication: bool = False, clock: Any = time.time) -> None:
        self.config = config
        self.backend = backend
        self.serializer = serializer
        self.node = node
        self.tracer = tracer
        self.authentication = authentication
        self.clock = clock
        self._inc = getattr(metrics, "increment", None) or _no_metric
        self._hist = getattr(metrics, "histogram", None) or _no_metric
        self._gauge = getattr(metrics, "gauge", None) or _no_metric
        self._consumers: list[Consumer] = []
        self._queues: set[str] = set()
        self._error: str | None = None
        self._error_at = 0.0
        self._logged = False

    def __repr__(self) -> str:
        return (f"<MessageQueue backend={self.backend.describe} namespace="
                f"{self.config.namespace!r} ordering={self.config.ordering} "
                f"consumers={len(self._consumers)}>")

    # -- outages ---------------------------------------------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        self._inc("mq_backend_errors_total", 1, None)
        self._error = _describe(exc)
        self._error_at = time.monotonic()
        if not self._logged:
            self._logged = True
            logger.warning("message_queue[{}]: backend {} unavailable: {}",
                           self.config.namespace, self.backend.describe, self._error)

    def _recovered(self) -> None:
        if self._logged:
            self._logged = False
            logger.info("message_queue[{}]: backend {} reachable again", self.config.namespace,
                        self.backend.describe)
        self._error = None

    async def _guard(self, coro: Any) -> Any:
        try:
            result = await coro
        except QueueUnavailableError as exc:
            self._failed(exc)
            raise
        if self._error is not None:
            self._recovered()
        return result

    # -- enqueue ---------------------------------------------------------------------------------

    def _encode(self, queue: str, payload: Any) -> bytes:
        data = self.serializer.dumps(payload)
        if isinstance(data, str):
            data = data.encode()
        size = len(data)
        if size > self.config.max_message_size:
            raise MessageTooLargeError(
                f"message for queue {queue!r} is {size} bytes serialized, over max_message_size "
                f"{self.config.max_message_size}: send a reference (an id or a URL) instead, or "
                "raise message_queue.max_message_size", size=size,
                limit=self.config.max_message_size)
        return bytes(data)

    def _item(self, queue: str, payload: Any, key: str | None, delay: float,
              idempotency_key: str | None, headers: Mapping[str, str] | None) -> dict[str, Any]:
        if key is not None and (not isinstance(key, str) or not key or len(key) > 500):
            raise ValueError(f"key must be a non-empty string of at most 500 characters, got "
                             f"{key!r}")
        if not isinstance(delay, int | float) or delay < 0 or delay != delay:
            raise ValueError(f"delay must be a number of seconds >= 0, got {delay!r}")
        if idempotency_key is not None:
            if not isinstance(idempotency_key, str) or not idempotency_key or len(
                    idempotency_key) > 500:
                raise ValueError(f"idempotency_key must be a non-empty string of at most 500 "
                                 f"characters, got {idempotency_key!r}")
            if not self.backend.supports_idempotency:
                raise UnsupportedFeatureError(
                    f"the {self.backend.name} backend of message_queue does not support "
                    "idempotency keys (no broker-side deduplication); deduplicate in the "
                    "consumer, or use the database or redis backend")
        hdrs = _check_headers(headers)
        cid = _context.correlation_id.get()
        if cid is not None and _CORRELATION not in hdrs:
            hdrs[_CORRELATION] = cid
        return {"id": uuid.uuid4().hex, "payload": self._encode(queue, payload), "key": key,
                "headers": hdrs, "delay": float(delay), "idempotency_key": idempotency_key}

    async def enqueue(self, queue: str, payload: Any, key: str | None = None, delay: float = 0.0,
                      idempotency_key: str | None = None,
                      headers: Mapping[str, str] | None = None) -> str:
        """Add one message; returns its id (the original id for a duplicate idempotency key).

        Raises:
            ValueError: a bad queue name, key or delay.
            SerializationError: the payload cannot be serialized (names the path).
            MessageTooLargeError: over ``max_message_size`` once serialized.
            UnsupportedFeatureError: an idempotency key on a backend without deduplication.
            QueueUnavailableError: the backend is unreachable; nothing was enqueued.
        """
        check_queue(queue)
        self._queues.add(queue)
        self._start_pending()
        if self.tracer is None:
            item = self._item(queue, payload, key, delay, idempotency_key, headers)
            ids = await self._guard(self.backend.enqueue(queue, [item]))
        else:
            attributes = {"messaging.system": "onex", "messaging.operation.type": "send",
                          "messaging.destination.name": queue}
            with self.tracer.span(f"{queue} publish", kind="producer",
                                  attributes=attributes) as span:
                carried = self.tracer.inject(_check_headers(headers))
                item = self._item(queue, payload, key, delay, idempotency_key, carried)
                ids = await self._guard(self.backend.enqueue(queue, [item]))
                span.set_attribute("messaging.message.id", ids[0])
        if ids[0] == item["id"]:
            self._inc("mq_enqueued_total", 1, {"queue": queue})
        return str(ids[0])

    async def enqueue_many(self, queue: str, payloads: Sequence[Any]) -> list[str]:
        """Add several messages in one round trip (one transaction on the database backend);
        their ids, in order."""
        check_queue(queue)
        self._queues.add(queue)
        self._start_pending()
        items = [self._item(queue, p, None, 0.0, None, None) for p in payloads]
        if not items:
            return []
        if self.tracer is not None:
            with self.tracer.span(f"{queue} publish", kind="producer", attributes={
                    "messaging.system": "onex", "messaging.operation.type": "send",
                    "messaging.destination.name": queue,
                    "messaging.batch.message_count": len(items)}):
                carried = self.tracer.inject({})
                for item in items:
                    item["headers"].update(carried)
                ids = await self._guard(self.backend.enqueue(queue, items))
        else:
            ids = await self._guard(self.backend.enqueue(queue, items))
        self._inc("mq_enqueued_total", len(items), {"queue": queue})
        return [str(i) for i in ids]

    # -- receive ---------------------------------------------------------------------------------

    def _message(self, queue: str, raw: Mapping[str, Any]) -> Message:
        return Message(id=raw["id"], queue=queue, payload=self.serializer.loads(raw["payload"]),
                       key=raw.get("key"), headers=dict(raw.get("headers") or {}),
                       delivery_count=int(raw["delivery_count"]),
                       enqueued_at=float(raw["enqueued_at"]), receipt=raw.get("receipt") or "",
                       _facility=self)

    async def receive(self, queue: str, max_messages: int = 1, wait: float = 0.0,
                      visibility_timeout: float | None = None) -> list[Message]:
        """Take up to ``max_messages`` ready messages, waiting up to ``wait`` seconds for the
        first; each stays invisible to other receivers for ``visibility_timeout`` seconds
        (default: the config's) unless acked, nacked or extended.

        Messages whose next delivery would exceed ``max_deliveries`` are dead-lettered
        (reason ``max_deliveries``) instead of returned.
        """
        check_queue(queue)
        if not isinstance(max_messages, int) or max_messages < 1:
            raise ValueError(f"max_messages must be an integer >= 1, got {max_messages!r}")
        vis = self.config.visibility_timeout if visibility_timeout is None else float(
            visibility_timeout)
        if vis <= 0:
            raise ValueError(f"visibility_timeout must be > 0 seconds, got {vis!r}")
        self._queues.add(queue)
        self._start_pending()
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, wait)
        while True:
            delivered, dead = await self._guard(self.backend.receive(queue, max_messages, vis))
            if dead:
                self._inc("mq_dead_lettered_total", len(dead), {"queue": queue,
                                                                 "reason": "max_deliveries"})
            if delivered:
                out = [self._message(queue, raw) for raw in delivered]
                self._inc("mq_delivered_total", len(out), {"queue": queue})
                redelivered = sum(1 for m in out if m.delivery_count > 1)
                if redelivered:
                    self._inc("mq_redelivered_total", redelivered, {"queue": queue})
                return out
            left = end - loop.time()
            if left <= 0:
                return []
            await self._idle(queue, min(left, self.config.poll_interval))

    async def _idle(self, queue: str, seconds: float) -> None:
        waiter = getattr(self.backend, "wait", None)
        if waiter is not None:
            await waiter(queue, seconds)
        else:
            await asyncio.sleep(seconds)

    # -- settling (Message methods) --------------------------------------------------------------

    async def _ack(self, msg: Message) -> None:
        await self._guard(self.backend.ack(msg.queue, msg.id, msg.receipt))
        self._inc("mq_acked_total", 1, {"queue": msg.queue})

    async def _nack(self, msg: Message, delay: float | None, reason: str | None) -> None:
        if delay is None:
            delay = self.config.retry_delay_for(msg.delivery_count)
        elif delay < 0 or delay != delay:
            raise ValueError(f"delay must be a number of seconds >= 0, got {delay!r}")
        await self._guard(self.backend.nack(msg.queue, msg.id, msg.receipt, float(delay),
                                            reason))
        self._inc("mq_nacked_total", 1, {"queue": msg.queue})

    async def _extend(self, msg: Message, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"seconds must be > 0, got {seconds!r}")
        await self._guard(self.backend.extend(msg.queue, msg.id, msg.receipt, float(seconds)))

    async def _dead_letter(self, msg: Message, reason: str, last_error: str | None) -> None:
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"reason must be a non-empty string, got {reason!r}")
        await self._guard(self.backend.dead_letter(msg.queue, msg.id, msg.receipt, reason[:200],
                                                   last_error))
        self._inc("mq_dead_lettered_total", 1, {"queue": msg.queue, "reason": reason[:200]})

    # -- dead letters, admin ----------------------------------------------------------------------

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The queue's dead letters, oldest first."""
        check_queue(queue)
        rows = await self._guard(self.backend.dead_letters(queue, limit))
        out = []
        for raw in rows:
            msg = self._message(queue, {**raw, "receipt": ""})
            out.append(DeadLetter(message=msg, reason=raw["reason"],
                                  last_error=raw.get("last_error"),
                                  delivery_count=int(raw["delivery_count"]),
                                  dead_at=float(raw["dead_at"])))
        return out

    async def redrive(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Move dead letters (all, or those with ``ids``) back to the queue with a fresh
        delivery count; how many moved."""
        check_queue(queue)
        result: int = await self._guard(self.backend.redrive(queue, ids))
        return result

    async def purge(self, queue: str) -> int:
        """Delete every live message of the queue (not its dead letters); how many."""
        check_queue(queue)
        result: int = await self._guard(self.backend.purge(queue))
        return result

    async def stats(self, queue: str) -> QueueStats:
        """Counts per state; also sets the ``mq_queue_depth{queue, state}`` gauge."""
        check_queue(queue)
        stats, _ = await self._stats(queue)
        return stats

    async def _stats(self, queue: str) -> tuple[QueueStats, float | None]:
        stats, oldest = await self._guard(self.backend.stats(queue))
        for state in ("ready", "in_flight", "delayed", "dead"):
            self._gauge("mq_queue_depth", getattr(stats, state), {"queue": queue,
                                                                   "state": state})
        return stats, oldest

    async def health(self) -> dict[str, Any]:
        """``healthy``; ``degraded`` when the backend is unreachable (or was within the last
        30 s) or a queue's oldest ready message is older than ``health_max_age``. Dead letters
        are reported but never degrade."""
        report: dict[str, Any] = {"status": "healthy", "backend": self.backend.describe,
                                  "queues": {}}
        problems: list[str] = []
        try:
            await self._guard(self.backend.ping())
            for queue in sorted(self._queues):
                stats, oldest = await self._stats(queue)
                report["queues"][queue] = {**stats.__dict__, "oldest_ready_age": oldest}
                if oldest is not None and oldest > self.config.health_max_age:
                    problems.append(f"queue {queue!r}: oldest ready message is {oldest:.0f}s old "
                                    f"(health_max_age {self.config.health_max_age:.0f}s)")
        except QueueError as exc:
            problems.append(f"backend unavailable: {_describe(exc)}")
        if not problems and self._error is not None and (
                time.monotonic() - self._error_at < _DEGRADED_WINDOW):
            problems.append(f"backend errors: {self._error}")
        if problems:
            report["status"] = "degraded"
            report["reason"] = "; ".join(problems)
        return report

    # -- consumers -------------------------------------------------------------------------------

    def consume(self, queue: str, handler: Handler, concurrency: int | None = None) -> Consumer:
        """Run ``handler(msg)`` for every message of ``queue``: returning acks, raising nacks
        with back-off (dead-letters at once when the exception has ``onex_retriable = False``).

        Starts on the running loop (or on the first loop that uses the queue / ``node.start()``
        when called outside one). ``await consumer.stop()`` or the node's ``aclose()`` ends it.
        """
        check_queue(queue)
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        n = self.config.consumer_concurrency if concurrency is None else concurrency
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {n!r}")
        self._queues.add(queue)
        consumer = Consumer(self, queue, handler, n)
        self._consumers.append(consumer)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return consumer
        consumer._start()
        return consumer

    def consume_into_process(self, queue: str, concurrency: int | None = None) -> Consumer:
        """Consume ``queue`` into ``node.process(payload)`` (under the message's trace context,
        correlation id and, with authentication, credentials)."""
        node = self.node
        if node is None or not callable(getattr(node, "process", None)):
            raise TypeError("consume_into_process needs a node with a process() method")

        async def into_process(msg: Message) -> None:
            result = node.process(msg.payload)
            if inspect.isawaitable(result):
                await result

        return self.consume(queue, into_process, concurrency)

    def _start_pending(self) -> None:
        for consumer in self._consumers:
            if not consumer._tasks and not consumer._stopped:
                consumer._start()

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        return tuple(self._consumers)

    async def start(self) -> None:
        """Start consumers registered outside a loop."""
        self._start_pending()

    async def aclose(self) -> None:
        """Stop every consumer (letting handlers in progress finish) and close the backend."""
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            await consumer.stop(drain=True)
        await self.backend.aclose()

    @contextlib.contextmanager
    def _handler_context(self, msg: Message) -> Iterator[None]:
        cid = msg.headers.get(_CORRELATION)
        token = _context.correlation_id.set(cid)
        ctoken = None
        if self.authentication:
            creds = _credentials_from(msg.headers.get("authorization"))
            ctoken = _context.credentials.set(creds)
        try:
            if self.tracer is None:
                yield
            else:
                attributes = {"messaging.system": "onex", "messaging.operation.type": "process",
                              "messaging.destination.name": msg.queue,
                              "messaging.message.id": msg.id,
                              "messaging.message.delivery_count": msg.delivery_count}
                with self.tracer.span(f"{msg.queue} process", kind="consumer",
                                      attributes=attributes, headers=msg.headers):
                    yield
        finally:
            if ctoken is not None:
                _context.credentials.reset(ctoken)
            _context.correlation_id.reset(token)


class Consumer:
    """A running consumer of one queue (from :meth:`MessageQueue.consume`).

    Attributes:
        queue: the queue consumed.
        concurrency: handlers running at once.
        handled: messages handled (acked, nacked or dead-lettered).
        failures: handler calls that raised.
    """

    def __init__(self, mq: MessageQueue, queue: str, handler: Handler, concurrency: int) -> None:
        self.mq = mq
        self.queue = queue
        self.handler = handler
        self.concurrency = concurrency
        self.handled = 0
        self.failures = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._held: dict[int, Message] = {}
        self._busy: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running" if self._tasks else "pending"
        return (f"<Consumer queue={self.queue!r} concurrency={self.concurrency} {state} "
                f"handled={self.handled} failures={self.failures}>")

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not self._stopped

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        batch = max(1, self.mq.config.prefetch // self.concurrency)
        if self.mq.config.ordering == "fifo" and self.concurrency == 1:
            batch = max(1, self.mq.config.prefetch)
        self._tasks = [loop.create_task(self._worker(batch), name=f"mq-consumer:{self.queue}")
                       for _ in range(self.concurrency)]
        self._tasks.append(loop.create_task(self._heartbeat(), name=f"mq-heartbeat:{self.queue}"))

    async def _worker(self, batch: int) -> None:
        mq = self.mq
        failures = 0
        while not self._stopping:
            task = asyncio.current_task()
            assert task is not None
            self._busy.discard(task)
            try:
                msgs = await mq.receive(self.queue, batch, wait=1.0)
                failures = 0
            except QueueUnavailableError:
                failures += 1
                await asyncio.sleep(min(5.0, 0.05 * 2 ** min(failures, 7)))
                continue
            except Exception as exc:
                failures += 1
                logger.opt(exception=True).error("message_queue: consumer of {!r} cannot "
                                                 "receive: {}", self.queue, _describe(exc))
                await asyncio.sleep(min(5.0, 0.05 * 2 ** min(failures, 7)))
                continue
            self._busy.add(task)
            for msg in msgs:
                self._held[id(msg)] = msg
            for n, msg in enumerate(msgs):
                if self._stopping:
                    for rest in msgs[n:]:  # not started: give them back at once
                        self._held.pop(id(rest), None)
                        with contextlib.suppress(QueueError):
                            await rest.nack(delay=0.0, reason="consumer stopped")
                    break
                try:
                    await self._handle(msg)
                finally:
                    self._held.pop(id(msg), None)
        task = asyncio.current_task()
        self._busy.discard(task)  # type: ignore[arg-type]

    async def _handle(self, msg: Message) -> None:
        mq = self.mq
        t0 = time.perf_counter()
        try:
            with mq._handler_context(msg):
                result = self.handler(msg)
                if inspect.isawaitable(result):
                    await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures += 1
            error = _describe(exc)
            try:
                if msg.settled:
                    pass
                elif getattr(exc, "onex_retriable", None) is False:
                    await mq._dead_letter(msg, "rejected", error)
                    msg._done = True
                else:
                    await msg.nack(reason=error)
            except StaleReceiptError:
                logger.warning("message_queue: message {} of {!r} was redelivered while its "
                               "handler ran (visibility lapsed)", msg.id, self.queue)
            except QueueError as qerr:
                logger.warning("message_queue: cannot settle message {} of {!r}: {}", msg.id,
                               self.queue, _describe(qerr))
        else:
            if not msg.settled:
                try:
                    await msg.ack()
                except StaleReceiptError:
                    logger.warning("message_queue: message {} of {!r} was redelivered while its "
                                   "handler ran (visibility lapsed): it may be processed twice",
                                   msg.id, self.queue)
                except QueueError as qerr:
                    logger.warning("message_queue: cannot ack message {} of {!r}: {} (it will "
                                   "be redelivered)", msg.id, self.queue, _describe(qerr))
        finally:
            self.handled += 1
            mq._hist("mq_handler_duration_seconds", time.perf_counter() - t0, None)

    async def _heartbeat(self) -> None:
        vis = self.mq.config.visibility_timeout
        while not self._stopped:
            await asyncio.sleep(vis / 3)
            for key, msg in list(self._held.items()):
                if msg.settled:
                    continue
                try:
                    await msg.extend(vis)
                except StaleReceiptError:
                    self._held.pop(key, None)
                except QueueError:
                    pass

    async def stop(self, drain: bool = True) -> None:
        """Stop receiving. ``drain``: handlers in progress finish (and settle) first; else they
        are cancelled and their messages come back after the visibility timeout. Idempotent."""
        if self._stopped:
            return
        self._stopping = True
        tasks = self._tasks
        if not tasks:
            self._stopped = True
            return
        workers, heartbeat = tasks[:-1], tasks[-1]
        current = asyncio.get_running_loop()
        if self._loop is not current:  # the loop that ran us is gone: nothing left to await
            for t in tasks:
                if not t.done() and self._loop is not None and not self._loop.is_closed():
                    self._loop.call_soon_threadsafe(t.cancel)
            self._stopped = True
            return
        for t in workers:
            if not drain or t not in self._busy:
                t.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        self._stopped = True
        heartbeat.cancel()
        await asyncio.gather(heartbeat, return_exceptions=True)
        if self in self.mq._consumers:
            self.mq._consumers.remove(self)
