"""The Redis store of the notifier: dedup, deferred notifications (the digest), rate-limit
skips and pending escalations, shared by every process using the same ``namespace``.

Every read-and-clear is one Lua script, so two processes never both send the same digest or
escalate the same notification.
"""

from __future__ import annotations

import json
from typing import Any

from onex_compose.capabilities.notification._model import Notification

__all__ = ["RedisStore", "note_from_dict"]

_DEDUP = """
local untl = tonumber(redis.call('HGET', KEYS[1], 'until'))
local now = tonumber(ARGV[1])
if untl and now < untl then
  redis.call('HINCRBY', KEYS[1], 'n', 1)
  return -1
end
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
redis.call('HSET', KEYS[1], 'until', tostring(now + tonumber(ARGV[2])), 'n', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return n
"""

_TAKE_LIST = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return items
"""

_TAKE_HASH = """
local items = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return items
"""

_TAKE_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local data = redis.call('HGET', KEYS[2], id)
  redis.call('HDEL', KEYS[2], id)
  if data then table.insert(out, data) end
end
return out
"""

_ACK = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return removed
"""


def note_from_dict(data: dict[str, Any]) -> Notification:
    """Rebuild a :class:`Notification` from :meth:`Notification.to_dict`.

    Example:
        >>> n = Notification("1", "t", "m", "error", ("a",))
        >>> note_from_dict(n.to_dict()) == n
        True
    """
    return Notification(data["id"], data["title"], data["message"], data["severity"],
                        tuple(data.get("tags") or ()), data.get("data"),
                        data.get("dedup_key", ""), float(data.get("timestamp", 0.0)),
                        int(data.get("repeats", 0)), data.get("source"),
                        data.get("kind", "notification"))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """Notifier state under ``<namespace>:notify:`` (the asyncio client of the running loop)."""

    def __init__(self, url: str | None, namespace: str) -> None:
        self.url = url
        self.prefix = f"{namespace}:notify:"

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r})"

    def _client(self) -> Any:
        from onex_compose.capabilities._redis import async_client

        return async_client(self.url)

    async def dedup(self, key: str, now: float, window: float) -> int:
        """Suppressed: ``-1``; else the repeats since the last delivered one."""
        keep_ms = int(max(window * 10, 3600) * 1000)
        n = await self._client().eval(_DEDUP, 1, f"{self.prefix}dedup:{key}", repr(now),
                                      repr(window), keep_ms)
        return int(n)

    async def defer(self, note: Notification, channels: tuple[str, ...]) -> None:
        item = json.dumps({"note": note.to_dict(), "channels": list(channels)}, default=str)
        await self._client().rpush(f"{self.prefix}deferred", item)

    async def take_deferred(self) -> list[tuple[Notification, tuple[str, ...]]]:
        raw = await self._client().eval(_TAKE_LIST, 1, f"{self.prefix}deferred")
        out = []
        for item in raw or ():
            data = json.loads(_text(item))
            out.append((note_from_dict(data["note"]), tuple(data["channels"])))
        return out

    async def has_deferred(self) -> bool:
        return bool(await self._client().llen(f"{self.prefix}deferred"))

    async def skip(self, channel: str) -> None:
        await self._client().hincrby(f"{self.prefix}skipped", channel, 1)

    async def take_skipped(self) -> dict[str, int]:
        raw = list(await self._client().eval(_TAKE_HASH, 1, f"{self.prefix}skipped") or ())
        return {_text(raw[i]): int(raw[i + 1]) for i in range(0, len(raw), 2)}

    async def escalate_later(self, note: Notification, at: float) -> None:
        client = self._client()
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(f"{self.prefix}esc:data", note.id, json.dumps(note.to_dict(), default=str))
            pipe.zadd(f"{self.prefix}esc", {note.id: at})
            await pipe.execute()

    async def take_due(self, now: float) -> list[Notification]:
        raw = await self._client().eval(_TAKE_DUE, 2, f"{self.prefix}esc",
                                        f"{self.prefix}esc:data", repr(now))
        return [note_from_dict(json.loads(_text(r))) for r in raw or ()]

    async def acknowledge(self, notification_id: str) -> bool:
        n = await self._client().eval(_ACK, 2, f"{self.prefix}esc", f"{self.prefix}esc:data",
                                      notification_id)
        return bool(n)

    async def counts(self) -> dict[str, int]:
        client = self._client()
        skipped = await client.hvals(f"{self.prefix}skipped")
        return {"deferred": int(await client.llen(f"{self.prefix}deferred")),
                "skipped": sum(int(v) for v in skipped),
                "escalations": int(await client.zcard(f"{self.prefix}esc"))}
