"""Cost of an admitted request: our GCRA limiter against limits and aiolimiter, in one run.

Every request is admitted (limits far above the request rate), so the numbers are the
bookkeeping of an allowed hit:

==============================================  ================================================
ours                                            peers
==============================================  ================================================
``limiter.hit(key)`` (memory store), one key    ``limits`` ``MovingWindowRateLimiter.hit``,
and keys rotating every 1,000 hits              ``FixedWindowRateLimiter.hit``,
                                                ``SlidingWindowCounterRateLimiter.hit`` on
                                                ``MemoryStorage`` (keys rotating every 1,000
                                                hits, so a moving window holds <= 1,000 entries,
                                                as in the reference measurement)
``await limiter.acquire(key)``                  ``await aiolimiter.AsyncLimiter.acquire()``,
the composed node's guarded ``process()``       ``async with AsyncLimiter``
==============================================  ================================================

"ratio" is the case / limits' moving window (sync) or aiolimiter's ``acquire`` (async); the note
gives the nanoseconds of the hit itself (the case minus the cost of calling an empty lambda).
Target: ours <= 500 ns per hit (limits' moving window ~4.6 µs, fixed window ~4 µs on the
reference machine).

Run: ``python benchmarks/bench_ratelimit.py`` (``--smoke`` for a quick check that it runs).
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
from onex_compose.capabilities.rate_limiting import RateLimiter  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)
import aiolimiter  # noqa: E402
from limits import parse, storage, strategies  # noqa: E402

HUGE = 10**12


def rotating_keys(count: int, block: int = 1_000) -> itertools.cycle[str]:
    return itertools.cycle([f"key-{i}" for i in range(count) for _ in range(block)])


class Plain(compose(NodeCompute, ["metrics"])):  # type: ignore[misc]
    async def process(self, input_data: Any) -> Any:
        return input_data


class Limited(compose(NodeCompute, ["rate_limiting"])):  # type: ignore[misc]
    async def process(self, input_data: Any) -> Any:
        return input_data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n = 2_000 if args.smoke else 200_000
    slow_n = 1_000 if args.smoke else 50_000
    repeats = 2 if args.smoke else args.repeats
    distinct = max(2, (max(n, slow_n) * (repeats + 1)) // 1_000 + 1)

    def ts(fn: Any, number: int = n) -> float:
        return time_sync(fn, number=number, repeats=repeats)

    def ta(fn: Any, number: int = n) -> float:
        return time_async(fn, number=number, repeats=repeats)

    ours = RateLimiter({"limit": HUGE, "period": 1.0})
    ours_keys = rotating_keys(distinct)
    limit = parse(f"{HUGE}/second")
    mem = storage.MemoryStorage()
    moving = strategies.MovingWindowRateLimiter(mem)
    fixed = strategies.FixedWindowRateLimiter(mem)
    sliding = strategies.SlidingWindowCounterRateLimiter(mem)
    mw_keys, fw_keys, sw_keys = (rotating_keys(distinct) for _ in range(3))
    # aiolimiter binds to the first loop that uses it: one instance per timed case (one loop each)
    aio, aio_cm = aiolimiter.AsyncLimiter(HUGE, 1), aiolimiter.AsyncLimiter(HUGE, 1)
    plain = Plain()
    limited = Limited(capability_config={"rate_limiting": {"limit": HUGE}})

    async def aio_ctx() -> None:
        async with aio_cm:
            return

    table = Table("ratelimit", "rate limiter, admitted request (ns per call)")
    empty = ts(lambda: None)
    sync_cases = [
        ("ours: limiter.hit(key), one key", ts(lambda: ours.hit("k")), "<= 500 ns"),
        ("ours: limiter.hit(key), keys rotating every 1,000 hits",
         ts(lambda: ours.hit(next(ours_keys))), "<= 500 ns"),
        ("ours: limiter.check(key) (peek)", ts(lambda: ours.check("k")), ""),
        ("limits: MovingWindowRateLimiter.hit, <= 1,000 entries/key",
         ts(lambda: moving.hit(limit, next(mw_keys)), slow_n), ""),
        ("limits: FixedWindowRateLimiter.hit", ts(lambda: fixed.hit(limit, next(fw_keys)),
                                                  slow_n), ""),
        ("limits: SlidingWindowCounterRateLimiter.hit",
         ts(lambda: sliding.hit(limit, next(sw_keys)), slow_n), ""),
    ]
    aempty_coro = ta(_anone)
    async_cases = [
        ("ours: await limiter.acquire(key)", ta(lambda: ours.acquire("k")), "<= 500 ns"),
        ("aiolimiter: await AsyncLimiter.acquire()", ta(aio.acquire), ""),
        ("aiolimiter: async with AsyncLimiter", ta(aio_ctx), ""),
    ]
    plain_process = ta(lambda: plain.process(1))
    limited_process = ta(lambda: limited.process(1))

    sync_ref = sync_cases[3][1] - empty
    table.add("empty lambda call (subtracted in the notes)", empty, baseline=sync_cases[3][1],
              note="baseline of the notes")
    for label, seconds, target in sync_cases:
        own = seconds - empty
        note = f"{own * 1e9:,.0f} ns per hit"
        if label.startswith("ours") and own > 0:
            note += f"; limits' moving window is {sync_ref / own:.1f}x"
        table.add(f"sync: {label}", seconds, baseline=sync_cases[3][1], target=target, note=note)
    async_ref = async_cases[1][1] - aempty_coro
    table.add("await of an empty coroutine (subtracted in the notes)", aempty_coro,
              baseline=async_cases[1][1], note="baseline of the notes")
    for label, seconds, target in async_cases:
        own = seconds - aempty_coro
        note = f"{own * 1e9:,.0f} ns per acquire"
        if label.startswith("ours") and own > 0:
            note += f"; aiolimiter is {async_ref / own:.1f}x"
        table.add(f"async: {label}", seconds, baseline=async_cases[1][1], target=target,
                  note=note)
    table.add("node.process(x), metrics node", plain_process, baseline=plain_process,
              note="baseline (metrics' own process guard included)")
    table.add("node.process(x), same node + rate_limiting guard", limited_process,
              baseline=plain_process,
              note=f"+{(limited_process - plain_process) * 1e9:,.0f} ns (the limiter's guard)")
    table.finish(args.smoke)
    return 0


async def _anone() -> None:
    return None


if __name__ == "__main__":
    raise SystemExit(main())
