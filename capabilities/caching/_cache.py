"""The ``self.cache`` facility: :class:`Cache` (reads, writes, single-flight, stats, health)."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from onex_compose import coerce_config
from onex_compose.capabilities import _context
from onex_compose.capabilities._codecs import Codec, codec
from onex_compose.capabilities._redis import require_client
from onex_compose.capabilities.caching._keys import _call_key
from onex_compose.capabilities.caching._model import (
    _L1_HIT,
    _L1_MISS,
    MISSING,
    CacheSerializationError,
    CachingConfig,
    _bad_key,
    _call,
    _check_ttl,
    _no_metric,
    _require_async,
    _running_loop,
)
from onex_compose.capabilities.caching._redis import _redis_attributes, _RedisLevel

__all__ = ["Cache"]

T = TypeVar("T")


class _LeaderCancelled(Exception):
    """Set on a single-flight future whose loader task was cancelled: waiters retry."""

class Cache(_RedisLevel):
    """The ``self.cache`` facility: L1 (LRU + TTL) with an optional Redis L2.

    Args:
        config: a :class:`CachingConfig` (or a mapping, or ``None`` for defaults).
        metrics: the node's metrics facility (anything with ``increment(name, value, labels)``);
            ``None`` records statistics locally only.
        clock: seconds, monotonic; TTLs and the outage back-off read it (tests pass a
            ``ManualClock``). It can also be replaced later: ``cache.clock = clock``.
        owner: a name for log messages (the node id).

    Example:
        >>> import asyncio
        >>> from onex_compose.capabilities._context import ManualClock
        >>> clock = ManualClock()
        >>> cache = Cache({"default_ttl": 10}, clock=clock)
        >>> async def demo():
        ...     await cache.set("k", None)           # a stored None ...
        ...     stored = await cache.get("k", MISSING)
        ...     clock.advance(11)
        ...     gone = await cache.get("k", MISSING)  # ... and an expired entry
        ...     return stored, gone
        >>> asyncio.run(demo())
        (None, MISSING)
    """

    MISSING = MISSING
    # tracing (use_tracer): class-level defaults, so a cache without a tracer has exactly the
    # instance attributes it had before tracing existed (same dict layout, same lookups)
    _tracer: Any = None
    _span_attrs: dict[str, Any] = {}  # never mutated: use_tracer replaces it
    _l2_failures = 0  # failed L2 round trips (unavailable); set on the instance when one fails
    _last_error: str | None = None  # the exception type of the last one

    def __init__(self, config: CachingConfig | Mapping[str, Any] | None = None, *,
                 metrics: Any = None, clock: Callable[[], float] | None = None,
                 owner: str = "cache") -> None:
        cfg: CachingConfig = coerce_config(CachingConfig, config, "caching")
        self.config = cfg
        self.clock: Callable[[], float] = clock or _context.monotonic
        self.owner = owner
        self._metrics = metrics
        inc = getattr(metrics, "increment", None)
        self._inc: Callable[..., Any] = inc if callable(inc) else _no_metric
        self._enabled = cfg.enabled
        self._max = cfg.max_entries
        self._default_ttl = cfg.default_ttl
        self._data: OrderedDict[str, tuple[Any, float | None]] = OrderedDict()
        self._hits = [0, 0]
        self._misses = [0, 0]
        self._evictions = 0
        self._loads = 0
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._generation = 0
        self._loading: dict[str, int] = {}   # loads in flight: invalidations seen meanwhile
        self._epoch = 0                      # bumped by clear() and by missed invalidations
        self._fail_safe = cfg.fail_safe_ttl
        self._stale: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        self._fail_safe_served = 0
        self._fail_safe_logged: set[str] = set()
        # L2
        self._l2 = cfg.backend == "redis" and cfg.enabled
        if self._l2:
            require_client("caching")
        self._serializer: Codec | None = (
            codec(cfg.serializer, what="caching.serializer", error=CacheSerializationError)
            if self._l2 else None)
        self._prefix = f"{cfg.namespace}:cache:"
        self.channel = f"{cfg.namespace}:invalidate"
        self._origin = uuid.uuid4().hex
        self._listener: Any = None
        self._live_loop: asyncio.AbstractEventLoop | None = None  # where invalidations arrive
        self._supervisor: asyncio.Task[None] | None = None  # resubscribes after an outage
        self._down_until: float | None = None
        self._outage_since: float | None = None
        self._outage_reason: str | None = None
        self._l2_errors = 0
        self._l2_skipped = 0
        self._invalidations = 0
        self._legacy_logged = False

    def __repr__(self) -> str:
        level = "L1+redis" if self._l2 else "L1"
        return (f"<Cache {self.owner} {level} namespace={self.config.namespace!r} "
                f"entries={len(self._data)}/{self._max}>")

    def __reduce__(self) -> tuple[Any, ...]:
        # locks, futures and connections are rebuilt from configuration (metrics link dropped)
        return (Cache, (self.config,), None)

    def use_tracer(self, tracer: Any) -> None:
        """Report each Redis L2 round trip as a CLIENT span on ``tracer`` (``None``: stop).

        The spans are ``cache.l2.get`` (with ``onex.cache.hit``), ``cache.l2.set``,
        ``cache.l2.delete`` and ``cache.l2.clear``, with ``db.system.name=redis``, the
        server's address, port and database index, and ``onex.cache.namespace``; never a key
        or a value. A failed round trip (served from L1) has status ERROR and ``error.type``.
        L1 hits and a memory-only cache report nothing. The mixin calls this in
        ``setup_caching`` when the node composes tracing with ``caching`` in its
        ``instrument`` list.
        """
        self._tracer = tracer
        if tracer is not None and self._l2:
            self._span_attrs = _redis_attributes(self.config)

    def __len__(self) -> int:
        """Entries in L1 right now (expired ones count until read or purged)."""
        return len(self._data)

    # -- reads --------------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default`` on a miss.

        Pass ``MISSING`` as ``default`` to tell a stored ``None`` from a miss.

        Example:
            >>> import asyncio
            >>> cache = Cache()
            >>> asyncio.run(cache.get("absent", MISSING)) is MISSING
            True
        """
        try:
            entry = self._data.get(key)
        except TypeError:  # unhashable
            _bad_key(key)
        if entry is not None:
            exp = entry[1]
            if exp is None or exp > self.clock():
                if self._l2 and self._live_loop is not _running_loop():
                    # L1 is trusted only while invalidations can reach it
                    return await self._get_listening(key, default)
                try:
                    self._data.move_to_end(key)
                except KeyError:  # removed meanwhile by another thread: still a hit
                    pass
                self._hits[0] += 1
                self._inc("cache_lookups_total", 1, _L1_HIT)
                return entry[0]
            self._expire(key, entry)
        if not self._enabled:
            return default
        if not isinstance(key, str):
            _bad_key(key)
        self._misses[0] += 1
        self._inc("cache_lookups_total", 1, _L1_MISS)
        if self._l2:
            return await self._l2_get(key, default)
        return default

    async def _get_listening(self, key: str, default: Any) -> Any:
        """``get`` when the listener is not live on this loop: (re)subscribe first, which drops
        L1 if invalidations may have been missed, then read (from L1 alone if Redis is down)."""
        ready = await self._l2_ready()
        value = self._l1_peek(key)
        if value is not MISSING:
            self._hits[0] += 1
            self._inc("cache_lookups_total", 1, _L1_HIT)
            return value
        self._misses[0] += 1
        self._inc("cache_lookups_total", 1, _L1_MISS)
        if ready:
            return await self._l2_get(key, default)
        return default

    async def contains(self, key: str) -> bool:
        """Whether ``key`` holds a value (a stored ``None`` counts), in L1 or L2."""
        return (await self.get(key, MISSING)) is not MISSING

    # -- writes -------------------------------------------------------------------------------

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` in every level.

        Args:
            key: a string (see :meth:`MixinCaching.generate_cache_key`).
            value: any value (``None`` included); with an L2 it must be serialisable.
            ttl: seconds; ``None`` uses ``default_ttl`` (``None`` there: never expires);
                ``<= 0`` stores nothing and removes the key.

        Raises:
            CacheKeyError: ``key`` is not a string.
            TypeError, ValueError: ``ttl`` is not a number of seconds (or is NaN).
            CacheSerializationError: the L2 serializer cannot encode ``value``.
        """
        if not self._enabled:
            return
        if not isinstance(key, str):
            _bad_key(key)
        if ttl is None:
            ttl = self._default_ttl
        elif (ttl.__class__ is not int and ttl.__class__ is not float) or ttl != ttl:
            _check_ttl(ttl)
        if ttl is not None and ttl <= 0:
            await self.delete(key)
            return
        if self._loading or self._stale:
            self._invalidate_key(key)  # a newer value: a load in flight must not replace it
        if self._l2:
            payload = self._dumps(key, value)
            if self._tracer is not None:
                await self._l2_set_traced(key, value, payload, ttl)
                return
            ready = await self._l2_ready()  # listening for invalidations before L1 holds it
            self._l1_store(key, value, ttl)
            if ready:
                await self._l2_set(key, payload, ttl)
            return
        self._l1_store(key, value, ttl)

    async def _store(self, key: str, value: Any, ttl: float | None) -> None:
        """Store a loaded value (``ttl`` resolved, ``> 0`` or ``None``) in every level."""
        if self._l2:
            payload = self._dumps(key, value)
            if self._tracer is not None:
                await self._l2_set_traced(key, value, payload, ttl)
                return
            ready = await self._l2_ready()
            self._l1_store(key, value, ttl)
            if ready:
                await self._l2_set(key, payload, ttl)
            return
        self._l1_store(key, value, ttl)

    async def delete(self, key: str) -> bool:
        """Remove ``key`` from every level (and from every process's L1). Missing keys are
        ignored. Returns whether a value was removed here (L1, or L2 when configured)."""
        if not self._enabled:
            return False
        self._generation += 1
        self._invalidate_key(key)
        found = self._data.pop(key, None) is not None
        if self._l2:
            found = await self._l2_delete(key) or found
        return found

    async def clear(self) -> bool:
        """Empty every level (this namespace only in Redis) and every process's L1."""
        if not self._enabled:
            return False
        self._generation += 1
        self._invalidate_all()
        self._data.clear()
        if self._l2:
            await self._l2_clear()
        return True

    # -- single-flight -----------------------------------------------------------------------

    async def get_or_set(self, key: str, loader: Callable[[], Any],
                         ttl: float | None = None) -> Any:
        """The cached value, or the result of ``loader()`` stored under ``key``.

        ``loader`` is a zero-argument callable returning a value or an awaitable. Concurrent
        misses of one key run it once; the others get its result (or its exception; failures
        are not cached). A ``None`` result is cached like any value.

        Example:
            >>> import asyncio
            >>> cache, calls = Cache(), []
            >>> async def load():
            ...     calls.append(1)
            ...     await asyncio.sleep(0.01)
            ...     return "value"
            >>> async def demo():
            ...     return await asyncio.gather(*(cache.get_or_set("k", load) for _ in range(100)))
            >>> len(set(asyncio.run(demo()))), len(calls)
            (1, 1)
        """
        value = await self.get(key, MISSING)
        if value is not MISSING:
            return value
        _check_ttl(ttl)  # before the loader runs, not after
        return await self._load(key, loader, ttl)

    async def _load(self, key: str, loader: Callable[[], Any], ttl: float | None) -> Any:
        """The miss path of :meth:`get_or_set`: single-flight ``loader`` then ``set``."""
        if not self._enabled:
            self._loads += 1
            return await _call(loader)
        loop = asyncio.get_running_loop()
        while True:
            fut = self._inflight.get(key)
            if fut is None or fut.get_loop() is not loop or fut.done():
                break
            try:
                return await asyncio.shield(fut)
            except _LeaderCancelled:
                value = self._l1_peek(key)
                if value is not MISSING:
                    return value
                continue  # the loader's caller was cancelled: take over
        value = self._l1_peek(key)  # a load that finished while we looked
        if value is not MISSING:
            return value
        fut = self._inflight[key] = loop.create_future()
        token = self._begin_load(key)
        try:
            self._loads += 1
            self._inc("cache_loads_total", 1, None)
            try:
                value = await _call(loader)
            except Exception as exc:
                self._loading.pop(key, None)
                stale = self._stale_value(key)
                if stale is MISSING:
                    raise
                value = self._serve_stale(key, stale, exc)
            else:
                if self._may_store(key, token):  # an invalidation during the load wins
                    self._loaded(key)
                    if ttl is None:
                        ttl = self._default_ttl
                    if ttl is None or ttl > 0:
                        await self._store(key, value, ttl)
                    else:
                        await self.delete(key)
        except asyncio.CancelledError:
            fut.set_exception(_LeaderCancelled())
            fut.exception()
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()
            raise
        else:
            fut.set_result(value)
            return value
        finally:
            if self._inflight.get(key) is fut:
                del self._inflight[key]
            self._loading.pop(key, None)

    def _memoise_sync(self, key: str, call: Callable[[], Any]) -> Any:
        """The sync ``process()`` guard's path: L1 only, no event loop, no Redis.

        A hit is served from L1; a miss runs ``call()`` in the calling thread and stores the
        result in L1 with ``default_ttl`` (capped by ``l1_ttl`` when an L2 is configured). An
        invalidation during the call wins (nothing stored), a raising call serves the
        fail-safe value when there is one. There is no single-flight across threads: two
        threads missing one key at once both run the body.

        With ``backend: redis`` the sync path neither reads nor writes Redis (a sync call
        cannot wait for it without blocking the thread on network I/O): L1 entries are still
        dropped by the invalidations the listener receives while it runs on an event loop, and
        ``l1_ttl`` bounds how long a sync memo can be stale otherwise.
        """
        if not self._enabled:
            return call()
        entry = self._data.get(key)
        if entry is not None:
            exp = entry[1]
            if exp is None or exp > self.clock():
                try:
                    self._data.move_to_end(key)
                except KeyError:  # removed meanwhile by another thread: still a hit
                    pass
                self._hits[0] += 1
                self._inc("cache_lookups_total", 1, _L1_HIT)
                return entry[0]
            self._expire(key, entry)
        self._misses[0] += 1
        self._inc("cache_lookups_total", 1, _L1_MISS)
        token = self._begin_load(key)
        self._loads += 1
        self._inc("cache_loads_total", 1, None)
        try:
            value = call()
        except Exception as exc:
            self._loading.pop(key, None)
            stale = self._stale_value(key)
            if stale is MISSING:
                raise
            return self._serve_stale(key, stale, exc)
        if self._may_store(key, token):
            self._loaded(key)
            ttl = self._default_ttl
            if ttl is None or ttl > 0:
                self._l1_store(key, value, ttl)
        return value

    def cached(self, ttl: float | None = None, *,
               key: Callable[..., str] | None = None) -> Callable[[Callable[..., Awaitable[T]]],
                                                              Callable[..., Awaitable[T]]]:
        """Decorator: memoise an ``async def`` function in this cache (single-flight).

        Args:
            ttl: seconds (``None``: ``default_ttl``).
            key: builds the key from the call's arguments (default: the function's qualified
                name plus :func:`generate_cache_key` of the arguments).

        For methods of a node, use the module-level :func:`cached` instead: it finds the
        instance's ``self.cache`` at call time.

        Example:
            >>> import asyncio
            >>> cache = Cache()
            >>> @cache.cached(ttl=60)
            ... async def square(x):
            ...     return x * x
            >>> asyncio.run(square(7))
            49
        """
        _check_ttl(ttl)

        def decorate(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
            _require_async(fn)
            prefix = f"fn:{fn.__module__}.{fn.__qualname__}:"

            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> T:
                k = key(*args, **kwargs) if key else prefix + _call_key(args, kwargs)
                value = await self.get(k, MISSING)
                if value is not MISSING:
                    return value  # type: ignore[no-any-return]
                return await self._load(k, lambda: fn(*args, **kwargs), ttl)  # type: ignore[no-any-return]

            return wrapper

        return decorate

    # -- introspection -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters and L1 contents, after purging expired entries.

        Returns:
            ``enabled``, ``backend``, ``entries`` (L1 count), ``keys`` (L1 keys, least recently
            used first), ``max_entries``, ``hits``/``misses`` per level (``l1``, ``l2``),
            ``evictions``, ``loads`` (loader runs), and for Redis ``l2`` (its health).
        """
        self.purge_expired()
        out: dict[str, Any] = {
            "enabled": self._enabled,
            "backend": self.config.backend,
            "namespace": self.config.namespace,
            "entries": len(self._data),
            "keys": list(self._data),
            "max_entries": self._max,
            "hits": {"l1": self._hits[0], "l2": self._hits[1]},
            "misses": {"l1": self._misses[0], "l2": self._misses[1]},
            "evictions": self._evictions,
            "loads": self._loads,
            "fail_safe": {"served": self._fail_safe_served, "stale_entries": len(self._stale)},
        }
        if self._l2:
            out["l2"] = self.health()
        return out

    def health(self) -> dict[str, Any]:
        """A health report: ``status`` is ``healthy``, or ``degraded`` while Redis is down
        (the cache still serves from L1). ``register_health_check(node.cache.health)`` makes it
        part of a node's report (the mixin does this itself when the node has health_check).

        Example:
            >>> Cache().health()["status"]
            'healthy'
        """
        report: dict[str, Any] = {"status": "healthy", "backend": self.config.backend,
                                  "enabled": self._enabled}
        if not self._l2:
            return report
        listener = self._listener
        report.update({
            "l2": "down" if self._outage_since is not None else "up",
            "errors": self._l2_errors,
            "skipped": self._l2_skipped,
            "invalidations_received": self._invalidations,
            "listener": bool(listener is not None and listener.connected),
        })
        if self._outage_since is not None:
            report["status"] = "degraded"
            report["reason"] = f"Redis L2 unavailable, serving from L1: {self._outage_reason}"
        return report

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and subscribe to invalidations now (otherwise done on first use). A Redis
        outage does not fail the start: the cache runs on L1 and says so in :meth:`health`."""
        if self._l2:
            await self._l2_ready()

    async def aclose(self) -> None:
        """Stop the invalidation listener and drop in-flight loads (idempotent; no task is left
        behind). The cache stays usable: the next L2 operation reconnects."""
        # the listener object is kept: its next session knows it follows an earlier one and
        # drops L1 (invalidations sent while closed were missed)
        self._live_loop = None
        await self._stop_supervisor()
        if self._listener is not None:
            await self._listener.aclose()
        for fut in list(self._inflight.values()):
            if not fut.done():
                fut.cancel()
        self._inflight.clear()
