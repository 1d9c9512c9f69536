"""Start-up cost in a fresh interpreter: ``import onex_compose`` and the first composed instance.

Each row is the median over ``--repeats`` fresh ``python`` processes. Two times per row: the
wall time of the whole process (what a CLI user feels; includes interpreter start-up, shown in
its own row) and the time measured inside the child around the statement (what the library
adds). Targets from the design card: ``import onex_compose`` <= 150 ms (and it must not import
networkx: that is imported only when a cold compose needs it), and a fresh interpreter to the
first composed instance of ``NodeCompute`` + caching + metrics <= 350 ms (omnibase_core needs
555-700 ms to import one mixin).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Table, parse_args  # noqa: E402

from onex_compose import default_registry  # noqa: E402

PROBE = """
import json, sys, time
t0 = time.perf_counter()
{body}
t1 = time.perf_counter()
print(json.dumps({{"inner": t1 - t0, "networkx": "networkx" in sys.modules,
                   "modules": len(sys.modules)}}))
"""

BODIES = {
    "start": "pass",
    "import": "import onex_compose",
    "networkx": "import networkx",
    "pydantic": "import pydantic; pydantic.BaseModel",
    "first_instance": (
        "from onex_compose import NodeCompute, compose\n"
        "node = compose(NodeCompute, ['caching', 'metrics'])()"
    ),
}


def run_child(body: str) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE.format(body=body)], capture_output=True,
                          text=True, check=True)
    wall = time.perf_counter() - start
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def measure(body: str, repeats: int) -> tuple[float, float, dict[str, object]]:
    walls, inners = [], []
    last: dict[str, object] = {}
    for _ in range(repeats):
        wall, info = run_child(body)
        walls.append(wall)
        inners.append(float(info["inner"]))  # type: ignore[arg-type]
        last = info
    return statistics.median(walls), statistics.median(inners), last


def main() -> None:
    args = parse_args()
    repeats = 1 if args.smoke else args.repeats  # smoke: one process per row (< 10 s)
    table = Table("bench_import", "fresh interpreter: import and first composed instance")

    start_wall, _, _ = measure(BODIES["start"], repeats)
    table.add("python -c pass (interpreter start-up)", start_wall)

    wall, inner, info = measure(BODIES["import"], repeats)
    nx_note = ("networkx NOT imported" if not info["networkx"]
               else "PROBLEM: networkx imported by import onex_compose")
    table.add("import onex_compose (inside the child)", inner, target="<= 150 ms",
              note=f"{nx_note}; {info['modules']} modules loaded")
    table.add("import onex_compose (whole process)", wall, baseline=start_wall)

    if all(name in default_registry for name in ("caching", "metrics")):
        wall, inner, info = measure(BODIES["first_instance"], repeats)
        table.add("import + compose(NodeCompute, [caching, metrics]) + instance (inside)",
                  inner, note=f"{info['modules']} modules loaded")
        table.add("fresh interpreter to first composed instance (whole process)", wall,
                  baseline=start_wall, target="<= 350 ms")
        for name in ("networkx", "pydantic"):
            _, inner, _ = measure(BODIES[name], repeats)
            table.add(f"  part: import {name} alone (inside)", inner,
                      note="imported by the first cold compose")
    else:
        table.add("fresh interpreter to first composed instance", 0.0,
                  note="skipped: the caching and metrics capabilities are not registered yet")
    table.finish(args.smoke)


if __name__ == "__main__":
    main()
