"""timeout: per-call and total deadlines for async work, carried in a context variable.

What it gives a node (seed 000's ``MixinTimeout``):

* ``await self.with_timeout(fn, *args, timeout=2.0, **kwargs)``: runs ``fn`` and raises
  :class:`OperationTimeoutError` if it has not finished within ``timeout`` seconds (default: the
  configured ``timeout``) or by the enclosing deadline, whichever is earlier. The awaited work is
  cancelled.
* ``self.timeout_policy``: the :class:`TimeoutPolicy` facility (``run``, ``run_sync``).
* ``_guard_timeout``: the per-attempt timeout around the node's ``process()`` (guard rank 80:
  inside retry, the circuit breaker and the rate limiter, outside the bulkhead, as in
  resilience4j, so a timeout is retried and counts as a breaker failure, and also bounds the
  wait for a bulkhead slot).

Deadlines (``reference/capabilities.md`` A.3, A.7, Part C item 4):

* For the duration of a call the absolute deadline is stored in ``_context.deadline`` (nested
  calls keep the earliest), so everything inside sees it: retry never sleeps past it, a nested
  ``with_timeout`` never outlives it, and a sync function running in a thread can poll
  ``_context.remaining()``.
* ``total_timeout`` (config) bounds a whole logical ``process()`` call, retries included. The
  per-attempt guard runs inside retry, so it anchors the total budget on the retry loop's scope
  (``_context.retry_scope``) at the first attempt; every later attempt is cut at that budget and
  the retry loop stops sleeping before it. With no retry loop around it, total and per-attempt
  are the same call and the earlier of the two applies. (A separate outermost guard is not
  needed: the pipeline has one hook per capability, and this is equivalent.)
* A deadline already passed raises at once, without starting the work.

:class:`OperationTimeoutError` subclasses ``OnexError`` and ``TimeoutError`` and has
``onex_retriable = True``: retry retries it, and a circuit breaker counts it as a failure (it
is a ``TimeoutError``). It carries ``operation``, ``timeout``, ``elapsed`` and ``source``
(``"timeout"``: this call's own timeout fired; ``"deadline"``: an enclosing deadline, a retry
budget or ``total_timeout``). Expiry is counted in ``timeouts_total{operation}`` and, with
``tracing`` composed (``timeout`` in its ``instrument`` list), adds the event
``timeout.expired`` (``operation``, ``source``, ``budget_s``: the time the call had,
``elapsed_s``, ``timeout_s``) to the current span.

Plain (sync) callables: Python cannot interrupt a running function, so with the default
``sync_calls: thread`` a plain function runs in one of the policy's own **daemon** worker
threads and the caller stops waiting when the deadline passes; **a timed-out function keeps
running** until it returns (its result is then dropped), and each one is counted in
``abandoned_threads`` and ``timeout_abandoned_threads_total``. The workers are bounded:
at most ``max_threads`` (config, default 32) exist per policy, reused from call to call, and a
timed-out function keeps its worker until it returns. A call that finds every worker busy
is rejected at once, without running, with :class:`TimeoutThreadsFullError` (not retriable,
neutral for a circuit breaker, like a full bulkhead) and counted in
``timeout_sync_rejections_total``: hung functions cannot pile up threads without limit. Own
daemon workers are used instead of ``asyncio.to_thread`` or a ``ThreadPoolExecutor`` because
those threads are joined at shutdown (``asyncio.run()``, interpreter exit), so one hung
function would hang the program's exit, and because an executor queues work without bound
instead of refusing it. ``sync_calls: refuse`` makes a plain callable a ``TypeError``. Sync
code without an event loop uses ``timeout_policy.run_sync(...)`` (same thread rule), and a
plain ``def process`` is guarded the same way (``_guard_sync_timeout``).

Why the timer is hand-written instead of ``async with asyncio.timeout(...)``: ``asyncio.Timeout``
is a general, reschedulable state machine (an object, an enum state, ``reschedule()``) that
schedules one ``loop.call_at`` handle per call: a ``TimerHandle`` built in Python, pushed into
the loop's heap with Python-level comparisons, cancelled, and left in the heap until the loop
cleans it up. That adds ~4-6 µs per call. Here each policy keeps one deadline heap per event
loop (plain tuples, C comparisons) and a single loop timer for the earliest deadline; a call
pushes an entry and marks it finished on exit (finished entries are dropped lazily, amortised
O(1)); when the timer fires it cancels the tasks whose deadline passed. On exit it applies
exactly asyncio's ``cancelling()``/``uncancel()`` protocol: an outside cancellation is never
turned into a timeout, a cancellation that arrives together with the timeout stays a
cancellation, and work that swallows the cancellation still has it withdrawn.
``benchmarks/bench_guards.py`` compares the cost with ``asyncio.timeout``, ``asyncio.wait_for``
and hyx; ``tests/test_timeout.py`` checks the corner cases and, with hypothesis, that many
concurrent calls each end at their own deadline.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import heapq
import inspect
import math
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import CoroutineType, FunctionType, MethodType
from typing import Any, Literal, Protocol, TypeVar, cast, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from onex_compose import OnexError, coerce_config, facility, has_capability
from onex_compose.capabilities import _context
from onex_compose.capabilities._traced import tracer_for

__all__ = [
    "MixinTimeout",
    "OperationTimeoutError",
    "TimeoutConfig",
    "TimeoutPolicy",
    "TimeoutProtocol",
    "TimeoutThreadsFullError",
]

T = TypeVar("T")

_deadline_var = _context.deadline
_scope_var = _context.retry_scope
_UNSET: Any = object()
_CO_COROUTINE = inspect.CO_COROUTINE
_current_task = asyncio.current_task
_get_running_loop = asyncio.get_running_loop
_CancelledError = asyncio.CancelledError


class OperationTimeoutError(OnexError, TimeoutError):
    """An operation did not finish by its deadline (retriable; a breaker failure).

    Attributes:
        operation: the operation's name.
        timeout: the per-call timeout in seconds (``None`` when only a deadline applied).
        elapsed: seconds the caller waited.
        source: ``"timeout"`` (this call's own timeout) or ``"deadline"`` (an enclosing
            deadline, a retry budget or ``total_timeout``).
        abandoned_thread: a plain function was left running in its thread.

    Example:
        >>> err = OperationTimeoutError("fetch", 2.0, elapsed=2.0)
        >>> isinstance(err, TimeoutError), err.onex_retriable
        (True, True)
        >>> print(err)
        Operation 'fetch' timed out after 2 s (its timeout is 2 s). Raise the timeout ...
    """

    onex_retriable = True

    def __init__(self, operation: str, timeout: float | None, *, elapsed: float | None = None,
                 source: str = "timeout", abandoned_thread: bool = False) -> None:
        self.operation = operation
        self.timeout = timeout
        self.elapsed = elapsed
        self.source = source
        self.abandoned_thread = abandoned_thread
        waited = f" after {elapsed:.3g} s" if elapsed is not None else ""
        if source == "timeout":
            why = (f"its timeout is {timeout:.3g} s). Raise the timeout (timeout_config.timeout "
                   "or with_timeout(..., timeout=...)) or make the operation faster.")
        else:
            why = ("the enclosing deadline, retry budget or total_timeout was reached). Give "
                   "the whole call more time or do less inside it.")
        thread = (" The plain function keeps running in its daemon thread; its result will be "
                  "dropped." if abandoned_thread else "")
        super().__init__(f"Operation {operation!r} timed out{waited} ({why}{thread}")

    def __reduce__(self) -> Any:
        return (_rebuild_error, (self.operation, self.timeout, self.elapsed, self.source,
                                 self.abandoned_thread), dict(self.__dict__))


def _rebuild_error(operation: str, timeout: float | None, elapsed: float | None, source: str,
                   abandoned: bool) -> OperationTimeoutError:
    return OperationTimeoutError(operation, timeout, elapsed=elapsed, source=source,
                                 abandoned_thread=abandoned)


class TimeoutThreadsFullError(OnexError, RuntimeError):
    """Every worker thread for plain (sync) calls was busy: the call was refused, never run.

    Not retriable (``onex_retriable = False``: retrying at once would find the same hung
    functions) and neutral for a circuit breaker (``onex_breaker_neutral = True``: the node shed
    the call itself, as with a full bulkhead).

    Attributes:
        name: the timeout policy's name.
        operation: the refused operation.
        max_threads: the configured ``max_threads``.
        abandoned: workers still running a function that already timed out.

    Example:
        >>> err = TimeoutThreadsFullError("node.timeout", "fetch", 4, abandoned=4)
        >>> err.onex_retriable, err.max_threads
        (False, 4)
    """

    onex_retriable = False
    onex_breaker_neutral = True

    def __init__(self, name: str, operation: str, max_threads: int, *, abandoned: int) -> None:
        self.name, self.operation = name, operation
        self.max_threads, self.abandoned = max_threads, abandoned
        super().__init__(
            f"Timeout {name!r}: all {max_threads} worker threads for plain (sync) calls are busy "
            f"({abandoned} of them still running a function that already timed out), so "
            f"{operation!r} was refused without running. A timed-out plain function keeps its "
            "thread until it returns: make it return (or poll _context.remaining()), raise "
            "timeout_config.max_threads, or pass an async function.")

    def __reduce__(self) -> Any:
        return (_rebuild_full, (self.name, self.operation, self.max_threads, self.abandoned),
                dict(self.__dict__))


def _rebuild_full(name: str, operation: str, max_threads: int,
                  abandoned: int) -> TimeoutThreadsFullError:
    return TimeoutThreadsFullError(name, operation, max_threads, abandoned=abandoned)


class TimeoutConfig(BaseModel):
    """The timeout subcontract (every key of ``timeout_config`` in ``mixin_timeout.yaml``).

    Example:
        >>> TimeoutConfig(timeout=2.5).timeout
        2.5
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: float | None = Field(
        default=30.0, gt=0.0, le=86400.0,
        description="seconds per call (with_timeout) and per process() attempt; null: none")
    total_timeout: float | None = Field(
        default=None, gt=0.0, le=86400.0,
        description="seconds for a whole process() call, retries included; null: none")
    sync_calls: Literal["thread", "refuse"] = Field(
        default="thread", description="plain callables: run in a daemon thread abandoned on "
                                      "timeout, or refuse them with TypeError")
    max_threads: int = Field(
        default=32, ge=1, le=4096,
        description="worker threads for plain callables; a timed-out one keeps its thread "
                    "until it returns; a call finding all busy gets TimeoutThreadsFullError")
    guard_process: bool = Field(default=True,
                                description="apply the per-attempt timeout to process()")


@runtime_checkable
class TimeoutProtocol(Protocol):
    """What the timeout capability adds to a node."""

    def with_timeout(self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None,
                     **kwargs: Any) -> Awaitable[Any]: ...


class _Watch:
    """One event loop's deadlines: a heap of ``(when, seq, entry)`` and one timer for the earliest.

    ``entry`` is ``[task, fired]``; a finished call sets its task to ``None`` (lazy removal).
    Only the loop's own thread touches a watch, so it needs no lock.
    """

    __slots__ = ("handle", "heap", "live", "loop", "seq", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[tuple[float, int, list[Any]]] = []
        self.handle: asyncio.TimerHandle | None = None
        self.when = math.inf
        self.live = 0
        self.seq = 0

    def add(self, when: float, task: asyncio.Task[Any]) -> list[Any]:
        heap = self.heap
        n = len(heap)
        if n > 64 and n > 2 * self.live:  # mostly finished calls: drop them (amortised O(1))
            heap[:] = [item for item in heap if item[2][0] is not None]
            heapq.heapify(heap)
        entry = [task, False]
        self.seq = seq = self.seq + 1
        heapq.heappush(heap, (when, seq, entry))
        self.live += 1
        if when < self.when:
            self._schedule(when)
        return entry

    def _schedule(self, when: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.handle = self.loop.call_at(when, self._fire)
        self.when = when

    def _fire(self) -> None:
        self.handle = None
        self.when = math.inf
        heap = self.heap
        now = self.loop.time() + 1e-6  # the loop runs a timer up to its clock resolution early
        while heap:
            when, _seq, entry = heap[0]
            task = entry[0]
            if task is not None and when > now:
                self._schedule(when)
                return
            heapq.heappop(heap)
            if task is not None:
                entry[0] = None
                entry[1] = True
                task.cancel()


_IDLE_SECONDS = 30.0  # an idle worker thread exits after this long
_pools: weakref.WeakSet[_SyncThreads] = weakref.WeakSet()


class _Job:
    __slots__ = ("abandoned", "done", "fn")

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn
        self.done = False
        self.abandoned = False


class _Idle:
    """An idle worker: it blocks on ``lock`` until a caller hands it a job and releases it."""

    __slots__ = ("job", "lock")

    def __init__(self) -> None:
        self.job: _Job | None = None
        self.lock = threading.Lock()
        self.lock.acquire()


class _SyncThreads:
    """At most ``max_threads`` daemon worker threads, reused, refusing work when all are busy.

    A job runs to completion in its worker even after its caller gave up (``abandon``); idle
    workers exit after ``_IDLE_SECONDS``. The lock is held only for a few bytecodes.
    """

    __slots__ = ("__weakref__", "_idle", "_lock", "abandoned", "busy", "max_threads", "name",
                 "seq", "threads")

    def __init__(self, max_threads: int, name: str) -> None:
        self.max_threads = max_threads
        self.name = name
        self.seq = 0
        self._reset()
        _pools.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Idle] = []
        self.threads = self.busy = self.abandoned = 0

    def submit(self, fn: Callable[[], None], operation: str) -> _Job:
        job = _Job(fn)
        with self._lock:
            if self._idle:
                idle = self._idle.pop()
                idle.job = job
                self.busy += 1
                idle.lock.release()
                return job
            if self.threads >= self.max_threads:
                raise TimeoutThreadsFullError(self.name, operation, self.max_threads,
                                              abandoned=self.abandoned)
            self.threads += 1
            self.busy += 1
            self.seq = seq = self.seq + 1
        thread = threading.Thread(target=self._work, args=(job,), daemon=True,
                                  name=f"onex-timeout:{self.name}-{seq}")
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self.threads -= 1
                self.busy -= 1
            raise
        return job

    def abandon(self, job: _Job) -> bool:
        """The caller stops waiting for ``job``: ``True`` if it is still running."""
        with self._lock:
            if job.done:
                return False
            if not job.abandoned:
                job.abandoned = True
                self.abandoned += 1
            return True

    def _work(self, job: _Job) -> None:
        idle = _Idle()
        lock = self._lock
        while True:
            try:
                job.fn()  # hands its outcome to its caller; raising is a bug in the job
            except BaseException:
                with lock:  # this worker dies: give its place back
                    job.done = True
                    if job.abandoned:
                        self.abandoned -= 1
                    self.busy -= 1
                    self.threads -= 1
                raise
            with lock:
                job.done = True
                if job.abandoned:
                    self.abandoned -= 1
                self.busy -= 1
                idle.job = None
                self._idle.append(idle)
            if not idle.lock.acquire(timeout=_IDLE_SECONDS):
                with lock:
                    if idle.job is None:
                        self._idle.remove(idle)
                        self.threads -= 1
                        return
                idle.lock.acquire()  # a job was handed over just as the wait ran out
            assert idle.job is not None
            job = idle.job

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"max_threads": self.max_threads, "threads": self.threads,
                    "busy": self.busy, "abandoned": self.abandoned}


def _after_fork_in_child() -> None:
    for pool in list(_pools):  # the workers did not survive the fork
        pool._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if not fut.done():
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def is_async_callable(fn: Any) -> bool:
    """Whether calling ``fn`` returns a coroutine (``async def``, bound or wrapped in a partial).

    Example:
        >>> async def a(): ...
        >>> is_async_callable(a), is_async_callable(len), is_async_callable(functools.partial(a))
        (True, False, True)
    """
    f = fn
    if type(f) is MethodType:
        f = f.__func__
    if type(f) is FunctionType:
        return bool(f.__code__.co_flags & _CO_COROUTINE) or asyncio.iscoroutinefunction(f)
    if asyncio.iscoroutinefunction(fn) or inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - the type's __call__, not fn's
    return call is not None and inspect.iscoroutinefunction(call)


def _check_timeout(value: Any) -> float | None:
    """A per-call ``timeout`` argument: ``None`` or a number of seconds, as ``asyncio.timeout``
    takes it (``<= 0``: already expired, the work is not started; ``inf``: no limit). NaN, bools
    and non-numbers are errors instead of a timeout that silently never fires."""
    if value is None:
        return None
    if value.__class__ is float and value == value:
        return value  # type: ignore[no-any-return]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return float(value)
    raise (ValueError if isinstance(value, float) else TypeError)(
        f"timeout must be a number of seconds, got {value!r}; pass e.g. timeout=2.5")


def _name(fn: Any) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return str(name) if name else type(fn).__name__


class TimeoutPolicy:
    """Deadlines for calls: the timer, the context deadline, metrics, the sync-callable rule.

    Args:
        config: a :class:`TimeoutConfig`, a mapping of its fields, or ``None``.
        metrics: the node's metrics facility, or ``None``.
        clock: the clock deadlines are expressed on (default ``time.monotonic``; the event
            loop's own clock drives the timer, offset by the difference).
        name: shown in errors and logs.

    Example:
        >>> import asyncio
        >>> policy = TimeoutPolicy({"timeout": 0.01})
        >>> async def hang():
        ...     await asyncio.Event().wait()
        >>> try:
        ...     asyncio.run(policy.run(hang))
        ... except OperationTimeoutError as err:
        ...     print(err.operation, err.source)
        hang timeout
    """

    __slots__ = ("_threads", "_timeout", "_total", "_watch", "abandoned_threads", "clock",
                 "config", "guard", "metrics", "name", "timeouts", "tracer")

    def __init__(self, config: TimeoutConfig | Mapping[str, Any] | None = None, *,
                 metrics: Any = None, clock: Callable[[], float] = _context.monotonic,
                 name: str = "timeout") -> None:
        cfg: TimeoutConfig = coerce_config(TimeoutConfig, config, "timeout")
        self.config = cfg
        self.metrics = metrics
        self.clock = clock
        self.name = name
        self.guard = cfg.guard_process
        self._timeout = cfg.timeout
        self._total = cfg.total_timeout
        self.timeouts = 0
        self.abandoned_threads = 0
        self._watch: _Watch | None = None
        self._threads: _SyncThreads | None = None
        self.tracer: Any = None  # the node's tracer: an expiry becomes a span event

    def __repr__(self) -> str:
        return (f"<TimeoutPolicy {self.name!r} timeout={self._timeout} "
                f"total_timeout={self._total} sync_calls={self.config.sync_calls}>")

    # -- worker threads for plain callables --------------------------------------------------

    def _pool(self) -> _SyncThreads:
        pool = self._threads
        if pool is None:
            pool = self._threads = _SyncThreads(self.config.max_threads, self.name)
        return pool

    def sync_threads(self) -> dict[str, int]:
        """The worker threads for plain callables: ``max_threads``, ``threads`` (alive),
        ``busy`` (running a function) and ``abandoned`` (running one that timed out).

        Example:
            >>> TimeoutPolicy({"max_threads": 4}).sync_threads()
            {'max_threads': 4, 'threads': 0, 'busy': 0, 'abandoned': 0}
        """
        pool = self._threads
        if pool is None:
            return {"max_threads": self.config.max_threads, "threads": 0, "busy": 0,
                    "abandoned": 0}
        return pool.snapshot()

    def _submit(self, work: Callable[[], None], operation: str) -> _Job:
        try:
            return self._pool().submit(work, operation)
        except TimeoutThreadsFullError:
            if self.metrics is not None:
                self.metrics.increment("timeout_sync_rejections_total",
                                       labels={"operation": operation})
            raise

    def _abandon(self, job: _Job, operation: str) -> bool:
        pool = self._threads
        if pool is None or not pool.abandon(job):
            return False
        self.abandoned_threads += 1
        if self.metrics is not None:
            self.metrics.increment("timeout_abandoned_threads_total",
                                   labels={"operation": operation})
        return True

    # -- deadlines ---------------------------------------------------------------------------

    def _deadline(self, now: float, timeout: float | None,
                  total: float | None) -> tuple[float | None, str]:
        end = None if timeout is None else now + timeout
        source = "timeout"
        scope = _scope_var.get()
        if total is not None:
            t_end = now + total
            if scope is None:
                if end is None or t_end < end:
                    end, source = t_end, "deadline"
            elif scope.attempt == 1 and (scope.deadline is None or t_end < scope.deadline):
                scope.deadline = t_end  # anchor the total budget on the retry loop
        if scope is not None:
            s_end = scope.deadline
            if s_end is not None and (end is None or s_end < end):
                end, source = s_end, "deadline"
        enclosing = _deadline_var.get()
        if enclosing is not None and (end is None or enclosing < end):
            end, source = enclosing, "deadline"
        return end, source

    def _expired(self, operation: str, timeout: float | None, start: float, source: str,
                 abandoned: bool = False, budget: float | None = None) -> OperationTimeoutError:
        """Count an expiry and build its error; ``budget`` is the time the call had (its own
        timeout or what the enclosing deadline left), reported on the span event."""
        self.timeouts += 1
        if self.metrics is not None:
            self.metrics.increment("timeouts_total", labels={"operation": operation})
        elapsed = max(0.0, self.clock() - start)
        if self.tracer is not None:
            attrs: dict[str, Any] = {"operation": operation, "source": source,
                                     "elapsed_s": elapsed, "abandoned_thread": abandoned}
            if budget is None:
                budget = timeout
            if budget is not None:
                attrs["budget_s"] = max(0.0, budget)
            if timeout is not None:
                attrs["timeout_s"] = timeout
            self.tracer.add_event("timeout.expired", attrs)
        return OperationTimeoutError(operation, timeout, elapsed=elapsed,
                                     source=source, abandoned_thread=abandoned)

    # -- async -------------------------------------------------------------------------------

    async def _call(self, make: Callable[..., Awaitable[T]], args: tuple[Any, ...],
                    kwargs: Mapping[str, Any], timeout: float | None, total: float | None,
                    operation: str | None) -> T:
        now = self.clock()
        if total is None and _scope_var.get() is None:  # the common case, inlined
            end = None if timeout is None else now + timeout
            source = "timeout"
            enclosing = _deadline_var.get()
            if enclosing is not None and (end is None or enclosing < end):
                end, source = enclosing, "deadline"
        else:
            end, source = self._deadline(now, timeout, total)
        if end is None:
            return await make(*args, **kwargs)
        if end <= now:
            raise self._expired(operation or _name(make), timeout, now, source, budget=end - now)
        loop = _get_running_loop()
        task = _current_task(loop)
        if task is None:
            raise RuntimeError("with_timeout must run inside an asyncio task")
        watch = self._watch
        if watch is None or watch.loop is not loop:
            watch = self._watch = _Watch(loop)
        cancelling = task.cancelling()
        entry = watch.add(loop.time() + (end - now), task)
        token = _deadline_var.set(end)
        try:
            result = await make(*args, **kwargs)
        except _CancelledError as exc:
            if entry[1] and task.uncancel() <= cancelling:
                raise self._expired(operation or _name(make), timeout, now, source,
                                    getattr(exc, "_onex_abandoned", False),
                                    budget=end - now) from exc
            raise
        except BaseException:
            if entry[1]:
                task.uncancel()
            raise
        finally:
            entry[0] = None
            watch.live -= 1
            _deadline_var.reset(token)
        if entry[1]:  # the work swallowed our cancellation and finished anyway
            task.uncancel()
        return result

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...] = (),
            kwargs: Mapping[str, Any] | None = None, *, timeout: float | None = _UNSET,
            operation: str | None = None) -> Coroutine[Any, Any, Any]:
        """``fn(*args, **kwargs)`` within ``timeout`` (default: configured) and the deadline.

        Returns a coroutine to await (a plain method, so a call costs one coroutine frame).

        Args:
            fn: an ``async def`` function, or a plain callable (see ``sync_calls``).
            timeout: seconds for this call (``<= 0``: already expired, as with
                ``asyncio.timeout``); ``None`` applies only the enclosing deadline.
            operation: the name used in errors and metrics (default: ``fn``'s name).

        Raises:
            OperationTimeoutError: the deadline passed first (the work was cancelled).
            TypeError: a plain callable while ``sync_calls`` is ``"refuse"``; ``fn`` is not
                callable; ``timeout`` is not a number.
            ValueError: ``timeout`` is NaN.
        """
        t = self._timeout if timeout is _UNSET else _check_timeout(timeout)
        kw = kwargs or {}
        if is_async_callable(fn):
            return self._call(fn, args, kw, t, None, operation)
        if not callable(fn):
            raise TypeError(f"with_timeout needs a callable (an async def function or a plain "
                            f"one) as its first argument, got {fn!r}")
        if self.config.sync_calls == "refuse":
            raise TypeError(
                f"with_timeout got the plain function {_name(fn)}, and this node's timeout "
                "capability refuses plain callables (sync_calls: refuse): Python cannot "
                "interrupt a running function. Pass an async function, or set sync_calls: "
                "thread to run it in a daemon thread that is abandoned (and keeps running) "
                "on timeout.")
        return self._call(functools.partial(self._in_thread, fn), args, kw, t, None,
                          operation or _name(fn))

    def run_attempt(self, call: Callable[..., Awaitable[T]], args: tuple[Any, ...],
                    kwargs: Mapping[str, Any], operation: str) -> Coroutine[Any, Any, T]:
        """One attempt of a guarded ``process()``: the per-attempt timeout plus ``total_timeout``."""
        return self._call(call, args, kwargs, self._timeout, self._total, operation)

    async def _in_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = _get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        ctx = contextvars.copy_context()  # carries the deadline into the thread

        def work() -> None:
            try:
                value, ok = ctx.run(fn, *args, **kwargs), True
            except BaseException as exc:  # handed to the awaiting task
                value, ok = exc, False
            try:
                loop.call_soon_threadsafe(_settle, fut, ok, value)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more

        operation = _name(fn)
        job = self._submit(work, operation)
        try:
            result = await fut
        except _CancelledError as exc:
            if self._abandon(job, operation):
                exc._onex_abandoned = True  # type: ignore[attr-defined]
            raise
        if result.__class__ is CoroutineType or inspect.isawaitable(result):
            result = await result
        return result

    # -- sync --------------------------------------------------------------------------------

    def run_sync(self, fn: Callable[..., T], args: tuple[Any, ...] = (),
                 kwargs: Mapping[str, Any] | None = None, *, timeout: float | None = _UNSET,
                 operation: str | None = None) -> T:
        """Call a plain function from sync code, waiting at most until the deadline.

        The function runs in one of the policy's worker threads (at most ``max_threads``); on
        timeout the caller gets :class:`OperationTimeoutError` and **the function keeps
        running** in its thread (result dropped), which stays busy until it returns. With no
        timeout and no enclosing deadline the function is simply called.

        Raises:
            OperationTimeoutError: the deadline passed first.
            TimeoutThreadsFullError: every worker thread was busy; ``fn`` did not run.
            TypeError: ``sync_calls`` is ``"refuse"``, or ``fn`` is not callable.

        Example:
            >>> policy = TimeoutPolicy({"timeout": 5})
            >>> policy.run_sync(sum, ([1, 2, 3],))
            6
        """
        t = self._timeout if timeout is _UNSET else _check_timeout(timeout)
        if not callable(fn):
            raise TypeError(f"run_sync needs a plain callable as its first argument, got {fn!r}")
        op = operation or _name(fn)
        if self.config.sync_calls == "refuse":
            raise TypeError(f"run_sync({op}): sync_calls is 'refuse'; set sync_calls: thread")
        return self._run_sync(fn, args, kwargs or {}, t, None, op)

    def run_sync_attempt(self, call: Callable[..., T], args: tuple[Any, ...],
                         kwargs: Mapping[str, Any], operation: str) -> T:
        """One attempt of a guarded plain ``def process``: the per-attempt timeout plus
        ``total_timeout``, in a worker thread (see :meth:`run_sync`)."""
        if self.config.sync_calls == "refuse":
            raise TypeError(
                f"{operation} is a plain def, and this node's timeout capability refuses plain "
                "callables (sync_calls: refuse): Python cannot interrupt a running function. "
                "Set sync_calls: thread to run each call in a worker thread that is abandoned "
                "(and keeps running) on timeout, make process() async, or set "
                "timeout_config.guard_process: false.")
        return self._run_sync(call, args, kwargs, self._timeout, self._total, operation)

    def _run_sync(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: Mapping[str, Any],
                  timeout: float | None, total: float | None, op: str) -> T:
        now = self.clock()
        end, source = self._deadline(now, timeout, total)
        if end is None:
            return fn(*args, **kwargs)
        if end <= now:
            raise self._expired(op, timeout, now, source, budget=end - now)
        box: list[Any] = []
        done = threading.Event()
        token = _deadline_var.set(end)
        try:
            ctx = contextvars.copy_context()
        finally:
            _deadline_var.reset(token)

        def work() -> None:
            try:
                box.append((True, ctx.run(fn, *args, **kwargs)))
            except BaseException as exc:
                box.append((False, exc))
            done.set()

        job = self._submit(work, op)
        if not done.wait(max(0.0, end - now)) and self._abandon(job, op):
            raise self._expired(op, timeout, now, source, abandoned=True, budget=end - now)
        done.wait()  # finished just as the deadline passed: its outcome is in the box
        ok, value = box[0]
        if not ok:
            raise value
        return cast(T, value)


class MixinTimeout:
    """Per-call and total deadlines (seed 000's ``MixinTimeout``).

    Example:
        >>> import asyncio
        >>> from onex_compose import NodeCompute, compose
        >>> node = compose(NodeCompute, ["timeout"])(capability_config={"timeout": {"timeout": 1}})
        >>> async def quick(x):
        ...     return x * 2
        >>> asyncio.run(node.with_timeout(quick, 21))
        42
    """

    __onex_capability__ = "timeout"
    __slots__ = ()

    def setup_timeout(self, config: TimeoutConfig | Mapping[str, Any] | None = None) -> None:
        """Configure the timeout capability (reconfiguring keeps an injected clock)."""
        cfg = coerce_config(TimeoutConfig, config, "timeout")
        old = getattr(self, "timeout_policy", None)
        node = getattr(self, "node_id", None) or type(self).__name__
        policy = TimeoutPolicy(cfg, metrics=self.metrics, name=f"{node}.timeout")  # type: ignore[attr-defined]
        if isinstance(old, TimeoutPolicy):
            policy.clock = old.clock
        if has_capability(self, "tracing"):
            policy.tracer = tracer_for(self, "timeout")
        setattr(self, "timeout_policy", policy)  # noqa: B010 - the mixin declares no such slot

    @facility
    def timeout_policy(self) -> TimeoutPolicy:
        """The timeout policy (defaults when ``setup_timeout`` never ran)."""
        return TimeoutPolicy(TimeoutConfig(), metrics=self.metrics)  # type: ignore[attr-defined]

    def with_timeout(self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None,
                     **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """Run ``fn(*args, **kwargs)`` within ``timeout`` seconds and the enclosing deadline.

        Args:
            fn: an ``async def`` function, or a plain callable (runs in a daemon thread that is
                abandoned, still running, on timeout; see ``sync_calls``).
            timeout: seconds for this call (``None``: the configured ``timeout``).

        Raises:
            OperationTimeoutError: the work did not finish in time (it was cancelled).
        """
        return self.timeout_policy.run(fn, args, kwargs,
                                       timeout=_UNSET if timeout is None else timeout)

    def _guard_sync_timeout(self, call: Callable[..., T]) -> Callable[..., T]:
        """The sync twin of :meth:`_guard_timeout` for a plain ``def process``: each attempt
        runs in one of the policy's bounded worker threads and the caller stops waiting at the
        deadline (:class:`OperationTimeoutError`); the timed-out call keeps running in its
        thread until it returns. Every worker busy: :class:`TimeoutThreadsFullError`."""
        operation = f"{type(self).__qualname__}.process"

        @functools.wraps(call)
        def timed_sync(*args: Any, **kwargs: Any) -> T:
            policy: TimeoutPolicy = self.timeout_policy
            if not policy.guard:
                return call(*args, **kwargs)
            return policy.run_sync_attempt(call, args, kwargs, operation)

        return timed_sync

    def _guard_timeout(self, call: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """Apply the per-attempt timeout (and ``total_timeout``) to ``process()`` (rank 80)."""
        operation = f"{type(self).__qualname__}.process"

        @functools.wraps(call)
        async def timed(*args: Any, **kwargs: Any) -> T:
            policy: TimeoutPolicy = self.timeout_policy
            if not policy.guard:
                return await call(*args, **kwargs)
            return await policy.run_attempt(call, args, kwargs, operation)

        return timed
