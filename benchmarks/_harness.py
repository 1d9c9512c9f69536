"""Tiny benchmark harness shared by every ``benchmarks/bench_*.py``.

Each benchmark compares ratios measured in one process (ours against a hand-written equivalent
or a peer library), takes the median of several repeats (the machine is noisy), prints a table
and writes JSON to ``benchmarks/results/<name>.json``. ``--smoke`` runs a few iterations only,
so CI can check that no benchmark rots without spending time on numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
SMOKE_BUDGET = 10.0  # seconds a --smoke run may take (.ci/run allows 60 s, kills it after)
_STARTED = time.perf_counter()  # the harness is imported first thing by every benchmark


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="a few iterations, for CI")
    parser.add_argument("--repeats", type=int, default=7)
    return parser.parse_args(argv)


def time_sync(fn: Callable[[], Any], *, number: int, repeats: int,
              clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` runs of ``number`` calls (``clock``:
    see :func:`time_paired`)."""
    samples = []
    for _ in range(repeats):
        start = clock()
        for _ in range(number):
            fn()
        samples.append((clock() - start) / number)
    return statistics.median(samples)


def time_paired(ours: Callable[[], Any], peer: Callable[[], Any], *, number: int,
                repeats: int, clock: Callable[[], float] = time.perf_counter,
                ) -> tuple[float, float, float]:
    """Interleaved paired timing: ``(ours, peer, ratio)``, medians over ``repeats`` pairs.

    Each repeat times ``number`` calls of ``peer`` and then ``number`` calls of ``ours``
    back to back, so both see the same machine load; the ratio is the median of the
    per-pair ratios (steadier on a shared machine than the ratio of two medians taken
    minutes apart). The two seconds-per-call figures are the medians of each side.
    ``clock=time.thread_time`` counts only the CPU time of this thread: on a loaded machine
    it leaves out the time the process waited for a core, which wall-clock medians cannot.

    Example:
        >>> ours, peer, ratio = time_paired(lambda: sum(range(20)), lambda: sum(range(10)),
        ...                                 number=100, repeats=3)
        >>> ratio > 0
        True
    """
    mine_s, peer_s, ratios = [], [], []
    for _ in range(repeats):
        start = clock()
        for _ in range(number):
            peer()
        middle = clock()
        for _ in range(number):
            ours()
        end = clock()
        peer_s.append((middle - start) / number)
        mine_s.append((end - middle) / number)
        ratios.append((end - middle) / (middle - start))
    return statistics.median(mine_s), statistics.median(peer_s), statistics.median(ratios)


def time_async(fn: Callable[[], Awaitable[Any]], *, number: int, repeats: int) -> float:
    """Median seconds per awaited call of ``fn`` (run inside one event loop)."""

    async def run() -> float:
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(number):
                await fn()
            samples.append((time.perf_counter() - start) / number)
        return statistics.median(samples)

    return asyncio.run(run())


class Table:
    """Rows of (label, ns per call, ratio, target, note); prints and saves."""

    def __init__(self, name: str, title: str) -> None:
        self.name, self.title = name, title
        self.rows: list[dict[str, Any]] = []

    def add(self, label: str, seconds: float, *, baseline: float | None = None,
            target: str = "", note: str = "") -> None:
        self.rows.append({
            "label": label, "ns": round(seconds * 1e9, 1),
            "ratio": round(seconds / baseline, 3) if baseline else None,
            "target": target, "note": note,
        })

    def render(self) -> str:
        head = f"| {'case':<58} | {'ns/call':>10} | {'ratio':>7} | target | note |"
        sep = "|" + "-" * 60 + "|" + "-" * 12 + "|" + "-" * 9 + "|---|---|"
        lines = [f"### {self.title}", "", head, sep]
        for r in self.rows:
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else ""
            lines.append(f"| {r['label']:<58} | {r['ns']:>10.1f} | {ratio:>7} | {r['target']} "
                         f"| {r['note']} |")
        return "\n".join(lines)

    def finish(self, smoke: bool) -> None:
        print(self.render())
        if smoke:  # CI keeps the smoke runs short: report, never fail
            took = time.perf_counter() - _STARTED
            print(f"\n(smoke run: {took:.1f} s, budget {SMOKE_BUDGET:.0f} s)")
            if took > SMOKE_BUDGET:
                print(f"warning: {self.name} --smoke took {took:.1f} s, over its "
                      f"{SMOKE_BUDGET:.0f} s budget: shrink its smoke sizes", file=sys.stderr)
        RESULTS.mkdir(exist_ok=True)
        out = {"name": self.name, "title": self.title, "smoke": smoke,
               "python": sys.version.split()[0], "machine": platform.machine(), "rows": self.rows}
        (RESULTS / f"{self.name}{'.smoke' if smoke else ''}.json").write_text(json.dumps(out, indent=2))
