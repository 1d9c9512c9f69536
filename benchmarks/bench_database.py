"""Per-call cost of ``self.db`` against SQLAlchemy Core on the same engine, and the raw drivers.

One event loop, one engine per dialect (the node's own, so pool, pre-ping and the SQLite
``BEGIN`` listener are the same on both sides), SQLite memory and PostgreSQL:

=======================================================  ==========================================
ours                                                     SQLAlchemy Core (same engine)
=======================================================  ==========================================
``await node.db.fetch_val("SELECT 1")``                  ``async with engine.connect() as c:
                                                         await c.scalar(text("SELECT 1"))``
``async with node.db.transaction() as tx:                ``async with engine.begin() as c:
await tx.execute(insert)``                               await c.execute(insert)``
=======================================================  ==========================================

``db.fetch_val`` outside a block runs in autocommit (one statement is atomic on its own), so it
saves Core's BEGIN/ROLLBACK round trips and can come out faster than the baseline; with a
deadline or ``statement_timeout`` on PostgreSQL it takes a transaction (``SET LOCAL``).
The raw driver (asyncpg ``fetchval`` on a pooled connection; aiosqlite ``execute`` +
``fetchone`` on one connection) is shown for reference. Each round times ours and the
baseline alternately (median of the rounds; the machine is noisy). Target: <= 1.10x SQLAlchemy
Core on both dialects. PostgreSQL rows are skipped when the server (ONEX_POSTGRES_DSN) is
unreachable.

Run: ``python benchmarks/bench_database.py`` (``--smoke`` for a quick check that it runs).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Table, parse_args  # noqa: E402

from onex_compose import NodeEffect, compose  # noqa: E402

PG_DSN = os.environ.get("ONEX_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def _per_call(fn: Callable[[], Awaitable[Any]], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        await fn()
    return (time.perf_counter() - start) / number


async def _compare(cases: dict[str, Callable[[], Awaitable[Any]]], number: int, repeats: int
                   ) -> dict[str, float]:
    for fn in cases.values():  # warm up (engines, pools, prepared statements)
        await _per_call(fn, max(10, number // 10))
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            samples[name].append(await _per_call(fn, number))
    return {k: statistics.median(v) for k, v in samples.items()}


async def _sqlite(number: int, repeats: int) -> dict[str, float]:
    import aiosqlite
    from sqlalchemy import text

    node = compose(NodeEffect, ["database"])(
        capability_config={"database": {"namespace": f"bench{uuid.uuid4().hex[:6]}"}})
    db = node.db
    await db.execute("CREATE TABLE t (x INTEGER)")
    engine = db.engine()
    sel, ins = text("SELECT 1"), text("INSERT INTO t (x) VALUES (1)")
    raw = await aiosqlite.connect(":memory:")

    async def ours_val() -> Any:
        return await db.fetch_val("SELECT 1")

    async def core_val() -> Any:
        async with engine.connect() as c:
            return await c.scalar(sel)

    async def raw_val() -> Any:
        cur = await raw.execute("SELECT 1")
        row = await cur.fetchone()
        await cur.close()
        return row

    async def ours_tx() -> None:
        async with db.transaction() as tx:
            await tx.execute(ins)

    async def core_tx() -> None:
        async with engine.begin() as c:
            await c.execute(ins)

    out = await _compare({"ours_val": ours_val, "core_val": core_val, "raw_val": raw_val,
                          "ours_tx": ours_tx, "core_tx": core_tx}, number, repeats)
    await raw.close()
    await db.aclose()
    return out


async def _postgres(number: int, repeats: int) -> dict[str, float] | None:
    import asyncpg
    from sqlalchemy import text

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        pool = await asyncpg.create_pool(PG_DSN, min_size=1, max_size=2, timeout=2)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return None
    node = compose(NodeEffect, ["database"])(
        capability_config={"database": {"url": PG_DSN, "schema": schema}})
    db = node.db
    try:
        await db.execute("CREATE TABLE t (x INTEGER)")
        engine = db.engine()
        sel, ins = text("SELECT 1"), text("INSERT INTO t (x) VALUES (1)")

        async def ours_val() -> Any:
            return await db.fetch_val("SELECT 1")

        async def core_val() -> Any:
            async with engine.connect() as c:
                return await c.scalar(sel)

        async def raw_val() -> Any:
            async with pool.acquire() as c:
                return await c.fetchval("SELECT 1")

        async def ours_tx() -> None:
            async with db.transaction() as tx:
                await tx.execute(ins)

        async def core_tx() -> None:
            async with engine.begin() as c:
                await c.execute(ins)

        return await _compare({"ours_val": ours_val, "core_val": core_val, "raw_val": raw_val,
                               "ours_tx": ours_tx, "core_tx": core_tx}, number, repeats)
    finally:
        async with pool.acquire() as c:
            await c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await pool.close()
        await db.aclose()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # many short alternating rounds: a noisy machine slows both sides of a round alike
    number = 50 if args.smoke else 300
    repeats = 3 if args.smoke else 3 * args.repeats

    async def run() -> tuple[dict[str, float], dict[str, float] | None]:
        return await _sqlite(number, repeats), await _postgres(number, repeats)

    lite, pg = asyncio.run(run())
    table = Table("database", "database: self.db against SQLAlchemy Core (same engine)")
    for dialect, r in (("sqlite memory", lite), ("postgresql", pg)):
        if r is None:
            table.add(f"{dialect}: skipped (server unreachable)", 0.0)
            continue
        table.add(f"{dialect}: db.fetch_val('SELECT 1')", r["ours_val"],
                  baseline=r["core_val"], target="<= 1.10x", note="vs Core connect+scalar")
        table.add(f"{dialect}: SQLAlchemy Core connect + scalar", r["core_val"])
        table.add(f"{dialect}: raw driver fetchval", r["raw_val"])
        table.add(f"{dialect}: db.fetch_val vs raw driver", r["ours_val"],
                  baseline=r["raw_val"], note="reference")
        table.add(f"{dialect}: db.transaction() + tx.execute(insert)", r["ours_tx"],
                  baseline=r["core_tx"], target="<= 1.10x", note="vs Core begin+execute")
        table.add(f"{dialect}: SQLAlchemy Core begin + execute", r["core_tx"])
    table.finish(args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
