"""bulkhead: a limit on concurrent calls, with a bounded wait and a specific "full" error.

What it gives a node (seed 000's ``MixinBulkhead``):

* ``self.bulkhead``: a :class:`Bulkhead` shared by the node's async and sync callers:

  * async: ``async with self.bulkhead: ...`` or ``await self.bulkhead.run(fn, *args)``;
  * sync (threads): ``with self.bulkhead: ...`` or ``self.bulkhead.run_sync(fn, *args)``;
  * ``try_acquire()`` / ``release()`` for hand-made scopes, ``snapshot()`` for numbers.

* ``_guard_bulkhead``: limits the node's ``process()`` (guard rank 90, innermost, as in
  resilience4j: the per-attempt timeout also bounds the wait for a slot, and a retry's back-off
  does not hold a slot).

Semantics (resilience4j's ``SemaphoreBulkhead``, ``reference/capabilities.md`` A.3):

* ``max_concurrent`` calls run at once (default 25). A caller that finds the bulkhead full waits
  up to ``max_wait`` seconds (default 0: reject at once) and never past the current deadline
  (``_context``); ``max_waiting`` optionally bounds the queue. Waiters are served first come,
  first served: a released slot is handed to the oldest waiter, and new arrivals do not barge
  ahead of a queue.
* A rejected caller gets :class:`BulkheadFullError` (``OnexError`` + ``RuntimeError``) with the
  bulkhead's ``name``, ``limit``, ``active`` count and how long it ``waited``. Its
  ``onex_retriable = False``, so retry does not hammer a full bulkhead unless configured to.
* One limit for the whole node: async callers on any event loop and sync callers on any thread
  share the same count. The state is a counter behind a ``threading.Lock`` held only for a few
  bytecodes (never across an ``await`` or a call); async waiters wait on a future created on
  their own running loop when they need to wait, so nothing is bound to a loop at setup and a
  node built outside a loop works across repeated ``asyncio.run()`` calls.
* Metrics: ``bulkhead_rejections_total{bulkhead}`` for every rejection, and the gauges
  ``bulkhead_active_calls{bulkhead}`` / ``bulkhead_waiting_calls{bulkhead}``, read from the
  bulkhead when the metrics are scraped (``snapshot()``, the exposition: the metrics facility's
  ``gauge_callback``), so they are never stale and the call path publishes nothing (updating a
  gauge twice per call would cost more than the bulkhead itself). A metrics facility without
  ``gauge_callback`` gets the gauges set by :meth:`Bulkhead.snapshot`.

* Tracing: with ``tracing`` composed (``bulkhead`` in its ``instrument`` list), a caller
  that waited in the queue and got its slot adds the event ``bulkhead.queued`` (``bulkhead``,
  ``limit``, ``waited_s``) to the current span, and a rejection adds ``bulkhead.rejected``
  (``bulkhead``, ``limit``, ``active``, ``waited_s``). A caller that finds a free slot
  reports nothing.

Why hand-written instead of ``asyncio.Semaphore`` (or hyx's two semaphores): a semaphore is
bound to one loop and one kind of caller (async or threads), has no "max wait then a typed
error" mode, and ``asyncio.Semaphore.locked()`` builds a generator on every acquire. This one
is FIFO-fair, shared by threads and loops, and still cheaper than a bare ``asyncio.Semaphore``
on the uncontended path (``benchmarks/bench_guards.py``).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Mapping
from types import CoroutineType, TracebackType
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from onex_compose import OnexError, coerce_config, facility, has_capability
from onex_compose.capabilities import _context
from onex_compose.capabilities._traced import tracer_for

__all__ = ["Bulkhead", "BulkheadConfig", "BulkheadFullError", "BulkheadProtocol", "MixinBulkhead"]

T = TypeVar("T")

_get_running_loop = asyncio._get_running_loop


class BulkheadFullError(OnexError, RuntimeError):
    """The bulkhead had no free slot within the allowed wait (not retriable).

    Attributes:
        name: the bulkhead's name.
        limit: its ``max_concurrent``.
        active: calls running when the caller gave up.
        waited: seconds the caller waited.
        max_wait: the configured wait.

    Neither a success nor a failure for a circuit breaker around the bulkhead
    (``onex_breaker_neutral = True``): the node shed the call itself, the dependency was never
    called, so a burst that fills the bulkhead does not open the circuit.

    Example:
        >>> err = BulkheadFullError("db", 10, active=10, waited=0.0, max_wait=0.0)
        >>> err.onex_retriable, err.limit
        (False, 10)
    """

    onex_retriable = False
    onex_breaker_neutral = True

    def __init__(self, name: str, limit: int, *, active: int, waited: float,
                 max_wait: float) -> None:
        self.name, self.limit, self.active = name, limit, active
        self.waited, self.max_wait = waited, max_wait
        wait = (f"after waiting {waited:.3g} s" if waited > 0
                else "at once (max_wait is 0)" if max_wait <= 0 else "at once")
        super().__init__(
            f"Bulkhead {name!r} is full: {active} of {limit} calls running; rejected {wait}. "
            "Raise max_concurrent, allow waiting with max_wait, or shed load upstream.")

    def __reduce__(self) -> Any:
        return (_rebuild_error, (self.name, self.limit, self.active, self.waited, self.max_wait),
                dict(self.__dict__))


def _rebuild_error(name: str, limit: int, active: int, waited: float,
                   max_wait: float) -> BulkheadFullError:
    return BulkheadFullError(name, limit, active=active, waited=waited, max_wait=max_wait)


class BulkheadConfig(BaseModel):
    """The bulkhead subcontract (every key of ``bulkhead_config`` in ``mixin_bulkhead.yaml``).

    Example:
        >>> BulkheadConfig(max_concurrent=4, max_wait=0.5).max_concurrent
        4
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_concurrent: int = Field(default=25, ge=1, le=1_000_000,
                                description="calls allowed to run at once")
    max_wait: float = Field(default=0.0, ge=0.0, le=3600.0,
                            description="seconds a caller may wait for a slot; 0 rejects at once")
    max_waiting: int | None = Field(default=None, ge=0,
                                    description="callers allowed to queue; null: unbounded")
    name: str | None = Field(default=None, description="label in errors and metrics "
                                                       "(default: the node id)")
    guard_process: bool = Field(default=True, description="limit the node's process() calls")


@runtime_checkable
class BulkheadProtocol(Protocol):
    """What the bulkhead capability adds to a node (the ``bulkhead`` facility)."""

    @property
    def bulkhead(self) -> Bulkhead: ...


class _Waiter:
    __slots__ = ("fut", "granted", "lock", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop
        self.granted = False
        if loop is not None:
            self.fut: asyncio.Future[None] | None = loop.create_future()
            self.lock: Any = None
        else:
            self.fut = None
            self.lock = threading.Lock()
            self.lock.acquire()

    def wake(self) -> bool:
        """Tell the waiter it owns a slot; ``False`` if it can no longer be told (loop closed)."""
        loop = self.loop
        if loop is None:
            self.lock.release()
            return True
        fut = self.fut
        assert fut is not None
        if _get_running_loop() is loop:
            if not fut.done():
                fut.set_result(None)
            return True
        try:
            loop.call_soon_threadsafe(_resolve, fut)
        except RuntimeError:  # its loop is closed: that caller is gone
            return False
        return True


def _read_active(ref: weakref.ref[Bulkhead]) -> int:
    bulkhead = ref()
    return 0 if bulkhead is None else bulkhead._active


def _read_waiting(ref: weakref.ref[Bulkhead]) -> int:
    bulkhead = ref()
    return 0 if bulkhead is None else len(bulkhead._waiters)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Done:
    """A ready awaitable, so ``__aexit__`` can release without creating a coroutine."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator


_DONE = _Done()


class Bulkhead:
    """A concurrency limit with FIFO waiting, shared by threads and event loops.

    Args:
        config: a :class:`BulkheadConfig`, a mapping of its fields, or ``None``.
        name: label for errors and metrics (default: ``config.name`` or ``"bulkhead"``).
        metrics: the node's metrics facility, or ``None``.
        clock: the clock the current deadline is expressed on (default ``time.monotonic``).

    Example:
        >>> import asyncio
        >>> bulkhead = Bulkhead({"max_concurrent": 1}, name="db")
        >>> async def main():
        ...     async with bulkhead:
        ...         try:
        ...             await bulkhead.run(asyncio.sleep, 0)
        ...         except BulkheadFullError as err:
        ...             return str(err)
        >>> print(asyncio.run(main()))
        Bulkhead 'db' is full: 1 of 1 calls running; rejected at once (max_wait is 0). ...
    """

    __slots__ = (
        "__weakref__",
        "_active",
        "_limit",
        "_lock",
        "_max_wait",
        "_max_waiting",
        "_waiters",
        "clock",
        "config",
        "guard",
        "metrics",
        "name",
        "peak",
        "rejected",
        "tracer",
    )

    def __init__(self, config: BulkheadConfig | Mapping[str, Any] | None = None, *,
                 name: str | None = None, metrics: Any = None,
                 clock: Callable[[], float] = _context.monotonic) -> None:
        cfg: BulkheadConfig = coerce_config(BulkheadConfig, config, "bulkhead")
        self.config = cfg
        self.name = name or cfg.name or "bulkhead"
        self.metrics = metrics
        self.clock = clock
        self.guard = cfg.guard_process
        self._limit = cfg.max_concurrent
        self._max_wait = cfg.max_wait
        self._max_waiting = cfg.max_waiting
        self._active = 0
        self._waiters: deque[_Waiter] = deque()
        self._lock = threading.Lock()
        self.rejected = 0
        self.peak = 0
        self.tracer: Any = None  # the node's tracer: queueing and rejections become span events
        if metrics is not None:
            self._register_gauges(metrics)

    def _register_gauges(self, metrics: Any) -> None:
        """Let the metrics facility read the gauges from this bulkhead when it is scraped."""
        register = getattr(metrics, "gauge_callback", None)
        if register is None:
            return  # a foreign facility: snapshot() sets the gauges
        ref = weakref.ref(self)
        labels = {"bulkhead": self.name}
        register("bulkhead_active_calls", functools.partial(_read_active, ref), labels)
        register("bulkhead_waiting_calls", functools.partial(_read_waiting, ref), labels)

    def _unregister_gauges(self) -> None:
        """Drop this bulkhead's scrape-time gauges (it was replaced under another name)."""
        remove = getattr(self.metrics, "remove_gauge_callback", None)
        if remove is not None:
            labels = {"bulkhead": self.name}
            remove("bulkhead_active_calls", labels)
            remove("bulkhead_waiting_calls", labels)

    def __repr__(self) -> str:
        return (f"<Bulkhead {self.name!r} active={self._active}/{self._limit} "
                f"waiting={len(self._waiters)} max_wait={self._max_wait}>")

    # -- numbers -----------------------------------------------------------------------------

    @property
    def limit(self) -> int:
        """``max_concurrent``."""
        return self._limit

    @property
    def active(self) -> int:
        """Calls holding a slot now."""
        return self._active

    @property
    def waiting(self) -> int:
        """Callers queued for a slot now."""
        return len(self._waiters)

    def snapshot(self) -> dict[str, Any]:
        """Current numbers (also sets the gauges of a metrics facility without ``gauge_callback``).

        Example:
            >>> Bulkhead({"max_concurrent": 3}, name="x").snapshot()
            {'name': 'x', 'limit': 3, 'active': 0, 'waiting': 0, 'peak': 0, 'rejected': 0}
        """
        self._publish()
        return {"name": self.name, "limit": self._limit, "active": self._active,
                "waiting": len(self._waiters), "peak": self.peak, "rejected": self.rejected}

    def _publish(self) -> None:
        metrics = self.metrics
        if metrics is not None and getattr(metrics, "gauge_callback", None) is None:
            labels = {"bulkhead": self.name}
            metrics.gauge("bulkhead_active_calls", self._active, labels=labels)
            metrics.gauge("bulkhead_waiting_calls", len(self._waiters), labels=labels)

    # -- core (lock held only for a few bytecodes) -------------------------------------------

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is queued; never waits.

        Example:
            >>> b = Bulkhead({"max_concurrent": 1})
            >>> b.try_acquire(), b.try_acquire()
            (True, False)
            >>> b.release()
        """
        lock = self._lock
        lock.acquire()
        active = self._active
        if active < self._limit and not self._waiters:
            self._active = active = active + 1
            if active > self.peak:
                self.peak = active
            lock.release()
            return True
        lock.release()
        return False

    def release(self) -> None:
        """Give a slot back: to the oldest waiter if there is one, else to the pool.

        Raises:
            RuntimeError: more releases than acquisitions.
        """
        lock = self._lock
        lock.acquire()
        try:
            waiters = self._waiters
            while waiters:
                waiter = waiters.popleft()
                waiter.granted = True
                if waiter.wake():
                    break
                waiter.granted = False  # its loop is gone; try the next one
            else:
                if self._active <= 0:
                    raise RuntimeError(f"Bulkhead {self.name!r}: release() without a matching "
                                       "acquire")
                self._active -= 1
        finally:
            lock.release()

    def _budget(self) -> float:
        wait = self._max_wait
        if wait > 0:
            left = _context.remaining(self.clock)
            if left is not None and left < wait:
                wait = left
        return wait

    def _reject(self, waited: float) -> BulkheadFullError:
        self.rejected += 1
        if self.metrics is not None:
            self.metrics.increment("bulkhead_rejections_total", labels={"bulkhead": self.name})
        if self.tracer is not None:
            self.tracer.add_event("bulkhead.rejected", {
                "bulkhead": self.name, "limit": self._limit, "active": self._active,
                "waited_s": waited})
        return BulkheadFullError(self.name, self._limit, active=self._active, waited=waited,
                                 max_wait=self._max_wait)

    def _enqueue(self, loop: asyncio.AbstractEventLoop | None) -> tuple[_Waiter | None, float]:
        """Slow path: a slot, a place in the queue, or a rejection (``(None, 0)``: got a slot)."""
        lock = self._lock
        with lock:
            active = self._active
            if active < self._limit and not self._waiters:
                self._active = active + 1
                if active + 1 > self.peak:
                    self.peak = active + 1
                return None, 0.0
            budget = self._budget()
            full_queue = self._max_waiting is not None and len(self._waiters) >= self._max_waiting
            if budget <= 0 or full_queue:
                waiter = None
            else:
                waiter = _Waiter(loop)
                self._waiters.append(waiter)
        if waiter is None:
            raise self._reject(0.0)
        return waiter, budget

    def _give_up(self, waiter: _Waiter) -> bool:
        """A waiter stops waiting: ``True`` if it was granted a slot meanwhile (it owns it)."""
        with self._lock:
            if waiter.granted:
                return True
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass
            return False

    # -- async -------------------------------------------------------------------------------

    async def acquire(self) -> None:
        """Take a slot, waiting up to ``max_wait`` (and never past the deadline).

        Raises:
            BulkheadFullError: no slot within the allowed wait.
        """
        if not self.try_acquire():
            await self._wait()

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        waiter, budget = self._enqueue(loop)
        if waiter is None:
            return
        fut = waiter.fut
        assert fut is not None
        start = loop.time()
        try:
            async with asyncio.timeout(budget):
                await fut
        except TimeoutError:
            if self._give_up(waiter):
                self._queued(loop.time() - start)
                return  # granted just as the wait ran out: the slot is ours
            raise self._reject(max(0.0, loop.time() - start)) from None
        except BaseException:
            if self._give_up(waiter):
                self.release()  # granted, but we are leaving (cancelled): pass the slot on
            raise
        self._queued(loop.time() - start)

    def _queued(self, waited: float) -> None:
        """A caller got its slot after waiting in the queue: a span event when traced."""
        if self.tracer is not None:
            self.tracer.add_event("bulkhead.queued", {
                "bulkhead": self.name, "limit": self._limit, "waited_s": max(0.0, waited)})

    async def __aenter__(self) -> Bulkhead:
        if not self.try_acquire():
            await self._wait()
        return self

    def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                  tb: TracebackType | None) -> _Done:
        self.release()
        return _DONE

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` holding a slot (awaits the result if it is awaitable).

        Raises:
            BulkheadFullError: no slot within the allowed wait.
        """
        if not self.try_acquire():
            await self._wait()
        try:
            result = fn(*args, **kwargs)
            if result.__class__ is CoroutineType or hasattr(result, "__await__"):
                result = await result
            return result
        finally:
            self.release()

    # -- sync --------------------------------------------------------------------------------

    def acquire_sync(self) -> None:
        """Take a slot from a thread, blocking up to ``max_wait``.

        Do not call this on an event loop's thread when it may wait: it blocks the loop
        (use ``async with`` there).

        Raises:
            BulkheadFullError: no slot within the allowed wait.
        """
        if self.try_acquire():
            return
        waiter, budget = self._enqueue(None)
        if waiter is None:
            return
        start = self.clock()
        try:
            got = waiter.lock.acquire(timeout=budget)
        except BaseException:
            if self._give_up(waiter):
                self.release()
            raise
        if got or self._give_up(waiter):
            self._queued(self.clock() - start)
            return
        raise self._reject(max(0.0, self.clock() - start))

    def __enter__(self) -> Bulkhead:
        self.acquire_sync()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def run_sync(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call the plain function ``fn(*args, **kwargs)`` holding a slot (blocking wait)."""
        self.acquire_sync()
        try:
            return fn(*args, **kwargs)
        finally:
            self.release()


class MixinBulkhead:
    """Resource isolation: a per-node concurrency limit (seed 000's ``MixinBulkhead``).

    Example:
        >>> import asyncio
        >>> from onex_compose import NodeEffect, compose
        >>> node = compose(NodeEffect, ["bulkhead"])(
        ...     capability_config={"bulkhead": {"max_concurrent": 2, "name": "db"}})
        >>> async def query(n):
        ...     return n + 1
        >>> asyncio.run(node.bulkhead.run(query, 1)), node.bulkhead.limit
        (2, 2)
    """

    __onex_capability__ = "bulkhead"
    __slots__ = ()

    def setup_bulkhead(self, config: BulkheadConfig | Mapping[str, Any] | None = None) -> None:
        """Configure the bulkhead. Reconfiguring replaces it: calls holding a slot of the old
        one release it there, new calls use the new limit."""
        cfg = coerce_config(BulkheadConfig, config, "bulkhead")
        name = cfg.name or getattr(self, "node_id", None) or type(self).__name__
        old = getattr(self, "bulkhead", None)
        if isinstance(old, Bulkhead) and old.name != name:
            old._unregister_gauges()  # its calls still drain; the gauges follow the new one
        bulkhead = Bulkhead(cfg, name=name, metrics=self.metrics)  # type: ignore[attr-defined]
        if isinstance(old, Bulkhead):
            bulkhead.clock = old.clock
        if has_capability(self, "tracing"):
            bulkhead.tracer = tracer_for(self, "bulkhead")
        setattr(self, "bulkhead", bulkhead)  # noqa: B010 - the mixin declares no such slot

    @facility
    def bulkhead(self) -> Bulkhead:
        """The node's bulkhead (defaults when ``setup_bulkhead`` never ran)."""
        name = getattr(self, "node_id", None) or type(self).__name__
        return Bulkhead(BulkheadConfig(), name=name, metrics=self.metrics)  # type: ignore[attr-defined]

    def _guard_bulkhead(self, call: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """Hold a bulkhead slot for each ``process()`` attempt (guard rank 90, innermost)."""

        @functools.wraps(call)
        async def limited(*args: Any, **kwargs: Any) -> T:
            bulkhead: Bulkhead = self.bulkhead
            if not bulkhead.guard:
                return await call(*args, **kwargs)
            if not bulkhead.try_acquire():
                await bulkhead._wait()
            try:
                return await call(*args, **kwargs)
            finally:
                bulkhead.release()

        return limited

    def _guard_sync_bulkhead(self, call: Callable[..., T]) -> Callable[..., T]:
        """The sync twin of :meth:`_guard_bulkhead` for a plain ``def process``: the thread
        bulkhead (a caller that finds it full blocks up to ``max_wait``, then is rejected)."""

        @functools.wraps(call)
        def limited_sync(*args: Any, **kwargs: Any) -> T:
            bulkhead: Bulkhead = self.bulkhead
            if not bulkhead.guard:
                return call(*args, **kwargs)
            bulkhead.acquire_sync()
            try:
                return call(*args, **kwargs)
            finally:
                bulkhead.release()

        return limited_sync
