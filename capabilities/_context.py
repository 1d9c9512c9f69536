"""Context shared by capabilities: deadlines, correlation ids, retry scopes, and the clock.

These travel in :mod:`contextvars`, so they follow a call across ``await`` and into tasks it
creates, and never leak between concurrent calls:

* ``deadline``: absolute time (on :func:`monotonic`) by which the current operation must end;
  set by the timeout capability, read by retry so it never sleeps past it.
* ``correlation_id``: the id of the request being served; set by the logging capability,
  carried into published events.
* ``retry_scope``: set while a retry loop runs, so a ``with_retry`` nested inside a retried
  ``process()`` makes a single attempt instead of multiplying attempts.

All timing logic takes an injectable clock (a zero-argument callable returning seconds);
:class:`ManualClock` is the test double.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

__all__ = ["ManualClock", "correlation_id", "deadline", "monotonic", "remaining", "retry_scope"]

monotonic = time.monotonic

deadline: ContextVar[float | None] = ContextVar("onex_deadline", default=None)
correlation_id: ContextVar[str | None] = ContextVar("onex_correlation_id", default=None)
retry_scope: ContextVar[Any] = ContextVar("onex_retry_scope", default=None)


def remaining(clock: Any = monotonic) -> float | None:
    """Seconds left before the current deadline (``None`` when there is none)."""
    d = deadline.get()
    return None if d is None else d - clock()


class ManualClock:
    """A clock for tests: time moves only when told to.

    Example:
        >>> clock = ManualClock()
        >>> clock.advance(2.5)
        >>> clock()
        2.5
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """An ``asyncio.sleep`` stand-in that advances the clock instead of waiting."""
        self.now += max(0.0, seconds)
