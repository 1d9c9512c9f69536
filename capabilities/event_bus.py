"""The ``event_bus`` capability: publish/subscribe between nodes, in-process or through Redis.

``self.event_bus`` is an :class:`EventBus`: ``await publish(topic, payload)`` and
``subscribe(topic, handler)``. Handlers receive an :class:`Event` envelope (``id``, ``topic``,
``payload``, ``timestamp``, ``source`` node id, ``correlation_id`` from the current context).

Delivery, the same on both backends:

* **Fan-out**: every subscription whose topic matches receives every event published after it
  became active. Subscriptions are shared by *namespace*: nodes in one process (memory) or on
  one Redis (redis) with the same ``namespace`` see each other's events; other namespaces do
  not.
* **Asynchronous, ordered per subscriber**: ``publish`` enqueues and returns; each subscription
  has its own queue and worker task, so one subscriber receives a topic's events in publish
  order and a slow subscriber never blocks the publisher or the others. ``await bus.drain()``
  waits until everything published so far has been handled.
* **Isolated failures**: a handler that raises is logged and counted
  (``event_handler_errors_total``); the publisher and the other handlers never see it, and the
  subscription keeps receiving.
* **At most once**: the memory backend loses nothing while the process lives, but a full
  subscriber queue (``max_pending``) drops new events (counted in ``events_dropped_total``).
  The Redis backend uses pub/sub: events published while a subscriber is disconnected are not
  redelivered (use a message queue for durable delivery). A publish that cannot reach Redis
  raises :class:`EventPublishError` (retriable).
* **Topics** are dot-separated tokens (``"orders.eu.paid"``: non-empty tokens, no whitespace).
  A subscription topic may use NATS/AMQP token wildcards, with the same meaning on every
  backend: ``*`` matches exactly one token (``"orders.*"`` matches ``"orders.created"`` but
  not ``"orders.eu.paid"`` nor ``"orders"``) and ``>``, only as the last token, matches one
  or more tokens (``"orders.>"`` matches both, not ``"orders"``). A wildcard is a whole token:
  ``"orders.eu*"`` and ``"a.>.b"`` are rejected with :class:`EventBusError`, and so is a
  published topic containing one. (Up to 0.1.0, ``*`` matched any run of characters, dots
  included: subscribe to ``"orders.>"`` where ``"orders.*"`` meant "anything below".)

``subscribe`` is a plain method so it can be called anywhere (also outside an event loop); it
returns a :class:`Subscription` that can be awaited to wait until the subscription is
confirmed by Redis (``sub = await bus.subscribe(...)``; a no-op on the memory backend).
``unsubscribe()`` stops delivery at once. ``aclose()`` (the node's ``close_event_bus``) lets
queued events finish for up to ``drain_timeout`` seconds, then cancels every worker and the
Redis listener: no task is left behind.

Why the fan-out is written here: no maintained asyncio library offers in-process pub/sub with
per-subscriber ordering, failure isolation and cross-loop delivery (pyee and blinker call
handlers inline, so a slow or failing handler blocks or breaks the publisher), and the Redis
side is redis-py's pub/sub behind the shared :class:`~onex_compose.capabilities._redis.PubSubListener`.

Example:
    >>> import asyncio
    >>> from onex_compose import NodeCompute, compose
    >>> node = compose(NodeCompute, ["event_bus"])(
    ...     capability_config={"event_bus": {"namespace": "doc"}})
    >>> seen = []
    >>> async def demo():
    ...     node.event_bus.subscribe("orders.*", lambda event: seen.append(event.payload))
    ...     await node.event_bus.publish("orders.created", {"id": 1})
    ...     await node.event_bus.drain()
    ...     await node.aclose()
    >>> asyncio.run(demo())
    >>> seen
    [{'id': 1}]
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import re
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities import _context
from onex_compose.capabilities._codecs import Codec as _Codec
from onex_compose.capabilities._codecs import check_serializer, codec
from onex_compose.capabilities._log import logger
from onex_compose.capabilities._redis import check_redis_url, require_client
from onex_compose.exceptions import OnexError

__all__ = [
    "Event",
    "EventBus",
    "EventBusConfig",
    "EventBusError",
    "EventBusProtocol",
    "EventPublishError",
    "MixinEventBus",
    "Subscription",
]

Handler = Callable[["Event"], Any]


class EventBusError(OnexError, ValueError):
    """A bad topic, handler or payload (a programming error: not retriable)."""

    onex_retriable = False


class EventPublishError(OnexError, ConnectionError):
    """The Redis backend could not publish (the server is unreachable): retriable."""

    onex_retriable = True


# -- configuration ---------------------------------------------------------------------------


class EventBusConfig(BaseModel):
    """The ``event_bus`` subcontract (node contract key ``event_type``, as in seed 000).

    Example:
        >>> EventBusConfig(backend="redis", namespace="orders").namespace
        'orders'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["memory", "redis"] = Field(
        default="memory", description="memory: in-process fan-out; redis: pub/sub between "
                                      "processes")
    redis_url: str | None = Field(
        default=None, description="None: ONEX_REDIS_URL, else redis://127.0.0.1:6379/0")
    namespace: str = Field(default="onex", min_length=1,
                           description="who sees whose events; Redis channel prefix")
    source: str | None = Field(default=None, description="envelope source; None: the node id")
    serializer: str = Field(
        default="json",
        description="Redis envelope encoding: 'json', 'pickle', or 'module:object' with "
                    "dumps/loads")
    max_pending: int = Field(default=10_000, ge=1,
                             description="queued events per subscriber before new ones drop")
    drain_timeout: float = Field(default=5.0, ge=0,
                                 description="seconds aclose() lets queued events finish")
    redis_timeout: float = Field(default=1.0, gt=0, description="Redis connect/command timeout")
    reconnect_interval: float = Field(
        default=1.0, gt=0, description="seconds between attempts to resubscribe after a loss")

    @field_validator("serializer")
    @classmethod
    def _check_serializer(cls, value: str) -> str:
        return check_serializer(value)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        return check_redis_url(value)

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if any(c.isspace() for c in value) or "*" in value:
            raise ValueError(f"namespace must not contain whitespace or '*', got {value!r}")
        return value


@runtime_checkable
class EventBusProtocol(Protocol):
    """What nodes call on ``self.event_bus``."""

    async def publish(self, topic: str, payload: Any = None, *,
                      headers: Mapping[str, str] | None = None) -> Event: ...

    def subscribe(self, topic: str, handler: Handler) -> Subscription: ...


# -- the envelope ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """One published event, as every handler receives it.

    Attributes:
        topic: where it was published.
        payload: what the publisher passed, as it was at publish time: a copy taken by
            ``publish`` in-process (shared by that event's subscribers, so handlers should not
            change it), a decoded copy from Redis.
        id: unique (hex UUID4).
        timestamp: wall-clock seconds since the epoch at publish time.
        source: the publishing node's id (or the configured ``source``).
        correlation_id: the request being served when it was published
            (``onex_compose.capabilities._context.correlation_id``), or ``None``.
        headers: transport headers (string to string), or ``None``: what the publisher passed,
            plus ``traceparent`` (and ``tracestate``/``baggage``) when the node has tracing.
    """

    topic: str
    payload: Any
    id: str
    timestamp: float
    source: str | None = None
    correlation_id: str | None = None
    headers: Mapping[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a plain dict (what the Redis backend sends); ``headers`` only when
        there are some, so envelopes without them look as they always did."""
        data = {"id": self.id, "topic": self.topic, "payload": self.payload,
                "timestamp": self.timestamp, "source": self.source,
                "correlation_id": self.correlation_id}
        if self.headers is not None:
            data["headers"] = dict(self.headers)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """Rebuild an envelope from :meth:`to_dict` output (an envelope without ``headers``, as
        older publishers send, gives ``headers=None``; non-string header values are dropped).

        Example:
            >>> Event.from_dict({"id": "1", "topic": "t", "timestamp": 0.0}).headers is None
            True
        """
        headers = data.get("headers")
        if headers is not None:
            headers = {k: v for k, v in headers.items()
                       if isinstance(k, str) and isinstance(v, str)} \
                if isinstance(headers, Mapping) else None
        return cls(topic=data["topic"], payload=data.get("payload"), id=data["id"],
                   timestamp=data["timestamp"], source=data.get("source"),
                   correlation_id=data.get("correlation_id"), headers=headers)


# -- topics ----------------------------------------------------------------------------------


_WILDCARDS = ("*", ">")


def _check_topic(topic: Any, *, wildcard: bool) -> re.Pattern[str] | None:
    """Validate a topic; return the compiled matcher of a wildcard subscription, else ``None``.

    Args:
        topic: a published topic (``wildcard=False``) or a subscription topic.
        wildcard: whether ``*`` and ``>`` tokens are allowed (subscriptions only).

    Raises:
        EventBusError: the topic is not a non-empty string of non-empty dot-separated tokens
            without whitespace, or uses a wildcard where it is not allowed.
    """
    if not isinstance(topic, str) or not topic:
        raise EventBusError(f"a topic is a non-empty string, got {topic!r}")
    return _parse_topic(topic, wildcard)


@functools.lru_cache(maxsize=4096)
def _parse_topic(topic: str, wildcard: bool) -> re.Pattern[str] | None:
    # cached: publishing to a known topic costs one dict lookup, not a re-validation
    if any(c.isspace() for c in topic):
        raise EventBusError(f"a topic must not contain whitespace, got {topic!r}")
    if "*" not in topic and ">" not in topic:
        if "" in topic.split("."):
            raise EventBusError(
                f"topic {topic!r} has an empty token: tokens are separated by single dots "
                "('orders.eu.paid'), with no leading, trailing or doubled dot")
        return None
    tokens = topic.split(".")
    parts = []
    for i, token in enumerate(tokens):
        if not token:
            raise EventBusError(
                f"topic {topic!r} has an empty token: tokens are separated by single dots "
                "('orders.*.paid'), with no leading, trailing or doubled dot")
        if token not in _WILDCARDS:
            if "*" in token or ">" in token:
                raise EventBusError(
                    f"topic {topic!r}: the token {token!r} mixes a wildcard with other "
                    "characters; '*' and '>' are whole tokens ('orders.*' matches one token, "
                    "'orders.>' one or more): write 'orders.*', not 'orders.eu*'")
            parts.append(re.escape(token))
            continue
        if not wildcard:
            raise EventBusError(
                f"cannot publish to {topic!r}: {token!r} is a wildcard, allowed in "
                "subscriptions only; publish to a concrete topic such as 'orders.created'")
        if token == "*":
            parts.append(r"[^.]+")
        elif i != len(tokens) - 1:
            raise EventBusError(
                f"topic {topic!r}: '>' matches the remaining tokens, so it may only be the "
                "last token ('orders.>'); use '*' for one token in the middle ('orders.*.paid')")
        else:
            parts.append(r"[^.]+(?:\.[^.]+)*")
    return re.compile(r"\.".join(parts), re.DOTALL)


def _glob(topic: str) -> str:
    """A Redis glob matching at least the topics the token pattern ``topic`` matches (Redis
    ``*`` also crosses dots: deliveries are filtered by the token rules client-side)."""
    return ".".join("*" if t in _WILDCARDS else _glob_escape(t) for t in topic.split("."))


def _glob_escape(text: str) -> str:
    special = "*?[]\\"
    return "".join("\\" + c if c in special else c for c in text)


# -- subscriptions ---------------------------------------------------------------------------


class Subscription:
    """A handler subscribed to a topic; returned by :meth:`EventBus.subscribe`.

    ``await subscription`` waits until it is confirmed by Redis (returns itself; immediate on
    the memory backend). ``unsubscribe()`` stops delivery at once (idempotent).
    """

    __slots__ = ("__weakref__", "_bus", "_loop", "_queue", "_regex", "_task", "active",
                 "channel", "handler", "pattern", "topic")

    def __init__(self, bus: EventBus, topic: str, handler: Handler) -> None:
        regex = _check_topic(topic, wildcard=True)  # cached: subscribe() validated it already
        self._bus = bus
        self.topic = topic
        self.handler = handler
        self.active = True
        self._regex = regex  # the token matcher of a wildcard topic
        prefix = f"{bus.config.namespace}:events:"
        # Redis side: an exact channel, or a glob pattern for wildcard topics (a superset of
        # the token rules: Redis '*' crosses dots; _on_message filters by the token rules)
        self.channel = None if regex else prefix + topic
        self.pattern = _glob_escape(prefix) + _glob(topic) if regex else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Event] | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "active" if self.active else "inactive"
        name = getattr(self.handler, "__qualname__", repr(self.handler))
        return f"<Subscription {self.topic!r} -> {name} ({state})>"

    def matches(self, topic: str) -> bool:
        """Whether an event published to ``topic`` reaches this subscription."""
        return self.topic == topic if self._regex is None else bool(
            self._regex.fullmatch(topic))

    def unsubscribe(self) -> None:
        """Stop receiving (events already queued are dropped). Idempotent."""
        if not self.active:
            return
        self.active = False
        self._bus._remove(self)
        task = self._task
        if task is not None and not task.done():
            loop = task.get_loop()
            try:
                running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if loop is running:
                task.cancel()
            elif not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:
                    pass

    def __await__(self) -> Generator[Any, None, Subscription]:
        return self._bus._confirm(self).__await__()

    # -- delivery (on the subscriber's loop) ------------------------------------------------

    def _deliver(self, event: Event, loop: asyncio.AbstractEventLoop) -> None:
        if not self.active:
            return
        target = self._loop
        if target is None or target.is_closed() or (
                target is not loop and not target.is_running()):
            self._bind(loop)
            target = loop
        if target is loop:
            self._put(event)
        else:
            target.call_soon_threadsafe(self._put, event)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        queue: asyncio.Queue[Event] = asyncio.Queue(self._bus.config.max_pending)
        self._queue = queue
        self._task = loop.create_task(self._work(queue), name=f"onex-event-{self.topic}")

    def _put(self, event: Event) -> None:
        queue = self._queue
        if not self.active or queue is None:
            return
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            self._bus._dropped(self, event)

    async def _work(self, queue: asyncio.Queue[Event]) -> None:
        bus = self._bus
        handler = self.handler
        while True:
            event = await queue.get()
            try:
                if self.active:
                    tracer = bus._tracer
                    if tracer is not None:
                        await _consume_traced(tracer, handler, event)
                    else:
                        result = handler(event)
                        if inspect.isawaitable(result):
                            await result
                    bus._delivered()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # we are being cancelled (unsubscribe, close)
                bus._failed(self, event, asyncio.CancelledError("handler raised CancelledError"))
            except Exception as exc:
                bus._failed(self, event, exc)
            finally:
                queue.task_done()


async def _consume_traced(tracer: Any, handler: Handler, event: Event) -> None:
    """Run ``handler(event)`` in a CONSUMER span ``"{topic} process"`` whose parent is the
    publisher's span (from ``event.headers``; a new trace without one), with the event's
    correlation id current."""
    attributes = {"messaging.system": "onex", "messaging.operation.type": "process",
                  "messaging.destination.name": event.topic, "messaging.message.id": event.id}
    if event.correlation_id is not None:
        attributes["messaging.message.conversation_id"] = event.correlation_id
    with tracer.span(f"{event.topic} process", kind="consumer", attributes=attributes,
                     headers=event.headers or {}):
        token = _context.correlation_id.set(event.correlation_id)
        try:
            result = handler(event)
            if inspect.isawaitable(result):
                await result
        finally:
            _context.correlation_id.reset(token)


class _Router:
    """Which subscriptions receive a topic (weakly held: a dropped bus stops receiving)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.exact: dict[str, weakref.WeakSet[Subscription]] = {}
        self.wild: weakref.WeakSet[Subscription] = weakref.WeakSet()

    def add(self, sub: Subscription) -> None:
        with self.lock:
            if sub._regex is None:
                self.exact.setdefault(sub.topic, weakref.WeakSet()).add(sub)
            else:
                self.wild.add(sub)

    def remove(self, sub: Subscription) -> None:
        with self.lock:
            if sub._regex is None:
                subs = self.exact.get(sub.topic)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self.exact[sub.topic]
            else:
                self.wild.discard(sub)

    def match(self, topic: str) -> list[Subscription]:
        with self.lock:  # WeakSet iteration is not safe against a concurrent add
            subs = self.exact.get(topic)
            out = list(subs) if subs else []
            wild = list(self.wild) if self.wild else ()
        if wild:
            out.extend(s for s in wild if s.matches(topic))
        return out

    def by_pattern(self, pattern: str) -> list[Subscription]:
        with self.lock:
            wild = list(self.wild)
        return [s for s in wild if s.pattern == pattern]

    def all(self) -> list[Subscription]:
        with self.lock:
            out = [s for subs in self.exact.values() for s in subs]
            out.extend(self.wild)
        return out


_hubs: dict[str, _Router] = {}
_hubs_lock = threading.Lock()


def _hub(namespace: str) -> _Router:
    """The process-wide router of a namespace (memory backend)."""
    with _hubs_lock:
        router = _hubs.get(namespace)
        if router is None:
            router = _hubs[namespace] = _Router()
        return router


# -- payload snapshots (memory backend) ------------------------------------------------------

_SCALARS = frozenset({str, int, float, bool, type(None), bytes})


def _snapshot(value: Any) -> Any:
    """A copy of ``value`` as it is now, for asynchronous in-process delivery.

    Delivery happens after ``publish`` returns, so without a copy a publisher that reuses or
    changes its payload object (``msg["i"] = i; await publish("t", msg)`` in a loop) would
    have every subscriber see the last state, while the Redis backend delivers what was
    published. Plain JSON-like data is copied by a small walk (faster than ``deepcopy``);
    anything else by ``copy.deepcopy``; an object that cannot be copied is passed as is.
    """
    kind = value.__class__
    if kind in _SCALARS:
        return value
    try:
        return _walk(value)
    except RecursionError:  # self-referencing or very deep data: deepcopy keeps a memo
        pass
    try:
        return copy.deepcopy(value)
    except Exception:
        return value


def _walk(value: Any) -> Any:
    kind = value.__class__
    if kind in _SCALARS:
        return value
    if kind is dict:
        return {k: _walk(v) for k, v in value.items()}
    if kind is list:
        return [_walk(v) for v in value]
    if kind is tuple:
        return tuple(_walk(v) for v in value)
    try:
        return copy.deepcopy(value)
    except Exception:  # a lock, a socket...: the object itself
        return value


def _check_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of the publisher's headers (strings to strings).

    Raises:
        EventBusError: not a mapping of strings to strings.
    """
    if not isinstance(headers, Mapping):
        raise EventBusError(f"headers must be a mapping of strings to strings, got "
                            f"{type(headers).__name__}")
    out = dict(headers)
    for key, value in out.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise EventBusError(f"headers must map strings to strings; {key!r} maps to a "
                                f"{type(value).__name__}")
    return out


# -- serializers -----------------------------------------------------------------------------


def _codec(spec: str) -> _Codec:
    return codec(spec, what="event_bus.serializer", error=EventBusError)


def _no_metric(name: str, value: float = 1, labels: Mapping[str, str] | None = None) -> None:
    return None


# -- the facility ----------------------------------------------------------------------------


class EventBus:
    """The ``self.event_bus`` facility.

    Args:
        config: an :class:`EventBusConfig` (or a mapping, or ``None`` for defaults).
        metrics: the node's metrics facility (``increment(name, value, labels)``), or ``None``.
        source: the publishing node's id for the envelope (``config.source`` wins).

    Example:
        >>> import asyncio
        >>> bus = EventBus({"namespace": "doc-bus"}, source="node-1")
        >>> got = []
        >>> async def handler(event):
        ...     got.append((event.topic, event.payload, event.source))
        >>> async def demo():
        ...     sub = bus.subscribe("greeting", handler)
        ...     await bus.publish("greeting", "hello")
        ...     await bus.drain()
        ...     sub.unsubscribe()
        ...     await bus.publish("greeting", "unheard")
        ...     await bus.aclose()
        >>> asyncio.run(demo())
        >>> got
        [('greeting', 'hello', 'node-1')]
    """

    def __init__(self, config: EventBusConfig | Mapping[str, Any] | None = None, *,
                 metrics: Any = None, source: str | None = None) -> None:
        cfg: EventBusConfig = coerce_config(EventBusConfig, config, "event_bus")
        self.config = cfg
        self.source = cfg.source or source
        inc = getattr(metrics, "increment", None)
        self._inc: Callable[..., Any] = inc if callable(inc) else _no_metric
        self._redis = cfg.backend == "redis"
        if self._redis:
            require_client("event_bus")
        self._codec: _Codec | None = _codec(cfg.serializer) if self._redis else None
        self._router = _Router() if self._redis else _hub(cfg.namespace)
        self._subs: set[Subscription] = set()
        self._prefix = f"{cfg.namespace}:events:"
        self._listener: Any = None
        self._supervisor: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._counts = {"published": 0, "delivered": 0, "handler_errors": 0, "dropped": 0,
                        "publish_errors": 0, "decode_errors": 0}
        self._listen_error: str | None = None
        self._publish_error: str | None = None
        self._tracer: Any = None

    def set_tracer(self, tracer: Any) -> None:
        """Trace this bus with ``tracer`` (the node's :class:`~onex_compose.capabilities.tracing.Tracing`;
        ``None`` stops): a PRODUCER span per publish that injects ``traceparent`` into the
        event's headers, and a CONSUMER span around each handler call. The mixin calls it at
        setup when the node has tracing and ``event_bus`` is in its ``instrument`` list; without
        it, ``publish`` is the untraced method itself (no extra call on the hot path)."""
        self._tracer = tracer
        if tracer is None:
            self.__dict__.pop("publish", None)
        else:
            self.publish = self._publish_traced  # type: ignore[method-assign]

    def __repr__(self) -> str:
        return (f"<EventBus {self.config.backend} namespace={self.config.namespace!r} "
                f"subscriptions={len(self._subs)}>")

    def __reduce__(self) -> tuple[Any, ...]:
        return (EventBus, (self.config,), None)

    # -- API ------------------------------------------------------------------------------------

    async def _publish_traced(self, topic: str, payload: Any = None, *,
                              headers: Mapping[str, str] | None = None) -> Event:
        """:meth:`publish` inside a PRODUCER span ``"{topic} publish"`` whose context is
        injected into the event's headers (``traceparent``, ``tracestate``, ``baggage``)."""
        tracer = self._tracer
        attributes = {"messaging.system": "onex", "messaging.operation.type": "send",
                      "messaging.destination.name": topic}
        with tracer.span(f"{topic} publish", kind="producer", attributes=attributes) as span:
            carried = tracer.inject(dict(headers) if headers else {})
            event = await EventBus.publish(self, topic, payload, headers=carried)
            span.set_attribute("messaging.message.id", event.id)
            return event

    async def publish(self, topic: str, payload: Any = None, *,
                      headers: Mapping[str, str] | None = None) -> Event:
        """Publish ``payload`` to ``topic``; returns the :class:`Event` envelope sent.

        ``headers`` (string to string) travel with the event (``Event.headers``); with
        tracing composed they also carry the publisher's trace context.

        Raises:
            EventBusError: a bad topic, or a payload the Redis serializer cannot encode.
            EventPublishError: Redis is unreachable (the event is lost; retriable).
        """
        _check_topic(topic, wildcard=False)
        event = Event(topic=topic, payload=payload if self._redis else _snapshot(payload),
                      id=uuid.uuid4().hex, timestamp=time.time(), source=self.source,
                      correlation_id=_context.correlation_id.get(),
                      headers=None if headers is None else _check_headers(headers))
        if not self._redis:
            loop = asyncio.get_running_loop()
            for sub in self._router.match(topic):
                sub._deliver(event, loop)
            self._counts["published"] += 1
            self._inc("events_published_total", 1, None)
            return event
        assert self._codec is not None
        try:
            data = self._codec.dumps(event.to_dict())
        except Exception as exc:
            raise EventBusError(
                f"cannot publish to {topic!r}: the {self.config.serializer!r} serializer failed "
                f"on the payload ({type(exc).__name__}: {exc}); publish plain data or choose "
                "another serializer") from exc
        if self._subs:
            self._listen()
        from onex_compose.capabilities._redis import async_client

        client = async_client(self.config.redis_url, timeout=self.config.redis_timeout,
                              retries=0)
        try:
            await client.publish(self._prefix + topic, data)
        except Exception as exc:
            self._counts["publish_errors"] += 1
            self._inc("event_bus_publish_errors_total", 1, None)
            if self._publish_error is None:
                logger.warning("event_bus[{}]: cannot publish to Redis: {!r}",
                               self.config.namespace, exc)
            self._publish_error = f"{type(exc).__name__}: {exc}"
            raise EventPublishError(
                f"event {topic!r} was not published: Redis is unreachable ({exc})") from exc
        self._publish_error = None
        self._counts["published"] += 1
        self._inc("events_published_total", 1, None)
        return event

    def subscribe(self, topic: str, handler: Handler) -> Subscription:
        """Call ``handler(event)`` (sync or async) for every event published to ``topic``.

        ``topic`` may contain ``*`` (exactly one token) and, as its last token, ``>`` (one or
        more tokens). Returns a :class:`Subscription`; awaiting it
        waits for Redis to confirm the subscription (so events published by another process
        after that are received).

        Raises:
            EventBusError: a bad topic or a handler that is not callable.
        """
        _check_topic(topic, wildcard=True)
        if not callable(handler):
            raise EventBusError(f"handler must be callable, got {handler!r}")
        sub = Subscription(self, topic, handler)
        self._subs.add(sub)
        self._router.add(sub)
        if self._redis:
            listener = self._get_listener()
            listener.add(channels=[sub.channel] if sub.channel else [],
                         patterns=[sub.pattern] if sub.pattern else [])
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass  # no loop yet: start(), publish() or awaiting the subscription connects
            else:
                self._listen()
        return sub

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every event queued so far for this namespace's subscribers (on this event
        loop) has been handled. Returns ``False`` if ``timeout`` seconds passed first."""
        return await self._drain(self._router.all(), timeout)

    @property
    def subscriptions(self) -> list[Subscription]:
        """This bus's active subscriptions."""
        return [s for s in list(self._subs) if s.active]  # list(): health runs in a thread

    def stats(self) -> dict[str, Any]:
        """Counts: published, delivered, handler_errors, dropped, publish_errors,
        decode_errors, and the number of active subscriptions."""
        return {**self._counts, "subscriptions": len(self.subscriptions),
                "backend": self.config.backend, "namespace": self.config.namespace}

    def health(self) -> dict[str, Any]:
        """``healthy``, or ``degraded`` while Redis cannot be reached (the reason says which
        side: listening or publishing). ``register_health_check(node.event_bus.health)``
        reports it (the mixin does this itself when the node has health_check).

        Example:
            >>> EventBus().health()["status"]
            'healthy'
        """
        report: dict[str, Any] = {"status": "healthy", "backend": self.config.backend,
                                  **self.stats()}
        if self._redis:
            listener = self._listener
            report["listener"] = bool(listener is not None and listener.connected)
            problems = []
            if self._listen_error is not None and self.subscriptions:
                problems.append(f"not receiving: {self._listen_error}")
            if self._publish_error is not None:
                problems.append(f"not publishing: {self._publish_error}")
            if problems:
                report["status"] = "degraded"
                report["reason"] = "Redis unavailable, " + "; ".join(problems)
        return report

    async def start(self) -> None:
        """Subscribe on Redis now (otherwise done on first use); an unreachable Redis does not
        fail the start (the bus retries every ``reconnect_interval`` and says so in health)."""
        if self._redis and self._subs:
            self._listen()
            try:
                await self._get_listener().ensure()
            except Exception as exc:
                self._listening(exc)

    async def aclose(self) -> None:
        """Let queued events finish (up to ``drain_timeout``), then unsubscribe everything and
        stop every task this bus started (idempotent)."""
        own = [s for s in self._subs if s.active]
        if own and self.config.drain_timeout > 0:
            await self._drain(own, self.config.drain_timeout)
        tasks: list[asyncio.Task[Any]] = []
        for sub in own:
            task = sub._task
            sub.unsubscribe()
            if task is not None:
                tasks.append(task)
        self._subs.clear()
        sup, self._supervisor = self._supervisor, None
        if sup is not None:
            sup.cancel()
            tasks.append(sup)
        for task in list(self._background):
            task.cancel()
            tasks.append(task)
        if self._listener is not None:
            await self._listener.aclose()
        await _wait_cancelled(tasks)

    # -- internals --------------------------------------------------------------------------

    async def _drain(self, subs: list[Subscription], timeout: float | None) -> bool:
        loop = asyncio.get_running_loop()
        queues = [s._queue for s in subs if s._queue is not None and s._loop is loop]
        if not queues:
            return True
        joined = asyncio.gather(*(q.join() for q in queues))
        try:
            await asyncio.wait_for(joined, timeout)
        except TimeoutError:
            return False
        return True

    def _remove(self, sub: Subscription) -> None:
        self._router.remove(sub)
        self._subs.discard(sub)
        if not self._redis or self._listener is None:
            return
        still = [s for s in self._subs if s.active]
        chans = [] if sub.channel is None or any(s.channel == sub.channel for s in still) \
            else [sub.channel]
        pats = [] if sub.pattern is None or any(s.pattern == sub.pattern for s in still) \
            else [sub.pattern]
        if not chans and not pats:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # no loop: forget them now; the next connection will not subscribe to them
            self._listener._channels.difference_update(chans)
            self._listener._patterns.difference_update(pats)
            return
        self._spawn(self._listener.discard(channels=chans, patterns=pats))

    def _get_listener(self) -> Any:
        if self._listener is None:
            from onex_compose.capabilities._redis import PubSubListener

            self._listener = PubSubListener(
                self.config.redis_url, self._on_message, timeout=self.config.redis_timeout,
                name=f"event_bus[{self.config.namespace}]")
        return self._listener

    def _listen(self) -> None:
        """Make sure the reconnecting supervisor runs on the running loop."""
        loop = asyncio.get_running_loop()
        sup = self._supervisor
        if sup is not None and sup.get_loop() is loop and not sup.done():
            return
        listener = self._get_listener()
        self._supervisor = loop.create_task(
            listener.supervise(self.config.reconnect_interval, self._listening),
            name=f"onex-event-bus-{self.config.namespace}")

    def _listening(self, exc: BaseException | None) -> None:
        if exc is None:
            if self._listen_error is not None:
                logger.info("event_bus[{}]: subscribed on Redis again", self.config.namespace)
            self._listen_error = None
            return
        if self._listen_error is None:
            logger.warning("event_bus[{}]: not subscribed on Redis ({!r}); retrying every {}s",
                           self.config.namespace, exc, self.config.reconnect_interval)
        self._listen_error = f"{type(exc).__name__}: {exc}"

    async def _confirm(self, sub: Subscription) -> Subscription:
        if self._redis and sub.active:
            self._listen()
            await self._get_listener().ensure()
        return sub

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_message(self, channel: str, pattern: str | None, data: bytes) -> None:
        assert self._codec is not None
        try:
            event = Event.from_dict(self._codec.loads(data))
        except Exception as exc:
            self._counts["decode_errors"] += 1
            self._inc("event_bus_decode_errors_total", 1, None)
            logger.warning("event_bus[{}]: dropped an undecodable message on {} ({!r})",
                           self.config.namespace, channel, exc)
            return
        if pattern is None:
            subs = [s for s in self._router.match(event.topic) if s._regex is None]
        else:
            subs = [s for s in self._router.by_pattern(pattern) if s.matches(event.topic)]
        loop = asyncio.get_running_loop()
        for sub in subs:
            sub._deliver(event, loop)

    def _delivered(self) -> None:
        self._counts["delivered"] += 1
        self._inc("events_delivered_total", 1, None)

    def _failed(self, sub: Subscription, event: Event, exc: BaseException) -> None:
        self._counts["handler_errors"] += 1
        self._inc("event_handler_errors_total", 1, None)
        logger.opt(exception=exc).error(
            "event_bus[{}]: handler {} failed on event {} ({}): {!r}", self.config.namespace,
            getattr(sub.handler, "__qualname__", sub.handler), event.id, event.topic, exc)

    def _dropped(self, sub: Subscription, event: Event) -> None:
        self._counts["dropped"] += 1
        self._inc("events_dropped_total", 1, None)
        logger.warning("event_bus[{}]: subscriber of {!r} has {} events pending; dropped {}",
                       self.config.namespace, sub.topic, self.config.max_pending, event.id)


async def _wait_cancelled(tasks: list[asyncio.Task[Any]]) -> None:
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    mine = [t for t in tasks if t.get_loop() is loop and not t.done()]
    if mine:
        await asyncio.gather(*mine, return_exceptions=True)


# -- the mixin -------------------------------------------------------------------------------


class MixinEventBus:
    """Event publishing and subscription for a node: ``self.event_bus``.

    Configured by the node contract's ``event_type`` subcontract (seed 000's key) or
    ``capability_config={"event_bus": {...}}`` (:class:`EventBusConfig`). The envelope's
    ``source`` is the node id. When the node has health_check, the bus's health is registered
    as the ``event_bus`` check.

    Example:
        >>> import asyncio
        >>> from onex_compose import NodeCompute
        >>> class Service(NodeCompute, MixinEventBus):
        ...     pass
        >>> service = Service(capability_config={"event_bus": {"namespace": "doc-mixin"}},
        ...                   node_id="svc-1")
        >>> async def demo():
        ...     got = []
        ...     service.event_bus.subscribe("done", got.append)
        ...     await service.event_bus.publish("done", {"ok": True})
        ...     await service.aclose()      # lets queued events finish first
        ...     return [(e.payload, e.source) for e in got]
        >>> asyncio.run(demo())
        [({'ok': True}, 'svc-1')]
    """

    __onex_capability__ = "event_bus"
    __slots__ = ()

    def setup_event_bus(self, config: EventBusConfig | Mapping[str, Any] | None = None) -> None:
        """Build ``self.event_bus`` from the ``event_type`` subcontract (model, mapping or
        ``None``)."""
        cfg = coerce_config(EventBusConfig, config, "event_bus")
        node: Any = self
        old = getattr(node, "event_bus", None)
        if isinstance(old, EventBus) and old.subscriptions:
            for sub in old.subscriptions:  # reconfigured: the old bus stops receiving
                sub.unsubscribe()
        node.event_bus = EventBus(cfg, metrics=node.metrics,
                                  source=getattr(node, "node_id", None))
        if has_capability(self, "tracing"):
            node.event_bus.set_tracer(node.tracer.for_capability("event_bus"))
        if has_capability(self, "health_check"):
            node.register_health_check(node.event_bus.health, name="event_bus")

    @facility
    def event_bus(self) -> EventBus:
        """The node's event bus (built with defaults if ``setup_event_bus`` never ran)."""
        node: Any = self
        return EventBus(EventBusConfig(), metrics=node.metrics,
                        source=getattr(node, "node_id", None))

    async def start_event_bus(self) -> None:
        """Subscribe on Redis now (no-op on the memory backend)."""
        node: Any = self
        await node.event_bus.start()

    async def close_event_bus(self) -> None:
        """Drain, unsubscribe and stop every task of the bus (idempotent)."""
        node: Any = self
        bus = getattr(node, "event_bus", None)
        if isinstance(bus, EventBus):
            await bus.aclose()
