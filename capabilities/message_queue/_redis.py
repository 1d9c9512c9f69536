"""The ``redis`` backend of message_queue: Redis Streams with a consumer group.

Keys, with ``P = <ns>:mq:<queue>``:

* stream ``P`` (``ordering: key``: ``P:p<n>``, ``partitions`` streams, a key's partition being
  ``crc32(key) % partitions``), consumer group ``P`` on each; an entry holds ``id``, ``payload``,
  ``key``, ``headers`` and ``enq``;
* ``P:inflight`` (zset ``<partition>|<entry id>`` -> visible again at, in ms) and ``P:rcpt``
  (hash: the receipt of each delivery in progress), ``P:err`` (last errors);
* ``P:delayed`` (zset of message ids by due time, their fields in ``P:d:<id>``), promoted into
  the stream by the receive script;
* ``P:dead`` (stream of dead letters), ``P:idem:<key>`` (``SET NX PX dedup_window``).

Every step that must be atomic is one Lua script (an enqueue without idempotency key or delay
is a plain ``XADD``, which the script would only repeat): a receive promotes due delayed messages,
(creating the consumer groups on the first receive of a queue, and again after a ``NOGROUP``
error) reclaims deliveries whose visibility lapsed (``XCLAIM``: the delivery count is the entry's
``XPENDING`` times-delivered), dead-letters those over ``max_deliveries``, then reads new entries
(``XREADGROUP >``). With ``ordering: key`` a partition is read only while it has no pending
entry, one entry at a time, so a key's messages come out in order and never two at once. Ack is
``XACK`` + ``XDEL``, guarded by the receipt; a nack keeps the entry pending and sets its
visibility to the retry delay, so it is reclaimed (with ``delivery_count + 1``) when due, and a
keyed partition stays blocked until then.

Visibility is tracked per delivery in ``P:inflight`` rather than by ``XAUTOCLAIM``'s idle time,
because a ``receive`` may ask for its own visibility timeout and ``extend`` must set an exact
deadline; the claim itself is ``XCLAIM``.
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from onex_compose.capabilities.message_queue._model import (
    MessageQueueConfig,
    QueueError,
    QueueStats,
    QueueUnavailableError,
    StaleReceiptError,
)

__all__ = ["RedisBackend"]

_BURY = """
local function bury(stream, dead, group, eid, fields, count, reason, err, deadat)
  local args = {}
  for j = 1, #fields, 2 do
    args[#args + 1] = fields[j]; args[#args + 1] = fields[j + 1]
  end
  args[#args + 1] = 'reason'; args[#args + 1] = reason
  args[#args + 1] = 'err'; args[#args + 1] = err or ''
  args[#args + 1] = 'dc'; args[#args + 1] = tostring(count)
  args[#args + 1] = 'dead_at'; args[#args + 1] = deadat
  redis.call('XADD', dead, '*', unpack(args))
  redis.call('XACK', stream, group, eid)
  redis.call('XDEL', stream, eid)
end
"""

_RECEIVE = _BURY + """
local inflight, rcpt, errs, delayed, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, consumer = ARGV[1], ARGV[2]
local now, vis = tonumber(ARGV[3]), tonumber(ARGV[4])
local maxn, maxd = tonumber(ARGV[5]), tonumber(ARGV[6])
local keyed = ARGV[7] == '1'
local base, start, dprefix, deadat = ARGV[8], tonumber(ARGV[9]), ARGV[10], ARGV[11]
local nparts = #KEYS - 5
if ARGV[12] == '1' then
  for i = 1, nparts do redis.pcall('XGROUP', 'CREATE', KEYS[5 + i], group, '0', 'MKSTREAM') end
end
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)
for _, mid in ipairs(due) do
  local h = dprefix .. mid
  local f = redis.call('HGETALL', h)
  if #f > 0 then
    local part = 0
    local args = {}
    for j = 1, #f, 2 do
      if f[j] == 'part' then part = tonumber(f[j + 1])
      else args[#args + 1] = f[j]; args[#args + 1] = f[j + 1] end
    end
    redis.call('XADD', KEYS[6 + part], '*', unpack(args))
    redis.call('DEL', h)
  end
  redis.call('ZREM', delayed, mid)
end
local out = {0}
local buried = 0
local n = 0
local function deliver(part, eid, fields, count)
  n = n + 1
  local member = part .. '|' .. eid
  local token = base .. ':' .. n
  redis.call('HSET', rcpt, member, token)
  redis.call('ZADD', inflight, now + vis, member)
  out[#out + 1] = member .. '|' .. token
  out[#out + 1] = count
  out[#out + 1] = #fields
  for j = 1, #fields do out[#out + 1] = fields[j] end
end
local expired = redis.call('ZRANGEBYSCORE', inflight, '-inf', now, 'LIMIT', 0, maxn + 100)
for _, member in ipairs(expired) do
  if n >= maxn then break end
  local sep = string.find(member, '|', 1, true)
  local part = tonumber(string.sub(member, 1, sep - 1))
  local eid = string.sub(member, sep + 1)
  local stream = KEYS[6 + part]
  local claimed = redis.call('XCLAIM', stream, group, consumer, 0, eid)
  if #claimed == 0 or not claimed[1] or not claimed[1][2] then
    redis.call('ZREM', inflight, member); redis.call('HDEL', rcpt, member)
    redis.call('HDEL', errs, member)
  else
    local pend = redis.call('XPENDING', stream, group, eid, eid, 1)
    local count = pend[1][4]
    if count > maxd then
      bury(stream, dead, group, eid, claimed[1][2], count - 1, 'max_deliveries',
           redis.call('HGET', errs, member), deadat)
      redis.call('ZREM', inflight, member); redis.call('HDEL', rcpt, member)
      redis.call('HDEL', errs, member)
      buried = buried + 1
    else
      deliver(part, eid, claimed[1][2], count)
    end
  end
end
if n < maxn then
  if keyed then
    for k = 0, nparts - 1 do
      if n >= maxn then break end
      local part = (start + k) % nparts
      local stream = KEYS[6 + part]
      local summary = redis.call('XPENDING', stream, group)
      if summary[1] == 0 then
        local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS',
                             stream, '>')
        if r and r[1] then
          for _, e in ipairs(r[1][2]) do deliver(part, e[1], e[2], 1) end
        end
      end
    end
  else
    local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', maxn - n, 'STREAMS',
                         KEYS[6], '>')
    if r and r[1] then
      for _, e in ipairs(r[1][2]) do deliver(0, e[1], e[2], 1) end
    end
  end
end
out[1] = buried
return out
"""

_ENQUEUE = """
local id, window, delayed, avail, part = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if ARGV[6] == '1' then
  local ok = redis.call('SET', KEYS[1], id, 'NX', 'PX', window)
  if not ok then return redis.call('GET', KEYS[1]) end
end
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
if delayed == '1' then
  redis.call('HSET', KEYS[3], 'part', part, unpack(fields))
  redis.call('ZADD', KEYS[2], avail, id)
else
  redis.call('XADD', KEYS[2], '*', unpack(fields))
end
return id
"""

_ACK = """
if redis.call('HGET', KEYS[2], ARGV[3]) ~= ARGV[4] then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[2], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[3])
return 1
"""

_NACK = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[4]) end
return 1
"""

_EXTEND = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[1])
return 1
"""

_DEAD_LETTER = _BURY + """
local stream, rcpt, inflight, errs, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, eid, member, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', rcpt, member) ~= token then return 0 end
local e = redis.call('XRANGE', stream, eid, eid)
if #e == 0 then return 0 end
local pend = redis.call('XPENDING', stream, group, eid, eid, 1)
local count = 1
if pend[1] then count = pend[1][4] end
local err = ARGV[6]
if err == '' then err = redis.call('HGET', errs, member) or '' end
bury(stream, dead, group, eid, e[1][2], count, ARGV[5], err, ARGV[7])
redis.call('ZREM', inflight, member)
redis.call('HDEL', rcpt, member)
redis.call('HDEL', errs, member)
return 1
"""

_STATS = """
local inflight, rcpt, delayed, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, now = ARGV[1], tonumber(ARGV[2])
local ready, flying, waiting = 0, 0, 0
local oldest = -1
local function older(ms)
  if oldest < 0 or ms < oldest then oldest = ms end
end
for i = 5, #KEYS do
  local s = KEYS[i]
  local len = redis.call('XLEN', s)
  if len > 0 then
    local pending = 0
    local last = '0-0'
    local groups = redis.pcall('XINFO', 'GROUPS', s)
    if type(groups) == 'table' and not groups.err then
      for _, g in ipairs(groups) do
        local name, p, l
        for j = 1, #g, 2 do
          if g[j] == 'name' then name = g[j + 1]
          elseif g[j] == 'pending' then p = g[j + 1]
          elseif g[j] == 'last-delivered-id' then l = g[j + 1] end
        end
        if name == group then pending = p; last = l end
      end
    end
    local undelivered = len - pending
    if undelivered > 0 then
      ready = ready + undelivered
      local first = redis.call('XRANGE', s, '(' .. last, '+', 'COUNT', 1)
      if first[1] then older(tonumber(string.match(first[1][1], '^(%d+)'))) end
    end
  end
end
local members = redis.call('ZRANGE', inflight, 0, -1, 'WITHSCORES')
for j = 1, #members, 2 do
  local score = tonumber(members[j + 1])
  if score <= now then
    ready = ready + 1
    older(score)
  elseif redis.call('HEXISTS', rcpt, members[j]) == 1 then
    flying = flying + 1
  else
    waiting = waiting + 1
  end
end
waiting = waiting + redis.call('ZCARD', delayed)
return {ready, flying, waiting, redis.call('XLEN', dead), tostring(oldest)}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBackend:
    """Messages in Redis Streams (see the module docstring for the keys)."""

    name = "redis"
    supports_idempotency = True

    def __init__(self, config: MessageQueueConfig, clock: Any = time.time) -> None:
        self.config = config
        self.clock = clock
        self.consumer = f"{config.namespace}-{uuid.uuid4().hex[:12]}"
        self._scripts: dict[int, dict[str, Any]] = {}
        self._loaded: dict[int, bool] = {}
        self._groups: dict[int, set[str]] = {}  # queues whose groups exist, per client
        self._start = 0

    def __repr__(self) -> str:
        return f"<RedisBackend namespace={self.config.namespace!r}>"

    @property
    def describe(self) -> str:
        return "redis (streams)"

    # -- plumbing --------------------------------------------------------------------------------

    def _client(self) -> Any:
        from onex_compose.capabilities._redis import async_client

        return async_client(self.config.redis_url, timeout=2.0, retries=0)

    def _script(self, client: Any, name: str) -> Any:
        scripts = self._scripts.get(id(client))
        if scripts is None or scripts.get("_client") is not client:
            scripts = self._scripts[id(client)] = {"_client": client}
        script = scripts.get(name)
        if script is None:
            source = {"receive": _RECEIVE, "enqueue": _ENQUEUE, "ack": _ACK, "nack": _NACK,
                      "extend": _EXTEND, "dead": _DEAD_LETTER, "stats": _STATS}[name]
            script = scripts[name] = client.register_script(source)
        return script

    def _prefix(self, queue: str) -> str:
        return f"{self.config.namespace}:mq:{queue}"

    def _streams(self, queue: str) -> list[str]:
        p = self._prefix(queue)
        if self.config.ordering == "key":
            return [f"{p}:p{n}" for n in range(self.config.partitions)]
        return [p]

    def _part(self, key: str | None, mid: str) -> int:
        if self.config.ordering != "key":
            return 0
        partitions: int = self.config.partitions
        return int(zlib.crc32((key if key is not None else mid).encode()) % partitions)

    async def _run(self, coro: Any) -> Any:
        try:
            return await coro
        except Exception as exc:  # the imports only on the error path
            from redis.exceptions import ConnectionError as RedisConnectionError
            from redis.exceptions import RedisError
            from redis.exceptions import TimeoutError as RedisTimeoutError

            if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
                raise QueueUnavailableError(
                    f"message_queue: Redis is unavailable ({exc})") from exc
            if isinstance(exc, RedisError):
                raise QueueError(f"message_queue: Redis error: {exc}") from exc
            raise

    def _stale(self, queue: str, mid: str, what: str) -> StaleReceiptError:
        return StaleReceiptError(
            f"cannot {what} message {mid} of queue {queue!r}: its receipt is stale (the "
            "visibility timeout lapsed and it was delivered again, or it was already settled); "
            "it may have been processed twice")

    # -- enqueue ---------------------------------------------------------------------------------

    async def enqueue(self, queue: str, items: Sequence[Mapping[str, Any]]) -> list[str]:
        client = self._client()
        script = self._script(client, "enqueue")
        p = self._prefix(queue)
        streams = self._streams(queue)
        now = self.clock()
        # (stream, fields) for a plain XADD: no idempotency key and no delay, where the script
        # would only run the same XADD; else (keys, args) for the script
        calls: list[tuple[Any, list[Any], bool]] = []
        for item in items:
            part = self._part(item.get("key"), item["id"])
            fields: list[Any] = ["id", item["id"], "payload", item["payload"],
                                 "headers", json.dumps(hdrs) if (hdrs := item.get("headers"))
                                 else "{}",
                                 "enq", repr(now)]
            if item.get("key") is not None:
                fields += ["key", item["key"]]
            delay = float(item.get("delay") or 0.0)
            ikey = item.get("idempotency_key")
            if ikey is None and delay <= 0:
                calls.append((streams[part], fields, False))
                continue
            keys = [f"{p}:idem:{ikey}" if ikey is not None else f"{p}:idem:",
                    f"{p}:delayed" if delay > 0 else streams[part], f"{p}:d:{item['id']}"]
            args = [item["id"], int(self.config.dedup_window * 1000), "1" if delay > 0 else "0",
                    int((now + delay) * 1000), part, "1" if ikey is not None else "0", *fields]
            calls.append((keys, args, True))
        if len(calls) == 1:
            target, args, scripted = calls[0]
            if not scripted:
                await self._run(client.execute_command("XADD", target, "*", *args))
                return [items[0]["id"]]
            return [_text(await self._run(script(keys=target, args=args)))]

        async def pipelined() -> list[Any]:
            from redis.exceptions import NoScriptError

            for attempt in (0, 1):
                pipe = client.pipeline(transaction=False)
                for target, args, scripted in calls:
                    if scripted:
                        pipe.evalsha(script.sha, len(target), *target, *args)
                    else:
                        pipe.execute_command("XADD", target, "*", *args)
                try:
                    return list(await pipe.execute())
                except NoScriptError:  # a restarted server forgot the script: load it again
                    if attempt:
                        raise
                    await client.script_load(_ENQUEUE)
            raise AssertionError("unreachable")

        if not self._loaded.get(id(client)) and any(scripted for _, _, scripted in calls):
            await self._run(client.script_load(_ENQUEUE))
            self._loaded[id(client)] = True
        result = await self._run(pipelined())
        return [_text(r) if scripted else item["id"]
                for r, (_, _, scripted), item in zip(result, calls, items, strict=True)]

    # -- receive ---------------------------------------------------------------------------------

    async def receive(self, queue: str, max_messages: int, visibility: float
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        client = self._client()
        script = self._script(client, "receive")
        p = self._prefix(queue)
        streams = self._streams(queue)
        now = self.clock()
        self._start = (self._start + 1) % len(streams)
        keys = [f"{p}:inflight", f"{p}:rcpt", f"{p}:err", f"{p}:delayed", f"{p}:dead", *streams]
        args = [p, self.consumer, int(now * 1000), int(visibility * 1000), max_messages,
                self.config.max_deliveries, "1" if self.config.ordering == "key" else "0",
                uuid.uuid4().hex, self._start, f"{p}:d:", repr(now)]
        ensured = self._groups.setdefault(id(client), set())
        try:
            out = await self._run(script(keys=keys, args=[
                *args, "0" if queue in ensured else "1"]))
        except QueueError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # the stream or its group is gone (a purge, a restarted server): create it again
            out = await self._run(script(keys=keys, args=[*args, "1"]))
        ensured.add(queue)
        # one flat reply (nested arrays cost redis-py a recursive parse per level):
        # [buried, then per delivery: receipt, delivery count, number of fields, fields...]
        delivered = []
        i, end = 1, len(out)
        while i < end:
            receipt, count, nf = out[i], out[i + 1], out[i + 2]
            i += 3
            f = {_text(out[j]): out[j + 1] for j in range(i, i + nf, 2)}
            i += nf
            hdrs = f.get("headers")
            key = f.get("key")
            delivered.append({
                "id": _text(f["id"]), "payload": bytes(f["payload"]),
                "key": _text(key) if key is not None else None,
                "headers": json.loads(hdrs) if hdrs and hdrs != b"{}" else {},
                "enqueued_at": float(f["enq"]), "delivery_count": int(count),
                "receipt": _text(receipt)})
        return delivered, [{}] * int(out[0])

    def _parts(self, queue: str, receipt: str) -> tuple[str, str, str, str]:
        part, eid, token = receipt.split("|", 2)
        stream = self._streams(queue)[int(part)]
        return stream, eid, f"{part}|{eid}", token

    async def ack(self, queue: str, mid: str, receipt: str) -> None:
        client = self._client()
        stream, eid, member, token = self._parts(queue, receipt)
        p = self._prefix(queue)
        ok = await self._run(self._script(client, "ack")(
            keys=[stream, f"{p}:rcpt", f"{p}:inflight", f"{p}:err"],
            args=[p, eid, member, token]))
        if not ok:
            raise self._stale(queue, mid, "ack")

    async def nack(self, queue: str, mid: str, receipt: str, delay: float,
                   reason: str | None) -> None:
        client = self._client()
        _, _, member, token = self._parts(queue, receipt)
        p = self._prefix(queue)
        ok = await self._run(self._script(client, "nack")(
            keys=[f"{p}:rcpt", f"{p}:inflight", f"{p}:err"],
            args=[member, token, int((self.clock() + delay) * 1000), reason or ""]))
        if not ok:
            raise self._stale(queue, mid, "nack")

    async def extend(self, queue: str, mid: str, receipt: str, seconds: float) -> None:
        client = self._client()
        _, _, member, token = self._parts(queue, receipt)
        p = self._prefix(queue)
        ok = await self._run(self._script(client, "extend")(
            keys=[f"{p}:rcpt", f"{p}:inflight"],
            args=[member, token, int((self.clock() + seconds) * 1000)]))
        if not ok:
            raise self._stale(queue, mid, "extend")

    async def dead_letter(self, queue: str, mid: str, receipt: str, reason: str,
                          last_error: str | None) -> None:
        client = self._client()
        stream, eid, member, token = self._parts(queue, receipt)
        p = self._prefix(queue)
        ok = await self._run(self._script(client, "dead")(
            keys=[stream, f"{p}:rcpt", f"{p}:inflight", f"{p}:err", f"{p}:dead"],
            args=[p, eid, member, token, reason, last_error or "", repr(self.clock())]))
        if not ok:
            raise self._stale(queue, mid, "dead-letter")

    # -- dead letters, admin ----------------------------------------------------------------------

    async def _dead_entries(self, queue: str, limit: int | None) -> list[tuple[str, dict[str, Any]]]:
        client = self._client()
        dead = f"{self._prefix(queue)}:dead"
        rows = await self._run(client.xrange(dead, "-", "+", count=limit))
        return [(_text(eid), _fields_map(fields)) for eid, fields in rows]

    async def dead_letters(self, queue: str, limit: int) -> list[dict[str, Any]]:
        out = []
        for _, f in await self._dead_entries(queue, limit):
            out.append({"id": _text(f["id"]), "payload": bytes(f["payload"]),
                        "key": _text(f["key"]) if "key" in f else None,
                        "headers": json.loads(f["headers"]) if f.get("headers") else {},
                        "enqueued_at": float(f["enq"]), "delivery_count": int(f["dc"]),
                        "reason": _text(f["reason"]),
                        "last_error": _text(f["err"]) if f.get("err") else None,
                        "dead_at": float(f["dead_at"])})
        return out

    async def redrive(self, queue: str, ids: Sequence[str] | None) -> int:
        wanted = None if ids is None else set(ids)
        entries = [(eid, f) for eid, f in await self._dead_entries(queue, None)
                   if wanted is None or _text(f["id"]) in wanted]
        if not entries:
            return 0
        client = self._client()
        streams = self._streams(queue)
        dead = f"{self._prefix(queue)}:dead"
        pipe = client.pipeline(transaction=True)
        for eid, f in entries:
            key = _text(f["key"]) if "key" in f else None
            keep = {k: v for k, v in f.items() if k in ("id", "payload", "headers", "enq", "key")}
            pipe.xadd(streams[self._part(key, _text(f["id"]))], keep)
            pipe.xdel(dead, eid)
        await self._run(pipe.execute())
        return len(entries)

    async def purge(self, queue: str) -> int:
        stats, _ = await self.stats(queue)
        client = self._client()
        p = self._prefix(queue)

        async def wipe() -> None:
            keys = [*self._streams(queue), f"{p}:inflight", f"{p}:rcpt", f"{p}:err",
                    f"{p}:delayed"]
            keys += [k async for k in client.scan_iter(match=f"{p}:d:*", count=500)]
            await client.delete(*keys)

        await self._run(wipe())
        for ensured in self._groups.values():
            ensured.discard(queue)
        total: int = stats.total
        return total

    async def stats(self, queue: str) -> tuple[QueueStats, float | None]:
        client = self._client()
        p = self._prefix(queue)
        now = self.clock()
        ready, flying, waiting, dead, oldest = await self._run(self._script(client, "stats")(
            keys=[f"{p}:inflight", f"{p}:rcpt", f"{p}:delayed", f"{p}:dead",
                  *self._streams(queue)], args=[p, int(now * 1000)]))
        oldest_ms = float(_text(oldest))
        stats = QueueStats(ready=int(ready), in_flight=int(flying), delayed=int(waiting),
                           dead=int(dead))
        return stats, (None if oldest_ms < 0 else max(0.0, now - oldest_ms / 1000))

    async def ping(self) -> None:
        await self._run(self._client().ping())

    async def aclose(self) -> None:
        """Nothing of its own: the per-loop Redis clients are shared and closed with their
        loop."""
        self._scripts.clear()
        self._groups.clear()
        self._loaded.clear()


def _fields_map(fields: Mapping[Any, Any]) -> dict[str, Any]:
    return {_text(k): v for k, v in fields.items()}
