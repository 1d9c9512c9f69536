"""The ``rabbitmq`` backend of message_queue: RabbitMQ quorum queues through aio-pika.

Topology per queue (declared on first use on each event loop's connection):

* ``<ns>.mq.<queue>``: durable quorum queue, ``x-delivery-limit = max_deliveries - 1`` (a
  backstop for immediate requeues: RabbitMQ counts *returns*), dead-lettering to the fanout
  exchange ``<ns>.mq.<queue>.dlx``. No ``x-single-active-consumer``: RabbitMQ 3.10 refuses
  ``basic.get`` on a quorum queue with a single active consumer (``RESOURCE_LOCKED``), and
  ``basic.get`` already hands out the queue's head in enqueue order (``fifo``);
* ``<ns>.mq.<queue>.dead``: durable quorum queue bound to the DLX (the dead letters);
* ``<ns>.mq.<queue>.wait.<2^k>``: durable queues with a message TTL of ``2^k`` seconds that
  dead-letter back into the main queue: a delay (enqueue ``delay`` or a nack delay) is rounded
  **up** to the next power of two seconds (so it is never shortened, and at most doubled).

Semantics on this backend:

* Messages are taken with ``basic.get``; the delivery count is the facility's own count carried
  in the ``x-onex-deliveries`` header (a delayed nack travels through a wait queue and comes
  back as a new delivery, which ``x-delivery-limit`` does not count) plus ``x-delivery-count``
  (returns) plus one. Past ``max_deliveries`` the facility dead-letters explicitly, with reason
  and last error.
* The visibility timeout is enforced client-side: a message taken with ``receive()`` and
  neither acked nor extended in time is requeued by the facility, and acking it later raises
  :class:`StaleReceiptError`. A crashed process's messages return when its connection closes.
* A nack republishes the message (to the main queue, or through a wait queue when delayed)
  with its delivery count and last error in the headers, then acks the original (publisher
  confirms first, so nothing is lost; a crash in between may duplicate, never drop).
* ``ordering: key`` raises :class:`ConfigurationError` at setup and idempotency keys raise
  :class:`UnsupportedFeatureError` (no broker-side deduplication without a plugin).
* ``stats().in_flight`` counts the deliveries this process holds (RabbitMQ reports only ready
  messages), and the age of the oldest ready message cannot be read without consuming it, so
  health does not report it on this backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from onex_compose.capabilities.message_queue._model import (
    MessageQueueConfig,
    QueueError,
    QueueStats,
    QueueUnavailableError,
    StaleReceiptError,
)

__all__ = ["DEFAULT_AMQP_URL", "RabbitMQBackend", "amqp_url", "wait_seconds"]

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
_H_COUNT = "x-onex-deliveries"
_H_KEY = "x-onex-key"
_H_ENQ = "x-onex-enqueued-at"
_H_ERR = "x-onex-error"
_H_REASON = "x-onex-reason"
_H_DEAD_AT = "x-onex-dead-at"
_OWN = (_H_COUNT, _H_KEY, _H_ENQ, _H_ERR, _H_REASON, _H_DEAD_AT)
_MAX_WAIT_EXP = 25  # 2**25 s, about a year
_BROKER = ("x-delivery-count", "x-death", "x-first-death-", "x-last-death-")


def _user(headers: Mapping[str, Any]) -> dict[str, str]:
    """The caller's headers: without ours and the broker's (delivery count, death records)."""
    return {k: _text(v) or "" for k, v in headers.items()
            if k not in _OWN and not k.startswith(_BROKER)}


def amqp_url(configured: str | None = None) -> str:
    """The URL to use: the configured one, else ``ONEX_AMQP_URL``, else the local broker."""
    return configured or os.environ.get("ONEX_AMQP_URL") or DEFAULT_AMQP_URL


def wait_seconds(delay: float) -> int:
    """The wait queue a delay goes through: the next power of two seconds (>= ``delay``).

    Example:
        >>> [wait_seconds(d) for d in (0.2, 1, 1.5, 5, 60)]
        [1, 1, 2, 8, 64]
    """
    if delay <= 1:
        return 1
    return int(2 ** min(_MAX_WAIT_EXP, math.ceil(math.log2(delay))))


def _channel_of(message: Any) -> Any:
    """The message's channel, or ``None`` once it is closed (aio-pika raises then)."""
    try:
        channel = message.channel
    except Exception:
        return None
    return None if channel.is_closed else channel


def _scrub(text: str) -> str:
    from onex_compose._redact import scrub_text

    return scrub_text(text)


class _Held:
    """A delivery taken with ``receive()``: visible again (requeued) at ``deadline`` (loop
    time) unless settled or extended first."""

    __slots__ = ("deadline", "loop", "message", "queue")

    def __init__(self, message: Any, queue: str, loop: asyncio.AbstractEventLoop,
                 deadline: float) -> None:
        self.message = message
        self.queue = queue
        self.loop = loop
        self.deadline = deadline


class _Link:
    """One event loop's connection, channel and declared queues."""

    def __init__(self, connection: Any, channel: Any) -> None:
        self.connection = connection
        self.channel = channel
        self.declared: dict[str, Any] = {}
        self.exchanges: dict[str, Any] = {}


class RabbitMQBackend:
    """Messages in RabbitMQ quorum queues (see the module docstring)."""

    name = "rabbitmq"
    supports_idempotency = False

    def __init__(self, config: MessageQueueConfig, clock: Any = time.time) -> None:
        self.config = config
        self.clock = clock
        self._links: dict[asyncio.AbstractEventLoop, _Link] = {}
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._held: dict[str, _Held] = {}
        # visibility: one heap of (deadline, token) and one timer at its earliest deadline,
        # rather than a timer per delivery; settled or extended entries are skipped lazily
        self._deadlines: list[tuple[float, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.declared: set[str] = set()

    def __repr__(self) -> str:
        return f"<RabbitMQBackend namespace={self.config.namespace!r}>"

    @property
    def describe(self) -> str:
        return "rabbitmq (quorum queues)"

    # -- names -----------------------------------------------------------------------------------

    def _main(self, queue: str) -> str:
        return f"{self.config.namespace}.mq.{queue}"

    # -- connection ------------------------------------------------------------------------------

    async def _link(self) -> _Link:
        loop = asyncio.get_running_loop()
        link = self._links.get(loop)
        if link is not None and not link.connection.is_closed and not link.channel.is_closed:
            return link
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        async with lock:  # one connection per loop, however many callers arrive at once
            return await self._connect(loop)

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Link:
        link = self._links.get(loop)
        if link is not None and not link.connection.is_closed and not link.channel.is_closed:
            return link
        import aio_pika

        try:
            connection = await aio_pika.connect(amqp_url(self.config.amqp_url), timeout=5)
            channel = await connection.channel(publisher_confirms=True)
        except Exception as exc:
            raise QueueUnavailableError(
                f"message_queue: RabbitMQ is unavailable ({_scrub(str(exc)) or type(exc).__name__})"
            ) from exc
        if link is not None:
            with contextlib.suppress(Exception):
                await link.connection.close()
        link = self._links[loop] = _Link(connection, channel)
        return link

    async def _queue(self, link: _Link, queue: str) -> Any:
        main = self._main(queue)
        found = link.declared.get(main)
        if found is not None:
            return found
        import aio_pika

        ch = link.channel
        dlx = await ch.declare_exchange(f"{main}.dlx", aio_pika.ExchangeType.FANOUT, durable=True)
        dead = await ch.declare_queue(f"{main}.dead", durable=True,
                                      arguments={"x-queue-type": "quorum"})
        await dead.bind(dlx)
        args: dict[str, Any] = {"x-queue-type": "quorum",
                                "x-delivery-limit": max(0, self.config.max_deliveries - 1),
                                "x-dead-letter-exchange": f"{main}.dlx"}
        q = await ch.declare_queue(main, durable=True, arguments=args)
        link.declared[main] = q
        link.declared[f"{main}.dead"] = dead
        link.exchanges[main] = dlx
        self.declared.update({main, f"{main}.dead", f"{main}.dlx"})
        return q

    async def _wait_queue(self, link: _Link, queue: str, seconds: int) -> str:
        main = self._main(queue)
        name = f"{main}.wait.{seconds}"
        if name not in link.declared:
            link.declared[name] = await link.channel.declare_queue(
                name, durable=True, arguments={
                    "x-message-ttl": seconds * 1000, "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": main})
            self.declared.add(name)
        return name

    async def _drop_link(self) -> None:
        """Forget this loop's connection (the next call reconnects) and the deliveries held on
        it (the broker requeues them when the connection goes)."""
        link = self._links.pop(asyncio.get_running_loop(), None)
        for token, held in list(self._held.items()):
            channel = _channel_of(held.message)
            if link is None or channel is None or channel is link.channel:
                self._held.pop(token, None)
        if link is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link.connection.close(), 2)

    async def _run(self, fn: Any, *args: Any) -> Any:
        from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

        try:
            try:
                return await fn(*args)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # our caller is being cancelled
                # aiormq cancels a pending RPC when the broker closes the connection
                raise ConnectionError(str(exc) or "connection closed") from exc
        except (QueueError, StaleReceiptError):
            raise
        except (TimeoutError, ConnectionError, OSError, AMQPError,
                ChannelInvalidStateError, RuntimeError) as exc:
            from aio_pika.exceptions import ChannelClosed

            if isinstance(exc, ChannelClosed) and "PRECONDITION_FAILED" in str(exc):
                await self._drop_link()
                raise QueueError(f"message_queue: RabbitMQ refused a declaration "
                                 f"({_scrub(str(exc))}): the queue exists with other "
                                 "arguments (max_deliveries?); delete it or use another "
                                 "namespace") from exc
            await self._drop_link()
            raise QueueUnavailableError(
                f"message_queue: RabbitMQ is unavailable ({_scrub(str(exc)) or type(exc).__name__})"
            ) from exc

    def _message(self, body: bytes, mid: str, headers: Mapping[str, Any]) -> Any:
        import aio_pika

        return aio_pika.Message(body, message_id=mid, headers=dict(headers),
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT)

    async def _publish(self, link: _Link, routing_key: str, message: Any) -> None:
        await link.channel.default_exchange.publish(message, routing_key=routing_key)

    # -- enqueue ---------------------------------------------------------------------------------

    async def enqueue(self, queue: str, items: Sequence[Mapping[str, Any]]) -> list[str]:
        return list(await self._run(self._enqueue, queue, items))

    async def _enqueue(self, queue: str, items: Sequence[Mapping[str, Any]]) -> list[str]:
        link = await self._link()
        await self._queue(link, queue)
        enq = repr(self.clock())
        sends = []
        for item in items:
            # the delivery count header is left out (absent = 0) until a nack carries it
            headers: dict[str, Any] = dict(item.get("headers") or {})
            headers[_H_ENQ] = enq
            if item.get("key") is not None:
                headers[_H_KEY] = item["key"]
            delay = float(item.get("delay") or 0.0)
            target = self._main(queue)
            if delay > 0:
                target = await self._wait_queue(link, queue, wait_seconds(delay))
            sends.append(self._publish(link, target, self._message(item["payload"], item["id"],
                                                                    headers)))
        if len(sends) == 1:
            await sends[0]  # no task for a single publish
        else:
            await asyncio.gather(*sends)
        return [item["id"] for item in items]

    # -- receive ---------------------------------------------------------------------------------

    async def receive(self, queue: str, max_messages: int, visibility: float
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        result: tuple[list[dict[str, Any]], list[dict[str, Any]]] = await self._run(
            self._receive, queue, max_messages, visibility)
        return result

    async def _receive(self, queue: str, max_messages: int, visibility: float
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        link = await self._link()
        q = await self._queue(link, queue)
        loop = asyncio.get_running_loop()
        delivered: list[dict[str, Any]] = []
        dead: list[dict[str, Any]] = []
        while len(delivered) < max_messages:
            msg = await q.get(no_ack=False, fail=False, timeout=5)
            if msg is None:
                break
            headers = dict(msg.headers or {})
            count = int(headers.get(_H_COUNT) or 0) + int(headers.get("x-delivery-count") or 0)
            count += 1
            if count > self.config.max_deliveries:
                await self._bury(link, queue, msg, headers, "max_deliveries",
                                 _text(headers.get(_H_ERR)), count - 1)
                dead.append({})
                continue
            token = uuid.uuid4().hex
            held = self._held[token] = _Held(msg, queue, loop, loop.time() + visibility)
            self._watch(token, held)
            user = _user(headers)
            delivered.append({
                "id": msg.message_id or token, "payload": bytes(msg.body),
                "key": _text(headers.get(_H_KEY)), "headers": user,
                "enqueued_at": float(_text(headers.get(_H_ENQ)) or 0.0),
                "delivery_count": count, "receipt": token})
        return delivered, dead

    def _watch(self, token: str, held: _Held) -> None:
        """Track ``held.deadline``; (re)arm the timer when it is the earliest one."""
        heapq.heappush(self._deadlines, (held.deadline, token))
        loop = held.loop
        if self._timer is None or self._timer_loop is not loop or held.deadline < self._timer_at:
            self._arm(loop, held.deadline)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(at, self._sweep)
        self._timer_at = at
        self._timer_loop = loop

    def _sweep(self) -> None:
        """Requeue the deliveries whose visibility lapsed (neither settled nor extended)."""
        loop = asyncio.get_running_loop()
        self._timer = None
        now = loop.time()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, token = heapq.heappop(heap)
            held = self._held.get(token)
            if held is None or held.deadline != deadline or held.loop is not loop:
                continue  # settled, extended (a later entry stands), or another loop's
            del self._held[token]
            task = loop.create_task(self._requeue(held.message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if heap:
            self._arm(loop, heap[0][0])

    @staticmethod
    async def _requeue(message: Any) -> None:
        with contextlib.suppress(Exception):  # a closed channel requeues it anyway
            await message.nack(requeue=True)

    async def _bury(self, link: _Link, queue: str, msg: Any, headers: Mapping[str, Any],
                    reason: str, last_error: str | None, count: int) -> None:
        await self._queue(link, queue)
        dead_headers = dict(headers)
        dead_headers.update({_H_REASON: reason, _H_ERR: last_error or "", _H_COUNT: count,
                             _H_DEAD_AT: repr(self.clock())})
        dead_headers.pop("x-delivery-count", None)
        dlx = link.exchanges[self._main(queue)]
        await dlx.publish(self._message(bytes(msg.body), msg.message_id or "", dead_headers),
                          routing_key="")
        await msg.ack()

    def _take(self, queue: str, mid: str, receipt: str, what: str) -> _Held:
        held = self._held.pop(receipt, None)
        if held is None or _channel_of(held.message) is None:
            raise StaleReceiptError(
                f"cannot {what} message {mid} of queue {queue!r}: its receipt is stale (the "
                "visibility timeout lapsed and it was requeued, its connection closed, or it "
                "was already settled); it may have been processed twice")
        return held

    # -- settle ----------------------------------------------------------------------------------

    async def ack(self, queue: str, mid: str, receipt: str) -> None:
        held = self._take(queue, mid, receipt, "ack")
        await self._run(held.message.ack)

    async def nack(self, queue: str, mid: str, receipt: str, delay: float,
                   reason: str | None) -> None:
        held = self._take(queue, mid, receipt, "nack")
        await self._run(self._nack, queue, held, delay, reason)

    async def _nack(self, queue: str, held: _Held, delay: float, reason: str | None) -> None:
        link = await self._link()
        msg = held.message
        headers = dict(msg.headers or {})
        count = int(headers.get(_H_COUNT) or 0) + int(headers.get("x-delivery-count") or 0) + 1
        headers[_H_COUNT] = count
        headers.pop("x-delivery-count", None)
        headers.pop("x-death", None)
        headers.pop("x-first-death-exchange", None)
        headers.pop("x-first-death-queue", None)
        headers.pop("x-first-death-reason", None)
        if reason is not None:
            headers[_H_ERR] = reason
        target = self._main(queue)
        if delay > 0:
            target = await self._wait_queue(link, queue, wait_seconds(delay))
        await self._publish(link, target, self._message(bytes(msg.body), msg.message_id or "",
                                                        headers))
        await msg.ack()

    async def extend(self, queue: str, mid: str, receipt: str, seconds: float) -> None:
        held = self._held.get(receipt)
        if held is None or _channel_of(held.message) is None:
            raise StaleReceiptError(
                f"cannot extend message {mid} of queue {queue!r}: its receipt is stale")
        loop = asyncio.get_running_loop()
        held.loop = loop
        held.deadline = loop.time() + seconds
        self._watch(receipt, held)

    async def dead_letter(self, queue: str, mid: str, receipt: str, reason: str,
                          last_error: str | None) -> None:
        held = self._take(queue, mid, receipt, "dead-letter")

        async def bury() -> None:
            link = await self._link()
            headers = dict(held.message.headers or {})
            count = int(headers.get(_H_COUNT) or 0) + int(headers.get("x-delivery-count") or 0)
            await self._bury(link, queue, held.message, headers, reason,
                             last_error if last_error is not None else _text(headers.get(_H_ERR)),
                             count + 1)

        await self._run(bury)

    # -- dead letters, admin ----------------------------------------------------------------------

    async def _browse(self, queue: str, limit: int | None, take: Any) -> int:
        """Get dead letters on a channel of their own; ``take(msg)`` returns whether to ack it;
        the others return to the queue when the channel closes."""
        link = await self._link()
        await self._queue(link, queue)
        channel = await link.connection.channel()
        n = 0
        try:
            dq = await channel.declare_queue(f"{self._main(queue)}.dead", passive=True)
            while limit is None or n < limit:
                msg = await dq.get(no_ack=False, fail=False, timeout=5)
                if msg is None:
                    break
                n += 1
                if await take(link, msg):
                    await msg.ack()
        finally:
            await channel.close()
        return n

    async def dead_letters(self, queue: str, limit: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []

        async def keep(_: _Link, msg: Any) -> bool:
            h = dict(msg.headers or {})
            reason = _text(h.get(_H_REASON))
            count = int(h.get(_H_COUNT) or 0)
            dead_at = float(_text(h.get(_H_DEAD_AT)) or 0.0)
            if reason is None:  # dead-lettered by the broker's x-delivery-limit backstop:
                # returns past the limit (limit + 1 deliveries) after the carried count
                reason = "max_deliveries"
                count += max(0, self.config.max_deliveries - 1) + 1
                deaths = h.get("x-death") or []
                when: Any = deaths[0].get("time") if deaths and isinstance(
                    deaths[0], dict) else None
                if hasattr(when, "timestamp"):
                    dead_at = float(when.timestamp())
            out.append({
                "id": msg.message_id or "", "payload": bytes(msg.body),
                "key": _text(h.get(_H_KEY)),
                "headers": _user(h),
                "enqueued_at": float(_text(h.get(_H_ENQ)) or 0.0),
                "delivery_count": count,
                "reason": reason, "last_error": _text(h.get(_H_ERR)) or None,
                "dead_at": dead_at})
            return False

        await self._run(self._browse, queue, limit, keep)
        return out

    async def redrive(self, queue: str, ids: Sequence[str] | None) -> int:
        wanted = None if ids is None else set(ids)
        moved = 0

        async def move(link: _Link, msg: Any) -> bool:
            nonlocal moved
            if wanted is not None and msg.message_id not in wanted:
                return False
            headers: dict[str, Any] = {**_user(dict(msg.headers or {}))}
            for own in (_H_KEY, _H_ENQ):
                if (msg.headers or {}).get(own) is not None:
                    headers[own] = msg.headers[own]
            headers[_H_COUNT] = 0
            await self._publish(link, self._main(queue),
                                self._message(bytes(msg.body), msg.message_id or "", headers))
            moved += 1
            return True

        await self._run(self._browse, queue, None, move)
        return moved

    async def purge(self, queue: str) -> int:
        result: int = await self._run(self._purge, queue)
        return result

    async def _purge(self, queue: str) -> int:
        link = await self._link()
        q = await self._queue(link, queue)
        n = 0
        for token, held in list(self._held.items()):
            if held.queue == queue:
                self._held.pop(token, None)
                with contextlib.suppress(Exception):
                    await held.message.ack()
                n += 1
        res = await q.purge()
        n += int(getattr(res, "message_count", 0) or 0)
        main = self._main(queue)
        for name, wq in list(link.declared.items()):
            if name.startswith(f"{main}.wait."):
                res = await wq.purge()
                n += int(getattr(res, "message_count", 0) or 0)
        return n

    async def stats(self, queue: str) -> tuple[QueueStats, float | None]:
        result: tuple[QueueStats, float | None] = await self._run(self._stats, queue)
        return result

    async def _stats(self, queue: str) -> tuple[QueueStats, float | None]:
        link = await self._link()
        await self._queue(link, queue)
        main = self._main(queue)
        channel = await link.connection.channel()
        try:
            ready = (await channel.declare_queue(main, passive=True)).declaration_result
            dead = (await channel.declare_queue(f"{main}.dead", passive=True)).declaration_result
            delayed = 0
            for name in list(link.declared):
                if name.startswith(f"{main}.wait."):
                    wq = await channel.declare_queue(name, passive=True)
                    delayed += int(wq.declaration_result.message_count or 0)
        finally:
            await channel.close()
        flying = sum(1 for h in self._held.values() if h.queue == queue)
        stats = QueueStats(ready=int(ready.message_count or 0), in_flight=flying,
                           delayed=delayed, dead=int(dead.message_count or 0))
        return stats, None

    async def ping(self) -> None:
        await self._run(self._link)

    async def aclose(self) -> None:
        """Requeue the deliveries still held, close this loop's connection."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadlines.clear()
        for token, held in list(self._held.items()):
            self._held.pop(token, None)
            with contextlib.suppress(Exception):
                await held.message.nack(requeue=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        link = self._links.pop(loop, None)
        self._locks.pop(loop, None)
        if link is not None:
            with contextlib.suppress(Exception):
                await link.connection.close()
                # aio-pika finishes its close callbacks in a task of its own: wait for it
                await asyncio.wait_for(link.connection.closed(), 5)
            for _ in range(3):
                await asyncio.sleep(0)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    return str(value)
