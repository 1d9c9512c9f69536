"""Happy-path cost of ``with_retry`` against tenacity and stamina, sync and async, in one run.

The call under test succeeds on its first attempt, so every nanosecond above the bare call is
the retry machinery itself:

==============================================  ================================================
ours                                            peers
==============================================  ================================================
``node.with_retry_sync(f, x)`` (composed node)  ``tenacity.Retrying(stop=3, wait=exp jitter,
``policy.run_sync(f, (x,))``                    retry=OSError)(f, x)``; ``@tenacity.retry(...)``
``@policy.wrap`` decorator                      (same policy); ``@stamina.retry(on=OSError,
                                                attempts=3)``
``await node.with_retry(af, x)`` (composed)     ``await tenacity.AsyncRetrying(...)(af, x)``;
``await policy.run(af, (x,))``                  ``@tenacity.retry`` on ``async def``;
``@policy.wrap`` on ``async def``               ``@stamina.retry`` on ``async def``
==============================================  ================================================

Every case is called through a zero-argument lambda (the same overhead for all of them); async
cases are awaited inside one event loop. "ratio" is the case / the bare call; the note gives the
added nanoseconds and how many times more tenacity adds. Targets: <= 1000 ns added sync and
<= 1500 ns added async (tenacity adds ~17 µs / ~38 µs on the reference machine).

Run: ``python benchmarks/bench_retry.py`` (``--smoke`` for a quick check that it runs).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Table, parse_args, time_async, time_sync  # noqa: E402

from onex_compose import NodeCompute, compose  # noqa: E402
from onex_compose.capabilities.retry import RetryPolicy  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)
import stamina  # noqa: E402
import tenacity  # noqa: E402


def f(x: int) -> int:
    return x


async def af(x: int) -> int:
    return x


def tenacity_kwargs() -> dict[str, Any]:
    return {"stop": tenacity.stop_after_attempt(3), "wait": tenacity.wait_exponential_jitter(),
            "retry": tenacity.retry_if_exception_type(OSError), "reraise": True}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fast_n = 2_000 if args.smoke else 200_000
    slow_n = 200 if args.smoke else 10_000  # tenacity and stamina are ~20-40 µs per call
    repeats = 2 if args.smoke else args.repeats

    def ts(fn: Any, n: int = fast_n) -> float:
        return time_sync(fn, number=n, repeats=repeats)

    def ta(fn: Any, n: int = fast_n) -> float:
        return time_async(fn, number=n, repeats=repeats)

    node = compose(NodeCompute, ["retry"])(capability_config={"retry": {"max_attempts": 3}})
    policy = RetryPolicy({"max_attempts": 3})
    wrapped = policy.wrap(f)
    awrapped = policy.wrap(af)

    ten_retrying = tenacity.Retrying(**tenacity_kwargs())
    ten_async = tenacity.AsyncRetrying(**tenacity_kwargs())
    ten_deco = tenacity.retry(**tenacity_kwargs())(f)
    ten_adeco = tenacity.retry(**tenacity_kwargs())(af)
    sta_deco = stamina.retry(on=OSError, attempts=3)(f)
    sta_adeco = stamina.retry(on=OSError, attempts=3)(af)

    table = Table("retry", "with_retry happy path vs tenacity and stamina (ns per call)")

    bare = ts(lambda: f(1))
    sync_cases = [
        ("ours: node.with_retry_sync(f, x) (composed node)",
         ts(lambda: node.with_retry_sync(f, 1)), "<= 1000 ns added"),
        ("ours: policy.run_sync(f, (x,))", ts(lambda: policy.run_sync(f, (1,))), ""),
        ("ours: @policy.wrap decorator", ts(lambda: wrapped(1)), ""),
        ("tenacity: Retrying(stop=3, wait=exp_jitter, retry=OSError)(f, x)",
         ts(lambda: ten_retrying(f, 1), slow_n), ""),
        ("tenacity: @retry(stop=3, wait=exp_jitter, retry=OSError)",
         ts(lambda: ten_deco(1), slow_n), ""),
        ("stamina: @retry(on=OSError, attempts=3)", ts(lambda: sta_deco(1), slow_n), ""),
    ]
    abare = ta(lambda: af(1))
    async_cases = [
        ("ours: await node.with_retry(af, x) (composed node)",
         ta(lambda: node.with_retry(af, 1)), "<= 1500 ns added"),
        ("ours: await policy.run(af, (x,))", ta(lambda: policy.run(af, (1,))), ""),
        ("ours: @policy.wrap on async def", ta(lambda: awrapped(1)), ""),
        ("tenacity: await AsyncRetrying(stop=3, wait=exp_jitter, retry=OSError)(af, x)",
         ta(lambda: ten_async(af, 1), slow_n), ""),
        ("tenacity: @retry(...) on async def", ta(lambda: ten_adeco(1), slow_n), ""),
        ("stamina: @retry(on=OSError, attempts=3) on async def",
         ta(lambda: sta_adeco(1), slow_n), ""),
    ]

    for title, base, cases, ten_label in (
            ("sync", bare, sync_cases, "tenacity: @retry(stop=3, wait=exp_jitter, retry=OSError)"),
            ("async", abare, async_cases, "tenacity: @retry(...) on async def")):
        table.add(f"bare {title} call", base, baseline=base, note="baseline")
        ours_added = cases[0][1] - base
        ten_added = {label: t for label, t, _ in cases}[ten_label] - base
        for label, seconds, target in cases:
            added = seconds - base
            note = f"+{added * 1e9:,.0f} ns"
            if label.startswith("ours") and ten_added > 0:
                note += f"; tenacity adds {ten_added / max(added, 1e-12):,.0f}x more"
            table.add(f"{title}: {label}", seconds, baseline=base, target=target, note=note)
        ok = ours_added * 1e9 <= (1000 if title == "sync" else 1500)
        print(f"{title}: ours adds {ours_added * 1e9:,.0f} ns per call "
              f"({'meets' if ok else 'MISSES'} the target); tenacity adds {ten_added * 1e9:,.0f} ns")
    table.finish(args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
