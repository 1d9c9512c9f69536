"""Per-operation latency quantiles: a log-bucket histogram (DDSketch style) with bounded error.

Bucket ``i`` holds the durations in ``[b[i-1], b[i])`` where ``b[k] = 1 ns * gamma**k`` and
``gamma = (1 + a) / (1 - a)``, ``a = 0.0099``; it reports ``2 * lo * hi / (lo + hi)``, which is
within ``a`` (relative) of every value in the bucket. A quantile is read by rank
(nearest-rank definition: the value at rank ``ceil(q * n)`` of the sorted durations), so the
reported quantile is within 1% of the exact one whatever the distribution (DDSketch, Masson et
al. 2019). ``max`` and ``mean`` are exact. Durations below 1 ns (a zero from a coarse clock
included) are reported as ``0.0``; past the last bound (31 years) as the exact ``max``.

Recording is cheap because it is deferred: ``record(d)`` appends to a buffer (one C call), and
every ``BATCH`` durations (or before any read) the buffer is folded into the counters in one
go: sorted (C), summed (C), and each run of equal buckets counted with two ``bisect`` calls.
That costs a fraction of computing ``log``, ``int`` and an index per call in Python, and the
profiling guard inlines the append (``_guard_profiling``).

Example:
    >>> h = LatencyHistogram()
    >>> for ms in range(1, 101):
    ...     h.record(ms / 1000)
    >>> s = h.summary()
    >>> s.count, s.max, abs(s.p50 - 0.050) <= 0.0005, abs(s.p99 - 0.099) <= 0.00099
    (100, 0.1, True, True)
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left, bisect_right
from typing import NamedTuple

__all__ = ["BATCH", "RELATIVE_ACCURACY", "LatencyHistogram", "LatencySummary"]

#: the bound on the relative error of every reported quantile (below 1%, with room to spare)
RELATIVE_ACCURACY = 0.0099
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_MIN = 1e-9
_MAX = 1e9
#: bucket bounds: ``_BOUNDS[0]`` = 1 ns ... past 1e9 s
_BOUNDS: list[float] = [_MIN * _GAMMA ** k
                        for k in range(int(math.log(_MAX / _MIN) / math.log(_GAMMA)) + 2)]
_NBUCKETS = len(_BOUNDS) + 1  # 0: below 1 ns; len(_BOUNDS): past the last bound
_REPS: list[float] = [0.0] + [2.0 * lo * hi / (lo + hi)
                              for lo, hi in itertools.pairwise(_BOUNDS)] + [0.0]
#: durations buffered before they are folded into the counters
BATCH = 2048


class LatencySummary(NamedTuple):
    """One operation's latency: count and seconds (quantiles within 1%; max, mean exact).

    An operation with no calls has ``count == 0`` and every other field ``0.0``.
    """

    count: int  # type: ignore[assignment]  # (shadows tuple.count: the issue's field name)
    p50: float
    p95: float
    p99: float
    max: float
    mean: float


class LatencyHistogram:
    """A mergeable log-bucket histogram of durations in seconds (see the module doc).

    Attributes:
        buffer: durations not folded yet (the hot path appends to it, then calls ``fold``
            once it holds ``BATCH``).
        counts: one counter per bucket.
        total: the sum of the folded durations.
        max: the largest folded duration (``0.0`` before the first).
    """

    __slots__ = ("buffer", "counts", "max", "total")

    def __init__(self) -> None:
        self.buffer: list[float] = []
        self.counts = [0] * _NBUCKETS
        self.total = 0.0
        self.max = 0.0

    def __repr__(self) -> str:
        n = self.count
        if not n:
            return "LatencyHistogram(empty)"
        s = self.summary()
        return (f"LatencyHistogram(count={n}, p50={s.p50:.3g}s, p99={s.p99:.3g}s, "
                f"max={s.max:.3g}s)")

    def record(self, d: float) -> None:
        """Add one duration (seconds)."""
        buffer = self.buffer
        buffer.append(d)
        if len(buffer) >= BATCH:
            self.fold()

    def fold(self) -> None:
        """Move the buffered durations into the counters (readers call it first)."""
        buffer = self.buffer
        n = len(buffer)
        if not n:
            return
        batch = buffer[:n]
        del buffer[:n]  # in place: the guard holds this list (appends from other threads stay)
        batch.sort()
        self.total += sum(batch)
        if batch[-1] > self.max:
            self.max = batch[-1]
        counts, bounds, last = self.counts, _BOUNDS, len(_BOUNDS)
        lo = 0
        while lo < n:
            i = bisect_right(bounds, batch[lo])  # bounds[i-1] <= x < bounds[i]
            if i >= last:
                counts[last] += n - lo
                break
            hi = bisect_left(batch, bounds[i], lo)
            counts[i] += hi - lo
            lo = hi

    @property
    def count(self) -> int:
        """How many durations were recorded."""
        return sum(self.counts) + len(self.buffer)

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0..1, nearest rank), within 1% of the exact one; 0.0 when empty.

        Raises:
            ValueError: ``q`` outside 0..1.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile q must be within 0..1, got {q!r}")
        return self._quantiles((q,))[0]

    def _quantiles(self, qs: tuple[float, ...]) -> list[float]:
        self.fold()
        n = sum(self.counts)
        if not n:
            return [0.0] * len(qs)
        ranks = [max(1, math.ceil(q * n - 1e-9)) for q in qs]
        out: list[float | None] = [None] * len(qs)
        last = len(_BOUNDS)
        seen = 0
        for i, c in enumerate(self.counts):
            if not c:
                continue
            seen += c
            for j, r in enumerate(ranks):
                if out[j] is None and r <= seen:
                    out[j] = self.max if i >= last else min(_REPS[i], self.max)
            if all(v is not None for v in out):
                break
        return [float(self.max if v is None else v) for v in out]

    def summary(self) -> LatencySummary:
        """Count, p50, p95, p99, max and mean."""
        self.fold()
        n = sum(self.counts)
        if not n:
            return LatencySummary(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        p50, p95, p99 = self._quantiles((0.5, 0.95, 0.99))
        return LatencySummary(n, p50, p95, p99, self.max, self.total / n)

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s durations into this histogram (exact: same buckets)."""
        other.fold()
        self.fold()
        counts = self.counts
        for i, c in enumerate(other.counts):
            if c:
                counts[i] += c
        self.total += other.total
        self.max = max(self.max, other.max)

    def clear(self) -> None:
        """Forget every duration (in place: a guard holding ``buffer`` keeps working)."""
        del self.buffer[:]
        counts = self.counts
        for i in range(len(counts)):
            counts[i] = 0
        self.total = 0.0
        self.max = 0.0
