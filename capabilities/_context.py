"""Context shared by capabilities: deadlines, correlation ids, retry scopes, and the clock.

These travel in :mod:`contextvars`, so they follow a call across ``await`` and into tasks it
creates, and never leak between concurrent calls:

* ``deadline``: absolute time (on :func:`monotonic`, or on the clock the capability was given)
  by which the current operation must end; set by the timeout capability for the duration of a
  call (nested deadlines keep the earliest), read by retry so it never sleeps past it.
* ``correlation_id``: the id of the request being served; set by the logging capability,
  carried into published events.
* ``retry_scope``: a :class:`RetryScope` set while a retry loop runs, so a ``with_retry``
  nested inside a retried ``process()`` makes a single attempt instead of multiplying attempts.
  It also carries the attempt number and the loop's own total budget (retry's ``max_elapsed``,
  timeout's ``total_timeout``), which :func:`current_deadline` folds in. A task or thread
  started inside the loop copies the variable, so the scope records the thread that runs the
  loop and whether the loop still runs (retry tells its own task apart from the others of that
  thread): only the owner's nested calls are single attempts, and a finished loop's budget
  binds nobody.

All timing logic takes an injectable clock (a zero-argument callable returning seconds);
:class:`ManualClock` is the test double. :meth:`ManualClock.run` runs a coroutine on an event
loop whose time *is* the manual clock and which jumps over idle waits, so tests of timeouts and
queue waits take no wall-clock time. That loop is written by hand (a selector loop whose
``time()`` is the clock and whose ``select`` advances it) because no installed library offers a
virtual-time asyncio loop for Python 3.11.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any, TypeVar

__all__ = [
    "ManualClock",
    "RetryScope",
    "correlation_id",
    "current_deadline",
    "deadline",
    "monotonic",
    "remaining",
    "retry_scope",
]

T = TypeVar("T")

monotonic = time.monotonic

deadline: ContextVar[float | None] = ContextVar("onex_deadline", default=None)
correlation_id: ContextVar[str | None] = ContextVar("onex_correlation_id", default=None)
retry_scope: ContextVar[Any] = ContextVar("onex_retry_scope", default=None)


class RetryScope:
    """What an active retry loop shares with the code it runs (the value of ``retry_scope``).

    Attributes:
        owner: the object running the loop (a ``RetryPolicy``).
        attempt: the attempt in progress, from 1.
        deadline: the loop's own budget end (absolute, on the loop's clock), or ``None``. Retry's
            ``max_elapsed`` sets it when the loop starts; the timeout capability's
            ``total_timeout`` lowers it on the first attempt.
        key: the id of the thread running the loop (``threading.get_ident()``), or ``None``;
            a copy of the context in another thread does not own the scope.
        active: ``True`` while the loop runs; the loop clears it when it ends, so a context
            copied into a task that outlives the loop carries an inactive scope.

    Example:
        >>> scope = RetryScope(owner=None)
        >>> scope.attempt, scope.deadline, scope.active
        (1, None, True)
    """

    __slots__ = ("active", "attempt", "deadline", "key", "owner")

    def __init__(self, owner: Any, deadline: float | None = None, key: object = None) -> None:
        self.owner = owner
        self.attempt = 1
        self.deadline = deadline
        self.key = key
        self.active = True

    def __repr__(self) -> str:
        return f"<RetryScope attempt={self.attempt} deadline={self.deadline}>"


def current_deadline() -> float | None:
    """The earliest of the enclosing deadline and the active retry loop's budget, or ``None``.

    Example:
        >>> token = deadline.set(10.0)
        >>> current_deadline()
        10.0
        >>> deadline.reset(token)
    """
    d = deadline.get()
    scope = retry_scope.get()
    if scope is not None and scope.active:  # a finished loop's budget binds nobody
        s = scope.deadline
        if s is not None and (d is None or s < d):
            return float(s)
    return d


def remaining(clock: Callable[[], float] = monotonic) -> float | None:
    """Seconds left before the current deadline (``None`` when there is none).

    Cooperative code (a sync function run in a thread by the timeout capability, for example)
    can poll it and stop early; the value is negative once the deadline has passed.
    """
    d = current_deadline()
    return None if d is None else d - clock()


class ManualClock:
    """A clock for tests: time moves only when told to.

    ``clock()`` reads it, :meth:`advance` moves it, :meth:`sleep` / :meth:`sleep_sync` are
    ``asyncio.sleep`` / ``time.sleep`` stand-ins that advance it instead of waiting (each delay
    is appended to :attr:`sleeps`), and :meth:`run` runs a coroutine on an event loop whose time
    is this clock.

    Example:
        >>> clock = ManualClock()
        >>> clock.advance(2.5)
        >>> clock()
        2.5
        >>> import asyncio
        >>> clock.run(asyncio.sleep(60))   # returns at once; the clock moved by 60 s
        >>> clock()
        62.5
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """An ``asyncio.sleep`` stand-in that advances the clock instead of waiting."""
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)

    def sleep_sync(self, seconds: float) -> None:
        """A ``time.sleep`` stand-in that advances the clock instead of waiting."""
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """A new event loop whose ``time()`` is this clock and which skips idle waits.

        When the loop has nothing ready and would block until its next timer, the clock jumps to
        that timer instead. Real I/O and thread wake-ups still work (with nothing scheduled, the
        loop blocks in ``select`` as usual). Meant for tests only.
        """
        return _VirtualTimeLoop(self)

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """``asyncio.run(main)`` on a loop from :meth:`new_event_loop` (virtual time)."""
        with asyncio.Runner(loop_factory=self.new_event_loop) as runner:
            return runner.run(main)


class _VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on a :class:`ManualClock` (see :meth:`ManualClock.new_event_loop`)."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(selectors.DefaultSelector())
        self._onex_clock = clock
        selector = self._selector  # type: ignore[attr-defined]
        real_select = selector.select

        def select(timeout: float | None = None) -> list[Any]:
            if timeout is None or timeout <= 0:
                return real_select(timeout)  # type: ignore[no-any-return]
            events = real_select(0)
            if not events:
                clock.advance(timeout)  # jump to the next timer instead of waiting for it
            return events  # type: ignore[no-any-return]

        selector.select = select

    def time(self) -> float:
        return self._onex_clock.now
