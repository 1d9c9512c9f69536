"""The caching capability's configuration, errors, sentinel and small shared helpers."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal, NoReturn, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from onex_compose.capabilities._codecs import PICKLE_WARNING, check_serializer
from onex_compose.capabilities._redis import check_redis_url
from onex_compose.exceptions import OnexError


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
        default="json",
        description="L2 value encoding: 'json' (the default), 'pickle' (opt-in), or "
                    "'module:object' with dumps/loads. " + PICKLE_WARNING)
    redis_timeout: float = Field(default=1.0, gt=0, description="Redis connect/command timeout")
    retry_interval: float = Field(
        default=1.0, ge=0, description="after an L2 failure, seconds to serve from L1 only")
    fail_safe_ttl: float | None = Field(
        default=None, gt=0,
        description="seconds an expired L1 entry is kept as a fallback: when a loader raises, "
                    "the stale value is served instead of the error; None: off")
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


# -- metrics ---------------------------------------------------------------------------------

# one metric, cache_lookups_total{level, result}: seed 000's own compute() counts
# "cache_hits", whose Prometheus series (cache_hits_total) a cache_hits_total metric would take
_L1_HIT = {"level": "l1", "result": "hit"}
_L1_MISS = {"level": "l1", "result": "miss"}
_L2_HIT = {"level": "l2", "result": "hit"}
_L2_MISS = {"level": "l2", "result": "miss"}


def _no_metric(name: str, value: float = 1, labels: Mapping[str, str] | None = None) -> None:
    return None


_running_loop = asyncio.events._get_running_loop  # None outside a loop; no exception


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

