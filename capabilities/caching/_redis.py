"""The Redis L2 of the caching capability: values, the invalidation channel, outages.

Values live under ``<namespace>:cache:<key>`` with the entry's TTL; writes, deletes and clears
publish an invalidation on ``<namespace>:invalidate``, and every other process drops those keys
from its L1. The invalidation listener (:class:`~onex_compose.capabilities._redis.PubSubListener`)
is watched by a supervisor task that resubscribes by itself after the connection is lost (first
after 50 ms, then doubling up to ``retry_interval``); each new subscription after an earlier one
drops L1, because invalidations sent in between were missed.

:class:`_RedisLevel` is a base of :class:`~onex_compose.capabilities.caching.Cache` (the
methods share the facility's state).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from onex_compose.capabilities._codecs import Codec, looks_pickled
from onex_compose.capabilities._log import logger
from onex_compose.capabilities._traced import mark_error
from onex_compose.capabilities.caching._memory import _MemoryLevel
from onex_compose.capabilities.caching._model import (
    _L2_HIT,
    _L2_MISS,
    CacheSerializationError,
    CachingConfig,
    _running_loop,
)

T = TypeVar("T")


class _RedisLevel(_MemoryLevel):
    """L2 operations of :class:`Cache` (state is created by ``Cache.__init__``), on top of L1."""

    config: CachingConfig
    clock: Callable[[], float]
    channel: str
    _data: OrderedDict[str, tuple[Any, float | None]]
    _serializer: Codec | None
    _prefix: str
    _origin: str
    _listener: Any
    _live_loop: asyncio.AbstractEventLoop | None
    _supervisor: asyncio.Task[None] | None
    _down_until: float | None
    _outage_since: float | None
    _outage_reason: str | None
    _generation: int
    _hits: list[int]
    _misses: list[int]
    _l2_errors: int
    _l2_skipped: int
    _invalidations: int
    _legacy_logged: bool
    _inc: Callable[..., Any]
    _tracer: Any
    _span_attrs: dict[str, Any]
    _l2_failures: int
    _last_error: str | None

    def _dumps(self, key: str, value: Any) -> bytes | str:
        assert self._serializer is not None
        try:
            return self._serializer.dumps(value)
        except Exception as exc:
            raise CacheSerializationError(
                f"cannot store {key!r} in the Redis L2: the {self.config.serializer!r} "
                f"serializer failed on a {type(value).__name__} ({exc}); store a serialisable "
                "value or choose another serializer") from exc

    def _available(self) -> bool:
        until = self._down_until
        if until is None:
            return True
        if self.clock() < until:
            self._l2_skipped += 1
            return False
        return True

    async def _l2_ready(self) -> bool:
        """Make sure the invalidation listener is subscribed; ``False`` while Redis is down."""
        if not self._available():
            return False
        listener = self._listener
        if listener is None:
            from onex_compose.capabilities._redis import PubSubListener

            listener = self._listener = PubSubListener(
                self.config.redis_url, self._on_invalidation, on_reset=self._on_listener_reset,
                on_lost=self._on_listener_lost, timeout=self.config.redis_timeout,
                name=f"cache[{self.config.namespace}]")
            listener.add(channels=[self.channel])
        loop = asyncio.get_running_loop()
        sup = self._supervisor
        if sup is None or sup.done() or sup.get_loop() is not loop:
            self._start_supervisor(loop, listener)
        try:
            await listener.ensure()
        except Exception as exc:
            self._failed(exc)
            return False
        self._live_loop = loop
        return True

    def _start_supervisor(self, loop: asyncio.AbstractEventLoop, listener: Any) -> None:
        """Run the task that resubscribes after the listener's connection is lost, by itself
        (no cache call needed), with back-off: first after 50 ms, doubling up to
        ``retry_interval`` (at least 50 ms). A new subscription drops L1 (``on_reset``)."""
        old = self._supervisor
        if old is not None and not old.done() and not old.get_loop().is_closed():
            try:
                old.get_loop().call_soon_threadsafe(old.cancel)
            except RuntimeError:  # its loop closed meanwhile
                pass
        self._supervisor = loop.create_task(
            listener.supervise(_RESUBSCRIBE_FIRST, self._on_supervised,
                               max_interval=max(self.config.retry_interval, _RESUBSCRIBE_FIRST)),
            name=f"onex-cache-{self.config.namespace}-resubscribe")

    async def _stop_supervisor(self) -> None:
        sup, self._supervisor = self._supervisor, None
        if sup is None or sup.done():
            return
        if sup.get_loop() is _running_loop():
            sup.cancel()
            try:
                await sup
            except BaseException:  # cancelled (or it failed): either way it is gone
                pass
        elif not sup.get_loop().is_closed():
            try:
                sup.get_loop().call_soon_threadsafe(sup.cancel)
            except RuntimeError:
                pass

    def _on_supervised(self, exc: BaseException | None) -> None:
        """The supervisor's report: ``None`` when subscribed (again), else the failure."""
        if exc is None:
            # subscribed on this loop: L1 hits are served again (a resubscription after a loss
            # already dropped L1 in _on_listener_reset), and Redis is evidently back
            self._live_loop = _running_loop()
            self._recovered()
        else:
            logger.debug("cache[{}]: invalidation listener not subscribed ({!r}); retrying",
                         self.config.namespace, exc)

    def _client(self) -> Any:
        from onex_compose.capabilities._redis import async_client

        return async_client(self.config.redis_url, timeout=self.config.redis_timeout, retries=0)

    async def _l2_get(self, key: str, default: Any, traced: bool = False) -> Any:
        if self._tracer is not None and not traced and self._l2_due():
            return await self._l2_traced("cache.l2.get", self._l2_get(key, default, True))
        gen = self._generation
        if not await self._l2_ready():
            return default
        try:
            pipe = self._client().pipeline(transaction=True)
            pipe.get(self._prefix + key)
            pipe.pttl(self._prefix + key)
            raw, pttl = await pipe.execute()
        except Exception as exc:
            self._failed(exc)
            return default
        self._recovered()
        if raw is None or pttl == -2:
            self._misses[1] += 1
            self._inc("cache_lookups_total", 1, _L2_MISS)
            return default
        assert self._serializer is not None
        try:
            value = self._serializer.loads(raw)
        except Exception as exc:
            self._l2_errors += 1
            self._inc("cache_l2_errors_total", 1, {"kind": "decode"})
            if self.config.serializer != "pickle" and looks_pickled(raw):
                if not self._legacy_logged:  # once per cache: an upgrade rewrites them all
                    self._legacy_logged = True
                    logger.warning(
                        "cache[{}]: L2 value of {!r} was written with pickle (the serializer "
                        "default of older versions); it reads as a miss and is replaced at the "
                        "next set (set serializer: 'pickle' to keep reading such entries)",
                        self.config.namespace, key)
            else:
                logger.warning("cache[{}]: cannot decode L2 value of {!r} ({!r}); treating it "
                               "as a miss", self.config.namespace, key, exc)
            self._misses[1] += 1
            self._inc("cache_lookups_total", 1, _L2_MISS)
            return default
        self._hits[1] += 1
        self._inc("cache_lookups_total", 1, _L2_HIT)
        if gen == self._generation:  # no invalidation arrived while we read: promote
            self._l1_store(key, value, None if pttl < 0 else pttl / 1000.0)
        return value

    def _l2_due(self) -> bool:
        """Whether an L2 operation would try Redis now (not in an outage's back-off)."""
        until = self._down_until
        return until is None or self.clock() >= until

    async def _l2_traced(self, name: str, work: Awaitable[T]) -> T:
        """Await one L2 operation (its readiness check included: reconnecting is part of the
        round trip) inside a CLIENT span ``name``. Only with tracing composed, and only when
        Redis is tried: a call in an outage's back-off makes no round trip and no span."""
        failures, hits = self._l2_failures, self._hits[1]
        with self._tracer.span(name, kind="client", attributes=self._span_attrs) as span:
            result = await work
            if name == "cache.l2.get":
                span.set_attribute("onex.cache.hit", self._hits[1] > hits)
            if self._l2_failures != failures:  # Redis failed; L1 served the call
                mark_error(span, self._last_error or "RedisError")
        return result

    async def _l2_set_traced(self, key: str, value: Any, payload: bytes | str,
                             ttl: float | None) -> None:
        """``set``'s two levels (listening first, then L1, then L2) inside a ``cache.l2.set``
        span, when tracing is composed and Redis is tried."""
        if not self._l2_due():
            await self._l2_ready()  # in back-off: counted as skipped, L1 only, no span
            self._l1_store(key, value, ttl)
            return
        await self._l2_traced("cache.l2.set", self._set_levels(key, value, payload, ttl))

    async def _set_levels(self, key: str, value: Any, payload: bytes | str,
                          ttl: float | None) -> None:
        ready = await self._l2_ready()
        self._l1_store(key, value, ttl)
        if ready:
            await self._l2_set(key, payload, ttl)

    async def _l2_set(self, key: str, payload: bytes | str, ttl: float | None) -> None:
        try:
            pipe = self._client().pipeline(transaction=False)
            if ttl is None or ttl >= _FOREVER:  # inf or beyond Redis' range: no expiry
                pipe.set(self._prefix + key, payload)
            else:
                pipe.set(self._prefix + key, payload, px=max(1, int(ttl * 1000)))
            pipe.publish(self.channel, self._message(keys=[key]))
            await pipe.execute()
        except Exception as exc:
            self._failed(exc)
            return
        self._recovered()

    async def _l2_delete(self, key: str, traced: bool = False) -> bool:
        if self._tracer is not None and not traced and self._l2_due():
            return await self._l2_traced("cache.l2.delete", self._l2_delete(key, True))
        if not await self._l2_ready():
            return False
        try:
            pipe = self._client().pipeline(transaction=False)
            pipe.unlink(self._prefix + key)
            pipe.publish(self.channel, self._message(keys=[key]))
            removed, _ = await pipe.execute()
        except Exception as exc:
            self._failed(exc)
            return False
        self._recovered()
        return bool(removed)

    async def _l2_clear(self, traced: bool = False) -> None:
        if self._tracer is not None and not traced and self._l2_due():
            await self._l2_traced("cache.l2.clear", self._l2_clear(True))
            return
        if not await self._l2_ready():
            return
        try:
            client = self._client()
            batch: list[Any] = []
            async for k in client.scan_iter(match=_glob_escape(self._prefix) + "*", count=1000):
                batch.append(k)
                if len(batch) >= 500:
                    await client.unlink(*batch)
                    batch.clear()
            if batch:
                await client.unlink(*batch)
            await client.publish(self.channel, self._message(clear=True))
        except Exception as exc:
            self._failed(exc)
            return
        self._recovered()

    def _message(self, *, keys: list[str] | None = None, clear: bool = False) -> str:
        msg: dict[str, Any] = {"o": self._origin}
        if clear:
            msg["c"] = 1
        else:
            msg["k"] = keys
        return json.dumps(msg, separators=(",", ":"))

    def _on_invalidation(self, channel: str, pattern: str | None, data: bytes) -> None:
        msg = json.loads(data)
        if msg.get("o") == self._origin:
            return
        self._generation += 1
        self._invalidations += 1
        if msg.get("c"):
            self._invalidate_all()
            self._data.clear()
            return
        for k in msg.get("k") or ():
            self._invalidate_key(k)
            self._data.pop(k, None)

    def _on_listener_lost(self) -> None:
        # L1 hits now check in first: reconnect (dropping L1), or serve L1 while Redis is down
        self._live_loop = None

    def _on_listener_reset(self) -> None:
        # invalidations may have been missed: nothing in L1 can be trusted any more
        self._live_loop = None
        self._generation += 1
        self._invalidate_all()
        self._data.clear()

    def _failed(self, exc: BaseException) -> None:
        if self._listener is not None:
            # the listener's reader may not have noticed yet that the server went away: its
            # session is replaced at the next ensure() (dropping L1: invalidations were missed)
            self._listener.suspect()
        self._l2_errors += 1
        self._l2_failures += 1
        self._last_error = type(exc).__name__
        self._inc("cache_l2_errors_total", 1, {"kind": "unavailable"})
        self._down_until = self.clock() + self.config.retry_interval
        if self._outage_since is None:
            self._outage_since = self.clock()
            self._outage_reason = f"{type(exc).__name__}: {exc}"
            logger.warning("cache[{}]: Redis L2 at {} unavailable ({}); serving from L1 until "
                           "it returns", self.config.namespace, _safe_url(self.config.redis_url),
                           self._outage_reason)

    def _recovered(self) -> None:
        if self._down_until is None:
            return
        self._down_until = None
        if self._outage_since is not None:
            logger.info("cache[{}]: Redis L2 is back after {:.1f}s", self.config.namespace,
                        self.clock() - self._outage_since)
            self._outage_since = None
            self._outage_reason = None


_RESUBSCRIBE_FIRST = 0.05  # seconds before the first resubscription attempt after a loss
_FOREVER = 2.0 ** 52 / 1000  # seconds (~140,000 years): longer TTLs are stored without expiry


def _redis_attributes(config: CachingConfig) -> dict[str, Any]:
    """The attributes of every L2 span: the server and database (OpenTelemetry's database
    conventions) and the cache namespace; never credentials, keys or values."""
    from urllib.parse import urlsplit

    from onex_compose.capabilities._redis import redis_url

    parts = urlsplit(redis_url(config.redis_url))
    attrs: dict[str, Any] = {"db.system.name": "redis", "onex.cache.namespace": config.namespace}
    if parts.scheme == "unix":
        attrs["server.address"] = parts.path
        attrs["db.namespace"] = dict(p.split("=", 1) for p in parts.query.split("&")
                                     if p.startswith("db=")).get("db", "0")
    else:
        attrs["server.address"] = parts.hostname or "127.0.0.1"
        attrs["server.port"] = parts.port or 6379
        index = parts.path.strip("/")
        attrs["db.namespace"] = index if index.isdigit() else "0"
    return attrs


def _safe_url(url: str | None) -> str:
    from urllib.parse import urlsplit

    from onex_compose.capabilities._redis import redis_url

    parts = urlsplit(redis_url(url))
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path}"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)

