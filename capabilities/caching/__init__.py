"""The ``caching`` capability: a bounded in-process L1 with an optional shared Redis L2.

``self.cache`` is a :class:`Cache`: async ``get``/``set``/``delete``/``clear``, ``get_or_set``
and a ``cached`` decorator with single-flight on a miss, ``contains``, ``stats()`` and
``health()``. ``self.generate_cache_key(data)`` turns any data into a stable key.

Semantics (the ones users of FusionCache, cachetools and aiocache expect, see
``reference/capabilities.md`` A.5):

* **L1** is an LRU bounded by ``max_entries`` with a TTL per entry. A TTL given per call wins;
  ``None`` falls back to ``default_ttl``; no default means the entry never expires; a TTL
  ``<= 0`` stores nothing (and removes the key, since a value that should already have expired
  must not be served). An expired entry reads as a miss and is removed on that read.
* **L2** (``backend: redis``) stores serialised values under ``<namespace>:cache:<key>`` with
  the same TTL, as JSON by default (``serializer: pickle`` is opt-in, for a Redis that only
  trusted processes can write to; an entry pickled by an older version reads as a miss). A
  read goes L1 → L2 and promotes an L2 hit into L1 with L2's remaining TTL (an L1 hit never
  touches Redis). Writes, deletes and clears go to both levels and publish an
  invalidation on ``<namespace>:invalidate``; every other process drops those keys from its L1.
  The invalidation listener is subscribed (confirmed by the server) before the first L2
  operation goes on. An L1 hit is served only while that subscription is live on the running
  event loop; otherwise the cache resubscribes first, and a new subscription after an earlier
  one (a reconnect, another event loop, a reopen after ``aclose``) drops L1, because
  invalidations sent in between were missed. Pub/sub is at-most-once; ``l1_ttl`` bounds L1
  staleness if you need a hard limit on top.
* **Redis down**: every operation keeps working on L1. The failure is counted
  (``cache_l2_errors_total``), logged once per outage, reported by :meth:`Cache.health`
  (``degraded``), and Redis is not tried again for ``retry_interval`` seconds (so a dead server
  costs nothing per call). Values written during the outage are served from L1. A supervisor
  task resubscribes the invalidation listener by itself, without any cache call (first after
  50 ms, then doubling up to ``retry_interval``), and a command the cache saw fail makes the
  next use replace the listener's connection rather than trust it. The first successful
  reconnection ends the outage; L1 is dropped then, because invalidations were missed.
* **A stored ``None``** is a value: ``get(key)`` returns ``None`` for both, so ask
  ``get(key, MISSING)`` (``MISSING`` is exported, and is ``cache.MISSING``) or ``contains(key)``.
  ``get_or_set`` and ``cached`` cache ``None`` results.
* **Single-flight**: concurrent ``get_or_set``/``cached`` misses of one key in one process run
  the loader once; the others wait for its result (or its exception, which is not cached).
* **An invalidation during a load wins**: a ``delete``, ``set`` or ``clear`` of the key (here,
  or from another process through the invalidation channel) while its loader runs means the
  loaded value is returned to the callers but stored in no level.
* **Fail-safe** (``fail_safe_ttl``, off by default): an L1 entry that expires is kept aside for
  that many seconds more; when a loader raises, that stale value is served instead of the
  error, counted (``cache_fail_safe_total``) and logged once per key until a load succeeds.
  An invalidation removes the fallback too.
* ``enabled: false``: ``get`` always misses, ``set``/``delete``/``clear`` do nothing, and
  loaders always run.
* **Decorators**: ``@cached(ttl=...)`` (this module) memoises an ``async def`` *method* of a
  node in that node's ``self.cache``; ``@node.cache.cached(ttl=...)`` memoises a plain
  ``async def`` function in one cache. Keys are the function's qualified name plus the
  arguments (or ``key=callable``).
* **process()**: with ``wrap_process: true`` the guard hook ``_guard_caching`` (rank 40, outside
  retry and the other flow-control guards) memoises ``process()`` by its input. Off by default:
  memoising an EFFECT node would skip its side effects. A sync ``def process`` stays sync:
  ``_guard_sync_caching`` memoises it in L1 only (no event loop, no Redis; with a Redis L2,
  ``l1_ttl`` bounds how stale a sync memo can get).
* **Metrics** (into the node's metrics): ``cache_lookups_total{level=l1|l2, result=hit|miss}``
  (one metric, because seed 000's own ``compute()`` counts ``cache_hits``, whose Prometheus
  series a ``cache_hits_total`` metric would take), ``cache_evictions_total``,
  ``cache_loads_total``, ``cache_l2_errors_total{kind=unavailable|decode}``,
  ``cache_fail_safe_total``. ``stats()`` has
  the same counts per level without the metrics capability.
* **Health**: when the node has ``health_check``, ``cache.health()`` is registered as the
  ``cache`` check (found through the node's composition, never by probing with ``hasattr``).
* **Tracing**: when the node has ``tracing`` with ``caching`` in its ``instrument`` list,
  each Redis L2 round trip is a CLIENT span (``cache.l2.get`` with ``onex.cache.hit``,
  ``cache.l2.set``, ``cache.l2.delete``, ``cache.l2.clear``; ``db.system.name=redis``), a
  child of the current span. L1 hits report nothing; without tracing nothing changes.

Layout (one module per role): ``_model.py`` (config, errors, ``MISSING``), ``_keys.py`` (the
canonical key encoder and why it exists), ``_memory.py`` (the L1 and why it is not
``cachetools``), ``_redis.py`` (the Redis L2, invalidation and outages), ``_cache.py`` (the
:class:`Cache` facility), this module (the mixin and the ``cached`` decorator), and the contract
``mixin_caching.yaml`` beside them. The codecs are shared with event_bus
(``capabilities/_codecs.py``).

Example:
    >>> import asyncio
    >>> from onex_compose import NodeCompute, compose
    >>> Service = compose(NodeCompute, ["caching"])
    >>> node = Service(capability_config={"caching": {"default_ttl": 60}})
    >>> async def demo():
    ...     await node.cache.set("answer", 42)
    ...     return await node.cache.get("answer")
    >>> asyncio.run(demo())
    42
    >>> node.generate_cache_key({"b": 1, "a": 2}) == node.generate_cache_key({"a": 2, "b": 1})
    True
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities._traced import tracer_for
from onex_compose.capabilities.caching._cache import Cache
from onex_compose.capabilities.caching._keys import _call_key, _canon, canonical, generate_cache_key
from onex_compose.capabilities.caching._model import (
    MISSING,
    CacheKeyError,
    CacheSerializationError,
    CachingConfig,
    CachingProtocol,
    _check_ttl,
    _require_async,
)

__all__ = [
    "MISSING",
    "Cache",
    "CacheKeyError",
    "CacheSerializationError",
    "CachingConfig",
    "CachingProtocol",
    "MixinCaching",
    "cached",
    "canonical",
    "generate_cache_key",
]

T = TypeVar("T")

_ = _canon  # re-exported for tests of the encoder


def cached(ttl: float | None = None, *, key: Callable[..., str] | None = None
           ) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Decorator for ``async def`` methods of a node with caching: memoise in ``self.cache``.

    Args:
        ttl: seconds (``None``: the cache's ``default_ttl``).
        key: builds the key from the method's arguments (without ``self``); default: the
            method's qualified name plus :func:`generate_cache_key` of the arguments.

    Concurrent misses of one key run the method once (single-flight); a ``None`` result is
    cached; exceptions are not.

    Example:
        >>> import asyncio
        >>> from onex_compose import NodeCompute, compose
        >>> class Lookup(compose(NodeCompute, ["caching"])):
        ...     calls = 0
        ...     @cached(ttl=60)
        ...     async def user(self, user_id):
        ...         type(self).calls += 1
        ...         return {"id": user_id}
        >>> node = Lookup()
        >>> async def demo():
        ...     await node.user(1)
        ...     return await node.user(1)
        >>> asyncio.run(demo()), Lookup.calls
        ({'id': 1}, 1)
    """
    _check_ttl(ttl)

    def decorate(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        _require_async(fn)
        prefix = f"fn:{fn.__module__}.{fn.__qualname__}:"

        @functools.wraps(fn)
        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
            k = key(*args, **kwargs) if key else prefix + _call_key(args, kwargs)
            cache: Cache = self.cache
            value = await cache.get(k, MISSING)
            if value is not MISSING:
                return value  # type: ignore[no-any-return]
            return await cache._load(  # type: ignore[no-any-return]
                k, lambda: fn(self, *args, **kwargs), ttl)

        return wrapper

    return decorate

# -- the mixin -------------------------------------------------------------------------------


class MixinCaching:
    """Multi-level caching for a node: ``self.cache`` and ``self.generate_cache_key(data)``.

    Configured by the ``caching`` subcontract (:class:`CachingConfig`). When the node also has
    the ``health_check`` capability, the cache's :meth:`Cache.health` is registered as the
    ``cache`` check. With ``wrap_process: true`` the node's ``process()`` results are memoised
    (guard rank 40: outside retry and the other flow-control guards).

    Example:
        >>> import asyncio
        >>> from onex_compose import NodeCompute
        >>> class Service(NodeCompute, MixinCaching):
        ...     pass
        >>> service = Service()
        >>> async def demo():
        ...     await service.cache.set("key", "value", ttl=60)
        ...     return await service.cache.get("key")
        >>> asyncio.run(demo())
        'value'
    """

    __onex_capability__ = "caching"
    __slots__ = ()

    def setup_caching(self, config: CachingConfig | Mapping[str, Any] | None = None) -> None:
        """Build ``self.cache`` from the caching subcontract (a model, a mapping or ``None``)."""
        cfg = coerce_config(CachingConfig, config, "caching")
        node: Any = self
        old = getattr(node, "cache", None)
        node.cache = Cache(cfg, metrics=node.metrics, owner=str(getattr(node, "node_id", "cache")),
                           clock=old.clock if isinstance(old, Cache) else None)
        if has_capability(self, "health_check"):
            node.register_health_check(node.cache.health, name="cache")
        if has_capability(self, "tracing"):
            node.cache.use_tracer(tracer_for(self, "caching"))

    @facility
    def cache(self) -> Cache:
        """The node's cache (built with defaults if ``setup_caching`` never ran)."""
        node: Any = self
        return Cache(CachingConfig(), metrics=node.metrics)

    def generate_cache_key(self, data: Any) -> str:
        """A stable key for ``data``: equal for equal data whatever the dict order, different
        for different data; works for sets, bytes, dataclasses and other non-JSON data.

        Example:
            >>> from onex_compose import NodeCompute
            >>> class Service(NodeCompute, MixinCaching):
            ...     pass
            >>> s = Service()
            >>> s.generate_cache_key({"a": 1, "b": {2, 3}}) == s.generate_cache_key(
            ...     {"b": {3, 2}, "a": 1})
            True
        """
        return generate_cache_key(data)

    async def start_caching(self) -> None:
        """Connect to Redis and subscribe to invalidations (no-op on the memory backend)."""
        node: Any = self
        await node.cache.start()

    async def close_caching(self) -> None:
        """Stop the invalidation listener (idempotent)."""
        node: Any = self
        cache = getattr(node, "cache", None)
        if isinstance(cache, Cache):
            await cache.aclose()

    def _guard_caching(self, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """Wrap ``process()``: with ``wrap_process: true``, serve repeated inputs from the cache
        (single-flight, ``default_ttl``); otherwise call straight through."""
        node: Any = self
        prefix = f"process:{type(self).__module__}.{type(self).__qualname__}:"

        @functools.wraps(call)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            cache: Cache = node.cache
            if not cache.config.wrap_process:
                return await call(*args, **kwargs)
            key = prefix + _call_key(args, kwargs)
            return await cache.get_or_set(key, lambda: call(*args, **kwargs))

        return guarded

    def _guard_sync_caching(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a sync ``def process``: with ``wrap_process: true``, serve repeated inputs from
        the L1 (``default_ttl``, fail-safe); otherwise call straight through. ``process`` stays
        a plain function; with a Redis L2 the sync path uses L1 only (see
        :meth:`Cache._memoise_sync`)."""
        node: Any = self
        prefix = f"process:{type(self).__module__}.{type(self).__qualname__}:"

        @functools.wraps(call)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            cache: Cache = node.cache
            if not cache.config.wrap_process:
                return call(*args, **kwargs)
            return cache._memoise_sync(prefix + _call_key(args, kwargs),
                                       lambda: call(*args, **kwargs))

        return guarded
