"""Per-operation latency quantiles: a log-bucket histogram (DDSketch style) with bounded error.

A duration ``d`` goes into bucket ``floor(ln(d) / ln(gamma))`` with
``gamma = (1 + a) / (1 - a)`` and ``a = 0.0099``; the bucket ``[L, L * gamma)`` reports the
value ``2 * L * gamma / (gamma + 1)``, which is within ``a`` (relative) of every value in the
bucket. A quantile is read by rank (nearest-rank definition: the value at rank
``ceil(q * n)`` of the sorted durations), so the reported quantile is within 1% of the exact
one, whatever the distribution (DDSketch, Masson et al. 2019). ``max`` and ``mean`` are exact.

The buckets are a preallocated list covering 1 ns .. 31 years (~2,100 counters, 17 KiB per
operation); recording is one ``log``, one multiply-add, one list increment, and the sum/max
update: the profiling guard inlines exactly these steps (``_guard_profiling``), so the
recording code below is the reference for it. Durations below 1 ns (a zero from a coarse
clock included) are counted as ``0.0``; durations past the last bucket are counted in it (the
exact ``max`` still reports them).

Example:
    >>> h = LatencyHistogram()
    >>> for ms in range(1, 101):
    ...     h.record(ms / 1000)
    >>> s = h.summary()
    >>> s.count, round(s.p50, 4), round(s.p99, 4), s.max
    (100, 0.0499, 0.0992, 0.1)
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["RELATIVE_ACCURACY", "LatencyHistogram", "LatencySummary"]

#: the bound on the relative error of every reported quantile (below 1%, with room for
#: floating-point rounding at bucket edges)
RELATIVE_ACCURACY = 0.0099
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_K = 1.0 / math.log(_GAMMA)
_MIN = 1e-9  # below: counted as zero
_MAX = 1e9
_OFFSET = -math.floor(math.log(_MIN) * _K)  # bucket 0 holds _MIN
#: ``int(log(d) * _K + _OFFSETF)`` is the bucket of ``d >= _MIN`` (int() truncates a
#: non-negative float: floor)
_OFFSETF = float(_OFFSET)
_NBUCKETS = int(math.log(_MAX) * _K) + _OFFSET + 2
_log = math.log


class LatencySummary(NamedTuple):
    """One operation's latency: count and seconds (quantiles within 1%; max, mean exact).

    An operation with no calls has ``count == 0`` and every other field ``0.0``.
    """

    count: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float


class LatencyHistogram:
    """A mergeable log-bucket histogram of durations in seconds (see the module doc).

    Attributes:
        counts: one counter per bucket (the hot path increments it directly).
        zero: durations below 1 ns.
        total: the sum of all durations.
        max: the largest duration (``0.0`` before the first).
    """

    __slots__ = ("counts", "max", "total", "zero")

    def __init__(self) -> None:
        self.counts = [0] * _NBUCKETS
        self.zero = 0
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
        if d >= _MIN:
            try:
                self.counts[int(_log(d) * _K + _OFFSETF)] += 1
            except IndexError:
                self.counts[-1] += 1
        else:
            self.zero += 1
        self.total += d
        if d > self.max:
            self.max = d

    @property
    def count(self) -> int:
        """How many durations were recorded."""
        return sum(self.counts) + self.zero

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0..1, nearest rank), within 1% of the exact one; 0.0 when empty.

        Raises:
            ValueError: ``q`` outside 0..1.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile q must be within 0..1, got {q!r}")
        return self._quantiles((q,))[0]

    def _quantiles(self, qs: tuple[float, ...]) -> list[float]:
        n = self.count
        if not n:
            return [0.0] * len(qs)
        ranks = [max(1, math.ceil(q * n - 1e-9)) for q in qs]
        out: list[float | None] = [None] * len(qs)
        seen = self.zero
        for j, r in enumerate(ranks):
            if r <= seen:
                out[j] = 0.0
        if all(v is not None for v in out):
            return [float(v or 0.0) for v in out]
        for i, c in enumerate(self.counts):
            if not c:
                continue
            seen += c
            for j, r in enumerate(ranks):
                if out[j] is None and r <= seen:
                    value = 2.0 * _GAMMA ** (i - _OFFSET + 1) / (_GAMMA + 1.0)
                    out[j] = min(value, self.max)  # the exact max bounds every quantile
            if seen >= ranks[-1] and all(v is not None for v in out):
                break
        return [float(self.max if v is None else v) for v in out]

    def summary(self) -> LatencySummary:
        """Count, p50, p95, p99, max and mean."""
        n = self.count
        if not n:
            return LatencySummary(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        p50, p95, p99 = self._quantiles((0.5, 0.95, 0.99))
        return LatencySummary(n, p50, p95, p99, self.max, self.total / n)

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s durations into this histogram (exact: same buckets)."""
        counts = self.counts
        for i, c in enumerate(other.counts):
            if c:
                counts[i] += c
        self.zero += other.zero
        self.total += other.total
        self.max = max(self.max, other.max)

    def clear(self) -> None:
        """Forget every duration (in place: a guard holding ``counts`` keeps working)."""
        counts = self.counts
        for i in range(len(counts)):
            counts[i] = 0
        self.zero = 0
        self.total = 0.0
        self.max = 0.0
