"""The Redis-backed circuit breaker: one circuit shared by every process, kept by atomic Lua
scripts."""

from __future__ import annotations

import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from onex_compose.capabilities import _redis as redis_support
from onex_compose.capabilities._context import monotonic
from onex_compose.capabilities._fallback import BackendOutage, backend_errors
from onex_compose.capabilities._redis import text
from onex_compose.capabilities.circuit_breaker._breaker import CircuitBreaker, _BreakerBase, _Epoch
from onex_compose.capabilities.circuit_breaker._model import (
    _CLOSED,
    _FAILURE,
    _HALF_OPEN,
    _NEUTRAL,
    _OPEN,
    _SLOW,
    _SLOW_FAILURE,
    _SUCCESS,
    ASYNC_RESULTS,
    BreakerPolicy,
    BreakerStatus,
    CircuitOpenError,
    CircuitState,
    CircuitStateChange,
    Clock,
    Listener,
    _Classifier,
    _Dispatcher,
    _policy,
    async_misuse,
)

T = TypeVar("T")

# ------------------------------------------------------------------------------------------------
# the Redis-backed breaker

_LUA_COMMON = """
local function fmt(x) return string.format('%.17g', x) end
local function clock(arg)
  local n = tonumber(arg)
  if n then return n end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS[1] state hash. ARGV: now ('' = server TIME), reset_timeout, half_open_max_calls,
# half_open_max_wait ('' = none). Returns {decision (0 reject, 1 closed, 2 probe), epoch,
# state, retry_after, transition_from (-1 none)}.
_LUA_ADMIT = _LUA_COMMON + """
local key = KEYS[1]
local v = redis.call('HMGET', key, 'st', 'ep', 'since', 'ha', 'hok', 'hf')
local st = tonumber(v[1]) or 0
local ep = tonumber(v[2]) or 0
if st == 0 then return {1, ep, 0, '0', -1} end
local now = clock(ARGV[1])
local reset = tonumber(ARGV[2])
local hmax = tonumber(ARGV[3])
local hwait = tonumber(ARGV[4])
local since = tonumber(v[3]) or now
local ha = tonumber(v[4]) or 0
local inflight = ha - (tonumber(v[5]) or 0) - (tonumber(v[6]) or 0)
local from = -1
if st == 1 then
  local left = since + reset - now
  if left > 0 then return {0, ep, 1, fmt(left), -1} end
  st = 2; ep = ep + 1; since = now; ha = 0; from = 1
  redis.call('HSET', key, 'st', 2, 'ep', ep, 'since', fmt(now), 'cf', 0, 'ha', 0, 'hok', 0,
             'hf', 0, 'wf', 0, 'cs', 0, 'hs', 0, 'ws', 0)
  redis.call('UNLINK', KEYS[2])
elseif hwait and now - since >= hwait and inflight > 0 then
  ep = ep + 1
  redis.call('HSET', key, 'st', 1, 'ep', ep, 'since', fmt(now), 'cf', 0, 'ha', 0, 'hok', 0,
             'hf', 0, 'wf', 0, 'cs', 0, 'hs', 0, 'ws', 0)
  redis.call('UNLINK', KEYS[2])
  return {0, ep, 1, fmt(reset), 2}
end
if ha < hmax then
  redis.call('HSET', key, 'ha', ha + 1)
  return {2, ep, 2, '0', from}
end
local ra = reset
if hwait then ra = since + hwait - now end
return {0, ep, 2, fmt(ra), from}
"""

# KEYS[1] state hash, KEYS[2] window (list for count windows, hash for time windows).
# ARGV: now, epoch, probe (0/1), outcome (s/f/n), mode, failure_threshold, rate_threshold,
# window_type, window_size, minimum_calls, half_open_max_calls, slow (0/1),
# slow_rate_threshold. Returns {state, transition_from (-1 none), reason}.
# A count window holds one digit per call (failure 1 + slow 2); a time window keeps per-second
# buckets c<i>/f<i>/s<i> and totals c/f/s, its head second h and floor r: after a quiet period
# of at least window_size seconds the totals restart at zero in O(1) (r = now); buckets older
# than r are stale and are cleared, never subtracted, when the window passes over them.
_LUA_RECORD = _LUA_COMMON + """
local key, wkey = KEYS[1], KEYS[2]
local v = redis.call('HMGET', key, 'st', 'ep', 'cf', 'ha', 'hok', 'hf', 'wf', 'cs', 'hs', 'ws')
local st = tonumber(v[1]) or 0
local ep = tonumber(v[2]) or 0
if ep ~= tonumber(ARGV[2]) then return {st, -1, ''} end
local now = clock(ARGV[1])
local probe = ARGV[3] == '1'
local outcome = ARGV[4]
local rate = ARGV[5] == 'rate'
local threshold = tonumber(ARGV[6])
local rthr = tonumber(ARGV[7])
local wtime = ARGV[8] == 'time'
local wsize = tonumber(ARGV[9])
local minc = tonumber(ARGV[10])
local hmax = tonumber(ARGV[11])
local slow = 0
if ARGV[12] == '1' and outcome ~= 'n' then slow = 1 end
local sthr = tonumber(ARGV[13])
if outcome == 'f' then redis.call('HSET', key, 'lf', fmt(now)) end
if slow == 1 then redis.call('HSET', key, 'ls', fmt(now)) end
local function go(to, reason)
  redis.call('HSET', key, 'st', to, 'ep', ep + 1, 'since', fmt(now), 'ha', 0, 'hok', 0, 'hf', 0,
             'hs', 0)
  if to ~= 1 then
    redis.call('HSET', key, 'cf', 0, 'wf', 0, 'cs', 0, 'ws', 0)
    redis.call('UNLINK', wkey)
  end
  return {to, st, reason}
end
local function trip(calls, fails, slows)
  if fails > 0 and fails * 100 >= rthr * calls then return 'failure_rate' end
  if slows > 0 and slows * 100 >= sthr * calls then return 'slow_call_rate' end
  return nil
end
if st == 2 then
  if not probe then return {st, -1, ''} end
  local ha = tonumber(v[4]) or 0
  if outcome == 'n' then
    if ha > 0 then redis.call('HSET', key, 'ha', ha - 1) end
    return {st, -1, ''}
  end
  local hok = tonumber(v[5]) or 0
  local hf = tonumber(v[6]) or 0
  local hs = (tonumber(v[9]) or 0) + slow
  if outcome == 'f' then hf = hf + 1 else hok = hok + 1 end
  if (rate and hf * 100 >= rthr * hmax) or ((not rate) and hf > 0) then
    return go(1, 'probe_failed')
  end
  if (rate and hs * 100 >= sthr * hmax) or ((not rate) and hs > 0) then
    return go(1, 'probe_slow')
  end
  if hok + hf >= hmax then return go(0, 'probes_succeeded') end
  redis.call('HSET', key, 'hok', hok, 'hf', hf, 'hs', hs)
  return {st, -1, ''}
end
if st ~= 0 or outcome == 'n' then return {st, -1, ''} end
local failed = 0
if outcome == 'f' then failed = 1 end
if not rate then
  local cf = tonumber(v[3]) or 0
  local cs = tonumber(v[8]) or 0
  if failed == 1 then cf = cf + 1 else cf = 0 end
  if slow == 1 then cs = cs + 1 else cs = 0 end
  if cf ~= (tonumber(v[3]) or 0) or cs ~= (tonumber(v[8]) or 0) then
    redis.call('HSET', key, 'cf', cf, 'cs', cs)
  end
  if cf >= threshold then return go(1, 'failure_threshold') end
  if cs >= threshold then return go(1, 'slow_call_threshold') end
  return {st, -1, ''}
end
local wc, wf, ws
if wtime then
  local sec = math.floor(now)
  local w = redis.call('HMGET', wkey, 'h', 'c', 'f', 's', 'r')
  local head = tonumber(w[1])
  wc = tonumber(w[2]) or 0
  wf = tonumber(w[3]) or 0
  ws = tonumber(w[4]) or 0
  local floor = tonumber(w[5]) or 0
  if head == nil or sec - head >= wsize then
    head = sec
    floor = sec
    wc = 0
    wf = 0
    ws = 0
    local i = sec % wsize
    redis.call('HDEL', wkey, 'c' .. i, 'f' .. i, 's' .. i)
  elseif sec > head then
    for s = head + 1, sec do
      local i = s % wsize
      if s - wsize >= floor then
        local b = redis.call('HMGET', wkey, 'c' .. i, 'f' .. i, 's' .. i)
        wc = wc - (tonumber(b[1]) or 0)
        wf = wf - (tonumber(b[2]) or 0)
        ws = ws - (tonumber(b[3]) or 0)
      end
      redis.call('HDEL', wkey, 'c' .. i, 'f' .. i, 's' .. i)
    end
    head = sec
  end
  local i = head % wsize
  redis.call('HINCRBY', wkey, 'c' .. i, 1)
  if failed == 1 then redis.call('HINCRBY', wkey, 'f' .. i, 1) end
  if slow == 1 then redis.call('HINCRBY', wkey, 's' .. i, 1) end
  wc = wc + 1
  wf = wf + failed
  ws = ws + slow
  redis.call('HSET', wkey, 'h', head, 'c', wc, 'f', wf, 's', ws, 'r', floor)
  redis.call('HSET', key, 'wf', wf, 'ws', ws)
else
  local n = redis.call('LLEN', wkey)
  wf = tonumber(v[7]) or 0
  ws = tonumber(v[10]) or 0
  if n >= wsize then
    local old = tonumber(redis.call('RPOP', wkey)) or 0
    wf = wf - old % 2
    ws = ws - math.floor(old / 2)
    n = n - 1
  end
  redis.call('LPUSH', wkey, failed + 2 * slow)
  wc = n + 1
  wf = wf + failed
  ws = ws + slow
  redis.call('HSET', key, 'wf', wf, 'ws', ws)
end
if wc >= minc then
  local reason = trip(wc, wf, ws)
  if reason then return go(1, reason) end
end
return {st, -1, ''}
"""

# KEYS[1], KEYS[2]; ARGV: now, target state. Returns {state, transition_from}.
_LUA_FORCE = _LUA_COMMON + """
local key = KEYS[1]
local v = redis.call('HMGET', key, 'st', 'ep')
local st = tonumber(v[1]) or 0
local ep = tonumber(v[2]) or 0
local now = clock(ARGV[1])
redis.call('HSET', key, 'st', tonumber(ARGV[2]), 'ep', ep + 1, 'since', fmt(now),
           'ha', 0, 'hok', 0, 'hf', 0, 'hs', 0)
if tonumber(ARGV[2]) ~= 1 then
  redis.call('HSET', key, 'cf', 0, 'wf', 0, 'cs', 0, 'ws', 0)
  redis.call('UNLINK', KEYS[2])
end
return {tonumber(ARGV[2]), st}
"""

_OUTCOME = {_SUCCESS: ("s", "0"), _FAILURE: ("f", "0"), _NEUTRAL: ("n", "0"),
            _SLOW: ("s", "1"), _SLOW_FAILURE: ("f", "1")}




def _time_window_totals(raw: Mapping[Any, Any], size: int, now: float
                        ) -> tuple[int, int, int]:
    """Calls, failures and slow calls of a Redis time window at ``now``, computed as
    ``_TimeWindow.totals`` does (buckets that fell out of the window are excluded without being
    deleted; after a quiet period of ``size`` seconds or more the window is empty)."""
    data = {text(k): int(text(v)) for k, v in raw.items()}
    head = data.get("h")
    calls, failures, slow = data.get("c", 0), data.get("f", 0), data.get("s", 0)
    sec = int(now // 1)
    if head is None or sec <= head:
        return calls, failures, slow
    if sec - head >= size:
        return 0, 0, 0
    for s in range(max(head + 1, data.get("r", 0) + size), sec + 1):
        i = s % size
        calls -= data.get(f"c{i}", 0)
        failures -= data.get(f"f{i}", 0)
        slow -= data.get(f"s{i}", 0)
    return calls, failures, slow


class _Scripts:
    """Lua scripts registered once per Redis client object."""

    _cache: weakref.WeakKeyDictionary[Any, tuple[Any, Any, Any]] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, client: Any) -> tuple[Any, Any, Any]:
        scripts = cls._cache.get(client)
        if scripts is None:
            scripts = cls._cache[client] = (client.register_script(_LUA_ADMIT),
                                            client.register_script(_LUA_RECORD),
                                            client.register_script(_LUA_FORCE))
        return scripts


class _Admission:
    __slots__ = ("epoch", "probe", "st")

    def __init__(self, epoch: int, probe: bool, st: _Epoch | None = None) -> None:
        self.epoch = epoch
        self.probe = probe
        self.st = st  # set when the local fallback admitted the call


class RedisCircuitBreaker(_BreakerBase):
    """A circuit breaker whose state lives in Redis: every process using the same namespace and
    name sees (and drives) one circuit.

    Each call costs two atomic Lua scripts (admit, record), so use it where cross-process
    agreement matters more than the ~0.1 ms round trips. ``call`` uses the synchronous client
    (do not use it inside an event loop); ``acall`` the asyncio client.

    Time: the scripts read Redis ``TIME`` (one clock for every process) unless a clock is
    injected or ``redis_clock: client``, in which case this process passes its clock's value
    (tests use a ``ManualClock`` to script sequences).

    When Redis is unreachable, ``on_backend_error`` decides: ``local`` (an in-process breaker
    with the same policy stands in, and Redis is tried again after ``backend_retry_interval``),
    ``allow`` (the call runs unguarded) or ``deny`` (``CircuitOpenError`` with reason
    ``backend_unavailable``). Each outage is logged once and counted in
    ``circuit_breaker_backend_errors_total``.

    Example:
        >>> breaker = RedisCircuitBreaker("payments", namespace="svc")  # doctest: +SKIP
        >>> await breaker.acall(charge, order)  # doctest: +SKIP
    """

    def __init__(self, name: str, policy: BreakerPolicy | Mapping[str, Any] | None = None, *,
                 url: str | None = None, namespace: str = "onex", clock: Clock | None = None,
                 redis_clock: Literal["server", "client"] = "server",
                 on_backend_error: Literal["local", "allow", "deny"] = "local",
                 backend_retry_interval: float = 1.0, metrics: Any = None,
                 ignore: Iterable[type[BaseException]] = (),
                 record: Iterable[type[BaseException]] = (),
                 _dispatcher: _Dispatcher | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a circuit breaker needs a non-empty string name, got {name!r}")
        self.name = name
        self.policy = policy = _policy(policy)
        self.url = url
        self.on_state_change: list[Listener] = []
        self._dispatch = _dispatcher or _Dispatcher(metrics)
        self._classify = _Classifier(policy, ignore, record)
        # server time unless a clock was injected (then that clock drives the scripts)
        self._client_time = clock is not None or redis_clock == "client"
        self.clock: Clock = clock or (time.time if redis_clock == "client" else monotonic)
        self._duration_clock = clock or monotonic
        self.keys = [f"{namespace}:circuit_breaker:{{{name}}}",
                     f"{namespace}:circuit_breaker:{{{name}}}:window"]
        self.on_backend_error = on_backend_error
        self.backend_retry_interval = backend_retry_interval
        self._backend_errors = backend_errors()
        self._outage = BackendOutage(
            f"circuit breaker {name!r}", on_backend_error, backend_retry_interval,
            clock=self._duration_clock, metrics=self._dispatch.metrics,
            metric="circuit_breaker_backend_errors_total", labels={"operation_key": name})
        self._local = CircuitBreaker(name, policy, clock=self._duration_clock,
                                     _dispatcher=self._dispatch, ignore=ignore, record=record)
        self._local.on_state_change = self.on_state_change
        self._last_state = _CLOSED
        self._record_args = [
            policy.mode, str(policy.failure_threshold), repr(policy.failure_rate_threshold),
            policy.window_type, str(policy.window_size), str(policy.minimum_calls),
            str(policy.half_open_max_calls)]
        self._slow_rate_arg = repr(policy.slow_call_rate_threshold)
        self._admit_args = [repr(policy.reset_timeout), str(policy.half_open_max_calls),
                            "" if policy.half_open_max_wait is None
                            else repr(policy.half_open_max_wait)]
        self._dispatch.created(name, _CLOSED)

    def __repr__(self) -> str:
        return f"<RedisCircuitBreaker {self.name!r} key={self.keys[0]!r}>"

    @property
    def state(self) -> CircuitState:
        """The state this process saw last (``await astatus()`` reads the shared one)."""
        return self._last_state

    # -- backend plumbing ----------------------------------------------------------------------

    def _now_arg(self) -> str:
        return repr(self.clock()) if self._client_time else ""

    def set_clock(self, clock: Clock | None, redis_clock: Literal["server", "client"]) -> None:
        """Re-point every time source (``CircuitBreakers.clock`` uses it to inject a clock)."""
        self.clock = clock or (time.time if redis_clock == "client" else monotonic)
        self._duration_clock = self._outage.clock = self._local.clock = clock or monotonic
        self._client_time = clock is not None or redis_clock == "client"

    def _fallback(self) -> str:
        if self.on_backend_error == "deny":
            error = CircuitOpenError(self.name, self.backend_retry_interval, _OPEN,
                                     "backend_unavailable")
            self._dispatch.rejected(self.name, error)
            raise error
        return self.on_backend_error

    def _admitted(self, reply: Any) -> _Admission:
        decision, epoch, state = int(reply[0]), int(reply[1]), CircuitState(int(reply[2]))
        retry_after, source = float(text(reply[3])), int(reply[4])
        self._last_state = state  # transitions made by other processes are theirs to announce
        if source >= 0:
            reason = "reset_timeout" if source == _OPEN else "half_open_timeout"
            self._dispatch.emit(CircuitStateChange(self.name, CircuitState(source), state,
                                                   reason, self.clock()), self.on_state_change)
        if decision == 0:
            error = CircuitOpenError(self.name, retry_after, state,
                                     "open" if state is _OPEN else "half_open_full")
            self._dispatch.rejected(self.name, error)
            raise error
        return _Admission(epoch, decision == 2)

    def _recorded(self, reply: Any) -> None:
        state, source, reason = CircuitState(int(reply[0])), int(reply[1]), text(reply[2])
        self._last_state = state
        if source >= 0:
            self._dispatch.emit(CircuitStateChange(self.name, CircuitState(source), state,
                                                   reason, self.clock()), self.on_state_change)

    def _record_argv(self, adm: _Admission, outcome: int) -> list[str]:
        letter, slow = _OUTCOME[outcome]
        return [self._now_arg(), str(adm.epoch), "1" if adm.probe else "0", letter,
                *self._record_args, slow, self._slow_rate_arg]

    def _outcome_of(self, started: float, outcome: int = _SUCCESS) -> int:
        """``outcome`` plus the slow bit when the call took at least ``slow_call_duration``."""
        slow = self.policy.slow_call_duration
        if (outcome != _NEUTRAL and slow is not None
                and self._duration_clock() - started >= slow):
            return outcome | _SLOW
        return outcome

    # -- sync ----------------------------------------------------------------------------------

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call ``fn`` through the shared breaker using the synchronous Redis client."""
        if not self._outage.up() and self._fallback() != "local":
            return fn(*args, **kwargs)
        if self._outage.down_until is not None:
            return self._local.call(fn, *args, **kwargs)
        admit, record, _ = _Scripts.of(redis_support.sync_client(self.url))
        try:
            reply = admit(keys=self.keys, args=[self._now_arg(), *self._admit_args])
        except self._backend_errors as exc:
            self._outage.failed(exc)
            if self._fallback() == "local":
                return self._local.call(fn, *args, **kwargs)
            return fn(*args, **kwargs)
        adm = self._admitted(reply)
        started = self._duration_clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._record_sync(record, adm, self._outcome_of(started, self._classify(exc)))
            raise
        if result.__class__ in ASYNC_RESULTS:
            self._record_sync(record, adm, _NEUTRAL)
            raise async_misuse(self.name, fn, result)
        self._record_sync(record, adm, self._outcome_of(started))
        return result

    def _record_sync(self, record: Any, adm: _Admission, outcome: int) -> None:
        if outcome & _FAILURE:
            self._dispatch.failed(self.name)
        if outcome & _SLOW:
            self._dispatch.slow(self.name)
        try:
            self._recorded(record(keys=self.keys, args=self._record_argv(adm, outcome)))
        except self._backend_errors as exc:
            self._outage.failed(exc)

    # -- async ---------------------------------------------------------------------------------

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await ``fn`` through the shared breaker using the asyncio Redis client."""
        if not self._outage.up() and self._fallback() != "local":
            return await fn(*args, **kwargs)
        if self._outage.down_until is not None:
            return await self._local.acall(fn, *args, **kwargs)
        admit, record, _ = _Scripts.of(redis_support.async_client(self.url))
        try:
            reply = await admit(keys=self.keys, args=[self._now_arg(), *self._admit_args])
        except self._backend_errors as exc:
            self._outage.failed(exc)
            if self._fallback() == "local":
                return await self._local.acall(fn, *args, **kwargs)
            return await fn(*args, **kwargs)
        adm = self._admitted(reply)
        started = self._duration_clock()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            await self._record_async(record, adm, self._outcome_of(started,
                                                                   self._classify(exc)))
            raise
        await self._record_async(record, adm, self._outcome_of(started))
        return result

    async def _record_async(self, record: Any, adm: _Admission, outcome: int) -> None:
        if outcome & _FAILURE:
            self._dispatch.failed(self.name)
        if outcome & _SLOW:
            self._dispatch.slow(self.name)
        try:
            reply = await record(keys=self.keys, args=self._record_argv(adm, outcome))
            self._recorded(reply)
        except self._backend_errors as exc:
            self._outage.failed(exc)

    # -- status and manual control ---------------------------------------------------------------

    def _status_from(self, fields: list[Any], window: Any, now: float) -> BreakerStatus:
        st, cf, wf, since, lf, cs, ws, ls = fields
        state = CircuitState(int(st or 0))
        self._last_state = state
        policy = self.policy
        if policy.mode == "consecutive":
            failures, slow = int(cf or 0), int(cs or 0)
            calls = max(failures, slow)
            rate = 100.0 if failures else 0.0
            slow_rate = 100.0 if slow else 0.0
        else:
            if policy.window_type == "count":
                calls, failures, slow = int(window or 0), int(wf or 0), int(ws or 0)
            else:
                calls, failures, slow = _time_window_totals(window or {}, policy.window_size,
                                                            now)
            rate = 100.0 * failures / calls if calls else 0.0
            slow_rate = 100.0 * slow / calls if calls else 0.0
        retry = 0.0
        if state is _OPEN and since is not None:
            retry = max(0.0, float(text(since)) + policy.reset_timeout - now)
        return BreakerStatus(self.name, state, failures, rate, calls, self._stamp(lf), retry,
                             slow, slow_rate, self._stamp(ls))

    def _stamp(self, raw: Any) -> datetime | None:
        """A time stored by the scripts (server or client clock) as a wall-clock datetime."""
        if raw is None:
            return None
        at = float(text(raw))
        if not self._client_time or self.clock is time.time:
            return datetime.fromtimestamp(at, UTC)
        return self._wall(at)

    def _queue_status(self, pipe: Any) -> None:
        pipe.hmget(self.keys[0], "st", "cf", "wf", "since", "lf", "cs", "ws", "ls")
        if self.policy.window_type == "count":
            pipe.llen(self.keys[1])
        else:
            pipe.hgetall(self.keys[1])
        pipe.time()

    def _server_now(self, server: Any) -> float:
        if self._client_time:
            return self.clock()
        return float(server[0]) + float(server[1]) / 1e6

    async def astatus(self) -> BreakerStatus:
        """Read the shared state (never modifies it)."""
        client = redis_support.async_client(self.url)
        async with client.pipeline(transaction=False) as pipe:
            self._queue_status(pipe)
            fields, window, server = await pipe.execute()
        return self._status_from(fields, window, self._server_now(server))

    def status(self) -> BreakerStatus:
        """Read the shared state with the synchronous client (never modifies it)."""
        client = redis_support.sync_client(self.url)
        with client.pipeline(transaction=False) as pipe:
            self._queue_status(pipe)
            fields, window, server = pipe.execute()
        return self._status_from(fields, window, self._server_now(server))

    def _force_sync(self, to: CircuitState) -> None:
        force = _Scripts.of(redis_support.sync_client(self.url))[2]
        reply = force(keys=self.keys, args=[self._now_arg(), str(int(to))])
        self._last_state = to
        self._dispatch.emit(CircuitStateChange(self.name, CircuitState(int(reply[1])), to,
                                               "manual", self.clock()), self.on_state_change)

    async def aforce(self, to: CircuitState) -> None:
        """Set the shared state (``OPEN``, ``CLOSED`` or ``HALF_OPEN``) for every process."""
        force = _Scripts.of(redis_support.async_client(self.url))[2]
        reply = await force(keys=self.keys, args=[self._now_arg(), str(int(to))])
        self._last_state = to
        self._dispatch.emit(CircuitStateChange(self.name, CircuitState(int(reply[1])), to,
                                               "manual", self.clock()), self.on_state_change)

    def open(self) -> None:
        """Force the shared circuit open (synchronous client)."""
        self._force_sync(_OPEN)

    def close(self) -> None:
        """Force the shared circuit closed (synchronous client)."""
        self._force_sync(_CLOSED)

    def half_open(self) -> None:
        """Force the shared circuit half-open (synchronous client)."""
        self._force_sync(_HALF_OPEN)

    reset = close


AnyBreaker = CircuitBreaker | RedisCircuitBreaker
