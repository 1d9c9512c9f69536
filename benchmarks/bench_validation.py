"""Per-call overhead of the validation guard against a hand-written ``model_validate`` in process().

=================================================  =============================================
ours                                               peer
=================================================  =============================================
``process(self, data: Order3)`` guarded by         ``Order3.model_validate(data)`` written inside
validation (input only: the peer checks no output)  a ``process()`` with the same pipeline
the same, input and output (``-> int``) checked    (the same peer, for context)
validation composed, both directions off           the same node without validation
=================================================  =============================================

Each case is one ``node.process(data)`` call through a zero-argument lambda, sync (a plain
``def process``) and async (awaited in one loop). The model has three fields (``sku: str``,
``qty: int``, ``price: float``). validation requires metrics; the metrics guard is left in the
chain of every node compared (``instrument_process: false``, so its link is a pass-through),
the hand-written peer and the "both off" baseline included, so each ratio isolates what
validation adds; a row without any pipeline is shown for context (the pipeline itself, a
context-variable set/reset and one link, is the same for every guard capability).
Targets (issue 10): guard <= 1.1x the hand-written version + 0.3 µs; both off <= 0.1 µs added.

Run: ``python benchmarks/bench_validation.py`` (``--smoke`` for a quick check that it runs).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Table, parse_args, time_async, time_sync  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from onex_compose import NodeCompute, compose  # noqa: E402


class Order3(BaseModel):
    sku: str
    qty: int
    price: float


DATA = {"sku": "a-1", "qty": 3, "price": 9.5}


class HandSync(NodeCompute):
    def process(self, data: Any) -> int:
        return Order3.model_validate(data).qty


class GuardedSync(NodeCompute):
    def process(self, data: Order3) -> int:
        return data.qty


class PlainSync(NodeCompute):
    def process(self, data: Order3) -> int:
        return 3  # the "both off" rows: the input stays a dict


class PlainAsync(NodeCompute):
    async def process(self, data: Order3) -> int:
        return 3


class HandAsync(NodeCompute):
    async def process(self, data: Any) -> int:
        return Order3.model_validate(data).qty


class GuardedAsync(NodeCompute):
    async def process(self, data: Order3) -> int:
        return data.qty


QUIET = {"metrics": {"instrument_process": False}}


def nodes(guarded: type, hand: type, plain: type) -> dict[str, Any]:
    with_validation = compose(guarded, ["validation"])
    return {
        "hand_bare": hand(),
        "hand": compose(hand, ["metrics"])(capability_config=QUIET),
        "input": with_validation(capability_config={
            **QUIET, "validation": {"validate_output": False}}),
        "both": with_validation(capability_config=QUIET),
        "off": compose(plain, ["validation"])(capability_config={
            **QUIET, "validation": {"validate_input": False, "validate_output": False}}),
        "metrics_only": compose(plain, ["metrics"])(capability_config=QUIET),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    number = 2_000 if args.smoke else 20_000
    repeats = 3 if args.smoke else max(args.repeats, 15)
    table = Table("validation", "Validation guard: per-call cost vs hand-written model_validate "
                                "(median of repeats)")
    missed = []

    s = nodes(GuardedSync, HandSync, PlainSync)
    a = nodes(GuardedAsync, HandAsync, PlainAsync)
    for kind, ns, timer in (("sync", s, time_sync), ("async", a, time_async)):
        def case(node: Any) -> Any:
            process = node.process
            return lambda: process(DATA)

        # interleaved rounds (every case once per round), median per case: on a busy machine
        # the load drifts during a run, and back-to-back cases would see different loads
        samples: dict[str, list[float]] = {name: [] for name in ns}
        for _ in range(repeats):
            for name, node in ns.items():
                samples[name].append(timer(case(node), number=number,  # type: ignore[operator]
                                           repeats=1))
        t = {name: statistics.median(values) for name, values in samples.items()}
        hand = t["hand"]
        table.add(f"{kind}: hand-written model_validate, no guard at all", t["hand_bare"],
                  note="context: a node without any pipeline")
        table.add(f"{kind}: hand-written Order3.model_validate in process()", hand,
                  note="the peer: same pipeline (metrics guard) as ours")
        limit = hand * 1.1 + 0.3e-6
        ok = t["input"] <= limit
        missed += [] if ok else [f"{kind} input"]
        table.add(f"{kind}: validation guard, input", t["input"], baseline=hand,
                  target="<= 1.1x + 0.3 us",
                  note=("meets target" if ok else "MISSES target")
                  + f" (+{(t['input'] - hand) * 1e9:.0f} ns)")
        table.add(f"{kind}: validation guard, input + output", t["both"], baseline=hand,
                  note=f"+{(t['both'] - hand) * 1e9:.0f} ns vs hand-written input only")
        base = t["metrics_only"]
        table.add(f"{kind}: same node without validation (metrics guard)", base)
        added = t["off"] - base
        ok = added <= 0.1e-6
        missed += [] if ok else [f"{kind} off"]
        table.add(f"{kind}: validation composed, both directions off", t["off"], baseline=base,
                  target="<= +0.1 us",
                  note=("meets target" if ok else "MISSES target") + f" ({added * 1e9:+.0f} ns)")
    table.finish(args.smoke)
    if missed and not args.smoke:
        print(f"targets missed: {', '.join(missed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
