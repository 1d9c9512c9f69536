"""Happy-path cost of the bulkhead and timeout guards against their peers, in one run.

==============================================  ================================================
ours                                            peers
==============================================  ================================================
``async with bulkhead`` / ``bulkhead.run``      ``async with asyncio.Semaphore(25)`` (the floor)
``_guard_bulkhead`` (what ``process()`` pays)   hyx ``@bulkhead(25, 100)``
``with bulkhead`` (threads)                     ``with threading.BoundedSemaphore(25)``
``timeout_policy.run(af)`` / ``with_timeout``   ``async with asyncio.timeout(10)``,
``_guard_timeout`` (per-attempt, on process())  ``asyncio.wait_for(af(), 10)``, hyx ``@timeout(10)``
``node.process`` with retry+timeout+bulkhead    the bare ``process`` body
``_guard_sync_bulkhead`` (a sync ``process``)   ``with threading.BoundedSemaphore(25)``
``run_sync`` / ``_guard_sync_timeout``          ``ThreadPoolExecutor(32).submit(f).result(10)``,
                                                a new thread per call (what run_sync did before)
==============================================  ================================================

Every case is called through a zero-argument lambda and awaited in one event loop. The ratio
column is the case / the row named in its note (the peer it is judged against). Targets: the
async bulkhead <= 1.2x a bare ``asyncio.Semaphore``; the per-attempt timeout adds at most what
``asyncio.timeout`` adds (~6 µs on the reference machine; cheaper is welcome).

Run: ``python benchmarks/bench_guards.py`` (``--smoke`` for a quick check that it runs).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Table, parse_args, time_async, time_sync  # noqa: E402

from onex_compose import NodeEffect, compose  # noqa: E402
from onex_compose.capabilities.bulkhead import Bulkhead  # noqa: E402
from onex_compose.capabilities.timeout import TimeoutPolicy  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)
import hyx.bulkhead  # noqa: E402
import hyx.timeout  # noqa: E402


async def af(x: int) -> int:
    return x


class Body(NodeEffect):
    async def process(self, x: int) -> int:
        return x


class InLoop:
    """A peer that must be built inside the running loop (hyx captures the loop when applied)."""

    def __init__(self, build: Any) -> None:
        self.build = build
        self.fn: Any = None
        self.loop: Any = None

    def __call__(self) -> Any:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            self.fn, self.loop = self.build(), loop
        return self.fn(1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    number = 2_000 if args.smoke else 100_000
    repeats = 2 if args.smoke else args.repeats

    def ta(fn: Any) -> float:
        return time_async(fn, number=number, repeats=repeats)

    def ts(fn: Any) -> float:
        return time_sync(fn, number=number, repeats=repeats)

    table = Table("guards", "bulkhead and timeout guards vs peers (ns per call)")
    bare = ta(lambda: af(1))
    table.add("bare async call await af()", bare, baseline=bare, note="baseline")

    # -- bulkhead ------------------------------------------------------------------------------
    sem = asyncio.Semaphore(25)
    bulkhead = Bulkhead({"max_concurrent": 25})

    async def with_sem() -> int:
        async with sem:
            return await af(1)

    async def with_bulkhead() -> int:
        async with bulkhead:
            return await af(1)

    guarded_node = compose(Body, ["bulkhead"])(capability_config={"bulkhead": {"max_concurrent": 25}})
    guard = guarded_node._guard_bulkhead(af)
    hyx_bulkhead = InLoop(lambda: hyx.bulkhead.bulkhead(25, 100)(af))

    t_sem = ta(with_sem)
    t_bh = ta(with_bulkhead)
    table.add("asyncio.Semaphore(25): async with sem: await af()", t_sem, baseline=t_sem,
              note=f"floor; +{(t_sem - bare) * 1e9:,.0f} ns")
    table.add("ours: async with bulkhead: await af()", t_bh, baseline=t_sem,
              target="<= 1.2x Semaphore", note=f"vs Semaphore; +{(t_bh - bare) * 1e9:,.0f} ns")
    t = ta(lambda: bulkhead.run(af, 1))
    table.add("ours: await bulkhead.run(af, x)", t, baseline=t_sem,
              note=f"vs Semaphore; +{(t - bare) * 1e9:,.0f} ns")
    t = ta(lambda: guard(1))
    table.add("ours: _guard_bulkhead(af)(x) (process() pipeline hook)", t, baseline=t_sem,
              note=f"vs Semaphore; +{(t - bare) * 1e9:,.0f} ns")
    t_hyx = ta(hyx_bulkhead)
    table.add("hyx: @bulkhead(25, 100)", t_hyx, baseline=t_sem,
              note=f"vs Semaphore; +{(t_hyx - bare) * 1e9:,.0f} ns")

    sync_bare = ts(lambda: None)
    bsem = threading.BoundedSemaphore(25)

    def with_bsem() -> None:
        with bsem:
            pass

    def with_sync_bulkhead() -> None:
        with bulkhead:
            pass

    t_bsem = ts(with_bsem)
    table.add("threading.BoundedSemaphore(25): with sem: pass", t_bsem, baseline=t_bsem,
              note=f"floor (sync); +{(t_bsem - sync_bare) * 1e9:,.0f} ns")
    t = ts(with_sync_bulkhead)
    table.add("ours: with bulkhead: pass (threads)", t, baseline=t_bsem,
              note=f"vs BoundedSemaphore; +{(t - sync_bare) * 1e9:,.0f} ns")
    sguard = guarded_node._guard_sync_bulkhead(abs)
    t = ts(lambda: sguard(1))
    table.add("ours: _guard_sync_bulkhead(f)(x) (sync process() hook)", t, baseline=t_bsem,
              note=f"vs BoundedSemaphore; +{(t - sync_bare) * 1e9:,.0f} ns")

    # -- timeout -------------------------------------------------------------------------------
    async def with_asyncio_timeout() -> int:
        async with asyncio.timeout(10):
            return await af(1)

    policy = TimeoutPolicy({"timeout": 10})
    tnode = compose(Body, ["timeout"])(capability_config={"timeout": {"timeout": 10}})
    tguard = tnode._guard_timeout(af)
    hyx_timeout = InLoop(lambda: hyx.timeout.timeout(10)(af))

    t_ato = ta(with_asyncio_timeout)
    ato_added = t_ato - bare
    table.add("asyncio.timeout(10): async with: await af()", t_ato, baseline=t_ato,
              note=f"the bar; +{ato_added * 1e9:,.0f} ns")
    t = ta(lambda: asyncio.wait_for(af(1), 10))
    table.add("asyncio.wait_for(af(), 10)", t, baseline=t_ato,
              note=f"vs asyncio.timeout; +{(t - bare) * 1e9:,.0f} ns")
    t = ta(hyx_timeout)
    table.add("hyx: @timeout(10)", t, baseline=t_ato,
              note=f"vs asyncio.timeout; +{(t - bare) * 1e9:,.0f} ns")
    ours_timeout = []
    for label, fn in (("ours: await timeout_policy.run(af, (x,))", lambda: policy.run(af, (1,))),
                      ("ours: await node.with_timeout(af, x)", lambda: tnode.with_timeout(af, 1)),
                      ("ours: _guard_timeout(af)(x) (per-attempt, process() hook)",
                       lambda: tguard(1))):
        t = ta(fn)
        ours_timeout.append(t - bare)
        table.add(label, t, baseline=t_ato,
                  target="added <= asyncio.timeout's" if "guard" in label else "",
                  note=f"vs asyncio.timeout; +{(t - bare) * 1e9:,.0f} ns "
                       f"({(t - bare) / ato_added:.2f}x its added cost)")

    # -- timeout: plain functions in worker threads ---------------------------------------------
    def ts_threads(fn: Any) -> float:  # a thread handoff costs tens of µs: fewer iterations
        return time_sync(fn, number=max(200, number // 20), repeats=repeats)

    executor = ThreadPoolExecutor(32)

    def new_thread() -> None:
        box: list[int] = []
        thread = threading.Thread(target=lambda: box.append(abs(1)), daemon=True)
        thread.start()
        thread.join(10)

    sguard_timeout = tnode._guard_sync_timeout(abs)
    t_pool = ts_threads(lambda: executor.submit(abs, 1).result(10))
    table.add("ThreadPoolExecutor(32): submit(f, x).result(10)", t_pool, baseline=t_pool,
              note="the bar for a thread handoff (unbounded queue, joined at exit)")
    t = ts_threads(new_thread)
    table.add("a new daemon thread per call (run_sync before)", t, baseline=t_pool,
              note="vs ThreadPoolExecutor")
    t = ts_threads(lambda: policy.run_sync(abs, (1,)))
    table.add("ours: timeout_policy.run_sync(f, (x,)) (bounded workers)", t, baseline=t_pool,
              note="vs ThreadPoolExecutor")
    t = ts_threads(lambda: sguard_timeout(1))
    table.add("ours: _guard_sync_timeout(f)(x) (sync process() hook)", t, baseline=t_pool,
              note="vs ThreadPoolExecutor")
    executor.shutdown()

    # -- the three guards on process() ---------------------------------------------------------
    stack = compose(Body, ["retry", "timeout", "bulkhead"])(  # EFFECT: retry opts in
        capability_config={"retry": {"guard_process": True}})
    raw = Body()
    t_raw = ta(lambda: raw.process(1))
    t_stack = ta(lambda: stack.process(1))
    table.add("bare Body().process(x)", t_raw, baseline=t_raw, note="baseline for the stack")
    table.add(f"node.process(x) through {' -> '.join(stack.__onex_pipeline__)}", t_stack,
              baseline=t_raw, note=f"+{(t_stack - t_raw) * 1e9:,.0f} ns for the whole pipeline")

    bh_ratio = t_bh / t_sem
    print(f"async bulkhead: {bh_ratio:.2f}x asyncio.Semaphore "
          f"({'meets' if bh_ratio <= 1.2 else 'MISSES'} <= 1.2x); per-attempt timeout guard adds "
          f"{ours_timeout[-1] * 1e9:,.0f} ns vs asyncio.timeout's {ato_added * 1e9:,.0f} ns "
          f"({'meets' if ours_timeout[-1] <= ato_added else 'MISSES'} the target)")
    table.finish(args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
