"""Shared Redis access for capabilities with a ``redis`` backend.

The client library is imported lazily (composing on the memory backend never imports redis).
Clients are cached per (event loop, URL, options): a node built outside an event loop keeps
working across repeated ``asyncio.run()`` calls, because each loop gets its own connection pool.

:class:`PubSubListener` is the one pub/sub reader the caching (invalidation channel) and
event_bus (topics) capabilities share. It is written here rather than taken from redis-py's
``PubSub.run()`` because the capabilities need three things ``run()`` does not give:

* a subscription that is *confirmed* (the server's ``subscribe`` reply was read) before the
  caller goes on, so a cache never fills its L1 before it can hear invalidations;
* a clear signal when messages may have been missed (connection lost, event loop replaced), so a
  cache can drop an L1 that may be stale (``on_reset``);
* fail-fast reconnection owned by the caller (no hidden retry loop with back-off inside a read),
  one connection per event loop, and a close that leaves no task behind.
"""

from __future__ import annotations

import asyncio
import os
import random
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from onex_compose.capabilities._codecs import check_serializer, load_codec
from onex_compose.capabilities._log import logger

__all__ = [
    "DEFAULT_REDIS_URL",
    "PubSubListener",
    "async_client",
    "check_redis_url",
    "check_serializer",
    "connection_errors",
    "load_codec",
    "redis_url",
    "require_client",
    "sync_client",
    "text",
]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

_async_clients: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()
_sync_clients: dict[Any, Any] = {}


_SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(value: str | None) -> str | None:
    """Validate a configured ``redis_url`` (a field validator for the capabilities' configs).

    A wrong scheme is a configuration error at setup, not an outage that the cache or the bus
    would report (and degrade around) at first use. The password is masked in the message.

    Example:
        >>> check_redis_url("redis://127.0.0.1:6379/0")
        'redis://127.0.0.1:6379/0'
        >>> try:
        ...     check_redis_url("http://user:pw@host/0")
        ... except ValueError as exc:
        ...     print(str(exc).split(", got ")[1])
        'http://user:***@host/0'
    """
    if not value:  # None or "": ONEX_REDIS_URL, else the local server
        return value
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        ok = parts.scheme in _SCHEMES and bool(parts.netloc or parts.path)
        _ = parts.port  # raises ValueError for a port out of range
        from onex_compose._redact import scrub_text  # the one scrubber (also ?password=...)

        shown = scrub_text(value)
    except ValueError:  # e.g. an invalid port or bracketed host
        ok, shown = False, value.split("@")[-1]
    if not ok:
        raise ValueError(
            "redis_url must be a redis://, rediss:// or unix:// URL (e.g. "
            f"{DEFAULT_REDIS_URL}), got {shown!r}")
    return value


def redis_url(configured: str | None = None) -> str:
    """The URL to use: the configured one, else ``ONEX_REDIS_URL``, else the local server."""
    return configured or os.environ.get("ONEX_REDIS_URL") or DEFAULT_REDIS_URL


def _options(timeout: float | None, retries: int | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    opts: dict[str, Any] = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0, "protocol": 2}
    if timeout is not None:
        opts["socket_connect_timeout"] = opts["socket_timeout"] = timeout
    if retries is not None:
        from redis.backoff import NoBackoff

        if kwargs.get("_async", True):
            from redis.asyncio.retry import Retry
        else:
            from redis.retry import Retry  # type: ignore[assignment]
        opts["retry"] = Retry(NoBackoff(), retries)
    opts.update({k: v for k, v in kwargs.items() if k != "_async"})
    return opts


def async_client(url: str | None = None, *, timeout: float | None = None,
                 retries: int | None = None, **kwargs: Any) -> Any:
    """A ``redis.asyncio.Redis`` for the running event loop (cached per loop, URL and options).

    Args:
        url: the server URL (``None``: :func:`redis_url`).
        timeout: connect and command timeout in seconds (default 1 s connect, 2 s command).
        retries: how many times redis-py retries a command after a connection error (``0``:
            fail fast, as a cache that falls back to memory wants; default: redis-py's own).
        **kwargs: other ``Redis.from_url`` options (hashable values; part of the cache key).
    """
    import redis.asyncio as aioredis

    loop = asyncio.get_running_loop()
    url = redis_url(url)
    key = (url, timeout, retries, tuple(sorted(kwargs.items())))
    per_loop = _async_clients.setdefault(loop, {})
    client = per_loop.get(key)
    if client is None:
        # a blocking pool: more concurrent commands than connections wait for a free connection
        # (redis-py's default pool raises MaxConnectionsError past its limit instead)
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=10, **_options(timeout, retries, kwargs))
        client = per_loop[key] = aioredis.Redis.from_pool(pool)  # the client owns the pool
    return client


def sync_client(url: str | None = None, *, timeout: float | None = None,
                retries: int | None = None, **kwargs: Any) -> Any:
    """A synchronous ``redis.Redis`` (cached per URL and options)."""
    import redis

    url = redis_url(url)
    key = (url, timeout, retries, tuple(sorted(kwargs.items())))
    client = _sync_clients.get(key)
    if client is None:
        client = _sync_clients[key] = redis.Redis.from_url(
            url, **_options(timeout, retries, {**kwargs, "_async": False}))
    return client


def connection_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the server is unreachable" (not "the command was wrong")."""
    import redis.exceptions as rexc

    return (rexc.ConnectionError, rexc.TimeoutError, OSError, asyncio.TimeoutError)


class _Session:
    """One pub/sub connection on one event loop, with its reader task."""

    __slots__ = (
        "alive",
        "channels",
        "client",
        "lock",
        "loop",
        "patterns",
        "pubsub",
        "suspect",
        "task",
        "waiters",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = asyncio.Lock()
        self.client: Any = None
        self.pubsub: Any = None
        self.task: asyncio.Task[None] | None = None
        self.alive = False
        self.suspect = False                # the owner saw the server fail: replace it
        self.channels: set[str] = set()     # confirmed by the server
        self.patterns: set[str] = set()
        self.waiters: dict[tuple[str, str], asyncio.Future[None]] = {}

    def fail_waiters(self, exc: BaseException) -> None:
        for fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: nobody may be waiting any more
        self.waiters.clear()


class PubSubListener:
    """A pub/sub subscription on its own connection, read by one task per event loop.

    Args:
        url: the Redis URL (``None``: :func:`redis_url`).
        on_message: called (on the loop, synchronously) as ``on_message(channel, pattern, data)``
            for every message; ``pattern`` is ``None`` for a plain ``SUBSCRIBE`` match.
        on_reset: called when a new subscription session starts after an earlier one (a
            reconnect, another event loop): messages sent in between were missed.
        on_lost: called when the connection is lost (the reader stopped with an error).
        timeout: seconds to wait for the connection and for each subscription to be confirmed.
        name: for log messages.

    Nothing connects until :meth:`ensure` runs on an event loop; no asyncio object is created
    before that, so an owner built outside a loop works across repeated ``asyncio.run()``.

    Example:
        >>> listener = PubSubListener(None, lambda channel, pattern, data: None)
        >>> listener.add(channels=["onex:invalidate"])   # desired; ensure() subscribes
        >>> listener.connected
        False
    """

    def __init__(self, url: str | None,
                 on_message: Callable[[str, str | None, bytes], None], *,
                 on_reset: Callable[[], None] | None = None,
                 on_lost: Callable[[], None] | None = None, timeout: float = 1.0,
                 name: str = "pubsub") -> None:
        self.url = redis_url(url)
        self.timeout = timeout
        self.name = name
        self._on_message = on_message
        self._on_reset = on_reset
        self._on_lost = on_lost
        self._channels: set[str] = set()     # desired
        self._patterns: set[str] = set()
        self._dirty = False
        self._session: _Session | None = None
        self._sessions = 0
        self.last_error: BaseException | None = None

    # -- desired subscriptions --------------------------------------------------------------

    def add(self, channels: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
        """Want these channels/patterns; the next :meth:`ensure` subscribes to them."""
        for c in channels:
            if c not in self._channels:
                self._channels.add(c)
                self._dirty = True
        for p in patterns:
            if p not in self._patterns:
                self._patterns.add(p)
                self._dirty = True

    async def discard(self, channels: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
        """Stop wanting these; unsubscribes now when connected on the running loop."""
        chans = [c for c in channels if c in self._channels]
        pats = [p for p in patterns if p in self._patterns]
        self._channels.difference_update(chans)
        self._patterns.difference_update(pats)
        s = self._session
        if s is None or not s.alive or s.loop is not asyncio.get_running_loop():
            return
        s.channels.difference_update(chans)
        s.patterns.difference_update(pats)
        try:
            if chans:
                await s.pubsub.unsubscribe(*chans)
            if pats:
                await s.pubsub.punsubscribe(*pats)
        except Exception as exc:  # the reader notices a dead connection by itself
            self.last_error = exc

    @property
    def connected(self) -> bool:
        """Whether a reader is subscribed on some event loop right now."""
        s = self._session
        return bool(s is not None and s.alive and s.task is not None and not s.task.done())

    # -- connection ---------------------------------------------------------------------------

    async def wait_lost(self) -> None:
        """Return when the current session's reader stops (connection lost or closed); at once
        when there is no live session on the running loop."""
        s = self._session
        if s is None or s.task is None or s.loop is not asyncio.get_running_loop():
            return
        await asyncio.wait({s.task})

    async def supervise(self, interval: float,
                        on_error: Callable[[BaseException | None], None] | None = None, *,
                        max_interval: float | None = None) -> None:
        """Keep the subscriptions alive until cancelled: reconnect ``interval`` seconds after
        the connection is lost or cannot be made. ``on_error(exc)`` is told about each failure
        and ``on_error(None)`` about each recovery.

        Args:
            interval: seconds before the first reconnection attempt after a loss.
            on_error: told about each failure (``exc``) and each success (``None``).
            max_interval: when given, the delay doubles after each failed attempt up to this
                many seconds (with +-20 % jitter, so that processes that lost one server do not
                reconnect in lockstep) and returns to ``interval`` after a success; ``None``:
                every attempt waits ``interval``.
        """
        delay = interval
        while True:
            try:
                await self.ensure()
                delay = interval
                if on_error is not None:
                    on_error(None)
                await self.wait_lost()
                if on_error is not None and self.last_error is not None:
                    on_error(self.last_error)
            except Exception as exc:
                if on_error is not None:
                    on_error(exc)
                if max_interval is not None:
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(max(delay, 1e-3) * 2, max_interval)
                    continue
            await asyncio.sleep(interval)

    def suspect(self) -> None:
        """Tell the listener that its server just failed a command (the owner saw an outage).

        The reader may still sit on a dead socket it has not read from yet (its task has not
        run since the server went away), so its ``alive`` flag cannot be trusted: the next
        :meth:`ensure` replaces the current session with a new one (and ``on_reset`` runs,
        since messages may have been missed). A session made after this call is not affected.
        """
        s = self._session
        if s is not None:
            s.suspect = True
            self._dirty = True

    async def ensure(self) -> None:
        """Connect (if needed) on the running loop and wait until every wanted subscription is
        confirmed by the server.

        Raises:
            ConnectionError/TimeoutError/OSError: the server is unreachable (the caller decides
                whether that degrades or fails).
        """
        loop = asyncio.get_running_loop()
        s = self._session
        if s is not None and s.loop is loop and s.alive and not self._dirty:
            task = s.task
            if task is not None and not task.done():
                return
        if s is None or s.loop is not loop:
            if s is not None:
                self._abandon(s)
            s = self._session = _Session(loop)
        async with s.lock:
            if not s.alive or s.suspect or s.task is None or s.task.done():
                await self._connect(s)
            await self._subscribe_missing(s)

    async def _connect(self, s: _Session) -> None:
        import redis.asyncio as aioredis

        await self._close_session(s)
        client = aioredis.Redis.from_url(self.url, **_options(self.timeout, 0, {}))
        pubsub: Any = client.pubsub()
        try:
            await asyncio.wait_for(pubsub.connect(), self.timeout)
        except BaseException:
            await _quiet_close(pubsub, client)
            raise
        s.client, s.pubsub = client, pubsub
        s.channels, s.patterns = set(), set()
        s.alive, s.suspect = True, False
        s.task = s.loop.create_task(self._read(s), name=f"onex-{self.name}-reader")
        if self._sessions:
            self._reset()
        self._sessions += 1

    async def _subscribe_missing(self, s: _Session) -> None:
        chans = sorted(self._channels - s.channels)
        pats = sorted(self._patterns - s.patterns)
        self._dirty = False
        if not chans and not pats:
            return
        futs = []
        for kind, names in (("subscribe", chans), ("psubscribe", pats)):
            for n in names:
                fut = s.waiters.get((kind, n))
                if fut is None or fut.done():
                    fut = s.waiters[(kind, n)] = s.loop.create_future()
                futs.append(fut)
        try:
            if chans:
                await s.pubsub.subscribe(*chans)
            if pats:
                await s.pubsub.psubscribe(*pats)
            await asyncio.wait_for(asyncio.gather(*futs), self.timeout)
        except BaseException as exc:
            self._dirty = True
            if not isinstance(exc, asyncio.CancelledError):
                self.last_error = exc
                s.alive = False
                s.fail_waiters(exc)
                if s.task is not None:
                    s.task.cancel()
            raise

    async def _read(self, s: _Session) -> None:
        pubsub = s.pubsub
        on_message = self._on_message
        try:
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=False, timeout=None)
                if msg is None:
                    continue
                kind = msg["type"]
                if kind == "message" or kind == "pmessage":
                    pattern = msg.get("pattern")
                    try:
                        on_message(_text(msg["channel"]),
                                   None if pattern is None else _text(pattern), msg["data"])
                    except Exception as exc:  # a bad message must not kill the reader
                        logger.opt(exception=exc).warning(
                            "{}: message handler failed: {}", self.name, exc)
                elif kind == "subscribe" or kind == "psubscribe":
                    name = _text(msg["channel"])
                    (s.channels if kind == "subscribe" else s.patterns).add(name)
                    fut = s.waiters.pop((kind, name), None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
        except asyncio.CancelledError:
            s.alive = False
            s.fail_waiters(ConnectionError(f"{self.name}: listener stopped"))
            raise
        except Exception as exc:
            s.alive = False
            self._dirty = True
            self.last_error = exc
            s.fail_waiters(exc)
            logger.debug("{}: pub/sub connection lost: {!r}", self.name, exc)
            self._call(self._on_lost)

    def _reset(self) -> None:
        self._call(self._on_reset)

    def _call(self, callback: Callable[[], None] | None) -> None:
        if callback is not None:
            try:
                callback()
            except Exception as exc:
                logger.opt(exception=exc).warning("{}: callback failed: {}", self.name, exc)

    def _abandon(self, s: _Session) -> None:
        """Drop a session bound to another (usually finished) event loop."""
        s.alive = False
        if s.task is not None and not s.task.done() and not s.loop.is_closed():
            try:
                s.loop.call_soon_threadsafe(s.task.cancel)
            except RuntimeError:
                pass
        self._dirty = True

    async def _close_session(self, s: _Session) -> None:
        task, s.task = s.task, None
        s.alive = False
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except BaseException:
                pass
        if s.pubsub is not None or s.client is not None:
            await _quiet_close(s.pubsub, s.client)
            s.pubsub = s.client = None

    async def aclose(self) -> None:
        """Stop the reader and close the connection (idempotent; no task is left behind).

        The wanted subscriptions are kept: a later :meth:`ensure` reconnects.
        """
        s = self._session
        if s is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if s.loop is running:
            await self._close_session(s)
            s.fail_waiters(ConnectionError(f"{self.name}: listener closed"))
        else:
            self._abandon(s)
        self._session = None
        self._dirty = True


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def _quiet_close(pubsub: Any, client: Any) -> None:
    for obj in (pubsub, client):
        if obj is None:
            continue
        try:
            await obj.aclose()
        except Exception as exc:
            logger.debug("closing a Redis connection failed: {!r}", exc)


def text(value: Any) -> str:
    """A Redis reply value as ``str`` (replies are ``bytes`` with ``protocol=2``)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def require_client(capability: str) -> None:
    """Fail at setup, with the fix, when ``backend: redis`` is configured without redis-py.

    Checked with ``importlib.util.find_spec`` (no import), so the memory backend pays nothing.
    """
    import importlib.util

    if importlib.util.find_spec("redis") is None:
        from onex_compose.exceptions import ConfigurationError

        raise ConfigurationError(
            f"{capability}: backend 'redis' needs the redis client, which is not installed. "
            "Install it with: pip install 'onex-compose[redis]' (or use backend: memory).",
            capability=capability)
