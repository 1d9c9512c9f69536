"""The L1: an LRU ``OrderedDict`` of ``(value, expires_at)`` pairs, bounded by ``max_entries``.

Why the L1 is written here instead of using ``cachetools.TTLCache``: TTLCache has one TTL per
cache (``TLRUCache`` needs a per-item function), evicts by insertion expiry rather than LRU
order, keeps no per-level statistics, and a sync ``TTLCache`` lookup alone costs more than
this cache's async ``get`` without metrics (``benchmarks/bench_cache.py`` measures both in one
run). The clock is read only for entries that expire.

Two pieces of state sit beside the entries:

* **loads in flight** (``_loading``: key -> invalidations seen since its load started). An
  invalidation of that key during the load (``delete``, another ``set``, an invalidation from
  another process, a ``clear``) wins: the loaded value is returned to its callers but not
  stored, so a delete is never undone by a load that started before it.
* **fail-safe** (``fail_safe_ttl``): an entry that expires is kept aside for that many more
  seconds (``_stale``, bounded by ``max_entries``); when a loader raises, the stale value is
  served instead of the error, counted in ``cache_fail_safe_total`` and logged once per key
  until a load of that key succeeds again. Invalidations remove stale values too.

:class:`_MemoryLevel` is a base of :class:`~onex_compose.capabilities.caching.Cache` (the
methods share the facility's state; no extra call on the hot path).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from onex_compose.capabilities._log import logger
from onex_compose.capabilities.caching._model import MISSING, CachingConfig


class _MemoryLevel:
    """L1 operations of :class:`Cache` (state is created by ``Cache.__init__``)."""

    config: CachingConfig
    clock: Callable[[], float]
    _data: OrderedDict[str, tuple[Any, float | None]]
    _l2: bool
    _max: int
    _evictions: int
    _inc: Callable[..., Any]
    _loading: dict[str, int]
    _epoch: int
    _fail_safe: float | None
    _stale: OrderedDict[str, tuple[Any, float]]
    _fail_safe_served: int
    _fail_safe_logged: set[str]

    def _l1_peek(self, key: str) -> Any:
        entry = self._data.get(key)
        if entry is None:
            return MISSING
        if entry[1] is not None and entry[1] <= self.clock():
            self._expire(key, entry)
            return MISSING
        return entry[0]

    def _l1_store(self, key: str, value: Any, ttl: float | None) -> None:
        if self._l2 and self.config.l1_ttl is not None:
            ttl = self.config.l1_ttl if ttl is None else min(ttl, self.config.l1_ttl)
        data = self._data
        if self._stale:
            self._stale.pop(key, None)
        data[key] = (value, None if ttl is None else self.clock() + ttl)
        try:
            data.move_to_end(key)
        except KeyError:
            pass
        while len(data) > self._max:
            try:
                data.popitem(last=False)
            except KeyError:
                break
            self._evictions += 1
            self._inc("cache_evictions_total", 1, None)

    def purge_expired(self) -> int:
        """Remove every expired L1 entry now; returns how many were removed."""
        now = self.clock()
        dead = [(k, e) for k, e in list(self._data.items()) if e[1] is not None and e[1] <= now]
        for k, e in dead:
            self._expire(k, e)
        if self._stale:
            for k, (_v, until) in list(self._stale.items()):
                if until <= now:
                    self._stale.pop(k, None)
        return len(dead)

    # -- expiry and fail-safe -----------------------------------------------------------------

    def _expire(self, key: str, entry: tuple[Any, float | None]) -> None:
        """Remove an expired entry; with ``fail_safe_ttl`` keep its value aside as a fallback."""
        if self._data.get(key) is entry:
            self._data.pop(key, None)
        fail_safe = self._fail_safe
        if fail_safe is None or entry[1] is None:
            return
        until = entry[1] + fail_safe
        if until <= self.clock():
            return
        stale = self._stale
        stale[key] = (entry[0], until)
        stale.move_to_end(key)
        while len(stale) > self._max:
            try:
                stale.popitem(last=False)
            except KeyError:
                break

    def _stale_value(self, key: str) -> Any:
        """The fail-safe value of ``key`` (an expired entry still within ``fail_safe_ttl``),
        or ``MISSING``."""
        if self._fail_safe is None:
            return MISSING
        entry = self._data.get(key)
        if entry is not None and entry[1] is not None and entry[1] <= self.clock():
            self._expire(key, entry)
        kept = self._stale.get(key)
        if kept is None:
            return MISSING
        if kept[1] <= self.clock():
            self._stale.pop(key, None)
            return MISSING
        return kept[0]

    def _serve_stale(self, key: str, value: Any, exc: BaseException) -> Any:
        """Count and (once per key until it loads again) log a fail-safe answer."""
        self._fail_safe_served += 1
        self._inc("cache_fail_safe_total", 1, None)
        if key not in self._fail_safe_logged:
            self._fail_safe_logged.add(key)
            logger.warning("cache[{}]: loading {!r} failed ({}: {}); serving the expired value "
                           "(fail-safe) until a load succeeds", self.config.namespace, key,
                           type(exc).__name__, exc)
        return value

    def _loaded(self, key: str) -> None:
        """A load of ``key`` succeeded: its next fail-safe answer is logged again."""
        if self._fail_safe_logged:
            self._fail_safe_logged.discard(key)

    # -- invalidation of loads in flight ------------------------------------------------------

    def _invalidate_key(self, key: str) -> None:
        """``key`` was deleted or overwritten (here or in another process): a load of it in
        flight must not store its result, and its fail-safe value is gone."""
        loading = self._loading
        if loading and key in loading:
            loading[key] += 1
        if self._stale:
            self._stale.pop(key, None)

    def _invalidate_all(self) -> None:
        """Every key was cleared, or invalidations may have been missed."""
        self._epoch += 1
        self._stale.clear()

    def _begin_load(self, key: str) -> tuple[int, int]:
        """Mark a load of ``key`` as in flight; the returned token is checked by
        :meth:`_may_store`."""
        self._loading[key] = 0
        return (self._epoch, 0)

    def _may_store(self, key: str, token: tuple[int, int]) -> bool:
        """End the load of ``key``: whether no invalidation arrived while it ran."""
        seen = self._loading.pop(key, None)
        return seen == token[1] and self._epoch == token[0]

