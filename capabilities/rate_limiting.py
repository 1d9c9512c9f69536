"""rate_limiting: per-key rate limits with a cost, exact and without window-boundary bursts.

The algorithm is GCRA (the generic cell rate algorithm of redis-cell's ``CL.THROTTLE``, Go's
``throttled`` and Ruby's ``gcra``; ``reference/capabilities.md`` A.4). Each key stores a single
number, its *theoretical arrival time* (TAT). With emission interval ``T = period / limit`` and
tolerance ``tau = T * burst``, a request of cost ``n`` computes ``new = max(TAT, now) + n * T``
and ``wait = new - tau - now``; it is admitted now if ``wait <= 0`` (then ``TAT = new``), and
otherwise ``wait`` is exactly how long it must wait (its ``retry_after``). Consequences:

* the long-run rate is exactly ``limit`` units per ``period``;
* there are no windows, so no boundary: over *any* interval of length ``t`` at most
  ``burst + t * limit / period`` units are admitted (a fixed window admits ``2 * limit`` in an
  instant around its boundary; ``limits``' FixedWindow does, verified in A.4);
* ``burst`` (default: ``limit``) is how many units an idle key may spend at once, the token
  bucket's capacity; ``burst: 1`` spaces requests strictly ``T`` apart;
* state is O(1) per key and one atomic read-modify-write, which in Redis is one Lua script.

Why hand-written instead of ``limits`` or ``aiolimiter``: ``limits``' memory storage keeps one
entry object per hit (a moving-window hit costs 4-6 µs and grows with the window, 385 µs at a
million entries) and its fixed window bursts at boundaries; ``aiolimiter`` is a leaky bucket
that only waits (never rejects), has no keys or cost-aware rejection, and is bound to one event
loop. A pure-Python GCRA hit costs ~0.2 µs (``benchmarks/bench_ratelimit.py`` compares them).

Modes: ``reject`` raises :class:`RateLimitExceededError` (with ``retry_after``) at once;
``wait`` reserves the slot and sleeps until it (waiters are served in arrival order because the
reservation moves the TAT), unless the wait would exceed ``max_wait`` or the current deadline
(``_context.current_deadline``), in which case it rejects at once without reserving. A waiter
that is cancelled does not give its reserved slot back (the same on both stores).

Stores: ``memory`` (per process, a dict of floats under one lock) and ``redis`` (one Lua script
per request, so every process shares one limit per key). Time on Redis: ``redis_clock:
server`` (the default) reads Redis ``TIME``, one clock for every process; ``client`` (and any
injected clock) passes this process's clock, which must then be wall-clock-like across
processes (``time.time``) because key expiry (``PX``) is derived from it. Both stores run the
same arithmetic on IEEE doubles, so the same scripted sequence gives the same decisions (a test
checks it against the real Redis).

With ``tracing`` composed (``rate_limiting`` in its ``instrument`` list), a request that
waits adds the event ``rate_limit.wait`` (``rate_limit.policy``, ``cost``, ``wait_s``) to the
current span and a rejected one ``rate_limit.rejected`` (``rate_limit.policy``, ``cost``,
``reason``, ``retry_after_s``); the policy is ``default`` unless the key has its own limit, so
no caller-chosen key reaches a span. An admitted request reports nothing.

When Redis is unreachable, ``on_backend_error`` is the stated policy: ``local`` (the default)
degrades to an in-process limiter with the same limits (each process then enforces the limit on
its own: the effective global limit is multiplied by the number of processes, but a flood is
still throttled), ``allow`` fails open (admits everything), ``deny`` fails closed (rejects
everything with ``RateLimitExceededError(reason="backend_unavailable")``). Redis is retried
after ``backend_retry_interval`` seconds; each outage is logged once and counted in
``rate_limit_backend_errors_total``.

Example:
    >>> from onex_compose.capabilities._context import ManualClock
    >>> clock = ManualClock()
    >>> limiter = RateLimiter({"limit": 2, "period": 1.0}, clock=clock)
    >>> [limiter.hit("alice") for _ in range(3)]
    [True, True, False]
    >>> limiter.check("alice").retry_after
    0.5
    >>> clock.advance(0.5)
    >>> limiter.hit("alice"), limiter.hit("bob")
    (True, True)
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, model_validator

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities import _context, _redis
from onex_compose.capabilities._fallback import BackendOutage, RedisBackendConfig, backend_errors
from onex_compose.capabilities._traced import tracer_for
from onex_compose.exceptions import OnexError

__all__ = [
    "Limit",
    "MixinRateLimiting",
    "RateLimitDecision",
    "RateLimitExceededError",
    "RateLimiter",
    "RateLimitingConfig",
    "RateLimitingProtocol",
]

T = TypeVar("T")
Clock = Callable[[], float]

_EPS = 1e-9  # seconds of float slack, identical in Python and Lua
_INF = 1e300  # "no bound" as a number both sides parse


class RateLimitExceededError(OnexError, RuntimeError):
    """A request was not admitted (reject mode, or a wait longer than allowed).

    Not retried by the retry capability by default (``onex_retriable = False``): the caller
    should back off for ``retry_after`` seconds, or use ``mode: wait``. Neither a success nor a
    failure for a circuit breaker around the limiter (``onex_breaker_neutral = True``): the
    node shed the request itself, the dependency was never called.

    Attributes:
        key: the rate-limited key.
        retry_after: seconds until a request of the same cost would be admitted.
        cost: the request's cost.
        limit: the :class:`Limit` that applied.
        reason: ``"limited"``, ``"wait_too_long"`` (wait mode, beyond ``max_wait`` or the
            deadline) or ``"backend_unavailable"`` (Redis down, ``deny`` policy).

    Example:
        >>> str(RateLimitExceededError("alice", 0.25))
        "rate limit exceeded for key 'alice'; retry after 0.250 s"
    """

    onex_retriable = False
    onex_breaker_neutral = True

    def __init__(self, key: str, retry_after: float, *, cost: int = 1,
                 limit: Limit | None = None, reason: str = "limited") -> None:
        self.key = key
        self.retry_after = max(0.0, float(retry_after))
        self.cost = cost
        self.limit = limit
        self.reason = reason
        what = {"limited": "rate limit exceeded",
                "wait_too_long": "rate limit wait would exceed max_wait or the deadline",
                "backend_unavailable": "rate limiter store unreachable (deny policy)",
                }.get(reason, reason)
        super().__init__(f"{what} for key {key!r}; retry after {self.retry_after:.3f} s")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (self.key, self.retry_after, self.cost, self.limit, self.reason))


def _rebuild_error(key: str, retry_after: float, cost: int, limit: Limit | None,
                   reason: str) -> RateLimitExceededError:
    return RateLimitExceededError(key, retry_after, cost=cost, limit=limit, reason=reason)


def _check_key(key: Any) -> str:
    """``key`` if it is a string; else a ``TypeError`` saying so (the same on every store)."""
    if isinstance(key, str):
        return key
    raise TypeError(f"rate limiter keys are strings, got {key!r} ({type(key).__name__}); pass "
                    "str(...) of it (a key_func must return a string too)")


class LimitSpec(BaseModel):
    """One limit: ``limit`` units per ``period`` seconds, spending up to ``burst`` at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(default=100, ge=1)
    """Units admitted per period (the long-run rate is exactly limit / period)."""
    period: float = Field(default=1.0, gt=0)
    """Seconds."""
    burst: int | None = Field(default=None, ge=1)
    """Units an idle key may spend at once (None: ``limit``)."""


class RateLimitingConfig(LimitSpec, RedisBackendConfig):
    """The ``rate_limiting`` subcontract (every key of ``rate_limiting_config``).

    Attributes:
        mode: ``reject`` (raise at once) or ``wait`` (sleep until admitted).
        max_wait: wait mode: longest acceptable wait in seconds (``None``: unbounded); a
            request that would wait longer is rejected at once, without reserving.
        keys: per-key overrides, e.g. ``{"tenant:big": {"limit": 1000}}``.
        guard_process: whether ``process()`` is rate limited (guard rank 70).
        guard_key, guard_cost: the key and cost ``process()`` uses (``key_func`` on the
            facility can derive the key from the call's arguments).
        backend, redis_url, namespace, redis_clock: the store (see the module docstring).
        on_backend_error: ``local`` / ``allow`` (fail open) / ``deny`` (fail closed).
        backend_retry_interval: seconds on the fallback before Redis is tried again.
    """

    mode: Literal["reject", "wait"] = "reject"
    max_wait: float | None = Field(default=10.0, ge=0)
    keys: dict[str, LimitSpec] = Field(default_factory=dict)
    guard_process: bool = True
    guard_key: str = Field(default="process", min_length=1)
    guard_cost: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check_costs(self) -> RateLimitingConfig:
        burst = self.burst or self.limit
        if self.guard_cost > burst:
            raise ValueError(f"guard_cost={self.guard_cost} exceeds burst={burst}: process() "
                             "could never be admitted; raise burst or lower guard_cost")
        return self


@dataclass(frozen=True)
class Limit:
    """A resolved limit with its GCRA constants.

    Example:
        >>> lim = Limit(10, 1.0, 5)
        >>> lim.emission, lim.tolerance
        (0.1, 0.5)
    """

    limit: int
    period: float
    burst: int
    emission: float = field(init=False, repr=False, compare=False)
    """``T``: seconds one unit occupies (computed once)."""
    tolerance: float = field(init=False, repr=False, compare=False)
    """``tau``: ``T * burst`` (computed once)."""

    def __post_init__(self) -> None:
        emission = self.period / self.limit
        object.__setattr__(self, "emission", emission)
        object.__setattr__(self, "tolerance", emission * self.burst)

    @classmethod
    def of(cls, spec: LimitSpec) -> Limit:
        return cls(spec.limit, spec.period, spec.burst or spec.limit)


@dataclass(frozen=True)
class RateLimitDecision:
    """What a request got (``check`` computes it without spending anything).

    Attributes:
        allowed: admitted now (for ``check``: would be admitted now).
        retry_after: seconds to wait before it would be admitted (0.0 when allowed).
        remaining: units that could be spent right now (a peek spends nothing).
        reset_after: seconds until the key is back to its full burst.
    """

    allowed: bool
    retry_after: float
    remaining: int
    reset_after: float


class RateLimitingProtocol(Protocol):
    """What the ``rate_limiter`` facility offers."""

    def hit(self, key: str = "default", cost: int = 1) -> bool: ...

    async def acquire(self, key: str = "default", cost: int = 1) -> float: ...


# ------------------------------------------------------------------------------------------------
# stores


class _MemoryStore:
    """Per-process GCRA state: key -> TAT, under one lock (held for a few float operations)."""

    __slots__ = ("lock", "sweep_at", "tat")

    def __init__(self) -> None:
        self.tat: dict[str, float] = {}
        self.lock = threading.Lock()
        self.sweep_at = 4096

    def take(self, key: str, emission: float, tolerance: float, cost: int, now: float,
             allowance: float, peek: bool = False) -> tuple[float, float]:
        """Returns ``(wait, tat_after - now)``; admitted (and stored) iff ``wait <= allowance``."""
        with self.lock:
            tat = self.tat.get(key, now)
            if tat < now:
                tat = now
            new = tat + emission * cost
            wait = new - tolerance - now
            if wait <= allowance + _EPS and not peek:
                self.tat[key] = new
                if len(self.tat) > self.sweep_at:
                    self._sweep(now)
                return wait, new - now
            return wait, tat - now

    def _sweep(self, now: float) -> None:
        # a TAT in the past is the same as no entry: drop them (amortised O(1) per hit)
        for k in [k for k, v in self.tat.items() if v <= now]:
            del self.tat[k]
        self.sweep_at = max(4096, 2 * len(self.tat))

    def reset(self, key: str | None) -> None:
        with self.lock:
            if key is None:
                self.tat.clear()
            else:
                self.tat.pop(key, None)


# KEYS[1]: the key's TAT. ARGV: now ('' = server TIME), emission, tolerance, cost, allowance,
# peek (0/1). Returns {admitted (0/1), wait, tat_after - now} (floats as strings).
_LUA_GCRA = """
local function fmt(x) return string.format('%.17g', x) end
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local emission = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local allowance = tonumber(ARGV[5])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new = tat + emission * cost
local wait = new - tolerance - now
if wait <= allowance + 1e-9 and ARGV[6] ~= '1' then
  redis.call('SET', KEYS[1], fmt(new), 'PX', math.ceil((new - now) * 1000) + 1)
  return {1, fmt(wait), fmt(new - now)}
end
return {0, fmt(wait), fmt(tat - now)}
"""




class _Scripts:
    _cache: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, client: Any) -> Any:
        script = cls._cache.get(client)
        if script is None:
            script = cls._cache[client] = client.register_script(_LUA_GCRA)
        return script


# ------------------------------------------------------------------------------------------------
# the limiter


class RateLimiter:
    """Per-key GCRA rate limiter on an in-process or Redis store.

    Args:
        config: a :class:`RateLimitingConfig`, a mapping of its fields, or ``None``.
        clock: seconds (inject a ``ManualClock`` in tests; on Redis an injected clock replaces
            the server's ``TIME``).
        sleep: async sleep for wait mode (default ``asyncio.sleep``; ``ManualClock.sleep`` in
            tests).
        sleep_sync: blocking sleep for :meth:`acquire_sync` (default ``time.sleep``).
        metrics: the node's metrics facility, or ``None``.

    Attributes:
        key_func: optional ``(*args, **kwargs) -> str`` deriving the ``process()`` key from
            its arguments (for example the tenant id), instead of ``guard_key``.

    Example:
        >>> limiter = RateLimiter({"limit": 5, "period": 1.0, "keys": {"vip": {"limit": 50}}})
        >>> limiter.limit_for("vip").limit, limiter.limit_for("anyone").limit
        (50, 5)
    """

    # the node's tracer (setup_rate_limiting): waits and rejections become span events; a
    # class-level default, so a limiter without one keeps its instance layout
    tracer: Any = None

    def __init__(self, config: RateLimitingConfig | Mapping[str, Any] | None = None, *,
                 clock: Clock | None = None,
                 sleep: Callable[[float], Awaitable[Any]] | None = None,
                 sleep_sync: Callable[[float], Any] | None = None, metrics: Any = None) -> None:
        cfg: RateLimitingConfig = coerce_config(RateLimitingConfig, config, "rate_limiting")
        self.config = cfg
        self.metrics = metrics
        self.sleep: Callable[[float], Awaitable[Any]] = sleep or asyncio.sleep
        self.sleep_sync: Callable[[float], Any] = sleep_sync or time.sleep
        self.key_func: Callable[..., str] | None = None
        self.default_limit = Limit.of(cfg)
        self._limits = {k: Limit.of(v) for k, v in cfg.keys.items()}
        self._mode_allowance = 0.0 if cfg.mode == "reject" else (
            _INF if cfg.max_wait is None else cfg.max_wait)
        self._local = _MemoryStore()
        self._redis = cfg.backend == "redis"
        if self._redis:
            _redis.require_client("rate_limiting")
        self._prefix = f"{cfg.namespace}:rate_limit:"
        self._backend_errors: tuple[type[BaseException], ...] = (
            backend_errors() if self._redis else ())
        self._outage = BackendOutage(
            "rate limiter", cfg.on_backend_error, cfg.backend_retry_interval,
            clock=clock or _context.monotonic, metrics=metrics,
            metric="rate_limit_backend_errors_total", labels={"fallback": cfg.on_backend_error})
        self.clock = clock  # sets the time sources (property)

    @property
    def clock(self) -> Clock:
        """The clock GCRA runs on (memory: monotonic; Redis: see ``redis_clock``)."""
        return self._clock

    @clock.setter
    def clock(self, clock: Clock | None) -> None:
        self._injected = clock is not None
        if clock is not None:
            self._clock: Clock = clock
        elif self._redis and self.config.redis_clock == "client":
            self._clock = time.time
        else:
            self._clock = _context.monotonic
        # durations (back-off windows, deadlines) always run on a monotonic-like clock
        self._duration_clock: Clock = clock or _context.monotonic
        self._outage.clock = self._duration_clock
        self._client_time = self._injected or self.config.redis_clock == "client"

    def use_clock(self, clock: _context.ManualClock) -> RateLimiter:
        """Use a ``ManualClock`` for time and sleeping (tests); returns ``self``."""
        self.clock = clock
        self.sleep = clock.sleep
        self.sleep_sync = clock.sleep_sync
        return self

    def __repr__(self) -> str:
        lim = self.default_limit
        return (f"<RateLimiter {lim.limit}/{lim.period}s burst={lim.burst} "
                f"mode={self.config.mode} backend={self.config.backend}>")

    def limit_for(self, key: str) -> Limit:
        """The limit that applies to ``key`` (its override, else the default)."""
        if key.__class__ is not str:
            key = _check_key(key)
        return self._limits.get(key, self.default_limit)

    def _policy_label(self, key: str) -> str:
        return key if key in self._limits else "default"

    def _check_cost(self, key: str, cost: int, limit: Limit) -> None:
        if not isinstance(cost, int) or isinstance(cost, bool) or cost < 1:
            raise ValueError(f"cost must be a positive integer, got {cost!r}")
        if cost > limit.burst:
            raise ValueError(
                f"cost {cost} exceeds the burst of {limit.burst} for key {key!r}: such a request "
                "could never be admitted; raise 'burst' (or the key's limit) or split the request")

    # -- the store call ------------------------------------------------------------------------

    def _take_sync(self, key: str, cost: int, limit: Limit, allowance: float,
                   peek: bool = False) -> tuple[float, float]:
        if key.__class__ is not str:
            key = _check_key(key)
        if not self._redis:
            return self._local.take(key, limit.emission, limit.tolerance, cost, self._clock(),
                                    allowance, peek)
        if self._outage.up():
            script = _Scripts.of(_redis.sync_client(self.config.redis_url))
            try:
                reply = script(keys=[self._prefix + key], args=self._argv(
                    limit, cost, allowance, peek))
            except self._backend_errors as exc:
                self._outage.failed(exc)
            else:
                return float(_redis.text(reply[1])), float(_redis.text(reply[2]))
        return self._degraded(key, cost, limit, allowance, peek)

    async def _take_async(self, key: str, cost: int, limit: Limit, allowance: float,
                          peek: bool = False) -> tuple[float, float]:
        if key.__class__ is not str:
            key = _check_key(key)
        if not self._redis:
            return self._local.take(key, limit.emission, limit.tolerance, cost, self._clock(),
                                    allowance, peek)
        if self._outage.up():
            script = _Scripts.of(_redis.async_client(self.config.redis_url))
            try:
                reply = await script(keys=[self._prefix + key], args=self._argv(
                    limit, cost, allowance, peek))
            except self._backend_errors as exc:
                self._outage.failed(exc)
            else:
                return float(_redis.text(reply[1])), float(_redis.text(reply[2]))
        return self._degraded(key, cost, limit, allowance, peek)

    def _argv(self, limit: Limit, cost: int, allowance: float, peek: bool) -> list[str]:
        return [repr(self._clock()) if self._client_time else "", repr(limit.emission),
                repr(limit.tolerance), str(cost), repr(min(allowance, _INF)),
                "1" if peek else "0"]

    def _degraded(self, key: str, cost: int, limit: Limit, allowance: float,
                  peek: bool) -> tuple[float, float]:
        policy = self.config.on_backend_error
        if policy == "local":
            return self._local.take(key, limit.emission, limit.tolerance, cost,
                                    self._duration_clock(), allowance, peek)
        if policy == "allow":
            return 0.0 - limit.tolerance, 0.0
        if self.tracer is not None:
            self._trace_rejected(key, cost, self.config.backend_retry_interval,
                                 "backend_unavailable")
        raise RateLimitExceededError(key, self.config.backend_retry_interval, cost=cost,
                                     limit=limit, reason="backend_unavailable")

    # -- public API ----------------------------------------------------------------------------

    def _admit_now(self, key: str, cost: int) -> bool:
        """Memory store: spend ``cost`` of ``key`` if that is possible right now (the hot path,
        inlined: one dict read and write under the lock; nothing is spent otherwise)."""
        if key.__class__ is not str:
            key = _check_key(key)
        limit = self._limits.get(key, self.default_limit) if self._limits else self.default_limit
        if cost != 1:
            self._check_cost(key, cost, limit)
        now = self._clock()
        store = self._local
        tats = store.tat
        lock = store.lock
        lock.acquire()
        try:
            tat = tats.get(key, now)
            if tat < now:
                tat = now
            new = tat + limit.emission * cost
            if new - limit.tolerance - now > _EPS:
                return False
            tats[key] = new
            if len(tats) > store.sweep_at:
                store._sweep(now)
            return True
        finally:
            lock.release()

    def hit(self, key: str = "default", cost: int = 1) -> bool:
        """Spend ``cost`` units of ``key`` if available now; never waits (``limits``' ``hit``).

        Returns:
            ``True`` if admitted (the units are spent), ``False`` if not (nothing spent).
        """
        if not self._redis:
            if self._admit_now(key, cost):
                return True
            self._rejected(key, cost)
            return False
        limit = self.limit_for(key)
        if cost != 1:
            self._check_cost(key, cost, limit)
        if self._take_sync(key, cost, limit, 0.0)[0] <= _EPS:
            return True
        self._rejected(key, cost)
        return False

    async def ahit(self, key: str = "default", cost: int = 1) -> bool:
        """:meth:`hit` for async code (the Redis store uses the asyncio client)."""
        limit = self.limit_for(key)
        if cost != 1:
            self._check_cost(key, cost, limit)
        wait = (await self._take_async(key, cost, limit, 0.0))[0]
        if wait <= _EPS:
            return True
        self._rejected(key, cost)
        return False

    def check(self, key: str = "default", cost: int = 1) -> RateLimitDecision:
        """What a request of ``cost`` would get now, without spending anything."""
        limit = self.limit_for(key)
        self._check_cost(key, cost, limit)
        return self._decision(limit, *self._take_sync(key, cost, limit, 0.0, peek=True))

    async def acheck(self, key: str = "default", cost: int = 1) -> RateLimitDecision:
        """:meth:`check` for async code."""
        limit = self.limit_for(key)
        self._check_cost(key, cost, limit)
        return self._decision(limit, *(await self._take_async(key, cost, limit, 0.0, peek=True)))

    @staticmethod
    def _decision(limit: Limit, wait: float, ahead: float) -> RateLimitDecision:
        allowed = wait <= _EPS
        remaining = math.floor((limit.tolerance - ahead) / limit.emission + _EPS)
        return RateLimitDecision(allowed, 0.0 if allowed else wait, max(0, remaining),
                                 max(0.0, ahead))

    def _allowance(self) -> float:
        allowance = self._mode_allowance
        if allowance:
            deadline = _context.current_deadline()
            if deadline is not None:
                allowance = min(allowance, max(0.0, deadline - self._duration_clock()))
        return allowance

    def _outcome(self, key: str, cost: int, limit: Limit, allowance: float, wait: float
                 ) -> float:
        if wait <= _EPS:
            return 0.0
        if wait <= allowance + _EPS:
            if self.metrics is not None:
                self.metrics.increment("rate_limit_waits_total",
                                       labels={"policy": self._policy_label(key)})
            if self.tracer is not None:
                self.tracer.add_event("rate_limit.wait", {
                    "rate_limit.policy": self._policy_label(key), "cost": cost, "wait_s": wait})
            return wait
        reason = "limited" if allowance == 0 else "wait_too_long"
        self._rejected(key, cost, wait, reason)
        raise RateLimitExceededError(key, wait, cost=cost, limit=limit, reason=reason)

    def _rejected(self, key: str, cost: int = 1, retry_after: float | None = None,
                  reason: str = "limited") -> None:
        if self.metrics is not None:
            self.metrics.increment("rate_limit_rejected_total",
                                   labels={"policy": self._policy_label(key)})
        if self.tracer is not None:
            self._trace_rejected(key, cost, retry_after, reason)

    def _trace_rejected(self, key: str, cost: int, retry_after: float | None,
                        reason: str) -> None:
        attrs: dict[str, Any] = {"rate_limit.policy": self._policy_label(key), "cost": cost,
                                 "reason": reason}
        if retry_after is not None:
            attrs["retry_after_s"] = retry_after
        self.tracer.add_event("rate_limit.rejected", attrs)

    async def acquire(self, key: str = "default", cost: int = 1) -> float:
        """Spend ``cost`` units of ``key`` following the configured mode.

        Returns:
            Seconds waited (0.0 when admitted at once).

        Raises:
            RateLimitExceededError: reject mode and no capacity, or wait mode and the wait
                would exceed ``max_wait`` or the current deadline.
        """
        if not self._redis and self._admit_now(key, cost):
            return 0.0
        limit = self.limit_for(key)
        if cost != 1:
            self._check_cost(key, cost, limit)
        allowance = self._allowance()
        wait = (await self._take_async(key, cost, limit, allowance))[0]
        if wait <= _EPS:
            return 0.0
        wait = self._outcome(key, cost, limit, allowance, wait)
        await self.sleep(wait)
        return wait

    def acquire_sync(self, key: str = "default", cost: int = 1) -> float:
        """:meth:`acquire` for synchronous code (wait mode blocks with ``sleep_sync``)."""
        limit = self.limit_for(key)
        if cost != 1:
            self._check_cost(key, cost, limit)
        allowance = self._allowance()
        wait = self._take_sync(key, cost, limit, allowance)[0]
        if wait <= _EPS:
            return 0.0
        wait = self._outcome(key, cost, limit, allowance, wait)
        self.sleep_sync(wait)
        return wait

    def reset(self, key: str | None = None) -> None:
        """Forget the state of ``key`` (``None``: every key of the in-process store)."""
        if key is not None:
            key = _check_key(key)
        self._local.reset(key)
        if self._redis and key is not None:
            _redis.sync_client(self.config.redis_url).delete(self._prefix + key)

    async def areset(self, key: str) -> None:
        """Forget the state of ``key`` (async; on Redis too)."""
        key = _check_key(key)
        self._local.reset(key)
        if self._redis:
            await _redis.async_client(self.config.redis_url).delete(self._prefix + key)

    def limited(self, key: str | None = None, cost: int = 1
                ) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
        """Decorator: rate limit an async function (its calls share ``key``).

        Example:
            >>> limiter = RateLimiter({"limit": 10})
            >>> @limiter.limited("search")
            ... async def search(q):
            ...     return q
        """

        def decorate(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
            name: str = key or str(getattr(fn, "__qualname__", "default"))

            @functools.wraps(fn)
            async def limited_call(*args: Any, **kwargs: Any) -> T:
                await self.acquire(name, cost)
                return await fn(*args, **kwargs)

            return limited_call

        return decorate


# ------------------------------------------------------------------------------------------------
# the mixin


class MixinRateLimiting:
    """Request rate limiting and throttling: ``self.rate_limiter`` and a ``process()`` guard.

    Requires ``metrics`` (rejections, waits and store outages are counted).

    Example:
        >>> import asyncio
        >>> from onex_compose import NodeCompute, compose
        >>> Service = compose(NodeCompute, ["rate_limiting"])  # doctest: +SKIP
        >>> node = Service(capability_config={"rate_limiting": {"limit": 2}})  # doctest: +SKIP
        >>> node.rate_limiter.hit("alice")  # doctest: +SKIP
        True
    """

    __onex_capability__ = "rate_limiting"
    __slots__ = ()

    def setup_rate_limiting(self, config: RateLimitingConfig | Mapping[str, Any] | None = None,
                            ) -> None:
        """Build the limiter from config (reconfiguring keeps an injected clock and sleep)."""
        cfg = coerce_config(RateLimitingConfig, config, "rate_limiting")
        node = cast(Any, self)
        old = getattr(node, "rate_limiter", None)
        limiter = RateLimiter(cfg, metrics=node.metrics)
        if isinstance(old, RateLimiter):
            if old._injected:
                limiter.clock = old.clock
            limiter.sleep, limiter.sleep_sync = old.sleep, old.sleep_sync
            limiter.key_func = old.key_func
        if has_capability(self, "tracing"):
            limiter.tracer = tracer_for(self, "rate_limiting")
        node.rate_limiter = limiter

    @facility
    def rate_limiter(self) -> RateLimiter:
        """The node's rate limiter (default config when setup never ran)."""
        return RateLimiter(RateLimitingConfig(), metrics=cast(Any, self).metrics)

    def _guard_rate_limiting(self, call: Callable[..., Awaitable[T]]
                             ) -> Callable[..., Awaitable[T]]:
        """Wrap ``process()``: each call spends ``guard_cost`` of ``guard_key`` (guard rank 70).

        The guard follows the node's current limiter: after ``setup_rate_limiting(...)``
        reconfigures the node (limits, ``guard_process``, key, cost), the next call uses the
        new one (one identity check per call).
        """
        node = cast(Any, self)
        # (the limiter it is bound to, guard on?, key, cost, memory fast path or None, acquire)
        bound: list[tuple[Any, ...]] = [(None,)]

        def rebind(limiter: RateLimiter) -> tuple[Any, ...]:
            cfg = limiter.config
            state = bound[0] = (limiter, cfg.guard_process, cfg.guard_key, cfg.guard_cost,
                                None if limiter._redis else limiter._admit_now, limiter.acquire)
            return state

        @functools.wraps(call)
        async def limited(*args: Any, **kwargs: Any) -> T:
            limiter = node.rate_limiter
            state = bound[0]
            if state[0] is not limiter:
                state = rebind(limiter)
            _, on, key, cost, admit_now, acquire = state
            if on:
                key_func = limiter.key_func
                k = key_func(*args, **kwargs) if key_func is not None else key
                if admit_now is None or not admit_now(k, cost):  # memory: inline fast path
                    await acquire(k, cost)
            return await call(*args, **kwargs)

        return limited

    def _guard_sync_rate_limiting(self, call: Callable[..., T]) -> Callable[..., T]:
        """The sync twin of :meth:`_guard_rate_limiting` for a plain ``def process``: the same
        key, cost and ``guard_process`` switch, spent with the limiter's synchronous path (the
        in-process ``hit`` fast path, else :meth:`RateLimiter.acquire_sync`, which rejects with
        :class:`RateLimitExceededError` or, in wait mode, blocks the calling thread)."""
        node = cast(Any, self)

        @functools.wraps(call)
        def limited_sync(*args: Any, **kwargs: Any) -> T:
            limiter: RateLimiter = node.rate_limiter
            cfg = limiter.config
            if cfg.guard_process:
                key_func = limiter.key_func
                key = key_func(*args, **kwargs) if key_func is not None else cfg.guard_key
                if limiter._redis or not limiter._admit_now(key, cfg.guard_cost):
                    limiter.acquire_sync(key, cfg.guard_cost)
            return call(*args, **kwargs)

        return limited_sync
