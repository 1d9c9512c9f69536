"""The ``health_check`` capability: registered checks, a health report, a cheap ``is_healthy()``.

A node registers checks (sync or async callables) and gets:

* ``await self.health_check()``: runs every check concurrently (async ones on the loop, sync
  ones in a thread through ``asyncio.to_thread``), each under its own timeout, and returns a
  report dict::

      {"status": "degraded", "score": 0.6, "healthy": True, "node_id": "...",
       "timestamp": "2025-01-01T12:00:00.000000+00:00", "duration": 0.004,
       "reason": "cache_l2: redis L2 down",
       "checks": {"cache_l2": {"status": "degraded", "reason": "redis L2 down",
                               "duration": 0.0002, "critical": True}, ...}}

  ``unhealthy`` beats ``degraded`` beats ``healthy``; the score is fixed per status (1.0 / 0.6 /
  0.2); no checks at all is healthy with score 1.0. A check that raises, returns something
  that is not a status, or outlives its timeout makes the report unhealthy with the reason
  recorded; nothing it does propagates. A non-critical check (``critical=False``) can only
  degrade the node, never make it unhealthy.
* ``self.is_healthy()``: sync and cheap (a few attribute reads); never runs or waits for a
  check. It answers from the *last known* status: the last report. It is refreshed

  - by every ``await self.health_check()``;
  - while the node is started (``await node.start()`` runs a first report, then a background
    task refreshes it every ``interval`` seconds until ``aclose()``; a check registered on a
    started node runs at once, whatever ``interval`` is);
  - by ``is_healthy()`` itself: when the last report is older than ``interval`` (or there is
    none yet) and an event loop is running in this thread, it schedules one refresh in the
    background (at most one at a time) and answers from what it knows now.

  Before the first report exists the node is assumed healthy (a freshly built node serves
  while its first report runs), so ``is_healthy()`` is ``False`` only once a report has found
  a critical check failing. ``degraded`` counts as healthy.
* Kubernetes-style probes on the facility, each sync and cheap, never running a check:

  - ``self.health.is_live()`` (liveness: the node still works): ``True`` unless the node is
    started and its background refresh stopped by itself or its last report is overdue
    (the loop is stuck). Failing checks never make a node dead, only unready.
  - ``self.health.is_ready()`` (readiness: send it traffic): started, every registered check
    has run since it was registered (dependency checks such as :func:`redis_check`
    included), and the last report is not ``unhealthy``.
  - ``self.health.is_started()`` (startup: ``start()`` finished its first report, and
    ``aclose()`` has not run since).

  A node that has not been started is live but not ready (and not started); ``is_healthy()``
  stays the optimistic "no critical check is known to fail".

Other capabilities contribute their state by registering a check that reads it (the cache
registers one that says ``{"status": "degraded", "reason": "redis L2 down"}``; a circuit
breaker one that says ``degraded`` while open). That keeps the public surface to the seed's
three methods plus the ``self.health`` facility.

Every report is also recorded in metrics: gauge ``health_status`` (the score),
``health_check_status{check}`` (each check's score) and histogram
``health_check_duration{check}`` (seconds).

``redis_check(url)`` and ``postgres_check(dsn)`` are ready-made checks (clients imported
lazily; credentials are masked in every reason they give).

Example:
    >>> import asyncio
    >>> from onex_compose import NodeCompute, compose
    >>> node = compose(NodeCompute, ["health_check"])()
    >>> node.register_health_check(lambda: True, name="always")
    'always'
    >>> node.register_health_check(lambda: {"status": "degraded", "reason": "slow disk"},
    ...                            name="disk")
    'disk'
    >>> report = asyncio.run(node.health_check())
    >>> report["status"], report["score"], report["checks"]["disk"]["reason"]
    ('degraded', 0.6, 'slow disk')
    >>> node.is_healthy()
    True
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import itertools
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from onex_compose import _redact, coerce_config, facility
from onex_compose.capabilities._context import monotonic
from onex_compose.capabilities._log import logger
from onex_compose.exceptions import OnexError

__all__ = [
    "SCORES",
    "HealthCheckConfig",
    "HealthCheckError",
    "HealthCheckProtocol",
    "HealthMonitor",
    "HealthStatus",
    "MixinHealthCheck",
    "postgres_check",
    "redis_check",
]


class HealthStatus(StrEnum):
    """A health status; compares equal to its string value (``"healthy"``)."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


SCORES: dict[HealthStatus, float] = {
    HealthStatus.HEALTHY: 1.0, HealthStatus.DEGRADED: 0.6, HealthStatus.UNHEALTHY: 0.2}
"""The fixed score of each status."""

_RANK = {HealthStatus.HEALTHY: 0, HealthStatus.DEGRADED: 1, HealthStatus.UNHEALTHY: 2}
_STATUSES = {s.value: s for s in HealthStatus}

CheckFunc = Callable[[], Any]


class HealthCheckError(OnexError, ValueError):
    """A health check was registered wrongly (not callable, bad timeout or name)."""


class HealthCheckConfig(BaseModel):
    """Configuration of the ``health_check`` capability (the ``health_check`` subcontract).

    Attributes:
        interval: seconds between refreshes of the report while the node is started, and the
            age after which ``is_healthy()`` schedules a refresh; ``None``: refresh only when
            ``health_check()`` is awaited.
        check_timeout: default timeout of one check, in seconds (``register_health_check``
            can give a check its own).

    Example:
        >>> HealthCheckConfig(interval=10).check_timeout
        5.0
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval: float | None = Field(default=30.0, gt=0)
    check_timeout: float = Field(default=5.0, gt=0)


@runtime_checkable
class HealthCheckProtocol(Protocol):
    """Seed 000's ``HealthCheckProtocol`` (what a node with health checks offers)."""

    def is_healthy(self) -> bool: ...

    async def health_check(self) -> dict[str, Any]: ...

    def register_health_check(self, check_func: CheckFunc, name: str | None = None,
                              timeout: float | None = None, critical: bool = True) -> str: ...


class _Check:
    __slots__ = ("critical", "func", "is_async", "name", "running_since", "timeout")

    def __init__(self, func: CheckFunc, name: str, timeout: float | None, critical: bool) -> None:
        self.func = func
        self.name = name
        self.timeout = timeout
        self.critical = critical
        self.is_async = _is_async(func)
        self.running_since: float | None = None  # a sync check still running in its thread


def _is_async(func: Any) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(type(func), "__call__", None)  # noqa: B004 - instances with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


_lambda_ids = itertools.count(1)


def _default_name(func: Any) -> str:
    inner = func
    while isinstance(inner, functools.partial):
        inner = inner.func
    name = getattr(inner, "__name__", None) or type(inner).__name__
    if name == "<lambda>":
        name = f"check_{next(_lambda_ids)}"
    return str(name)


class HealthMonitor:
    """A node's health state: registered checks, the last report, background refreshes.

    Args:
        config: the validated :class:`HealthCheckConfig` (defaults when ``None``).
        metrics: the node's metrics facility (reports are recorded there), or ``None``.
        node_id: shown in reports.
        clock: monotonic seconds for durations and report age (tests pass a ``ManualClock``).
        sleep: how the background loop waits (``asyncio.sleep``).

    Asyncio objects (tasks) are created lazily on the running loop, so a monitor built
    outside any loop works across repeated ``asyncio.run()`` calls.

    Example:
        >>> import asyncio
        >>> monitor = HealthMonitor()
        >>> monitor.register(lambda: False, name="db")
        'db'
        >>> report = asyncio.run(monitor.check())
        >>> report["status"], report["checks"]["db"]["reason"]
        ('unhealthy', 'db is unavailable (the check returned False)')
        >>> monitor.is_healthy()
        False
    """

    def __init__(self, config: HealthCheckConfig | None = None, *, metrics: Any = None,
                 node_id: str | None = None, clock: Callable[[], float] = monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.config = config or HealthCheckConfig()
        self.metrics = metrics
        self.node_id = node_id
        self.clock = clock
        self.sleep = sleep
        self._checks: dict[str, _Check] = {}
        self._report: dict[str, Any] | None = None
        self._status: HealthStatus | None = None
        self._checked_at: float | None = None
        self._running: asyncio.Task[dict[str, Any]] | None = None  # the run in flight
        self._loop_task: asyncio.Task[None] | None = None  # background refresh while started
        self._generation = 0  # bumped by (un)registration: a run started before is not current
        self._started = False  # start() finished its first report; close() not called since
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop start() ran on

    # -- registration -------------------------------------------------------------------------

    def register(self, func: CheckFunc, name: str | None = None, timeout: float | None = None,
                 critical: bool = True) -> str:
        """Register a check; returns its name. A name registered again is replaced.

        Args:
            func: a sync or async callable taking no argument and returning ``True``/``False``,
                a status (``"healthy"``, ``"degraded"``, ``"unhealthy"``), or a mapping with a
                ``"status"`` key (and optionally ``"reason"`` plus any details).
            name: the check's name in reports (default: the function's name).
            timeout: seconds before the check counts as hung (default: ``check_timeout``).
            critical: ``False`` makes a failing check degrade the node instead of making it
                unhealthy.

        Raises:
            HealthCheckError: ``func`` is not callable, or the name or timeout is invalid.
        """
        if not callable(func):
            raise HealthCheckError(
                f"register_health_check() needs a callable taking no argument (sync or async); "
                f"got {type(func).__name__} {func!r}.")
        if name is None:
            name = _default_name(func)
        elif not isinstance(name, str) or not name.strip():
            raise HealthCheckError(
                f"register_health_check(name={name!r}): the name must be a non-empty string.")
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, int | float) or timeout <= 0):
            raise HealthCheckError(
                f"register_health_check({name!r}, timeout={timeout!r}): the timeout must be a "
                "positive number of seconds (or None for the configured check_timeout).")
        self._checks[name] = _Check(func, name, None if timeout is None else float(timeout),
                                    bool(critical))
        self._changed()
        return name

    def unregister(self, name: str) -> bool:
        """Remove a check; returns whether it existed."""
        found = self._checks.pop(name, None) is not None
        if found:
            self._changed()
        return found

    def _changed(self) -> None:
        """The set of checks changed: the last report is not current; a started monitor runs
        the checks again at once (on the loop it was started on), whatever ``interval`` is."""
        self._generation += 1
        self._checked_at = None
        loop = self._loop
        if not self._started or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._schedule_refresh()
        else:  # registered from another thread (or outside the loop): hand it over
            try:
                loop.call_soon_threadsafe(self._schedule_refresh)
            except RuntimeError:  # the loop closed meanwhile
                pass

    @property
    def names(self) -> list[str]:
        """Names of the registered checks, in registration order."""
        return list(self._checks)

    # -- status -------------------------------------------------------------------------------

    def is_healthy(self) -> bool:
        """Whether the last known status is not ``unhealthy`` (never runs a check).

        Schedules a background refresh when the last report is older than ``interval`` and an
        event loop is running in this thread.
        """
        if self._checks:
            interval = self.config.interval
            if interval is not None and (self._checked_at is None
                                         or self.clock() - self._checked_at >= interval):
                self._schedule_refresh()
        return self._status is not HealthStatus.UNHEALTHY

    # -- probes (Kubernetes liveness, readiness, startup) --------------------------------------

    def is_started(self) -> bool:
        """Startup probe: ``start()`` has finished (its first report ran) and ``close()`` has
        not been called since. Never runs a check."""
        return self._started

    def is_ready(self) -> bool:
        """Readiness probe: started, every registered check has run since it was registered
        (dependency checks such as :func:`redis_check` included), and the last report is not
        ``unhealthy`` (``degraded`` is ready). A node that has not started is not ready.
        Never runs a check."""
        return (self._started and self._status is not HealthStatus.UNHEALTHY
                and (not self._checks or self._checked_at is not None))

    def is_live(self) -> bool:
        """Liveness probe: the node still works. ``True`` before ``start()`` and after
        ``close()``; while started, ``False`` once its background refresh has stopped by
        itself (crashed, or its event loop went away without ``close()``), or the last report
        is overdue (older than twice ``interval`` plus the longest check timeout: the loop is
        stuck). Failing checks make a node unready, not dead. Never runs a check."""
        if not self._started:
            return True
        task = self._loop_task
        if task is not None and task.done():
            return False
        interval = self.config.interval
        if interval is None or not self._checks or self._checked_at is None:
            return True
        longest = max((c.timeout or self.config.check_timeout for c in self._checks.values()),
                      default=self.config.check_timeout)
        return self.clock() - self._checked_at <= 2 * interval + longest

    @property
    def status(self) -> HealthStatus | None:
        """The last known status (``None`` before the first report)."""
        return self._status

    @property
    def last_report(self) -> dict[str, Any] | None:
        """A copy of the last report (``None`` before the first one)."""
        return copy.deepcopy(self._report)

    def _schedule_refresh(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop in this thread: the status is refreshed by health_check()/start()
        running = self._running
        if running is not None and not running.done() and running.get_loop() is loop:
            return
        self._running = loop.create_task(self._run(), name=f"onex-health-refresh-{self.node_id}")

    # -- running the checks -------------------------------------------------------------------

    async def check(self) -> dict[str, Any]:
        """Run every check now (concurrent calls share one run) and return a copy of the report."""
        loop = asyncio.get_running_loop()
        running = self._running
        if running is None or running.done() or running.get_loop() is not loop:
            running = self._running = loop.create_task(
                self._run(), name=f"onex-health-check-{self.node_id}")
        report = await asyncio.shield(running)
        return copy.deepcopy(report)

    async def _run(self) -> dict[str, Any]:
        generation = self._generation
        checks = list(self._checks.values())
        start = self.clock()
        results = await asyncio.gather(*(self._run_one(c) for c in checks))
        status = HealthStatus.HEALTHY
        reasons = []
        for check, (check_status, result) in zip(checks, results, strict=True):
            if _RANK[check_status] > _RANK[status]:
                status = check_status
            if check_status is not HealthStatus.HEALTHY:
                reasons.append(f"{check.name}: {result['reason']}")
        report = {
            "status": status.value,
            "score": SCORES[status],
            "healthy": status is not HealthStatus.UNHEALTHY,
            "node_id": self.node_id,
            "timestamp": datetime.now(UTC).isoformat(),
            "duration": self.clock() - start,
            "reason": "; ".join(reasons) if reasons else "all checks passed",
            "checks": {c.name: r for c, (_, r) in zip(checks, results, strict=True)},
        }
        self._report = report
        self._status = status
        # a check (un)registered during the run is not covered by it: still stale
        self._checked_at = self.clock() if generation == self._generation else None
        self._record(report)
        return report

    async def _run_one(self, check: _Check) -> tuple[HealthStatus, dict[str, Any]]:
        timeout = check.timeout or self.config.check_timeout
        start = self.clock()
        details: dict[str, Any] = {}
        try:
            if check.is_async:
                async with asyncio.timeout(timeout):
                    raw = await check.func()
            elif check.running_since is not None:
                raise _StillRunning(self.clock() - check.running_since)
            else:
                async with asyncio.timeout(timeout):
                    raw = await asyncio.to_thread(self._call_sync, check)
                    if inspect.isawaitable(raw):  # a sync callable that returned a coroutine
                        raw = await raw
            status, reason, details = _interpret(raw, check.name)
        except TimeoutError:
            status = HealthStatus.UNHEALTHY
            reason = f"timed out after {timeout:g} s"
        except _StillRunning as exc:
            status = HealthStatus.UNHEALTHY
            reason = (f"a previous run is still blocked after {exc.seconds:.1f} s (hung; not "
                      "started again until it returns)")
        except Exception as exc:
            status = HealthStatus.UNHEALTHY
            reason = f"raised {type(exc).__name__}: {exc}" if str(exc) else (
                f"raised {type(exc).__name__}")
            logger.opt(exception=exc).debug("health check {!r} raised", check.name)
        if status is HealthStatus.UNHEALTHY and not check.critical:
            status = HealthStatus.DEGRADED
            reason = f"{reason} (non-critical check)"
        result: dict[str, Any] = {"status": status.value, "reason": reason,
                                  "duration": self.clock() - start, "critical": check.critical}
        if details:
            result["details"] = details
        return status, result

    def _call_sync(self, check: _Check) -> Any:
        check.running_since = self.clock()
        try:
            return check.func()
        finally:
            check.running_since = None

    def _record(self, report: Mapping[str, Any]) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        try:
            metrics.gauge("health_status", report["score"])
            for name, result in report["checks"].items():
                labels = {"check": name}
                metrics.gauge("health_check_status", SCORES[HealthStatus(result["status"])],
                              labels)
                metrics.histogram("health_check_duration", result["duration"], labels)
        except Exception as exc:  # a metrics problem must not break health reporting
            logger.opt(exception=exc).warning("recording health metrics failed: {}", exc)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Run a first report, then refresh it every ``interval`` seconds in the background.

        From then on :meth:`is_started` is ``True`` and :meth:`is_healthy` / :meth:`is_ready`
        reflect the checks; a check registered later runs at once.
        """
        if self._checks:
            await self.check()
        self._resume()

    def _resume(self) -> None:
        """Mark the monitor started on the running loop and make sure the refresh runs there."""
        loop = asyncio.get_running_loop()
        task = self._loop_task
        if self.config.interval is not None and (task is None or task.done()
                                                 or task.get_loop() is not loop):
            self._loop_task = loop.create_task(
                self._refresh_forever(), name=f"onex-health-loop-{self.node_id}")
        self._loop = loop
        self._started = True
        if self._checks and self._checked_at is None:  # not covered by the last report
            self._schedule_refresh()

    async def _refresh_forever(self) -> None:
        interval = self.config.interval
        assert interval is not None
        while True:
            await self.sleep(interval)
            if not self._checks:
                continue
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep refreshing: one bad run must not stop monitoring
                logger.opt(exception=exc).warning("health refresh failed: {!r}", exc)

    async def close(self) -> None:
        """Stop the background refresh and any run in flight (idempotent)."""
        tasks = [t for t in (self._loop_task, self._running) if t is not None and not t.done()]
        self._loop_task = None
        self._running = None
        self._started = False
        self._loop = None
        current = asyncio.get_running_loop()
        for task in tasks:
            _cancel(task)
        for task in tasks:
            if task.get_loop() is not current:
                continue  # a task of another loop: cancelled there, nothing to await here
            try:
                await task
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    raise  # we are being cancelled ourselves
            except Exception as exc:
                logger.opt(exception=exc).debug("health task ended with {}", exc)

    def _cancel_tasks(self) -> None:
        for task in (self._loop_task, self._running):
            if task is not None and not task.done():
                _cancel(task)
        self._loop_task = None
        self._running = None
        self._started = False
        self._loop = None

    def adopt(self, other: HealthMonitor) -> None:
        """Take over the checks of another monitor (reconfiguration keeps registrations); a
        started monitor's successor keeps its last report and is started on the same loop."""
        self._checks.update(other._checks)
        loop = other._loop
        if other._started and loop is not None and not loop.is_closed():
            self._report, self._status = other._report, other._status
            if self.clock is other.clock:  # same checks, same clock: the report still counts
                self._checked_at = other._checked_at
            self._started, self._loop = True, loop
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                self._resume()
            else:
                try:
                    loop.call_soon_threadsafe(self._resume)
                except RuntimeError:  # the loop closed meanwhile
                    self._started, self._loop = False, None

    def __repr__(self) -> str:
        status = self._status.value if self._status else "unknown"
        return f"<HealthMonitor {status} ({len(self._checks)} checks: {', '.join(self._checks)})>"


def _cancel(task: asyncio.Task[Any]) -> None:
    loop = task.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is running:
        task.cancel()
    elif not loop.is_closed():
        loop.call_soon_threadsafe(task.cancel)


class _StillRunning(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def _interpret(raw: Any, name: str) -> tuple[HealthStatus, str, dict[str, Any]]:
    """Turn what a check returned into (status, reason, details)."""
    if isinstance(raw, bool):
        if raw:
            return HealthStatus.HEALTHY, "ok", {}
        return HealthStatus.UNHEALTHY, f"{name} is unavailable (the check returned False)", {}
    if isinstance(raw, str):
        status = _STATUSES.get(raw.lower())
        if status is None:
            return HealthStatus.UNHEALTHY, _bad_status(raw), {}
        return status, "ok" if status is HealthStatus.HEALTHY else f"reported {status.value}", {}
    if isinstance(raw, Mapping):
        if "status" not in raw:
            return HealthStatus.UNHEALTHY, (
                f"returned a mapping without a 'status' key ({sorted(map(str, raw))}); return "
                "{'status': 'healthy'|'degraded'|'unhealthy', 'reason': ...}"), {}
        value = raw["status"]
        if isinstance(value, bool):
            status = HealthStatus.HEALTHY if value else HealthStatus.UNHEALTHY
        elif isinstance(value, str) and value.lower() in _STATUSES:
            status = _STATUSES[value.lower()]
        else:
            return HealthStatus.UNHEALTHY, _bad_status(value), {}
        reason = raw.get("reason") or raw.get("message")
        if not reason:
            reason = "ok" if status is HealthStatus.HEALTHY else f"reported {status.value}"
        details = {k: v for k, v in raw.items() if k not in ("status", "reason", "message")}
        return status, str(reason), details
    return HealthStatus.UNHEALTHY, (
        f"returned {type(raw).__name__} {raw!r:.60}; a health check returns True/False, a status "
        "('healthy', 'degraded', 'unhealthy') or a mapping with a 'status' key"), {}


def _bad_status(value: Any) -> str:
    return (f"returned an unknown status {value!r}; expected 'healthy', 'degraded' or "
            "'unhealthy'")


# -- ready-made checks ----------------------------------------------------------------------


def _mask(text: Any) -> str:
    """``text`` (a URL, or an error about one) with its secrets masked by the project's one
    scrubber (``onex_compose._redact``: URL passwords, ``?password=``/``token=`` parameters...)."""
    return _redact.scrub_text(str(text))


def _require(module: str, what: str, extra: str) -> None:
    """A ready-made check whose client is not installed is a setup error naming the fix (it
    would otherwise report the *service* unhealthy with a ModuleNotFoundError as reason)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        from onex_compose.exceptions import ConfigurationError

        raise ConfigurationError(
            f"health_check: {what} needs {module}, which is not installed. Install it with: "
            f"pip install 'onex-compose[{extra}]'", capability="health_check")


def redis_check(url: str | None = None, *, name: str = "redis") -> Callable[[], Awaitable[Any]]:
    """A check that PINGs a Redis server (``redis`` is imported when the check first runs).

    Args:
        url: the server (default: ``ONEX_REDIS_URL``, else ``redis://127.0.0.1:6379/0``).
        name: the check's name (its ``__name__``, used by ``register_health_check``).

    Returns:
        An async check returning ``{"status": "healthy", "latency_ms": ...}`` or, when the
        server cannot be reached, ``unhealthy`` with the reason (password masked).

    Raises:
        ConfigurationError: redis-py is not installed (the ``[redis]`` extra).

    Example:
        >>> check = redis_check("redis://:secret@127.0.0.1:1/0")
        >>> check.__name__
        'redis'
    """

    _require("redis", "redis_check()", "redis")

    async def check() -> dict[str, Any]:
        from onex_compose.capabilities._redis import async_client
        from onex_compose.capabilities._redis import redis_url as resolve

        target = resolve(url)
        start = monotonic()
        try:
            await async_client(target).ping()
        except Exception as exc:
            return {"status": "unhealthy",
                    "reason": f"redis at {_mask(target)} unreachable: {type(exc).__name__}: {_mask(exc)}"}
        return {"status": "healthy", "reason": f"PING ok at {_mask(target)}",
                "latency_ms": round((monotonic() - start) * 1000, 3)}

    check.__name__ = check.__qualname__ = name
    return check


def postgres_check(dsn: str, *, name: str = "postgres",
                   connect_timeout: float = 2.0) -> Callable[[], Awaitable[Any]]:
    """A check that connects to PostgreSQL and runs ``SELECT 1`` (``asyncpg``, imported lazily).

    Args:
        dsn: ``postgresql://user:password@host:port/db``.
        name: the check's name.
        connect_timeout: seconds allowed to connect (the check's own timeout also applies).

    Raises:
        ConfigurationError: asyncpg is not installed (the ``[postgres]`` extra).

    Example:
        >>> postgres_check("postgresql://app:secret@127.0.0.1:5432/test").__name__
        'postgres'
    """

    _require("asyncpg", "postgres_check()", "postgres")

    async def check() -> dict[str, Any]:
        import asyncpg

        start = monotonic()
        try:
            conn = await asyncpg.connect(dsn, timeout=connect_timeout)
        except Exception as exc:
            return {"status": "unhealthy",
                    "reason": f"postgres at {_mask(dsn)} unreachable: {type(exc).__name__}: {_mask(exc)}"}
        try:
            value = await conn.fetchval("SELECT 1")
        finally:
            await conn.close()
        if value != 1:
            return {"status": "unhealthy", "reason": f"SELECT 1 returned {value!r}"}
        return {"status": "healthy", "reason": f"SELECT 1 ok at {_mask(dsn)}",
                "latency_ms": round((monotonic() - start) * 1000, 3)}

    check.__name__ = check.__qualname__ = name
    return check


# -- the mixin ------------------------------------------------------------------------------


class MixinHealthCheck:
    """Health monitoring for a node: ``is_healthy()``, ``health_check()``, ``register_health_check()``.

    Capability ``health_check`` (alias ``health_monitoring``); requires ``metrics``. Configured
    by the node contract's ``health_check`` subcontract (:class:`HealthCheckConfig`). The
    state lives in the ``self.health`` facility (a :class:`HealthMonitor`), which also offers
    the probes ``self.health.is_live()``, ``is_ready()`` and ``is_started()``.

    Example:
        >>> import asyncio
        >>> from onex_compose import NodeCompute, ServiceUnavailableError
        >>> class Service(NodeCompute, MixinHealthCheck):
        ...     async def process(self, data):
        ...         if not self.is_healthy():
        ...             raise ServiceUnavailableError("Service unhealthy")
        ...         return data
        >>> node = Service()
        >>> _ = node.register_health_check(lambda: "unhealthy", name="db")
        >>> asyncio.run(node.health_check())["status"]
        'unhealthy'
        >>> asyncio.run(node.process(1))
        Traceback (most recent call last):
        ...
        onex_compose.exceptions.ServiceUnavailableError: Service unhealthy
    """

    __onex_capability__ = "health_check"
    __slots__ = ()

    def setup_health_check(self, config: HealthCheckConfig | Mapping[str, Any] | None = None,
                           ) -> None:
        """Configure ``self.health``; called again, it keeps the registered checks."""
        cfg = coerce_config(HealthCheckConfig, config, "health_check")
        monitor = HealthMonitor(cfg, metrics=self.metrics,  # type: ignore[attr-defined]
                                node_id=getattr(self, "node_id", None))
        old = getattr(self, "health", None)
        if isinstance(old, HealthMonitor):
            monitor.clock, monitor.sleep = old.clock, old.sleep
            monitor.adopt(old)
            old._cancel_tasks()
        setattr(self, "health", monitor)  # noqa: B010 - the mixin itself declares no such slot

    @facility
    def health(self) -> HealthMonitor:
        """The node's health monitor (a default one when ``setup_health_check`` never ran)."""
        return HealthMonitor(metrics=self.metrics,  # type: ignore[attr-defined]
                             node_id=getattr(self, "node_id", None))

    def is_healthy(self) -> bool:
        """The last known status is not unhealthy (sync, never waits for a check)."""
        return self.health.is_healthy()

    async def health_check(self) -> dict[str, Any]:
        """Run every registered check (concurrently, each with its timeout); return the report."""
        return await self.health.check()

    def register_health_check(self, check_func: CheckFunc, name: str | None = None,
                              timeout: float | None = None, critical: bool = True) -> str:
        """Register a sync or async check (see :meth:`HealthMonitor.register`); returns its name."""
        return self.health.register(check_func, name=name, timeout=timeout, critical=critical)

    async def start_health_check(self) -> None:
        """Run a first report and start the periodic refresh."""
        await self.health.start()

    async def close_health_check(self) -> None:
        """Stop the periodic refresh (idempotent)."""
        await self.health.close()
