"""Per-call cost of the metrics facility against prometheus_client used directly.

In one process, each operation of ``self.metrics`` (memory backend, the default) is timed next
to the prometheus_client call people write today, on a private ``CollectorRegistry``:

====================================  ==============================================
ours                                  prometheus_client
====================================  ==============================================
``m.increment("hits")``               ``Counter.inc()``
``m.increment("req", labels={...})``  ``Counter.labels(method, status).inc()``
``bound()`` (``m.bind_counter``)      ``child.inc()`` (child = ``Counter.labels(...)``)
``with m.timer("t"): pass``           ``with Histogram.time(): pass``
``m.gauge("g", 3.0)``                 ``Gauge.set(3.0)``
``m.histogram("h", 0.042)``           ``Histogram.observe(0.042)``
====================================  ==============================================

Every case is called through a zero-argument lambda (the same overhead on both sides); the
``ns/call`` column includes it, the ratio is ours / prometheus_client. Targets (from the
design): increment <= 500 ns, labelled increment <= 1000 ns, timer <= 1500 ns. The
``backend: prometheus`` mirror (ours + prometheus_client on every call) is shown for reference.

Run: ``python benchmarks/bench_metrics.py`` (``--smoke`` for a quick check that it runs).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import prometheus_client  # noqa: E402
from _harness import Table, parse_args, time_sync  # noqa: E402

from onex_compose.capabilities.metrics import MetricsConfig, build_metrics  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    number = 2_000 if args.smoke else 200_000
    repeats = 3 if args.smoke else args.repeats

    reg = prometheus_client.CollectorRegistry()
    counter = prometheus_client.Counter("hits", "hits", registry=reg)
    labelled = prometheus_client.Counter("req", "req", ["method", "status"], registry=reg)
    hist = prometheus_client.Histogram("took", "took", registry=reg)
    gauge = prometheus_client.Gauge("depth", "depth", registry=reg)

    ours = build_metrics(MetricsConfig())
    mirror = build_metrics(MetricsConfig(backend="prometheus"))
    labels = {"method": "GET", "status": "200"}
    bound = ours.bind_counter("req", labels=labels)  # the hot-path handle (pre-resolved key)
    child = labelled.labels("GET", "200")

    def bare() -> None:
        return None

    def t_ours() -> None:
        with ours.timer("took"):
            pass

    def t_prom() -> None:
        with hist.time():
            pass

    cases = [
        # (label, ours, peer, target ns)
        ("increment() vs Counter.inc()",
         lambda: ours.increment("hits"), counter.inc, 500),
        ("increment(labels=2) vs Counter.labels(m, s).inc()",
         lambda: ours.increment("req", labels=labels),
         lambda: labelled.labels("GET", "200").inc(), 1000),
        ("bind_counter(labels=2)() vs Counter.labels(m, s) child.inc()",
         bound, child.inc, None),
        ("with timer() vs with Histogram.time()", t_ours, t_prom, 1500),
        ("gauge() vs Gauge.set()", lambda: ours.gauge("depth", 3.0), lambda: gauge.set(3.0),
         None),
        ("histogram() vs Histogram.observe()", lambda: ours.histogram("obs", 0.042),
         lambda: hist.observe(0.042), None),
    ]

    table = Table("metrics", "Metrics: per-call cost vs prometheus_client (median of repeats)")
    base = time_sync(bare, number=number, repeats=repeats)
    table.add("baseline: empty function call", base, note="included in every row")
    failed = []
    peer_times = {}
    for label, mine, peer, target in cases:
        t_peer = peer_times[label] = time_sync(peer, number=number, repeats=repeats)
        t_mine = time_sync(mine, number=number, repeats=repeats)
        table.add(f"prometheus_client: {label.split(' vs ')[1]}", t_peer)
        verdict = ""
        if target is not None:
            ok = t_mine * 1e9 <= target
            verdict = "meets target" if ok else "MISSES target"
            if not ok:
                failed.append(label)
        table.add(f"ours: {label.split(' vs ')[0]}", t_mine, baseline=t_peer,
                  target=f"<= {target} ns" if target else "", note=verdict)
    t_mirror = time_sync(lambda: mirror.increment("req", labels=labels), number=number,
                         repeats=repeats)
    table.add("ours, backend: prometheus: increment(labels=2)", t_mirror,
              baseline=peer_times[cases[1][0]], note="mirror: ours + a pre-bound prometheus child")
    table.finish(args.smoke)
    if failed and not args.smoke:
        print(f"targets missed: {', '.join(failed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
