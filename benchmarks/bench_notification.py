"""Cost of ``notify()`` to a callback channel (no I/O) against apprise's custom ``@notify`` hook.

==============================================  ================================================
ours                                            peer
==============================================  ================================================
``await node.notifier.notify(...)``: routing    ``Apprise.notify`` (sync) and
(three routes), dedup (a distinct key per       ``await Apprise.async_notify`` to a custom
call, 300 s window), a per-channel GCRA rate    ``@notify(on="bench")`` hook plugin that does
limit, metrics, then an async callback           nothing
==============================================  ================================================

Target: <= 20 µs per notification and at most 0.1x apprise (247 µs sync / 340 µs async on
the reference machine).

Run: ``python benchmarks/bench_notification.py`` (``--smoke`` for a quick check that it runs).
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Table, parse_args, time_sync  # noqa: E402

from onex_compose import NodeEffect, compose  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)
import apprise  # noqa: E402
from apprise.decorators import notify as apprise_notify  # noqa: E402


@apprise_notify(on="onexbench")
def _hook(body: str, title: str, notify_type: str, *args: Any, **kwargs: Any) -> bool:
    return True


def build() -> Any:
    cfg = {"namespace": "bench-notification",
           "channels": {"log": {"type": "log"}, "pager": {"type": "callback"},
                        "chat": {"type": "callback"}},
           "routes": [{"match": {"tags_all": ["never"]}, "channels": ["chat"]},
                      {"match": {"title_regex": "^zzz"}, "channels": ["log"]},
                      {"match": {"min_severity": "error"}, "channels": ["pager"]}],
           "channel_limits": {"pager": {"limit": 10**12, "period": 1.0}},
           "dedup_window": 300.0}
    node = compose(NodeEffect, ["notification"])(node_id="bench",
                                                 capability_config={"notification": cfg})

    @node.notifier.channel("pager")
    async def pager(n: Any) -> None:
        return None

    return node


def time_ours(node: Any, number: int, repeats: int) -> float:
    keys = (f"k{i}" for i in itertools.count())
    notify = node.notifier.notify

    async def run() -> float:
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(number):
                r = await notify("DB down", "primary unreachable", severity="critical",
                                 tags=("db",), dedup_key=next(keys))
            samples.append((time.perf_counter() - start) / number)
        assert r.channels == {"pager": "sent"}, r
        return statistics.median(samples)

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n = 500 if args.smoke else 20_000
    peer_n = 100 if args.smoke else 2_000
    repeats = 2 if args.smoke else args.repeats
    node = build()
    ours = time_ours(node, n, repeats)

    ap = apprise.Apprise()
    ap.add("onexbench://")
    sync_peer = time_sync(lambda: ap.notify(body="primary unreachable", title="DB down"),
                          number=peer_n, repeats=repeats)

    async def async_peer() -> float:
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(peer_n):
                await ap.async_notify(body="primary unreachable", title="DB down")
            samples.append((time.perf_counter() - start) / peer_n)
        return statistics.median(samples)

    apeer = asyncio.run(async_peer())
    table = Table("notification", "notify() to a callback channel (routing, dedup, rate limit)")
    table.add("apprise Apprise.notify -> @notify hook (sync)", sync_peer)
    table.add("apprise await Apprise.async_notify -> @notify hook", apeer)
    table.add("await node.notifier.notify(...) -> callback", ours, baseline=sync_peer,
              target="<= 20 µs, <= 0.1x apprise",
              note=f"{ours / apeer:.3f}x async apprise")
    table.finish(args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
