"""Happy-path cost of our circuit breaker against pybreaker, aiobreaker and purgatory, in one run.

The protected call succeeds and the circuit stays closed, so every nanosecond above the bare
call is breaker machinery:

=============================================  ==================================================
ours                                           peers
=============================================  ==================================================
``breaker.call(f, x)``: consecutive mode       ``pybreaker.CircuitBreaker.call(f, x)``;
(default), rate mode (count window), rate      ``@pybreaker.CircuitBreaker`` decorator;
mode (time window)                             purgatory ``SyncCircuitBreakerFactory`` decorator
``await breaker.acall(af, x)``: same modes;    ``await aiobreaker.CircuitBreaker.call_async``;
the composed node's guarded ``process()``      purgatory ``AsyncCircuitBreakerFactory``
vs the same node without the guard             decorator and ``async with get_breaker()``
=============================================  ==================================================

Every case is called through a zero-argument lambda (the same overhead for all); async cases are
awaited inside one event loop. "ratio" is the case / the bare call; the note gives the added
nanoseconds and how many times more pybreaker (sync) or aiobreaker (async) adds. Targets:
default mode <= 500 ns added, rate mode <= 1000 ns added (pybreaker adds ~1.7 µs on the
reference machine).

Run: ``python benchmarks/bench_breaker.py`` (``--smoke`` for a quick check that it runs).
"""

from __future__ import annotations

import itertools
import sys
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Table, parse_args, time_async, time_sync  # noqa: E402

from onex_compose import NodeCompute, compose  # noqa: E402
from onex_compose.capabilities.circuit_breaker import BreakerPolicy, CircuitBreaker  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)
import aiobreaker  # noqa: E402
import purgatory  # noqa: E402
import pybreaker  # noqa: E402


def f(x: int) -> int:
    return x


async def af(x: int) -> int:
    return x


class Plain(compose(NodeCompute, ["metrics", "health_check"])):  # type: ignore[misc]
    async def process(self, input_data: Any) -> Any:
        return input_data


Guarded = compose(NodeCompute, ["circuit_breaker"])  # + metrics, health_check


class GuardedNode(Guarded):  # type: ignore[misc, valid-type]
    async def process(self, input_data: Any) -> Any:
        return input_data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n = 2_000 if args.smoke else 300_000
    repeats = 2 if args.smoke else args.repeats

    def ts(fn: Any) -> float:
        return time_sync(fn, number=n, repeats=repeats)

    def ta(fn: Any) -> float:
        return time_async(fn, number=n, repeats=repeats)

    default = CircuitBreaker("bench")
    rate = CircuitBreaker("bench-rate", BreakerPolicy(mode="rate", window_size=100))
    rate_time = CircuitBreaker("bench-time", BreakerPolicy(mode="rate", window_type="time",
                                                           window_size=60))
    slow = CircuitBreaker("bench-slow", BreakerPolicy(slow_call_duration=1.0))
    # every clock reading is an hour later: each call finds the whole window expired (the O(1)
    # restart; it used to clear all 3,600 buckets one by one)
    hours = itertools.count(0.0, 3600.0)
    idle = CircuitBreaker("bench-idle", BreakerPolicy(mode="rate", window_type="time",
                                                      window_size=3600),
                          clock=lambda: next(hours))
    pyb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    pyb_deco = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)(f)
    purg_sync = purgatory.SyncCircuitBreakerFactory()("bench")(f)
    aiob = aiobreaker.CircuitBreaker(fail_max=5)
    purg_factory = purgatory.AsyncCircuitBreakerFactory()
    purg_async = purg_factory("bench")(af)
    plain, guarded = Plain(), GuardedNode()

    async def purg_ctx() -> int:
        async with await purg_factory.get_breaker("bench-ctx"):
            return await af(1)

    table = Table("breaker", "circuit breaker, closed-state happy path (ns per call)")

    bare = ts(lambda: f(1))
    sync_cases = [
        ("ours: breaker.call(f, x), consecutive mode (default)",
         ts(lambda: default.call(f, 1)), "<= 500 ns added"),
        ("ours: breaker.call(f, x), rate mode, count window",
         ts(lambda: rate.call(f, 1)), "<= 1000 ns added"),
        ("ours: breaker.call(f, x), rate mode, time window",
         ts(lambda: rate_time.call(f, 1)), "<= 1000 ns added"),
        ("ours: breaker.call(f, x), consecutive + slow-call timing",
         ts(lambda: slow.call(f, 1)), ""),
        ("ours: breaker.call(f, x), 3600 s time window, each call after an idle hour",
         ts(lambda: idle.call(f, 1)), ""),
        ("pybreaker: CircuitBreaker.call(f, x)", ts(lambda: pyb.call(f, 1)), ""),
        ("pybreaker: @CircuitBreaker decorator", ts(lambda: pyb_deco(1)), ""),
        ("purgatory: SyncCircuitBreakerFactory decorator", ts(lambda: purg_sync(1)), ""),
    ]
    abare = ta(lambda: af(1))
    async_cases = [
        ("ours: await breaker.acall(af, x), consecutive mode",
         ta(lambda: default.acall(af, 1)), "<= 500 ns added"),
        ("ours: await breaker.acall(af, x), rate mode, count window",
         ta(lambda: rate.acall(af, 1)), "<= 1000 ns added"),
        ("aiobreaker: await CircuitBreaker.call_async(af, x)",
         ta(lambda: aiob.call_async(af, 1)), ""),
        ("purgatory: AsyncCircuitBreakerFactory decorator", ta(lambda: purg_async(1)), ""),
        ("purgatory: async with await factory.get_breaker(name)", ta(purg_ctx), ""),
    ]
    plain_process = ta(lambda: plain.process(1))
    guarded_process = ta(lambda: guarded.process(1))

    for title, base, cases, peer_label in (
            ("sync", bare, sync_cases, "pybreaker: CircuitBreaker.call(f, x)"),
            ("async", abare, async_cases, "aiobreaker: await CircuitBreaker.call_async(af, x)")):
        table.add(f"bare {title} call", base, baseline=base, note="baseline")
        peer_added = {label: t for label, t, _ in cases}[peer_label] - base
        for label, seconds, target in cases:
            added = seconds - base
            note = f"+{added * 1e9:,.0f} ns"
            if label.startswith("ours") and peer_added > 0:
                note += f"; {peer_label.split(':')[0]} adds {peer_added / max(added, 1e-12):.1f}x"
            table.add(f"{title}: {label}", seconds, baseline=base, target=target, note=note)
    table.add("node.process(x), metrics + health_check node", plain_process,
              baseline=plain_process, note="baseline (metrics' own process guard included)")
    table.add("node.process(x), same node + circuit_breaker guard", guarded_process,
              baseline=plain_process, target="<= 500 ns added",
              note=f"+{(guarded_process - plain_process) * 1e9:,.0f} ns (the breaker's guard)")
    table.finish(args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
