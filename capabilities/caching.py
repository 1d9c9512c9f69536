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
  the same TTL. A read goes L1 → L2 and promotes an L2 hit into L1 with L2's remaining TTL (an
  L1 hit never touches Redis). Writes, deletes and clears go to both levels and publish an
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
  costs nothing per call). Values written during the outage are served from L1. The first
  successful reconnection afterwards ends the outage; L1 is dropped then, because
  invalidations were missed.
* **A stored ``None``** is a value: ``get(key)`` returns ``None`` for both, so ask
  ``get(key, MISSING)`` (``MISSING`` is exported, and is ``cache.MISSING``) or ``contains(key)``.
  ``get_or_set`` and ``cached`` cache ``None`` results.
* **Single-flight**: concurrent ``get_or_set``/``cached`` misses of one key in one process run
  the loader once; the others wait for its result (or its exception, which is not cached).
* ``enabled: false``: ``get`` always misses, ``set``/``delete``/``clear`` do nothing, and
  loaders always run.
* **Decorators**: ``@cached(ttl=...)`` (this module) memoises an ``async def`` *method* of a
  node in that node's ``self.cache``; ``@node.cache.cached(ttl=...)`` memoises a plain
  ``async def`` function in one cache. Keys are the function's qualified name plus the
  arguments (or ``key=callable``).
* **process()**: with ``wrap_process: true`` the guard hook ``_guard_caching`` (rank 40, outside
  retry and the other flow-control guards) memoises ``process()`` by its input. Off by default:
  memoising an EFFECT node would skip its side effects.
* **Metrics** (into the node's metrics): ``cache_lookups_total{level=l1|l2, result=hit|miss}``
  (one metric, because seed 000's own ``compute()`` counts ``cache_hits``, whose Prometheus
  series a ``cache_hits_total`` metric would take), ``cache_evictions_total``,
  ``cache_loads_total``, ``cache_l2_errors_total{kind=unavailable|decode}``. ``stats()`` has
  the same counts per level without the metrics capability.
* **Health**: when the node has ``health_check``, ``cache.health()`` is registered as the
  ``cache`` check (found through the node's composition, never by probing with ``hasattr``).

Why the L1 is written here instead of using ``cachetools.TTLCache``: TTLCache has one TTL per
cache (``TLRUCache`` needs a per-item function), evicts by insertion expiry rather than LRU
order, keeps no per-level statistics, and a sync ``TTLCache`` lookup alone costs more than
this cache's async ``get`` without metrics (``benchmarks/bench_cache.py`` measures both in one
run). The L1 here is an ``OrderedDict`` of
``(value, expires_at)`` pairs; the clock is read only for entries that expire.

Why ``generate_cache_key`` has its own canonical encoder: ``json.dumps(sort_keys=True)`` (the
usual recipe) makes ``{1: 'a'}`` and ``{'1': 'a'}`` (and ``(1, 2)`` and ``[1, 2]``) the same key
and fails on sets, bytes and dataclasses; ``pickle`` output depends on insertion order and
object identity. The encoder emits JSON text for JSON data (a flat dict of scalars takes a
short fast path) and tagged forms for everything else, then hashes it (BLAKE2b, 128 bits). Set
elements and non-string dict keys are sorted by their encoding, so keys do not depend on
``PYTHONHASHSEED``: another process computes the same key, which the shared L2 needs.

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

import asyncio
import dataclasses
import datetime as _dt
import decimal
import enum
import functools
import hashlib
import inspect
import json
import math
import pickle
import types
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from json.encoder import encode_basestring_ascii as _json_str
from pathlib import PurePath
from typing import Any, Literal, NoReturn, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities import _context
from onex_compose.capabilities._log import logger
from onex_compose.capabilities._redis import check_redis_url, check_serializer, load_codec, require_client
from onex_compose.exceptions import OnexError

__all__ = [
    "MISSING",
    "Cache",
    "CacheKeyError",
    "CacheSerializationError",
    "CachingConfig",
    "CachingProtocol",
    "MixinCaching",
    "cached",
    "generate_cache_key",
]

T = TypeVar("T")


class _Missing:
    """The sentinel for "no value" (a stored ``None`` is a value)."""

    __slots__ = ()
    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = object.__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class CacheKeyError(OnexError, TypeError):
    """Data that cannot be turned into a cache key, or a key that is not a string."""


class CacheSerializationError(OnexError, TypeError):
    """A value the configured L2 serializer cannot encode."""


# -- configuration ---------------------------------------------------------------------------


class CachingConfig(BaseModel):
    """The ``caching`` subcontract (every key of ``caching_config`` in ``mixin_caching.yaml``).

    Example:
        >>> CachingConfig(default_ttl=60, max_entries=1000).default_ttl
        60.0
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="false: get misses, set does nothing")
    backend: Literal["memory", "redis"] = Field(
        default="memory", description="memory: L1 only; redis: L1 + shared Redis L2")
    redis_url: str | None = Field(
        default=None, description="None: ONEX_REDIS_URL, else redis://127.0.0.1:6379/0")
    namespace: str = Field(default="onex", min_length=1,
                           description="key and channel prefix in Redis")
    default_ttl: float | None = Field(
        default=None, description="seconds; used when set() gets ttl=None; None: never expires")
    max_entries: int = Field(default=10_000, ge=1, description="L1 bound (LRU eviction)")
    l1_ttl: float | None = Field(
        default=None, gt=0,
        description="cap on an L1 entry's lifetime when an L2 is configured (bounded staleness)")
    serializer: str = Field(
        default="pickle",
        description="L2 value encoding: 'pickle', 'json', or 'module:object' with dumps/loads. "
                    "pickle runs code from the data it loads: use it only with a Redis that only "
                    "trusted processes can write to, else choose 'json'")
    redis_timeout: float = Field(default=1.0, gt=0, description="Redis connect/command timeout")
    retry_interval: float = Field(
        default=1.0, ge=0, description="after an L2 failure, seconds to serve from L1 only")
    wrap_process: bool = Field(
        default=False, description="memoise process() results (off: an EFFECT node's side "
                                   "effects must not be skipped by accident)")

    @field_validator("serializer")
    @classmethod
    def _check_serializer(cls, value: str) -> str:
        return check_serializer(value)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        return check_redis_url(value)

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if any(c.isspace() for c in value):
            raise ValueError(f"namespace must not contain whitespace, got {value!r}")
        return value


@runtime_checkable
class CachingProtocol(Protocol):
    """What seed 000 calls on ``self.cache`` (``ttl`` in seconds)."""

    async def get(self, key: str) -> Any: ...

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None: ...

    async def delete(self, key: str) -> bool: ...

    async def clear(self) -> bool: ...


# -- cache keys ------------------------------------------------------------------------------

def _float(x: float) -> str:
    if math.isfinite(x):
        return float.__repr__(x)
    return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")


def _qual(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _canon(obj: Any, out: list[str], active: set[int]) -> None:
    t = type(obj)
    if t is str:
        out.append(_json_str(obj))
    elif t is bool:
        out.append("true" if obj else "false")
    elif t is int:
        out.append(int.__repr__(obj))
    elif t is float:
        out.append(_float(obj))
    elif obj is None:
        out.append("null")
    elif t is list:
        _sequence(obj, "[", out, active)
    elif t is tuple:
        _sequence(obj, "!t[", out, active)
    elif isinstance(obj, enum.Enum):
        out.append(f"!e:{_qual(t)}:")
        _canon(obj.value, out, active)
    elif isinstance(obj, (dict, Mapping)):
        _enter(obj, active)
        items = list(obj.items())
        if all(type(k) is str for k, _ in items):
            items.sort(key=lambda kv: kv[0])
            out.append("{")
            for i, (k, v) in enumerate(items):
                if i:
                    out.append(",")
                out.append(_json_str(k))
                out.append(":")
                _canon(v, out, active)
            out.append("}")
        else:
            pairs = []
            for k, v in items:
                kb: list[str] = []
                _canon(k, kb, active)
                vb: list[str] = []
                _canon(v, vb, active)
                pairs.append(("".join(kb), "".join(vb)))
            pairs.sort()
            out.append("{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}")
        active.discard(id(obj))
    elif isinstance(obj, (set, frozenset)):
        _enter(obj, active)
        parts = []
        for item in obj:
            buf: list[str] = []
            _canon(item, buf, active)
            parts.append("".join(buf))
        parts.sort()
        out.append("!s[" + ",".join(parts) + "]")
        active.discard(id(obj))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        out.append(f'!b"{bytes(obj).hex()}"')
    elif isinstance(obj, float):
        out.append(f"!f:{_qual(t)}:{_float(obj)}")
    elif isinstance(obj, int):
        out.append(f"!i:{_qual(t)}:{int.__repr__(obj)}")
    elif isinstance(obj, str):
        out.append(f"!str:{_qual(t)}:{_json_str(str(obj))}")
    elif isinstance(obj, (list, tuple)):
        if hasattr(obj, "_fields"):  # namedtuple
            _sequence(obj, f"!nt:{_qual(t)}[", out, active)
        else:
            _sequence(obj, f"!seq:{_qual(t)}[", out, active)
    elif isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        out.append(f"!dt:{_qual(t)}:{obj.isoformat()}")
    elif isinstance(obj, (_dt.timedelta, decimal.Decimal, uuid.UUID, PurePath, complex, range)):
        out.append(f"!v:{_qual(t)}:{obj!s}")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        _enter(obj, active)
        out.append(f"!d:{_qual(t)}{{")
        for i, f in enumerate(dataclasses.fields(obj)):
            if i:
                out.append(",")
            out.append(_json_str(f.name) + ":")
            _canon(getattr(obj, f.name), out, active)
        out.append("}")
        active.discard(id(obj))
    elif isinstance(obj, BaseModel):
        _enter(obj, active)
        out.append(f"!m:{_qual(t)}")
        _canon({k: getattr(obj, k) for k in type(obj).model_fields}, out, active)
        active.discard(id(obj))
    elif isinstance(obj, type):
        out.append(f"!type:{_qual(obj)}")
    elif isinstance(obj, (types.FunctionType, types.BuiltinFunctionType)):
        out.append(f"!fn:{getattr(obj, '__module__', None)}.{obj.__qualname__}")
    else:
        _fallback(obj, out, active)


def _sequence(obj: Any, head: str, out: list[str], active: set[int]) -> None:
    _enter(obj, active)
    out.append(head)
    for i, item in enumerate(obj):
        if i:
            out.append(",")
        _canon(item, out, active)
    out.append("]")
    active.discard(id(obj))


def _enter(obj: Any, active: set[int]) -> None:
    oid = id(obj)
    if oid in active:
        raise CacheKeyError(
            f"cannot build a cache key from self-referencing data (a {type(obj).__name__} "
            "contains itself); pass a key built from its identifying fields instead")
    active.add(oid)


def _fallback(obj: Any, out: list[str], active: set[int]) -> None:
    """Any other object: its class and its pickle state (``__reduce_ex__``), which is stable
    across processes for ordinary classes (``__dict__``/``__slots__`` values); else its repr
    when the class defines one; else an error asking for an explicit key."""
    t = type(obj)
    state: Any = MISSING
    try:
        reduced = obj.__reduce_ex__(4)
    except Exception:
        reduced = None
    if isinstance(reduced, tuple) and len(reduced) >= 2:
        args = reduced[1]
        st = reduced[2] if len(reduced) > 2 else None
        if isinstance(st, tuple) and len(st) == 2 and st[0] is None:
            st = st[1]  # (None, slots-dict)
        args = args[1:] if args and args[0] is t else args  # copyreg.__newobj__(cls, *args)
        state = (tuple(args), st)
    if state is not MISSING:
        _enter(obj, active)
        out.append(f"!o:{_qual(t)}")
        _canon(state, out, active)
        active.discard(id(obj))
        return
    if vars(object)["__repr__"] is not getattr(t, "__repr__", None):
        out.append(f"!r:{_qual(t)}:{_json_str(repr(obj))}")
        return
    raise CacheKeyError(
        f"cannot build a cache key from a {_qual(t)}: it has no picklable state and no repr; "
        "pass a key built from its identifying fields (for example generate_cache_key("
        "(obj.id, obj.version)))")


_SCALAR_TEXT: dict[type, Callable[[Any], str]] = {
    str: _json_str, int: int.__repr__, float: _float,
    bool: lambda b: "true" if b else "false", type(None): lambda _v: "null",
}


def _flat(data: dict[Any, Any]) -> str | None:
    """A flat dict of str keys and JSON scalars, as ``_canon`` writes it, or ``None``."""
    try:
        items = sorted(data.items())
    except TypeError:  # keys of mixed types
        return None
    parts = []
    for k, v in items:
        text = _SCALAR_TEXT.get(type(v))
        if text is None or type(k) is not str:
            return None
        parts.append(_json_str(k) + ":" + text(v))
    return "{" + ",".join(parts) + "}"


def canonical(data: Any) -> str:
    """The canonical text of ``data`` (what :func:`generate_cache_key` hashes).

    Example:
        >>> canonical({"b": [1, 2.5], "a": None})
        '{"a":null,"b":[1,2.5]}'
        >>> canonical({1: "x"}) != canonical({"1": "x"})
        True
    """
    if type(data) is dict:
        flat = _flat(data)  # the common case, ~2x faster than the general walk
        if flat is not None:
            return flat
    out: list[str] = []
    try:
        _canon(data, out, set())
    except RecursionError:
        raise CacheKeyError(
            "cannot build a cache key: the data is nested too deeply; pass a shorter key"
        ) from None
    return "".join(out)


def _call_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The key part for a decorated call's arguments.

    Positional scalar arguments (the common case) give their canonical text directly when it is
    short (``!t[1,"a"]``: it cannot clash with a 32-hex-digit hash); anything else is hashed.
    """
    if not kwargs:
        parts = []
        for a in args:
            text = _SCALAR_TEXT.get(type(a))
            if text is None:
                break
            parts.append(text(a))
        else:
            key = "!t[" + ",".join(parts) + "]"
            if len(key) <= 64:
                return key
    return generate_cache_key((args, kwargs))


def generate_cache_key(data: Any) -> str:
    """A stable 32-character key for ``data``: equal for equal data (whatever the dict order,
    in any process), different for different data.

    Works for JSON data and for what JSON cannot encode: tuples (distinct from lists), sets,
    bytes, non-string dict keys, enums, dates, decimals, UUIDs, paths, dataclasses, Pydantic
    models and ordinary objects (by class and state).

    Raises:
        CacheKeyError: self-referencing data, or an object with no state to describe it.

    Example:
        >>> generate_cache_key({"x": 1, "y": 2}) == generate_cache_key({"y": 2, "x": 1})
        True
        >>> generate_cache_key({1, 2}) == generate_cache_key(frozenset({2, 1}))
        True
        >>> len(generate_cache_key(b"bytes"))
        32
    """
    text = canonical(data)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


# -- serializers -----------------------------------------------------------------------------


class _Serializer(Protocol):
    def dumps(self, value: Any) -> bytes | str: ...

    def loads(self, data: bytes) -> Any: ...


class _Pickle:
    @staticmethod
    def dumps(value: Any) -> bytes:
        return pickle.dumps(value, protocol=5)

    @staticmethod
    def loads(data: bytes) -> Any:
        return pickle.loads(data)


class _Json:
    @staticmethod
    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), allow_nan=True).encode()

    @staticmethod
    def loads(data: bytes) -> Any:
        return json.loads(data)


def _serializer(spec: str) -> _Serializer:
    if spec == "pickle":
        return _Pickle()
    if spec == "json":
        return _Json()
    return load_codec(spec, what="caching.serializer",  # type: ignore[no-any-return]
                      error=CacheSerializationError)


# -- metrics ---------------------------------------------------------------------------------

# one metric, cache_lookups_total{level, result}: seed 000's own compute() counts
# "cache_hits", whose Prometheus series (cache_hits_total) a cache_hits_total metric would take
_L1_HIT = {"level": "l1", "result": "hit"}
_L1_MISS = {"level": "l1", "result": "miss"}
_L2_HIT = {"level": "l2", "result": "hit"}
_L2_MISS = {"level": "l2", "result": "miss"}


def _no_metric(name: str, value: float = 1, labels: Mapping[str, str] | None = None) -> None:
    return None


# -- the facility ----------------------------------------------------------------------------


class _LeaderCancelled(Exception):
    """Set on a single-flight future whose loader task was cancelled: waiters retry."""


class Cache:
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
        # L2
        self._l2 = cfg.backend == "redis" and cfg.enabled
        if self._l2:
            require_client("caching")
        self._serializer: _Serializer | None = _serializer(cfg.serializer) if self._l2 else None
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

    def __repr__(self) -> str:
        level = "L1+redis" if self._l2 else "L1"
        return (f"<Cache {self.owner} {level} namespace={self.config.namespace!r} "
                f"entries={len(self._data)}/{self._max}>")

    def __reduce__(self) -> tuple[Any, ...]:
        # locks, futures and connections are rebuilt from configuration (metrics link dropped)
        return (Cache, (self.config,), None)

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
            self._data.pop(key, None)
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

    def _l1_peek(self, key: str) -> Any:
        entry = self._data.get(key)
        if entry is None:
            return MISSING
        if entry[1] is not None and entry[1] <= self.clock():
            self._data.pop(key, None)
            return MISSING
        return entry[0]

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
        if self._l2:
            payload = self._dumps(key, value)
            ready = await self._l2_ready()  # listening for invalidations before L1 holds it
            self._l1_store(key, value, ttl)
            if ready:
                await self._l2_set(key, payload, ttl)
            return
        self._l1_store(key, value, ttl)

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

    async def delete(self, key: str) -> bool:
        """Remove ``key`` from every level (and from every process's L1). Missing keys are
        ignored. Returns whether a value was removed here (L1, or L2 when configured)."""
        if not self._enabled:
            return False
        self._generation += 1
        found = self._data.pop(key, None) is not None
        if self._l2:
            found = await self._l2_delete(key) or found
        return found

    async def clear(self) -> bool:
        """Empty every level (this namespace only in Redis) and every process's L1."""
        if not self._enabled:
            return False
        self._generation += 1
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
        try:
            self._loads += 1
            self._inc("cache_loads_total", 1, None)
            value = await _call(loader)
            await self.set(key, value, ttl)
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

    def purge_expired(self) -> int:
        """Remove every expired L1 entry now; returns how many were removed."""
        now = self.clock()
        dead = [k for k, (_v, exp) in list(self._data.items()) if exp is not None and exp <= now]
        for k in dead:
            self._data.pop(k, None)
        return len(dead)

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

    # -- L2 internals -------------------------------------------------------------------------

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

    async def _l2_get(self, key: str, default: Any) -> Any:
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
            logger.warning("cache[{}]: cannot decode L2 value of {!r} ({!r}); treating it as a "
                           "miss", self.config.namespace, key, exc)
            self._misses[1] += 1
            self._inc("cache_lookups_total", 1, _L2_MISS)
            return default
        self._hits[1] += 1
        self._inc("cache_lookups_total", 1, _L2_HIT)
        if gen == self._generation:  # no invalidation arrived while we read: promote
            self._l1_store(key, value, None if pttl < 0 else pttl / 1000.0)
        return value

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

    async def _l2_delete(self, key: str) -> bool:
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

    async def _l2_clear(self) -> None:
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
            self._data.clear()
            return
        for k in msg.get("k") or ():
            self._data.pop(k, None)

    def _on_listener_lost(self) -> None:
        # L1 hits now check in first: reconnect (dropping L1), or serve L1 while Redis is down
        self._live_loop = None

    def _on_listener_reset(self) -> None:
        # invalidations may have been missed: nothing in L1 can be trusted any more
        self._live_loop = None
        self._generation += 1
        self._data.clear()

    def _failed(self, exc: BaseException) -> None:
        if self._listener is not None:
            # the listener's reader may not have noticed yet that the server went away: its
            # session is replaced at the next ensure() (dropping L1: invalidations were missed)
            self._listener.suspect()
        self._l2_errors += 1
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


_running_loop = asyncio.events._get_running_loop  # None outside a loop; no exception
_RESUBSCRIBE_FIRST = 0.05  # seconds before the first resubscription attempt after a loss
_FOREVER = 2.0 ** 52 / 1000  # seconds (~140,000 years): longer TTLs are stored without expiry


def _safe_url(url: str | None) -> str:
    from urllib.parse import urlsplit

    from onex_compose.capabilities._redis import redis_url

    parts = urlsplit(redis_url(url))
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path}"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _bad_key(key: Any) -> NoReturn:
    raise CacheKeyError(
        f"cache keys are strings, got {type(key).__name__} {key!r}; build one with "
        "generate_cache_key(data)")


async def _call(loader: Callable[[], Any]) -> Any:
    value = loader()
    if inspect.isawaitable(value):
        value = await value
    return value


def _check_ttl(ttl: Any) -> None:
    """A TTL is ``None`` or a number of seconds (``inf``: never expires); NaN, booleans and
    strings are refused with a clear error instead of a comparison failing later."""
    if ttl is None:
        return
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"ttl must be a number of seconds or None, got {type(ttl).__name__} "
                        f"{ttl!r}")
    if ttl != ttl:
        raise ValueError("ttl must be a number of seconds or None, got NaN")


def _require_async(fn: Callable[..., Any]) -> None:
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(
            f"@cached decorates 'async def' functions; {getattr(fn, '__qualname__', fn)!r} is "
            "not one (a cached sync function would become a coroutine function)")


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
