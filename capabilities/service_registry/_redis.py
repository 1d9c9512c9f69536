"""The Redis backend: one hash per entry, an expiry zset, an index set per capability, a
change channel, and three Lua scripts (register, heartbeat, sweep; plus deregister) so every
read-modify-write is atomic.

Layout inside ``namespace`` (``<ns>``):

* ``<ns>:registry:node:<instance_id>``: the entry's hash (``node_id``, ``instance_id``,
  ``instance``, ``data`` (JSON of the static fields), ``caps``, ``status``,
  ``registered_at``, ``last_heartbeat``, ``expires_at``);
* ``<ns>:registry:expiry``: a zset, score = ``expires_at`` (on the server's ``TIME`` with
  ``redis_clock: server``);
* ``<ns>:registry:all`` and ``<ns>:registry:cap:<capability>``: sets of instance ids;
* ``<ns>:registry:changes``: the channel every change is published on, *from inside the
  script that made it*, so a change is published exactly once: ``sweep`` flips an expired entry
  to ``offline`` with a check on its status field, and a second sweeper finds it offline
  already and publishes nothing.

The scripts touch keys derived from the instance ids (the capability sets, the swept hashes),
which is fine on a standalone Redis or a replica set, not on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from onex_compose.capabilities._redis import async_client, connection_errors
from onex_compose.capabilities.service_registry._model import (
    RegistryChange,
    RegistryUnavailableError,
    ServiceEntry,
)

__all__ = ["RedisBackend", "decode_change"]

_COMMON = """
local function now_of(a)
  if a ~= '' then return tonumber(a) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.6f', x) end
local function publish(channel, kind, key)
  local msg = cjson.encode({kind, redis.call('HGETALL', key)})
  redis.call('PUBLISH', channel, msg)
  return msg
end
"""

# KEYS: node, expiry, all, channel
# ARGV: id, token, replace, now, ttl, cap prefix, node_id, data, caps
_REGISTER = _COMMON + """
local now = now_of(ARGV[4])
local cur = redis.call('HMGET', KEYS[1], 'instance', 'status', 'expires_at', 'registered_at',
                       'caps')
local kind = 'registered'
local reg = now
if cur[1] then
  local online = cur[2] == 'online' and tonumber(cur[3]) > now
  if cur[1] ~= ARGV[2] then
    if online and ARGV[3] ~= '1' then return {'conflict', cur[1]} end
  elseif cur[2] ~= 'left' then
    if online then kind = 'updated' else kind = 'online' end
    reg = tonumber(cur[4])
  end
  if cur[5] then
    for cap in string.gmatch(cur[5], '%S+') do redis.call('SREM', ARGV[6] .. cap, ARGV[1]) end
  end
end
local exp = fmt(now + tonumber(ARGV[5]))
redis.call('HSET', KEYS[1], 'node_id', ARGV[7], 'instance_id', ARGV[1], 'instance', ARGV[2],
           'data', ARGV[8], 'caps', ARGV[9], 'status', 'online', 'registered_at', fmt(reg),
           'last_heartbeat', fmt(now), 'expires_at', exp)
redis.call('ZADD', KEYS[2], exp, ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
for cap in string.gmatch(ARGV[9], '%S+') do redis.call('SADD', ARGV[6] .. cap, ARGV[1]) end
return {fmt(now), publish(KEYS[4], kind, KEYS[1])}
"""

# KEYS: node, expiry, channel; ARGV: id, token, now, ttl
_HEARTBEAT = _COMMON + """
local now = now_of(ARGV[3])
local cur = redis.call('HMGET', KEYS[1], 'instance', 'status')
if not cur[1] then return {'missing', fmt(now)} end
if cur[1] ~= ARGV[2] then return {'conflict', cur[1]} end
if cur[2] == 'left' then return {'left', fmt(now)} end
local exp = fmt(now + tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'status', 'online', 'last_heartbeat', fmt(now), 'expires_at', exp)
redis.call('ZADD', KEYS[2], exp, ARGV[1])
if cur[2] == 'offline' then return {'online', fmt(now), publish(KEYS[3], 'online', KEYS[1])} end
return {'ok', fmt(now), exp}
"""

# KEYS: node, expiry, channel; ARGV: id, token, now
_DEREGISTER = _COMMON + """
local now = now_of(ARGV[3])
local cur = redis.call('HMGET', KEYS[1], 'instance', 'status')
if (not cur[1]) or cur[1] ~= ARGV[2] or cur[2] == 'left' then return {fmt(now)} end
redis.call('HSET', KEYS[1], 'status', 'left', 'expires_at', fmt(now))
redis.call('ZADD', KEYS[2], fmt(now), ARGV[1])
return {fmt(now), publish(KEYS[3], 'left', KEYS[1])}
"""

# KEYS: expiry, all, channel; ARGV: now, purge_after, node prefix, cap prefix
# returns {now, online count, offline count, left count, change messages...}
_SWEEP = _COMMON + """
local now = now_of(ARGV[1])
local purge = tonumber(ARGV[2])
local out = {}
local n = {offline = 0, left = 0}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
for _, id in ipairs(ids) do
  local key = ARGV[3] .. id
  local cur = redis.call('HMGET', key, 'status', 'expires_at', 'caps')
  if not cur[1] then
    redis.call('ZREM', KEYS[1], id)
    redis.call('SREM', KEYS[2], id)
  else
    local status = cur[1]
    if status == 'online' then
      redis.call('HSET', key, 'status', 'offline')
      status = 'offline'
      table.insert(out, publish(KEYS[3], 'offline', key))
    end
    if now >= tonumber(cur[2]) + purge then
      table.insert(out, publish(KEYS[3], 'purged', key))
      redis.call('DEL', key)
      redis.call('ZREM', KEYS[1], id)
      redis.call('SREM', KEYS[2], id)
      if cur[3] then
        for cap in string.gmatch(cur[3], '%S+') do redis.call('SREM', ARGV[4] .. cap, id) end
      end
    else
      n[status] = (n[status] or 0) + 1
    end
  end
end
local online = redis.call('SCARD', KEYS[2]) - n.offline - n.left
local res = {fmt(now), tostring(online), tostring(n.offline), tostring(n.left)}
for _, m in ipairs(out) do table.insert(res, m) end
return res
"""

_SCRIPTS = {name: (src, hashlib.sha1(src.encode()).hexdigest())
            for name, src in (("register", _REGISTER), ("heartbeat", _HEARTBEAT),
                              ("deregister", _DEREGISTER), ("sweep", _SWEEP))}


def _no_script() -> type[BaseException]:
    from redis.exceptions import NoScriptError

    return NoScriptError


def decode_change(data: bytes | str) -> RegistryChange:
    """A change message (as the scripts publish it) back into a :class:`RegistryChange`."""
    kind, flat = json.loads(data)
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    return RegistryChange(kind, ServiceEntry.from_fields(fields))


def _t(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBackend:
    """The Redis table of one namespace (see the module docstring for the layout).

    Args:
        url: the Redis URL (``None``: ``ONEX_REDIS_URL``, else the local server).
        namespace: the key prefix.
        timeout: connect/command timeout in seconds.
        server_clock: ``True``: the scripts read ``TIME`` (``now`` arguments are ignored).

    Example:
        >>> RedisBackend(None, "doc")
        <RedisBackend namespace='doc' clock=server>
    """

    kind = "redis"

    def __init__(self, url: str | None, namespace: str, *, timeout: float = 1.0,
                 server_clock: bool = True) -> None:
        self.url = url
        self.namespace = namespace
        self.timeout = timeout
        self.server_clock = server_clock
        base = f"{namespace}:registry:"
        self.node_prefix = base + "node:"
        self.cap_prefix = base + "cap:"
        self.expiry_key = base + "expiry"
        self.all_key = base + "all"
        self.channel = base + "changes"
        self._loop: Any = None
        self._client: Any = None

    def __repr__(self) -> str:
        clock = "server" if self.server_clock else "client"
        return f"<RedisBackend namespace={self.namespace!r} clock={clock}>"

    def client(self) -> Any:
        """The pooled client of the running loop (cached here: one lookup per call)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._client = async_client(self.url, timeout=self.timeout, retries=0)
            self._loop = loop
        return self._client

    def _now(self, now: float | None) -> str:
        return "" if self.server_clock or now is None else repr(float(now))

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        src, sha = _SCRIPTS[name]
        client = self.client()
        try:
            try:
                return await client.evalsha(sha, len(keys), *keys, *args)
            except _no_script():
                return await client.eval(src, len(keys), *keys, *args)
        except connection_errors() as exc:
            raise _unavailable(exc) from exc

    # -- change delivery (pub/sub; the facility owns the listener) ---------------------------

    def listen(self, facility: Any) -> None:
        """Changes arrive through the facility's pub/sub listener on :attr:`channel`."""

    def unlisten(self, facility: Any) -> None:
        """See :meth:`listen`."""

    # -- operations --------------------------------------------------------------------------

    async def register(self, entry: ServiceEntry, *, replace_: bool, now: float | None,
                       ttl: float) -> RegistryChange:
        f = entry.to_fields()
        res = await self._script(
            "register", [self.node_prefix + entry.instance_id, self.expiry_key, self.all_key,
                         self.channel],
            [entry.instance_id, entry.instance, "1" if replace_ else "0", self._now(now),
             repr(float(ttl)), self.cap_prefix, entry.node_id, f["data"], f["caps"]])
        if _t(res[0]) == "conflict":
            from onex_compose.capabilities.service_registry._memory import _conflict

            raise _conflict(entry.instance_id, _t(res[1]))
        return decode_change(res[1])

    async def heartbeat(self, instance_id: str, token: str, *, now: float | None,
                        ttl: float) -> tuple[str, Any]:
        res = await self._script(
            "heartbeat", [self.node_prefix + instance_id, self.expiry_key, self.channel],
            [instance_id, token, self._now(now), repr(float(ttl))])
        kind = _t(res[0])
        if kind == "online":
            return kind, decode_change(res[2]).entry
        if kind == "ok":
            return kind, (float(_t(res[1])), float(_t(res[2])))
        return kind, _t(res[1]) if kind == "conflict" else None

    async def deregister(self, instance_id: str, token: str, *,
                         now: float | None) -> RegistryChange | None:
        res = await self._script(
            "deregister", [self.node_prefix + instance_id, self.expiry_key, self.channel],
            [instance_id, token, self._now(now)])
        return decode_change(res[1]) if len(res) > 1 else None

    async def sweep(self, *, now: float | None,
                    purge_after: float) -> tuple[list[RegistryChange], dict[str, int]]:
        res = await self._script(
            "sweep", [self.expiry_key, self.all_key, self.channel],
            [self._now(now), repr(float(purge_after)), self.node_prefix, self.cap_prefix])
        counts = {"online": int(res[1]), "offline": int(res[2]), "left": int(res[3])}
        return [decode_change(m) for m in res[4:]], counts

    async def query(self, capabilities: list[str] | None,
                    now: float | None) -> tuple[list[ServiceEntry], float]:
        """Entries having every capability (``None``: all) and the time they were read at:
        one pipelined round trip for the index (and ``TIME``), one for the hashes."""
        client = self.client()
        try:
            pipe = client.pipeline(transaction=False)
            if capabilities:
                pipe.sinter([self.cap_prefix + c for c in capabilities])
            else:
                pipe.smembers(self.all_key)
            if self.server_clock or now is None:
                pipe.time()
            first = await pipe.execute()
            ids = sorted(first[0])
            if self.server_clock or now is None:
                sec, usec = first[1]
                now = sec + usec / 1e6
            if not ids:
                return [], now
            pipe = client.pipeline(transaction=False)
            for iid in ids:
                pipe.hgetall(self.node_prefix + _t(iid))
            rows = await pipe.execute()
        except connection_errors() as exc:
            raise _unavailable(exc) from exc
        return [ServiceEntry.from_fields(r) for r in rows if r], now

    async def get(self, instance_id: str, now: float | None) -> tuple[ServiceEntry | None, float]:
        client = self.client()
        try:
            pipe = client.pipeline(transaction=False)
            pipe.hgetall(self.node_prefix + instance_id)
            if self.server_clock or now is None:
                pipe.time()
            res = await pipe.execute()
        except connection_errors() as exc:
            raise _unavailable(exc) from exc
        if self.server_clock or now is None:
            now = res[1][0] + res[1][1] / 1e6
        return (ServiceEntry.from_fields(res[0]) if res[0] else None), now

    async def aclose(self) -> None:
        """The pooled clients are shared (``capabilities._redis``); nothing to close here."""


def _unavailable(exc: BaseException) -> RegistryUnavailableError:
    return RegistryUnavailableError(f"service registry: Redis is unreachable ({exc})")

