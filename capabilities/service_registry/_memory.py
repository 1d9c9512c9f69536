"""The memory backend: one process-wide table per namespace (like the memory event bus).

Every registry facility of the process with the same ``namespace`` shares the table and hears
every change. Operations are atomic under one lock, so, as on Redis, exactly one ``offline``
change is produced per expiry however many facilities sweep.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from onex_compose.capabilities.service_registry._model import (
    RegistryChange,
    RegistryConflictError,
    ServiceEntry,
)

__all__ = ["MemoryBackend"]


class _Table:
    __slots__ = ("by_cap", "entries", "listeners", "lock")

    def __init__(self) -> None:
        self.entries: dict[str, ServiceEntry] = {}
        self.by_cap: dict[str, set[str]] = {}      # capability -> instance ids (an index)
        self.lock = threading.Lock()
        self.listeners: weakref.WeakSet[Any] = weakref.WeakSet()


_tables: dict[str, _Table] = {}
_tables_lock = threading.Lock()


def _table(namespace: str) -> _Table:
    with _tables_lock:
        table = _tables.get(namespace)
        if table is None:
            table = _tables[namespace] = _Table()
        return table


class MemoryBackend:
    """The in-process table of one namespace.

    Example:
        >>> MemoryBackend("doc-memory")
        <MemoryBackend namespace='doc-memory' entries=0>
    """

    kind = "memory"

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._t = _table(namespace)

    def __repr__(self) -> str:
        return f"<MemoryBackend namespace={self.namespace!r} entries={len(self._t.entries)}>"

    # -- change delivery ---------------------------------------------------------------------

    def listen(self, facility: Any) -> None:
        """Deliver this namespace's changes to ``facility._deliver(change)``."""
        self._t.listeners.add(facility)

    def unlisten(self, facility: Any) -> None:
        self._t.listeners.discard(facility)

    def _emit(self, changes: Iterable[RegistryChange]) -> None:
        listeners = list(self._t.listeners)
        for change in changes:
            for facility in listeners:
                facility._deliver(change)

    # -- operations --------------------------------------------------------------------------

    async def register(self, entry: ServiceEntry, *, replace_: bool, now: float | None,
                       ttl: float) -> RegistryChange:
        assert now is not None
        t = self._t
        with t.lock:
            cur = t.entries.get(entry.instance_id)
            kind = "registered"
            registered_at = now
            if cur is not None:
                online = cur.status == "online" and now < cur.expires_at
                if cur.instance != entry.instance:
                    if online and not replace_:
                        raise _conflict(entry.instance_id, cur.instance)
                elif cur.status != "left":
                    kind = "updated" if online else "online"
                    registered_at = cur.registered_at
            new = replace(entry, status="online", registered_at=registered_at,
                          last_heartbeat=now, expires_at=now + ttl)
            if cur is not None:
                _unindex(t, cur)
            t.entries[entry.instance_id] = new
            for cap in new.capabilities:
                t.by_cap.setdefault(cap, set()).add(new.instance_id)
            change = RegistryChange(kind, new)
        self._emit([change])
        return change

    async def heartbeat(self, instance_id: str, token: str, *, now: float | None,
                        ttl: float) -> tuple[str, Any]:
        """``("ok"|"online", entry)``, ``("missing", None)``, ``("left", None)`` or
        ``("conflict", holder)``."""
        assert now is not None
        t = self._t
        with t.lock:
            cur = t.entries.get(instance_id)
            if cur is None:
                return "missing", None
            if cur.instance != token:
                return "conflict", cur.instance
            if cur.status == "left":
                return "left", None
            kind = "online" if cur.status == "offline" else "ok"
            new = t.entries[instance_id] = cur._renewed(now, now + ttl)
        if kind == "online":
            self._emit([RegistryChange("online", new)])
        return kind, new

    async def deregister(self, instance_id: str, token: str, *,
                         now: float | None) -> RegistryChange | None:
        assert now is not None
        t = self._t
        with t.lock:
            cur = t.entries.get(instance_id)
            if cur is None or cur.instance != token or cur.status == "left":
                return None
            new = t.entries[instance_id] = replace(cur, status="left", expires_at=now)
            change = RegistryChange("left", new)
        self._emit([change])
        return change

    async def sweep(self, *, now: float | None,
                    purge_after: float) -> tuple[list[RegistryChange], dict[str, int]]:
        assert now is not None
        t = self._t
        changes: list[RegistryChange] = []
        counts = {"online": 0, "offline": 0, "left": 0}
        with t.lock:
            for iid, cur in list(t.entries.items()):
                if cur.status == "online" and now >= cur.expires_at:
                    cur = t.entries[iid] = replace(cur, status="offline")
                    changes.append(RegistryChange("offline", cur))
                if cur.status != "online" and now >= cur.expires_at + purge_after:
                    del t.entries[iid]
                    _unindex(t, cur)
                    changes.append(RegistryChange("purged", cur))
                    continue
                counts[cur.status] += 1
        self._emit(changes)
        return changes, counts

    async def query(self, capabilities: list[str] | None,
                    now: float | None) -> tuple[list[ServiceEntry], float]:
        assert now is not None
        t = self._t
        if not capabilities:
            return list(t.entries.values()), now
        with t.lock:
            sets = [t.by_cap.get(c, _EMPTY) for c in capabilities]
            ids = set.intersection(*sets) if len(sets) > 1 else sets[0]
            entries = t.entries
            return [entries[i] for i in ids], now

    async def get(self, instance_id: str, now: float | None) -> tuple[ServiceEntry | None, float]:
        assert now is not None
        return self._t.entries.get(instance_id), now

    async def aclose(self) -> None:
        """Nothing to close (the table outlives the facility)."""

    def clear(self) -> None:
        """Forget every entry of the namespace (tests)."""
        with self._t.lock:
            self._t.entries.clear()
            self._t.by_cap.clear()


_EMPTY: set[str] = set()


def _unindex(t: _Table, entry: ServiceEntry) -> None:
    for cap in entry.capabilities:
        ids = t.by_cap.get(cap)
        if ids is not None:
            ids.discard(entry.instance_id)
            if not ids:
                del t.by_cap[cap]


def _conflict(instance_id: str, holder: str) -> RegistryConflictError:
    return RegistryConflictError(
        f"instance id {instance_id!r} is held by another online instance ({holder[:8]}...): "
        "configure a different instance_id, or register(replace=True) to take it over")
