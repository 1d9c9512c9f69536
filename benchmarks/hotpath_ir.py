"""Instructions per call of the landed capabilities' hot paths, counted with callgrind.

Wall-clock timings on a shared two-core machine move by more than the 0.1 µs this is meant to
detect; instruction counts do not. Each case runs its hot path ``N`` times after a warm-up, in
a fresh interpreter under ``valgrind --tool=callgrind``; the per-call count is
``(Ir(N2) - Ir(N1)) / (N2 - N1)``, so start-up, imports and set-up cancel out.

The tracing retrofit (issue 11) is checked with it: run once on the tree before the retrofit
and once after (``PYTHONPATH`` pointing at a copy of the old tree, see ``--pythonpath``), and
compare. With tracing not composed the counts must not move (no import, no extra call).

``--time`` measures CPU time per call instead (``time.process_time``, median of 5 repeats, in
a fresh interpreter per case): unlike wall-clock time it does not grow with the machine's load,
so before/after runs interleaved a few times compare well.

Run:
    python benchmarks/hotpath_ir.py                       # every case, a table
    python benchmarks/hotpath_ir.py --cases cache_get retry_process
    python benchmarks/hotpath_ir.py --pythonpath /tmp/old/pkg --json before.json
    python benchmarks/hotpath_ir.py --time --pythonpath /tmp/old/pkg   # ns of CPU per call
    python benchmarks/hotpath_ir.py --run cache_get 1000  # one run, no valgrind (used inside)

An older tree for ``--pythonpath``: ``git archive <commit> | tar -x -C /tmp/old/src``, then
``/tmp/old/pkg/onex_compose`` = its ``onex_compose/`` with its ``capabilities/`` copied in as
``onex_compose/capabilities`` (the installed layout).

Not a ``bench_*.py``: CI's smoke run skips it (it needs valgrind and takes minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

AsyncCase = Callable[[], Awaitable[Any]]


def _cases() -> dict[str, tuple[Callable[[], Any], int, int]]:
    """name -> (builder returning a zero-argument call, N1, N2)."""
    return {
        "cache_get": (_cache_get, 1_000, 6_000),
        "cache_set": (_cache_set, 1_000, 6_000),
        "cached_method": (_cached_method, 1_000, 6_000),
        "retry_process": (_retry_process, 1_000, 6_000),
        "retry_with_retry": (_retry_with_retry, 1_000, 6_000),
        "breaker_process": (_breaker_process, 1_000, 6_000),
        "breaker_acall": (_breaker_acall, 1_000, 6_000),
        "ratelimit_process": (_ratelimit_process, 1_000, 6_000),
        "ratelimit_hit": (_ratelimit_hit, 1_000, 6_000),
        "bulkhead_process": (_bulkhead_process, 1_000, 6_000),
        "timeout_process": (_timeout_process, 1_000, 6_000),
        "stack_process": (_stack_process, 1_000, 6_000),
        "db_fetch_val": (_db_fetch_val, 100, 600),
        "db_tx_execute": (_db_tx_execute, 100, 600),
    }


# -- the cases: each returns (call, is_async) after its set-up ---------------------------------


def _compute(caps: list[str], config: dict[str, Any] | None = None) -> Any:
    from onex_compose import NodeCompute, compose

    class Body(compose(NodeCompute, caps)):  # type: ignore[misc]
        async def process(self, x: Any) -> Any:
            return x

    return Body(capability_config=config or {})


async def _af(x: int) -> int:
    return x


def _cache_get() -> AsyncCase:
    node = _compute(["caching"])
    asyncio.run(node.cache.set("k", {"v": 1}))
    return lambda: node.cache.get("k")


def _cache_set() -> AsyncCase:
    node = _compute(["caching"])
    value = {"v": 1}
    return lambda: node.cache.set("k", value)


def _cached_method() -> AsyncCase:
    from onex_compose import NodeCompute, compose
    from onex_compose.capabilities.caching import cached

    class Service(compose(NodeCompute, ["caching"])):  # type: ignore[misc]
        @cached(ttl=600)
        async def lookup(self, x: int) -> int:
            return x

    node = Service()
    return lambda: node.lookup(1)


def _retry_process() -> AsyncCase:
    node = _compute(["retry"], {"retry": {"max_attempts": 3}})
    return lambda: node.process(1)


def _retry_with_retry() -> AsyncCase:
    node = _compute(["retry"], {"retry": {"max_attempts": 3}})
    return lambda: node.with_retry(_af, 1)


def _breaker_process() -> AsyncCase:
    node = _compute(["circuit_breaker"])
    return lambda: node.process(1)


def _breaker_acall() -> AsyncCase:
    node = _compute(["circuit_breaker"])
    breaker = node.circuit_breaker("db")
    return lambda: breaker.acall(_af, 1)


def _ratelimit_process() -> AsyncCase:
    node = _compute(["rate_limiting"], {"rate_limiting": {"limit": 1_000_000_000}})
    return lambda: node.process(1)


def _ratelimit_hit() -> Callable[[], Any]:
    node = _compute(["rate_limiting"], {"rate_limiting": {"limit": 1_000_000_000}})
    limiter = node.rate_limiter
    return lambda: limiter.hit("k")


def _bulkhead_process() -> AsyncCase:
    node = _compute(["bulkhead"], {"bulkhead": {"max_concurrent": 25}})
    return lambda: node.process(1)


def _timeout_process() -> AsyncCase:
    node = _compute(["timeout"], {"timeout": {"timeout": 10}})
    return lambda: node.process(1)


def _stack_process() -> AsyncCase:
    from onex_compose import NodeEffect, compose

    class Worker(NodeEffect):
        async def process(self, x: int) -> int:
            return x + 1

    node = compose(Worker, ["retry", "circuit_breaker", "rate_limiting", "timeout", "bulkhead"])(
        capability_config={
            "retry": {"max_attempts": 3, "guard_process": True},
            "rate_limiting": {"limit": 1_000_000_000, "period": 1.0},
            "timeout": {"timeout": 5.0}, "bulkhead": {"max_concurrent": 100},
            "metrics": {"instrument_process": False}})
    return lambda: node.process(1)


def _db_node() -> Any:
    from onex_compose import NodeEffect, compose

    return compose(NodeEffect, ["database"])(
        capability_config={"database": {"namespace": f"ir{uuid.uuid4().hex[:6]}"}})


def _db_fetch_val() -> Any:
    node = _db_node()
    return ("db", node, lambda: node.db.fetch_val("SELECT 1"))


def _db_tx_execute() -> Any:
    node = _db_node()

    async def call() -> None:
        async with node.db.transaction() as tx:
            await tx.execute("INSERT INTO t (x) VALUES (1)")

    return ("db", node, call)


# -- running ----------------------------------------------------------------------------------


def run_one(name: str, n: int) -> None:
    """Set the case up, warm it up, then call it ``n`` times (what callgrind counts)."""
    build = _cases()[name][0]
    made = build()
    if isinstance(made, tuple):  # a database case: set-up and the loop share one event loop
        _, node, call = made

        async def main_db() -> None:
            await node.db.execute("CREATE TABLE t (x INTEGER)")
            for _ in range(50):
                await call()
            for _ in range(n):
                await call()
            await node.db.aclose()

        asyncio.run(main_db())
        return
    probe = made()
    if asyncio.iscoroutine(probe) or isinstance(probe, Awaitable):
        async def main() -> None:
            await probe
            for _ in range(200):
                await made()
            for _ in range(n):
                await made()

        asyncio.run(main())
    else:
        for _ in range(200):
            made()
        for _ in range(n):
            made()


def time_one(name: str, n: int, repeats: int = 5) -> float:
    """Median seconds of CPU per call of case ``name`` (after a warm-up), in this process."""
    import statistics
    import time

    build = _cases()[name][0]
    made = build()
    samples: list[float] = []

    async def timed(call: Callable[[], Any]) -> None:
        for _ in range(repeats):
            start = time.process_time()
            for _ in range(n):
                await call()
            samples.append((time.process_time() - start) / n)

    if isinstance(made, tuple):
        _, node, call = made

        async def main_db() -> None:
            await node.db.execute("CREATE TABLE t (x INTEGER)")
            for _ in range(50):
                await call()
            await timed(call)
            await node.db.aclose()

        asyncio.run(main_db())
        return statistics.median(samples)
    probe = made()
    if asyncio.iscoroutine(probe) or isinstance(probe, Awaitable):
        async def main() -> None:
            await probe
            for _ in range(500):
                await made()
            await timed(made)

        asyncio.run(main())
        return statistics.median(samples)
    for _ in range(500):
        made()
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(n):
            made()
        samples.append((time.process_time() - start) / n)
    return statistics.median(samples)


def _ns(name: str, pythonpath: str | None) -> float:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    n = _cases()[name][2] // 2 if name.startswith("db_") else 20_000
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, __file__, "--time-run", name, str(n)], env=env,
                              capture_output=True, text=True, check=False, cwd=tmp)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def _ir(name: str, n: int, pythonpath: str | None) -> int:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONHASHSEED"] = "0"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, __file__, "--run", name, str(n)],
            env=env, capture_output=True, text=True, check=False, cwd=tmp)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} n={n} failed:\n{proc.stderr[-3000:]}")
        match = re.search(r"Collected\s*:\s*(\d+)", proc.stderr)
        if match is None:
            raise RuntimeError(f"no instruction count for {name}:\n{proc.stderr[-2000:]}")
        return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", nargs=2, metavar=("CASE", "N"), help="one run, no valgrind")
    parser.add_argument("--time-run", nargs=2, metavar=("CASE", "N"),
                        help="print the CPU seconds per call of one case (used by --time)")
    parser.add_argument("--cases", nargs="*", help="cases to count (default: all)")
    parser.add_argument("--pythonpath", help="prepended to PYTHONPATH (an older tree)")
    parser.add_argument("--time", action="store_true",
                        help="ns of CPU time per call instead of instructions (no valgrind)")
    parser.add_argument("--json", help="write {case: instructions (or ns) per call} here")
    args = parser.parse_args(argv)
    if args.run:
        run_one(args.run[0], int(args.run[1]))
        return 0
    if args.time_run:
        print(time_one(args.time_run[0], int(args.time_run[1])))
        return 0
    cases = _cases()
    names = args.cases or list(cases)
    result: dict[str, float] = {}
    unit = "ns CPU per call" if args.time else "Ir per call"
    print(f"| {'case':<20} | {unit:>16} |")
    print(f"|{'-' * 22}|{'-' * 18}|")
    for name in names:
        if args.time:
            result[name] = round(_ns(name, args.pythonpath) * 1e9, 1)
        else:
            _, n1, n2 = cases[name]
            a, b = _ir(name, n1, args.pythonpath), _ir(name, n2, args.pythonpath)
            result[name] = round((b - a) / (n2 - n1), 1)
        print(f"| {name:<20} | {result[name]:>16,.1f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
