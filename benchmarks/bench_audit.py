"""audit_log: ``record()`` against a plain INSERT of the same row, and ``verify()`` throughput.

``await node.audit.record(...)`` takes the chain lock (PostgreSQL ``pg_advisory_xact_lock``;
SQLite ``BEGIN IMMEDIATE`` / the memory database's lock), checks the head, hashes the record
(RFC 8785 canonical details, SHA-256) and inserts it, in its own transaction. The baseline is a
plain SQLAlchemy Core INSERT of the same row shape (16 columns, same primary key) in its own
transaction on the same engine (``async with engine.begin() as c: await c.execute(ins, row)``),
with the row prepared in advance. Target: <= 1.5x, on SQLite memory, a SQLite file and
PostgreSQL (skipped when ONEX_POSTGRES_DSN is unreachable).

``verify()`` reads (keyset pages of 5,000 rows) and re-hashes the whole chain; the
number reported is records per second, by wall-clock time and by the process's CPU time (on a
busy machine the second says what the code costs, the first what the machine gave it). Target:
>= 50,000/s on SQLite.

Each round times ours and the baseline alternately (median of the rounds; the machine is
noisy). Run: ``python benchmarks/bench_audit.py`` (``--smoke`` for a quick check that it runs).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Table, parse_args  # noqa: E402

from onex_compose import NodeEffect, compose  # noqa: E402
from onex_compose.capabilities import _sql  # noqa: E402
from onex_compose.capabilities.audit_log._chain import COLUMNS  # noqa: E402

PG_DSN = os.environ.get("ONEX_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
AuditNode = compose(NodeEffect, ["audit_log"])
DETAILS = {"amount": 12, "currency": "EUR", "note": "refund after complaint"}


async def _per_call(fn: Callable[[], Awaitable[Any]], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        await fn()
    return (time.perf_counter() - start) / number


async def _case(db_cfg: dict[str, Any], number: int, repeats: int, verify_n: int
                ) -> dict[str, float]:
    from sqlalchemy import text

    node = AuditNode(capability_config={"database": db_cfg})
    audit = node.audit
    await node.db.migrate()
    plain = f"{audit.table}_plain"
    await node.db.execute(
        f"CREATE TABLE {plain} (chain_id VARCHAR(200) NOT NULL, seq BIGINT NOT NULL, "
        "id VARCHAR(32) NOT NULL, at VARCHAR(32) NOT NULL, actor TEXT, actor_scheme "
        "VARCHAR(50), action VARCHAR(200) NOT NULL, resource TEXT, outcome VARCHAR(16) NOT "
        "NULL, reason TEXT, node_id TEXT, correlation_id TEXT, trace_id TEXT, details TEXT, "
        "prev_hash VARCHAR(64) NOT NULL, hash VARCHAR(64) NOT NULL, PRIMARY KEY (chain_id, seq))")
    ins = text(f"INSERT INTO {plain} ({', '.join(COLUMNS)}) VALUES "
               f"({', '.join(':' + c for c in COLUMNS)})")
    engine = node.db.engine()
    row = {"chain_id": "default", "id": uuid.uuid4().hex, "at": "2026-01-01T00:00:00.000000Z",
           "actor": "alice", "actor_scheme": "jwt", "action": "refund", "resource": "order:42",
           "outcome": "success", "reason": None, "node_id": "n1", "correlation_id": None,
           "trace_id": None, "details": '{"amount":12,"currency":"EUR","note":"refund"}',
           "prev_hash": "a" * 64, "hash": "b" * 64}
    counter = [0]

    async def baseline() -> None:
        counter[0] += 1
        async with engine.begin() as c:
            await c.execute(ins, {**row, "seq": counter[0]})

    async def ours() -> None:
        await audit.record("refund", resource="order:42", outcome="success", actor="alice",
                           details=DETAILS)

    cases = {"ours": ours, "plain": baseline}
    for fn in cases.values():  # warm up
        await _per_call(fn, max(10, number // 10))
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            samples[name].append(await _per_call(fn, number))
    out = {k: statistics.median(v) for k, v in samples.items()}

    have = (await audit.verify()).checked
    batch = [{"action": "refund", "outcome": "success", "actor": "alice", "details": DETAILS}
             for _ in range(500)]
    while have < verify_n:
        have += len(await audit.record_many(batch))
    rates, cpu_rates = [], []
    for _ in range(3):
        start, cpu = time.perf_counter(), time.process_time()
        report = await audit.verify()
        took, cpu_took = time.perf_counter() - start, time.process_time() - cpu
        assert report.ok, report
        rates.append(report.checked / took)
        cpu_rates.append(report.checked / max(cpu_took, 1e-9))
    out["verify_rate"] = statistics.median(rates)
    out["verify_cpu_rate"] = statistics.median(cpu_rates)
    out["verify_n"] = float(have)
    await node.db.aclose()
    return out


async def _postgres(number: int, repeats: int, verify_n: int) -> dict[str, float] | None:
    import asyncpg

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        conn = await asyncpg.connect(PG_DSN, timeout=2)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return None
    try:
        return await _case({"url": PG_DSN, "schema": schema, "namespace": "bench"}, number,
                           repeats, verify_n)
    finally:
        await _sql.dispose_engines()
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    number = 15 if args.smoke else 200
    repeats = 2 if args.smoke else 2 * args.repeats
    verify_n = 200 if args.smoke else 50_000

    async def run() -> dict[str, dict[str, float] | None]:
        with tempfile.TemporaryDirectory() as tmp:
            return {
                "sqlite memory": await _case({"namespace": f"b{uuid.uuid4().hex[:8]}"},
                                             number, repeats, verify_n),
                "sqlite file": await _case({"url": f"sqlite:///{tmp}/audit.db",
                                            "namespace": "bench"}, number, repeats, verify_n),
                "postgresql": await _postgres(number, repeats, verify_n),
            }

    results = asyncio.run(run())
    table = Table("audit", "audit_log: record() against a plain INSERT; verify() throughput")
    for dialect, r in results.items():
        if r is None:
            table.add(f"{dialect}: skipped (server unreachable)", 0.0)
            continue
        table.add(f"{dialect}: audit.record() (lock + head + hash + insert)", r["ours"],
                  baseline=r["plain"], target="<= 1.5x", note="vs plain INSERT in own tx")
        table.add(f"{dialect}: SQLAlchemy Core begin + INSERT same row", r["plain"])
        target = ">= 50,000/s" if dialect.startswith("sqlite") else "reported"
        table.add(f"{dialect}: verify() per record ({r['verify_rate']:,.0f} records/s over "
                  f"{int(r['verify_n']):,})", 1.0 / r["verify_rate"], target=target,
                  note=f"{r['verify_cpu_rate']:,.0f}/s of this process's CPU time")
    table.finish(args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
