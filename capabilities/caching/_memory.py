"""The L1: an LRU ``OrderedDict`` of ``(value, expires_at)`` pairs, bounded by ``max_entries``.

Why the L1 is written here instead of using ``cachetools.TTLCache``: TTLCache has one TTL per
cache (``TLRUCache`` needs a per-item function), evicts by insertion expiry rather than LRU
order, keeps no per-level statistics, and a sync ``TTLCache`` lookup alone costs more than
this cache's async ``get`` without metrics (``benchmarks/bench_cache.py`` measures both in one
run). The clock is read only for entries that expire.

:class:`_MemoryLevel` is a base of :class:`~onex_compose.capabilities.caching.Cache` (the
methods share the facility's state; no extra call on the hot path).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

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

    def _l1_peek(self, key: str) -> Any:
        entry = self._data.get(key)
        if entry is None:
            return MISSING
        if entry[1] is not None and entry[1] <= self.clock():
            self._data.pop(key, None)
            return MISSING
        return entry[0]

    def _l1_store(self, key: str, value: Any, ttl: float | None) -> None:
        if self._l2 and self.config.l1_ttl is not None:
            ttl = self.config.l1_ttl if ttl is None else min(ttl, self.config.l1_ttl)
        data = self._data
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
        dead = [k for k, (_v, exp) in list(self._data.items()) if exp is not None and exp <= now]
        for k in dead:
            self._data.pop(k, None)
        return len(dead)
